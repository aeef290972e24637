//! The Helm CLI: `helm template`, `helm upgrade --install`, release status, history, rollback.
//!
//! prpod drives the `helm` binary rather than reimplementing it, so a release prpod makes is an
//! ordinary Helm release that `helm list`, `helm rollback` and every dashboard understand. The
//! major version is detected once (`helm version`): Helm 4 rolls a failed upgrade back with
//! `--rollback-on-failure`, Helm 3 with `--atomic`.
//!
//! Every invocation runs with a private, empty Helm home ([`HelmHome`]): no repositories,
//! registry logins or plugins of the user's leak in, and nothing prpod does is left behind.
//! Values always travel in files (created 0600 in a private directory), never on the command
//! line, where `ps` and CI logs would show them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::error::{Classify, FailureKind};

pub use crate::model::KubeTarget;

/// Helm's major version, which decides a few flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HelmMajor {
    /// Helm 3.x: `--atomic`.
    #[serde(rename = "3")]
    V3,
    /// Helm 4.x: `--rollback-on-failure`, server-side apply.
    #[serde(rename = "4")]
    V4,
}

/// Private `HELM_CONFIG_HOME` / `HELM_CACHE_HOME` / `HELM_DATA_HOME` (a fresh directory, mode
/// 0700, removed on drop), so Helm never reads or writes the user's repositories, registry
/// logins or plugins.
#[derive(Debug)]
pub struct HelmHome {
    dir: tempfile::TempDir,
}

impl HelmHome {
    /// A fresh, empty Helm home.
    pub fn new() -> std::io::Result<HelmHome> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("prpod-helm-").tempdir()?;
        // Values files live here: nobody else may list or read them.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        Ok(HelmHome { dir })
    }

    /// The directory holding the three homes.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The environment pointing Helm at this home.
    pub fn env(&self) -> [(&'static str, PathBuf); 3] {
        [
            ("HELM_CONFIG_HOME", self.path().join("config")),
            ("HELM_CACHE_HOME", self.path().join("cache")),
            ("HELM_DATA_HOME", self.path().join("data")),
        ]
    }

    /// `helm_binary` as a `std::process::Command` with this home and `kubeconfig` (for tests and
    /// scripts that drive Helm directly).
    pub fn command(&self, helm_binary: &Path, kubeconfig: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(helm_binary);
        c.env_clear().envs(helm_env()).envs(self.env()).env("KUBECONFIG", kubeconfig);
        c
    }
}

/// What a chart is rendered against: Helm's `.Capabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderCapabilities {
    /// `--kube-version` (`v1.20.2`), the cluster's; `None`: Helm's built-in default.
    pub kube_version: Option<String>,
    /// `--api-versions`: every `group/version` and `group/version/Kind` the cluster serves (what
    /// Helm itself builds `.Capabilities.APIVersions` from when it talks to a cluster).
    pub api_versions: Vec<String>,
}

/// A release as `helm status -o json` / `helm upgrade -o json` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelmRelease {
    /// Release name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Revision (Helm calls it `version`).
    pub revision: u32,
    /// `deployed`, `failed`, `pending-install`, `pending-upgrade`, `pending-rollback`, ...
    pub status: String,
    /// `name-version` of the chart.
    pub chart: String,
    /// The chart's appVersion, when set.
    pub app_version: Option<String>,
    /// Helm's description of the last operation.
    pub description: String,
}

/// One entry of `helm history -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HistoryEntry {
    /// Revision.
    pub revision: u32,
    /// Status of that revision.
    pub status: String,
    /// `name-version` of its chart.
    pub chart: String,
    /// The chart's appVersion.
    #[serde(default)]
    pub app_version: Option<String>,
    /// What Helm did.
    #[serde(default)]
    pub description: String,
}

