//! docker buildx: the builder is created once and reused (`docker buildx inspect NAME`, else
//! `docker buildx create --name NAME --driver DRIVER`, with `--driver-opt namespace=...` and
//! `replicas=...` for the kubernetes driver), then `docker buildx build` (or `docker buildx bake`
//! with a bake file) builds and pushes in one go: a `--cache-from type=registry,ref=REPO:TAG` per
//! cache-from tag, `--cache-to type=registry,ref=REPO:TAG,mode=max`, a `--tag` per tag,
//! `--push`, `--provenance`, and `--metadata-file` to read the pushed digest back.
//!
//! Registry credentials reach docker through `DOCKER_CONFIG`: a private directory whose
//! `config.json` (0600) the caller wrote; never `docker login` with a password on argv.
//!
//! The argv builders are pure functions so their output can be compared with golden files on
//! machines without docker (`tests/golden/buildx/`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{Classify, FailureKind};

/// The builder prpod uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builder {
    /// Its name.
    pub name: String,
    /// `docker-container`, `kubernetes`, `docker`, `remote`.
    pub driver: String,
    /// kubernetes driver: namespace of the builder pods.
    pub namespace: Option<String>,
    /// kubernetes driver: builder pods.
    pub replicas: u32,
}

/// One build (or bake) and push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    /// Build context.
    pub context_dir: PathBuf,
    /// Dockerfile.
    pub dockerfile: PathBuf,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// `--label`s.
    pub labels: BTreeMap<String, String>,
    /// `--platform`.
    pub platform: String,
    /// Repository, registry host included.
    pub repository: String,
    /// Tags to push (primary first).
    pub tags: Vec<String>,
    /// Cache tags to import from, in order.
    pub cache_from: Vec<String>,
    /// Cache tag to export to.
    pub cache_to: Option<String>,
    /// `--provenance` value.
    pub provenance: String,
    /// Bake file: bake instead of build.
    pub bake_file: Option<PathBuf>,
    /// Bake target (default: the file's default group).
    pub bake_target: Option<String>,
    /// Where docker writes the metadata.
    pub metadata_file: PathBuf,
}

/// A buildx command failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildxError {
    /// docker or its buildx plugin is missing.
    #[error("failed to run docker buildx ({0}); install docker with the buildx plugin, or use --backend buildah")]
    Missing(String),
    /// The build failed.
    #[error("docker buildx {verb} failed (exit {code}): {tail}")]
    Build {
        /// `build` or `bake`.
        verb: &'static str,
        /// Exit code.
        code: i32,
        /// The last lines it printed.
        tail: String,
    },
    /// Creating or inspecting the builder failed.
    #[error("failed to create the buildx builder {name}: {tail}")]
    Builder {
        /// The builder.
        name: String,
        /// What docker said.
        tail: String,
    },
    /// The metadata file has no digest.
    #[error("failed to read the pushed image's digest from {}: {why}", path.display())]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl Classify for BuildxError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            BuildxError::Missing(_) | BuildxError::Build { .. } => None,
            BuildxError::Builder { .. } | BuildxError::Metadata { .. } => Some(FailureKind::External),
        }
    }
}

fn s(v: impl Into<OsString>) -> OsString {
    v.into()
}

/// `docker buildx inspect NAME`: succeeds when the builder exists.
pub fn inspect_argv(b: &Builder) -> Vec<OsString> {
    vec![s("buildx"), s("inspect"), s(&b.name)]
}

/// `docker buildx create ...` for a builder that does not exist yet.
pub fn create_argv(b: &Builder) -> Vec<OsString> {
    let mut a = vec![s("buildx"), s("create"), s("--name"), s(&b.name), s("--driver"), s(&b.driver)];
    if b.driver == "kubernetes" {
        if let Some(ns) = &b.namespace {
            a.extend([s("--driver-opt"), s(format!("namespace={ns}"))]);
        }
        a.extend([s("--driver-opt"), s(format!("replicas={}", b.replicas))]);
    }
    a.push(s("--bootstrap"));
    a
}

