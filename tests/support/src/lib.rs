//! Typed handles on the local service world that `scripts/dev-env` starts.
//!
//! The world (three OCI registries, a GHCR-like token issuer, a git server, a Kubernetes 1.20
//! cluster with a real node, Helm and kubectl) is started once per machine with
//! `scripts/dev-env up` and described by `scripts/dev-env env`. [`world()`] runs that command once
//! per test process, parses its `export` lines into a [`World`], and makes sure the test fixtures
//! (the web image on every registry) exist. When the world is not up, [`world()`] panics with a
//! message that says how to start it: tests must not silently skip (CI starts the world first).
//!
//! Every credential is a [`Secret`] (prpod's own type): `{:?}` of a [`World`], a [`Registry`] or
//! a failing assertion prints `<redacted>`, never a password or token. Commands in messages are
//! described with [`describe`] (program and arguments), never with `{:?}`, which prints the
//! environment a credential may travel in.
//!
//! Its one dependency is the host crate itself: where a test talks to a service the way prpod
//! does (git with a token), it uses prpod's own client code instead of a copy.

mod fixtures;
pub mod github_double;
pub mod http_double;
mod process;

pub use process::{check_ok, curl, curl_basic_auth, curl_bearer, curl_code, describe, run, run_ok, run_with_stdin};
pub use prpod::secret::Secret;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An OCI registry of the world, with the credentials of one of its users.
#[derive(Debug, Clone)]
pub struct Registry {
    /// `host:port`, as used in image references (`127.0.0.1:47500/repo:tag`).
    pub host: String,
    /// The same registry as seen from pods, `GATEWAY:port` (a TCP relay on the pod bridge's
    /// gateway). The node pulls by this name too, so one image name works on host, pods and node.
    pub host_pod: String,
    /// PEM file of the CA that signed the registry's certificate; `None` for the plain-HTTP one.
    pub ca: Option<PathBuf>,
    /// A directory holding just the CA (`ca.crt`), for `skopeo --cert-dir` / `buildah --cert-dir`.
    pub cert_dir: Option<PathBuf>,
    /// User name (basic auth, or the basic credentials a token issuer wants); `None` when the
    /// registry needs no credentials.
    pub user: Option<String>,
    /// The user's password or token; `None` when the registry needs no credentials.
    pub password: Option<Secret>,
    /// A `{"auths": ...}` file with the credentials under both names of the registry
    /// (skopeo/buildah `--authfile`, helm `--registry-config`); `None` without credentials.
    pub authfile: Option<PathBuf>,
    /// How the registry wants to be authenticated when it uses Bearer tokens (registry C);
    /// `None` for no auth or basic auth.
    pub token_auth: Option<TokenAuth>,
}

/// Bearer-token authentication the way GHCR and Docker Hub do it: the registry answers 401 with
/// `WWW-Authenticate: Bearer realm="REALM",service="SERVICE",scope="repository:NAME:pull"`; the
/// client gets a token from REALM with basic credentials and retries with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAuth {
    /// The token endpoint (`https://GATEWAY:47503/token`, the GHCR token double). On another
    /// host:port than the registry, as with Docker Hub; the same CA signs both certificates.
    pub realm: String,
    /// The `service` of the challenge; the tokens' `aud`.
    pub service: String,
    /// The tokens' `iss`, which the registry checks.
    pub issuer: String,
}

impl Registry {
    /// Whether the registry speaks TLS (and so needs [`Registry::ca`] to be trusted).
    pub fn is_tls(&self) -> bool {
        self.ca.is_some()
    }

