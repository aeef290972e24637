//! The build phase: the checkout built into an image by one backend ([`BuiltImage`]).
//!
//! The backends implement [`Backend`] (see [`backend`] for what a new one provides) and are
//! listed once, in [`BACKENDS`]: `native` (in-process, [`native`]), [`buildx`], [`buildah`].

pub mod backend;
pub mod buildah;
pub mod buildx;
pub mod native;

pub use backend::{Backend, BackendChoice, BackendJob};
pub use buildah::{BuildahConfig, CacheTo};
pub use buildx::BuildxConfig;

/// Every backend, in `auto`'s order of preference: in-process when the Dockerfile allows it,
/// then a builder. Adding a backend is its module and one line here.
pub static BACKENDS: &[&dyn Backend] = &[&native::Native, &buildx::BuildxBackend, &buildah::BuildahBackend];

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;

use crate::clients::registry::{ImageName, ImageReference};
use crate::config::{Config, ConfigError, Env, Section};
use crate::model::{BuiltImage, Checkout, PrContext, TagSet};
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
        self.platform.clone().unwrap_or_else(native::host_platform)
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

/// `[build]`: the backend and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildConfig {
    /// `auto` (default) or a name of [`BACKENDS`] (`PRPOD_BUILD_BACKEND`, `--backend`).
    pub backend: BackendChoice,
    /// `[build.buildah]`.
    pub buildah: BuildahConfig,
    /// `[build.buildx]`.
    pub buildx: BuildxConfig,
}

impl Section for BuildConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.apply("PRPOD_BUILD_BACKEND", "build.backend", &mut self.backend)?;
        for b in BACKENDS {
            if let Some(section) = b.config_mut(self) {
                section.apply_env(env)?;
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        for b in BACKENDS {
            if let Some(section) = b.config(self) {
                section.check()?;
            }
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
#[derive(Clone)]
pub struct Choice {
    /// The backend.
    pub backend: &'static dyn Backend,
    /// Why, for people.
    pub why: String,
}

impl std::fmt::Debug for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Choice").field("backend", &self.backend.name()).field("why", &self.why).finish()
    }
}

/// Resolves `auto`: the first backend of [`BACKENDS`] that can build `dockerfile` here (so
/// `native` when the Dockerfile needs no RUN, else buildx when `docker buildx version` works,
/// then buildah); otherwise an error naming what to install. An explicit backend is taken as
/// is.
pub async fn choose_backend(configured: BackendChoice, dockerfile: &Path) -> anyhow::Result<Choice> {
    if let BackendChoice::Named(name) = configured {
        let backend = backend::by_name(name).expect("a BackendChoice names a listed backend");
        return Ok(Choice { backend, why: format!("--backend / build.backend = {name}") });
    }
    // The first refusal says what needs a builder (`Dockerfile:3: RUN is not supported ...`);
    // the later ones, which builders are missing.
    let mut blocker: Option<String> = None;
    let mut missing: Vec<&'static dyn Backend> = Vec::new();
    for &b in BACKENDS {
        let Some(why_not) = b.unavailable(dockerfile).await? else {
            let why = match &blocker {
                None => b.auto_note(),
                Some(blocker) => {
                    let at = blocker.split(": ").next().unwrap_or("");
                    let others: String =
                        missing.iter().map(|m| format!("{} is not available, ", m.describe())).collect();
                    let is = if missing.is_empty() { "is available" } else { "is" };
                    format!("{at} needs a builder; {others}{} {is}", b.describe())
                }
            };
            return Ok(Choice { backend: b, why });
        };
        match &blocker {
            None => blocker = Some(why_not),
            Some(_) => missing.push(b),
        }
    }
    let names: Vec<&str> = missing.iter().map(|b| b.describe()).collect();
    // The last resort first: the one that is easiest to install on a CI runner.
    let hints: Vec<&str> = missing.iter().rev().map(|b| b.install_hint()).collect();
    anyhow::bail!(
        "{}; and neither {} is installed: install {}",
        blocker.unwrap_or_default(),
        names.join(" nor "),
        hints.join(" or ")
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
    let work =
        Arc::new(tempfile::Builder::new().prefix("prpod-build-").tempdir().context("failed to create a temp dir")?);
    let choice = choose_backend(config.build.backend, &dockerfile).await?;
    phase.note(format!("backend {}: {}", choice.backend.name(), choice.why));
    let job = BackendJob {
        context_dir: &context_dir,
        dockerfile: &dockerfile,
        dockerfile_rel: &config.image.dockerfile,
        args: build_args(&config.image, ctx),
        labels: image_labels(ctx),
        platform: config.image.platform(),
        image,
        tags,
        config,
        registry,
        work: work.path(),
        phase,
    };
    let mut built = choice.backend.build(&job).await?;
    built.work_dir = Some(work);
    Ok(built)
}

/// Registry hosts a build talks to: the pushed-to one and every `FROM` (after ARG expansion).
pub(crate) fn registry_hosts(dockerfile: &Path, args: &BTreeMap<String, String>, push: &ImageName) -> BTreeSet<String> {
    let mut hosts = BTreeSet::from([push.registry().to_string()]);
    let Ok(text) = crate::input::read_text_file(dockerfile, crate::input::MAX_CONFIG_BYTES, "Dockerfile") else {
        return hosts;
    };
    let Ok(parsed) = native::Dockerfile::parse("Dockerfile", &text) else { return hosts };
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
