//! The source phase: the PR's commit, checked out from a clone cache ([`Checkout`]).

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigError, Env, Section};
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

/// Fetches the PR's commit into the clone cache and checks it out.
pub async fn fetch_checkout(
    ctx: &PrContext,
    config: &SourceConfig,
    secrets: &Secrets,
    phase: &PhaseHandle,
) -> anyhow::Result<Checkout> {
    let _ = (ctx, config, secrets, phase);
    anyhow::bail!("the source phase is not implemented yet")
}

/// One line for people.
pub fn summary(c: &Checkout) -> String {
    format!("{} checked out ({} objects fetched)", &c.sha[..12.min(c.sha.len())], c.objects_fetched)
}

/// The token to clone with: `token_file`, else `PRPOD_GIT_TOKEN`, else `GITHUB_TOKEN`; `None`
/// clones anonymously.
pub fn token(config: &SourceConfig, env: &Env) -> anyhow::Result<Option<crate::secret::Secret>> {
    use anyhow::Context;
    let secret = match &config.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
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
