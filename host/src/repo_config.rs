//! The repository's `prpod.toml`: the trust boundary between the operator and the pull request.
//!
//! A PR's author controls every file of the PR, `prpod.toml` included. They do not control the
//! CI workflow's secrets, the operator's flags and environment, or the cluster. So settings come
//! from two sources:
//!
//! * **operator settings**: flags, `PRPOD_*` variables and the config file named by `--config` /
//!   `PRPOD_CONFIG` (outside the PR's checkout). They may set every key;
//! * **the repository's `prpod.toml`**, read from the PR's commit (and, in GitHub Actions without
//!   an operator config, from the working directory). It may set only what describes the app:
//!   `[app]`, `image.context`, `image.dockerfile`, `image.build_args`, and `deploy.chart`,
//!   `deploy.values`, `deploy.set` when the operator allows a repository chart
//!   (`[deploy] allow_repository_chart = true`).
//!
//! Any other key in the repository's file (credentials, programs run, clusters, policy, caches)
//! is an error that names the key and says where it belongs: never silently ignored, since a
//! team that moved a key there would otherwise run without it.
//!
//! Precedence for the keys the repository may set: flags > `PRPOD_*` > the operator's file >
//! the repository's file > defaults. An operator who sets one of them decides it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// The file's name at the repository root.
pub const FILE_NAME: &str = "prpod.toml";

/// The largest repository `prpod.toml` prpod reads.
pub const MAX_BYTES: u64 = 1 << 20;

/// What the repository's `prpod.toml` said, one field per key it may set (`None`: not set).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepositoryConfig {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// `[app]`, as written (merged under the operator's `[app]` key by key).
    pub app: Option<toml::Table>,
    /// `image.context`.
    pub context: Option<PathBuf>,
    /// `image.dockerfile`.
    pub dockerfile: Option<PathBuf>,
    /// `image.build_args` (the operator's arguments of the same name win).
    pub build_args: BTreeMap<String, String>,
    /// `deploy.chart`.
    pub chart: Option<PathBuf>,
    /// `deploy.values`.
    pub values: Option<Vec<PathBuf>>,
    /// `deploy.set` (the operator's keys of the same name win).
    pub set: Option<toml::Table>,
}

impl RepositoryConfig {
    /// The keys this file set, as `section.key` (for the run's report).
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(app) = &self.app {
            keys.extend(app.keys().map(|k| format!("app.{k}")));
        }
        let named = [
            ("image.context", self.context.is_some()),
            ("image.dockerfile", self.dockerfile.is_some()),
            ("image.build_args", !self.build_args.is_empty()),
            ("deploy.chart", self.chart.is_some()),
            ("deploy.values", self.values.is_some()),
            ("deploy.set", self.set.is_some()),
        ];
        keys.extend(named.into_iter().filter(|(_, set)| *set).map(|(k, _)| k.to_string()));
        keys
    }
}

/// The keys of `[image]` and `[deploy]` a repository may set; the bool says whether the key
/// needs the operator's `allow_repository_chart`.
const REPOSITORY_KEYS: &[(&str, &str, bool)] = &[
    ("image", "context", false),
    ("image", "dockerfile", false),
    ("image", "build_args", false),
    ("deploy", "chart", true),
    ("deploy", "values", true),
    ("deploy", "set", true),
];

/// True when `section.key` is one a repository's `prpod.toml` may set (chart keys included).
pub fn is_repository_key(section: &str, key: &str) -> bool {
    section == "app" || REPOSITORY_KEYS.iter().any(|(s, k, _)| *s == section && *k == key)
}

