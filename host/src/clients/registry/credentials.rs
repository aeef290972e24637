//! Where registry credentials come from.
//!
//! In order, for one registry host:
//! 1. explicit credentials for the pushed-to registry: a username plus a password or token read
//!    from an environment variable, a file or stdin (never from an argument: argv is visible to
//!    every process on the machine);
//! 2. a docker `config.json`: `credHelpers[host]`, else `credsStore`, else `auths[host]`
//!    (the same lookup order as docker). Helpers run as `docker-credential-NAME get` with the host
//!    on stdin and a 10 s deadline, so a helper that prompts cannot hang a CI job;
//! 3. anonymous.
//!
//! Explicit credentials are bound to one host on purpose: the password for the registry you
//! push to must never be sent to the registry a `FROM` line names.
//!
//! Pull credentials ([`CredentialResolver::with_pull_secret`]) are a second, read-only pair for
//! the same host. They answer every request that only reads ([`Access::Pull`]: a `FROM` image on
//! the push host, a manifest lookup) and are what the preview's pull Secret holds
//! ([`CredentialResolver::pull_secret`]); the push credentials answer requests that write. A
//! pull Secret holds the push credentials only when the operator asked for that
//! (`pull_with_push_credentials`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use super::RegistryError;
use crate::secret::Secret;

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// No credentials (public images; registries without auth).
    #[default]
    Anonymous,
    /// A username and a password or token: HTTP basic, or the basic credentials of a Bearer
    /// token request.
    Basic {
        /// Username (`x-access-token` or the actor for GHCR, anything for most token registries).
        username: String,
        /// Password or token.
        password: Secret,
    },
}

/// Where a password or token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// An environment variable (by name).
    Env(String),
    /// A file (trailing newline removed).
    File(PathBuf),
    /// Standard input, read to the end once (`--registry-password-stdin`).
    Stdin,
}

impl PasswordSource {
    /// Reads the secret now. An unset or empty variable, a missing file or empty stdin is an
    /// error naming the source.
    pub fn read(&self) -> Result<Secret, RegistryError> {
        let err = |detail: String| RegistryError::Credentials { source_desc: self.describe(), detail };
        let secret = match self {
            PasswordSource::Env(name) => {
                Secret::new(std::env::var(name).map_err(|_| err("the variable is not set".into()))?)
            }
            PasswordSource::File(path) => {
                Secret::new(std::fs::read_to_string(path).map_err(|e| err(format!("cannot read the file: {e}")))?)
            }
            PasswordSource::Stdin => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| err(e.to_string()))?;
                Secret::new(s)
            }
        };
        if secret.is_empty() {
            return Err(err("it is empty".into()));
        }
        Ok(secret)
    }

    /// `PRPOD_REGISTRY_PASSWORD`, `file /run/secrets/x`, `stdin`: for messages.
    pub fn describe(&self) -> String {
        match self {
            PasswordSource::Env(name) => format!("environment variable {name}"),
            PasswordSource::File(path) => format!("file {}", path.display()),
            PasswordSource::Stdin => "stdin".into(),
        }
    }
}

/// What a request does with a repository, which decides the credentials it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Only reads (`pull` scope): pull credentials when there are some for the host.
    Pull,
    /// Writes (`push` scope): the push credentials.
    Push,
}

/// Resolves the credentials for each registry host prpod talks to. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CredentialResolver {
    explicit: Option<Explicit>,
    pull: Option<Explicit>,
    pull_with_push: bool,
    docker_config: Option<PathBuf>,
    helper_dir: Option<PathBuf>,
}

/// The `.dockerconfigjson` of a preview's pull Secret, and what may be wrong with it.
#[derive(Debug, Clone)]
pub struct PullSecret {
    /// `{"auths":{HOST:{...}}}`.
    pub dockerconfigjson: Secret,
    /// Where its credentials came from (`from environment variable PRPOD_REGISTRY_PULL_PASSWORD`).
    pub source: String,
    /// Why the credential looks short-lived (a GitHub Actions token, revoked when the job
    /// ends), for a warning; `None` when nothing suggests it.
    pub short_lived: Option<String>,
}

