//! Typed handles on the local service world that `scripts/dev-env` starts.
//!
//! The world (two OCI registries, a git server, a Kubernetes 1.20 cluster with a real node, Helm
//! and kubectl) is started once per machine with `scripts/dev-env up` and described by
//! `scripts/dev-env env`. [`world()`] runs that command once per test process and parses its
//! `export` lines into a [`World`]. When the world is not up, [`world()`] panics with a message
//! that says how to start it: tests must not silently skip (CI starts the world first).
//!
//! No dependencies on purpose: the crate only parses shell `export` lines and runs processes,
//! and keeping it dependency-free keeps it out of the way of the host crate's lockfile churn.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An OCI registry of the world.
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
    /// Basic-auth user; `None` when the registry needs no credentials.
    pub user: Option<String>,
    /// Basic-auth password; `None` when the registry needs no credentials.
    pub password: Option<String>,
    /// A `{"auths": ...}` file with the credentials (skopeo/buildah `--authfile`,
    /// helm `--registry-config`); `None` when the registry needs no credentials.
    pub authfile: Option<PathBuf>,
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

    /// A `.dockerconfigjson` document for this registry, for a `kubernetes.io/dockerconfigjson`
    /// Secret used as imagePullSecret (the node pulls from the TLS registry only with one).
    pub fn dockerconfigjson(&self) -> Option<String> {
        let (user, password) = (self.user.as_ref()?, self.password.as_ref()?);
        let auth = base64(format!("{user}:{password}").as_bytes());
        let entry = |host: &str| format!(r#""{host}":{{"username":"{user}","password":"{password}","auth":"{auth}"}}"#);
        Some(format!(r#"{{"auths":{{{},{}}}}}"#, entry(&self.host), entry(&self.host_pod)))
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
    pub token: String,
    script: PathBuf,
}

impl GitServer {
    /// Publishes `dir` as repository `NAME.git` (branch `main`) by committing its contents; the
    /// repo is created on first use, re-publishing adds a commit only when the contents changed.
    /// Returns the clone URL without credentials.
    pub fn publish(&self, dir: &Path, name: &str) -> String {
        let out = Command::new(&self.script)
            .arg("publish-git")
            .arg(dir)
            .arg(name)
            .output()
            .expect("run scripts/dev-env publish-git");
        assert!(
            out.status.success(),
            "scripts/dev-env publish-git {} {name} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Clone URL of repository `name` without credentials.
    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.url)
    }

    /// `git` authenticating as this server's user with `token`, the way prpod must do it: the
    /// token travels in the environment to a credential helper, never in a URL or an argument
    /// (where `ps`, logs and error messages would show it). No other helper and no prompt: a
    /// wrong token fails at once instead of hanging.
    pub fn git_with_token(&self, token: &str) -> Command {
        let mut c = Command::new("git");
        c.args(["-c", "credential.helper="])
            .args([
                "-c",
                "credential.helper=!f() { echo username=\"$PRPOD_GIT_USER\"; echo password=\"$PRPOD_GIT_SECRET\"; }; f",
            ])
            .env("PRPOD_GIT_USER", &self.user)
            .env("PRPOD_GIT_SECRET", token)
            .env("GIT_TERMINAL_PROMPT", "0");
        c
    }
}

/// The whole world, as described by `scripts/dev-env env`.
#[derive(Debug, Clone)]
pub struct World {
    /// Registry A: plain HTTP, no auth.
    pub registry_plain: Registry,
    /// Registry B: TLS with its own CA, htpasswd auth.
    pub registry_tls: Registry,
    /// The git server.
    pub git: GitServer,
    /// Admin kubeconfig (token auth, CA embedded).
    pub kubeconfig: PathBuf,
    /// Admin bearer token (`system:masters`).
    pub kube_token: String,
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
    /// The pause image the node uses (built locally, on registry A).
    pub pause_image: String,
    /// The tiny test web app (busybox httpd, FROM scratch) on registry A.
    pub web_image_plain: String,
    /// The same web app on registry B.
    pub web_image_tls: String,
    /// Port the web app listens on in its container.
    pub web_port: u16,
    /// Body of `GET /` on the web app. `GET /cgi-bin/greeting` answers the `GREETING` env var.
    pub web_body: String,
    /// Every variable `scripts/dev-env env` printed (for the ones without a typed field).
    pub vars: BTreeMap<String, String>,
    root: PathBuf,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The world, read once per process from `scripts/dev-env env`.
///
/// # Panics
/// When the world is not up, with a message telling to run `scripts/dev-env up`.
pub fn world() -> &'static World {
    WORLD.get_or_init(|| World::load().unwrap_or_else(|e| panic!("{e}")))
}

/// Repository root (this crate lives in `tests/support`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

impl World {
    /// Runs `scripts/dev-env env` and parses it; `Err` with an actionable message when the world
    /// is not up. Prefer [`world()`], which caches the result.
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

    fn from_vars(vars: BTreeMap<String, String>, root: PathBuf) -> Result<World, String> {
        let get = |k: &str| {
            vars.get(k).cloned().ok_or_else(|| {
                format!("`scripts/dev-env env` did not print {k}: is the world from an older script? run `scripts/dev-env down && scripts/dev-env up`")
            })
        };
        let path = |k: &str| get(k).map(PathBuf::from);
        Ok(World {
            registry_plain: Registry {
                host: get("PRPOD_REGISTRY_PLAIN")?,
                host_pod: get("PRPOD_REGISTRY_PLAIN_POD")?,
                ca: None,
                cert_dir: None,
                user: None,
                password: None,
                authfile: None,
            },
            registry_tls: Registry {
                host: get("PRPOD_REGISTRY_TLS")?,
                host_pod: get("PRPOD_REGISTRY_TLS_POD")?,
                ca: Some(path("PRPOD_REGISTRY_CA")?),
                cert_dir: Some(path("PRPOD_REGISTRY_CERT_DIR")?),
                user: Some(get("PRPOD_REGISTRY_USER")?),
                password: Some(get("PRPOD_REGISTRY_PASSWORD")?),
                authfile: Some(path("PRPOD_REGISTRY_AUTHFILE")?),
            },
            git: GitServer {
                url: get("PRPOD_GIT_URL")?,
                url_pod: get("PRPOD_GIT_URL_POD")?,
                user: get("PRPOD_GIT_USER")?,
                token: get("PRPOD_GIT_TOKEN")?,
                script: root.join("scripts/dev-env"),
            },
            kubeconfig: path("KUBECONFIG")?,
            kube_token: get("PRPOD_KUBE_TOKEN")?,
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
            web_port: get("PRPOD_WEB_PORT")?.parse().map_err(|e| format!("PRPOD_WEB_PORT: {e}"))?,
            web_body: get("PRPOD_WEB_BODY")?,
            vars,
            root,
        })
    }

    /// A variable printed by `scripts/dev-env env`, typed field or not.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The repository root the world was read from.
    pub fn repo_root(&self) -> &Path {
        &self.root
    }

    /// `kubectl` with the admin kubeconfig, ready for arguments.
    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// Runs `kubectl ARGS` as admin and returns its output, whatever the exit status.
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_cmd().args(args).output().expect("run kubectl")
    }

    /// Runs `kubectl ARGS` as admin; panics with its stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        let out = self.kubectl(&args);
        assert!(out.status.success(), "kubectl {:?} failed: {}", args, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies a manifest (YAML or JSON) given as a string, as admin.
    pub fn kubectl_apply(&self, namespace: &str, manifest: &str) -> String {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd()
            .args(["apply", "-n", namespace, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        child.stdin.take().expect("stdin").write_all(manifest.as_bytes()).expect("write manifest");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(out.status.success(), "kubectl apply failed: {}\n{manifest}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `helm` (4.x) with the admin kubeconfig and its config/cache/data homes in `home`.
    pub fn helm_cmd(&self, home: &HelmHome) -> Command {
        home.command(&self.helm, &self.kubeconfig)
    }

    /// `helm` 3.18 with the admin kubeconfig and its homes in `home`.
    pub fn helm3_cmd(&self, home: &HelmHome) -> Command {
        home.command(&self.helm3, &self.kubeconfig)
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

/// A temporary directory removed on drop (std only; see the crate docs for why no `tempfile`).
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

    #[test]
    fn unique_names_are_dns_labels() {
        let a = unique_name("World Test_X");
        let b = unique_name("World Test_X");
        assert_ne!(a, b);
        assert!(a.len() <= 63);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{a}");
    }
}
