//! `[registry]` in `prpod.toml`: credential sources and how to reach registries, and the
//! mapping from it to the registry client's settings ([`RegistryOptions`], a
//! [`CredentialResolver`]): the client takes those as arguments and never reads the config.
//!
//! ```toml
//! [registry]
//! host = "ghcr.io"                        # the one host username/password go to (default: image.repository's)
//! username = "ci"                         # with password_env / password_file / --registry-password-stdin
//! password_env = "PRPOD_REGISTRY_PASSWORD" # the default
//! password_file = "/run/secrets/registry" # instead of the variable
//! pull_username = "puller"                # read-only credentials for the preview's pull Secret
//! pull_password_env = "PRPOD_REGISTRY_PULL_PASSWORD" # the default, or pull_password_file
//! pull_with_push_credentials = false      # true: the pull Secret holds the push credentials
//! docker_config = "~/.docker/config.json" # default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json
//! ca_file = "/etc/prpod/registry-ca.pem"  # or PRPOD_REGISTRY_CA
//! plain_http = ["127.0.0.1:5000"]         # or PRPOD_REGISTRY_PLAIN_HTTP (comma-separated)
//! retries = 5
//! concurrency = 4
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::clients::registry::{
    CredentialResolver, PasswordSource, RegistryError, RegistryOptions, RetryPolicy, api_host,
};
use crate::config::{ConfigError, Env, Section};
use crate::secret::Secret;

/// The `[registry]` table. Every key is optional; see the README for defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry host (`ghcr.io`, `registry.example:5443`) the explicit credentials belong to
    /// (env `PRPOD_REGISTRY_HOST`). Default: the host of `image.repository`. When set, a run
    /// pushing anywhere else is refused instead of sending them there.
    pub host: Option<String>,
    /// Username for the pushed-to registry (env `PRPOD_REGISTRY_USER`).
    pub username: Option<String>,
    /// Environment variable holding the password or token (default `PRPOD_REGISTRY_PASSWORD`).
    pub password_env: Option<String>,
    /// File holding the password or token (wins over `password_env`).
    pub password_file: Option<PathBuf>,
    /// Username of read-only credentials for the same host (env `PRPOD_REGISTRY_PULL_USER`):
    /// written to the preview namespace's pull Secret, and used for every read (a `FROM` image
    /// on the push host). Without them there is no pull Secret, unless
    /// `pull_with_push_credentials`.
    pub pull_username: Option<String>,
    /// Environment variable holding the pull password or token (default
    /// `PRPOD_REGISTRY_PULL_PASSWORD`).
    pub pull_password_env: Option<String>,
    /// File holding the pull password or token (wins over `pull_password_env`).
    pub pull_password_file: Option<PathBuf>,
    /// Write the push credentials into the pull Secret when no pull credentials are given (env
    /// `PRPOD_REGISTRY_PULL_WITH_PUSH_CREDENTIALS=true`). Default `false`: a chart can mount
    /// the pull Secret, and a CI token in it dies with the job.
    #[serde(default)]
    pub pull_with_push_credentials: bool,
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

/// The default variable the pull password or token is read from.
pub const DEFAULT_PULL_PASSWORD_ENV: &str = "PRPOD_REGISTRY_PULL_PASSWORD";

