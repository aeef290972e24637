//! The GitHub REST API client: every call prpod makes to GitHub lives here.
//!
//! Exactly the endpoints prpod uses: issue comments (list with `per_page=100` following
//! `Link: rel="next"`, create, update, delete), deployments and deployment statuses, the
//! environment (delete), the authenticated identity (`GET /user`; for an App `GET /app`), GitHub
//! App installation tokens (a JWT signed RS256 with [`jsonwebtoken`], exchanged at
//! `POST /app/installations/{id}/access_tokens`), GitHub Packages container versions (list with
//! their tags, delete one: GHCR has no OCI delete) and a pull request's state.
//!
//! - **Rate limits.** A `retry-after` on a 403/429 is waited out; `x-ratelimit-remaining: 0` waits
//!   until `x-ratelimit-reset`. Waits longer than [`GithubOptions::max_wait`] fail instead with
//!   [`GithubError::RateLimited`], naming when the limit resets: a CI job that sleeps an hour is
//!   worse than one that says so. Before each request the last answer's `remaining` is checked,
//!   so a client that used up its budget waits before sending, not after being refused.
//! - **Retries.** A 5xx or a dropped connection is retried [`GithubOptions::attempts`] times in
//!   all, with a doubling backoff. Nothing else is retried: a 4xx is the caller's to fix.
//! - **Counting.** Every HTTP request (retries included) is counted ([`GithubClient::api_calls`]),
//!   so a run or a sweep reports what it cost.
//! - **Credentials.** The token is a [`Secret`] and goes only to the configured API origin: a
//!   `Link: next` on another origin is refused, redirects are not followed. Server messages are
//!   scrubbed of the token before they reach an error.
//!
//! The client never reads prpod.toml: [`GithubOptions`] and the credentials are its arguments.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use url::Url;

use crate::error::{Classify, FailureKind};
use crate::secret::Secret;

/// The public API's base URL (GitHub Enterprise Server: `https://HOST/api/v3`).
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// Longest answer body read (a page of 100 comments of 64 KiB each stays below it).
const MAX_BODY_BYTES: usize = 16 << 20;

/// How the client talks to GitHub.
#[derive(Debug, Clone)]
pub struct GithubOptions {
    /// The API base URL (`[github] api_url`, Actions' `GITHUB_API_URL`).
    pub api_url: Url,
    /// Attempts per request on a 5xx or a dropped connection, the first included (default 4).
    pub attempts: u32,
    /// Wait after the first failure; doubles after each (default 500 ms).
    pub initial_backoff: Duration,
    /// Longest rate-limit wait honoured (default 60 s); a longer one fails the call.
    pub max_wait: Duration,
    /// Timeout of one request (default 30 s).
    pub timeout: Duration,
}

