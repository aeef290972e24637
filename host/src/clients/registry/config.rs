//! `[registry]` in `prpod.toml`: credential sources and how to reach registries.
//!
//! ```toml
//! [registry]
//! username = "ci"                         # with password_env / password_file / --registry-password-stdin
//! password_env = "PRPOD_REGISTRY_PASSWORD" # the default
//! password_file = "/run/secrets/registry" # instead of the variable
//! docker_config = "~/.docker/config.json" # default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json
//! ca_file = "/etc/prpod/registry-ca.pem"  # or PRPOD_REGISTRY_CA
//! plain_http = ["127.0.0.1:5000"]         # or PRPOD_REGISTRY_PLAIN_HTTP (comma-separated)
//! retries = 5
//! concurrency = 4
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use super::{CredentialResolver, PasswordSource, RegistryError, RegistryOptions, RetryPolicy};

/// The `[registry]` table. Every key is optional; see the README for defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Username for the pushed-to registry (env `PRPOD_REGISTRY_USER`).
    pub username: Option<String>,
    /// Environment variable holding the password or token (default `PRPOD_REGISTRY_PASSWORD`).
    pub password_env: Option<String>,
    /// File holding the password or token (wins over `password_env`).
    pub password_file: Option<PathBuf>,
    /// Docker `config.json` to read `auths` / `credsStore` / `credHelpers` from.
    pub docker_config: Option<PathBuf>,
    /// PEM bundle of CAs to trust besides the system's (env `PRPOD_REGISTRY_CA`).
    pub ca_file: Option<PathBuf>,
    /// Hosts spoken to over plain HTTP (env `PRPOD_REGISTRY_PLAIN_HTTP`, comma-separated).
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// Attempts per request before giving up (default 5).
    pub retries: Option<u32>,
    /// Blobs uploaded at once (default 4).
    pub concurrency: Option<usize>,
}

/// The default variable a registry password or token is read from.
pub const DEFAULT_PASSWORD_ENV: &str = "PRPOD_REGISTRY_PASSWORD";

impl RegistryConfig {
    /// Fills unset keys from `PRPOD_REGISTRY_USER`, `PRPOD_REGISTRY_CA`,
    /// `PRPOD_REGISTRY_PLAIN_HTTP` (flags > environment > file: call this after the file and
    /// before applying flags).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let non_empty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(u) = non_empty("PRPOD_REGISTRY_USER") {
            self.username = Some(u);
        }
        if let Some(ca) = non_empty("PRPOD_REGISTRY_CA") {
            self.ca_file = Some(PathBuf::from(ca));
        }
        if let Some(hosts) = non_empty("PRPOD_REGISTRY_PLAIN_HTTP") {
            self.plain_http = hosts.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect();
        }
    }

    /// The client options these keys describe.
    pub fn options(&self) -> Result<RegistryOptions, RegistryError> {
        let mut o = RegistryOptions {
            ca_file: self.ca_file.clone(),
            plain_http: self.plain_http.clone(),
            ..Default::default()
        };
        if let Some(r) = self.retries {
            if !(1..=20).contains(&r) {
                return Err(RegistryError::Config(format!("`registry.retries` is {r}; it must be between 1 and 20")));
            }
            o.retry = RetryPolicy { attempts: r, ..RetryPolicy::default() };
        }
        if let Some(c) = self.concurrency {
            if !(1..=32).contains(&c) {
                return Err(RegistryError::Config(format!(
                    "`registry.concurrency` is {c}; it must be between 1 and 32"
                )));
            }
            o.concurrency = c;
        }
        Ok(o)
    }

    /// The credential resolver for a run that pushes to `push_host`: explicit credentials from
    /// `password_stdin`, else `password_file`, else `password_env` (when set) bound to that
    /// host; a docker config for every host.
    pub fn credentials(&self, push_host: &str, password_stdin: bool) -> Result<CredentialResolver, RegistryError> {
        let mut r = match &self.docker_config {
            Some(p) => CredentialResolver::anonymous().with_docker_config(p),
            None => CredentialResolver::anonymous().with_default_docker_config(),
        };
        let env_name = self.password_env.clone().unwrap_or_else(|| DEFAULT_PASSWORD_ENV.to_string());
        let source = if password_stdin {
            Some(PasswordSource::Stdin)
        } else if let Some(f) = &self.password_file {
            Some(PasswordSource::File(f.clone()))
        } else if std::env::var_os(&env_name).is_some() || self.password_env.is_some() {
            Some(PasswordSource::Env(env_name))
        } else {
            None
        };
        if let Some(source) = source {
            let username = self.username.as_deref().ok_or_else(|| RegistryError::Credentials {
                source_desc: source.describe(),
                detail: "a password was given but no username: set `registry.username` or PRPOD_REGISTRY_USER".into(),
            })?;
            r = r.with_password(push_host, username, &source)?;
        }
        Ok(r)
    }
}
