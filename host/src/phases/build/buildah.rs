//! The `buildah` backend: `buildah build --layers` into local storage (its layer cache: the
//! machine's, and a registry cache repository), then the image copied to an OCI layout that the
//! push phase uploads. `RUN` steps run isolated as `[build.buildah] isolation` says.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::backend::{self, Backend, BackendJob};
use super::{BuildConfig, registry_hosts};
use crate::clients::buildah::{self, Buildah};
use crate::clients::registry::ImageName;
use crate::config::{ConfigError, Env, Section};
use crate::error::ResultExt;
use crate::model::{BuiltImage, Phase};
use crate::phases::registry::{Registry, RegistryConfig};
use crate::report::Check;

/// `buildah build --layers`.
pub struct BuildahBackend;

#[async_trait::async_trait]
impl Backend for BuildahBackend {
    fn name(&self) -> &'static str {
        "buildah"
    }

    fn describe(&self) -> &'static str {
        "buildah"
    }

    fn in_pod(&self) -> super::InPod {
        // buildah mounts overlays, makes user namespaces and switches users (SETUID/SETGID,
        // /dev/fuse or privileged): more than the restricted profile allows.
        super::InPod::Privileged
    }

    fn install_hint(&self) -> &'static str {
        "buildah (Debian/Ubuntu: apt-get install buildah runc)"
    }

    async fn unavailable(&self, _dockerfile: &Path) -> anyhow::Result<Option<String>> {
        Ok((!Buildah::available().await).then(|| "buildah is not available".to_string()))
    }

    async fn doctor_checks(&self, selected: bool) -> Vec<Check> {
        vec![backend::tool_check("buildah", Buildah::version().await, selected, "apt-get install buildah runc")]
    }

    fn config<'a>(&self, build: &'a BuildConfig) -> Option<&'a dyn Section> {
        Some(&build.buildah)
    }

    fn config_mut<'a>(&self, build: &'a mut BuildConfig) -> Option<&'a mut dyn Section> {
        Some(&mut build.buildah)
    }

    async fn build(&self, job: &BackendJob<'_>) -> anyhow::Result<BuiltImage> {
        let BackendJob { context_dir, dockerfile, image, tags, config, registry, work, phase, .. } = job;
        let (args, labels, platform) = (job.args.clone(), job.labels.clone(), job.platform.clone());
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
                let name =
                    ImageName::parse(&repo).at(Phase::Build).with_context(|| format!("cache repository {repo}"))?.value;
                if registry.client.has_tags(&name).await.at(Phase::Build)? {
                    return Ok::<_, anyhow::Error>(Some(repo));
                }
            }
            Ok(None)
        };
        let check_warm = async { b.cache_to == CacheTo::Auto && tool.has_image(&local).await };
        let (cache_from, warm) = tokio::join!(find_cache, check_warm);
        let cache_from = cache_from?;
        let cache_to =
            tags.cache_to.as_ref().filter(|_| !warm).map(|t| buildah::cache_repository(&image.to_string(), t));
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
        let built =
            tool.build(&req, &|l| tracing::debug!(target: "prpod::build", "buildah: {l}")).await.at(Phase::Build)?;
        let layout = work.join("image");
        tool.push_to_layout(&built.image_id, &layout).await.at(Phase::Build)?;
        let digest = crate::clients::registry::OciImage::open(&layout).at(Phase::Build)?.digest().to_string();
        Ok(BuiltImage {
            backend: "buildah".into(),
            repository: (*image).clone(),
            layout: Some(layout),
            digest,
            steps: Some(built.steps),
            work_dir: None,
        })
    }
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

impl Section for BuildahConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.apply_opt("PRPOD_BUILDAH_ROOT", "build.buildah.root", &mut self.root)?;
        env.apply_opt("PRPOD_BUILDAH_RUNROOT", "build.buildah.runroot", &mut self.runroot)?;
        env.apply_opt("PRPOD_BUILDAH_STORAGE_DRIVER", "build.buildah.storage_driver", &mut self.storage_driver)?;
        env.apply("PRPOD_BUILDAH_ISOLATION", "build.buildah.isolation", &mut self.isolation)?;
        env.apply("PRPOD_BUILDAH_CACHE_TO", "build.buildah.cache_to", &mut self.cache_to)?;
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        if let Some(d) = &self.storage_driver
            && !super::buildx::name_ok(d)
        {
            return Err(ConfigError::Value {
                key: "build.buildah.storage_driver".into(),
                why: format!("`{d}` is not a storage driver name"),
            });
        }
        Ok(())
    }
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
    let doc = registry.credentials.dockerconfigjson(&hosts).await.at(Phase::Build)?;
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
