//! `prpod event`: what a GitHub Actions event means for the preview, and what prpod tells GitHub.
//!
//! [`decide`] reads the event (`GITHUB_EVENT_NAME`, the payload at `GITHUB_EVENT_PATH`) and says
//! run, teardown or skip, before anything is written anywhere:
//! - `opened`, `synchronize`, `reopened`, `ready_for_review`: run; `closed`: teardown;
//! - a draft is skipped unless `[github] previews_for_drafts`;
//! - with `[github] require_label`, the label counts only for the head commit it was applied
//!   at: a `labeled` event (or an `opened` carrying it) runs that commit, a later push skips
//!   until the label is applied again; `unlabeled` of it tears the preview down;
//! - a fork under `pull_request_target` (which runs with the base repository's secrets) is
//!   refused unless `[github] allow_forks`; under `pull_request` a fork has no secrets, so it is
//!   skipped with a notice and exit 0.
//!
//! A closed PR is torn down by [`crate::ops::teardown`] (a GHCR repository's tags through GitHub
//! Packages, [`crate::ops::github_sources::GhcrTags`]).
//!
//! A run or a teardown is framed by what GitHub shows ([`run_event`]): a Deployment of the PR's
//! environment (`preview/pr-<n>`, transient) with statuses `in_progress`, then `success` with the
//! preview's URL or `failure`, and `inactive` on teardown; one comment per PR, found again by a
//! hidden marker naming the repository, the PR and the prpod instance, among every comment (all
//! pages) written by the token's own identity, edited in place (own duplicates deleted; its id
//! kept in the namespace's `prpod.dev/github-comment` annotation); a job summary in
//! `GITHUB_STEP_SUMMARY`. A skipped event writes nothing to GitHub and calls nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::clients::github::{
    AppCredentials, DeploymentState, GithubClient, GithubError, GithubOptions, IssueComment, TokenKind,
};
use crate::config::{Config, ConfigError, Env, Section};
use crate::report::{Reporter, RunReport};
use crate::secret::Secret;

/// The namespace annotation holding the id of the PR's comment.
pub const COMMENT_ANNOTATION: &str = "prpod.dev/github-comment";

/// `[github]`: how prpod talks to GitHub and which events it acts on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// API base URL (`PRPOD_GITHUB_API_URL`; default Actions' `GITHUB_API_URL`, else
    /// `https://api.github.com`).
    pub api_url: Option<String>,
    /// File holding the token (`PRPOD_GITHUB_TOKEN_FILE`); otherwise `PRPOD_GITHUB_TOKEN`, then
    /// `GITHUB_TOKEN`.
    pub token_file: Option<PathBuf>,
    /// A GitHub App's id (`PRPOD_GITHUB_APP_ID`): with `app_private_key_file`, prpod acts as
    /// the App's installation (for the API and, unless a git token is set, for the clone).
    pub app_id: Option<u64>,
    /// The App's PEM private key (`PRPOD_GITHUB_APP_PRIVATE_KEY_FILE`).
    pub app_private_key_file: Option<PathBuf>,
    /// The App's installation (`PRPOD_GITHUB_INSTALLATION_ID`); default: the repository's.
    pub installation_id: Option<u64>,
    /// Previews for draft PRs too (default false).
    pub previews_for_drafts: bool,
    /// Only PRs carrying this label get a preview, for the commit it was applied at.
    pub require_label: Option<String>,
    /// Run for a fork's PR under `pull_request_target` (default false; it runs the fork's code
    /// with the base repository's secrets). Also sets `source.allow_forks` for the run.
    pub allow_forks: bool,
    /// The Deployment's environment; `{number}` is the PR number (default `preview/pr-{number}`).
    pub environment: String,
    /// Names this prpod in the comment's marker, so two installations keep two comments
    /// (default `prpod`).
    pub instance: String,
    /// Write the PR comment (default true).
    pub comment: bool,
    /// Write the Deployment and its statuses (default true).
    pub deployments: bool,
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            api_url: None,
            token_file: None,
            app_id: None,
            app_private_key_file: None,
            installation_id: None,
            previews_for_drafts: false,
            require_label: None,
            allow_forks: false,
            environment: "preview/pr-{number}".into(),
            instance: "prpod".into(),
            comment: true,
            deployments: true,
        }
    }
}

