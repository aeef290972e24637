//! buildah (1.28+), for Dockerfiles with `RUN` lines on machines without docker buildx.
//!
//! Builds run `buildah build --layers --isolation oci --network none` by default: a pull request's
//! `RUN` steps run in their own PID, mount, IPC and UTS namespaces under runc, with their own
//! `/proc` (so `/proc/1/environ` is the step's own shell, not the runner's init, and no other
//! process of the runner is visible) and no network at all (no CNI bridge or iptables chains are
//! made on the host either). `chroot` isolation ([`Isolation::Chroot`]) shares the runner's
//! network and PID namespaces and its `/proc`: only an operator may choose it. Registry credentials reach buildah only through an authfile the
//! caller created 0600 in a private directory (`--authfile`), never `--creds` on argv.
//!
//! buildah's `--cache-from` / `--cache-to` name a *repository*, not a tag: buildah stores each
//! cached step there under a tag that is the step's cache key. Callers map each tag-policy cache
//! tag to its own cache repository ([`cache_repository`]) so branches never overwrite each
//! other's cache.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::error::{Classify, FailureKind};
use crate::model::BuildSteps;

/// buildah's global storage options (unset: buildah's defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Storage {
    /// `--root`.
    pub root: Option<PathBuf>,
    /// `--runroot`.
    pub runroot: Option<PathBuf>,
    /// `--storage-driver`.
    pub driver: Option<String>,
}

/// Where buildah finds registry credentials and trust, all files prpod wrote for this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAccess {
    /// `--authfile` (0600, in a private directory).
    pub authfile: Option<PathBuf>,
    /// `--cert-dir`: a directory of `*.crt` CAs.
    pub cert_dir: Option<PathBuf>,
    /// A `registries.conf` marking plain-HTTP registries insecure (`CONTAINERS_REGISTRIES_CONF`).
    pub registries_conf: Option<PathBuf>,
}

/// How `RUN` steps are isolated from the machine prpod runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// runc: own PID, mount, IPC and UTS namespaces, own `/proc`, no network (`--network none`).
    #[default]
    Oci,
    /// chroot: the runner's network and PID namespaces and its `/proc` (every process's
    /// environment, prpod's credentials included, is readable from a `RUN` step run as root).
    Chroot,
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "oci" => Ok(Isolation::Oci),
            "chroot" => Ok(Isolation::Chroot),
            _ => Err("expected `oci` or `chroot`".into()),
        }
    }
}

/// One `buildah build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    /// The build context.
    pub context_dir: PathBuf,
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// `--build-arg NAME=VALUE`, sorted.
    pub build_args: BTreeMap<String, String>,
    /// `--label NAME=VALUE`, sorted.
    pub labels: BTreeMap<String, String>,
    /// `--platform`.
    pub platform: String,
    /// `-t` for the built image (local name).
    pub tag: String,
    /// `--cache-from` repository.
    pub cache_from: Option<String>,
    /// `--cache-to` repository.
    pub cache_to: Option<String>,
    /// Where to write the image ID (`--iidfile`).
    pub iidfile: PathBuf,
    /// How `RUN` steps are isolated.
    pub isolation: Isolation,
}

/// A buildah command failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildahError {
    /// buildah is not installed.
    #[error("failed to run buildah ({0}); install it (Debian: apt-get install buildah runc) or pick another backend")]
    Missing(String),
    /// The build failed (a step failed, the Dockerfile is wrong, a base image is missing).
    #[error("buildah build failed (exit {code}): {tail}")]
    Build {
        /// Exit code.
        code: i32,
        /// The last lines of its output.
        tail: String,
    },
    /// Another buildah command failed.
    #[error("failed to {what}: {tail}")]
    Command {
        /// What was being done.
        what: String,
        /// The last lines of its output.
        tail: String,
    },
}

impl Classify for BuildahError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            // A failing build is usually the Dockerfile's fault; the message quotes buildah.
            BuildahError::Missing(_) | BuildahError::Build { .. } => None,
            BuildahError::Command { .. } => Some(FailureKind::External),
        }
    }
}

