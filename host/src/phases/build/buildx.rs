//! The `buildx` backend: `docker buildx build` (or `bake`) on a builder prpod creates or reuses,
//! pushing the tags itself; the image's digest comes from buildx's metadata file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::backend::{self, Backend, BackendJob};
use super::{BuildConfig, registry_hosts};
use crate::clients::buildx::{self, Buildx};
use crate::config::{ConfigError, Env, Section};
use crate::error::ResultExt;
use crate::model::{BuiltImage, Phase};
use crate::phases::registry::Registry;
use crate::report::Check;

/// `docker buildx build` / `bake`.
pub struct BuildxBackend;

#[async_trait::async_trait]
impl Backend for BuildxBackend {
    fn name(&self) -> &'static str {
        "buildx"
    }

    fn describe(&self) -> &'static str {
        "docker buildx"
    }

    fn in_pod(&self) -> super::InPod {
        super::InPod::Unsupported("there is no docker daemon in a dispatched Job")
    }

    fn install_hint(&self) -> &'static str {
        "docker with the buildx plugin"
    }

    async fn unavailable(&self, _dockerfile: &Path) -> anyhow::Result<Option<String>> {
        Ok((!Buildx::default().available().await).then(|| "docker buildx is not available".to_string()))
    }

    async fn doctor_checks(&self, selected: bool) -> Vec<Check> {
        let fix = "install Docker with the buildx plugin, or use `[build] backend = \"buildah\"`";
        vec![backend::tool_check("buildx", Buildx::default().version().await, selected, fix)]
    }

    fn config<'a>(&self, build: &'a BuildConfig) -> Option<&'a dyn Section> {
        Some(&build.buildx)
    }

    fn config_mut<'a>(&self, build: &'a mut BuildConfig) -> Option<&'a mut dyn Section> {
        Some(&mut build.buildx)
    }

    async fn build(&self, job: &BackendJob<'_>) -> anyhow::Result<BuiltImage> {
        let BackendJob { context_dir, dockerfile, image, tags, config, registry, work, phase, .. } = job;
        let (args, labels, platform) = (job.args.clone(), job.labels.clone(), job.platform.clone());
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
        if tool.ensure_builder(&builder).await.at(Phase::Build)? {
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
        let digest = tool
            .build_push(&builder, &req, &|l| tracing::debug!(target: "prpod::build", "buildx: {l}"))
            .await
            .at(Phase::Build)?;
        Ok(BuiltImage {
            backend: "buildx".into(),
            repository: (*image).clone(),
            layout: None,
            digest,
            steps: None,
            work_dir: None,
        })
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

/// A builder or storage driver name: `[A-Za-z0-9._-]+`.
pub(super) fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Section for BuildxConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.apply("PRPOD_BUILDX_BUILDER", "build.buildx.builder", &mut self.builder)?;
        env.apply("PRPOD_BUILDX_DRIVER", "build.buildx.driver", &mut self.driver)?;
        env.apply_opt("PRPOD_BUILDX_NAMESPACE", "build.buildx.namespace", &mut self.namespace)?;
        env.apply("PRPOD_BUILDX_REPLICAS", "build.buildx.replicas", &mut self.replicas)?;
        env.apply_opt("PRPOD_BUILDX_BAKE_FILE", "build.buildx.bake_file", &mut self.bake_file)?;
        env.apply("PRPOD_BUILDX_PROVENANCE", "build.buildx.provenance", &mut self.provenance)?;
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Value { key: key.into(), why };
        let x = self;
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
        Ok(())
    }
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
    let doc = registry.credentials.dockerconfigjson(&hosts_v).await.at(Phase::Build)?;
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