/// Why `password` (from `source`) looks like a token that dies with the CI job: GitHub App
/// installation tokens (`ghs_`, which `GITHUB_TOKEN` is) live at most an hour.
pub fn short_lived(password: &Secret, source: &str) -> Option<String> {
    let from_github_token = source.contains("GITHUB_TOKEN")
        || std::env::var("GITHUB_TOKEN").is_ok_and(|t| !t.is_empty() && t == password.expose());
    if from_github_token {
        Some(format!("it is GITHUB_TOKEN ({source}), which GitHub revokes when the job ends"))
    } else if password.expose().starts_with("ghs_") {
        Some(format!("it is a GitHub Actions / App installation token (ghs_…, {source}), which expires within an hour"))
    } else {
        None
    }
}

#[derive(Debug, Clone)]
struct Explicit {
    host: String,
    username: String,
    password: Secret,
    source: String,
}

/// Where the credentials for a host came from, for error messages (`from environment variable
/// PRPOD_REGISTRY_PASSWORD`); never the credentials themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The credentials.
    pub credentials: Credentials,
    /// Their source, for messages.
    pub source: String,
}

impl CredentialResolver {
    /// Anonymous everywhere, no docker config.
    pub fn anonymous() -> CredentialResolver {
        CredentialResolver::default()
    }

    /// Uses `username` + the secret from `source` for `host` (the API host, `ghcr.io`,
    /// `127.0.0.1:5443`). Reads the source now, so a missing variable fails before any work.
    pub fn with_password(self, host: &str, username: &str, source: &PasswordSource) -> Result<Self, RegistryError> {
        let password = source.read()?;
        Ok(self.with_secret(host, username, password, &source.describe()))
    }

    /// Uses `username` + `password` for `host`; `source` says where they came from, for messages.
    pub fn with_secret(mut self, host: &str, username: &str, password: Secret, source: &str) -> Self {
        self.explicit = Some(Explicit {
            host: super::reference::api_host(host).to_string(),
            username: username.to_string(),
            password,
            source: format!("from {source}"),
        });
        self
    }

    /// Uses `username` + `password` as the read-only credentials for `host`: for requests that
    /// only read, and for the pull Secret. `source` says where they came from, for messages.
    pub fn with_pull_secret(mut self, host: &str, username: &str, password: Secret, source: &str) -> Self {
        self.pull = Some(Explicit {
            host: super::reference::api_host(host).to_string(),
            username: username.to_string(),
            password,
            source: format!("from {source}"),
        });
        self
    }

    /// Whether the pull Secret may hold the push credentials when no pull credentials were
    /// given (`pull_with_push_credentials`; default no: then there is no pull Secret).
    pub fn with_pull_with_push(mut self, allow: bool) -> Self {
        self.pull_with_push = allow;
        self
    }

