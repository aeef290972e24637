//! The build phase: the checkout built into an image by one backend ([`BuiltImage`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigError, Env, Section};
use crate::model::{BuiltImage, Checkout, TagSet};
use crate::phases::Inputs;
use crate::report::PhaseHandle;

/// `[image]`: what is built and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Repository to push to, registry host included, e.g. `ghcr.io/acme/web` (`PRPOD_IMAGE`,
    /// `--image`). Uppercase is lowercased (registries refuse it), and said so.
    pub repository: Option<String>,
    /// Build context, relative to the repository root (`PRPOD_IMAGE_CONTEXT`, `--context-dir`).
    pub context: PathBuf,
    /// Dockerfile, relative to the context (`PRPOD_IMAGE_DOCKERFILE`, `--dockerfile`).
    pub dockerfile: PathBuf,
    /// `ARG` values (`--build-arg NAME=VALUE` adds and overrides). Not for secrets: build args
    /// are recorded in the image's history.
    pub build_args: BTreeMap<String, String>,
    /// Target platform, `os/arch[/variant]` (`PRPOD_IMAGE_PLATFORM`, `--platform`; default: this
    /// machine's, e.g. `linux/amd64`).
    pub platform: Option<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            repository: None,
            context: PathBuf::from("."),
            dockerfile: PathBuf::from("Dockerfile"),
            build_args: BTreeMap::new(),
            platform: None,
        }
    }
}

impl ImageConfig {
    /// The target platform: configured, or this machine's.
    pub fn platform(&self) -> String {
        self.platform.clone().unwrap_or_else(host_platform)
    }
}

/// `linux/amd64`, `linux/arm64`, ...: the platform images built on this machine run on.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "arm" => "arm/v7",
        other => other,
    };
    format!("linux/{arch}")
}

impl Section for ImageConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.apply_opt("PRPOD_IMAGE", "image.repository", &mut self.repository)?;
        env.apply("PRPOD_IMAGE_CONTEXT", "image.context", &mut self.context)?;
        env.apply("PRPOD_IMAGE_DOCKERFILE", "image.dockerfile", &mut self.dockerfile)?;
        env.apply_opt("PRPOD_IMAGE_PLATFORM", "image.platform", &mut self.platform)?;
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Value { key: key.into(), why };
        for (key, p) in [("image.context", &self.context), ("image.dockerfile", &self.dockerfile)] {
            if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(bad(key, format!("`{}` must be a relative path inside the repository", p.display())));
            }
        }
        for name in self.build_args.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad("image.build_args", format!("`{name}` is not an ARG name ([A-Za-z0-9_]+)")));
            }
        }
        if let Some(p) = &self.platform {
            let parts: Vec<&str> = p.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
                return Err(bad("image.platform", format!("`{p}` is not os/arch[/variant], e.g. linux/amd64")));
            }
        }
        Ok(())
    }
}

/// Which backend builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `native` without RUN lines, else buildx when `docker buildx version` works, else buildah.
    #[default]
    Auto,
    /// prpod's own daemonless builder (no RUN).
    Native,
    /// `buildah build --layers`.
    Buildah,
    /// `docker buildx build` / `bake`.
    Buildx,
}

impl Backend {
    /// The name in config, flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Native => "native",
            Backend::Buildah => "buildah",
            Backend::Buildx => "buildx",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "native" => Ok(Backend::Native),
            "buildah" => Ok(Backend::Buildah),
            "buildx" => Ok(Backend::Buildx),
            _ => Err("expected one of auto, native, buildah, buildx".into()),
        }
    }
}

/// `[build]`: the backend and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildConfig {
    /// `auto` (default), `native`, `buildah` or `buildx` (`PRPOD_BUILD_BACKEND`, `--backend`).
    pub backend: Backend,
    /// `[build.buildah]`.
    pub buildah: BuildahConfig,
    /// `[build.buildx]`.
    pub buildx: BuildxConfig,
}

/// `[build.buildah]`: buildah's storage. Unset keys use buildah's own defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildahConfig {
    /// `--root` (`PRPOD_BUILDAH_ROOT`).
    pub root: Option<PathBuf>,
    /// `--runroot` (`PRPOD_BUILDAH_RUNROOT`).
    pub runroot: Option<PathBuf>,
    /// `--storage-driver`, e.g. `vfs` or `overlay` (`PRPOD_BUILDAH_STORAGE_DRIVER`).
    pub storage_driver: Option<String>,
}

