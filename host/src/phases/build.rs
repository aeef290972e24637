//! The build phase: the checkout built into an image by one backend ([`BuiltImage`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;

use crate::clients::buildah::{self, Buildah};
use crate::clients::buildx::{self, Buildx};
use crate::clients::registry::{ImageName, ImageReference};
use crate::config::{Config, ConfigError, Env, Section};
use crate::model::{BuiltImage, Checkout, PrContext, TagSet};
use crate::native_build::{self, NativeBuildError, NativeBuildRequest};
use crate::phases::registry::RegistryConfig;
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
        self.platform.clone().unwrap_or_else(crate::native_build::host_platform)
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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
    /// How `RUN` steps are isolated: `oci` (default: runc, own PID/mount namespaces and `/proc`,
    /// no network) or `chroot` (the runner's network, PIDs and `/proc`: a `RUN` step can read the
    /// environment of every process of the runner, credentials included; choose it only for
    /// trusted code) (`PRPOD_BUILDAH_ISOLATION`).
    pub isolation: crate::clients::buildah::Isolation,
    /// When to write the registry layer cache (`--cache-to`): `auto` (default) writes it only
    /// when this machine's buildah storage has not built the repository before (a fresh CI
    /// runner: the next fresh one reads it), since writing pushes every step's layer to the
    /// registry and about doubles a warm build; `always` writes it on every build
    /// (`PRPOD_BUILDAH_CACHE_TO`). The cache is always read.
    pub cache_to: CacheTo,
}

/// When buildah writes the registry layer cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheTo {
    /// Only from a machine whose storage has not built this repository before.
    #[default]
    Auto,
    /// On every build.
    Always,
}

impl std::str::FromStr for CacheTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CacheTo::Auto),
            "always" => Ok(CacheTo::Always),
            _ => Err("expected `auto` or `always`".into()),
        }
    }
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
        env.apply("PRPOD_BUILDAH_ISOLATION", "build.buildah.isolation", &mut b.isolation)?;
        env.apply("PRPOD_BUILDAH_CACHE_TO", "build.buildah.cache_to", &mut b.cache_to)?;
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
pub fn image_name(image: &ImageConfig, phase: &PhaseHandle) -> anyhow::Result<ImageName> {
    let Some(repo) = image.repository.as_deref() else {
        anyhow::bail!(
            "no image repository: set `[image] repository` in prpod.toml, PRPOD_IMAGE, or pass --image \
             (e.g. ghcr.io/acme/web)"
        );
    };
    let parsed = ImageName::parse(repo).context("`image.repository` is not usable")?;
    if let Some(from) = parsed.changed_from {
        phase.note(format!("image repository {from} normalised to {} (registries refuse uppercase)", parsed.value));
    }
    Ok(parsed.value)
}

pub use crate::phases::registry::Registry;

/// The labels prpod puts on every image it builds: `org.opencontainers.image.source`, the
/// repository's web URL (its clone URL without `.git`), by which GHCR links the package to the
/// repository (and its permissions). Docker's `--label` rule: over the Dockerfile's own LABEL.
pub fn image_labels(ctx: &PrContext) -> BTreeMap<String, String> {
    let url = ctx.repository_url.trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    BTreeMap::from([("org.opencontainers.image.source".to_string(), url.to_string())])
}

/// The build arguments of a run: `[image] build_args` (and `--build-arg`), plus `PRPOD_GIT_SHA`
/// (the full commit SHA) unless the user set it. Unused ones are ignored, as by docker.
pub fn build_args(image: &ImageConfig, ctx: &PrContext) -> BTreeMap<String, String> {
    let mut args = image.build_args.clone();
    args.entry("PRPOD_GIT_SHA".into()).or_insert_with(|| ctx.sha.clone());
    args
}

/// The chosen backend and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The backend (never `auto`).
    pub backend: Backend,
    /// Why, for people.
    pub why: String,
}