/// A Helm invocation that failed. Each message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// The binary is not there.
    #[error(
        "failed to run `{binary}`: {source}; install Helm 3.x or 4.x, or point `[deploy] helm` (or \
         PRPOD_HELM) at the binary"
    )]
    NotFound {
        /// The binary asked for.
        binary: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `helm version` printed something prpod does not understand.
    #[error("`{binary} version` printed {printed:?}: prpod needs Helm 3.x or 4.x")]
    UnsupportedVersion {
        /// The binary.
        binary: String,
        /// What it printed.
        printed: String,
    },
    /// A temp file for values or the chart could not be written.
    #[error("failed to write {what}: {source}")]
    Io {
        /// What was being written.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The chart did not render (a template error, a bad values file): the chart's author fixes it.
    #[error("failed to render chart {chart}: {stderr}")]
    Render {
        /// The chart directory.
        chart: String,
        /// Helm's message.
        stderr: String,
    },
    /// Helm reported that the deploy failed and it rolled the release back.
    #[error("the deploy of release {release} in namespace {namespace} failed and Helm rolled it back: {stderr}")]
    RolledBack {
        /// The release.
        release: String,
        /// Its namespace.
        namespace: String,
        /// Helm's message.
        stderr: String,
    },
    /// A release is stuck in `pending-*` (a killed run) and prpod did not recover it.
    #[error(
        "release {release} in namespace {namespace} is stuck in `{status}` (revision {revision}), left by a \
         deploy that was interrupted; {fix}"
    )]
    Pending {
        /// The release.
        release: String,
        /// Its namespace.
        namespace: String,
        /// `pending-install`, `pending-upgrade` or `pending-rollback`.
        status: String,
        /// The stuck revision.
        revision: u32,
        /// What to run.
        fix: String,
    },
    /// Helm did not finish within its own timeout plus a grace period.
    #[error("`helm {command}` for release {release} did not finish within {after:?}; it was stopped")]
    Hung {
        /// The subcommand.
        command: &'static str,
        /// The release.
        release: String,
        /// How long prpod waited.
        after: Duration,
    },
    /// Any other failure of a Helm command.
    #[error("`helm {command}` for release {release} failed: {stderr}")]
    Failed {
        /// The subcommand.
        command: &'static str,
        /// The release.
        release: String,
        /// Helm's message (secrets scrubbed).
        stderr: String,
    },
    /// Helm's JSON output did not parse.
    #[error("failed to read the output of `helm {command}`")]
    Output {
        /// The subcommand.
        command: &'static str,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
}

impl HelmError {
    /// Whether Helm's message says the cluster refused our credentials or rights.
    fn is_auth(stderr: &str) -> bool {
        let s = stderr.to_ascii_lowercase();
        s.contains("unauthorized") || s.contains("forbidden") || s.contains("you must be logged in")
    }
}

impl Classify for HelmError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            HelmError::NotFound { .. } | HelmError::UnsupportedVersion { .. } | HelmError::Render { .. } => None,
            HelmError::RolledBack { .. } => Some(FailureKind::RolledBack),
            HelmError::Failed { stderr, .. } if HelmError::is_auth(stderr) => None,
            HelmError::Io { .. } | HelmError::Output { .. } => Some(FailureKind::Internal),
            HelmError::Pending { .. } | HelmError::Hung { .. } | HelmError::Failed { .. } => {
                Some(FailureKind::External)
            }
        }
    }
}

/// The Helm CLI, with its detected version, a private home and the cluster to talk to.
#[derive(Debug)]
pub struct Helm {
    binary: PathBuf,
    version: String,
    major: HelmMajor,
    home: HelmHome,
    target: KubeTarget,
}

/// Time allowed for commands that do not wait for a rollout (status, history, template...).
const QUICK: Duration = Duration::from_secs(60);
/// Extra time beyond Helm's own `--timeout` before prpod gives up on it.
const GRACE: Duration = Duration::from_secs(90);

/// The values of one deploy: files passed as `-f` in order (later files win).
#[derive(Debug, Clone, Default)]
pub struct ValuesFiles(pub Vec<PathBuf>);