/// The outcome of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The image ID (`sha256:...` of its config).
    pub image_id: String,
    /// Steps executed and served from cache (local or remote).
    pub steps: BuildSteps,
}

/// A cache tag of the tag policy as the repository buildah keeps that cache in:
/// `<image>/cache/<tag>`, lowercased and made a valid path component (a tag may hold uppercase
/// and `_` runs that a repository path may not; a changed name gets a hash suffix so two tags
/// never share a repository).
pub fn cache_repository(image: &str, tag: &str) -> String {
    let lower = tag.to_ascii_lowercase();
    let mut component = String::new();
    let mut sep = String::new();
    for c in lower.chars() {
        if c.is_ascii_alphanumeric() {
            if !component.is_empty() && !sep.is_empty() {
                // Separators allowed between alphanumerics: `.`, `_`, `__`, or any run of `-`.
                let ok = matches!(sep.as_str(), "." | "_" | "__") || sep.chars().all(|c| c == '-');
                component.push_str(if ok { &sep } else { "-" });
            }
            sep.clear();
            component.push(c);
        } else {
            sep.push(c);
        }
    }
    if component.is_empty() {
        component.push_str("cache");
    }
    if component != tag {
        // Anything changed (case included): `Cache-X` and `cache-x` must not share a repository.
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(tag.as_bytes()));
        component = format!("{component}-{}", &h[..8]);
    }
    format!("{image}/cache/{component}")
}

/// buildah with its storage options.
#[derive(Debug, Clone, Default)]
pub struct Buildah {
    storage: Storage,
    access: RegistryAccess,
}

impl Buildah {
    /// buildah using `storage`, reaching registries through `access`.
    pub fn new(storage: Storage, access: RegistryAccess) -> Buildah {
        Buildah { storage, access }
    }