impl Section for GithubConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        if self.api_url.is_none()
            && let Some(u) = env.get("GITHUB_API_URL")
        {
            self.api_url = Some(u.to_string());
        }
        env.apply_opt("PRPOD_GITHUB_API_URL", "github.api_url", &mut self.api_url)?;
        env.apply_opt("PRPOD_GITHUB_TOKEN_FILE", "github.token_file", &mut self.token_file)?;
        env.apply_opt("PRPOD_GITHUB_APP_ID", "github.app_id", &mut self.app_id)?;
        env.apply_opt(
            "PRPOD_GITHUB_APP_PRIVATE_KEY_FILE",
            "github.app_private_key_file",
            &mut self.app_private_key_file,
        )?;
        env.apply_opt("PRPOD_GITHUB_INSTALLATION_ID", "github.installation_id", &mut self.installation_id)?;
        env.apply("PRPOD_GITHUB_PREVIEWS_FOR_DRAFTS", "github.previews_for_drafts", &mut self.previews_for_drafts)?;
        env.apply_opt("PRPOD_GITHUB_REQUIRE_LABEL", "github.require_label", &mut self.require_label)?;
        env.apply("PRPOD_GITHUB_ALLOW_FORKS", "github.allow_forks", &mut self.allow_forks)?;
        env.apply("PRPOD_GITHUB_ENVIRONMENT", "github.environment", &mut self.environment)?;
        env.apply("PRPOD_GITHUB_INSTANCE", "github.instance", &mut self.instance)?;
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Value { key: format!("github.{key}"), why: why.into() });
        if let Some(u) = &self.api_url
            && url::Url::parse(u).is_err()
        {
            return bad("api_url", "not a URL (e.g. https://api.github.com, or https://HOST/api/v3)");
        }
        if self.app_id.is_some() != self.app_private_key_file.is_some() {
            return bad("app_id", "a GitHub App needs both `app_id` and `app_private_key_file`");
        }
        if self.environment.trim().is_empty() || self.environment.len() > 255 {
            return bad("environment", "must be 1 to 255 characters");
        }
        if self.instance.is_empty() || !self.instance.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return bad("instance", "letters, digits, `-`, `_` and `.` only (it goes into an HTML comment)");
        }
        if self.require_label.as_deref().is_some_and(|l| l.trim().is_empty()) {
            return bad("require_label", "is empty");
        }
        Ok(())
    }
}

/// What an event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Build and deploy the PR's head commit.
    Run,
    /// Remove the preview.
    Teardown,
    /// Nothing (and nothing written to GitHub).
    Skip,
}

/// [`decide`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Why, for people.
    pub why: String,
    /// Whether to tell people in the job's log as a notice (a skip they might not expect).
    #[serde(skip)]
    pub notice: bool,
}

/// An event prpod refuses (bad input, exit 2).
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// No payload, or an unreadable one.
    #[error("failed to read the GitHub event: {0}")]
    Payload(String),
    /// An event prpod does not handle.
    #[error(
        "GITHUB_EVENT_NAME `{0}` is not an event prpod acts on: run `prpod event` on `pull_request`, \
         `pull_request_target` or `workflow_dispatch`"
    )]
    Unsupported(String),
    /// A fork's PR under `pull_request_target`.
    #[error(
        "refused: {repository}#{number} comes from the fork {fork}, and `pull_request_target` runs it with this \
         repository's secrets; set `[github] allow_forks = true` only if you trust every fork's code (or use \
         `pull_request`, where a fork gets no secrets)"
    )]
    Fork {
        /// Base repository.
        repository: String,
        /// PR number.
        number: u64,
        /// The fork (`(deleted)` when gone).
        fork: String,
    },
}

/// The parts of an event payload prpod reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Payload {
    /// `opened`, `synchronize`, ...
    pub action: Option<String>,
    /// The PR.
    pub pull_request: Option<PullRequest>,
    /// The label of a `labeled` / `unlabeled` event.
    pub label: Option<Label>,
    /// `workflow_dispatch` inputs.
    #[serde(default)]
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// The repository the workflow runs in.
    pub repository: Option<Repo>,
}

/// A pull request in a payload.
#[derive(Debug, Clone, Deserialize)]
pub struct PullRequest {
    /// Number.
    pub number: u64,
    /// Draft.
    #[serde(default)]
    pub draft: bool,
    /// Head.
    pub head: Side,
    /// Base.
    pub base: Side,
    /// Labels now.
    #[serde(default)]
    pub labels: Vec<Label>,
}

/// `head` or `base` of a PR.
#[derive(Debug, Clone, Deserialize)]
pub struct Side {
    /// Commit.
    pub sha: String,
    /// Repository (`null` for a deleted fork).
    pub repo: Option<Repo>,
}

/// A repository in a payload.
#[derive(Debug, Clone, Deserialize)]
pub struct Repo {
    /// `owner/name`.
    pub full_name: String,
}

/// A label.
#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    /// Name.
    pub name: String,
}

/// Reads the payload at `GITHUB_EVENT_PATH`.
pub fn read_payload(env: &Env) -> Result<Payload, EventError> {
    let path = env.get("GITHUB_EVENT_PATH").ok_or_else(|| {
        EventError::Payload("GITHUB_EVENT_PATH is not set (run `prpod event` in GitHub Actions)".into())
    })?;
    let text =
        crate::input::read_text_file(std::path::Path::new(path), crate::input::MAX_CONFIG_BYTES, "event payload")
            .map_err(|e| EventError::Payload(format!("{path}: {}", e.reason())))?;
    serde_json::from_str(&text).map_err(|e| EventError::Payload(format!("{path}: {e}")))
}

