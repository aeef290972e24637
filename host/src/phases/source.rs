//! The source phase: the PR's commit, checked out from a clone cache ([`Checkout`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::clients::git;
use crate::config::{ConfigError, Env, Section};
use crate::error::ResultExt;
use crate::model::Phase;
use crate::model::{Checkout, PrContext};
use crate::phases::Secrets;
use crate::report::PhaseHandle;

/// `[source]`: how the repository is cloned. The URL itself is part of the PR context
/// (`--repo-url` > `PRPOD_SOURCE_URL` > GitHub Actions > `url` here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Clone URL when neither flags nor GitHub Actions give one (`PRPOD_SOURCE_URL` beats it).
    pub url: Option<String>,
    /// History to fetch: 1 (default) fetches only the commit; 0 fetches everything
    /// (`PRPOD_SOURCE_DEPTH`, `--depth`).
    pub depth: u32,
    /// Username sent with the token: `x-access-token` (GitHub App and Actions tokens) by default;
    /// your user name for a personal token on other forges (`PRPOD_GIT_USER`).
    pub username: String,
    /// File holding the token (`PRPOD_GIT_TOKEN_FILE`); otherwise `PRPOD_GIT_TOKEN`, then
    /// `GITHUB_TOKEN`; none: clone anonymously.
    pub token_file: Option<PathBuf>,
    /// Where clones are cached between runs (`PRPOD_SOURCE_CACHE_DIR`; default
    /// `$PRPOD_CACHE_DIR/git`, i.e. `~/.cache/prpod/git`).
    pub cache_dir: Option<PathBuf>,
    /// Seconds git may take to answer at all (connect, authenticate) before prpod gives up on the
    /// server (`PRPOD_SOURCE_CONNECT_TIMEOUT_SECS`).
    pub connect_timeout_secs: u64,
    /// Seconds a fetch may go without progress once it started (`PRPOD_SOURCE_STALL_TIMEOUT_SECS`).
    pub stall_timeout_secs: u64,
    /// Whether a pull request from a fork may run while the run holds secrets (a git token or
    /// registry credentials). Default false: such a run is refused (`PRPOD_ALLOW_FORKS`).
    pub allow_forks: bool,
    /// `host:port`s of git servers the token may be sent to over plain HTTP besides this
    /// machine's loopback: a git server on a private network (a dispatched Job reaching one
    /// through the pod network). An operator's key; `PRPOD_SOURCE_PLAIN_HTTP`, comma-separated.
    pub plain_http: Vec<String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            url: None,
            depth: 1,
            username: "x-access-token".into(),
            token_file: None,
            cache_dir: None,
            connect_timeout_secs: 8,
            stall_timeout_secs: 60,
            allow_forks: false,
            plain_http: Vec::new(),
        }
    }
}

impl Section for SourceConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.apply("PRPOD_SOURCE_DEPTH", "source.depth", &mut self.depth)?;
        env.apply("PRPOD_GIT_USER", "source.username", &mut self.username)?;
        env.apply_opt("PRPOD_GIT_TOKEN_FILE", "source.token_file", &mut self.token_file)?;
        env.apply_opt("PRPOD_SOURCE_CACHE_DIR", "source.cache_dir", &mut self.cache_dir)?;
        env.apply("PRPOD_SOURCE_CONNECT_TIMEOUT_SECS", "source.connect_timeout_secs", &mut self.connect_timeout_secs)?;
        env.apply("PRPOD_SOURCE_STALL_TIMEOUT_SECS", "source.stall_timeout_secs", &mut self.stall_timeout_secs)?;
        env.apply("PRPOD_ALLOW_FORKS", "source.allow_forks", &mut self.allow_forks)?;
        if let Some(v) = env.get("PRPOD_SOURCE_PLAIN_HTTP") {
            self.plain_http = v.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect();
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| ConfigError::Value { key: key.into(), why: why.into() };
        if self.username.is_empty() || self.username.contains(['\n', ':']) {
            return Err(bad("source.username", "must be a non-empty name without `:` or newlines"));
        }
        if !(1..=600).contains(&self.connect_timeout_secs) {
            return Err(bad("source.connect_timeout_secs", "must be between 1 and 600"));
        }
        if !(1..=3600).contains(&self.stall_timeout_secs) {
            return Err(bad("source.stall_timeout_secs", "must be between 1 and 3600"));
        }
        Ok(())
    }
}