    /// Base URL of the registry API host, `http://host:port` or `https://host:port`.
    pub fn url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.host)
    }

    /// Full image reference for `repo:tag` (or `repo@digest`) on this registry.
    pub fn image(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host)
    }

    /// This registry with other credentials (e.g. GitHub Actions' `x-access-token` + token form).
    /// The copy has no [`Registry::authfile`]: write one with [`Registry::write_authfile`].
    pub fn with_credentials(&self, user: &str, password: Secret) -> Registry {
        Registry { user: Some(user.to_string()), password: Some(password), authfile: None, ..self.clone() }
    }

    /// The `{"auths": ...}` document for these credentials under both names of the registry
    /// (`auth` = base64 of `user:password`); `None` without credentials.
    pub fn auths_json(&self) -> Option<Secret> {
        let (user, password) = (self.user.as_ref()?, self.password.as_ref()?);
        let auth = base64(format!("{user}:{}", password.expose()).as_bytes());
        let entry = |host: &str| {
            format!(r#""{host}":{{"username":"{user}","password":"{}","auth":"{auth}"}}"#, password.expose())
        };
        Some(Secret::new(format!(r#"{{"auths":{{{},{}}}}}"#, entry(&self.host), entry(&self.host_pod))))
    }

    /// A `.dockerconfigjson` document for this registry, for a `kubernetes.io/dockerconfigjson`
    /// Secret used as imagePullSecret (the node pulls from B and C only with one).
    pub fn dockerconfigjson(&self) -> Option<Secret> {
        self.auths_json()
    }

    /// Writes [`Registry::auths_json`] to `path`, created 0600.
    pub fn write_authfile(&self, path: &Path) -> PathBuf {
        let doc = self.auths_json().expect("write_authfile: this registry has no credentials");
        write_private(path, doc.expose().as_bytes());
        path.to_path_buf()
    }

    /// Fetches a Bearer token for `scopes` (e.g. `repository:NAME:pull,push`) from the token
    /// issuer with this registry's credentials, the first hop a client makes. `Err` carries the
    /// HTTP status and body (no credential) when the issuer refuses.
    pub fn bearer_token(&self, scopes: &[&str]) -> Result<Secret, String> {
        let t = self.token_auth.as_ref().ok_or("bearer_token: this registry does not use tokens")?;
        let mut url = format!("{}?service={}", t.realm, t.service);
        for s in scopes {
            url.push_str("&scope=");
            url.push_str(&s.replace(':', "%3A").replace(',', "%2C").replace('/', "%2F"));
        }
        let config = match (&self.user, &self.password) {
            (Some(u), Some(p)) => Some(curl_basic_auth(u, p)),
            _ => None,
        };
        let ca = self.ca.as_ref().ok_or("bearer_token: no CA")?.to_string_lossy().into_owned();
        let out = curl(config.as_ref(), &["-w", "\n%{http_code}", "--cacert", &ca, &url]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        if code != "200" {
            return Err(format!("the token issuer answered {code}: {body}"));
        }
        json_string_field(body, "token")
            .map(Secret::new)
            .ok_or_else(|| format!("no `token` in the issuer's answer ({} bytes)", body.len()))
    }
}

/// The git server (smart HTTP with basic auth) of the world.
#[derive(Debug, Clone)]
pub struct GitServer {
    /// Base URL as seen from the host, e.g. `http://127.0.0.1:47580`; repos are `URL/NAME.git`.
    pub url: String,
    /// Base URL as seen from pods (the pod bridge's gateway address).
    pub url_pod: String,
    /// Basic-auth user.
    pub user: String,
    /// Basic-auth password (the "token" a forge would hand out).
    pub token: Secret,
    /// Directory holding the bare repositories the server serves (`NAME.git`).
    pub repos: PathBuf,
}

impl GitServer {
    /// Publishes `dir` as repository `NAME.git` (branch `main`) by committing its contents; the
    /// repo is created on first use, re-publishing adds a commit only when the contents changed.
    /// `dir`'s `.gitignore` is honoured. Returns the clone URL without credentials.
    pub fn publish(&self, dir: &Path, name: &str) -> String {
        fixtures::publish_git(self, dir, name)
    }

    /// Clone URL of repository `name` without credentials.
    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.url)
    }

    /// `git` authenticating as this server's user with `token`, the way prpod must do it: the
    /// token travels in the environment to a credential helper, never in a URL or an argument
    /// (where `ps`, logs and error messages would show it). No other helper and no prompt: a
    /// wrong token fails at once instead of hanging. Describe it with [`describe`], not `{:?}`.
    pub fn git_with_token(&self, token: &Secret) -> Command {
        let creds = prpod::clients::git::Credentials { username: self.user.clone(), token: token.clone() };
        // The token is this server's: the helper answers for its URLs only.
        prpod::clients::git::command(Some((&creds, &self.url)))
    }
}

/// The whole world, as described by `scripts/dev-env env`.
#[derive(Debug, Clone)]
pub struct World {
    /// Registry A: plain HTTP, no auth.
    pub registry_plain: Registry,
    /// Registry B: TLS with the world's registry CA, htpasswd basic auth.
    pub registry_tls: Registry,
    /// Registry C, the GHCR stand-in: TLS with the same CA, Bearer tokens from the GHCR token
    /// double ([`Registry::token_auth`]); credentials of a user who may pull and push every
    /// repository.
    pub registry_token: Registry,
    /// Registry C with the credentials of a second user who may only pull: the issuer drops the
    /// `push` it asks for, and the registry refuses the push.
    pub registry_token_reader: Registry,
    /// The git server.
    pub git: GitServer,
    /// Admin kubeconfig (token auth, CA embedded).
    pub kubeconfig: PathBuf,
    /// kubectl's and Helm's discovery cache for the world (`KUBECACHEDIR`, under the runtime dir),
    /// so clients of the world leave nothing in `~/.kube/cache`.
    pub kube_cache: PathBuf,
    /// Admin bearer token (`system:masters`).
    pub kube_token: Secret,
    /// API server URL as seen from the host.
    pub kube_api: String,
    /// API server URL as seen from pods (the bridge gateway; the `kubernetes` Service points there).
    pub kube_api_pod: String,
    /// PEM of the CA that signed the API server's certificate.
    pub kube_ca: PathBuf,
    /// Name of the one node (`localhost`).
    pub node_name: String,
    /// Helm 4.1.x.
    pub helm: PathBuf,
    /// Helm 3.18, for compatibility tests.
    pub helm3: PathBuf,
    /// kubectl 1.34 (talks to the 1.20 API server with a version-skew warning).
    pub kubectl: PathBuf,
    /// The pause image the node uses (built by `up`, on registry A).
    pub pause_image: String,
    /// The tiny test web app (busybox httpd, FROM scratch) on registry A.
    pub web_image_plain: String,
    /// The same web app on registry B.
    pub web_image_tls: String,
    /// The same web app on registry C.
    pub web_image_token: String,
    /// Port the web app listens on in its container.
    pub web_port: u16,
    /// Body of `GET /` on the web app. `GET /cgi-bin/greeting` answers the `GREETING` env var.
    pub web_body: String,
    /// Every variable `scripts/dev-env env` printed that is not a credential (for the ones
    /// without a typed field).
    pub vars: BTreeMap<String, String>,
    /// The credentials `scripts/dev-env env` printed (named by its `PRPOD_DEV_ENV_SECRETS`).
    pub secrets: BTreeMap<String, Secret>,
    /// The world's state directory (`PRPOD_DEV_ENV_STATE`).
    pub state_dir: PathBuf,
    /// The world's runtime directory (`PRPOD_DEV_ENV_RUN`), deleted by `down`.
    pub run_dir: PathBuf,
    root: PathBuf,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The world, read once per process from `scripts/dev-env env`, with its test fixtures in place.
///
/// # Panics
/// When the world is not up, with a message telling to run `scripts/dev-env up`; when a fixture
/// cannot be built, with the failing command and its stderr.
pub fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let w = World::load().unwrap_or_else(|e| panic!("{e}"));
        fixtures::ensure_web_images(&w).unwrap_or_else(|e| panic!("building the test web image failed: {e}"));
        w
    })
}