/// What `event` (`GITHUB_EVENT_NAME`) with `payload` asks for under `config` (see the module docs).
pub fn decide(event: &str, payload: &Payload, config: &GithubConfig) -> Result<Decision, EventError> {
    let decision = |action, why: String, notice| Ok(Decision { action, why, notice });
    if event == "workflow_dispatch" {
        let wants = payload.inputs.get("action").and_then(|v| v.as_str()).unwrap_or("run");
        return match wants {
            "teardown" => decision(Action::Teardown, "workflow_dispatch asked for a teardown".into(), false),
            _ => decision(Action::Run, "workflow_dispatch".into(), false),
        };
    }
    if event != "pull_request" && event != "pull_request_target" {
        return Err(EventError::Unsupported(event.into()));
    }
    let pr = payload
        .pull_request
        .as_ref()
        .ok_or_else(|| EventError::Payload(format!("a `{event}` payload without `pull_request`")))?;
    let action = payload.action.as_deref().unwrap_or_default();
    let base = pr.base.repo.as_ref().map(|r| r.full_name.as_str()).unwrap_or_default();
    let fork = match &pr.head.repo {
        Some(h) if h.full_name == base => None,
        Some(h) => Some(h.full_name.clone()),
        None => Some("(deleted)".to_string()),
    };
    // Closing tears down whoever's PR it was: nothing of the fork's code runs.
    if action == "closed" {
        return decision(Action::Teardown, format!("PR #{} was closed", pr.number), false);
    }
    if let Some(fork) = fork {
        if event == "pull_request_target" && !config.allow_forks {
            return Err(EventError::Fork { repository: base.into(), number: pr.number, fork });
        }
        if event == "pull_request" {
            return decision(
                Action::Skip,
                format!(
                    "PR #{} comes from the fork {fork}: under `pull_request` a fork's run gets no secrets, so there \
                     is no preview (use `pull_request_target` with `[github] allow_forks` to build forks)",
                    pr.number
                ),
                true,
            );
        }
    }
    let required = config.require_label.as_deref();
    let labelled = |name: &str| pr.labels.iter().any(|l| l.name == name);
    match action {
        "labeled" | "unlabeled" => {
            let this = payload.label.as_ref().map(|l| l.name.as_str()).unwrap_or_default();
            return match required {
                Some(r) if r == this && action == "labeled" => {
                    if pr.draft && !config.previews_for_drafts {
                        return draft_skip(pr.number);
                    }
                    decision(Action::Run, format!("label `{r}` applied at {}", short(&pr.head.sha)), false)
                }
                Some(r) if r == this => decision(Action::Teardown, format!("label `{r}` removed"), false),
                _ => decision(Action::Skip, format!("label `{this}` changes nothing"), false),
            };
        }
        "opened" | "synchronize" | "reopened" | "ready_for_review" => {}
        other => return decision(Action::Skip, format!("action `{other}` changes nothing"), false),
    }
    if pr.draft && !config.previews_for_drafts {
        return draft_skip(pr.number);
    }
    if let Some(r) = required {
        // The label vouches for the commit it was applied at. On `opened` that is this head; on
        // any later event the head may be a commit nobody looked at.
        if !labelled(r) {
            return decision(Action::Skip, format!("PR #{} does not carry the label `{r}`", pr.number), true);
        }
        if action != "opened" {
            return decision(
                Action::Skip,
                format!(
                    "the label `{r}` was applied at an earlier commit than {}: apply it again to preview this one",
                    short(&pr.head.sha)
                ),
                true,
            );
        }
    }
    decision(Action::Run, format!("{action} at {}", short(&pr.head.sha)), false)
}

fn draft_skip(number: u64) -> Result<Decision, EventError> {
    Ok(Decision {
        action: Action::Skip,
        why: format!("PR #{number} is a draft (set `[github] previews_for_drafts = true` to preview drafts)"),
        notice: true,
    })
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// What prpod wrote to GitHub for one event.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GithubReport {
    /// HTTP requests made to the GitHub API (retries included).
    pub api_calls: u64,
    /// Whose token it was (the comment's author).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The token's kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_kind: Option<TokenKind>,
    /// The PR's comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<u64>,
    /// Where it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment_url: Option<String>,
    /// Own duplicate comments deleted.
    pub duplicates_deleted: u32,
    /// The deployment created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<u64>,
    /// The environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The statuses set, in order.
    pub statuses: Vec<DeploymentState>,
    /// The environment, when it could not be deleted (the token lacks Administration: write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_left_behind: Option<String>,
    /// What went wrong talking to GitHub (the preview itself is unaffected).
    pub warnings: Vec<String>,
}

/// `prpod event`'s document.
#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    /// `GITHUB_EVENT_NAME`.
    pub event: String,
    /// The payload's action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_action: Option<String>,
    /// What was decided.
    pub action: Action,
    /// Why.
    pub why: String,
    /// What GitHub was told (absent for a skip: nothing was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubReport>,
    /// The run's report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunReport>,
    /// The teardown's report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teardown: Option<serde_json::Value>,
}

/// `prpod event`'s input.
#[derive(Debug, Clone)]
pub struct EventRequest {
    /// The process environment (GitHub Actions' variables, tokens).
    pub env: Env,
}

/// The result: the document and the exit code it means.
#[derive(Debug)]
pub struct EventOutcome {
    /// The document.
    pub report: EventReport,
    /// Exit code.
    pub code: u8,
    /// The run's or teardown's failure, if any.
    pub error: Option<anyhow::Error>,
}

