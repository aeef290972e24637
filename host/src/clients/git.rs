//! git, through the `git` command line.
//!
//! Why the CLI and not gix: the clone must behave exactly like the git every CI runner and
//! forge is tested against (protocol v2 negotiation, shallow fetches by SHA and their refusal,
//! `refs/pull/*`, credential helpers, proxies and `http.*` settings), and git's own credential
//! helper protocol is the one way to hand a token to a git process without putting it in argv,
//! a URL or a file. gix would add a second HTTP stack and ~150 crates to a build that already
//! compiles wasmtime, for a few hundred ms per run at most.
//!
//! How a token travels: [`command`] starts git from an empty environment (plus the allow-list
//! of [`super::child_env`]), sets no system or global config (`GIT_CONFIG_NOSYSTEM`,
//! `GIT_CONFIG_GLOBAL=/dev/null`: no other credential helper, no `insteadOf`, no hooks path), no
//! prompt (`GIT_TERMINAL_PROMPT=0`, no askpass program), and configures — through
//! `GIT_CONFIG_COUNT` variables, not `-c` arguments — a one-line shell credential helper that
//! prints the username and token from two environment variables of the git process. The token
//! is therefore never in a child's argv, a URL, `.git/config`, a log line or an error (child
//! stderr is scrubbed), and only network commands get it at all.
//!
//! Where a token may go: only to the clone URL. The helper is configured for that URL alone
//! (`credential.<url>.helper`: git asks no helper for any other URL), and git follows no HTTP
//! redirect while it holds a token (`http.followRedirects=false`): a server that answers the
//! clone URL with a redirect to another host fails the fetch with [`GitError::Redirected`]
//! instead of receiving the token.

pub mod ancestry;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::{Classify, FailureKind};
use crate::secret::Secret;

/// Environment variable the credential helper reads the username from.
const USER_VAR: &str = "PRPOD_GIT_USERNAME";
/// Environment variable the credential helper reads the token from.
const TOKEN_VAR: &str = "PRPOD_GIT_PASSWORD";

/// The credential helper: answers `get` with the two variables, ignores `store` and `erase`.
/// `printf '%s\n'` rather than `echo`, which mangles backslashes in some shells.
const HELPER: &str = concat!(
    "!f() { test \"$1\" = get || exit 0; ",
    "printf '%s\\n' \"username=$PRPOD_GIT_USERNAME\" \"password=$PRPOD_GIT_PASSWORD\"; }; f"
);

/// A username and token for HTTPS (GitHub: username `x-access-token`).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Username sent with the token.
    pub username: String,
    /// The token or password.
    pub token: Secret,
}