impl Helm {
    /// Finds `binary` (a name on `PATH` or a path), detects its version, and makes a private home.
    /// The version is remembered per binary (path, size, mtime) under `cache_dir` (the caller
    /// passes prpod's cache directory; `None`: no cache), so a warm run spawns no `helm version`.
    pub async fn detect(binary: &Path, target: KubeTarget, cache_dir: Option<PathBuf>) -> Result<Helm, HelmError> {
        let home = HelmHome::new().map_err(|source| HelmError::Io { what: "a private Helm home".into(), source })?;
        let cache = cache_dir.and_then(|d| version_cache_file(&d, binary));
        if let Some(printed) =
            cache.as_ref().and_then(|f| crate::input::read_text_file(f, 4096, "Helm version cache").ok())
            && plain_version(&printed)
            && let Some(major) = parse_major(&printed)
        {
            return Ok(Helm { binary: binary.to_path_buf(), version: printed, major, home, target });
        }
        let mut cmd = Command::new(binary);
        cmd.args(["version", "--template", "{{.Version}}"]).env_clear().envs(helm_env()).envs(home.env());
        cmd.stdin(Stdio::null());
        let out = cmd
            .output()
            .await
            .map_err(|source| HelmError::NotFound { binary: binary.display().to_string(), source })?;
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let major = parse_major(&printed).ok_or_else(|| HelmError::UnsupportedVersion {
            binary: binary.display().to_string(),
            printed: if printed.is_empty() {
                String::from_utf8_lossy(&out.stderr).trim().to_string()
            } else {
                printed.clone()
            },
        })?;
        if let Some(file) = &cache
            && plain_version(&printed)
        {
            // Best effort: a cache that cannot be written costs one `helm version` per run.
            if let Err(e) = write_version_cache(file, &printed) {
                tracing::debug!(target: "prpod::helm", "not caching Helm's version in {}: {e}", file.display());
            }
        }
        Ok(Helm { binary: binary.to_path_buf(), version: printed, major, home, target })
    }

    /// `v3.18.0`, `v4.1.4`, ...
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The major version.
    pub fn major(&self) -> HelmMajor {
        self.major
    }