/// Resolves `auto`: `native` when it can build the Dockerfile (no RUN, one stage); otherwise
/// buildx when `docker buildx version` works, then buildah; otherwise an error naming what to
/// install. An explicit backend is taken as is.
pub async fn choose_backend(configured: Backend, dockerfile: &Path, buildx: &Buildx) -> anyhow::Result<Choice> {
    if configured != Backend::Auto {
        return Ok(Choice { backend: configured, why: format!("--backend / build.backend = {}", configured.name()) });
    }
    let blocker = match native_build::check_dockerfile(dockerfile) {
        Ok(_) => {
            return Ok(Choice {
                backend: Backend::Native,
                why: "the Dockerfile needs no RUN: built in-process".into(),
            });
        }
        Err(e @ NativeBuildError::Dockerfile { .. }) => e.to_string(),
        Err(e) => return Err(e.into()),
    };
    // `file:line: RUN is not supported ...`: keep the location for the note.
    let at = blocker.split(": ").next().unwrap_or("").to_string();
    if buildx.available().await {
        return Ok(Choice {
            backend: Backend::Buildx,
            why: format!("{at} needs a builder; docker buildx is available"),
        });
    }
    if Buildah::available().await {
        return Ok(Choice {
            backend: Backend::Buildah,
            why: format!("{at} needs a builder; docker buildx is not available, buildah is"),
        });
    }
    anyhow::bail!(
        "{blocker}; and neither docker buildx nor buildah is installed: install buildah (Debian/Ubuntu: \
         apt-get install buildah runc) or docker with the buildx plugin"
    )
}

/// Largest Dockerfile (or `.dockerignore`) prpod lets a build read.
pub const MAX_DOCKERFILE_BYTES: u64 = 1 << 20;

/// The pull request's build inputs, checked before any builder sees them: the context root, the
/// Dockerfile and `.dockerignore` are reached without following a symlink (a Dockerfile linked to
/// a file of the runner would be read, and quoted in errors, by the builder), and the files are
/// regular and at most [`MAX_DOCKERFILE_BYTES`].
/// Returns whether the Dockerfile exists.
fn check_repository_inputs(root: &Path, image: &ImageConfig) -> anyhow::Result<bool> {
    use crate::input::{check_repository_dir, check_repository_file};
    check_repository_dir(root, &image.context, "the build context")?;
    let dockerfile = image.context.join(&image.dockerfile);
    let exists = check_repository_file(root, &dockerfile, MAX_DOCKERFILE_BYTES, "the Dockerfile")?;
    check_repository_file(root, &image.context.join(".dockerignore"), MAX_DOCKERFILE_BYTES, "the .dockerignore")?;
    Ok(exists)
}

/// Builds the checkout into an image for `image` with the backend `config` picks.
pub async fn build(
    checkout: &Checkout,
    ctx: &PrContext,
    image: &ImageName,
    tags: &TagSet,
    config: &Config,
    registry: &Registry,
    phase: &PhaseHandle,
) -> anyhow::Result<BuiltImage> {
    let context_dir = checkout.path.join(&config.image.context);
    let dockerfile = context_dir.join(&config.image.dockerfile);
    if !check_repository_inputs(&checkout.path, &config.image)? {
        anyhow::bail!(
            "no Dockerfile at {} in {} at {}: set `[image] dockerfile` (relative to `image.context` = `{}`) or \
             pass --dockerfile",
            shown_path(&config.image.context, &config.image.dockerfile).display(),
            ctx.repository,
            &ctx.sha[..12.min(ctx.sha.len())],
            config.image.context.display()
        );
    }
    if !context_dir.is_dir() {
        anyhow::bail!("the build context `{}` is not a directory of the repository", config.image.context.display());
    }
    let args = build_args(&config.image, ctx);
    let labels = image_labels(ctx);
    let platform = config.image.platform();
    let work =
        Arc::new(tempfile::Builder::new().prefix("prpod-build-").tempdir().context("failed to create a temp dir")?);
    let probe = Buildx::default();
    let choice = choose_backend(config.build.backend, &dockerfile, &probe).await?;
    phase.note(format!("backend {}: {}", choice.backend.name(), choice.why));
    let mut built = match choice.backend {
        Backend::Native | Backend::Auto => {
            let out_dir = work.path().join("image");
            let req = NativeBuildRequest {
                context_dir: context_dir.clone(),
                // Relative, so errors name the Dockerfile as the user wrote it.
                dockerfile: config.image.dockerfile.clone(),
                build_args: args,
                labels,
                platform: Some(platform),
                out_dir: out_dir.clone(),
                source_date_epoch: None,
            };
            let out =
                native_build::build(&req, &registry.client, &|e| tracing::debug!(target: "prpod::build", ?e)).await?;
            BuiltImage {
                backend: "native".into(),
                repository: image.to_string(),
                layout: Some(out_dir),
                digest: out.image.digest().to_string(),
                steps: None,
                work_dir: None,
            }
        }
        backend @ (Backend::Buildah | Backend::Buildx) => {
            let job = BackendJob {
                context_dir: &context_dir,
                dockerfile: &dockerfile,
                args,
                labels,
                platform,
                image,
                tags,
                config,
                registry,
                work: work.path(),
                phase,
            };
            if backend == Backend::Buildah { build_buildah(job).await? } else { build_buildx(job).await? }
        }
    };
    built.work_dir = Some(work);
    Ok(built)
}