/// Handles the event in `req.env` (see the module docs).
pub async fn event(config: &Config, req: EventRequest, reporter: &Reporter) -> anyhow::Result<EventOutcome> {
    let env = &req.env;
    let name = env.get("GITHUB_EVENT_NAME").unwrap_or_default().to_string();
    let payload = read_payload(env)?;
    let decision = decide(&name, &payload, &config.github)?;
    let mut report = EventReport {
        event: name,
        event_action: payload.action.clone(),
        action: decision.action,
        why: decision.why.clone(),
        github: None,
        run: None,
        teardown: None,
    };
    if decision.action == Action::Skip {
        if decision.notice {
            reporter.notice(&decision.why);
        }
        return Ok(EventOutcome { report, code: crate::error::EXIT_OK, error: None });
    }
    let pr = payload.pull_request.as_ref();
    let repository = pr
        .and_then(|p| p.base.repo.as_ref())
        .or(payload.repository.as_ref())
        .map(|r| r.full_name.clone())
        .or_else(|| env.get("GITHUB_REPOSITORY").map(str::to_string))
        .ok_or_else(|| EventError::Payload("no repository in the payload or GITHUB_REPOSITORY".into()))?;
    let number = pr.map(|p| p.number).or_else(|| {
        payload.inputs.get("pr").and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
    });
    let sha = pr.map(|p| p.head.sha.clone()).or_else(|| env.get("GITHUB_SHA").map(str::to_string));

    let github = Github::connect(&config.github, env, &repository).await?;
    let mut config = config.clone();
    let mut run_env = env.clone();
    if config.github.allow_forks {
        config.source.allow_forks = true;
    }
    // An App's installation token clones too, unless the operator gave a git token.
    if github.client.token_kind() == TokenKind::App
        && config.source.token_file.is_none()
        && env.get("PRPOD_GIT_TOKEN").is_none()
    {
        run_env = run_env.with("PRPOD_GIT_TOKEN", github.client.token().expose());
        reporter.redact(github.client.token());
    }
    let mut gh = GithubReport {
        identity: Some(github.identity.clone()),
        token_kind: Some(github.client.token_kind()),
        ..Default::default()
    };
    let environment = number.map(|n| config.github.environment.replace("{number}", &n.to_string()));
    // A workflow_dispatch names its PR in an input; a PR event's payload names it to the run.
    let flags =
        crate::phases::context::ContextFlags { pr: if pr.is_none() { number } else { None }, ..Default::default() };
    gh.environment = environment.clone();

    let (code, error) = match decision.action {
        Action::Run => {
            let deployment = match (&environment, &sha, config.github.deployments) {
                (Some(e), Some(s), true) => github.start_deployment(s, e, &mut gh).await,
                _ => None,
            };
            // The one call into the run path.
            let outcome = crate::cli::run::run_collected(flags.clone(), config.clone(), &run_env, reporter).await;
            let ok = outcome.error.is_none() && outcome.code == crate::error::EXIT_OK;
            if let Some(id) = deployment {
                let (state, url) = match (&outcome.report.preview_url, ok) {
                    (url, true) => (DeploymentState::Success, url.clone()),
                    (_, false) => (DeploymentState::Failure, None),
                };
                github.set_status(id, state, url.as_deref(), &mut gh).await;
            }
            if let (Some(n), true) = (number, config.github.comment) {
                // The reporter's last line of defence against a secret in text from outside.
                let body =
                    reporter.scrub(&comment_body(&github.marker(n), &outcome.report, outcome.error.as_ref(), ok));
                let ns = outcome.report.release.as_ref().map(|r| r.namespace.clone());
                github.upsert_comment(n, &body, ns.as_deref(), &config, &mut gh).await;
            }
            summary(env, &reporter.scrub(&job_summary(&outcome.report, ok)));
            report.run = Some(outcome.report);
            (outcome.code, outcome.error)
        }
        Action::Teardown => {
            // The one call into the teardown path.
            let result = teardown_preview(&config, &run_env, &flags, &github.client, reporter).await;
            let ok = result.is_ok();
            if ok && let Some(e) = &environment {
                github.retire_environment(e, &mut gh).await;
            }
            if let (Some(n), true) = (number, config.github.comment) {
                let marker = github.marker(n);
                let body = if ok {
                    format!(
                        "{marker}\n### prpod preview: torn down\n\nThe preview of #{n} was removed when the PR closed.\n"
                    )
                } else {
                    format!("{marker}\n### prpod preview: teardown failed\n\nSee the workflow run's log.\n")
                };
                github.upsert_comment(n, &body, None, &config, &mut gh).await;
            }
            match result {
                Ok(v) => {
                    report.teardown = v;
                    (crate::error::EXIT_OK, None)
                }
                Err(e) => (crate::error::exit_code_for(&e), Some(e)),
            }
        }
        Action::Skip => unreachable!("handled above"),
    };
    gh.api_calls = github.client.api_calls();
    report.github = Some(gh);
    Ok(EventOutcome { report, code, error })
}

/// The teardown of the PR's preview ([`crate::ops::teardown`]), the PR named by the event. A
/// GHCR repository's tags are deleted through GitHub Packages with `client`'s token.
async fn teardown_preview(
    config: &Config,
    env: &Env,
    flags: &crate::phases::context::ContextFlags,
    client: &GithubClient,
    reporter: &Reporter,
) -> anyhow::Result<Option<serde_json::Value>> {
    use anyhow::Context;
    let (release, ctx) = crate::cli::status::release_target(None, None, flags, config, env).await?;
    let ctx = ctx.context("the event names no pull request to tear down")?;
    let tags: Option<Box<dyn crate::ops::teardown::TagDeleter>> = match config.image.repository.as_deref() {
        Some(repo) => crate::ops::github_sources::GhcrTags::for_repository(client.clone(), repo)
            .await?
            .map(|t| Box::new(t) as Box<dyn crate::ops::teardown::TagDeleter>),
        None => None,
    };
    let req = crate::ops::teardown::TeardownRequest { ctx, release: Some(release), dry_run: false, tags };
    let report = crate::ops::teardown::teardown(config, req, reporter).await;
    crate::phases::lock::finish_releases().await;
    Ok(Some(serde_json::to_value(report?)?))
}