    /// The binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// A private directory (inside the Helm home, mode 0700) for files of one deploy: values,
    /// a generated chart. Removed with the `Helm`.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf, HelmError> {
        let dir = self.home.path().join("work").join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|source| HelmError::Io { what: format!("scratch directory {}", dir.display()), source })?;
        Ok(dir)
    }

    /// Writes `yaml` as a values file (mode 0600) in the private home; returns its path.
    pub fn write_values(&self, name: &str, yaml: &str) -> Result<PathBuf, HelmError> {
        let path = self.scratch_dir("values")?.join(name);
        write_private(&path, yaml.as_bytes())
            .map_err(|source| HelmError::Io { what: format!("values file {}", path.display()), source })?;
        Ok(path)
    }

    // The one unsafe block: `pre_exec`, for the parent-death signal below.
    #[allow(unsafe_code)]
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(args).env_clear().envs(helm_env()).envs(self.home.env());
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Dropping the future (a timeout) must stop Helm, or it would keep running behind our
        // back.
        c.kill_on_drop(true);
        // A SIGKILL of prpod alone (an OOM kill, `kill -9` of one pid) runs no destructor: Helm
        // would go on upgrading, orphaned, while the deploy Lease expires and the next run starts
        // a Helm of its own on the same release. The kernel sends Helm SIGTERM instead (Helm's
        // own handling: it stops and, with --rollback-on-failure/--atomic, rolls back), as
        // prpod's SIGTERM handling does. The signal follows the *thread* that spawned Helm: here
        // a tokio worker, which lives as long as the runtime (prpod has no `block_in_place`,
        // which could turn it into a blocking-pool thread that exits when idle).
        let parent = std::process::id();
        // SAFETY: between fork and exec only async-signal-safe calls are made (two syscalls).
        unsafe {
            c.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
                // prpod may have died between the fork and the prctl: then no signal would come.
                if rustix::process::Pid::as_raw(rustix::process::getppid()) as u32 != parent {
                    return Err(std::io::Error::other("prpod exited before Helm started"));
                }
                Ok(())
            });
        }
        c
    }

    fn cluster_args(&self) -> Vec<OsString> {
        let mut a = Vec::new();
        if let Some(k) = &self.target.kubeconfig {
            a.push("--kubeconfig".into());
            a.push(k.clone().into_os_string());
        }
        if let Some(c) = &self.target.context {
            a.push("--kube-context".into());
            a.push(c.into());
        }
        a
    }

    async fn run(
        &self,
        mut cmd: Command,
        command: &'static str,
        release: &str,
        limit: Duration,
    ) -> Result<Output, HelmError> {
        tracing::debug!(target: "prpod::helm", "helm {command} {release}: {cmd:?}");
        let fut = cmd.output();
        let out = match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(|source| HelmError::NotFound { binary: self.binary.display().to_string(), source })?,
            Err(_) => return Err(HelmError::Hung { command, release: release.into(), after: limit }),
        };
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: clean_stderr(&String::from_utf8_lossy(&out.stderr)),
        })
    }

    /// `helm template RELEASE CHART --namespace NS -f ... --include-crds` rendered against
    /// `capabilities` (`--kube-version`, `--api-versions`): the one rendering of the chart, which
    /// prpod checks and then applies as it is. Client-only (Helm's default `--dry-run=client`):
    /// `lookup` finds nothing, so a chart cannot read the cluster's Secrets through it.
    pub async fn template(
        &self,
        release: &str,
        chart: &Path,
        namespace: &str,
        values: &ValuesFiles,
        capabilities: &RenderCapabilities,
    ) -> Result<String, HelmError> {
        let mut cmd = self.command(&["template", release]);
        // `crds/` is installed by `helm install` without passing through templates: rendered here,
        // CRDs are checked (and refused, unless allowed) like every other object.
        cmd.arg(chart).args(["--namespace", namespace, "--include-crds"]);
        if let Some(v) = &capabilities.kube_version {
            cmd.args(["--kube-version", v]);
        }
        // One flag per entry: a cluster with many CRDs has thousands, too long for one argument.
        for a in &capabilities.api_versions {
            cmd.arg("--api-versions").arg(a);
        }
        for f in &values.0 {
            cmd.arg("--values").arg(f);
        }
        let out = self.run(cmd, "template", release, QUICK).await?;
        if !out.ok {
            return Err(HelmError::Render { chart: chart.display().to_string(), stderr: out.stderr });
        }
        Ok(out.stdout)
    }

    /// Starts `helm upgrade --install ... --wait --timeout T` with Helm's rollback on failure
    /// (`--rollback-on-failure` on Helm 4, `--atomic` on Helm 3). The caller waits on the
    /// returned handle, and may interrupt it (SIGTERM), on which Helm cancels and rolls back.
    pub fn spawn_upgrade(
        &self,
        release: &str,
        chart: &Path,
        namespace: &str,
        values: &ValuesFiles,
        timeout: Duration,
    ) -> Result<RunningUpgrade, HelmError> {
        let mut cmd = self.command(&["upgrade", "--install", release]);
        // (no --create-namespace: prpod has made the namespace, and Helm's would ask the cluster
        // for `create namespaces` on every first install, also when the namespace exists)
        cmd.arg(chart).args(["--namespace", namespace, "--wait"]);
        cmd.args(["--timeout", &format!("{}s", timeout.as_secs().max(1))]);
        cmd.arg(match self.major {
            HelmMajor::V4 => "--rollback-on-failure",
            HelmMajor::V3 => "--atomic",
        });
        // Previews are short-lived: a handful of revisions is all a rollback ever needs.
        cmd.args(["--history-max", "5", "--output", "json"]);
        for f in &values.0 {
            cmd.arg("--values").arg(f);
        }
        cmd.args(self.cluster_args());
        tracing::debug!(target: "prpod::helm", "helm upgrade {release}: {cmd:?}");
        let child =
            cmd.spawn().map_err(|source| HelmError::NotFound { binary: self.binary.display().to_string(), source })?;
        Ok(RunningUpgrade { child, release: release.into(), namespace: namespace.into(), limit: timeout + GRACE })
    }

    /// `helm upgrade --install`, waited for (see [`Helm::spawn_upgrade`]).
    pub async fn upgrade_install(
        &self,
        release: &str,
        chart: &Path,
        namespace: &str,
        values: &ValuesFiles,
        timeout: Duration,
    ) -> Result<HelmRelease, HelmError> {
        self.spawn_upgrade(release, chart, namespace, values, timeout)?.wait().await
    }

    /// The release's latest revision (`helm history --max 1`, which, unlike `helm status`, names
    /// the chart on Helm 3 and 4 alike), or `None` when there is no such release.
    pub async fn status(&self, release: &str, namespace: &str) -> Result<Option<HelmRelease>, HelmError> {
        let mut cmd = self.command(&["history", release, "--max", "1", "--namespace", namespace, "--output", "json"]);
        cmd.args(self.cluster_args());
        let out = self.run(cmd, "history", release, QUICK).await?;
        if !out.ok {
            if out.stderr.contains("not found") {
                return Ok(None);
            }
            return Err(HelmError::Failed { command: "history", release: release.into(), stderr: out.stderr });
        }
        let entries: Vec<HistoryEntry> =
            serde_json::from_str(&out.stdout).map_err(|e| HelmError::Output { command: "history", source: e })?;
        Ok(entries.into_iter().last().map(|h| HelmRelease {
            name: release.into(),
            namespace: namespace.into(),
            revision: h.revision,
            status: h.status,
            chart: h.chart,
            app_version: h.app_version.filter(|v| !v.is_empty()),
            description: h.description,
        }))
    }

    /// `helm history`: every stored revision, oldest first (empty when there is no release).
    pub async fn history(&self, release: &str, namespace: &str) -> Result<Vec<HistoryEntry>, HelmError> {
        let mut cmd = self.command(&["history", release, "--namespace", namespace, "--output", "json"]);
        cmd.args(self.cluster_args());
        let out = self.run(cmd, "history", release, QUICK).await?;
        if !out.ok {
            if out.stderr.contains("not found") {
                return Ok(vec![]);
            }
            return Err(HelmError::Failed { command: "history", release: release.into(), stderr: out.stderr });
        }
        serde_json::from_str(&out.stdout).map_err(|e| HelmError::Output { command: "history", source: e })
    }

    /// `helm rollback RELEASE REVISION --wait`.
    pub async fn rollback(
        &self,
        release: &str,
        namespace: &str,
        revision: u32,
        timeout: Duration,
    ) -> Result<(), HelmError> {
        let rev = revision.to_string();
        let mut cmd = self.command(&["rollback", release, &rev, "--namespace", namespace, "--wait"]);
        cmd.args(["--timeout", &format!("{}s", timeout.as_secs().max(1)), "--history-max", "5"]);
        cmd.args(self.cluster_args());
        let out = self.run(cmd, "rollback", release, timeout + GRACE).await?;
        if !out.ok {
            return Err(HelmError::Failed { command: "rollback", release: release.into(), stderr: out.stderr });
        }
        Ok(())
    }

    /// `helm get manifest RELEASE --revision N`: the manifests Helm stored with that revision.
    pub async fn manifest(&self, release: &str, namespace: &str, revision: u32) -> Result<String, HelmError> {
        let rev = revision.to_string();
        let mut cmd = self.command(&["get", "manifest", release, "--revision", &rev, "--namespace", namespace]);
        cmd.args(self.cluster_args());
        let out = self.run(cmd, "get manifest", release, QUICK).await?;
        if !out.ok {
            return Err(HelmError::Failed { command: "get manifest", release: release.into(), stderr: out.stderr });
        }
        Ok(out.stdout)
    }

    /// `helm uninstall RELEASE --wait`.
    pub async fn uninstall(&self, release: &str, namespace: &str, timeout: Duration) -> Result<(), HelmError> {
        let mut cmd = self.command(&["uninstall", release, "--namespace", namespace, "--wait"]);
        cmd.args(["--timeout", &format!("{}s", timeout.as_secs().max(1))]);
        cmd.args(self.cluster_args());
        let out = self.run(cmd, "uninstall", release, timeout + GRACE).await?;
        if !out.ok && !out.stderr.contains("not found") {
            return Err(HelmError::Failed { command: "uninstall", release: release.into(), stderr: out.stderr });
        }
        Ok(())
    }

    /// `helm get values --all -o json`: the values stored with the release's latest revision.
    pub async fn stored_values(&self, release: &str, namespace: &str) -> Result<serde_json::Value, HelmError> {
        let mut cmd = self.command(&["get", "values", release, "--all", "--namespace", namespace, "--output", "json"]);
        cmd.args(self.cluster_args());
        let out = self.run(cmd, "get values", release, QUICK).await?;
        if !out.ok {
            return Err(HelmError::Failed { command: "get values", release: release.into(), stderr: out.stderr });
        }
        serde_json::from_str(&out.stdout).map_err(|e| HelmError::Output { command: "get values", source: e })
    }
}

