//! Where a plugin comes from: a file, a file pinned by digest, or one of the builtins embedded in
//! this binary.

use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::PluginError;

/// The default plugins, embedded so that `cargo install --path host` alone gives working
/// defaults. `scripts/build-plugins --check` (run by CI) fails when these bytes differ from a
/// fresh build of `plugins/`.
pub const BUILTINS: &[(&str, &[u8])] = &[
    ("tag-default", include_bytes!("../../builtins/tag-default.wasm")),
    ("chart-webapp", include_bytes!("../../builtins/chart-webapp.wasm")),
    ("verify-baseline", include_bytes!("../../builtins/verify-baseline.wasm")),
];

/// A plugin reference as written in config or on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef {
    /// `builtin:<name>`.
    Builtin(String),
    /// A path, optionally pinned: `path#sha256:<hex>`.
    File {
        /// The file.
        path: PathBuf,
        /// Lowercase hex sha256 the file must have.
        sha256: Option<String>,
    },
    /// `oci://REGISTRY/REPO:TAG` or `oci://REGISTRY/REPO@sha256:...`, with its component once
    /// resolved (through prpod.lock and the cache, see [`super::lock`]).
    Oci {
        /// The reference.
        reference: super::oci::OciRef,
        /// The verified component, after resolution.
        resolved: Option<super::oci::Fetched>,
    },
}

impl PluginRef {
    /// Parses `builtin:<name>`, `<path>` or `<path>#sha256:<64 hex>`.
    pub fn parse(s: &str) -> Result<PluginRef, PluginError> {
        let bad = |why: &str| PluginError::BadReference { reference: s.to_string(), why: why.to_string() };
        if let Some(name) = s.strip_prefix("builtin:") {
            return Ok(PluginRef::Builtin(name.to_string()));
        }
        if s.is_empty() {
            return Err(bad("it is empty; give a file path or builtin:<name>"));
        }
        if s.starts_with(super::oci::SCHEME) {
            let reference = super::oci::OciRef::parse(s).map_err(|why| bad(&why))?;
            return Ok(PluginRef::Oci { reference, resolved: None });
        }
        match s.rsplit_once('#') {
            None => Ok(PluginRef::File { path: PathBuf::from(s), sha256: None }),
            Some((path, pin)) => {
                let hex = pin
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("the part after `#` must be `sha256:<64 hex digits>`"))?;
                if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(bad("the pinned digest must be `sha256:` followed by 64 hex digits"));
                }
                if path.is_empty() {
                    return Err(bad("there is no file path before `#sha256:`"));
                }
                Ok(PluginRef::File { path: PathBuf::from(path), sha256: Some(hex.to_ascii_lowercase()) })
            }
        }
    }

    /// A short name for logs and errors: `builtin:<name>` or the file name.
    pub fn display_name(&self) -> String {
        match self {
            PluginRef::Builtin(n) => format!("builtin:{n}"),
            PluginRef::File { path, .. } => {
                path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
            }
            PluginRef::Oci { reference, .. } => reference.to_string(),
        }
    }

    /// Reads the plugin's bytes, checking a pinned digest. Returns the bytes and their sha256.
    pub fn read(&self) -> Result<(Vec<u8>, String), PluginError> {
        if let PluginRef::Oci { reference, resolved } = self {
            // Re-hashed when it was read from the cache or the registry (lock::resolve).
            let f = resolved.as_ref().ok_or_else(|| PluginError::BadReference {
                reference: reference.to_string(),
                why: "it was not pulled before loading (OCI plugins are resolved through prpod.lock first)".into(),
            })?;
            let hex = f.layer_digest.strip_prefix("sha256:").unwrap_or(&f.layer_digest).to_string();
            return Ok((f.bytes.to_vec(), hex));
        }
        let bytes = match self {
            PluginRef::Builtin(name) => builtin(name)
                .ok_or_else(|| PluginError::UnknownBuiltin {
                    name: name.clone(),
                    known: BUILTINS.iter().map(|(n, _)| format!("builtin:{n}")).collect::<Vec<_>>().join(", "),
                })?
                .to_vec(),
            PluginRef::File { path, .. } => {
                crate::input::read_regular_file(path, crate::input::MAX_PLUGIN_BYTES, "plugin")
                    .map_err(|e| PluginError::Read { reference: self.to_string(), source: e.into_io() })?
            }
            PluginRef::Oci { .. } => unreachable!("returned above"),
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if let PluginRef::File { sha256: Some(expected), .. } = self
            && *expected != actual
        {
            return Err(PluginError::DigestMismatch {
                reference: self.to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok((bytes, actual))
    }
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginRef::Builtin(n) => write!(f, "builtin:{n}"),
            PluginRef::File { path, sha256: None } => write!(f, "{}", path.display()),
            PluginRef::File { path, sha256: Some(h) } => write!(f, "{}#sha256:{h}", path.display()),
            PluginRef::Oci { reference, .. } => write!(f, "{reference}"),
        }
    }
}

/// The embedded bytes of builtin `name`.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(PluginRef::parse("builtin:tag-default").unwrap(), PluginRef::Builtin("tag-default".into()));
        assert_eq!(PluginRef::parse("a/b.wasm").unwrap(), PluginRef::File { path: "a/b.wasm".into(), sha256: None });
        let h = "AB".repeat(32);
        assert_eq!(
            PluginRef::parse(&format!("x.wasm#sha256:{h}")).unwrap(),
            PluginRef::File { path: "x.wasm".into(), sha256: Some(h.to_lowercase()) }
        );
        for bad in ["", "x.wasm#md5:00", "x.wasm#sha256:abc", "#sha256:".to_string().as_str()] {
            let e = PluginRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains("plugin reference"), "{e}");
        }
    }

    #[test]
    fn pinned_digest_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.wasm");
        std::fs::write(&p, b"hello").unwrap();
        let r = PluginRef::parse(&format!("{}#sha256:{}", p.display(), "0".repeat(64))).unwrap();
        let e = r.read().unwrap_err().to_string();
        assert!(e.contains("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"), "{e}");
        let ok = PluginRef::parse(&format!(
            "{}#sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            p.display()
        ))
        .unwrap();
        assert_eq!(ok.read().unwrap().0, b"hello");
    }

    #[test]
    fn unknown_builtin_lists_the_known_ones() {
        let e = PluginRef::Builtin("nope".into()).read().unwrap_err().to_string();
        assert!(e.contains("builtin:tag-default"), "{e}");
    }
}
