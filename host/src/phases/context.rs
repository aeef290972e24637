//! The first phase: which pull request (or branch) the run is about, as a [`PrContext`].
//!
//! Sources, strongest first: command-line flags ([`ContextFlags`]); `PRPOD_SOURCE_URL`; GitHub
//! Actions (`GITHUB_EVENT_PATH`'s `pull_request` payload, `GITHUB_REPOSITORY`, `GITHUB_HEAD_REF`,
//! `GITHUB_SHA`, `GITHUB_SERVER_URL`); `[source] url` in `prpod.toml`. Flags win field by field,
//! so `--sha` can pin a commit while the payload still supplies labels and author.
//!
//! In a `pull_request` run `GITHUB_SHA` is the *merge* commit GitHub made, not the PR's head:
//! the payload's `pull_request.head.sha` is preferred, and `GITHUB_SHA` is used only without a
//! payload. A PR from a fork is cloned from the base repository (GitHub serves the head commit
//! there too, under `refs/pull/<n>/head`), so the token of the base repository is the one used.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::Env;
use crate::model::{Event, PrContext};
use crate::phases::source::SourceConfig;

/// The PR context as the operator gave it (the CLI's `--repo-url`, `--pr`, `--branch`, `--sha`,
/// `--base`; each `None` when not given).
#[derive(Debug, Clone, Default)]
pub struct ContextFlags {
    /// Repository clone URL (HTTPS, no credentials in it).
    pub repo_url: Option<String>,
    /// Pull request number.
    pub pr: Option<u64>,
    /// Head branch of the pull request.
    pub branch: Option<String>,
    /// Full commit SHA to build (40 hex digits).
    pub sha: Option<String>,
    /// Branch the pull request targets.
    pub base: Option<String>,
}

