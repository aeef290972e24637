//! The registry bundle of a run: one client and the credentials it resolves, made once in the
//! context phase from `[registry]` and handed to build, push and deploy (the pull Secret, the
//! primary tag's digest), so credentials are read once per run.

mod config;

pub use config::{DEFAULT_PASSWORD_ENV, DEFAULT_PULL_PASSWORD_ENV, RegistryConfig};

use crate::clients::registry::{CredentialResolver, ImageName, RegistryClient};
use crate::secret::Secret;

/// The registry side of a run: one client, and the credentials it resolves (builders get them
/// as files written from the same resolver).
#[derive(Debug, Clone)]
pub struct Registry {
    /// The client.
    pub client: RegistryClient,
    /// Its credentials.
    pub credentials: CredentialResolver,
}

impl Registry {
    /// The client and credentials `[registry]` describes for a run pushing to `image`, with
    /// `password` (from `--registry-password-stdin`) beating the other sources for that host.
    /// Reads a password variable or file now, so a missing one fails before any work.
    pub fn for_push(config: &RegistryConfig, image: &ImageName, password: Option<&Secret>) -> anyhow::Result<Registry> {
        let credentials = config.credentials(image.api_host(), password.cloned())?;
        let client = RegistryClient::new(config.options()?, credentials.clone())?;
        Ok(Registry { client, credentials })
    }
}