/// Why an operator key is the operator's, and where to set it instead.
fn belongs(section: &str, key: &str) -> String {
    let what = match (section, key) {
        ("registry", _) => "it decides registry credentials and where they are sent",
        ("source", _) => "it decides the git token, the clone URL and the clone cache",
        ("image", "repository") => "it decides where the image, and the registry credentials, go",
        ("image", _) => "it decides how the image is built",
        ("deploy", "helm") => "it decides which program prpod runs as Helm",
        ("deploy", "kubeconfig" | "kube_context") => {
            "it decides which cluster and credentials are used (a kubeconfig can run programs)"
        }
        ("deploy", _) => "it decides how and where previews are deployed",
        ("build", _) => "it decides the build backend and the programs it runs",
        ("plugins" | "limits", _) => "it decides the policy plugins and their limits",
        ("github", _) => "it decides which events run with the repository's secrets and what prpod writes to GitHub",
        _ => "it is an operator setting",
    };
    format!(
        "`{section}{}{key}` may not be set by the repository's prpod.toml ({what}); set it in the operator's \
         config (--config or PRPOD_CONFIG, a file outside the pull request's checkout), a PRPOD_* variable or a flag",
        if key.is_empty() { "" } else { "." }
    )
}

/// Reads `dir/prpod.toml` when it exists: not through a symlink, a regular file of at most
/// [`MAX_BYTES`]. `allow_chart` is the operator's `[deploy] allow_repository_chart`.
pub fn read(dir: &Path, allow_chart: bool) -> Result<Option<RepositoryConfig>, ConfigError> {
    let path = dir.join(FILE_NAME);
    let err = |why: String| ConfigError::File { path: path.clone(), why };
    let bytes =
        match crate::input::read_repository_file(dir, Path::new(FILE_NAME), MAX_BYTES, "the repository's config") {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(err(e.into_io().to_string())),
        };
    let text = String::from_utf8(bytes).map_err(|_| err("it is not UTF-8 text".into()))?;
    parse(&text, &path, allow_chart).map(Some)
}