/// Why no usable context could be put together. All of these are bad input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A required field came from nowhere.
    #[error("no {what}: pass {flag}{github}")]
    Missing {
        /// The field.
        what: &'static str,
        /// The flag that sets it.
        flag: &'static str,
        /// Where GitHub Actions would have supplied it.
        github: &'static str,
    },
    /// The repository URL carries a username or token.
    #[error(
        "the repository URL {redacted} has credentials in it; pass the URL without them and give the \
         token in PRPOD_GIT_TOKEN (or GITHUB_TOKEN, or `[source] token_file`): prpod hands it to git \
         through a credential helper, while the URL is shown in logs and to plugins, which must never \
         see a token"
    )]
    UserInfo {
        /// The URL with its user info replaced.
        redacted: String,
    },
    /// The repository URL is not an http(s) URL prpod can clone.
    #[error("the repository URL `{url}` is not usable: {why}")]
    BadUrl {
        /// The URL (known to have no user info).
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The commit is not a full SHA.
    #[error("`{0}` is not a full commit SHA (40 hex digits; a branch name or short SHA cannot be pinned)")]
    BadSha(String),
    /// The event payload could not be read.
    #[error("failed to read the GitHub event payload {path} (GITHUB_EVENT_PATH): {why}")]
    Payload {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Resolves the PR context from flags, environment and config (see the module docs).
pub fn resolve(flags: &ContextFlags, source: &SourceConfig, env: &Env) -> Result<PrContext, ContextError> {
    let payload = match env.get("GITHUB_EVENT_PATH") {
        Some(path) => read_payload(&PathBuf::from(path))?,
        None => None,
    };
    let pr = payload.as_ref().and_then(|p| p.pull_request.as_ref());

    let server = env.get("GITHUB_SERVER_URL").unwrap_or("https://github.com").trim_end_matches('/');
    let github_url = env.get("GITHUB_REPOSITORY").map(|r| format!("{server}/{r}.git"));
    let payload_url = pr
        .and_then(|pr| pr.base.repo.as_ref())
        .or_else(|| payload.as_ref().and_then(|p| p.repository.as_ref()))
        .and_then(|r| r.clone_url.clone());
    let url = flags
        .repo_url
        .clone()
        .or_else(|| env.get("PRPOD_SOURCE_URL").map(str::to_string))
        .or(payload_url)
        .or(github_url)
        .or_else(|| source.url.clone())
        .ok_or(ContextError::Missing {
            what: "repository URL",
            flag: "--repo-url URL (or set `[source] url` / PRPOD_SOURCE_URL)",
            github: " (GitHub Actions sets GITHUB_REPOSITORY)",
        })?;
    let url = check_url(&url)?;

    let repository = pr
        .and_then(|pr| pr.base.repo.as_ref())
        .map(|r| r.full_name.clone())
        .or_else(|| env.get("GITHUB_REPOSITORY").map(str::to_string))
        .unwrap_or_else(|| slug_from_url(&url));

    let number = flags.pr.or(pr.map(|pr| pr.number));
    if number == Some(0) {
        return Err(ContextError::Invalid("--pr must be a pull request number (1 or more)".into()));
    }
    let branch = flags
        .branch
        .clone()
        .or_else(|| pr.map(|pr| pr.head.ref_.clone()))
        .or_else(|| env.get("GITHUB_HEAD_REF").map(str::to_string))
        .or_else(|| env.get("GITHUB_REF_NAME").map(str::to_string))
        .ok_or(ContextError::Missing {
            what: "branch",
            flag: "--branch NAME",
            github: " (GitHub Actions sets GITHUB_HEAD_REF)",
        })?;
    if branch.trim().is_empty() {
        return Err(ContextError::Invalid("--branch is empty".into()));
    }
    let sha = flags
        .sha
        .clone()
        .or_else(|| pr.map(|pr| pr.head.sha.clone()))
        .or_else(|| env.get("GITHUB_SHA").map(str::to_string))
        .ok_or(ContextError::Missing {
            what: "commit",
            flag: "--sha SHA",
            github: " (GitHub Actions sets GITHUB_SHA)",
        })?;
    let sha = check_sha(&sha)?;
    let base_branch = flags
        .base
        .clone()
        .or_else(|| pr.map(|pr| pr.base.ref_.clone()))
        .or_else(|| env.get("GITHUB_BASE_REF").map(str::to_string));

    let event = match (payload.as_ref().and_then(|p| p.action.as_deref()), pr) {
        (_, None) => Event::Manual,
        (Some("opened"), _) => Event::Opened,
        (Some("reopened"), _) => Event::Reopened,
        (Some("closed"), _) => Event::Closed,
        // synchronize, and every action that asks for the preview to show the current head
        // (labeled, edited, ready_for_review, ...): the run is an update.
        _ => Event::Synchronize,
    };
    let (labels, author, draft, fork) = match pr {
        Some(pr) => (
            pr.labels.iter().map(|l| l.name.clone()).collect(),
            pr.user.as_ref().map(|u| u.login.clone()).unwrap_or_default(),
            pr.draft.unwrap_or(false),
            // A deleted fork leaves `head.repo` null: still a fork.
            match (&pr.head.repo, &pr.base.repo) {
                (Some(h), Some(b)) => h.full_name != b.full_name,
                (None, _) => true,
                (Some(_), None) => false,
            },
        ),
        None => (Vec::new(), env.get("GITHUB_ACTOR").unwrap_or_default().to_string(), false, false),
    };

    Ok(PrContext {
        repository_url: url,
        repository,
        number,
        branch,
        base_branch,
        sha,
        event,
        labels,
        author,
        draft,
        fork,
        target: None,
    })
}

/// One line for people: `PR #7 acme/web feature/login @ 0123456789ab`.
pub fn summary(ctx: &PrContext) -> String {
    let pr = ctx.number.map(|n| format!("PR #{n} ")).unwrap_or_default();
    let fork = if ctx.fork { " (from a fork)" } else { "" };
    format!("{pr}{} {} @ {}{fork}", ctx.repository, ctx.branch, &ctx.sha[..12.min(ctx.sha.len())])
}

/// Checks a clone URL: http(s), a host, and no user info (the error never repeats the
/// credentials). Returns it unchanged.
pub fn check_url(url: &str) -> Result<String, ContextError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        // A URL that does not parse may still hold a token before an `@`: say so without it.
        let shown = match url.rsplit_once('@') {
            Some((_, host)) => format!("<redacted>@{host}"),
            None => url.to_string(),
        };
        ContextError::BadUrl { url: shown, why: format!("{e} (use https://HOST/OWNER/NAME.git)") }
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let mut r = parsed.clone();
        let _ = r.set_password(None);
        let _ = r.set_username("");
        let redacted = r.as_str().replacen("://", "://<redacted>@", 1);
        return Err(ContextError::UserInfo { redacted });
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        let mut shown = parsed.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        return Err(ContextError::BadUrl {
            url: format!("{shown}?<redacted>"),
            why: "it has a query or fragment, which can hold a token and would reach plugins and logs; \
                  give the URL without them"
                .into(),
        });
    }
    match parsed.scheme() {
        "https" | "http" => {}
        s => {
            return Err(ContextError::BadUrl {
                url: url.into(),
                why: format!("scheme `{s}`: prpod clones over HTTPS with a token (http for a local server)"),
            });
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ContextError::BadUrl { url: url.into(), why: "no host".into() });
    }
    Ok(url.to_string())
}