/// A connected GitHub client and who it is.
struct Github {
    client: GithubClient,
    identity: String,
    repository: String,
    instance: String,
}

/// A GitHub client from `[github]`: a GitHub App's installation (on `repository`, unless
/// `installation_id` names it), else the token ([`github_token`]).
pub async fn github_client(config: &GithubConfig, env: &Env, repository: Option<&str>) -> anyhow::Result<GithubClient> {
    use anyhow::Context;
    let api = config.api_url.as_deref().unwrap_or(crate::clients::github::DEFAULT_API_URL);
    let options = GithubOptions {
        api_url: url::Url::parse(api).with_context(|| format!("`github.api_url` `{api}` is not a URL"))?,
        ..Default::default()
    };
    let client = match (&config.app_id, &config.app_private_key_file) {
        (Some(id), Some(file)) => {
            let key = crate::input::read_text_file(file, crate::input::MAX_SECRET_BYTES, "GitHub App key")
                .with_context(|| {
                    format!(
                        "failed to read the GitHub App's private key {} (`github.app_private_key_file`)",
                        file.display()
                    )
                })?;
            let app = AppCredentials {
                app_id: *id,
                private_key: Secret::new(key),
                source_desc: format!("`github.app_private_key_file` = {}", file.display()),
                installation_id: config.installation_id,
            };
            let repository = repository.filter(|_| app.installation_id.is_none()).unwrap_or_default();
            if app.installation_id.is_none() && repository.is_empty() {
                anyhow::bail!(
                    "a GitHub App needs its installation: set `github.installation_id` (or name the repository)"
                );
            }
            GithubClient::for_app(options, &app, repository).await?
        }
        _ => GithubClient::with_token(options, github_token(config, env)?)?,
    };
    Ok(client)
}

impl Github {
    async fn connect(config: &GithubConfig, env: &Env, repository: &str) -> anyhow::Result<Github> {
        let client = github_client(config, env, Some(repository)).await?;
        let identity = client.identity().await?.login;
        Ok(Github { client, identity, repository: repository.into(), instance: config.instance.clone() })
    }

    fn marker(&self, number: u64) -> String {
        format!("<!-- prpod:preview repository={} pr={number} instance={} -->", self.repository, self.instance)
    }

    async fn start_deployment(&self, sha: &str, environment: &str, gh: &mut GithubReport) -> Option<u64> {
        let d = match self.client.create_deployment(&self.repository, sha, environment, "prpod preview").await {
            Ok(d) => d,
            Err(e) => {
                gh.warnings.push(e.to_string());
                return None;
            }
        };
        gh.deployment_id = Some(d.id);
        self.set_status(d.id, DeploymentState::InProgress, None, gh).await;
        Some(d.id)
    }

    async fn set_status(&self, id: u64, state: DeploymentState, url: Option<&str>, gh: &mut GithubReport) {
        let text = match state {
            DeploymentState::InProgress => "building and deploying",
            DeploymentState::Success => "the preview serves",
            DeploymentState::Failure => "the run failed",
            DeploymentState::Inactive => "torn down",
        };
        match self.client.create_deployment_status(&self.repository, id, state, url, text).await {
            Ok(()) => gh.statuses.push(state),
            Err(e) => gh.warnings.push(e.to_string()),
        }
    }

    /// Marks the environment's deployments inactive and tries to delete the environment.
    async fn retire_environment(&self, environment: &str, gh: &mut GithubReport) {
        match self.client.list_deployments(&self.repository, environment).await {
            Ok(list) => {
                // The newest is the one showing; older ones went inactive when it succeeded.
                if let Some(d) = list.first() {
                    gh.deployment_id = Some(d.id);
                    self.set_status(d.id, DeploymentState::Inactive, None, gh).await;
                }
            }
            Err(e) => gh.warnings.push(e.to_string()),
        }
        match self.client.delete_environment(&self.repository, environment).await {
            Ok(()) => {}
            Err(e @ GithubError::Forbidden { .. }) => {
                gh.environment_left_behind = Some(environment.into());
                gh.warnings.push(format!(
                    "environment {environment} left behind: {e}; delete it in the repository's settings, or give \
                     prpod a token with Administration: write"
                ));
            }
            Err(e) => gh.warnings.push(e.to_string()),
        }
    }

    /// Edits the PR's comment in place, creating it the first time; deletes own duplicates.
    async fn upsert_comment(
        &self,
        number: u64,
        body: &str,
        namespace: Option<&str>,
        config: &Config,
        gh: &mut GithubReport,
    ) {
        if let Err(e) = self.upsert_comment_inner(number, body, namespace, config, gh).await {
            gh.warnings.push(format!("{e:#}"));
        }
    }

