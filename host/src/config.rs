//! `prpod.toml`: what a team configures. The root only composes: each phase owns its section
//! (`[source]` in `phases::source`, `[image]` and `[build]` in `phases::build`, ...) and says which
//! `PRPOD_*` variables override it ([`Section`]). Precedence: command-line flags > `PRPOD_*`
//! environment > the file > defaults. Unknown keys and wrong types are errors naming the key
//! (or the variable).
//!
//! ```toml
//! [limits]                      # defaults for every plugin
//! deadline_ms = 2000
//!
//! [plugins.tag-policy]
//! ref = "plugins/our-tags.wasm#sha256:<64 hex>"
//! limits = { memory_mib = 32 }
//!
//! [image]
//! repository = "ghcr.io/acme/web"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::phases::build::{BuildConfig, ImageConfig};
use crate::phases::chart::AppConfig;
use crate::phases::deploy::DeployConfig;
use crate::phases::source::SourceConfig;
use crate::plugins::{Limits, PluginRef, World};

/// Limits that may be overridden; unset fields fall back to the next level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Maximum linear memory per call, MiB (1..=4096).
    pub memory_mib: Option<u64>,
    /// Wall-clock deadline per call, ms (1..=600000).
    pub deadline_ms: Option<u64>,
    /// Maximum output per call, MiB (1..=1024).
    pub output_mib: Option<u64>,
}

impl LimitOverrides {
    /// `base` with these overrides applied.
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            memory_mib: self.memory_mib.unwrap_or(base.memory_mib),
            deadline_ms: self.deadline_ms.unwrap_or(base.deadline_ms),
            output_mib: self.output_mib.unwrap_or(base.output_mib),
        }
    }

    /// Checks every value is in range; `name` turns a key into how the user wrote it (a TOML
    /// path, or a command-line flag), so the error points at the right place.
    pub fn check(&self, name: impl Fn(&str) -> String) -> Result<(), String> {
        let ranges = [
            ("memory_mib", self.memory_mib, 4096),
            ("deadline_ms", self.deadline_ms, 600_000),
            ("output_mib", self.output_mib, 1024),
        ];
        for (key, value, max) in ranges {
            if let Some(v) = value
                && (v == 0 || v > max)
            {
                return Err(format!("`{}` is {v}; it must be between 1 and {max}", name(key)));
            }
        }
        Ok(())
    }
}

/// One world's plugin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The plugin reference: a path, `path#sha256:<hex>` or `builtin:<name>`.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Limits for this plugin.
    #[serde(default)]
    pub limits: LimitOverrides,
}

/// The `[plugins]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// `[plugins.tag-policy]` (default `builtin:tag-default`).
    #[serde(rename = "tag-policy", default)]
    pub tag_policy: PluginConfig,
    /// `[plugins.chart-generator]` (default `builtin:chart-webapp`).
    #[serde(rename = "chart-generator", default)]
    pub chart_generator: PluginConfig,
    /// `[plugins.verifier]` (default `builtin:verify-baseline`), or several as
    /// `[[plugins.verifier]]` (an org policy plus a team policy): every one runs.
    #[serde(default)]
    pub verifier: Verifiers,
    /// `[plugins.trust]`: keys whose signature every OCI plugin must carry.
    #[serde(default)]
    pub trust: crate::plugins::trust::TrustConfig,
}

/// The verifier plugins: one table (`[plugins.verifier]`, as prpod has always read it) or an
/// array of tables (`[[plugins.verifier]]`). Empty means the default, `builtin:verify-baseline`.
#[derive(Debug, Clone, Default)]
pub struct Verifiers(pub Vec<PluginConfig>);

impl<'de> Deserialize<'de> for Verifiers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Verifiers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table `[plugins.verifier]` or an array of tables `[[plugins.verifier]]`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Verifiers, A::Error> {
                let one = PluginConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Verifiers(vec![one]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Verifiers, A::Error> {
                Ok(Verifiers(Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?))
            }
        }
        d.deserialize_any(V)
    }
}

/// The plugin config of a world nobody configured.
static UNCONFIGURED: PluginConfig =
    PluginConfig { reference: None, limits: LimitOverrides { memory_mib: None, deadline_ms: None, output_mib: None } };