/// Parses a repository `prpod.toml`: TOML whose keys are all known (as in any prpod.toml) and
/// all the repository's to set.
pub fn parse(text: &str, path: &Path, allow_chart: bool) -> Result<RepositoryConfig, ConfigError> {
    let err = |why: String| ConfigError::File { path: path.to_path_buf(), why };
    let table: toml::Table = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    // Unknown keys and wrong types are reported exactly as for the operator's file; the values
    // are taken from this typed reading, the table says which keys the file set.
    let typed: crate::config::Config = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    for (section, value) in &table {
        if section == "app" {
            continue;
        }
        let keys: Vec<&String> = match value.as_table() {
            Some(t) if matches!(section.as_str(), "image" | "deploy") => t.keys().collect(),
            _ => return Err(err(belongs(section, ""))),
        };
        for key in keys {
            match REPOSITORY_KEYS.iter().find(|(s, k, _)| s == section && k == key) {
                None => return Err(err(belongs(section, key))),
                Some((_, _, true)) if !allow_chart => {
                    return Err(err(format!(
                        "`{section}.{key}` in the repository's prpod.toml takes the chart from the pull request; \
                         the operator has not allowed that: set `[deploy] allow_repository_chart = true` in the \
                         operator's config to allow it, or remove the key"
                    )));
                }
                Some(_) => {}
            }
        }
    }
    // prpod's own build arguments (`PRPOD_GIT_SHA`: the commit a page names) are not the pull
    // request's to forge.
    if let Some(name) = typed.image.build_args.keys().find(|k| k.starts_with("PRPOD_")) {
        return Err(err(format!(
            "`image.build_args.{name}` may not be set by the repository's prpod.toml: prpod sets its own \
             `PRPOD_*` build arguments (PRPOD_GIT_SHA is the commit being built); only the operator's config \
             or --build-arg may override them"
        )));
    }
    let set = |section: &str, key: &str| table.get(section).and_then(|s| s.get(key)).is_some();
    let (image, deploy) = (typed.image, typed.deploy);
    Ok(RepositoryConfig {
        path: path.to_path_buf(),
        app: table.get("app").and_then(|a| a.as_table().cloned()),
        context: set("image", "context").then_some(image.context),
        dockerfile: set("image", "dockerfile").then_some(image.dockerfile),
        build_args: image.build_args,
        chart: deploy.chart,
        values: set("deploy", "values").then_some(deploy.values),
        set: set("deploy", "set").then_some(deploy.set),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str, allow: bool) -> Result<RepositoryConfig, String> {
        parse(text, Path::new("/repo/prpod.toml"), allow).map_err(|e| e.to_string())
    }

    #[test]
    fn app_keys_are_the_repositorys() {
        let r = parse_ok(
            "[app]\nport = 9000\nhealth_path = \"/up\"\n[image]\ndockerfile = \"web/Dockerfile\"\n\
             build_args = { BASE = \"busybox\" }\n",
            false,
        )
        .unwrap();
        assert_eq!(r.app.as_ref().unwrap()["port"].as_integer(), Some(9000));
        assert_eq!(r.dockerfile.as_deref(), Some(Path::new("web/Dockerfile")));
        assert_eq!(r.build_args["BASE"], "busybox");
        assert_eq!(r.keys(), ["app.health_path", "app.port", "image.dockerfile", "image.build_args"]);
    }

    #[test]
    fn operator_keys_are_refused_naming_the_key_and_where_it_belongs() {
        for (text, key) in [
            ("[deploy]\nhelm = \"./evil.sh\"\n", "deploy.helm"),
            ("[registry]\npassword_file = \"/proc/self/environ\"\n", "registry"),
            ("[registry]\npassword_env = \"PRPOD_GIT_TOKEN\"\n", "registry"),
            ("[registry]\ndocker_config = \"x.json\"\n", "registry"),
            ("[deploy]\nkubeconfig = \"kc\"\n", "deploy.kubeconfig"),
            ("[plugins.verifier]\nref = \"noop.wasm\"\n", "plugins"),
            ("[image]\nrepository = \"127.0.0.1:1/x\"\n", "image.repository"),
            ("[source]\ntoken_file = \"/etc/shadow\"\n", "source"),
            ("[build]\nbackend = \"buildx\"\n", "build"),
            ("[limits]\ndeadline_ms = 600000\n", "limits"),
        ] {
            let e = parse_ok(text, true).unwrap_err();
            assert!(e.contains(&format!("`{key}")), "{key}: {e}");
            assert!(e.contains("--config") && e.contains("/repo/prpod.toml"), "{e}");
        }
    }

    #[test]
    fn prpods_own_build_arguments_are_not_the_repositorys() {
        let e = parse_ok("[image]\nbuild_args = { PRPOD_GIT_SHA = \"forged\" }\n", true).unwrap_err();
        assert!(e.contains("image.build_args.PRPOD_GIT_SHA"), "{e}");
        assert!(parse_ok("[image]\nbuild_args = { BASE = \"x\" }\n", true).is_ok());
    }

    #[test]
    fn chart_keys_need_the_operators_consent() {
        let text = "[deploy]\nchart = \"charts/web\"\nvalues = [\"v.yaml\"]\nset = { a = 1 }\n";
        let e = parse_ok(text, false).unwrap_err();
        assert!(e.contains("allow_repository_chart"), "{e}");
        let r = parse_ok(text, true).unwrap();
        assert_eq!(r.chart.as_deref(), Some(Path::new("charts/web")));
        assert_eq!(r.values, Some(vec![PathBuf::from("v.yaml")]));
        assert_eq!(r.set.unwrap()["a"].as_integer(), Some(1));
    }

    #[test]
    fn unknown_keys_and_types_are_errors_as_for_any_config() {
        assert!(parse_ok("[app]\nprot = 1\n", false).unwrap_err().contains("prot"));
        assert!(parse_ok("[image]\ndockerfile = 3\n", false).is_err());
        assert!(parse_ok("[app\n", false).is_err());
    }

    #[test]
    fn read_refuses_a_symlink_and_a_fifo_and_is_absent_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), false).unwrap(), None);
        std::os::unix::fs::symlink("/proc/self/environ", dir.path().join(FILE_NAME)).unwrap();
        let e = read(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "x".repeat(MAX_BYTES as usize + 1)).unwrap();
        let e = read(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("larger"), "{e}");
    }
}