    /// Consults this docker `config.json` for hosts without explicit credentials.
    pub fn with_docker_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.docker_config = Some(path.into());
        self
    }

    /// Runs credential helpers from `dir` instead of looking them up on `PATH`.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dir = Some(dir.into());
        self
    }

    /// Consults the default docker config when it exists: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub fn with_default_docker_config(self) -> Self {
        let path = std::env::var_os("DOCKER_CONFIG")
            .map(|d| PathBuf::from(d).join("config.json"))
            .or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().join(".docker/config.json")));
        match path {
            Some(p) if p.is_file() => self.with_docker_config(p),
            _ => self,
        }
    }

    /// The credentials for `access` to `host`: its pull credentials for reads when there are
    /// some, else [`CredentialResolver::resolve`].
    pub async fn resolve_for(&self, host: &str, access: Access) -> Result<Resolved, RegistryError> {
        if access == Access::Pull
            && let Some(p) = self.pull.as_ref().filter(|p| p.host == host)
        {
            return Ok(Resolved {
                credentials: Credentials::Basic { username: p.username.clone(), password: p.password.clone() },
                source: p.source.clone(),
            });
        }
        self.resolve(host).await
    }

    /// The pull Secret for `host`: its pull credentials; else, only with
    /// [`CredentialResolver::with_pull_with_push`], the push credentials; else `None` (no pull
    /// Secret: the cluster pulls anonymously or with what its nodes have).
    pub async fn pull_secret(&self, host: &str) -> Result<Option<PullSecret>, RegistryError> {
        let host = super::reference::api_host(host);
        let resolved = match self.pull.as_ref().filter(|p| p.host == host) {
            Some(_) => self.resolve_for(host, Access::Pull).await?,
            None if self.pull_with_push => self.resolve(host).await?,
            None => return Ok(None),
        };
        let Credentials::Basic { username, password } = &resolved.credentials else { return Ok(None) };
        Ok(Some(PullSecret {
            dockerconfigjson: auths_document(&[(host, username, password)]),
            short_lived: short_lived(password, &resolved.source),
            source: resolved.source,
        }))
    }

    /// The resolver a `prpod doctor` check of the pull Secret uses: the pull Secret's
    /// credentials for `host` and nothing else.
    pub async fn pull_only(&self, host: &str) -> Result<Option<CredentialResolver>, RegistryError> {
        let host = super::reference::api_host(host);
        let resolved = match self.pull.as_ref().filter(|p| p.host == host) {
            Some(_) => self.resolve_for(host, Access::Pull).await?,
            None if self.pull_with_push => self.resolve(host).await?,
            None => return Ok(None),
        };
        let Credentials::Basic { username, password } = resolved.credentials else { return Ok(None) };
        let source = resolved.source.trim_start_matches("from ").to_string();
        Ok(Some(CredentialResolver::anonymous().with_secret(host, &username, password, &source)))
    }

    /// The credentials for `host` (an API host), running a credential helper if the docker
    /// config names one.
    pub async fn resolve(&self, host: &str) -> Result<Resolved, RegistryError> {
        if let Some(e) = &self.explicit
            && e.host == host
        {
            return Ok(Resolved {
                credentials: Credentials::Basic { username: e.username.clone(), password: e.password.clone() },
                source: e.source.clone(),
            });
        }
        if let Some(path) = &self.docker_config
            && let Some(resolved) = from_docker_config(path, host, self.helper_dir.as_deref()).await?
        {
            return Ok(resolved);
        }
        Ok(Resolved { credentials: Credentials::Anonymous, source: "(none were given)".into() })
    }

    /// A `.dockerconfigjson` document (`{"auths":{HOST:{username,password,auth}}}`) with the
    /// credentials for each of `hosts`, for a Kubernetes `kubernetes.io/dockerconfigjson` pull
    /// Secret. Hosts without credentials are left out. Returned as a [`Secret`]: it holds them.
    pub async fn dockerconfigjson(&self, hosts: &[&str]) -> Result<Secret, RegistryError> {
        let mut found = Vec::new();
        for host in hosts {
            if let Credentials::Basic { username, password } =
                self.resolve(super::reference::api_host(host)).await?.credentials
            {
                found.push((*host, username, password));
            }
        }
        let refs: Vec<(&str, &String, &Secret)> = found.iter().map(|(h, u, p)| (*h, u, p)).collect();
        Ok(auths_document(&refs))
    }
}