fn check_sha(sha: &str) -> Result<String, ContextError> {
    let sha = sha.trim().to_ascii_lowercase();
    // SHA-1 repositories (40) and SHA-256 repositories (64).
    if (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha)
    } else {
        Err(ContextError::BadSha(sha))
    }
}

/// `owner/name` from `https://host/owner/name.git`.
/// The `owner/name` slug of a clone URL (`https://host/acme/web.git` -> `acme/web`).
pub fn slug_from_url(url: &str) -> String {
    let path = url::Url::parse(url).map(|u| u.path().to_string()).unwrap_or_default();
    let parts: Vec<&str> = path.trim_matches('/').trim_end_matches(".git").rsplitn(3, '/').collect();
    match parts.as_slice() {
        [name, owner, ..] => format!("{owner}/{name}"),
        [name] => (*name).to_string(),
        [] => String::new(),
    }
}

fn read_payload(path: &std::path::Path) -> Result<Option<Payload>, ContextError> {
    let err = |why: String| ContextError::Payload { path: path.to_path_buf(), why };
    let text = crate::input::read_text_file(path, crate::input::MAX_JSON_BYTES, "event payload")
        .map_err(|e| err(e.reason()))?;
    let payload: Payload = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    Ok(Some(payload))
}

// The parts of GitHub's webhook payloads prpod reads (the `pull_request` event; other events
// carry `repository` only). Unknown fields are ignored on purpose: GitHub adds fields often.
#[derive(Debug, Deserialize)]
struct Payload {
    action: Option<String>,
    pull_request: Option<PullRequest>,
    repository: Option<Repo>,
}

#[derive(Debug, Deserialize)]
struct PullRequest {
    number: u64,
    draft: Option<bool>,
    #[serde(default)]
    labels: Vec<Label>,
    user: Option<User>,
    head: Branch,
    base: Branch,
}

#[derive(Debug, Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    ref_: String,
    sha: String,
    repo: Option<Repo>,
}