/// The whole of `prpod.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default limits for every plugin.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Per-world plugins.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// `[source]`: where the repository is cloned from and how.
    #[serde(default)]
    pub source: SourceConfig,
    /// `[image]`: what is built and where it is pushed.
    #[serde(default)]
    pub image: ImageConfig,
    /// `[build]`: which backend builds, and its settings.
    #[serde(default)]
    pub build: BuildConfig,
    /// `[deploy]`: the chart, Helm, the cluster, the rollout timeout.
    #[serde(default)]
    pub deploy: DeployConfig,
    /// `[app]`: what the generated chart runs.
    #[serde(default)]
    pub app: AppConfig,
    /// `[registry]`: registry credentials, TLS and push settings.
    #[serde(default)]
    pub registry: crate::phases::registry::RegistryConfig,
    /// `[github]`: the GitHub API, its credentials, and which events `prpod event` acts on.
    #[serde(default)]
    pub github: crate::phases::github::GithubConfig,
    /// `[lifecycle]`: sleep, wake and collection of previews (teardown, gc).
    #[serde(default)]
    pub lifecycle: crate::phases::lifecycle::LifecycleConfig,
    /// The file this was read from (relative plugin paths are resolved against its directory).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// The keys a repository's prpod.toml may set that the operator set (in this file, a
    /// `PRPOD_*` variable or a flag), as `section.key`: the repository's file does not override
    /// them ([`Config::apply_repository`]).
    #[serde(skip)]
    pub operator_keys: BTreeSet<String>,
    /// The operator's `[app]` table as written, merged over the repository's key by key.
    #[serde(skip)]
    pub operator_app: toml::Table,
    /// OCI plugins resolved through prpod.lock, by reference as written ([`Config::oci_refs`]).
    #[serde(skip)]
    pub oci_plugins: BTreeMap<String, crate::plugins::oci::Fetched>,
}

/// Configuration that cannot be used: from the file, or from a `PRPOD_*` variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is unreadable, not TOML, or has an unknown key, a wrong type or a bad value.
    #[error("failed to load config {path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        why: String,
    },
    /// An environment variable that overrides a key has a value the key cannot take.
    #[error("environment variable {var} (overrides `{key}`): {why}")]
    Env {
        /// The variable.
        var: String,
        /// The key it overrides.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// A value (from wherever it came) is out of range or malformed.
    #[error("config `{key}`: {why}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong and what would be right.
        why: String,
    },
}

/// One section of `prpod.toml`, owned by the phase that uses it.
pub trait Section {
    /// Applies the `PRPOD_*` variables that override this section's keys.
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError>;
    /// Checks every value, naming the key of the first bad one.
    fn check(&self) -> Result<(), ConfigError>;
}

/// prpod's cache directory (compiled plugins, Helm versions): `$PRPOD_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/prpod`, else `~/.cache/prpod`; `None` when `PRPOD_CACHE_DIR=off` (or there is
/// no home). Read from the process, since the caches live below the commands' configuration.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("PRPOD_CACHE_DIR") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => directories::BaseDirs::new().map(|d| d.cache_dir().join("prpod")),
    }
}

/// A snapshot of the environment prpod reads (`PRPOD_*`, GitHub Actions' `GITHUB_*`, tokens).
/// Taken once per process, and built by hand in tests, so nothing else calls `std::env::var`.
/// An empty variable counts as unset (CI systems export empty values for missing secrets).
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process environment (variables that are not UTF-8 are left out).
    pub fn from_process() -> Env {
        Env::from_pairs(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
    }

    /// An environment of exactly these variables.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Env {
        Env { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// This environment with `name` set to `value` (a token prpod obtained itself, for the run).
    pub fn with(mut self, name: &str, value: &str) -> Env {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// The value of `name`, unless unset or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Overrides `target` (key `key`) with `var` when it is set, parsed as `T`.
    pub fn apply<T: FromStr>(&self, var: &str, key: &str, target: &mut T) -> Result<(), ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        if let Some(v) = self.get(var) {
            *target = v.parse().map_err(|e: T::Err| ConfigError::Env {
                var: var.into(),
                key: key.into(),
                why: format!("`{v}` is not valid: {e}"),
            })?;
        }
        Ok(())
    }

    /// Like [`Env::apply`], for keys that are unset by default.
    pub fn apply_opt<T: FromStr>(&self, var: &str, key: &str, target: &mut Option<T>) -> Result<(), ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        if let Some(v) = self.get(var) {
            *target = Some(v.parse().map_err(|e: T::Err| ConfigError::Env {
                var: var.into(),
                key: key.into(),
                why: format!("`{v}` is not valid: {e}"),
            })?);
        }
        Ok(())
    }
}

