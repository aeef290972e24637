//! `prpod.toml`: what a team configures. This issue's part is which plugin fills each world and
//! the limits each plugin runs under.
//!
//! ```toml
//! [limits]                      # defaults for every plugin
//! deadline_ms = 2000
//!
//! [plugins.tag-policy]
//! ref = "plugins/our-tags.wasm#sha256:<64 hex>"
//! limits = { memory_mib = 32 }
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// `[plugins.verifier]` (default `builtin:verify-baseline`).
    #[serde(default)]
    pub verifier: PluginConfig,
}

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
    /// The file this was read from (relative plugin paths are resolved against its directory).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("failed to load config {path}: {why}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the key.
    pub why: String,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |why: String| ConfigError { path: path.to_path_buf(), why };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        config.limits.check(|k| format!("limits.{k}")).map_err(err)?;
        for world in World::ALL {
            let p = config.plugin(world);
            p.limits.check(|k| format!("plugins.{world}.limits.{k}")).map_err(err)?;
            if let Some(r) = &p.reference {
                PluginRef::parse(r).map_err(|e| err(format!("`plugins.{world}.ref`: {e}")))?;
            }
        }
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// The config of `world`'s plugin.
    pub fn plugin(&self, world: World) -> &PluginConfig {
        match world {
            World::TagPolicy => &self.plugins.tag_policy,
            World::ChartGenerator => &self.plugins.chart_generator,
            World::Verifier => &self.plugins.verifier,
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
        match PluginRef::parse(text).expect("checked by Config::load") {
            PluginRef::File { path, sha256 } if path.is_relative() => {
                let base = self.path.as_deref().and_then(Path::parent).unwrap_or(Path::new(""));
                PluginRef::File { path: base.join(path), sha256 }
            }
            r => r,
        }
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
    fn relative_refs_resolve_against_the_config_file() {
        let c = load("[plugins.tag-policy]\nref = \"p/tags.wasm\"\n").unwrap();
        let PluginRef::File { path, .. } = c.plugin_ref(World::TagPolicy) else { panic!() };
        assert!(path.ends_with("p/tags.wasm") && path.is_absolute());
        assert_eq!(c.plugin_ref(World::Verifier), PluginRef::Builtin("verify-baseline".into()));
    }
}