/// Private files for a builder process: a 0700 directory holding an authfile (0600) with the
/// credentials of `hosts`, a cert dir with the configured CA, and a `registries.conf` for
/// plain-HTTP registries.
async fn registry_files(
    dir: &Path,
    hosts: &BTreeSet<String>,
    registry: &Registry,
    rc: &RegistryConfig,
) -> anyhow::Result<buildah::RegistryAccess> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let private = dir.join("registry");
    std::fs::create_dir_all(&private).with_context(|| format!("failed to create {}", private.display()))?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let doc = registry.credentials.dockerconfigjson(&hosts).await?;
    let authfile = private.join("auth.json");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&authfile)
            .with_context(|| format!("failed to create {}", authfile.display()))?;
        f.write_all(doc.expose().as_bytes())?;
    }
    let mut access = buildah::RegistryAccess { authfile: Some(authfile), ..Default::default() };
    if let Some(ca) = &rc.ca_file {
        let certs = private.join("certs");
        std::fs::create_dir_all(&certs)?;
        std::fs::copy(ca, certs.join("ca.crt"))
            .with_context(|| format!("failed to read the registry CA {} (`registry.ca_file`)", ca.display()))?;
        access.cert_dir = Some(certs);
    }
    if !rc.plain_http.is_empty() {
        let conf = private.join("registries.conf");
        let mut text = String::from("# written by prpod for one build: plain-HTTP registries\n");
        for h in &rc.plain_http {
            text.push_str(&format!("[[registry]]\nlocation = \"{h}\"\ninsecure = true\n"));
        }
        std::fs::write(&conf, text)?;
        access.registries_conf = Some(conf);
    }
    Ok(access)
}

/// Registry hosts a build talks to: the pushed-to one and every `FROM` (after ARG expansion).
fn registry_hosts(dockerfile: &Path, args: &BTreeMap<String, String>, push: &ImageName) -> BTreeSet<String> {
    let mut hosts = BTreeSet::from([push.registry().to_string()]);
    let Ok(text) = crate::input::read_text_file(dockerfile, crate::input::MAX_CONFIG_BYTES, "Dockerfile") else {
        return hosts;
    };
    let Ok(parsed) = native_build::Dockerfile::parse("Dockerfile", &text) else { return hosts };
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for ins in &parsed.instructions {
        match ins.keyword.as_str() {
            "ARG" => {
                for decl in ins.args.split_whitespace() {
                    let (k, v) = decl.split_once('=').unwrap_or((decl, ""));
                    let v = args.get(k).cloned().unwrap_or_else(|| v.trim_matches('"').to_string());
                    vars.entry(k.to_string()).or_insert(v);
                }
            }
            "FROM" => {
                let Some(word) = ins.args.split_whitespace().find(|w| !w.starts_with("--")) else { continue };
                if word.eq_ignore_ascii_case("scratch") {
                    continue;
                }
                let mut image = word.to_string();
                for (k, v) in &vars {
                    image = image.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
                }
                if let Ok(r) = ImageReference::parse(&image) {
                    hosts.insert(r.value.name.registry().to_string());
                }
            }
            _ => {}
        }
    }
    hosts
}