#[derive(Debug, Deserialize)]
struct Repo {
    full_name: String,
    clone_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Label {
    name: String,
}

#[derive(Debug, Deserialize)]
struct User {
    login: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        format!("{}/../tests/fixtures/github/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn actions_env(payload: &str, extra: &[(&str, &str)]) -> Env {
        let mut vars = vec![
            ("GITHUB_ACTIONS", "true".to_string()),
            ("GITHUB_EVENT_NAME", "pull_request".into()),
            ("GITHUB_EVENT_PATH", fixture(payload)),
            ("GITHUB_REPOSITORY", "acme/web".into()),
            ("GITHUB_SERVER_URL", "https://github.com".into()),
            // The merge commit: must not be mistaken for the head.
            ("GITHUB_SHA", "ffffffffffffffffffffffffffffffffffffffff".into()),
            ("GITHUB_HEAD_REF", "feature/login".into()),
            ("GITHUB_BASE_REF", "main".into()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        Env::from_pairs(vars)
    }

    #[test]
    fn pull_request_opened() {
        let ctx =
            resolve(&ContextFlags::default(), &SourceConfig::default(), &actions_env("pull_request.opened.json", &[]))
                .unwrap();
        assert_eq!(ctx.repository_url, "https://github.com/acme/web.git");
        assert_eq!(ctx.repository, "acme/web");
        assert_eq!(ctx.number, Some(42));
        assert_eq!(ctx.branch, "feature/login");
        assert_eq!(ctx.base_branch.as_deref(), Some("main"));
        assert_eq!(ctx.sha, "6dcb09b5b57875f334f61aebed695e2e4193db5e");
        assert_eq!(ctx.event, Event::Opened);
        assert_eq!(ctx.labels, ["preview", "frontend"]);
        assert_eq!(ctx.author, "octocat");
        assert!(!ctx.draft);
        assert!(!ctx.fork);
    }

    #[test]
    fn pull_request_synchronize_draft() {
        let ctx = resolve(
            &ContextFlags::default(),
            &SourceConfig::default(),
            &actions_env("pull_request.synchronize.json", &[]),
        )
        .unwrap();
        assert_eq!(ctx.event, Event::Synchronize);
        assert_eq!(ctx.sha, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c");
        assert!(ctx.draft);
        assert!(ctx.labels.is_empty());
        assert!(!ctx.fork);
    }

    #[test]
    fn pull_request_from_a_fork_clones_the_base_repository() {
        let ctx =
            resolve(&ContextFlags::default(), &SourceConfig::default(), &actions_env("pull_request.fork.json", &[]))
                .unwrap();
        assert!(ctx.fork);
        assert_eq!(ctx.repository_url, "https://github.com/acme/web.git");
        assert_eq!(ctx.repository, "acme/web");
        assert_eq!(ctx.branch, "patch-1");
        assert_eq!(ctx.author, "contributor");
        assert_eq!(ctx.number, Some(1347));
    }

    #[test]
    fn flags_win_field_by_field() {
        let flags = ContextFlags {
            sha: Some("ABCDEF0123456789ABCDEF0123456789ABCDEF01".into()),
            branch: Some("other".into()),
            ..ContextFlags::default()
        };
        let ctx = resolve(&flags, &SourceConfig::default(), &actions_env("pull_request.opened.json", &[])).unwrap();
        assert_eq!(ctx.sha, "abcdef0123456789abcdef0123456789abcdef01");
        assert_eq!(ctx.branch, "other");
        assert_eq!(ctx.number, Some(42), "the payload still fills what flags leave out");
        assert_eq!(ctx.labels, ["preview", "frontend"]);
    }

    #[test]
    fn flags_alone() {
        let flags = ContextFlags {
            repo_url: Some("http://127.0.0.1:47580/acme/web.git".into()),
            pr: Some(7),
            branch: Some("feature/x".into()),
            sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
            base: None,
        };
        let ctx = resolve(&flags, &SourceConfig::default(), &Env::default()).unwrap();
        assert_eq!(ctx.repository, "acme/web");
        assert_eq!(ctx.event, Event::Manual);
        assert_eq!(ctx.base_branch, None);
    }

    #[test]
    fn without_a_payload_github_variables_are_used() {
        let env = Env::from_pairs([
            ("GITHUB_REPOSITORY", "acme/web"),
            ("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567"),
            ("GITHUB_REF_NAME", "main"),
            ("GITHUB_SERVER_URL", "https://ghe.example.com/"),
        ]);
        let ctx = resolve(&ContextFlags::default(), &SourceConfig::default(), &env).unwrap();
        assert_eq!(ctx.repository_url, "https://ghe.example.com/acme/web.git");
        assert_eq!(ctx.branch, "main");
        assert_eq!(ctx.number, None);
    }

    #[test]
    fn a_url_with_a_token_is_refused_without_repeating_it() {
        let flags = ContextFlags {
            repo_url: Some("https://x-access-token:ghs_s3cr3tT0ken@github.com/acme/web.git".into()),
            branch: Some("b".into()),
            sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
            ..ContextFlags::default()
        };
        let e = resolve(&flags, &SourceConfig::default(), &Env::default()).unwrap_err().to_string();
        assert!(!e.contains("ghs_s3cr3tT0ken") && !e.contains("x-access-token:"), "{e}");
        assert!(e.contains("PRPOD_GIT_TOKEN") && e.contains("plugins"), "{e}");
        assert!(e.contains("https://<redacted>@github.com/acme/web.git"), "{e}");
        // Even one that does not parse as a URL.
        let e = check_url("https://user:p@ss word@host/x").unwrap_err().to_string();
        assert!(!e.contains("p@ss"), "{e}");
    }

    #[test]
    fn bad_values() {
        let flags = |sha: &str, url: &str| ContextFlags {
            repo_url: Some(url.into()),
            branch: Some("b".into()),
            sha: Some(sha.into()),
            ..ContextFlags::default()
        };
        let e = resolve(&flags("abc123", "https://h/a/b.git"), &SourceConfig::default(), &Env::default()).unwrap_err();
        assert!(matches!(e, ContextError::BadSha(_)), "{e}");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let e = resolve(&flags(sha, "git@github.com:a/b.git"), &SourceConfig::default(), &Env::default()).unwrap_err();
        assert!(e.to_string().contains("https://HOST/OWNER/NAME.git"), "{e}");
        let e =
            resolve(&flags(sha, "ssh://github.com/a/b.git"), &SourceConfig::default(), &Env::default()).unwrap_err();
        assert!(e.to_string().contains("HTTPS"), "{e}");
        let e = resolve(&ContextFlags::default(), &SourceConfig::default(), &Env::default()).unwrap_err();
        assert!(e.to_string().contains("--repo-url"), "{e}");
    }
}