/// Repository root (this crate lives in `tests/support`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

impl World {
    /// Runs `scripts/dev-env env` and parses it; `Err` with an actionable message when the world
    /// is not up. Prefer [`world()`], which caches the result and builds the fixtures.
    pub fn load() -> Result<World, String> {
        let root = repo_root();
        let script = root.join("scripts/dev-env");
        let out = Command::new(&script).arg("env").output().map_err(|e| {
            format!("cannot run {}: {e}; the tests need the dev world: run `scripts/dev-env up`", script.display())
        })?;
        if !out.status.success() {
            return Err(format!(
                "the dev world is not up: run `scripts/dev-env up` (as root) before these tests.\n\
                 `scripts/dev-env env` said: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let vars = parse_exports(&String::from_utf8_lossy(&out.stdout))?;
        Self::from_vars(vars, root)
    }

    fn from_vars(mut vars: BTreeMap<String, String>, root: PathBuf) -> Result<World, String> {
        let stale = |k: &str| {
            format!(
                "`scripts/dev-env env` did not print {k}: is the world from an older script? run `scripts/dev-env down && scripts/dev-env up`"
            )
        };
        // credentials move out of `vars` into `secrets` before anything can print them
        let names = vars.get("PRPOD_DEV_ENV_SECRETS").cloned().ok_or_else(|| stale("PRPOD_DEV_ENV_SECRETS"))?;
        let mut secrets = BTreeMap::new();
        for name in names.split_whitespace() {
            let v = vars.remove(name).ok_or_else(|| stale(name))?;
            secrets.insert(name.to_string(), Secret::new(v));
        }
        let get = |k: &str| vars.get(k).cloned().ok_or_else(|| stale(k));
        let secret = |k: &str| secrets.get(k).cloned().ok_or_else(|| stale(k));
        let path = |k: &str| get(k).map(PathBuf::from);
        let ca = path("PRPOD_REGISTRY_CA")?;
        let cert_dir = path("PRPOD_REGISTRY_CERT_DIR")?;
        let registry_token = Registry {
            host: get("PRPOD_REGISTRY_TOKEN")?,
            host_pod: get("PRPOD_REGISTRY_TOKEN_POD")?,
            ca: Some(ca.clone()),
            cert_dir: Some(cert_dir.clone()),
            user: Some(get("PRPOD_REGISTRY_TOKEN_USER")?),
            password: Some(secret("PRPOD_REGISTRY_TOKEN_PASSWORD")?),
            authfile: Some(path("PRPOD_REGISTRY_TOKEN_AUTHFILE")?),
            token_auth: Some(TokenAuth {
                realm: get("PRPOD_REGISTRY_TOKEN_REALM")?,
                service: get("PRPOD_REGISTRY_TOKEN_SERVICE")?,
                issuer: get("PRPOD_REGISTRY_TOKEN_ISSUER")?,
            }),
        };
        let registry_token_reader = Registry {
            user: Some(get("PRPOD_REGISTRY_TOKEN_READER_USER")?),
            password: Some(secret("PRPOD_REGISTRY_TOKEN_READER_PASSWORD")?),
            authfile: Some(path("PRPOD_REGISTRY_TOKEN_READER_AUTHFILE")?),
            ..registry_token.clone()
        };
        Ok(World {
            registry_plain: Registry {
                host: get("PRPOD_REGISTRY_PLAIN")?,
                host_pod: get("PRPOD_REGISTRY_PLAIN_POD")?,
                ca: None,
                cert_dir: None,
                user: None,
                password: None,
                authfile: None,
                token_auth: None,
            },
            registry_tls: Registry {
                host: get("PRPOD_REGISTRY_TLS")?,
                host_pod: get("PRPOD_REGISTRY_TLS_POD")?,
                ca: Some(ca),
                cert_dir: Some(cert_dir),
                user: Some(get("PRPOD_REGISTRY_USER")?),
                password: Some(secret("PRPOD_REGISTRY_PASSWORD")?),
                authfile: Some(path("PRPOD_REGISTRY_AUTHFILE")?),
                token_auth: None,
            },
            registry_token,
            registry_token_reader,
            git: GitServer {
                url: get("PRPOD_GIT_URL")?,
                url_pod: get("PRPOD_GIT_URL_POD")?,
                user: get("PRPOD_GIT_USER")?,
                token: secret("PRPOD_GIT_TOKEN")?,
                repos: path("PRPOD_GIT_REPOS")?,
            },
            kubeconfig: path("KUBECONFIG")?,
            kube_cache: path("KUBECACHEDIR")?,
            kube_token: secret("PRPOD_KUBE_TOKEN")?,
            kube_api: get("PRPOD_KUBE_API")?,
            kube_api_pod: get("PRPOD_KUBE_API_POD")?,
            kube_ca: path("PRPOD_KUBE_CA")?,
            node_name: get("PRPOD_NODE_NAME")?,
            helm: path("HELM")?,
            helm3: path("HELM3")?,
            kubectl: path("KUBECTL")?,
            pause_image: get("PRPOD_PAUSE_IMAGE")?,
            web_image_plain: get("PRPOD_WEB_IMAGE_PLAIN")?,
            web_image_tls: get("PRPOD_WEB_IMAGE_TLS")?,
            web_image_token: get("PRPOD_WEB_IMAGE_TOKEN")?,
            web_port: get("PRPOD_WEB_PORT")?.parse().map_err(|e| format!("PRPOD_WEB_PORT: {e}"))?,
            web_body: get("PRPOD_WEB_BODY")?,
            state_dir: path("PRPOD_DEV_ENV_STATE")?,
            run_dir: path("PRPOD_DEV_ENV_RUN")?,
            vars,
            secrets,
            root,
        })
    }

    /// A variable printed by `scripts/dev-env env` that is not a credential, typed field or not.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// A credential printed by `scripts/dev-env env` (`PRPOD_KUBE_TOKEN`, `PRPOD_GIT_TOKEN`...).
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }

    /// The repository root the world was read from.
    pub fn repo_root(&self) -> &Path {
        &self.root
    }

    /// `buildah` on the world's storage (vfs; `PRPOD_BUILDAH_ROOT`/`PRPOD_BUILDAH_RUNROOT`).
    pub fn buildah(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.var("PRPOD_BUILDAH_ROOT").expect("PRPOD_BUILDAH_ROOT"))
            .arg("--runroot")
            .arg(self.var("PRPOD_BUILDAH_RUNROOT").expect("PRPOD_BUILDAH_RUNROOT"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    /// `kubectl` with the admin kubeconfig and the world's discovery cache, ready for arguments.
    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig).env("KUBECACHEDIR", &self.kube_cache);
        c
    }

    /// Runs `kubectl ARGS` as admin and returns its output, whatever the exit status.
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.kubectl_cmd().args(args))
    }

