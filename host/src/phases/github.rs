//! What prpod tells GitHub about a preview (see [`crate::ops::event`], which decides when):
//! the client from `[github]` (a token, or a GitHub App's installation), one comment per PR
//! found again by its hidden marker among every comment written by the token's own identity and
//! edited in place (own duplicates deleted, its id kept in the namespace's
//! [`COMMENT_ANNOTATION`]), the Deployment's statuses, the environment on teardown, the job
//! summary, and `doctor`'s GitHub checks. Every call goes through [`crate::clients::github`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::clients::github::{
    AppCredentials, DeploymentState, GithubClient, GithubError, GithubOptions, IssueComment, TokenKind,
};
use crate::config::{Config, ConfigError, Env, Section};
use crate::error::ResultExt;
use crate::report::RunReport;
use crate::secret::Secret;

/// The namespace annotation holding the id of the PR's comment.
pub const COMMENT_ANNOTATION: &str = "prpod.dev/github-comment";

/// `[github]`: how prpod talks to GitHub and which events `prpod event` acts on.
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

/// A connected GitHub client and who it is.
pub struct Github {
    /// The client.
    pub client: GithubClient,
    /// The token's login (the author of prpod's comment).
    pub identity: String,
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
            GithubClient::for_app(options, &app, repository).await.outside_line()?
        }
        _ => GithubClient::with_token(options, github_token(config, env)?).outside_line()?,
    };
    Ok(client)
}

impl Github {
    /// Connects with `[github]`'s credentials and learns who the token is.
    pub async fn connect(config: &GithubConfig, env: &Env, repository: &str) -> anyhow::Result<Github> {
        let client = github_client(config, env, Some(repository)).await?;
        let identity = client.identity().await.outside_line()?.login;
        Ok(Github { client, identity, repository: repository.into(), instance: config.instance.clone() })
    }

    /// The comment's hidden marker for PR `number`.
    pub fn marker(&self, number: u64) -> String {
        format!("<!-- prpod:preview repository={} pr={number} instance={} -->", self.repository, self.instance)
    }

    /// Creates the Deployment of `sha` to `environment` and sets it `in_progress`; `None` (a
    /// warning in `gh`) when GitHub refused.
    pub async fn start_deployment(&self, sha: &str, environment: &str, gh: &mut GithubReport) -> Option<u64> {
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

    /// Sets deployment `id`'s state (a failure is a warning in `gh`).
    pub async fn set_status(&self, id: u64, state: DeploymentState, url: Option<&str>, gh: &mut GithubReport) {
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
    pub async fn retire_environment(&self, environment: &str, gh: &mut GithubReport) {
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
    pub async fn upsert_comment(
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
        let all = self.client.list_issue_comments(&self.repository, number).await.outside_line()?;
        // Only our own comments carrying our marker: anyone can paste the marker.
        let mut ours: Vec<&IssueComment> =
            all.iter().filter(|c| c.author() == self.identity && c.body.contains(&marker)).collect();
        // The remembered one first, then the oldest.
        ours.sort_by_key(|c| (Some(c.id) != remembered, c.id));
        let kept = match ours.split_first() {
            Some((first, rest)) => {
                let c = self.client.update_issue_comment(&self.repository, first.id, body).await.outside_line()?;
                for dup in rest {
                    self.client.delete_issue_comment(&self.repository, dup.id).await.outside_line()?;
                    gh.duplicates_deleted += 1;
                }
                c
            }
            None => self.client.create_issue_comment(&self.repository, number, body).await.outside_line()?,
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
pub fn md(text: &str) -> String {
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

/// The job summary of a run.
pub fn job_summary(r: &RunReport, ok: bool) -> String {
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
pub fn summary(env: &Env, text: &str) {
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