    async fn upsert_comment_inner(
        &self,
        number: u64,
        body: &str,
        namespace: Option<&str>,
        config: &Config,
        gh: &mut GithubReport,
    ) -> anyhow::Result<()> {
        let marker = self.marker(number);
        let kube = match namespace {
            Some(_) => crate::clients::kube::Kube::connect(&config.deploy.kube_target()).await.ok(),
            None => None,
        };
        let remembered = match (&kube, namespace) {
            (Some(k), Some(ns)) => k
                .namespace_meta(ns)
                .await
                .ok()
                .flatten()
                .and_then(|(_, a)| a.get(COMMENT_ANNOTATION).and_then(|v| v.parse::<u64>().ok())),
            _ => None,
        };
        let all = self.client.list_issue_comments(&self.repository, number).await?;
        // Only our own comments carrying our marker: anyone can paste the marker.
        let mut ours: Vec<&IssueComment> =
            all.iter().filter(|c| c.author() == self.identity && c.body.contains(&marker)).collect();
        // The remembered one first, then the oldest.
        ours.sort_by_key(|c| (Some(c.id) != remembered, c.id));
        let kept = match ours.split_first() {
            Some((first, rest)) => {
                let c = self.client.update_issue_comment(&self.repository, first.id, body).await?;
                for dup in rest {
                    self.client.delete_issue_comment(&self.repository, dup.id).await?;
                    gh.duplicates_deleted += 1;
                }
                c
            }
            None => self.client.create_issue_comment(&self.repository, number, body).await?,
        };
        gh.comment_id = Some(kept.id);
        gh.comment_url = Some(kept.html_url.clone());
        if let (Some(k), Some(ns)) = (&kube, namespace)
            && remembered != Some(kept.id)
        {
            let annotations = BTreeMap::from([(COMMENT_ANNOTATION.to_string(), kept.id.to_string())]);
            if let Err(e) = k.label_namespace(ns, &BTreeMap::new(), &annotations).await {
                gh.warnings.push(format!("failed to remember the comment id on namespace {ns}: {e}"));
            }
        }
        Ok(())
    }
}