    /// Runs `kubectl ARGS` as admin; panics with its stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_ok(self.kubectl_cmd().args(args))
    }

    /// Applies a manifest (YAML or JSON) given as a string, as admin. The manifest is not
    /// printed on failure (it may hold a Secret's data).
    pub fn kubectl_apply(&self, namespace: &str, manifest: &str) -> String {
        let mut cmd = self.kubectl_cmd();
        cmd.args(["apply", "-n", namespace, "-f", "-"]);
        let out = run_with_stdin(&mut cmd, manifest.as_bytes());
        check_ok(&cmd, out)
    }

    /// Creates a `kubernetes.io/dockerconfigjson` Secret named `name` in `namespace` holding
    /// `registry`'s credentials, for `imagePullSecrets`. The document goes to kubectl on stdin.
    pub fn create_pull_secret(&self, namespace: &str, name: &str, registry: &Registry) {
        let doc = registry.dockerconfigjson().expect("create_pull_secret: the registry has no credentials");
        let mut cmd = self.kubectl_cmd();
        cmd.args(["create", "secret", "generic", name, "-n", namespace, "--type=kubernetes.io/dockerconfigjson"])
            .arg("--from-file=.dockerconfigjson=/dev/stdin");
        let out = run_with_stdin(&mut cmd, doc.expose().as_bytes());
        check_ok(&cmd, out);
    }

    /// `helm` (4.x) with the admin kubeconfig, the world's discovery cache and its
    /// config/cache/data homes in `home`.
    pub fn helm_cmd(&self, home: &HelmHome) -> Command {
        let mut c = home.command(&self.helm, &self.kubeconfig);
        c.env("KUBECACHEDIR", &self.kube_cache);
        c
    }

    /// `helm` 3.18 with the admin kubeconfig, the world's discovery cache and its homes in `home`.
    pub fn helm3_cmd(&self, home: &HelmHome) -> Command {
        let mut c = home.command(&self.helm3, &self.kubeconfig);
        c.env("KUBECACHEDIR", &self.kube_cache);
        c
    }

    /// Creates a namespace with a unique name (from `prefix`) that is deleted when the guard drops.
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        let name = unique_name(prefix);
        self.kubectl_ok(["create", "namespace", &name]);
        let ns = Namespace { world: self, name };
        // 1.20's ServiceAccount admission rejects a bare Pod until the controller-manager has made
        // the namespace's `default` ServiceAccount and its token Secret: wait for both, so a test
        // can create Pods right away (Deployments would retry; `kubectl run` does not).
        wait_for("the default ServiceAccount token", Duration::from_secs(30), || {
            let out =
                self.kubectl(["get", "serviceaccount", "default", "-n", &ns.name, "-o", "jsonpath={.secrets[0].name}"]);
            (out.status.success() && !out.stdout.is_empty()).then_some(())
        });
        ns
    }
}

