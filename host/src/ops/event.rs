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
//! A run or a teardown is framed by what GitHub shows ([`crate::phases::github`]): a Deployment of the PR's
//! environment (`preview/pr-<n>`, transient) with statuses `in_progress`, then `success` with the
//! preview's URL or `failure`, and `inactive` on teardown; one comment per PR, found again by a
//! hidden marker naming the repository, the PR and the prpod instance, among every comment (all
//! pages) written by the token's own identity, edited in place (own duplicates deleted; its id
//! kept in the namespace's `prpod.dev/github-comment` annotation); a job summary in
//! `GITHUB_STEP_SUMMARY`. A skipped event writes nothing to GitHub and calls nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clients::github::{DeploymentState, GithubClient, TokenKind};
use crate::config::{Config, Env};
use crate::error::ResultExt;
use crate::phases::github::{Github, GithubConfig, GithubReport, comment_body, job_summary, summary};
use crate::report::{Reporter, RunReport};

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
            let outcome = crate::ops::run::run(
                config.clone(),
                crate::ops::run::RunRequest::for_context(flags.clone()),
                &run_env,
                reporter,
            )
            .await;
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
    let (release, ctx) = crate::ops::status::release_target(None, None, flags, config, env).await?;
    let ctx = ctx.context("the event names no pull request to tear down")?;
    let tags: Option<Box<dyn crate::ops::teardown::TagDeleter>> = match config.image.repository.as_deref() {
        Some(repo) => crate::ops::github_sources::GhcrTags::for_repository(client.clone(), repo)
            .await
            .outside_line()?
            .map(|t| Box::new(t) as Box<dyn crate::ops::teardown::TagDeleter>),
        None => None,
    };
    let req = crate::ops::teardown::TeardownRequest { ctx, release: Some(release), dry_run: false, tags };
    let report = crate::ops::teardown::teardown(config, req, reporter).await;
    crate::phases::preview::lock::finish_releases().await;
    Ok(Some(serde_json::to_value(report?)?))
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
}