impl Default for GithubOptions {
    fn default() -> Self {
        GithubOptions {
            api_url: Url::parse(DEFAULT_API_URL).expect("the default API URL parses"),
            attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_wait: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What kind of credential a token is, from its documented prefix. GHCR accepts
/// [`TokenKind::Classic`], [`TokenKind::FineGrained`] and the Actions `GITHUB_TOKEN`
/// ([`TokenKind::Installation`] issued to the workflow), but not a GitHub App's installation token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// `ghp_`: a classic personal access token.
    Classic,
    /// `github_pat_`: a fine-grained personal access token.
    FineGrained,
    /// `ghs_`: an installation token (Actions' `GITHUB_TOKEN`, or a GitHub App's).
    Installation,
    /// `gho_` / `ghu_`: an OAuth or user-to-server token.
    OAuth,
    /// A token prpod got itself from a GitHub App's private key.
    App,
    /// No known prefix (GitHub Enterprise Server tokens before 3.2, a test double's).
    Unknown,
}

impl TokenKind {
    /// The kind of `token`, by prefix.
    pub fn of(token: &Secret) -> TokenKind {
        let t = token.expose();
        if t.starts_with("ghp_") {
            TokenKind::Classic
        } else if t.starts_with("github_pat_") {
            TokenKind::FineGrained
        } else if t.starts_with("ghs_") {
            TokenKind::Installation
        } else if t.starts_with("gho_") || t.starts_with("ghu_") {
            TokenKind::OAuth
        } else {
            TokenKind::Unknown
        }
    }

    /// What a person calls it.
    pub fn describe(self) -> &'static str {
        match self {
            TokenKind::Classic => "a classic personal access token (ghp_)",
            TokenKind::FineGrained => "a fine-grained personal access token (github_pat_)",
            TokenKind::Installation => "an installation token (ghs_: Actions' GITHUB_TOKEN or a GitHub App's)",
            TokenKind::OAuth => "an OAuth token (gho_/ghu_)",
            TokenKind::App => "a GitHub App installation token (from app id + private key)",
            TokenKind::Unknown => "a token of unknown kind",
        }
    }
}

/// A GitHub call failed. Messages name the call and what to do; none holds the token.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The API URL or a URL GitHub sent is not usable.
    #[error("GitHub API URL `{url}`: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// GitHub rejected the credentials (401).
    #[error(
        "failed to {what}: GitHub rejected the token (401: {detail}); check `[github] token_file` / PRPOD_GITHUB_TOKEN / \
         GITHUB_TOKEN, or the App's id and private key"
    )]
    Unauthorized {
        /// The call.
        what: String,
        /// GitHub's message.
        detail: String,
    },
    /// Authenticated, but not allowed (403 without a rate limit, 404 on a private resource).
    #[error("failed to {what}: {status} ({detail}); the token lacks the permission: {hint}")]
    Forbidden {
        /// The call.
        what: String,
        /// The status code.
        status: u16,
        /// GitHub's message.
        detail: String,
        /// Which permission the call needs.
        hint: String,
    },
    /// The thing does not exist (404).
    #[error("failed to {what}: not found ({detail})")]
    NotFound {
        /// The call.
        what: String,
        /// GitHub's message.
        detail: String,
    },
    /// The rate limit is used up and resets later than prpod waits.
    #[error(
        "failed to {what}: GitHub's rate limit is used up until {reset} (in {wait_secs} s, longer than prpod waits); \
         run again after that, or use a token with its own budget (a GitHub App's)"
    )]
    RateLimited {
        /// The call.
        what: String,
        /// When it resets (RFC 3339), or `unknown`.
        reset: String,
        /// Seconds until then.
        wait_secs: u64,
    },
    /// GitHub kept failing (5xx, dropped connections) after every retry.
    #[error("failed to {what}: GitHub answered {detail} after {attempts} attempts; try again later")]
    Unavailable {
        /// The call.
        what: String,
        /// The last status or connection error.
        detail: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Another 4xx: the request was wrong for GitHub.
    #[error("failed to {what}: GitHub answered {status} ({detail})")]
    Rejected {
        /// The call.
        what: String,
        /// The status code.
        status: u16,
        /// GitHub's message.
        detail: String,
    },
    /// A 2xx whose body is not what GitHub documents (truncated, HTML, another shape).
    #[error("failed to {what}: GitHub's answer is malformed ({why})")]
    Malformed {
        /// The call.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// The App's private key cannot sign.
    #[error("failed to sign the GitHub App JWT with the private key from {source_desc}: {why}")]
    AppKey {
        /// Where the key came from (`[github] app_private_key_file = ...`).
        source_desc: String,
        /// What is wrong.
        why: String,
    },
}

impl Classify for GithubError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            GithubError::BadUrl { .. }
            | GithubError::Unauthorized { .. }
            | GithubError::Forbidden { .. }
            | GithubError::AppKey { .. }
            | GithubError::NotFound { .. }
            | GithubError::Rejected { .. } => None,
            GithubError::RateLimited { .. } | GithubError::Unavailable { .. } | GithubError::Malformed { .. } => {
                Some(FailureKind::External)
            }
        }
    }
}

impl GithubError {
    /// The HTTP status behind the error, when GitHub answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Unauthorized { .. } => Some(401),
            GithubError::Forbidden { status, .. } | GithubError::Rejected { status, .. } => Some(*status),
            GithubError::NotFound { .. } => Some(404),
            _ => None,
        }
    }
}

/// A GitHub App's credentials: its id, the PEM of its private key, and where that came from.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    /// The App's id (`[github] app_id`).
    pub app_id: u64,
    /// The PEM private key (`[github] app_private_key_file`).
    pub private_key: Secret,
    /// Where the key came from, for messages.
    pub source_desc: String,
    /// The installation (`[github] installation_id`); `None`: the repository's installation.
    pub installation_id: Option<u64>,
}