/// A `git` command with prpod's isolation and, when given, `credentials` for the URL they
/// belong to (the clone URL, or a prefix of it such as `https://host:port`): the credential
/// helper answers for that URL only. Blocking callers (test support) use it as is; async
/// callers wrap it in `tokio::process::Command::from`.
pub fn command(credentials: Option<(&Credentials, &str)>) -> std::process::Command {
    let mut c = std::process::Command::new("git");
    // Nothing from prpod's environment but the allow-list (no token of the runner's, no
    // GIT_DIR, no askpass program), and nothing from the machine's git setup: no stored or
    // cached credentials, no rewrites.
    c.env_clear()
        .envs(super::child_env::allowed(super::child_env::Tool::Git))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GCM_INTERACTIVE", "never");
    let mut config: Vec<(String, &str)> =
        vec![("core.hooksPath".into(), "/dev/null"), ("protocol.version".into(), "2")];
    if let Some((creds, url)) = credentials {
        // The empty helper first resets any inherited list; ours is then the only one, and only
        // for `url`. No redirect is followed with the token: git would re-ask the helper for the
        // new URL (refused by the scope), but curl may already have replayed the header.
        config.extend([
            ("credential.helper".into(), ""),
            (format!("credential.{url}.helper"), HELPER),
            ("http.followRedirects".into(), "false"),
        ]);
        c.env(USER_VAR, &creds.username).env(TOKEN_VAR, creds.token.expose());
    }
    c.env("GIT_CONFIG_COUNT", config.len().to_string());
    for (i, (k, v)) in config.iter().enumerate() {
        c.env(format!("GIT_CONFIG_KEY_{i}"), k).env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
    c
}

/// A git operation that failed. Wrong credentials, a missing repository and an unknown commit
/// are the user's to fix (exit 2); an unreachable or failing server is external (exit 4).
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The server refused the credentials (or asked for some and none were given).
    #[error(
        "failed to fetch from {url}: the server refused the credentials (user `{username}`); check that the token \
         (PRPOD_GIT_TOKEN, GITHUB_TOKEN or `source.token_file`) is valid and can read this repository"
    )]
    Auth {
        /// Repository URL (no credentials).
        url: String,
        /// The username sent.
        username: String,
    },
    /// The repository does not exist (or the token cannot see it).
    #[error("failed to fetch from {url}: repository not found (or the token cannot see it)")]
    NotFound {
        /// Repository URL.
        url: String,
    },
    /// The commit is not in the repository.
    #[error(
        "failed to fetch commit {sha} from {url}: the repository has no such commit (searched {searched}); \
         check --sha, or whether the branch was force-pushed"
    )]
    UnknownCommit {
        /// The commit.
        sha: String,
        /// Repository URL.
        url: String,
        /// What was searched.
        searched: String,
    },
    /// The server answered the clone URL with a redirect, which prpod does not follow with a
    /// token (it could lead the token to another host).
    #[error(
        "failed to fetch from {url}: the server redirects it elsewhere ({why}); prpod follows no redirect with \
         the token: set the repository URL to the one it redirects to"
    )]
    Redirected {
        /// Repository URL.
        url: String,
        /// What git said, scrubbed.
        why: String,
    },
    /// The server could not be reached or kept failing (5xx, refused or dropped connections),
    /// after [`FETCH_ATTEMPTS`] attempts.
    #[error(
        "failed to reach the git server at {url} after {attempts} attempts: {why}; check the URL, or try again later"
    )]
    Unreachable {
        /// Repository URL.
        url: String,
        /// What git said the last time, scrubbed.
        why: String,
        /// How many fetches were tried.
        attempts: u32,
    },
    /// git went silent for too long.
    #[error("failed to {what} {url}: no answer from the server within {secs} s (unreachable or stalled)")]
    Timeout {
        /// What was being done.
        what: String,
        /// Repository URL.
        url: String,
        /// The limit that was hit.
        secs: u64,
    },
    /// Any other failure of a git command.
    #[error("failed to {what}: {why}")]
    Failed {
        /// What was being done.
        what: String,
        /// git's stderr (scrubbed), or the I/O error.
        why: String,
    },
    /// After checkout `HEAD` is not the requested commit.
    #[error("checked out {got}, not the requested {want}: the clone cache may be damaged; delete {cache}")]
    Mismatch {
        /// The commit asked for.
        want: String,
        /// What HEAD is.
        got: String,
        /// The cache directory.
        cache: String,
    },
}

impl Classify for GitError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            GitError::Auth { .. }
            | GitError::NotFound { .. }
            | GitError::UnknownCommit { .. }
            | GitError::Redirected { .. } => None,
            GitError::Unreachable { .. } | GitError::Timeout { .. } | GitError::Failed { .. } => {
                Some(FailureKind::External)
            }
            GitError::Mismatch { .. } => Some(FailureKind::Internal),
        }
    }
}

/// How many times a fetch that failed to reach the server (5xx, refused or dropped
/// connections) is tried in all.
pub const FETCH_ATTEMPTS: u32 = 3;

/// The wait before the second attempt; the third waits twice as long.
const FETCH_RETRY_WAIT: Duration = Duration::from_millis(500);

/// How long git may stay silent.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Before its first output (connecting, authenticating).
    pub connect: Duration,
    /// Between outputs once it started.
    pub stall: Duration,
}

/// What a finished git command printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Whether it exited 0.
    pub success: bool,
    /// stdout.
    pub stdout: String,
    /// stderr, scrubbed of the token.
    pub stderr: String,
}

/// A repository on disk, driven by `git` with optional credentials for network commands.
#[derive(Debug, Clone)]
pub struct Repo {
    dir: std::path::PathBuf,
    credentials: Option<Credentials>,
    timeouts: Timeouts,
}

/// What went wrong with a fetch by SHA, from git's stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchFailure {
    Auth,
    NotFound,
    /// A 3xx answer (redirects are not followed with a token).
    Redirected,
    /// The server will not serve that object by SHA, or does not have it.
    NotServed,
    Unreachable,
    Other,
}