/// A `helm upgrade` in progress.
#[derive(Debug)]
pub struct RunningUpgrade {
    child: tokio::process::Child,
    release: String,
    namespace: String,
    limit: Duration,
}

impl RunningUpgrade {
    /// The Helm process's id (to interrupt it).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for Helm: the new revision, or why it failed ([`HelmError::RolledBack`] when Helm
    /// rolled the release back).
    pub async fn wait(self) -> Result<HelmRelease, HelmError> {
        let (release, namespace, limit) = (self.release, self.namespace, self.limit);
        let out = match tokio::time::timeout(limit, self.child.wait_with_output()).await {
            Ok(r) => r.map_err(|e| HelmError::Io { what: "helm's output".into(), source: e })?,
            Err(_) => return Err(HelmError::Hung { command: "upgrade", release, after: limit }),
        };
        let stderr = clean_stderr(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            if stderr.contains("rolled back") || stderr.contains("uninstalled due to") {
                return Err(HelmError::RolledBack { release, namespace, stderr });
            }
            return Err(HelmError::Failed { command: "upgrade", release, stderr });
        }
        parse_release(&String::from_utf8_lossy(&out.stdout), "upgrade")
    }
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Helm 4 prints `Error: ` and sometimes a usage hint; keep the message, drop blank lines.
/// What Helm (and a kubeconfig `exec:` plugin it runs) sees of prpod's environment: the
/// allow-list of [`super::child_env`], never a token. A chart that reads Helm's
/// `/proc/self/environ` finds no credential there.
fn helm_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    super::child_env::allowed(super::child_env::Tool::Helm)
}