/// Who the token is: the login GitHub shows as the author of what prpod writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// `octocat`, `my-app[bot]`, `github-actions[bot]`.
    pub login: String,
    /// The token's kind.
    pub kind: TokenKind,
}

/// An issue (or pull request) comment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct IssueComment {
    /// Comment id.
    pub id: u64,
    /// Markdown body.
    #[serde(default)]
    pub body: String,
    /// Author.
    pub user: Option<Login>,
    /// Where people see it.
    #[serde(default)]
    pub html_url: String,
}

impl IssueComment {
    /// The author's login, or `""` for a deleted user (`"user": null`).
    pub fn author(&self) -> &str {
        self.user.as_ref().map_or("", |u| u.login.as_str())
    }
}

/// A user as GitHub embeds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Login {
    /// Login.
    pub login: String,
}

/// A deployment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Deployment {
    /// Deployment id.
    pub id: u64,
    /// The commit (or ref) deployed.
    #[serde(default)]
    pub sha: String,
    /// The environment's name.
    #[serde(default)]
    pub environment: String,
}

/// A deployment status's state (the ones prpod sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// The run started.
    InProgress,
    /// The preview serves (with `environment_url`).
    Success,
    /// The run failed.
    Failure,
    /// The preview was torn down.
    Inactive,
}

impl DeploymentState {
    /// GitHub's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::InProgress => "in_progress",
            DeploymentState::Success => "success",
            DeploymentState::Failure => "failure",
            DeploymentState::Inactive => "inactive",
        }
    }
}

/// A pull request's state, as gc needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullState {
    /// Open.
    Open,
    /// Closed without merging.
    Closed,
    /// Merged.
    Merged,
}

/// A container package version with its tags (GHCR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageVersion {
    /// The version id (what `DELETE` takes).
    pub id: u64,
    /// The manifest digest (`sha256:...`), GitHub's `name` of a container version.
    pub digest: String,
    /// Its tags.
    pub tags: Vec<String>,
}

/// Who owns a package: an organization or a user (their URLs differ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageOwner {
    /// `/orgs/{org}/packages/...`
    Org(String),
    /// `/users/{user}/packages/...`
    User(String),
}

#[derive(Debug, Default)]
struct Budget {
    remaining: Option<u64>,
    reset: Option<u64>,
}

/// A client for one API origin and one credential.
#[derive(Debug, Clone)]
pub struct GithubClient {
    http: reqwest::Client,
    options: GithubOptions,
    token: Secret,
    kind: TokenKind,
    /// The App's login (`slug[bot]`) when the token came from an App.
    app_login: Option<String>,
    calls: Arc<AtomicU64>,
    budget: Arc<Mutex<Budget>>,
}

/// An answer: status, headers and the body read (bounded).
struct Answer {
    headers: HeaderMap,
    body: Vec<u8>,
}

impl GithubClient {
    /// A client sending `token` (a PAT, `GITHUB_TOKEN`) to `options.api_url`'s origin only.
    pub fn with_token(options: GithubOptions, token: Secret) -> Result<GithubClient, GithubError> {
        let kind = TokenKind::of(&token);
        Self::build(options, token, kind, None, Arc::default())
    }