/// What a builder backend (buildah, buildx) gets: the same for both.
struct BackendJob<'a> {
    context_dir: &'a Path,
    dockerfile: &'a Path,
    args: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    platform: String,
    image: &'a ImageName,
    tags: &'a TagSet,
    config: &'a Config,
    registry: &'a Registry,
    /// The build's private temp dir (credentials files, metadata, the image layout).
    work: &'a Path,
    phase: &'a PhaseHandle,
}

async fn build_buildah(job: BackendJob<'_>) -> anyhow::Result<BuiltImage> {
    let BackendJob { context_dir, dockerfile, args, labels, platform, image, tags, config, registry, work, phase } =
        job;
    let hosts = registry_hosts(dockerfile, &args, image);
    let access = registry_files(work, &hosts, registry, &config.registry).await?;
    let b = &config.build.buildah;
    let storage =
        buildah::Storage { root: b.root.clone(), runroot: b.runroot.clone(), driver: b.storage_driver.clone() };
    let tool = Buildah::new(storage, access);
    let local = format!("localhost/prpod/{}:build", image.repository());
    // buildah 1.28 reads one cache repository: the first of the policy's cache tags whose
    // repository exists (the PR's own, else the base branch's). Asked while buildah says whether
    // this machine built the repository before (its local layers then serve, and writing the
    // registry cache would push every step again for nobody: `[build.buildah] cache_to`).
    let find_cache = async {
        for tag in &tags.cache_from {
            let repo = buildah::cache_repository(&image.to_string(), tag);
            let name = ImageName::parse(&repo).with_context(|| format!("cache repository {repo}"))?.value;
            if registry.client.has_tags(&name).await? {
                return Ok::<_, anyhow::Error>(Some(repo));
            }
        }
        Ok(None)
    };
    let check_warm = async { b.cache_to == CacheTo::Auto && tool.has_image(&local).await };
    let (cache_from, warm) = tokio::join!(find_cache, check_warm);
    let cache_from = cache_from?;
    let cache_to = tags.cache_to.as_ref().filter(|_| !warm).map(|t| buildah::cache_repository(&image.to_string(), t));
    match &cache_from {
        Some(r) => phase.note(format!("layer cache from {r}")),
        None if !tags.cache_from.is_empty() => phase.note("no layer cache yet: a cold build"),
        None => {}
    }
    if warm && tags.cache_to.is_some() {
        phase.note(
            "this machine built the repository before: its local layers serve, the registry cache is not written",
        );
    }
    let req = buildah::BuildRequest {
        context_dir: context_dir.to_path_buf(),
        dockerfile: dockerfile.to_path_buf(),
        build_args: args,
        labels,
        platform,
        tag: local,
        cache_from,
        cache_to,
        iidfile: work.join("iid"),
        isolation: b.isolation,
    };
    let built = tool.build(&req, &|l| tracing::debug!(target: "prpod::build", "buildah: {l}")).await?;
    let layout = work.join("image");
    tool.push_to_layout(&built.image_id, &layout).await?;
    let digest = crate::clients::registry::OciImage::open(&layout)?.digest().to_string();
    Ok(BuiltImage {
        backend: "buildah".into(),
        repository: image.to_string(),
        layout: Some(layout),
        digest,
        steps: Some(built.steps),
        work_dir: None,
    })
}