fn classify_stderr(stderr: &str) -> FetchFailure {
    let s = stderr.to_ascii_lowercase();
    if s.contains("returned error: 30") || s.contains("redirect") {
        FetchFailure::Redirected
    } else if s.contains("authentication failed")
        || s.contains("could not read username")
        || s.contains("could not read password")
        || s.contains("returned error: 401")
        || s.contains("returned error: 403")
        || s.contains("terminal prompts disabled")
        || s.contains("invalid username or password")
    {
        FetchFailure::Auth
    } else if s.contains("repository not found")
        || s.contains("returned error: 404")
        || s.contains("not found") && s.contains("repository")
    {
        FetchFailure::NotFound
    } else if s.contains("not our ref")
        || s.contains("unadvertised object")
        || s.contains("couldn't find remote ref")
        || s.contains("no such remote ref")
        || s.contains("upload-pack: not our ref")
        || s.contains("remote error")
    {
        FetchFailure::NotServed
    } else if s.contains("could not resolve host")
        || s.contains("failed to connect")
        || s.contains("connection refused")
        || s.contains("connection timed out")
        || s.contains("connection reset")
        || s.contains("empty reply from server")
        || s.contains("returned error: 5")
        || s.contains("ssl")
        || s.contains("operation too slow")
    {
        FetchFailure::Unreachable
    } else {
        FetchFailure::Other
    }
}

/// The last few lines of git's stderr, without progress noise: what an error message quotes.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("remote: Enumerating")
                && !l.starts_with("remote: Counting")
                && !l.starts_with("remote: Compressing")
                && !l.starts_with("Receiving objects")
                && !l.starts_with("Resolving deltas")
        })
        .collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" / ")
}

impl Repo {
    /// A repository at `dir` (created by [`Repo::init`] if needed).
    pub fn new(dir: &Path, credentials: Option<Credentials>, timeouts: Timeouts) -> Repo {
        Repo { dir: dir.to_path_buf(), credentials, timeouts }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn scrub(&self, text: &str) -> String {
        match &self.credentials {
            Some(c) => c.token.scrub(text),
            None => text.to_string(),
        }
    }

    /// Runs `git ARGS` in the repository; `network` commands get the credentials and the
    /// connect/stall watchdog. Never fails for a non-zero exit: see [`Output::success`].
    /// The credentials go to `url` only.
    pub async fn git(&self, args: &[&str], network: bool, what: &str, url: &str) -> Result<Output, GitError> {
        let creds = if network { self.credentials.as_ref().map(|c| (c, url)) } else { None };
        let mut cmd = tokio::process::Command::from(command(creds));
        cmd.arg("-C").arg(&self.dir).args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        if network {
            // curl aborts a transfer slower than 1 KB/s for the stall time, inside git itself.
            cmd.env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
                .env("GIT_HTTP_LOW_SPEED_TIME", self.timeouts.stall.as_secs().max(1).to_string());
        }
        let mut child = cmd.spawn().map_err(|e| GitError::Failed {
            what: what.into(),
            why: format!("cannot run git ({e}); install git (Debian: apt-get install git)"),
        })?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut out_open, mut err_open) = (true, true);
        let mut heard = false;
        let (mut obuf, mut ebuf) = ([0u8; 8192], [0u8; 8192]);
        while out_open || err_open {
            let limit = if !network {
                // Local commands (checkout of a huge tree) may be slow but never hang on a server.
                Duration::from_secs(3600)
            } else if heard {
                self.timeouts.stall
            } else {
                self.timeouts.connect
            };
            let read = tokio::time::timeout(limit, async {
                tokio::select! {
                    r = stdout.read(&mut obuf), if out_open => (true, r),
                    r = stderr.read(&mut ebuf), if err_open => (false, r),
                }
            })
            .await;
            match read {
                Err(_) => {
                    let _ = child.kill().await;
                    return Err(GitError::Timeout { what: what.into(), url: url.into(), secs: limit.as_secs() });
                }
                Ok((is_out, Ok(0))) | Ok((is_out, Err(_))) => {
                    if is_out {
                        out_open = false;
                    } else {
                        err_open = false;
                    }
                }
                Ok((true, Ok(n))) => {
                    heard = true;
                    out.extend_from_slice(&obuf[..n]);
                }
                Ok((false, Ok(n))) => {
                    heard = true;
                    err.extend_from_slice(&ebuf[..n]);
                }
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| GitError::Failed { what: what.into(), why: format!("waiting for git: {e}") })?;
        let stderr = self.scrub(&String::from_utf8_lossy(&err));
        tracing::debug!(target: "prpod::git", ?args, success = status.success(), stderr = %stderr);
        Ok(Output { success: status.success(), stdout: String::from_utf8_lossy(&out).into_owned(), stderr })
    }

    async fn git_ok(&self, args: &[&str], what: &str) -> Result<String, GitError> {
        let out = self.git(args, false, what, "").await?;
        if !out.success {
            return Err(GitError::Failed { what: what.into(), why: tail(&out.stderr) });
        }
        Ok(out.stdout)
    }

    /// Creates a bare repository at `dir` if it holds none (the clone cache).
    pub async fn init_bare(&self) -> Result<(), GitError> {
        if self.dir.join("HEAD").is_file() && self.dir.join("objects").is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| GitError::Failed {
            what: format!("create the clone cache {}", self.dir.display()),
            why: e.to_string(),
        })?;
        self.git_ok(&["init", "-q", "--bare"], "initialise the clone cache").await?;
        // Work trees borrow the cache's objects: gc must never prune them from under a run.
        self.git_ok(&["config", "gc.auto", "0"], "configure the clone cache").await?;
        Ok(())
    }