    fn build(
        options: GithubOptions,
        token: Secret,
        kind: TokenKind,
        app_login: Option<String>,
        calls: Arc<AtomicU64>,
    ) -> Result<GithubClient, GithubError> {
        let url = &options.api_url;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(GithubError::BadUrl { url: url.to_string(), why: "not an http(s) URL with a host".into() });
        }
        if url.scheme() == "http" && !is_loopback(url) {
            // The token would cross the network in clear text.
            return Err(GithubError::BadUrl {
                url: url.to_string(),
                why: "plain HTTP is allowed only to a loopback address; use https".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .user_agent(concat!("prpod/", env!("CARGO_PKG_VERSION")))
            // A redirect could carry the request elsewhere; GitHub's API answers in place.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GithubError::BadUrl { url: url.to_string(), why: format!("HTTP client: {e}") })?;
        Ok(GithubClient { http, options, token, kind, app_login, calls, budget: Arc::default() })
    }

    /// A client acting as a GitHub App's installation on `repository` (`owner/name`): signs a
    /// JWT with the App's key, reads the App's slug (`GET /app`), finds the repository's
    /// installation unless `app.installation_id` names it, and exchanges the JWT for an
    /// installation token. Its calls count towards the returned client's [`Self::api_calls`].
    pub async fn for_app(
        options: GithubOptions,
        app: &AppCredentials,
        repository: &str,
    ) -> Result<GithubClient, GithubError> {
        let jwt = app_jwt(app, SystemTime::now())?;
        let calls = Arc::new(AtomicU64::new(0));
        let as_app = Self::build(options.clone(), jwt, TokenKind::App, None, calls.clone())?;
        #[derive(Deserialize)]
        struct App {
            slug: String,
        }
        let me: App = as_app.get_json("read the GitHub App (GET /app)", "app").await?;
        let installation = match app.installation_id {
            Some(id) => id,
            None => {
                #[derive(Deserialize)]
                struct Installation {
                    id: u64,
                }
                let (owner, name) = split_repo(repository)?;
                let path = format!("repos/{}/{}/installation", seg(owner), seg(name));
                let i: Installation =
                    as_app.get_json(&format!("find the App's installation on {repository}"), &path).await?;
                i.id
            }
        };
        #[derive(Deserialize)]
        struct Token {
            token: String,
        }
        let what = format!("create an installation token for installation {installation}");
        let path = format!("app/installations/{installation}/access_tokens");
        let t: Token = as_app.send_json(&what, Method::POST, &path, Some(&json!({}))).await?;
        let token = Secret::new(t.token);
        if token.is_empty() {
            return Err(GithubError::Malformed { what, why: "the token is empty".into() });
        }
        Self::build(options, token, TokenKind::App, Some(format!("{}[bot]", me.slug)), calls)
    }

    /// The token this client sends (for a clone with an App's installation token).
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// The token's kind.
    pub fn token_kind(&self) -> TokenKind {
        self.kind
    }

    /// HTTP requests sent so far (retries included), by this client and its clones.
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Who the token is. An App's token is `slug[bot]` (known since [`Self::for_app`]); a `ghs_`
    /// token not from prpod's App is Actions' `GITHUB_TOKEN`, whose author is
    /// `github-actions[bot]` (`GET /user` refuses installation tokens); any other asks `GET /user`.
    pub async fn identity(&self) -> Result<Identity, GithubError> {
        if let Some(login) = &self.app_login {
            return Ok(Identity { login: login.clone(), kind: self.kind });
        }
        if self.kind == TokenKind::Installation {
            return Ok(Identity { login: "github-actions[bot]".into(), kind: self.kind });
        }
        let me: Login = self.get_json("read the token's user (GET /user)", "user").await?;
        Ok(Identity { login: me.login, kind: self.kind })
    }

    /// Every comment of issue or PR `number`, following `Link: rel="next"` 100 at a time.
    pub async fn list_issue_comments(&self, repository: &str, number: u64) -> Result<Vec<IssueComment>, GithubError> {
        let (owner, name) = split_repo(repository)?;
        let what = format!("list the comments of {repository}#{number}");
        self.get_all(&what, &format!("repos/{}/{}/issues/{number}/comments?per_page=100", seg(owner), seg(name))).await
    }

    /// Comments on issue or PR `number`.
    pub async fn create_issue_comment(
        &self,
        repository: &str,
        number: u64,
        body: &str,
    ) -> Result<IssueComment, GithubError> {
        let (owner, name) = split_repo(repository)?;
        let path = format!("repos/{}/{}/issues/{number}/comments", seg(owner), seg(name));
        self.send_json(&format!("comment on {repository}#{number}"), Method::POST, &path, Some(&json!({"body": body})))
            .await
    }

    /// Replaces comment `id`'s body.
    pub async fn update_issue_comment(
        &self,
        repository: &str,
        id: u64,
        body: &str,
    ) -> Result<IssueComment, GithubError> {
        let (owner, name) = split_repo(repository)?;
        let path = format!("repos/{}/{}/issues/comments/{id}", seg(owner), seg(name));
        self.send_json(
            &format!("update comment {id} on {repository}"),
            Method::PATCH,
            &path,
            Some(&json!({"body": body})),
        )
        .await
    }

    /// Deletes comment `id` (already gone counts as done).
    pub async fn delete_issue_comment(&self, repository: &str, id: u64) -> Result<(), GithubError> {
        let (owner, name) = split_repo(repository)?;
        let path = format!("repos/{}/{}/issues/comments/{id}", seg(owner), seg(name));
        match self.send(&format!("delete comment {id} on {repository}"), Method::DELETE, &path, None).await {
            Ok(_) | Err(GithubError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates a deployment of `sha` to `environment` (transient: GitHub may clean it up;
    /// `auto_merge` off and no required contexts, so it never merges or waits for checks).
    pub async fn create_deployment(
        &self,
        repository: &str,
        sha: &str,
        environment: &str,
        description: &str,
    ) -> Result<Deployment, GithubError> {
        let (owner, name) = split_repo(repository)?;
        let path = format!("repos/{}/{}/deployments", seg(owner), seg(name));
        let body = json!({
            "ref": sha,
            "environment": environment,
            "transient_environment": true,
            "production_environment": false,
            "auto_merge": false,
            "required_contexts": [],
            "description": description,
        });
        self.send_json(
            &format!("create a deployment of {repository} to {environment}"),
            Method::POST,
            &path,
            Some(&body),
        )
        .await
    }

    /// The deployments of `repository` to `environment`, newest first.
    pub async fn list_deployments(&self, repository: &str, environment: &str) -> Result<Vec<Deployment>, GithubError> {
        let (owner, name) = split_repo(repository)?;
        let env: String = url::form_urlencoded::byte_serialize(environment.as_bytes()).collect();
        let path = format!("repos/{}/{}/deployments?environment={env}&per_page=100", seg(owner), seg(name));
        self.get_all(&format!("list the deployments of {repository} to {environment}"), &path).await
    }

    /// Sets deployment `id`'s state; `environment_url` is where the preview answers.
    pub async fn create_deployment_status(
        &self,
        repository: &str,
        id: u64,
        state: DeploymentState,
        environment_url: Option<&str>,
        description: &str,
    ) -> Result<(), GithubError> {
        let (owner, name) = split_repo(repository)?;
        let path = format!("repos/{}/{}/deployments/{id}/statuses", seg(owner), seg(name));
        let mut body = json!({"state": state.as_str(), "description": truncate(description, 140)});
        if let Some(u) = environment_url {
            body["environment_url"] = json!(u);
        }
        if state == DeploymentState::Success {
            // The previous successes of the environment become inactive (GitHub's default, said).
            body["auto_inactive"] = json!(true);
        }
        let what = format!("set deployment {id} of {repository} to {}", state.as_str());
        self.send(&what, Method::POST, &path, Some(&body)).await.map(|_| ())
    }

    /// Deletes environment `environment` (needs Administration: write, which Actions'
    /// `GITHUB_TOKEN` lacks: the caller reports the environment left behind on a 403).
    pub async fn delete_environment(&self, repository: &str, environment: &str) -> Result<(), GithubError> {
        let (owner, name) = split_repo(repository)?;
        let path = format!("repos/{}/{}/environments/{}", seg(owner), seg(name), seg(environment));
        match self.send(&format!("delete environment {environment} of {repository}"), Method::DELETE, &path, None).await
        {
            Ok(_) | Err(GithubError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Pull request `number`'s state. Any answer that is not a pull request is an error, never
    /// a guess: gc acts only on PRs positively seen as closed or merged.
    pub async fn pull_state(&self, repository: &str, number: u64) -> Result<PullState, GithubError> {
        #[derive(Deserialize)]
        struct Pull {
            number: u64,
            state: String,
            #[serde(default)]
            merged: bool,
            merged_at: Option<String>,
        }
        let (owner, name) = split_repo(repository)?;
        let what = format!("read the state of {repository}#{number}");
        let p: Pull = self.get_json(&what, &format!("repos/{}/{}/pulls/{number}", seg(owner), seg(name))).await?;
        if p.number != number {
            return Err(GithubError::Malformed { what, why: format!("it describes PR #{}", p.number) });
        }
        match p.state.as_str() {
            "open" => Ok(PullState::Open),
            "closed" if p.merged || p.merged_at.is_some() => Ok(PullState::Merged),
            "closed" => Ok(PullState::Closed),
            other => Err(GithubError::Malformed { what, why: format!("unknown state `{other}`") }),
        }
    }

    /// Every version of container package `package` (GHCR repository `owner/package`), with tags.
    pub async fn list_package_versions(
        &self,
        owner: &PackageOwner,
        package: &str,
    ) -> Result<Vec<PackageVersion>, GithubError> {
        #[derive(Deserialize)]
        struct Version {
            id: u64,
            name: String,
            metadata: Option<Meta>,
        }
        #[derive(Deserialize)]
        struct Meta {
            container: Option<Container>,
        }
        #[derive(Deserialize)]
        struct Container {
            #[serde(default)]
            tags: Vec<String>,
        }
        let path = format!("{}/versions?per_page=100", package_path(owner, package));
        let versions: Vec<Version> = self.get_all(&format!("list the versions of package {package}"), &path).await?;
        Ok(versions
            .into_iter()
            .map(|v| PackageVersion {
                id: v.id,
                digest: v.name,
                tags: v.metadata.and_then(|m| m.container).map(|c| c.tags).unwrap_or_default(),
            })
            .collect())
    }

    /// Deletes version `id` of container package `package` (every tag on it goes with it).
    pub async fn delete_package_version(
        &self,
        owner: &PackageOwner,
        package: &str,
        id: u64,
    ) -> Result<(), GithubError> {
        let path = format!("{}/versions/{id}", package_path(owner, package));
        match self.send(&format!("delete version {id} of package {package}"), Method::DELETE, &path, None).await {
            Ok(_) | Err(GithubError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T, GithubError> {
        self.send_json(what, Method::GET, path, None).await
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, GithubError> {
        let answer = self.send(what, method, path, body).await?;
        parse(what, &answer.body)
    }

    /// Every page of a list, following `Link: rel="next"` on the API's own origin.
    async fn get_all<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<Vec<T>, GithubError> {
        let mut out = Vec::new();
        let mut next = Some(self.url(path)?);
        let mut pages = 0u32;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 1000 {
                return Err(GithubError::Malformed { what: what.into(), why: "more than 1000 pages".into() });
            }
            let answer = self.send_url(what, Method::GET, url, None).await?;
            let page: Vec<T> = parse(what, &answer.body)?;
            out.extend(page);
            if let Some(link) = answer.headers.get("link").and_then(|v| v.to_str().ok())
                && let Some(n) = next_link(link)
            {
                let n = Url::parse(&n)
                    .map_err(|e| GithubError::Malformed { what: what.into(), why: format!("Link next `{n}`: {e}") })?;
                if n.origin() != self.options.api_url.origin() {
                    // The token goes to the API's origin only.
                    return Err(GithubError::Malformed {
                        what: what.into(),
                        why: format!("its next page is on another origin ({})", n.origin().ascii_serialization()),
                    });
                }
                next = Some(n);
            }
        }
        Ok(out)
    }

    fn url(&self, path: &str) -> Result<Url, GithubError> {
        let base = self.options.api_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{path}")).map_err(|e| GithubError::BadUrl { url: path.into(), why: e.to_string() })
    }

    async fn send(&self, what: &str, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, GithubError> {
        let url = self.url(path)?;
        self.send_url(what, method, url, body).await
    }

    /// One request with the rate-limit waits and the 5xx retries.
    async fn send_url(
        &self,
        what: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, GithubError> {
        let mut backoff = self.options.initial_backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.wait_for_budget(what).await?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
                .header(AUTHORIZATION, format!("Bearer {}", self.token.expose()));
            if let Some(b) = body {
                req = req.json(b);
            }
            self.calls.fetch_add(1, Ordering::Relaxed);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let last = self.token.scrub(&format!("no answer ({e})"));
                    if attempt < self.options.attempts {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                        continue;
                    }
                    return Err(GithubError::Unavailable { what: what.into(), detail: last, attempts: attempt });
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            self.record_budget(&headers).await;
            let body = read_body(resp).await;
            let body = match body {
                Ok(b) => b,
                Err(e) if attempt < self.options.attempts => {
                    tracing::debug!(target: "prpod::github", "{what}: {status} with a body cut short ({e}); retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
                Err(e) => {
                    return Err(GithubError::Unavailable {
                        what: what.into(),
                        detail: format!("{status} with a body cut short ({e})"),
                        attempts: attempt,
                    });
                }
            };
            if status.is_success() {
                return Ok(Answer { headers, body });
            }
            let detail = self.token.scrub(&message(&body));
            if status.is_server_error() {
                let last = format!("{} ({detail})", status.as_u16());
                if attempt < self.options.attempts {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
                return Err(GithubError::Unavailable { what: what.into(), detail: last, attempts: attempt });
            }
            if let Some(wait) = rate_limit_wait(status, &headers) {
                if wait > self.options.max_wait {
                    return Err(GithubError::RateLimited {
                        what: what.into(),
                        reset: reset_text(&headers),
                        wait_secs: wait.as_secs(),
                    });
                }
                if attempt < self.options.attempts.max(2) {
                    tracing::info!(target: "prpod::github", "rate limited: waiting {wait:?} before {what}");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(match status {
                StatusCode::UNAUTHORIZED => GithubError::Unauthorized { what: what.into(), detail },
                StatusCode::FORBIDDEN => {
                    GithubError::Forbidden { what: what.into(), status: 403, detail, hint: permission_hint(&url) }
                }
                StatusCode::NOT_FOUND => GithubError::NotFound { what: what.into(), detail },
                s => GithubError::Rejected { what: what.into(), status: s.as_u16(), detail },
            });
        }
    }

    /// Waits until the rate limit resets when the last answer said none is left.
    async fn wait_for_budget(&self, what: &str) -> Result<(), GithubError> {
        let wait = {
            let b = self.budget.lock().await;
            match (b.remaining, b.reset) {
                (Some(0), Some(reset)) => Duration::from_secs(reset.saturating_sub(now_secs())),
                _ => Duration::ZERO,
            }
        };
        if wait.is_zero() {
            return Ok(());
        }
        if wait > self.options.max_wait {
            let reset = self.budget.lock().await.reset.map_or("unknown".into(), rfc3339);
            return Err(GithubError::RateLimited { what: what.into(), reset, wait_secs: wait.as_secs() });
        }
        tracing::info!(target: "prpod::github", "rate limit used up: waiting {wait:?} before {what}");
        tokio::time::sleep(wait).await;
        self.budget.lock().await.remaining = None;
        Ok(())
    }

    async fn record_budget(&self, headers: &HeaderMap) {
        let num = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let (remaining, reset) = (num("x-ratelimit-remaining"), num("x-ratelimit-reset"));
        if remaining.is_some() {
            let mut b = self.budget.lock().await;
            b.remaining = remaining;
            b.reset = reset;
        }
    }
}

/// The JWT a GitHub App authenticates with: `iss` = app id, issued 60 s in the past (GitHub's
/// advice for clock drift), valid 9 minutes (GitHub allows at most 10), signed RS256.
pub fn app_jwt(app: &AppCredentials, now: SystemTime) -> Result<Secret, GithubError> {
    #[derive(Serialize)]
    struct Claims {
        iat: u64,
        exp: u64,
        iss: String,
    }
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = Claims { iat: now.saturating_sub(60), exp: now + 540, iss: app.app_id.to_string() };
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(app.private_key.expose().as_bytes()).map_err(|e| {
        GithubError::AppKey {
            source_desc: app.source_desc.clone(),
            why: format!("{e}; it must be the PEM RSA private key GitHub generated for the App"),
        }
    })?;
    let jwt = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
        .map_err(|e| GithubError::AppKey { source_desc: app.source_desc.clone(), why: e.to_string() })?;
    Ok(Secret::new(jwt))
}

fn package_path(owner: &PackageOwner, package: &str) -> String {
    // A container package named `team/web` is `team%2Fweb` in the URL.
    match owner {
        PackageOwner::Org(o) => format!("orgs/{}/packages/container/{}", seg(o), seg(package)),
        PackageOwner::User(u) => format!("users/{}/packages/container/{}", seg(u), seg(package)),
    }
}

/// One URL path segment, percent-encoded (a `/` in it included).
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

fn split_repo(repository: &str) -> Result<(&str, &str), GithubError> {
    match repository.split_once('/') {
        Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/') => Ok((o, n)),
        _ => Err(GithubError::BadUrl { url: repository.into(), why: "a repository is `owner/name`".into() }),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("longer than {MAX_BODY_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, GithubError> {
    serde_json::from_slice(body).map_err(|e| {
        let start = String::from_utf8_lossy(&body[..body.len().min(60)]).replace(['\n', '\r'], " ");
        GithubError::Malformed { what: what.into(), why: format!("{e}; it starts `{start}`") }
    })
}

/// GitHub's `message` of an error body, else its first 200 characters.
fn message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        message: String,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(e) => truncate(&e.message, 300),
        Err(_) => truncate(&String::from_utf8_lossy(body).replace(['\n', '\r'], " "), 200),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { s.chars().take(n).collect::<String>() + "…" }
}

/// How long a refused request asks to wait: `retry-after` (secondary limits, 403 or 429), or
/// until `x-ratelimit-reset` when `x-ratelimit-remaining` is 0 (primary limit).
fn rate_limit_wait(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let num = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(s) = num("retry-after") {
        return Some(Duration::from_secs(s));
    }
    if num("x-ratelimit-remaining") == Some(0) {
        let reset = num("x-ratelimit-reset")?;
        return Some(Duration::from_secs(reset.saturating_sub(now_secs()).max(1)));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        // A 429 without a hint: GitHub documents waiting at least a minute.
        return Some(Duration::from_secs(60));
    }
    None
}

fn reset_text(headers: &HeaderMap) -> String {
    headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or("unknown".into(), rfc3339)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-from-civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The permission a 403 on `url` is about, for the message.
fn permission_hint(url: &Url) -> String {
    let p = url.path();
    if p.contains("/environments/") {
        "deleting an environment needs Administration: write (GITHUB_TOKEN never has it)".into()
    } else if p.contains("/deployments") {
        "deployments need Deployments: write (`permissions: deployments: write` in the workflow)".into()
    } else if p.contains("/comments") {
        "comments need Pull requests: write or Issues: write (`permissions: pull-requests: write`)".into()
    } else if p.contains("/packages/") {
        "deleting package versions needs Packages: delete (a classic PAT with delete:packages, or GITHUB_TOKEN with \
         admin rights on the package)"
            .into()
    } else {
        "check the token's permissions for this repository".into()
    }
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim();
            p == "rel=\"next\"" || p == "rel=next"
        });
        is_next.then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_kinds_by_prefix() {
        assert_eq!(TokenKind::of(&Secret::new("ghp_abc")), TokenKind::Classic);
        assert_eq!(TokenKind::of(&Secret::new("github_pat_11AB")), TokenKind::FineGrained);
        assert_eq!(TokenKind::of(&Secret::new("ghs_abc")), TokenKind::Installation);
        assert_eq!(TokenKind::of(&Secret::new("gho_abc")), TokenKind::OAuth);
        assert_eq!(TokenKind::of(&Secret::new("abcdef")), TokenKind::Unknown);
    }

    #[test]
    fn next_link_is_found_among_others() {
        let h = r#"<https://api.github.com/repositories/1/issues/7/comments?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/1/issues/7/comments?per_page=100&page=3>; rel="last""#;
        assert_eq!(
            next_link(h).as_deref(),
            Some("https://api.github.com/repositories/1/issues/7/comments?per_page=100&page=2")
        );
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="prev", <https://x/?page=1>; rel="first""#), None);
    }

    #[test]
    fn rate_limit_waits_follow_the_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(rate_limit_wait(StatusCode::FORBIDDEN, &h), Some(Duration::from_secs(3)));
        assert_eq!(rate_limit_wait(StatusCode::NOT_FOUND, &h), None);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset", (now_secs() + 5).to_string().parse().unwrap());
        let w = rate_limit_wait(StatusCode::FORBIDDEN, &h).unwrap();
        assert!(w >= Duration::from_secs(4) && w <= Duration::from_secs(5), "{w:?}");
        // A plain 403 (no permission) is not a rate limit.
        assert_eq!(rate_limit_wait(StatusCode::FORBIDDEN, &HeaderMap::new()), None);
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let opts = |u: &str| GithubOptions { api_url: Url::parse(u).unwrap(), ..Default::default() };
        assert!(GithubClient::with_token(opts("http://127.0.0.1:9/"), Secret::new("t0ken")).is_ok());
        let err = GithubClient::with_token(opts("http://github.example.com/"), Secret::new("t0ken")).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_bad_app_key_names_its_file() {
        let app = AppCredentials {
            app_id: 1,
            private_key: Secret::new("not a key"),
            source_desc: "`[github] app_private_key_file` = /k.pem".into(),
            installation_id: None,
        };
        let err = app_jwt(&app, SystemTime::now()).unwrap_err().to_string();
        assert!(err.contains("/k.pem"), "{err}");
    }
}