impl Config {
    /// Reads and checks `path` (the file alone: see [`Config::apply_env`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |why: String| ConfigError::File { path: path.to_path_buf(), why };
        let text = crate::input::read_text_file(path, crate::input::MAX_CONFIG_BYTES, "config")
            .map_err(|e| err(e.reason()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let raw: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        config.record_operator_keys(&raw);
        config.limits.check(|k| format!("limits.{k}")).map_err(err)?;
        for world in World::ALL {
            let p = config.plugin(world);
            p.limits.check(|k| format!("plugins.{world}.limits.{k}")).map_err(err)?;
            if let Some(r) = &p.reference {
                PluginRef::parse(r).map_err(|e| err(format!("`plugins.{world}.ref`: {e}")))?;
            }
        }
        for (i, p) in config.plugins.verifier.0.iter().enumerate().skip(1) {
            p.limits.check(|k| format!("plugins.verifier[{i}].limits.{k}")).map_err(err)?;
            match &p.reference {
                Some(r) => {
                    PluginRef::parse(r).map(|_| ()).map_err(|e| err(format!("`plugins.verifier[{i}].ref`: {e}")))?
                }
                None => return Err(err(format!("`plugins.verifier[{i}]` has no `ref`"))),
            }
        }
        config.check().map_err(|e| match e {
            ConfigError::Value { key, why } => err(format!("`{key}`: {why}")),
            other => other,
        })?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Remembers which of the repository's keys the operator's file `raw` sets.
    fn record_operator_keys(&mut self, raw: &toml::Table) {
        for (section, value) in raw {
            let Some(table) = value.as_table() else { continue };
            for key in table.keys() {
                if crate::repo_config::is_repository_key(section, key) {
                    self.operator_keys.insert(format!("{section}.{key}"));
                }
            }
        }
        self.operator_app = raw.get("app").and_then(|a| a.as_table().cloned()).unwrap_or_default();
    }

    /// Marks a repository key as set by the operator (a flag).
    pub fn operator_set(&mut self, key: &str) {
        self.operator_keys.insert(key.to_string());
    }

    /// Applies what the repository's prpod.toml says (see [`crate::repo_config`]): each key the
    /// operator did not set, and the repository's `[app]` under the operator's key by key. Checks
    /// the result; errors name the repository's file.
    pub fn apply_repository(&mut self, repo: &crate::repo_config::RepositoryConfig) -> Result<(), ConfigError> {
        let err = |why: String| ConfigError::File { path: repo.path.clone(), why };
        let free = |c: &Config, key: &str| !c.operator_keys.contains(key);
        if let Some(app) = &repo.app {
            let mut merged = app.clone();
            merged.extend(self.operator_app.clone());
            self.app = crate::phases::chart::AppConfig::deserialize(toml::Value::Table(merged))
                .map_err(|e| err(format!("`app`: {e}")))?;
        }
        if let Some(v) = &repo.context
            && free(self, "image.context")
        {
            self.image.context = v.clone();
        }
        if let Some(v) = &repo.dockerfile
            && free(self, "image.dockerfile")
        {
            self.image.dockerfile = v.clone();
        }
        for (k, v) in &repo.build_args {
            self.image.build_args.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if let Some(v) = &repo.chart
            && free(self, "deploy.chart")
        {
            self.deploy.chart = Some(v.clone());
        }
        if let Some(v) = &repo.values
            && free(self, "deploy.values")
        {
            self.deploy.values = v.clone();
        }
        if let Some(set) = &repo.set {
            for (k, v) in set {
                self.deploy.set.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        self.check().map_err(|e| match e {
            ConfigError::Value { key, why } => err(format!("`{key}`: {why}")),
            other => other,
        })
    }

    /// Applies the `PRPOD_*` variables of every section (they beat the file), then checks again.
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        for (var, key) in [
            ("PRPOD_IMAGE_CONTEXT", "image.context"),
            ("PRPOD_IMAGE_DOCKERFILE", "image.dockerfile"),
            ("PRPOD_DEPLOY_CHART", "deploy.chart"),
        ] {
            if env.get(var).is_some() {
                self.operator_set(key);
            }
        }
        self.source.apply_env(env)?;
        self.image.apply_env(env)?;
        self.build.apply_env(env)?;
        self.deploy.apply_env(env)?;
        self.registry.apply_env(env)?;
        self.github.apply_env(env)?;
        self.lifecycle.apply_env(env)?;
        self.check()
    }

    /// Checks every section's values.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.source.check()?;
        self.image.check()?;
        self.build.check()?;
        self.deploy.check()?;
        self.lifecycle.check()?;
        self.registry.check()?;
        self.github.check()
    }

    /// `path` resolved against the config file's directory (relative paths in the file are
    /// relative to the file, not to wherever prpod runs).
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        let base = self.path.as_deref().and_then(Path::parent).unwrap_or(Path::new(""));
        base.join(path)
    }

    /// The config of `world`'s plugin.
    pub fn plugin(&self, world: World) -> &PluginConfig {
        match world {
            World::TagPolicy => &self.plugins.tag_policy,
            World::ChartGenerator => &self.plugins.chart_generator,
            World::Verifier => self.plugins.verifier.0.first().unwrap_or(&UNCONFIGURED),
        }
    }

    /// Every verifier plugin, in the order configured, with the limits each runs under.
    pub fn verifiers(&self) -> Vec<(PluginRef, Limits)> {
        if self.plugins.verifier.0.len() <= 1 {
            return vec![(self.plugin_ref(World::Verifier), self.limits_for(World::Verifier))];
        }
        self.plugins
            .verifier
            .0
            .iter()
            .map(|p| {
                let text = p.reference.as_deref().expect("checked by Config::load");
                (self.resolve_ref(text), p.limits.apply(self.limits.apply(Limits::default())))
            })
            .collect()
    }

    /// Every `oci://` plugin reference configured, as written.
    pub fn oci_refs(&self) -> Vec<String> {
        let worlds = [&self.plugins.tag_policy, &self.plugins.chart_generator];
        let refs = worlds.into_iter().chain(&self.plugins.verifier.0).filter_map(|p| p.reference.clone());
        let mut out: Vec<String> = refs.filter(|r| r.starts_with(crate::plugins::oci::SCHEME)).collect();
        out.dedup();
        out
    }

    /// The `[plugins.trust]` key files, resolved against the config file's directory.
    pub fn trust_keys(&self) -> Vec<PathBuf> {
        self.plugins.trust.keys.iter().map(|k| self.resolve_path(k)).collect()
    }

    fn resolve_ref(&self, text: &str) -> PluginRef {
        match PluginRef::parse(text).expect("checked by Config::load") {
            PluginRef::Oci { reference, .. } => {
                PluginRef::Oci { reference, resolved: self.oci_plugins.get(text).cloned() }
            }
            PluginRef::File { path, sha256 } if path.is_relative() => {
                let base = self.path.as_deref().and_then(Path::parent).unwrap_or(Path::new(""));
                PluginRef::File { path: base.join(path), sha256 }
            }
            r => r,
        }
    }

    /// The limits `world`'s plugin runs under: defaults, then `[limits]`, then the plugin's own.
    pub fn limits_for(&self, world: World) -> Limits {
        self.plugin(world).limits.apply(self.limits.apply(Limits::default()))
    }

    /// The plugin reference configured for `world`, or its builtin default. Relative paths are
    /// resolved against the config file's directory.
    pub fn plugin_ref(&self, world: World) -> PluginRef {
        let default = match world {
            World::TagPolicy => "builtin:tag-default",
            World::ChartGenerator => "builtin:chart-webapp",
            World::Verifier => "builtin:verify-baseline",
        };
        let text = self.plugin(world).reference.as_deref().unwrap_or(default);
        self.resolve_ref(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prpod.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&p)
    }

    #[test]
    fn limits_layer() {
        let c = load("[limits]\ndeadline_ms = 500\n[plugins.verifier]\nlimits = { memory_mib = 8 }\n").unwrap();
        assert_eq!(c.limits_for(World::Verifier), Limits { memory_mib: 8, deadline_ms: 500, output_mib: 16 });
        assert_eq!(c.limits_for(World::TagPolicy), Limits { memory_mib: 64, deadline_ms: 500, output_mib: 16 });
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load("[plugins.tag-policy.limits]\nmemory_mib = 0\n").unwrap_err().to_string();
        assert!(e.contains("plugins.tag-policy.limits.memory_mib"), "{e}");
        let e = load("[plugins.tag-policy]\nref = \"x.wasm#sha256:12\"\n").unwrap_err().to_string();
        assert!(e.contains("plugins.tag-policy.ref"), "{e}");
        let e = load("[plugins.tag-polcy]\n").unwrap_err().to_string();
        assert!(e.contains("tag-polcy"), "{e}");
    }

    #[test]
    fn one_verifier_or_several() {
        let c = load("[plugins.verifier]\nref = \"builtin:verify-baseline\"\n").unwrap();
        assert_eq!(c.verifiers().len(), 1);
        let c = load(
            "[[plugins.verifier]]\nref = \"org.wasm\"\n[[plugins.verifier]]\nref = \"builtin:verify-baseline\"\nlimits = { deadline_ms = 9 }\n",
        )
        .unwrap();
        let v = c.verifiers();
        assert_eq!(v.len(), 2);
        assert!(matches!(&v[0].0, PluginRef::File { path, .. } if path.ends_with("org.wasm")));
        assert_eq!(v[1].1.deadline_ms, 9);
        let e = load("[[plugins.verifier]]\nref = \"a.wasm\"\n[[plugins.verifier]]\nlimits = {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugins.verifier[1]"), "{e}");
        let e = load("[plugins.verifier]\nrf = \"a.wasm\"\n").unwrap_err().to_string();
        assert!(e.contains("rf"), "{e}");
        assert_eq!(load("").unwrap().verifiers()[0].0, PluginRef::Builtin("verify-baseline".into()));
    }

    #[test]
    fn relative_refs_resolve_against_the_config_file() {
        let c = load("[plugins.tag-policy]\nref = \"p/tags.wasm\"\n").unwrap();
        let PluginRef::File { path, .. } = c.plugin_ref(World::TagPolicy) else { panic!() };
        assert!(path.ends_with("p/tags.wasm") && path.is_absolute());
        assert_eq!(c.plugin_ref(World::Verifier), PluginRef::Builtin("verify-baseline".into()));
    }

    #[test]
    fn sections_compose_and_env_beats_file() {
        let mut c = load(
            "[source]\ndepth = 5\n[image]\nrepository = \"ghcr.io/acme/web\"\n[build]\nbackend = \"buildah\"\n\
             [build.buildah]\nroot = \"/file/root\"\n",
        )
        .unwrap();
        assert_eq!(c.source.depth, 5);
        assert_eq!(c.build.backend, crate::phases::build::BackendChoice::Named("buildah"));
        let env = Env::from_pairs([
            ("PRPOD_SOURCE_DEPTH", "0"),
            ("PRPOD_BUILDAH_ROOT", "/env/root"),
            ("PRPOD_BUILDAH_RUNROOT", ""),
            ("PRPOD_BUILD_BACKEND", "native"),
        ]);
        c.apply_env(&env).unwrap();
        assert_eq!(c.source.depth, 0);
        assert_eq!(c.build.buildah.root.as_deref(), Some(Path::new("/env/root")));
        assert_eq!(c.build.buildah.runroot, None, "an empty variable is unset");
        assert_eq!(c.build.backend, crate::phases::build::BackendChoice::Named("native"));
        assert_eq!(c.image.repository.as_deref(), Some("ghcr.io/acme/web"));
    }

    #[test]
    fn new_sections_name_bad_keys_and_variables() {
        let e = load("[build.buildah]\nrooot = \"/x\"\n").unwrap_err().to_string();
        assert!(e.contains("rooot"), "{e}");
        let e = load("[source]\ndepth = \"one\"\n").unwrap_err().to_string();
        assert!(e.contains("depth") && e.contains("string"), "{e}");
        let e = load("[build]\nbackend = \"docker\"\n").unwrap_err().to_string();
        assert!(e.contains("backend") || e.contains("docker"), "{e}");
        let e = load("[image]\ndockerfile = \"../Dockerfile\"\n").unwrap_err().to_string();
        assert!(e.contains("image.dockerfile"), "{e}");
        let e = load("[build.buildx]\nreplicas = 0\n").unwrap_err().to_string();
        assert!(e.contains("build.buildx.replicas"), "{e}");
        let mut c = Config::default();
        let e = c.apply_env(&Env::from_pairs([("PRPOD_SOURCE_DEPTH", "deep")])).unwrap_err().to_string();
        assert!(e.contains("PRPOD_SOURCE_DEPTH") && e.contains("source.depth"), "{e}");
        let e = c.apply_env(&Env::from_pairs([("PRPOD_BUILD_BACKEND", "podman")])).unwrap_err().to_string();
        assert!(e.contains("PRPOD_BUILD_BACKEND") && e.contains("buildah"), "{e}");
    }
}