impl RegistryConfig {
    /// Fills unset keys from `PRPOD_REGISTRY_USER`, `PRPOD_REGISTRY_CA`,
    /// `PRPOD_REGISTRY_PLAIN_HTTP` (flags > environment > file: call this after the file and
    /// before applying flags).
    pub fn apply_vars(&mut self, env: impl Fn(&str) -> Option<String>) {
        let non_empty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(u) = non_empty("PRPOD_REGISTRY_USER") {
            self.username = Some(u);
        }
        if let Some(h) = non_empty("PRPOD_REGISTRY_HOST") {
            self.host = Some(h.trim().to_string());
        }
        if let Some(u) = non_empty("PRPOD_REGISTRY_PULL_USER") {
            self.pull_username = Some(u);
        }
        if let Some(v) = non_empty("PRPOD_REGISTRY_PULL_WITH_PUSH_CREDENTIALS") {
            self.pull_with_push_credentials = matches!(v.trim(), "1" | "true" | "yes");
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
    /// `stdin_password` (`--registry-password-stdin`, already read by the CLI), else
    /// `password_file`, else `password_env` (when that variable is set and not empty) bound to `host` (default
    /// `push_host`); the pull credentials for the same host; a docker config for every host.
    ///
    /// Refused: explicit credentials when `host` names another registry than `push_host` (they
    /// go to the registry the operator named, never to the one a repository setting names).
    pub fn credentials(
        &self,
        push_host: &str,
        stdin_password: Option<Secret>,
    ) -> Result<CredentialResolver, RegistryError> {
        let mut r = match &self.docker_config {
            Some(p) => CredentialResolver::anonymous().with_docker_config(p),
            None => CredentialResolver::anonymous().with_default_docker_config(),
        };
        r = r.with_pull_with_push(self.pull_with_push_credentials);
        let bound = match &self.host {
            Some(h) => api_host(h.trim()).to_string(),
            None => api_host(push_host).to_string(),
        };
        if let Some((username, password, source)) = self.pull_credentials()? {
            if self.pull_with_push_credentials {
                return Err(RegistryError::Config(
                    "both `registry.pull_username` and `registry.pull_with_push_credentials = true` are set: keep one \
                     (separate pull credentials are the safer choice)"
                        .into(),
                ));
            }
            r = r.with_pull_secret(&bound, &username, password, &source);
        }
        let env_name = self.password_env.clone().unwrap_or_else(|| DEFAULT_PASSWORD_ENV.to_string());
        let (password, source) = if let Some(p) = stdin_password {
            (p, "stdin".to_string())
        } else if let Some(f) = &self.password_file {
            let s = PasswordSource::File(f.clone());
            (s.read()?, s.describe())
        } else if std::env::var_os(&env_name).is_some_and(|v| !v.is_empty()) || self.password_env.is_some() {
            // (an empty variable is unset, like every other: fork and Dependabot runs get empty
            // secrets, and a registry that needs none is then pushed to without credentials)
            let s = PasswordSource::Env(env_name);
            (s.read()?, s.describe())
        } else {
            return Ok(r);
        };
        let username = self.username.as_deref().ok_or_else(|| RegistryError::Credentials {
            source_desc: source.clone(),
            detail: "a password was given but no username: set `registry.username` or PRPOD_REGISTRY_USER".into(),
        })?;
        let push_api = api_host(push_host);
        if bound != push_api {
            return Err(RegistryError::Credentials {
                source_desc: source,
                detail: format!(
                    "they belong to `registry.host` = {bound}, but the image is pushed to {push_api}: prpod sends \
                     them to {bound} only; push there, or set `registry.host` (PRPOD_REGISTRY_HOST) to {push_api} \
                     if those credentials are meant for it"
                ),
            });
        }
        r = r.with_secret(&bound, username, password, &source);
        Ok(r)
    }

    /// The pull credentials: `pull_username` with the secret from `pull_password_file`, else
    /// `pull_password_env` (default `PRPOD_REGISTRY_PULL_PASSWORD`); `None` without a
    /// `pull_username`. Half a pair is an error naming the missing half.
    pub fn pull_credentials(&self) -> Result<Option<(String, Secret, String)>, RegistryError> {
        let source = match (&self.pull_password_file, &self.pull_password_env) {
            (Some(f), _) => PasswordSource::File(f.clone()),
            (None, Some(e)) => PasswordSource::Env(e.clone()),
            (None, None) => PasswordSource::Env(DEFAULT_PULL_PASSWORD_ENV.into()),
        };
        let Some(username) = self.pull_username.as_deref().filter(|u| !u.trim().is_empty()) else {
            if self.pull_password_file.is_some() || self.pull_password_env.is_some() {
                return Err(RegistryError::Credentials {
                    source_desc: source.describe(),
                    detail: "a pull password was configured but no pull username: set `registry.pull_username` \
                             or PRPOD_REGISTRY_PULL_USER"
                        .into(),
                });
            }
            return Ok(None);
        };
        let password = source.read()?;
        Ok(Some((username.to_string(), password, source.describe())))
    }
}

impl Section for RegistryConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        self.apply_vars(|k| env.get(k).map(str::to_string));
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.options().map(|_| ()).map_err(|e| match e {
            RegistryError::Config(why) => ConfigError::Value { key: "registry".into(), why },
            other => ConfigError::Value { key: "registry".into(), why: other.to_string() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::registry::{Access, Credentials, short_lived};

    #[test]
    fn env_fills_unset_keys_and_ranges_are_checked() {
        let mut c: RegistryConfig = toml::from_str("username = \"file\"\nplain_http = [\"a:1\"]\nretries = 3").unwrap();
        c.apply_vars(|k| match k {
            "PRPOD_REGISTRY_USER" => Some("env".into()),
            "PRPOD_REGISTRY_PLAIN_HTTP" => Some("127.0.0.1:5000, localhost:5000".into()),
            "PRPOD_REGISTRY_CA" => Some(String::new()),
            _ => None,
        });
        assert_eq!(c.username.as_deref(), Some("env"));
        assert_eq!(c.plain_http, vec!["127.0.0.1:5000", "localhost:5000"]);
        assert_eq!(c.ca_file, None, "an empty variable counts as unset");
        assert_eq!(c.options().unwrap().retry.attempts, 3);
        let bad: RegistryConfig = toml::from_str("concurrency = 0").unwrap();
        assert!(bad.options().unwrap_err().to_string().contains("registry.concurrency"));
        let unknown = toml::from_str::<RegistryConfig>("pasword_env = \"X\"").unwrap_err().to_string();
        assert!(unknown.contains("pasword_env"), "{unknown}");
        // A password without a username is an error naming both fixes.
        let c = RegistryConfig { password_file: Some("/dev/null".into()), ..Default::default() };
        let e = c.credentials("r.example", Some(Secret::new("pw"))).unwrap_err().to_string();
        assert!(e.contains("registry.username") && e.contains("stdin") && !e.contains("pw\""), "{e}");
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// The `auths` of a pull Secret: host -> (username, password).
    fn auths(doc: &Secret) -> Vec<(String, String, String)> {
        let v: serde_json::Value = serde_json::from_str(doc.expose()).unwrap();
        v["auths"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(h, a)| (h.clone(), a["username"].as_str().unwrap().into(), a["password"].as_str().unwrap().into()))
            .collect()
    }

    fn file_with(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// An empty docker config, so the machine's own never answers.
    fn base(dir: &std::path::Path) -> RegistryConfig {
        RegistryConfig {
            username: Some("pusher".into()),
            password_file: Some(file_with(dir, "push", "push-pw\n")),
            docker_config: Some(file_with(dir, "config.json", "{}")),
            ..Default::default()
        }
    }

    #[test]
    fn no_pull_secret_without_pull_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let c = base(dir.path());
        let r = c.credentials("reg.example", None).unwrap();
        assert!(rt().block_on(r.pull_secret("reg.example")).unwrap().is_none(), "push credentials leaked into it");
        // Reads still work with the push credentials (nothing else was given).
        let read = rt().block_on(r.resolve_for("reg.example", Access::Pull)).unwrap();
        assert!(matches!(read.credentials, Credentials::Basic { ref username, .. } if username == "pusher"));
    }

    #[test]
    fn pull_credentials_not_push_ones_land_in_the_pull_secret_and_answer_reads() {
        let dir = tempfile::tempdir().unwrap();
        let c = RegistryConfig {
            pull_username: Some("puller".into()),
            pull_password_file: Some(file_with(dir.path(), "pull", "pull-pw\n")),
            ..base(dir.path())
        };
        let r = c.credentials("reg.example", None).unwrap();
        let pull = rt().block_on(r.pull_secret("reg.example")).unwrap().expect("a pull Secret");
        assert_eq!(auths(&pull.dockerconfigjson), [("reg.example".into(), "puller".into(), "pull-pw".into())]);
        assert!(!pull.dockerconfigjson.expose().contains("push-pw"));
        assert!(pull.short_lived.is_none());
        // A FROM image on the push host is read with them; pushes use the push credentials.
        let user = |a| match rt().block_on(r.resolve_for("reg.example", a)).unwrap().credentials {
            Credentials::Basic { username, .. } => username,
            Credentials::Anonymous => String::new(),
        };
        assert_eq!((user(Access::Pull), user(Access::Push)), ("puller".into(), "pusher".into()));
        // Another host gets neither.
        assert!(rt().block_on(r.pull_secret("other.example")).unwrap().is_none());
    }

    #[test]
    fn push_credentials_in_the_pull_secret_only_when_asked_and_short_lived_ones_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let c = RegistryConfig {
            pull_with_push_credentials: true,
            password_file: Some(file_with(dir.path(), "push-ghs", "ghs_shortlivedtoken")),
            ..base(dir.path())
        };
        let r = c.credentials("reg.example", None).unwrap();
        let pull = rt().block_on(r.pull_secret("reg.example")).unwrap().expect("a pull Secret");
        assert_eq!(auths(&pull.dockerconfigjson)[0].2, "ghs_shortlivedtoken");
        let why = pull.short_lived.expect("a ghs_ token is flagged");
        assert!(why.contains("ghs_") && !why.contains("shortlivedtoken"), "{why}");
        // A pull token that looks long-lived is not flagged; GITHUB_TOKEN as the source is.
        assert!(short_lived(&Secret::new("ghp_classic"), "from file /x").is_none());
        assert!(short_lived(&Secret::new("abc"), "from environment variable GITHUB_TOKEN").is_some());
        // Both ways at once is a contradiction, said as such.
        let both = RegistryConfig {
            pull_username: Some("puller".into()),
            pull_password_file: Some(file_with(dir.path(), "pull", "pull-pw")),
            ..c
        };
        let e = both.credentials("reg.example", None).unwrap_err().to_string();
        assert!(e.contains("pull_with_push_credentials") && e.contains("pull_username"), "{e}");
        // Half a pair names the missing half.
        let half = RegistryConfig { pull_password_env: Some("X".into()), ..base(dir.path()) };
        let e = half.credentials("reg.example", None).unwrap_err().to_string();
        assert!(e.contains("registry.pull_username"), "{e}");
    }

    #[test]
    fn explicit_credentials_go_to_the_host_the_operator_named_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = RegistryConfig { host: Some("ghcr.io".into()), ..base(dir.path()) };
        assert!(c.credentials("ghcr.io", None).is_ok());
        let e = c.credentials("evil.example", None).unwrap_err().to_string();
        assert!(e.contains("registry.host") && e.contains("evil.example") && !e.contains("push-pw"), "{e}");
        // Docker Hub spellings are one host.
        let hub = RegistryConfig { host: Some("docker.io".into()), ..base(dir.path()) };
        assert!(hub.credentials(api_host("docker.io"), None).is_ok());
    }
}