    fn global_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(r) = &self.storage.root {
            a.extend(["--root".into(), r.into()]);
        }
        if let Some(r) = &self.storage.runroot {
            a.extend(["--runroot".into(), r.into()]);
        }
        if let Some(d) = &self.storage.driver {
            a.extend(["--storage-driver".into(), d.into()]);
        }
        a
    }

    fn access_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(f) = &self.access.authfile {
            a.extend(["--authfile".into(), f.into()]);
        }
        if let Some(d) = &self.access.cert_dir {
            a.extend(["--cert-dir".into(), d.into()]);
        }
        a
    }

    /// The argv (after `buildah`) of a build: what [`Buildah::build`] runs.
    pub fn build_argv(&self, req: &BuildRequest) -> Vec<OsString> {
        let mut a = self.global_args();
        a.extend(["build".into(), "--layers".into()]);
        match req.isolation {
            Isolation::Oci => a.extend(["--isolation".into(), "oci".into(), "--network".into(), "none".into()]),
            Isolation::Chroot => a.extend(["--isolation".into(), "chroot".into()]),
        }
        a.extend(self.access_args());
        a.extend(["--platform".into(), req.platform.clone().into()]);
        a.extend(["--file".into(), req.dockerfile.clone().into()]);
        for (k, v) in &req.build_args {
            a.extend(["--build-arg".into(), format!("{k}={v}").into()]);
        }
        for (k, v) in &req.labels {
            a.extend(["--label".into(), format!("{k}={v}").into()]);
        }
        if let Some(r) = &req.cache_from {
            a.extend(["--cache-from".into(), r.into()]);
        }
        if let Some(r) = &req.cache_to {
            a.extend(["--cache-to".into(), r.into()]);
        }
        a.extend(["--iidfile".into(), req.iidfile.clone().into(), "--tag".into(), req.tag.clone().into()]);
        a.push(req.context_dir.clone().into());
        a
    }

    fn command(&self, args: &[OsString]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("buildah");
        c.args(args).stdin(Stdio::null()).kill_on_drop(true);
        // Only the allow-list of prpod's environment (no token, no REGISTRY_AUTH_FILE, no
        // BUILDAH_ISOLATION or BUILDAH_LAYERS overriding the flags): the authfile alone carries
        // registry credentials.
        c.env_clear().envs(super::child_env::allowed(super::child_env::Tool::Buildah));
        if let Some(conf) = &self.access.registries_conf {
            c.env("CONTAINERS_REGISTRIES_CONF", conf);
        }
        c
    }

    /// Builds; `on_line` sees each line buildah prints (for progress). Counts steps: every
    /// `STEP n/m` but `FROM`, and the ones answered by `Using cache` (pulled from the cache
    /// repository or found locally).
    pub async fn build(
        &self,
        req: &BuildRequest,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Built, BuildahError> {
        let mut cmd = self.command(&self.build_argv(req));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| BuildahError::Missing(e.to_string()))?;
        // Both streams into one channel, in the order lines arrive.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let pump = |r: Box<dyn tokio::io::AsyncRead + Unpin + Send>, tx: tokio::sync::mpsc::UnboundedSender<String>| {
            tokio::spawn(async move {
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            })
        };
        pump(Box::new(out), tx.clone());
        pump(Box::new(err), tx);
        let mut steps = BuildSteps::default();
        let mut tail: Vec<String> = Vec::new();
        let mut pending_step = false;
        while let Some(l) = rx.recv().await {
            on_line(&l);
            if let Some(rest) = l.strip_prefix("STEP ") {
                if pending_step {
                    steps.executed += 1;
                }
                pending_step = !rest.split_once(": ").is_some_and(|(_, ins)| ins.starts_with("FROM "));
            } else if l.starts_with("--> Using cache") && pending_step {
                steps.cached += 1;
                pending_step = false;
            }
            tail.push(l);
            if tail.len() > 12 {
                tail.remove(0);
            }
        }
        if pending_step {
            steps.executed += 1;
        }
        let status = child.wait().await.map_err(|e| BuildahError::Missing(e.to_string()))?;
        if !status.success() {
            let relevant: Vec<&String> = tail.iter().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(BuildahError::Build {
                code: status.code().unwrap_or(-1),
                tail: relevant.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" / "),
            });
        }
        let image_id = std::fs::read_to_string(&req.iidfile)
            .map_err(|e| BuildahError::Command { what: "read the image ID buildah wrote".into(), tail: e.to_string() })?
            .trim()
            .to_string();
        Ok(Built { image_id, steps })
    }

    /// Writes image `image` as an OCI image layout into `dir` (local: no registry involved), for
    /// prpod's own push.
    pub async fn push_to_layout(&self, image: &str, dir: &Path) -> Result<(), BuildahError> {
        let mut a = self.global_args();
        let dest = format!("oci:{}", dir.display());
        a.extend(["push".into(), "--quiet".into(), "--format".into(), "oci".into(), image.into(), dest.into()]);
        self.run(&a, "write the image as an OCI layout").await
    }

    /// Whether buildah's storage holds image `image` (a local name such as
    /// `localhost/prpod/acme/web:build`).
    pub async fn has_image(&self, image: &str) -> bool {
        let mut a = self.global_args();
        a.extend([
            "inspect".into(),
            "--type".into(),
            "image".into(),
            "--format".into(),
            "{{.FromImageID}}".into(),
            image.into(),
        ]);
        self.command(&a).stdout(Stdio::null()).stderr(Stdio::null()).status().await.is_ok_and(|s| s.success())
    }

    /// Removes image `image` from buildah's storage (its cached layers stay for the next build).
    pub async fn remove_image(&self, image: &str) -> Result<(), BuildahError> {
        let mut a = self.global_args();
        a.extend(["rmi".into(), image.into()]);
        self.run(&a, "remove the local image").await
    }

    async fn run(&self, args: &[OsString], what: &str) -> Result<(), BuildahError> {
        let out = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| BuildahError::Missing(e.to_string()))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            return Err(BuildahError::Command {
                what: what.into(),
                tail: lines[lines.len().saturating_sub(3)..].join(" / "),
            });
        }
        Ok(())
    }

    /// Whether `buildah --version` runs.
    pub async fn available() -> bool {
        let run = tokio::process::Command::new("buildah")
            .env_clear()
            .envs(super::child_env::allowed(super::child_env::Tool::Buildah))
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        matches!(tokio::time::timeout(std::time::Duration::from_secs(10), run).await, Ok(Ok(s)) if s.success())
    }

    /// What `buildah --version` prints (within 10 s), or why it did not run.
    pub async fn version() -> Result<String, String> {
        let mut c = tokio::process::Command::new("buildah");
        c.env_clear().envs(super::child_env::allowed(super::child_env::Tool::Buildah)).arg("--version");
        super::child_env::first_line(c).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// distribution's path-component grammar: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
    fn valid_component(c: &str) -> bool {
        let mut rest = c;
        let alnum = |s: &str| s.find(|ch: char| !(ch.is_ascii_lowercase() || ch.is_ascii_digit())).unwrap_or(s.len());
        loop {
            let n = alnum(rest);
            if n == 0 {
                return false;
            }
            rest = &rest[n..];
            if rest.is_empty() {
                return true;
            }
            let sep = rest.find(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit()).unwrap_or(rest.len());
            let s = &rest[..sep];
            if !(matches!(s, "." | "_" | "__") || s.chars().all(|ch| ch == '-')) {
                return false;
            }
            rest = &rest[sep..];
        }
    }

    #[test]
    fn cache_repositories_are_valid_and_distinct() {
        assert_eq!(cache_repository("ghcr.io/acme/web", "cache-main"), "ghcr.io/acme/web/cache/cache-main");
        assert_eq!(cache_repository("r/x", "cache-feature-login"), "r/x/cache/cache-feature-login");
        let odd = cache_repository("r/x", "_Cache..X__y---z.");
        let comp = odd.rsplit('/').next().unwrap();
        assert!(comp.starts_with("cache-x__y---z-"), "{odd}");
        assert_ne!(cache_repository("r/x", "Cache-X"), cache_repository("r/x", "cache-x"));
        for t in ["a", "A", "_", "a.b", "a_b", "a__b", "a___b", "x-.-y"] {
            let c = cache_repository("r/x", t);
            let comp = c.rsplit('/').next().unwrap();
            assert!(valid_component(comp), "{c}");
        }
    }

    #[test]
    fn build_argv_keeps_credentials_in_files() {
        let b = Buildah::new(
            Storage { root: Some("/r".into()), runroot: Some("/rr".into()), driver: Some("vfs".into()) },
            RegistryAccess {
                authfile: Some("/tmp/p/auth.json".into()),
                cert_dir: Some("/tmp/p/certs".into()),
                registries_conf: None,
            },
        );
        let req = BuildRequest {
            context_dir: "/src".into(),
            dockerfile: "/src/Dockerfile".into(),
            build_args: [("B".to_string(), "2".to_string()), ("A".to_string(), "1".to_string())].into(),
            labels: [("org.opencontainers.image.source".to_string(), "https://github.com/acme/web".to_string())].into(),
            platform: "linux/amd64".into(),
            tag: "localhost/prpod-build:abc".into(),
            cache_from: Some("reg/web/cache/cache-main".into()),
            cache_to: Some("reg/web/cache/cache-x".into()),
            iidfile: "/tmp/p/iid".into(),
            isolation: Isolation::Oci,
        };
        let argv: Vec<String> = b.build_argv(&req).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            argv.join(" "),
            "--root /r --runroot /rr --storage-driver vfs build --layers --isolation oci --network none --authfile /tmp/p/auth.json \
             --cert-dir /tmp/p/certs --platform linux/amd64 --file /src/Dockerfile --build-arg A=1 --build-arg B=2 \
             --label org.opencontainers.image.source=https://github.com/acme/web --cache-from reg/web/cache/cache-main --cache-to reg/web/cache/cache-x --iidfile /tmp/p/iid \
             --tag localhost/prpod-build:abc /src"
        );
    }
}