    /// Whether the repository is shallow (some commits' parents are missing).
    pub async fn is_shallow(&self) -> Result<bool, GitError> {
        let out =
            self.git_ok(&["rev-parse", "--is-shallow-repository"], "check whether the clone cache is shallow").await?;
        Ok(out.trim() == "true")
    }

    /// Whether the commit is already in the repository.
    pub async fn has_commit(&self, sha: &str) -> bool {
        let arg = format!("{sha}^{{commit}}");
        matches!(self.git(&["cat-file", "-e", &arg], false, "look up a commit", "").await, Ok(o) if o.success)
    }

    /// Fetches `refspec` from `url` (`depth` 0 = all history, or `deepen` more commits).
    async fn fetch(&self, url: &str, refspec: &str, depth: Fetch) -> Result<(Output, FetchFailure), GitError> {
        let depth_arg;
        let mut args = vec!["fetch", "--no-tags", "--no-write-fetch-head", "--progress", "--no-recurse-submodules"];
        match depth {
            Fetch::Depth(0) => {}
            Fetch::Depth(n) => {
                depth_arg = format!("--depth={n}");
                args.push(&depth_arg);
            }
            Fetch::Deepen(n) => {
                depth_arg = format!("--deepen={n}");
                args.push(&depth_arg);
            }
            Fetch::Unshallow => args.push("--unshallow"),
        }
        args.extend(["--", url, refspec]);
        // A git server behind a load balancer answers 502/503 while it restarts, and connections
        // drop: those (and only those: never a refusal of the token, a 404 or a stall that
        // already waited out its limit) are tried again, as the registry client does. A failed
        // fetch changes no ref and leaves no pack behind, so a retry starts clean.
        let mut attempt = 1;
        loop {
            let out = self.git(&args, true, "fetch from", url).await?;
            let failure = if out.success { FetchFailure::Other } else { classify_stderr(&out.stderr) };
            if failure != FetchFailure::Unreachable || attempt >= FETCH_ATTEMPTS {
                return Ok((out, failure));
            }
            let wait = FETCH_RETRY_WAIT * attempt;
            tracing::info!(
                target: "prpod::git",
                "fetch from {url} failed ({}); attempt {}/{FETCH_ATTEMPTS} in {} ms",
                tail(&out.stderr),
                attempt + 1,
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn fetch_error(&self, url: &str, failure: FetchFailure, out: &Output) -> GitError {
        match failure {
            FetchFailure::Auth => GitError::Auth {
                url: url.into(),
                username: self.credentials.as_ref().map_or("(none: no token given)".into(), |c| c.username.clone()),
            },
            FetchFailure::NotFound => GitError::NotFound { url: url.into() },
            FetchFailure::Redirected => GitError::Redirected { url: url.into(), why: tail(&out.stderr) },
            FetchFailure::Unreachable => {
                GitError::Unreachable { url: url.into(), why: tail(&out.stderr), attempts: FETCH_ATTEMPTS }
            }
            FetchFailure::NotServed | FetchFailure::Other => {
                GitError::Failed { what: format!("fetch from {url}"), why: tail(&out.stderr) }
            }
        }
    }

    /// Fetches commit `sha` from `url`: by SHA at `depth` when the server allows it, else the
    /// `fallback` refs (the PR's head ref, the branch) at `depth`, deepened until the commit is
    /// there. Returns the number of objects received.
    pub async fn fetch_commit(&self, url: &str, sha: &str, depth: u32, fallback: &[String]) -> Result<u64, GitError> {
        let keep = format!("+{sha}:refs/prpod/fetched");
        let (out, failure) = self.fetch(url, &keep, Fetch::Depth(depth)).await?;
        if out.success {
            return Ok(objects_received(&out.stderr));
        }
        match failure {
            FetchFailure::NotServed | FetchFailure::Other => {}
            _ => return Err(self.fetch_error(url, failure, &out)),
        }
        tracing::debug!(target: "prpod::git", "fetch by SHA refused ({}); falling back to refs", tail(&out.stderr));
        let mut received = 0;
        let mut searched = Vec::new();
        for r in fallback {
            let refspec = format!("+{r}:refs/prpod/fallback");
            let (out, failure) = self.fetch(url, &refspec, Fetch::Depth(depth)).await?;
            if !out.success {
                if failure == FetchFailure::NotServed {
                    searched.push(format!("{r} (absent)"));
                    continue;
                }
                return Err(self.fetch_error(url, failure, &out));
            }
            received += objects_received(&out.stderr);
            searched.push(r.clone());
            // The commit may be older than the ref's tip: deepen, then take everything.
            let mut steps = if depth == 0 { vec![] } else { vec![Fetch::Deepen(100), Fetch::Unshallow] };
            steps.reverse();
            loop {
                if self.has_commit(sha).await {
                    self.git_ok(&["update-ref", "refs/prpod/fetched", sha], "record the fetched commit").await?;
                    return Ok(received);
                }
                let Some(step) = steps.pop() else { break };
                // `--unshallow` on a complete repository is an error: ask git, which knows where
                // the boundary lives (`shallow` in the bare cache, not `.git/shallow`).
                if step == Fetch::Unshallow && !self.is_shallow().await? {
                    break;
                }
                let (out, failure) = self.fetch(url, &refspec, step).await?;
                if !out.success {
                    return Err(self.fetch_error(url, failure, &out));
                }
                received += objects_received(&out.stderr);
            }
        }
        if searched.is_empty() {
            searched.push("nothing: the server refuses fetches by SHA and no branch was given".into());
        }
        Err(GitError::UnknownCommit { sha: sha.into(), url: url.into(), searched: searched.join(", ") })
    }

    /// Makes `work` a repository of its own that borrows this one's objects (git alternates:
    /// nothing is copied), checks out `sha` there detached, and verifies `HEAD`. Each run builds
    /// from its own work tree, so runs never see each other's files and the cache is locked only
    /// while fetching.
    pub async fn checkout_into(&self, work: &Path, sha: &str) -> Result<(), GitError> {
        let fail = |what: &str, e: std::io::Error| GitError::Failed { what: what.into(), why: e.to_string() };
        let wt = Repo::new(work, None, self.timeouts);
        wt.git_ok(&["init", "-q"], "create the work tree").await?;
        let objects = self.dir.join("objects");
        std::fs::write(work.join(".git/objects/info/alternates"), format!("{}\n", objects.display()))
            .map_err(|e| fail("link the work tree to the clone cache", e))?;
        // A shallow cache's boundary must be known to the work tree too, or git looks for parents.
        let shallow = self.dir.join("shallow");
        if shallow.is_file() {
            std::fs::copy(&shallow, work.join(".git/shallow")).map_err(|e| fail("copy the shallow boundary", e))?;
        }
        wt.git_ok(&["checkout", "-q", "--force", "--detach", sha], "check out the commit").await?;
        let head = wt.git_ok(&["rev-parse", "HEAD"], "read HEAD").await?;
        let head = head.trim();
        if head != sha {
            return Err(GitError::Mismatch {
                want: sha.into(),
                got: head.into(),
                cache: self.dir.display().to_string(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    Depth(u32),
    Deepen(u32),
    Unshallow,
}

/// Objects received, from git's progress (`Receiving objects: 100% (12/12)`).
fn objects_received(stderr: &str) -> u64 {
    stderr
        .split(['\r', '\n'])
        .filter_map(|l| l.trim().strip_prefix("Receiving objects:"))
        .filter_map(|l| l.split_once('/').and_then(|(_, r)| r.split(')').next()?.trim().parse().ok()))
        .next_back()
        .or_else(|| {
            // A tiny fetch prints no progress, only "remote: Total N".
            stderr
                .split(['\r', '\n'])
                .filter_map(|l| l.trim().strip_prefix("remote: Total "))
                .find_map(|l| l.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_and_token_stay_out_of_argv() {
        let creds = Credentials { username: "x-access-token".into(), token: Secret::new("ghs_t0ken") };
        let c = command(Some((&creds, "https://git.example/acme/web.git")));
        assert!(c.get_args().next().is_none(), "no arguments: config travels in the environment");
        let envs: Vec<(String, String)> =
            c.get_envs().filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string()))).collect();
        let get = |k: &str| envs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get(TOKEN_VAR), Some("ghs_t0ken"));
        assert_eq!(get("GIT_TERMINAL_PROMPT"), Some("0"));
        assert_eq!(get("GIT_CONFIG_GLOBAL"), Some("/dev/null"));
        assert!(envs.iter().any(|(_, v)| v == HELPER));
        assert!(envs.iter().any(|(_, v)| v == "credential.https://git.example/acme/web.git.helper"));
        assert!(!HELPER.contains("ghs_t0ken"));
        let anonymous = command(None);
        assert!(anonymous.get_envs().all(|(_, v)| v.is_none_or(|v| v != "ghs_t0ken")));
    }

    /// What git's credential machinery answers for `url` (the token only for the scoped URL).
    fn fill(scope: &str, url: &str) -> String {
        use std::io::Write;
        let creds = Credentials { username: "x-access-token".into(), token: Secret::new("t0ken-for-origin") };
        let mut child = command(Some((&creds, scope)))
            .args(["credential", "fill"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("url={url}\n\n").as_bytes()).unwrap();
        String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
    }

    #[test]
    fn the_helper_answers_for_the_clone_url_only() {
        let scope = "http://127.0.0.1:7001/acme/web.git";
        assert!(fill(scope, scope).contains("password=t0ken-for-origin"));
        for other in [
            "http://127.0.0.1:7002/acme/web.git",
            "https://127.0.0.1:7001/acme/web.git",
            "http://evil.example/acme/web.git",
            "http://127.0.0.1:7001/other/repo.git",
        ] {
            assert!(!fill(scope, other).contains("t0ken"), "{other} got the token");
        }
    }

    #[test]
    fn stderr_is_classified() {
        assert_eq!(
            classify_stderr("fatal: unable to access 'http://h/r.git/': The requested URL returned error: 302"),
            FetchFailure::Redirected
        );
        assert_eq!(classify_stderr("fatal: Authentication failed for 'http://h/r.git/'"), FetchFailure::Auth);
        assert_eq!(
            classify_stderr("fatal: could not read Username for 'https://h': terminal prompts disabled"),
            FetchFailure::Auth
        );
        assert_eq!(classify_stderr("fatal: remote error: upload-pack: not our ref 0123"), FetchFailure::NotServed);
        assert_eq!(
            classify_stderr(
                "fatal: unable to access 'http://127.0.0.1:1/r.git/': Failed to connect to 127.0.0.1 port 1"
            ),
            FetchFailure::Unreachable
        );
        assert_eq!(
            classify_stderr("remote: Repository not found.\nfatal: repository 'x' not found"),
            FetchFailure::NotFound
        );
    }

    #[test]
    fn objects_are_counted_from_progress() {
        let s = "remote: Enumerating objects: 5, done.\rReceiving objects:  40% (2/5)\rReceiving objects: 100% (5/5), done.\n";
        assert_eq!(objects_received(s), 5);
        assert_eq!(objects_received("remote: Total 3 (delta 0), reused 0 (delta 0), pack-reused 0\n"), 3);
        assert_eq!(objects_received(""), 0);
    }
}
