//! The build backends behind one trait: the build phase, `auto`, `--backend`, `[build] backend`
//! and `prpod doctor` know a backend only through [`Backend`] and the one list,
//! [`super::BACKENDS`].
//!
//! # What a new backend provides
//!
//! In DESIGN.md's terms a backend is the `build` step of the line: it turns the checkout
//! (`BackendJob`: context, Dockerfile, build args, labels, platform, the run's `TagSet` and the
//! registry bundle resolved once per run) into a [`BuiltImage`], and nothing else. A new one is
//! one module under `phases/build/` that implements [`Backend`], plus one line in
//! [`super::BACKENDS`] (whose order is `auto`'s order of preference), plus its `[build.<name>]`
//! field in [`super::BuildConfig`] when it has settings:
//! - [`Backend::name`]: its name in `[build] backend`, `PRPOD_BUILD_BACKEND`, `--backend`, the
//!   report and the built image (`BuiltImage::backend`);
//! - [`Backend::unavailable`]: whether it can build this Dockerfile on this machine, asked by
//!   `auto` in list order (a tool probe answers in at most 10 s, and never fails the run);
//! - [`Backend::doctor_checks`]: what `prpod doctor` says about it (a failure only when it is the
//!   configured backend: an unused backend that is missing is fine);
//! - [`Backend::config`] / [`Backend::config_mut`]: its `[build.<name>]` section, so its
//!   `PRPOD_*` variables are applied and its keys checked with the rest of the config;
//! - [`Backend::build`]: the build. A tool it runs is a client under `clients/` (one per
//!   external system; it takes its settings as arguments and never reads the config); the
//!   registry credentials a builder needs are written from `job.registry`, never read again;
//!   errors keep their causes as `#[source]` and implement `error::Classify`, so the exit code
//!   follows from the error.

use std::collections::BTreeMap;
use std::path::Path;

use crate::clients::registry::ImageName;
use crate::config::{Config, Section};
use crate::model::{BuiltImage, TagSet};
use crate::phases::registry::Registry;
use crate::report::{Check, CheckStatus, PhaseHandle};

/// What a backend gets to build: the same for every backend.
pub struct BackendJob<'a> {
    /// The build context (a directory of the checkout, checked).
    pub context_dir: &'a Path,
    /// The Dockerfile, inside the context.
    pub dockerfile: &'a Path,
    /// The Dockerfile as the user wrote it, relative to the context (for errors).
    pub dockerfile_rel: &'a Path,
    /// `ARG` values.
    pub args: BTreeMap<String, String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Target platform, `os/arch[/variant]`.
    pub platform: String,
    /// The repository the image is pushed to.
    pub image: &'a ImageName,
    /// The run's tags (and layer cache tags).
    pub tags: &'a TagSet,
    /// The run's config (a backend reads its own `[build.<name>]` and `[registry]`).
    pub config: &'a Config,
    /// The registry bundle of the run.
    pub registry: &'a Registry,
    /// The build's private temp dir (credentials files, metadata, the image layout).
    pub work: &'a Path,
    /// Notes for the report.
    pub phase: &'a PhaseHandle,
}

/// One way of building an image. See the module doc for what an implementation provides.
#[async_trait::async_trait]
pub trait Backend: Sync {
    /// Its name in config, flags and reports (`native`, `buildah`, `buildx`).
    fn name(&self) -> &'static str;

    /// What it is, for people (`--backend`'s help, `auto`'s notes: `docker buildx`).
    fn describe(&self) -> &'static str;

    /// `auto`'s note when it is the first backend that can build (default: "`describe` is
    /// available").
    fn auto_note(&self) -> String {
        format!("{} is available", self.describe())
    }

    /// How to get it when `auto` finds no backend available.
    fn install_hint(&self) -> &'static str;

    /// `None` when it can build `dockerfile` here; else why not, for people. `Err` only for a
    /// failure that no other backend would avoid (an unreadable Dockerfile).
    async fn unavailable(&self, dockerfile: &Path) -> anyhow::Result<Option<String>>;

    /// What `prpod doctor` reports about it; `selected`: it is the configured backend.
    async fn doctor_checks(&self, selected: bool) -> Vec<Check> {
        let _ = selected;
        Vec::new()
    }

    /// Its `[build.<name>]` section, if it has one.
    fn config<'a>(&self, build: &'a super::BuildConfig) -> Option<&'a dyn Section> {
        let _ = build;
        None
    }

    /// Its `[build.<name>]` section, to apply the environment to.
    fn config_mut<'a>(&self, build: &'a mut super::BuildConfig) -> Option<&'a mut dyn Section> {
        let _ = build;
        None
    }

    /// Builds the image.
    async fn build(&self, job: &BackendJob<'_>) -> anyhow::Result<BuiltImage>;
}

/// The backend named `name`, from [`super::BACKENDS`].
pub fn by_name(name: &str) -> Option<&'static dyn Backend> {
    super::BACKENDS.iter().copied().find(|b| b.name() == name)
}

/// `[build] backend`: `auto` or one backend of [`super::BACKENDS`], by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The first backend of [`super::BACKENDS`] that can build the Dockerfile here.
    #[default]
    Auto,
    /// This one (a name of [`super::BACKENDS`]).
    Named(&'static str),
}

impl BackendChoice {
    /// The name in config, flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Named(n) => n,
        }
    }

    /// Whether this names `backend` (never for `auto`).
    pub fn is(self, backend: &dyn Backend) -> bool {
        self == BackendChoice::Named(backend.name())
    }

    /// Every value `[build] backend` takes: `auto`, then the list's names.
    pub fn all() -> impl Iterator<Item = BackendChoice> {
        std::iter::once(BackendChoice::Auto).chain(super::BACKENDS.iter().map(|b| BackendChoice::Named(b.name())))
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(BackendChoice::Auto);
        }
        match by_name(s) {
            Some(b) => Ok(BackendChoice::Named(b.name())),
            None => Err(format!(
                "expected one of {}",
                BackendChoice::all().map(BackendChoice::name).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for BackendChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The doctor check of a backend that runs a tool: its version, or why it is not usable (a
/// failure only when `selected`).
pub fn tool_check(name: &str, version: Result<String, String>, selected: bool, fix: &str) -> Check {
    match version {
        Ok(v) => Check { name: name.into(), status: CheckStatus::Ok, detail: v, fix: None },
        Err(e) if selected => Check {
            name: name.into(),
            status: CheckStatus::Fail,
            detail: format!("not usable: {e}"),
            fix: Some(fix.to_string()),
        },
        Err(_) => Check {
            name: name.into(),
            status: CheckStatus::Ok,
            detail: format!("not installed (only needed for `[build] backend = \"{name}\"` or Dockerfiles with RUN)"),
            fix: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_backend_is_a_choice_and_nothing_else_is() {
        let names: Vec<&str> = super::super::BACKENDS.iter().map(|b| b.name()).collect();
        assert_eq!(names, ["native", "buildx", "buildah"], "auto's order of preference");
        for n in &names {
            assert_eq!(n.parse::<BackendChoice>(), Ok(BackendChoice::Named(n)));
        }
        assert_eq!("auto".parse::<BackendChoice>(), Ok(BackendChoice::Auto));
        let err = "kaniko".parse::<BackendChoice>().unwrap_err();
        assert_eq!(err, "expected one of auto, native, buildx, buildah");
        let c: BackendChoice =
            toml::from_str::<toml::Table>("b = \"buildah\"").unwrap()["b"].clone().try_into().unwrap();
        assert!(c.is(by_name("buildah").unwrap()) && !c.is(by_name("buildx").unwrap()));
    }
}