fn clean_stderr(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    let text = lines.join("; ");
    text.strip_prefix("Error: ").unwrap_or(&text).to_string()
}

/// `$PRPOD_CACHE_DIR/helm-version/<hash of the binary's path, size and mtime>` (`None` when the
/// cache is off or the binary is not found).
fn version_cache_file(dir: &Path, binary: &Path) -> Option<PathBuf> {
    use sha2::Digest;
    let path = if binary.components().count() > 1 {
        binary.to_path_buf()
    } else {
        std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(binary)).find(|p| p.is_file())?
    };
    let meta = std::fs::metadata(&path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    let key = hex::encode(sha2::Sha256::digest(format!("{}\0{}\0{mtime}", path.display(), meta.len())));
    Some(dir.join("helm-version").join(&key[..32]))
}

/// A version as Helm prints it (`v4.1.4`, `v3.18.0+g1234abc`): short, and nothing a terminal
/// would act on, since the cache file it may come from is only as trustworthy as the directory.
fn plain_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || ".+-_".contains(c))
}

/// Writes `version` to `file` whole or not at all (a temporary file renamed into place), in a
/// directory only the user can read.
fn write_version_cache(file: &Path, version: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(version.as_bytes())?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

fn parse_major(version: &str) -> Option<HelmMajor> {
    let v = version.trim().strip_prefix('v').unwrap_or(version.trim());
    match v.split('.').next()? {
        "3" => Some(HelmMajor::V3),
        "4" => Some(HelmMajor::V4),
        _ => None,
    }
}

/// The release document `helm status/upgrade -o json` print (Helm 3 and 4 agree on these fields).
#[derive(Deserialize)]
struct RawRelease {
    name: String,
    namespace: String,
    version: u32,
    info: RawInfo,
    chart: Option<RawChart>,
}

#[derive(Deserialize)]
struct RawInfo {
    status: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct RawChart {
    metadata: RawChartMeta,
}

#[derive(Deserialize)]
struct RawChartMeta {
    name: String,
    version: String,
    #[serde(default, rename = "appVersion")]
    app_version: Option<String>,
}

fn parse_release(text: &str, command: &'static str) -> Result<HelmRelease, HelmError> {
    // Helm may print warnings before the document on stdout; the JSON starts at the first `{`.
    let start = text.find('{').unwrap_or(0);
    let raw: RawRelease = serde_json::from_str(&text[start..]).map_err(|e| HelmError::Output { command, source: e })?;
    let (chart, app_version) = match raw.chart {
        Some(c) => {
            (format!("{}-{}", c.metadata.name, c.metadata.version), c.metadata.app_version.filter(|v| !v.is_empty()))
        }
        None => (String::new(), None),
    };
    Ok(HelmRelease {
        name: raw.name,
        namespace: raw.namespace,
        revision: raw.version,
        status: raw.info.status,
        chart,
        app_version,
        description: raw.info.description,
    })
}

/// Writes `bytes` to a new file readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warm detect spawns no `helm version`; a cache entry a terminal would act on is ignored.
    #[tokio::test]
    async fn the_version_is_cached_per_binary_and_checked_when_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        let helm = dir.path().join("helm");
        std::fs::write(&helm, format!("#!/bin/sh\necho x >> '{}'\nprintf v4.1.4\n", calls.display())).unwrap();
        std::fs::set_permissions(&helm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cache = dir.path().join("cache");
        let count = || std::fs::read_to_string(&calls).map_or(0, |s| s.lines().count());
        let target = KubeTarget::default();
        for _ in 0..2 {
            let h = Helm::detect(&helm, target.clone(), Some(cache.clone())).await.unwrap();
            assert_eq!((h.version(), h.major()), ("v4.1.4", HelmMajor::V4));
        }
        assert_eq!(count(), 1, "the second detect read the cache");
        let entry = version_cache_file(&cache, &helm).unwrap();
        std::fs::write(&entry, "v4.1.4\x1b]0;owned\x07").unwrap();
        let h = Helm::detect(&helm, target, Some(cache.clone())).await.unwrap();
        assert_eq!(h.version(), "v4.1.4");
        assert_eq!(count(), 2, "a tampered entry is not believed");
        assert_eq!(std::fs::read_to_string(&entry).unwrap(), "v4.1.4", "and is replaced");
    }

    #[test]
    fn majors() {
        assert_eq!(parse_major("v4.1.4"), Some(HelmMajor::V4));
        assert_eq!(parse_major("v3.18.0"), Some(HelmMajor::V3));
        assert_eq!(parse_major("v2.17.0"), None);
        assert_eq!(parse_major(""), None);
    }

    #[test]
    fn release_json() {
        let text = r#"WARNING: kubeconfig is group-readable
{"name":"pr-1","info":{"status":"deployed","description":"Upgrade complete"},"chart":{"metadata":{"name":"webapp","version":"0.1.0","appVersion":"1.0"}},"version":2,"namespace":"pr-1"}"#;
        let r = parse_release(text, "status").unwrap();
        assert_eq!((r.revision, r.status.as_str(), r.chart.as_str()), (2, "deployed", "webapp-0.1.0"));
        assert_eq!(r.app_version.as_deref(), Some("1.0"));
    }

    #[test]
    fn values_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let home = HelmHome::new().unwrap();
        let p = home.path().join("v.yaml");
        write_private(&p, b"a: 1").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(home.path()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn stderr_is_one_line() {
        assert_eq!(clean_stderr("Error: UPGRADE FAILED: x\n\n  more\n"), "UPGRADE FAILED: x;   more");
    }
}