/// `doctor`'s GitHub checks: which credential `[github]` resolves to (its kind by prefix, or a
/// GitHub App) and whether GitHub accepts it (one identity call, or the App's token exchange);
/// and, when the image goes to GHCR, whether its registry credential can work there: GHCR
/// refuses GitHub App installation tokens, for pushes and for pulls of private packages.
pub async fn doctor_checks(config: &Config, env: &Env) -> Vec<crate::report::Check> {
    use crate::report::{Check, CheckStatus};
    let check = |name: &str, status, detail: String, fix: Option<&str>| Check {
        name: name.into(),
        status,
        detail,
        fix: fix.map(str::to_string),
    };
    let mut out = Vec::new();
    let g = &config.github;
    let app = g.app_id.is_some();
    let token = if app { None } else { github_token(g, env).ok() };
    let kind = match (&token, app) {
        (_, true) => Some(TokenKind::App),
        (Some(t), false) => Some(TokenKind::of(t)),
        (None, false) => None,
    };
    match kind {
        None => out.push(check(
            "github",
            CheckStatus::Ok,
            "no GitHub credentials (only `prpod event` and `gc --closed-from-github` need them)".into(),
            None,
        )),
        Some(kind) => {
            let repository = env.get("GITHUB_REPOSITORY");
            let who = match github_client(g, env, repository).await {
                Ok(c) => c.identity().await.map(|i| i.login).map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            out.push(match who {
                Ok(login) => check("github", CheckStatus::Ok, format!("{} as {login}", kind.describe()), None),
                Err(e) => check(
                    "github",
                    CheckStatus::Fail,
                    format!("{}: {e:#}", kind.describe()),
                    Some("check `[github]` (token_file, PRPOD_GITHUB_TOKEN / GITHUB_TOKEN, or app_id + app_private_key_file)"),
                ),
            });
        }
    }
    let ghcr = config.image.repository.as_deref().is_some_and(|r| r.starts_with("ghcr.io/"));
    if ghcr {
        let registry = crate::phases::registry_config(config);
        let password = match registry.credentials("ghcr.io", None) {
            Ok(r) => match r.resolve("ghcr.io").await {
                Ok(r) => match r.credentials {
                    crate::clients::registry::Credentials::Basic { password, .. } => Some(password),
                    _ => None,
                },
                Err(_) => None,
            },
            Err(_) => None,
        };
        // Outside Actions a `ghs_` token cannot be the workflow's GITHUB_TOKEN: it is an App's.
        let in_actions = env.get("GITHUB_ACTIONS") == Some("true");
        let app_token = password.as_ref().is_some_and(|p| TokenKind::of(p) == TokenKind::Installation) && !in_actions;
        const FIX: &str = "give the registry GITHUB_TOKEN (`permissions: packages: write`) or a classic PAT with \
                           write:packages; a GitHub App serves the API and the clone only";
        if app_token {
            out.push(check(
                "ghcr token",
                CheckStatus::Fail,
                "the registry credential for ghcr.io is an installation token (ghs_) outside GitHub Actions, i.e. a \
                 GitHub App's: GHCR refuses App installation tokens for pushes and for pulls of private packages"
                    .into(),
                Some(FIX),
            ));
        } else if app {
            out.push(check(
                "ghcr token",
                CheckStatus::Warn,
                "`[github]` uses a GitHub App: its installation token is not used for ghcr.io (GHCR refuses App \
                 installation tokens); the registry needs its own credential"
                    .into(),
                Some(FIX),
            ));
        }
    }
    out
}

/// The API token: `[github] token_file`, else `PRPOD_GITHUB_TOKEN`, else `GITHUB_TOKEN`.
pub fn github_token(config: &GithubConfig, env: &Env) -> anyhow::Result<Secret> {
    use anyhow::Context;
    let token = match &config.token_file {
        Some(path) => Secret::new(
            crate::input::read_text_file(path, crate::input::MAX_SECRET_BYTES, "GitHub token file").with_context(
                || format!("failed to read the GitHub token file {} (`github.token_file`)", path.display()),
            )?,
        ),
        None => Secret::new(env.get("PRPOD_GITHUB_TOKEN").or_else(|| env.get("GITHUB_TOKEN")).context(
            "no GitHub token: set GITHUB_TOKEN (`permissions: pull-requests: write, deployments: write`), \
             PRPOD_GITHUB_TOKEN or `[github] token_file`, or a GitHub App (`github.app_id` + `app_private_key_file`)",
        )?),
    };
    anyhow::ensure!(!token.is_empty(), "the GitHub token is empty");
    anyhow::ensure!(!token.expose().contains(['\n', '\r', '\0', ' ']), "the GitHub token contains whitespace");
    Ok(token)
}

/// Markdown-safe text from a run (branch names and findings come from the PR's author), at most
/// 300 characters (GitHub caps a comment at 65536).
fn md(text: &str) -> String {
    let text: String =
        if text.chars().count() > 300 { text.chars().take(300).chain(['…']).collect() } else { text.into() };
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .replace('`', "'")
        .replace(['\n', '\r'], " ")
        .replace('@', "@\u{200b}")
}

/// The PR comment of a run.
pub fn comment_body(marker: &str, r: &RunReport, error: Option<&anyhow::Error>, ok: bool) -> String {
    let mut b = format!("{marker}\n");
    let title = match (ok, error) {
        (true, _) => "ready",
        (false, None) => "blocked by findings",
        (false, Some(_)) => "failed",
    };
    b.push_str(&format!("### prpod preview: {title}\n\n"));
    if let Some(url) = &r.preview_url {
        b.push_str(&format!("**Preview:** {}\n\n", md(url)));
    }
    b.push_str("| | |\n|---|---|\n");
    if let Some(c) = &r.context {
        b.push_str(&format!("| Commit | `{}` ({}) |\n", c.sha, md(&c.branch)));
    }
    if let Some(t) = &r.tags {
        let tags: Vec<String> = std::iter::once(&t.primary).chain(&t.extra).map(|t| format!("`{}`", md(t))).collect();
        b.push_str(&format!("| Tags | {} |\n", tags.join(", ")));
    }
    if let Some(i) = &r.image {
        b.push_str(&format!("| Image | `{}@{}` |\n", md(&i.repository), i.digest));
    }
    if let (Some(rel), Some(rev)) = (&r.release, r.revision) {
        b.push_str(&format!("| Release | `{}` revision {rev} in `{}` |\n", rel.name, rel.namespace));
    }
    let findings = r.findings.as_deref().unwrap_or_default();
    if findings.is_empty() {
        b.push_str("\nFindings: none.\n");
    } else {
        b.push_str("\n**Findings**\n\n");
        for f in findings.iter().take(20) {
            let sev = serde_json::to_value(f.finding.severity).ok().and_then(|v| v.as_str().map(str::to_string));
            b.push_str(&format!(
                "- {} `{}` {} ({})\n",
                sev.unwrap_or_default(),
                md(&f.finding.rule),
                md(&f.finding.message),
                md(&f.plugin)
            ));
        }
        if findings.len() > 20 {
            b.push_str(&format!("- … and {} more in the job's report\n", findings.len() - 20));
        }
    }
    let status = match error {
        Some(e) => format!("failed: {}", md(&e.to_string())),
        None if ok => "deployed".to_string(),
        None => "not deployed: a verifier reported an error".to_string(),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    b.push_str(&format!("\n_Status: {status} · updated {}_\n", crate::clients::github::rfc3339(now)));
    b
}

fn job_summary(r: &RunReport, ok: bool) -> String {
    let mut s = format!("## prpod preview: {}\n\n", if ok { "ready" } else { "failed" });
    if let Some(u) = &r.preview_url {
        s.push_str(&format!("- Preview: {}\n", md(u)));
    }
    if let Some(i) = &r.image {
        s.push_str(&format!("- Image: `{}@{}`\n", md(&i.repository), i.digest));
    }
    for p in &r.phases {
        s.push_str(&format!("- {} {:?} {} ms\n", p.name, p.status, p.duration_ms));
    }
    s
}

/// Appends `text` to the job summary (`GITHUB_STEP_SUMMARY`) when set; a failure only warns.
fn summary(env: &Env, text: &str) {
    use std::io::Write;
    let Some(path) = env.get("GITHUB_STEP_SUMMARY") else { return };
    let r =
        std::fs::OpenOptions::new().append(true).create(true).open(path).and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = r {
        tracing::warn!("failed to write the job summary {path}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pr(action: &str, draft: bool, fork: bool, labels: &[&str]) -> Payload {
        let base = Repo { full_name: "acme/web".into() };
        let head = Repo { full_name: if fork { "mallory/web".into() } else { "acme/web".into() } };
        Payload {
            action: Some(action.into()),
            pull_request: Some(PullRequest {
                number: 7,
                draft,
                head: Side { sha: "a".repeat(40), repo: Some(head) },
                base: Side { sha: "b".repeat(40), repo: Some(base) },
                labels: labels.iter().map(|l| Label { name: l.to_string() }).collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn actions_map_to_run_teardown_or_skip() {
        let c = GithubConfig::default();
        for a in ["opened", "synchronize", "reopened", "ready_for_review"] {
            assert_eq!(decide("pull_request", &pr(a, false, false, &[]), &c).unwrap().action, Action::Run, "{a}");
        }
        assert_eq!(decide("pull_request", &pr("closed", false, false, &[]), &c).unwrap().action, Action::Teardown);
        assert_eq!(decide("pull_request", &pr("edited", false, false, &[]), &c).unwrap().action, Action::Skip);
        assert!(decide("push", &pr("opened", false, false, &[]), &c).is_err());
    }

    #[test]
    fn workflow_dispatch_runs_or_tears_down_as_its_input_says() {
        let c = GithubConfig::default();
        let mut p = Payload::default();
        assert_eq!(decide("workflow_dispatch", &p, &c).unwrap().action, Action::Run);
        p.inputs.insert("action".into(), serde_json::json!("teardown"));
        assert_eq!(decide("workflow_dispatch", &p, &c).unwrap().action, Action::Teardown);
    }

    #[test]
    fn drafts_are_skipped_unless_asked_for() {
        let mut c = GithubConfig::default();
        assert_eq!(decide("pull_request", &pr("opened", true, false, &[]), &c).unwrap().action, Action::Skip);
        c.previews_for_drafts = true;
        assert_eq!(decide("pull_request", &pr("opened", true, false, &[]), &c).unwrap().action, Action::Run);
    }

    #[test]
    fn forks_are_skipped_under_pull_request_and_refused_under_target() {
        let mut c = GithubConfig::default();
        let d = decide("pull_request", &pr("opened", false, true, &[]), &c).unwrap();
        assert!(d.action == Action::Skip && d.notice, "{d:?}");
        let e = decide("pull_request_target", &pr("opened", false, true, &[]), &c).unwrap_err();
        assert!(e.to_string().contains("allow_forks"), "{e}");
        // Closing a fork's PR still tears its preview down.
        assert_eq!(
            decide("pull_request_target", &pr("closed", false, true, &[]), &c).unwrap().action,
            Action::Teardown
        );
        c.allow_forks = true;
        assert_eq!(decide("pull_request_target", &pr("opened", false, true, &[]), &c).unwrap().action, Action::Run);
    }

    #[test]
    fn a_required_label_counts_only_for_the_commit_it_was_applied_at() {
        let c = GithubConfig { require_label: Some("preview".into()), ..Default::default() };
        let mut labeled = pr("labeled", false, false, &["preview"]);
        labeled.label = Some(Label { name: "preview".into() });
        assert_eq!(decide("pull_request", &labeled, &c).unwrap().action, Action::Run);
        let mut other = pr("labeled", false, false, &["preview", "docs"]);
        other.label = Some(Label { name: "docs".into() });
        assert_eq!(decide("pull_request", &other, &c).unwrap().action, Action::Skip);
        // Still labelled, but a push came after the label: skipped until it is applied again.
        let d = decide("pull_request", &pr("synchronize", false, false, &["preview"]), &c).unwrap();
        assert_eq!(d.action, Action::Skip);
        assert!(d.why.contains("earlier commit"), "{}", d.why);
        assert_eq!(decide("pull_request", &pr("opened", false, false, &["preview"]), &c).unwrap().action, Action::Run);
        assert_eq!(decide("pull_request", &pr("opened", false, false, &[]), &c).unwrap().action, Action::Skip);
        let mut removed = pr("unlabeled", false, false, &[]);
        removed.label = Some(Label { name: "preview".into() });
        assert_eq!(decide("pull_request", &removed, &c).unwrap().action, Action::Teardown);
    }

    #[test]
    fn env_sets_the_event_keys_and_the_checks_name_the_key() {
        let mut c = GithubConfig::default();
        let env = Env::from_pairs([
            ("GITHUB_API_URL", "https://ghe.example/api/v3"),
            ("PRPOD_GITHUB_REQUIRE_LABEL", "preview"),
            ("PRPOD_GITHUB_PREVIEWS_FOR_DRAFTS", "true"),
        ]);
        c.apply_env(&env).unwrap();
        assert_eq!(c.api_url.as_deref(), Some("https://ghe.example/api/v3"));
        assert_eq!(c.require_label.as_deref(), Some("preview"));
        assert!(c.previews_for_drafts && !c.allow_forks);
        c.app_id = Some(1);
        assert!(c.check().unwrap_err().to_string().contains("app_private_key_file"));
        // The file's api_url beats Actions' GITHUB_API_URL (always set in a workflow).
        let mut c = GithubConfig { api_url: Some("http://127.0.0.1:9".into()), ..Default::default() };
        c.apply_env(&env).unwrap();
        assert_eq!(c.api_url.as_deref(), Some("http://127.0.0.1:9"));
    }

    #[test]
    fn the_comment_escapes_what_the_pr_author_controls() {
        let mut r = RunReport::default();
        let mut ctx = crate::model::PrContext {
            repository_url: "https://github.com/acme/web.git".into(),
            repository: "acme/web".into(),
            number: Some(7),
            branch: "x<!-- prpod:preview -->|@admins".into(),
            base_branch: None,
            sha: "a".repeat(40),
            event: crate::model::Event::Synchronize,
            labels: vec![],
            author: "m".into(),
            draft: false,
            fork: false,
            target: None,
        };
        ctx.labels.clear();
        r.context = Some(ctx);
        let body = comment_body("<!-- m -->", &r, None, true);
        assert!(!body.contains("<!-- prpod:preview -->"), "{body}");
        assert!(!body.contains("@admins"), "{body}");
        assert!(body.starts_with("<!-- m -->\n"));
        assert!(md(&"x".repeat(5000)).chars().count() <= 301);
    }
}