/// `[build.buildx]`: the builder prpod creates or reuses, and how it builds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildxConfig {
    /// Builder name (`PRPOD_BUILDX_BUILDER`; default `prpod`).
    pub builder: String,
    /// Builder driver: `docker-container` (default) or `kubernetes` (`PRPOD_BUILDX_DRIVER`).
    pub driver: String,
    /// Namespace of the kubernetes driver's builder pods (`PRPOD_BUILDX_NAMESPACE`).
    pub namespace: Option<String>,
    /// Builder pods of the kubernetes driver (`PRPOD_BUILDX_REPLICAS`; default 1).
    pub replicas: u32,
    /// A bake file: build with `docker buildx bake` instead of `build` (`PRPOD_BUILDX_BAKE_FILE`).
    pub bake_file: Option<PathBuf>,
    /// The bake target to build (default: the file's `default` group).
    pub bake_target: Option<String>,
    /// `--provenance` value: `false` (default: one image manifest, its digest is the image's),
    /// `mode=min` or `mode=max` (`PRPOD_BUILDX_PROVENANCE`).
    pub provenance: String,
}

impl Default for BuildxConfig {
    fn default() -> Self {
        BuildxConfig {
            builder: "prpod".into(),
            driver: "docker-container".into(),
            namespace: None,
            replicas: 1,
            bake_file: None,
            bake_target: None,
            provenance: "false".into(),
        }
    }
}

impl Section for BuildConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.apply("PRPOD_BUILD_BACKEND", "build.backend", &mut self.backend)?;
        let b = &mut self.buildah;
        env.apply_opt("PRPOD_BUILDAH_ROOT", "build.buildah.root", &mut b.root)?;
        env.apply_opt("PRPOD_BUILDAH_RUNROOT", "build.buildah.runroot", &mut b.runroot)?;
        env.apply_opt("PRPOD_BUILDAH_STORAGE_DRIVER", "build.buildah.storage_driver", &mut b.storage_driver)?;
        let x = &mut self.buildx;
        env.apply("PRPOD_BUILDX_BUILDER", "build.buildx.builder", &mut x.builder)?;
        env.apply("PRPOD_BUILDX_DRIVER", "build.buildx.driver", &mut x.driver)?;
        env.apply_opt("PRPOD_BUILDX_NAMESPACE", "build.buildx.namespace", &mut x.namespace)?;
        env.apply("PRPOD_BUILDX_REPLICAS", "build.buildx.replicas", &mut x.replicas)?;
        env.apply_opt("PRPOD_BUILDX_BAKE_FILE", "build.buildx.bake_file", &mut x.bake_file)?;
        env.apply("PRPOD_BUILDX_PROVENANCE", "build.buildx.provenance", &mut x.provenance)?;
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Value { key: key.into(), why };
        let x = &self.buildx;
        let name_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok(&x.builder) {
            return Err(bad(
                "build.buildx.builder",
                format!("`{}` is not a builder name ([A-Za-z0-9._-]+)", x.builder),
            ));
        }
        if !["docker-container", "kubernetes", "docker", "remote"].contains(&x.driver.as_str()) {
            return Err(bad(
                "build.buildx.driver",
                format!("`{}`: expected docker-container, kubernetes, docker or remote", x.driver),
            ));
        }
        if x.replicas == 0 || x.replicas > 100 {
            return Err(bad("build.buildx.replicas", format!("{} must be between 1 and 100", x.replicas)));
        }
        if x.namespace.is_some() && x.driver != "kubernetes" {
            return Err(bad("build.buildx.namespace", "is only used by the kubernetes driver".into()));
        }
        if !["false", "true", "mode=min", "mode=max"].contains(&x.provenance.as_str()) {
            return Err(bad(
                "build.buildx.provenance",
                format!("`{}`: expected false, true, mode=min or mode=max", x.provenance),
            ));
        }
        if let Some(d) = &self.buildah.storage_driver
            && !name_ok(d)
        {
            return Err(bad("build.buildah.storage_driver", format!("`{d}` is not a storage driver name")));
        }
        Ok(())
    }
}

/// The image repository to push to, normalised: registries refuse uppercase, so
/// `ghcr.io/Acme/Web` becomes `ghcr.io/acme/web` (said once, through `phase`).
pub fn image_repository(image: &ImageConfig, phase: &PhaseHandle) -> anyhow::Result<String> {
    let Some(repo) = image.repository.as_deref() else {
        anyhow::bail!(
            "no image repository: set `[image] repository` in prpod.toml, PRPOD_IMAGE, or pass --image \
             (e.g. ghcr.io/acme/web)"
        );
    };
    let normalised = repo.to_ascii_lowercase();
    if normalised != repo {
        phase.note(format!("image repository {repo} normalised to {normalised} (registries refuse uppercase)"));
    }
    Ok(normalised)
}

/// Builds the checkout.
pub async fn build(
    checkout: &Checkout,
    repository: &str,
    tags: &TagSet,
    inputs: &Inputs<'_>,
    phase: &PhaseHandle,
) -> anyhow::Result<BuiltImage> {
    let _ = (checkout, repository, tags, inputs, phase);
    anyhow::bail!("the build phase is not implemented yet")
}

/// One line for people.
pub fn summary(b: &BuiltImage) -> String {
    match b.steps {
        Some(s) => format!("{} built {} ({} steps run, {} cached)", b.backend, short(&b.digest), s.executed, s.cached),
        None => format!("{} built {}", b.backend, short(&b.digest)),
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..12.min(hex.len())]
}