/// The repository's prpod.toml at the checked-out commit, when it has one, checked against
/// what a repository may set ([`crate::repo_config`]); the phase notes which keys it set.
pub fn repository_config(
    checkout: &Checkout,
    config: &crate::config::Config,
    phase: &PhaseHandle,
) -> Result<Option<crate::repo_config::RepositoryConfig>, ConfigError> {
    let repo = crate::repo_config::read(&checkout.path, config.deploy.allow_repository_chart)?;
    if let Some(r) = &repo {
        let keys = r.keys();
        phase.note(format!(
            "the commit's prpod.toml sets {}",
            if keys.is_empty() { "nothing".to_string() } else { keys.join(", ") }
        ));
    }
    Ok(repo)
}

/// Fetches the PR's commit into the clone cache and checks it out. The cache holds one
/// repository per clone URL; a run holds its lock, so two runs for the same repository on one
/// machine take turns instead of corrupting it. A commit already in the cache is not fetched.
pub async fn fetch_checkout(
    ctx: &PrContext,
    config: &SourceConfig,
    secrets: &Secrets,
    phase: &PhaseHandle,
) -> anyhow::Result<Checkout> {
    let url = &ctx.repository_url;
    check_token_transport(url, secrets.git_token.is_some(), &config.plain_http)?;
    let root = cache_dir(config)?;
    private_dir(&root)?;
    let dir = root.join(format!("{}.git", cache_key(url)));
    let lock = lock(&dir, phase).await?;
    let credentials =
        secrets.git_token.clone().map(|token| git::Credentials { username: config.username.clone(), token });
    let timeouts = git::Timeouts {
        connect: Duration::from_secs(config.connect_timeout_secs),
        stall: Duration::from_secs(config.stall_timeout_secs),
    };
    let repo = git::Repo::new(&dir, credentials, timeouts);
    repo.init_bare().await.at(Phase::Source)?;
    let objects = if repo.has_commit(&ctx.sha).await {
        phase.note(format!("{} is already in the clone cache", short(&ctx.sha)));
        0
    } else {
        // When the server refuses a fetch by SHA: the PR's head ref (GitHub serves fork PRs
        // there), then the branch.
        let mut fallback = Vec::new();
        if let Some(n) = ctx.number {
            fallback.push(format!("refs/pull/{n}/head"));
        }
        fallback.push(format!("refs/heads/{}", ctx.branch));
        repo.fetch_commit(url, &ctx.sha, config.depth, &fallback).await.at(Phase::Source)?
    };
    let work = work_dir(&root)?;
    repo.checkout_into(work.path(), &ctx.sha).await.at(Phase::Source)?;
    drop(lock);
    Ok(Checkout {
        path: work.path().to_path_buf(),
        sha: ctx.sha.clone(),
        repository_url: url.clone(),
        objects_fetched: objects,
        work_dir: Some(std::sync::Arc::new(work)),
    })
}

/// A fresh directory for this run's work tree under `<root>/work`, removed when the checkout is
/// dropped. Work trees left by runs that were killed are removed after a day.
fn work_dir(root: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context;
    let parent = root.join("work");
    std::fs::create_dir_all(&parent).with_context(|| format!("failed to create {}", parent.display()))?;
    if let Ok(entries) = std::fs::read_dir(&parent) {
        let day = Duration::from_secs(24 * 3600);
        for e in entries.flatten() {
            let old =
                e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a > day);
            if old {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&parent)
        .with_context(|| format!("failed to create a work tree under {}", parent.display()))
}

/// Creates the clone cache 0700, or makes an existing one of ours 0700: it holds other pull
/// requests' code and work trees, which nobody else on the machine should read or plant files in.
fn private_dir(root: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("failed to create the clone cache {}", root.display()))?;
    let meta = std::fs::symlink_metadata(root).with_context(|| format!("failed to read {}", root.display()))?;
    anyhow::ensure!(
        meta.is_dir() && meta.uid() == rustix::process::geteuid().as_raw(),
        "the clone cache {} is not a directory of yours: set `[source] cache_dir` (PRPOD_SOURCE_CACHE_DIR) to a \
         private directory",
        root.display()
    );
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("failed to make the clone cache {} private (0700)", root.display()))?;
    }
    Ok(())
}