/// Writes `data` to `path`, created 0600 (it holds credentials).
pub fn write_private(path: &Path, data: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The string value of `"field": "..."` in a flat JSON object (no escapes in the value: tokens
/// and digests have none). Enough for the token issuer's answer without a JSON dependency.
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let rest = &json[json.find(&format!("\"{field}\""))? + field.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// A namespace that is deleted (without waiting) when dropped, so tests clean up after themselves
/// even when they fail.
pub struct Namespace<'w> {
    world: &'w World,
    /// The namespace's name.
    pub name: String,
}

impl Namespace<'_> {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        // --wait=false: the kubelet tears pods down in the background; the test need not wait.
        let _ = self.world.kubectl(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"]);
    }
}

/// Private `HELM_CONFIG_HOME` / `HELM_CACHE_HOME` / `HELM_DATA_HOME` for one test, so tests never
/// read or write the user's Helm repositories, registry logins or plugins. Removed on drop.
pub struct HelmHome {
    dir: TempDir,
}

impl HelmHome {
    /// A fresh, empty Helm home.
    pub fn new() -> HelmHome {
        HelmHome { dir: TempDir::new("helm") }
    }

    /// The directory holding the three homes.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `helm_binary` with this home and `kubeconfig`.
    pub fn command(&self, helm_binary: &Path, kubeconfig: &Path) -> Command {
        let mut c = Command::new(helm_binary);
        c.env("HELM_CONFIG_HOME", self.path().join("config"))
            .env("HELM_CACHE_HOME", self.path().join("cache"))
            .env("HELM_DATA_HOME", self.path().join("data"))
            .env("KUBECONFIG", kubeconfig);
        c
    }
}

impl Default for HelmHome {
    fn default() -> Self {
        Self::new()
    }
}

/// A temporary directory removed on drop (std only: this crate depends on nothing but prpod).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/prpod-test-PREFIX-UNIQUE`.
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("prpod-test-{}", unique_name(prefix)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A name unique across processes and runs, valid as a Kubernetes namespace / DNS label
/// (lowercase, `-`, at most 63 characters): `PREFIX-PID-COUNTER-TIME`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros()) % 1_000_000_000;
    let mut p: String =
        prefix.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    p.truncate(30);
    format!("{p}-{}-{n}-{t:x}", std::process::id())
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
/// Tests use this instead of sleeps.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Parses `export NAME='value'` lines (what `scripts/dev-env env` prints). Values are single-quoted
/// without embedded quotes; unquoted values are accepted too.
pub fn parse_exports(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let rest = line.strip_prefix("export ").ok_or_else(|| format!("not an export line: {line}"))?;
        let (name, value) = rest.split_once('=').ok_or_else(|| format!("no '=' in: {line}"))?;
        let value = match value.strip_prefix('\'') {
            Some(v) => v.strip_suffix('\'').ok_or_else(|| format!("unterminated quote in: {line}"))?,
            None => value,
        };
        if value.contains('\'') {
            return Err(format!("embedded quote in: {line}"));
        }
        vars.insert(name.to_string(), value.to_string());
    }
    Ok(vars)
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_export_lines() {
        let v = parse_exports("export A='1'\nexport B='x y'\n\nexport C=plain\n").unwrap();
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "x y");
        assert_eq!(v["C"], "plain");
        assert!(parse_exports("A=1").is_err());
        assert!(parse_exports("export A='1").is_err());
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }

    /// The world as `env` would print it: templates/env.sh with `@NAME@` -> `val-NAME`.
    fn vars_from_the_env_template() -> BTreeMap<String, String> {
        let tpl = std::fs::read_to_string(repo_root().join("scripts/dev-env.d/templates/env.sh")).unwrap();
        let mut text = String::new();
        let mut rest = tpl.as_str();
        while let Some(i) = rest.find('@') {
            let j = rest[i + 1..].find('@').expect("closing @") + i + 1;
            let name = &rest[i + 1..j];
            text.push_str(&rest[..i]);
            text.push_str(&if name == "WEB_PORT" { "8080".to_string() } else { format!("val-{name}") });
            rest = &rest[j + 1..];
        }
        text.push_str(rest);
        parse_exports(&text).unwrap()
    }

    #[test]
    fn credentials_from_env_are_secrets_and_never_printed() {
        let w = World::from_vars(vars_from_the_env_template(), PathBuf::from("/")).unwrap();
        let printed = format!("{w:?}");
        for name in ["KUBE_ADMIN_TOKEN", "REGISTRY_PASSWORD", "TOKEN_PASSWORD", "TOKEN_READER_PASSWORD", "GIT_TOKEN"] {
            assert!(!printed.contains(&format!("val-{name}")), "{name} printed by {{:?}} of World");
        }
        assert!(printed.contains("<redacted>"));
        assert_eq!(w.registry_token.password.as_ref().unwrap().expose(), "val-TOKEN_PASSWORD");
        assert_eq!(w.registry_token_reader.password.as_ref().unwrap().expose(), "val-TOKEN_READER_PASSWORD");
        assert_eq!(w.git.token.expose(), "val-GIT_TOKEN");
        assert_eq!(w.kube_token.expose(), "val-KUBE_ADMIN_TOKEN");
        // credentials are not in `vars`, so `var()` cannot hand one out by mistake
        assert_eq!(w.var("PRPOD_GIT_TOKEN"), None);
        assert_eq!(w.secret("PRPOD_GIT_TOKEN").unwrap().expose(), "val-GIT_TOKEN");
        // both users of registry C share its addresses and token auth; credentials differ
        assert_eq!(w.registry_token.token_auth, w.registry_token_reader.token_auth);
        assert_ne!(w.registry_token.user, w.registry_token_reader.user);
        let dcj = w.registry_token.dockerconfigjson().unwrap();
        assert_eq!(format!("{dcj}"), "<redacted>");
        assert!(dcj.expose().contains(&w.registry_token.host_pod), "both names of the registry");
    }

    #[test]
    fn a_world_without_its_secret_list_is_stale() {
        let mut v = vars_from_the_env_template();
        v.remove("PRPOD_DEV_ENV_SECRETS");
        let e = World::from_vars(v, PathBuf::from("/")).unwrap_err();
        assert!(e.contains("scripts/dev-env down && scripts/dev-env up"), "{e}");
    }

    #[test]
    fn reads_the_token_out_of_an_issuer_answer() {
        let body = r#"{"token": "aaa.bbb.ccc", "access_token": "aaa.bbb.ccc", "expires_in": 300}"#;
        assert_eq!(json_string_field(body, "token").as_deref(), Some("aaa.bbb.ccc"));
        assert_eq!(json_string_field(body, "missing"), None);
    }

    #[test]
    fn unique_names_are_dns_labels() {
        let a = unique_name("World Test_X");
        let b = unique_name("World Test_X");
        assert_ne!(a, b);
        assert!(a.len() <= 63);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{a}");
    }
}