/// `{"auths":{HOST:{username,password,auth}}}`.
fn auths_document(entries: &[(&str, &String, &Secret)]) -> Secret {
    let mut auths = serde_json::Map::new();
    for (host, username, password) in entries {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
        auths.insert(
            host.to_string(),
            serde_json::json!({"username": username, "password": password.expose(), "auth": auth}),
        );
    }
    Secret::new(serde_json::json!({ "auths": auths }).to_string())
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The keys a host may be stored under (docker writes `https://index.docker.io/v1/` for Hub,
/// older tools wrote URLs for every host).
fn auth_keys(host: &str) -> Vec<String> {
    let mut keys =
        vec![host.to_string(), format!("https://{host}"), format!("http://{host}"), format!("https://{host}/v1/")];
    if host == "index.docker.io" || host == "docker.io" {
        keys.extend(["https://index.docker.io/v1/".into(), "docker.io".into(), "index.docker.io".into()]);
    }
    keys
}

async fn from_docker_config(
    path: &Path,
    host: &str,
    helper_dir: Option<&Path>,
) -> Result<Option<Resolved>, RegistryError> {
    let desc = format!("docker config {}", path.display());
    let err = |detail: String| RegistryError::Credentials { source_desc: desc.clone(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let config: DockerConfig =
        serde_json::from_str(&text).map_err(|e| err(format!("not a docker config.json: {e}")))?;
    let keys = auth_keys(host);
    let helper = keys.iter().find_map(|k| config.cred_helpers.get(k)).or(config.creds_store.as_ref());
    if let Some(helper) = helper
        && let Some(c) = run_helper(helper, host, helper_dir).await?
    {
        return Ok(Some(Resolved { credentials: c, source: format!("from docker-credential-{helper}") }));
    }
    let Some(entry) = keys.iter().find_map(|k| config.auths.get(k)) else { return Ok(None) };
    if entry.identity_token.as_deref().is_some_and(|t| !t.is_empty()) {
        return Err(err(format!(
            "the entry for {host} holds an OAuth identity token, which prpod does not support; log in with a \
             password or token instead"
        )));
    }
    let (username, password) = match (&entry.username, &entry.password, &entry.auth) {
        (Some(u), Some(p), _) if !u.is_empty() => (u.clone(), p.clone()),
        (_, _, Some(auth)) if !auth.is_empty() => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| err(format!("`auths.{host}.auth` is not base64 of `user:password`")))?;
            let (u, p) = decoded.split_once(':').ok_or_else(|| err(format!("`auths.{host}.auth` has no `:`")))?;
            (u.to_string(), p.to_string())
        }
        _ => return Ok(None),
    };
    Ok(Some(Resolved {
        credentials: Credentials::Basic { username, password: Secret::new(password) },
        source: format!("from {desc}"),
    }))
}

/// How long a credential helper may take: long enough for a cloud metadata call, short enough
/// that a helper waiting for a human fails the job instead of hanging it.
const HELPER_DEADLINE: Duration = Duration::from_secs(10);

/// `program` in the first absolute directory of `PATH` that has it as an executable file: never
/// resolved against the working directory (a checkout prpod runs in could plant one).
fn helper_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Runs `docker-credential-NAME get` with `host` on stdin. `Ok(None)` when the helper has no
/// credentials for the host.
async fn run_helper(name: &str, host: &str, dir: Option<&Path>) -> Result<Option<Credentials>, RegistryError> {
    use tokio::io::AsyncWriteExt;
    let program = format!("docker-credential-{name}");
    let err = |detail: String| RegistryError::Credentials { source_desc: program.clone(), detail };
    // A helper name is a plain name (docker's own are `desktop`, `ecr-login`, `gcloud`...): a `/`
    // would make it a path, which a docker config the pull request wrote could point at a script
    // of its own.
    if name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || name.starts_with('.')
    {
        return Err(err(format!(
            "the credential helper name {name:?} is not a plain name (letters, digits, '-', '_', '.'); \
             fix `credHelpers` / `credsStore` in the docker config"
        )));
    }
    let path = match dir {
        Some(d) => d.join(&program),
        None => helper_on_path(&program).ok_or_else(|| {
            err("not found in an absolute directory of PATH (relative PATH entries, such as `.`, are never \
                 searched); install it or remove it from the docker config"
                .into())
        })?,
    };
    let mut child = tokio::process::Command::new(&path)
        // A helper gets its own variables (cloud identities, keyring sockets), no token of prpod's.
        .env_clear()
        .envs(crate::clients::child_env::allowed(crate::clients::child_env::Tool::CredentialHelper))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("cannot run it ({e}); install it or remove it from the docker config")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(host.as_bytes()).await.map_err(|e| err(e.to_string()))?;
    drop(stdin);
    let out = tokio::time::timeout(HELPER_DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| err(format!("it did not answer within {HELPER_DEADLINE:?}")))?
        .map_err(|e| err(e.to_string()))?;
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    if !out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The helper protocol's "no credentials for this host" answer.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().chain(stdout.lines()).next().unwrap_or("").chars().take(200).collect::<String>();
        return Err(err(format!("it failed ({}): {first}", out.status)));
    }
    let answer: Answer =
        serde_json::from_slice(&out.stdout).map_err(|_| err("its answer is not the helper JSON".into()))?;
    if answer.username == "<token>" {
        return Err(err(format!("it returned an OAuth identity token for {host}, which prpod does not support")));
    }
    Ok(Some(Credentials::Basic { username: answer.username, password: Secret::new(answer.secret) }))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn helper_names_are_plain_names_never_paths() {
        for bad in ["./x", "../x", "/bin/sh", "a/b", "", ".hidden", "x y"] {
            let e = run_helper(bad, "r.example", None).await.unwrap_err().to_string();
            assert!(e.contains("not a plain name"), "{bad:?}: {e}");
        }
        assert!(helper_on_path("docker-credential-surely-not-installed-here").is_none());
    }

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn docker_config_auths_and_helpers() {
        let dir = tempfile::tempdir().unwrap();
        // A fake helper on PATH: answers for one host, "not found" for others.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let helper = bin.join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread h\nif [ \"$h\" = helped.example ]; then echo '{\"Username\":\"hu\",\"Secret\":\"hs3cret\"}'; \
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        std::process::Command::new("chmod").arg("+x").arg(&helper).status().unwrap();
        let cfg = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("u1:p4ssword");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"auths":{{"reg.example":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"username":"hub","password":"hubpw"}}}},
                   "credHelpers":{{"helped.example":"fake","missing.example":"fake"}}}}"#
            ),
        )
        .unwrap();
        let r = CredentialResolver::anonymous().with_docker_config(&cfg).with_helper_dir(&bin);
        let rt = rt();
        let got = rt.block_on(r.resolve("reg.example")).unwrap();
        assert_eq!(got.credentials, Credentials::Basic { username: "u1".into(), password: Secret::new("p4ssword") });
        let got = rt.block_on(r.resolve("index.docker.io")).unwrap();
        assert!(matches!(got.credentials, Credentials::Basic { ref username, .. } if username == "hub"));
        assert_eq!(rt.block_on(r.resolve("other.example")).unwrap().credentials, Credentials::Anonymous);
        let got = rt.block_on(r.resolve("helped.example")).unwrap();
        assert_eq!(got.credentials, Credentials::Basic { username: "hu".into(), password: Secret::new("hs3cret") });
        assert_eq!(got.source, "from docker-credential-fake");
        // The helper has nothing for this host, and there is no `auths` entry: anonymous.
        assert_eq!(rt.block_on(r.resolve("missing.example")).unwrap().credentials, Credentials::Anonymous);
        // Explicit credentials win, for their host only.
        let r = r.with_secret("reg.example", "ci", Secret::new("explicit"), "PRPOD_REGISTRY_PASSWORD");
        let got = rt.block_on(r.resolve("reg.example")).unwrap();
        assert_eq!(got.credentials, Credentials::Basic { username: "ci".into(), password: Secret::new("explicit") });
        assert!(
            matches!(rt.block_on(r.resolve("helped.example")).unwrap().credentials, Credentials::Basic { ref username, .. } if username == "hu")
        );
        let json = rt.block_on(r.dockerconfigjson(&["reg.example", "nothing.example"])).unwrap();
        let v: serde_json::Value = serde_json::from_str(json.expose()).unwrap();
        assert_eq!(v["auths"]["reg.example"]["password"], "explicit");
        assert!(v["auths"].get("nothing.example").is_none());
    }
}