/// `docker buildx build ...` or `docker buildx bake ...`, pushing.
pub fn build_argv(b: &Builder, r: &BuildRequest) -> Vec<OsString> {
    let cache_from: Vec<String> =
        r.cache_from.iter().map(|t| format!("type=registry,ref={}:{t}", r.repository)).collect();
    let cache_to = r.cache_to.as_ref().map(|t| format!("type=registry,ref={}:{t},mode=max", r.repository));
    let tags: Vec<String> = r.tags.iter().map(|t| format!("{}:{t}", r.repository)).collect();
    let mut a = Vec::new();
    match &r.bake_file {
        None => {
            a.extend([s("buildx"), s("build"), s("--builder"), s(&b.name)]);
            a.extend([s("--file"), s(&r.dockerfile), s("--platform"), s(&r.platform)]);
            for (k, v) in &r.build_args {
                a.extend([s("--build-arg"), s(format!("{k}={v}"))]);
            }
            for (k, v) in &r.labels {
                a.extend([s("--label"), s(format!("{k}={v}"))]);
            }
            for c in &cache_from {
                a.extend([s("--cache-from"), s(c)]);
            }
            if let Some(c) = &cache_to {
                a.extend([s("--cache-to"), s(c)]);
            }
            for t in &tags {
                a.extend([s("--tag"), s(t)]);
            }
            a.extend([s("--push"), s(format!("--provenance={}", r.provenance))]);
            a.extend([s("--metadata-file"), s(&r.metadata_file), s(&r.context_dir)]);
        }
        Some(file) => {
            // `--set` applies to every target of the file (`*`): the tags, caches and platform are
            // prpod's, whatever the file says.
            a.extend([s("buildx"), s("bake"), s("--builder"), s(&b.name), s("--file"), s(file)]);
            a.extend([s("--set"), s(format!("*.platform={}", r.platform))]);
            for (k, v) in &r.build_args {
                a.extend([s("--set"), s(format!("*.args.{k}={v}"))]);
            }
            for (k, v) in &r.labels {
                a.extend([s("--set"), s(format!("*.labels.{k}={v}"))]);
            }
            for c in &cache_from {
                a.extend([s("--set"), s(format!("*.cache-from={c}"))]);
            }
            if let Some(c) = &cache_to {
                a.extend([s("--set"), s(format!("*.cache-to={c}"))]);
            }
            for t in &tags {
                a.extend([s("--set"), s(format!("*.tags={t}"))]);
            }
            a.extend([s("--push"), s(format!("--provenance={}", r.provenance))]);
            a.extend([s("--metadata-file"), s(&r.metadata_file)]);
            if let Some(t) = &r.bake_target {
                a.push(s(t));
            }
        }
    }
    a
}

/// The digest of the pushed image from `--metadata-file`: `containerimage.digest` at the top
/// (build), or in the target's object (bake: `target`, or the only target).
pub fn parse_metadata(text: &str, bake_target: Option<&str>) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let digest_of = |o: &serde_json::Value| o.get("containerimage.digest").and_then(|d| d.as_str()).map(str::to_string);
    if let Some(d) = digest_of(&v) {
        return check_digest(d);
    }
    let obj = v.as_object().ok_or("not a JSON object")?;
    let targets: Vec<(&String, &serde_json::Value)> = obj.iter().filter(|(_, t)| digest_of(t).is_some()).collect();
    let chosen = match bake_target {
        Some(name) => obj.get(name).ok_or_else(|| format!("no entry for bake target `{name}`"))?,
        None => match targets.as_slice() {
            [(_, t)] => t,
            [] => return Err("no `containerimage.digest` in it".into()),
            many => {
                let names: Vec<&str> = many.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "several bake targets pushed images ({}); set `build.buildx.bake_target`",
                    names.join(", ")
                ));
            }
        },
    };
    check_digest(digest_of(chosen).ok_or("the target has no `containerimage.digest`")?)
}

fn check_digest(d: String) -> Result<String, String> {
    let hex = d.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(d)
    } else {
        Err(format!("`{d}` is not a sha256 digest"))
    }
}

/// docker, for buildx.
#[derive(Debug, Clone, Default)]
pub struct Buildx {
    /// `DOCKER_CONFIG` for every command (credentials prpod wrote), if any.
    pub docker_config: Option<PathBuf>,
}

impl Buildx {
    fn command(&self, args: &[OsString]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("docker");
        c.args(args).stdin(Stdio::null()).kill_on_drop(true);
        // Only the allow-list of prpod's environment: docker and its builders get no token;
        // registry credentials travel in the private DOCKER_CONFIG below.
        c.env_clear().envs(super::child_env::allowed(super::child_env::Tool::Docker));
        if let Some(d) = &self.docker_config {
            c.env("DOCKER_CONFIG", d);
        }
        c
    }

    /// Whether `docker buildx version` works (within 10 s).
    pub async fn available(&self) -> bool {
        self.version().await.is_ok()
    }

    /// What `docker buildx version` prints (within 10 s), or why it did not run.
    pub async fn version(&self) -> Result<String, String> {
        super::child_env::first_line(self.command(&[s("buildx"), s("version")])).await
    }