/// A token is sent over plain HTTP only to this machine (a local git server in tests), or to a
/// `host:port` the operator listed in `source.plain_http`.
fn check_token_transport(url: &str, has_token: bool, plain_http: &[String]) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url)?;
    let listed = |p: &url::Url| {
        let hp = format!("{}:{}", p.host_str().unwrap_or(""), p.port_or_known_default().unwrap_or(80));
        plain_http.contains(&hp)
    };
    if has_token && parsed.scheme() == "http" && !listed(&parsed) {
        let local = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        anyhow::ensure!(
            local,
            "refusing to send the git token over plain http to {}: use an https:// repository URL (or list \
             the server's host:port in `source.plain_http`, for a server on a private network)",
            parsed.host_str().unwrap_or("")
        );
    }
    Ok(())
}

/// The clone cache root: `source.cache_dir`, else `$PRPOD_CACHE_DIR/git`, else
/// `~/.cache/prpod/git`.
fn cache_dir(config: &SourceConfig) -> anyhow::Result<PathBuf> {
    if let Some(d) = &config.cache_dir {
        return Ok(d.clone());
    }
    if let Some(d) = std::env::var_os("PRPOD_CACHE_DIR").filter(|d| !d.is_empty() && d != "off") {
        return Ok(PathBuf::from(d).join("git"));
    }
    let dirs = directories::ProjectDirs::from("", "", "prpod")
        .ok_or_else(|| anyhow::anyhow!("no home directory for the clone cache: set `source.cache_dir`"))?;
    Ok(dirs.cache_dir().join("git"))
}

/// `host_port-path-of-repo-<8 hex>`: readable, and distinct for distinct URLs.
fn cache_key(url: &str) -> String {
    use sha2::Digest;
    let readable: String = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .take(80)
        .collect();
    let hash = hex::encode(sha2::Sha256::digest(url.as_bytes()));
    format!("{readable}-{}", &hash[..8])
}

/// Holds `<dir>.lock` until dropped, waiting (and saying so) while another run holds it.
async fn lock(dir: &std::path::Path, phase: &PhaseHandle) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    let parent = dir.parent().expect("cache dirs have a parent");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("failed to create the clone cache {}", parent.display()))?;
    let path = dir.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !said {
                    phase.note(format!("waiting for another prpod run using {}", dir.display()));
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("failed to lock {}", path.display()));
            }
        }
    }
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// One line for people.
pub fn summary(c: &Checkout) -> String {
    format!("{} checked out ({} objects fetched)", short(&c.sha), c.objects_fetched)
}

/// The token to clone with: `token_file`, else `PRPOD_GIT_TOKEN`, else `GITHUB_TOKEN`; `None`
/// clones anonymously.
pub fn token(config: &SourceConfig, env: &Env) -> anyhow::Result<Option<crate::secret::Secret>> {
    use anyhow::Context;
    let secret = match &config.token_file {
        Some(path) => {
            let text = crate::input::read_text_file(path, crate::input::MAX_SECRET_BYTES, "git token file")
                .with_context(|| {
                    format!("failed to read the git token file {} (`source.token_file`)", path.display())
                })?;
            crate::secret::Secret::new(text)
        }
        None => match env.get("PRPOD_GIT_TOKEN").or_else(|| env.get("GITHUB_TOKEN")) {
            Some(t) => crate::secret::Secret::new(t),
            None => return Ok(None),
        },
    };
    anyhow::ensure!(!secret.is_empty(), "the git token is empty");
    anyhow::ensure!(!secret.expose().contains(['\n', '\r', '\0']), "the git token contains a line break");
    Ok(Some(secret))
}

#[cfg(test)]
mod transport_tests {
    use super::check_token_transport;

    #[test]
    fn a_token_goes_over_plain_http_only_to_loopback_or_a_listed_server() {
        let listed = ["10.244.0.1:47580".to_string()];
        assert!(check_token_transport("http://127.0.0.1:47580/a/b.git", true, &[]).is_ok());
        assert!(check_token_transport("https://git.example/a/b.git", true, &[]).is_ok());
        assert!(check_token_transport("http://10.244.0.1:47580/a/b.git", false, &[]).is_ok(), "no token");
        let e = check_token_transport("http://10.244.0.1:47580/a/b.git", true, &[]).unwrap_err().to_string();
        assert!(e.contains("source.plain_http"), "{e}");
        assert!(check_token_transport("http://10.244.0.1:47580/a/b.git", true, &listed).is_ok());
        // another port of the same host is not listed
        assert!(check_token_transport("http://10.244.0.1:8080/a/b.git", true, &listed).is_err());
    }
}