async fn build_buildx(job: BackendJob<'_>) -> anyhow::Result<BuiltImage> {
    let BackendJob { context_dir, dockerfile, args, labels, platform, image, tags, config, registry, work, phase } =
        job;
    let x = &config.build.buildx;
    let hosts = registry_hosts(dockerfile, &args, image);
    let docker_config = docker_config_dir(work, &hosts, registry).await?;
    let tool = Buildx { docker_config };
    let builder = buildx::Builder {
        name: x.builder.clone(),
        driver: x.driver.clone(),
        namespace: x.namespace.clone(),
        replicas: x.replicas,
    };
    if tool.ensure_builder(&builder).await? {
        phase.note(format!("created buildx builder {} (driver {})", builder.name, builder.driver));
    }
    let req = buildx::BuildRequest {
        context_dir: context_dir.to_path_buf(),
        dockerfile: dockerfile.to_path_buf(),
        build_args: args,
        labels,
        platform,
        repository: image.to_string(),
        tags: std::iter::once(&tags.primary).chain(&tags.extra).cloned().collect(),
        cache_from: tags.cache_from.clone(),
        cache_to: tags.cache_to.clone(),
        provenance: x.provenance.clone(),
        bake_file: x.bake_file.as_ref().map(|f| context_dir.join(f)),
        bake_target: x.bake_target.clone(),
        metadata_file: work.join("metadata.json"),
    };
    let digest = tool.build_push(&builder, &req, &|l| tracing::debug!(target: "prpod::build", "buildx: {l}")).await?;
    Ok(BuiltImage {
        backend: "buildx".into(),
        repository: image.to_string(),
        layout: None,
        digest,
        steps: None,
        work_dir: None,
    })
}

/// A private `DOCKER_CONFIG` for buildx: the user's docker config directory (builders,
/// contexts, plugins) linked in, and a `config.json` (0600) with the credentials prpod resolved
/// merged over the user's. `None` when there are no credentials to add.
async fn docker_config_dir(
    work: &Path,
    hosts: &BTreeSet<String>,
    registry: &Registry,
) -> anyhow::Result<Option<PathBuf>> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let hosts_v: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let doc = registry.credentials.dockerconfigjson(&hosts_v).await?;
    let ours: serde_json::Value = serde_json::from_str(doc.expose()).unwrap_or_default();
    let auths = ours.get("auths").and_then(|a| a.as_object()).cloned().unwrap_or_default();
    if auths.is_empty() {
        return Ok(None);
    }
    let user_dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().join(".docker")));
    let dir = work.join("docker-config");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let mut config = serde_json::Map::new();
    if let Some(user) = &user_dir {
        if let Ok(entries) = std::fs::read_dir(user) {
            for e in entries.flatten() {
                if e.file_name() != "config.json" {
                    let _ = std::os::unix::fs::symlink(e.path(), dir.join(e.file_name()));
                }
            }
        }
        if let Ok(text) =
            crate::input::read_text_file(&user.join("config.json"), crate::input::MAX_CONFIG_BYTES, "docker config")
        {
            config = serde_json::from_str(&text).unwrap_or_default();
        }
    }
    let merged = config.entry("auths").or_insert_with(|| serde_json::json!({}));
    if let Some(m) = merged.as_object_mut() {
        for (h, v) in auths {
            m.insert(h, v);
        }
    }
    // Hosts prpod has credentials for must not be sent to a helper instead.
    if let Some(helpers) = config.get_mut("credHelpers").and_then(|h| h.as_object_mut()) {
        for h in hosts {
            helpers.remove(h);
        }
    }
    let path = dir.join("config.json");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    use std::io::Write;
    f.write_all(serde_json::Value::Object(config).to_string().as_bytes())?;
    Ok(Some(dir))
}

/// `context/dockerfile` as a person writes it (`Dockerfile`, not `./Dockerfile`).
fn shown_path(context: &Path, dockerfile: &Path) -> PathBuf {
    context.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect::<PathBuf>().join(dockerfile)
}

/// One line for people.
pub fn summary(b: &BuiltImage) -> String {
    match b.steps {
        Some(s) => {
            format!("{} built {} ({} steps run, {} from cache)", b.backend, short(&b.digest), s.executed, s.cached)
        }
        None => format!("{} built {}", b.backend, short(&b.digest)),
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..12.min(hex.len())]
}