    async fn output(&self, args: &[OsString]) -> Result<std::process::Output, BuildxError> {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| BuildxError::Missing(e.to_string()))
    }

    /// Reuses the builder when it exists, else creates it. Returns whether it was created.
    pub async fn ensure_builder(&self, b: &Builder) -> Result<bool, BuildxError> {
        if self.output(&inspect_argv(b)).await?.status.success() {
            return Ok(false);
        }
        let out = self.output(&create_argv(b)).await?;
        if !out.status.success() {
            return Err(BuildxError::Builder { name: b.name.clone(), tail: tail(&out.stderr) });
        }
        Ok(true)
    }

    /// Builds and pushes; returns the pushed digest. `on_line` sees docker's output lines.
    pub async fn build_push(
        &self,
        b: &Builder,
        r: &BuildRequest,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<String, BuildxError> {
        let out = self.output(&build_argv(b, r)).await?;
        for l in String::from_utf8_lossy(&out.stderr).lines() {
            on_line(l);
        }
        let verb = if r.bake_file.is_some() { "bake" } else { "build" };
        if !out.status.success() {
            return Err(BuildxError::Build { verb, code: out.status.code().unwrap_or(-1), tail: tail(&out.stderr) });
        }
        read_metadata(&r.metadata_file, r.bake_target.as_deref())
    }
}

/// Reads and parses a metadata file.
pub fn read_metadata(path: &Path, bake_target: Option<&str>) -> Result<String, BuildxError> {
    let err = |why: String| BuildxError::Metadata { path: path.to_path_buf(), why };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse_metadata(&text, bake_target).map_err(err)
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" / ")
}

#[cfg(test)]
mod tests {
    //! Golden files: the exact command lines prpod runs (docker buildx cannot run here). Set
    //! `PRPOD_BLESS=1` to rewrite them after an intended change.
    use super::*;

    fn golden(name: &str, argv: &[OsString]) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/buildx").join(name);
        let text: String = argv.iter().map(|a| format!("{}\n", a.to_string_lossy())).collect();
        if std::env::var_os("PRPOD_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (PRPOD_BLESS=1 cargo test writes it)", path.display()));
        assert_eq!(text, want, "argv differs from {} (one argument per line)", path.display());
    }

    fn builder(driver: &str) -> Builder {
        Builder {
            name: "prpod".into(),
            driver: driver.into(),
            namespace: (driver == "kubernetes").then(|| "buildkit".into()),
            replicas: 2,
        }
    }

    fn request(bake: bool) -> BuildRequest {
        BuildRequest {
            context_dir: "/ci/checkout".into(),
            dockerfile: "/ci/checkout/Dockerfile".into(),
            build_args: [("PRPOD_GIT_SHA".to_string(), "0123456789abcdef0123456789abcdef01234567".to_string())].into(),
            labels: [("org.opencontainers.image.source".to_string(), "https://github.com/acme/web".to_string())].into(),
            platform: "linux/amd64".into(),
            repository: "ghcr.io/acme/web".into(),
            tags: vec!["pr-7".into(), "pr-feature-login".into(), "sha-0123456789ab".into()],
            cache_from: vec!["cache-feature-login".into(), "cache-main".into()],
            cache_to: Some("cache-feature-login".into()),
            provenance: "false".into(),
            bake_file: bake.then(|| "/ci/checkout/docker-bake.hcl".into()),
            bake_target: bake.then(|| "web".into()),
            metadata_file: "/tmp/prpod-x/metadata.json".into(),
        }
    }

    #[test]
    fn builder_argv() {
        golden("inspect.argv", &inspect_argv(&builder("docker-container")));
        golden("create-docker-container.argv", &create_argv(&builder("docker-container")));
        golden("create-kubernetes.argv", &create_argv(&builder("kubernetes")));
    }

    #[test]
    fn build_and_bake_argv() {
        golden("build.argv", &build_argv(&builder("docker-container"), &request(false)));
        golden("bake.argv", &build_argv(&builder("kubernetes"), &request(true)));
    }

    #[test]
    fn metadata_files() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/buildx");
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        let want = "sha256:3f5b8e2c1a9d7b6e4f0c2a8d9e1b7c6a5f4e3d2c1b0a9f8e7d6c5b4a39281706";
        assert_eq!(parse_metadata(&read("metadata-build.json"), None).unwrap(), want);
        assert_eq!(parse_metadata(&read("metadata-bake.json"), Some("web")).unwrap(), want);
        let e = parse_metadata(&read("metadata-bake-two.json"), None).unwrap_err();
        assert!(e.contains("bake_target"), "{e}");
        assert!(parse_metadata("{}", None).unwrap_err().contains("containerimage.digest"));
        assert!(parse_metadata(r#"{"containerimage.digest":"sha256:zz"}"#, None).is_err());
    }
}
