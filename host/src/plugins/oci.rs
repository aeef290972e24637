//! Plugins distributed through OCI registries: the artifact layout prpod pushes and accepts, the
//! content-addressed cache, and fetching with every digest checked.
//!
//! Layout (the CNCF TAG-Runtime "wasm OCI artifact" layout):
//! - an OCI image manifest with exactly one layer, `application/wasm` (the component);
//! - config `application/vnd.wasm.config.v0+json` with `component.exports`, `component.imports`
//!   and `component.target`, which prpod fills with `prpod:plugin/<world>@<version>` (the
//!   reference tooling leaves it empty);
//! - `org.opencontainers.image.{title,version,source,created}` annotations.
//!
//! Kubewarden's older media types (config `application/vnd.wasm.config.v1+json`, layer
//! `application/vnd.wasm.content.layer.v1+wasm`) are accepted on pull as a compatibility; any
//! other media type, an index, or more than one layer is refused, as the layout's spec asks of
//! consumers.
//!
//! Cache: `<cache>/oci/blobs/sha256/<hex>` holds manifests and layers by digest, written to a
//! temporary file in the same directory and renamed into place, and re-hashed every time they
//! are read; a file whose hash is not its name is reported (and refetched when the network may
//! be used).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::clients::registry::{
    ImageName, ImageReference, OciDescriptor, OciImageManifest, RawManifest, RegistryClient, RegistryError,
};
use crate::error::PhaseError;

use super::wit_version::{self, ComponentFacts};

/// The scheme of an OCI plugin reference.
pub const SCHEME: &str = "oci://";
/// The OCI image manifest media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Config media type of the wasm OCI artifact layout.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of the wasm OCI artifact layout.
pub const WASM_LAYER: &str = "application/wasm";
/// Kubewarden's config media type (accepted on pull).
pub const KUBEWARDEN_CONFIG: &str = "application/vnd.wasm.config.v1+json";
/// Kubewarden's layer media type (accepted on pull).
pub const KUBEWARDEN_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Largest component prpod pulls (the same bound as a plugin file).
pub const MAX_LAYER_BYTES: u64 = crate::input::MAX_PLUGIN_BYTES;

/// `oci://REGISTRY/REPO:TAG`, `oci://REGISTRY/REPO@sha256:...` or both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OciRef {
    /// The repository (registry host included).
    pub name: ImageName,
    /// The tag, when given.
    pub tag: Option<String>,
    /// The manifest digest, when pinned.
    pub digest: Option<String>,
}

impl OciRef {
    /// Parses `oci://REGISTRY/REPO:TAG` or `oci://REGISTRY/REPO[:TAG]@sha256:<64 hex>`. The
    /// registry must be written out (no Docker Hub default), and a tag or digest is required.
    pub fn parse(text: &str) -> Result<OciRef, String> {
        let rest = text.strip_prefix(SCHEME).ok_or_else(|| format!("it does not start with `{SCHEME}`"))?;
        let host = rest.split('/').next().unwrap_or_default();
        if !rest.contains('/') || !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(
                "write the registry host out: `oci://REGISTRY/REPOSITORY:TAG` (e.g. oci://ghcr.io/acme/policy:1.0.0)"
                    .into(),
            );
        }
        let (name_part, digest) = match rest.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (rest, None),
        };
        let last = name_part.rsplit('/').next().unwrap_or_default();
        if digest.is_none() && !last.contains(':') {
            return Err("give a tag (`:1.0.0`) or a digest (`@sha256:...`); prpod does not assume `latest`".into());
        }
        if let Some(d) = digest {
            let hex = d.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
                return Err("the digest must be `sha256:` followed by 64 lowercase hex digits".into());
            }
        }
        let parsed = ImageReference::parse(rest).map_err(|e| e.to_string())?.value;
        let tag = if last.contains(':') { parsed.tag } else { None };
        Ok(OciRef { name: parsed.name, tag, digest: parsed.digest })
    }

    /// The reference the registry client takes.
    pub fn image_reference(&self) -> ImageReference {
        ImageReference { name: self.name.clone(), tag: self.tag.clone(), digest: self.digest.clone() }
    }

    /// This repository pinned to `digest` (the tag kept for people).
    pub fn pinned(&self, digest: &str) -> OciRef {
        OciRef { digest: Some(digest.to_string()), ..self.clone() }
    }
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// An OCI plugin whose bytes are at hand, verified: the manifest's digest, the layer's digest,
/// and the component.
#[derive(Clone)]
pub struct Fetched {
    /// `sha256:` of the manifest.
    pub manifest_digest: String,
    /// `sha256:` of the component (the one layer).
    pub layer_digest: String,
    /// The component; its sha256 is `layer_digest`. `Bytes`, so the buffer it was read or
    /// pulled into is shared as is (an `Arc<[u8]>` copied 20 MB once more).
    pub bytes: bytes::Bytes,
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("manifest_digest", &self.manifest_digest)
            .field("layer_digest", &self.layer_digest)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl PartialEq for Fetched {
    fn eq(&self, other: &Self) -> bool {
        self.manifest_digest == other.manifest_digest && self.layer_digest == other.layer_digest
    }
}

impl Eq for Fetched {}

/// What can go wrong getting an OCI plugin. Each message names the plugin reference.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The artifact is not a prpod plugin in the wasm OCI layout.
    #[error("refusing plugin {reference}: {why}")]
    Layout {
        /// The plugin.
        reference: String,
        /// What is wrong with it.
        why: String,
    },
    /// A digest differs from the one expected (the lock, the reference, or a cache file's name).
    #[error(
        "refusing to run plugin {reference}: its {what} has digest {actual}, but {expected} was expected ({whence})"
    )]
    DigestMismatch {
        /// The plugin.
        reference: String,
        /// `manifest`, `layer`, or `cached layer`.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was found.
        actual: String,
        /// Where the expectation came from and what to do.
        whence: String,
    },
    /// A cache file could not be read or written.
    #[error("failed to {action} the plugin cache file {}: {source}", path.display())]
    Cache {
        /// `read`, `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No cache directory (`PRPOD_CACHE_DIR=off` and no home).
    #[error(
        "OCI plugins need a cache directory, and there is none (PRPOD_CACHE_DIR=off or no home directory); set \
         PRPOD_CACHE_DIR to a directory"
    )]
    NoCache,
}

/// The content-addressed cache of OCI blobs.
#[derive(Debug, Clone)]
pub struct OciCache {
    root: PathBuf,
}

impl OciCache {
    /// The cache under prpod's cache directory ([`crate::config::cache_dir`]).
    pub fn from_env() -> Result<OciCache, OciError> {
        crate::config::cache_dir().map(|d| OciCache::at(d.join("oci"))).ok_or(OciError::NoCache)
    }

    /// A cache rooted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> OciCache {
        OciCache { root: root.into() }
    }

    /// The directory blobs live in.
    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// The file of blob `digest` (`sha256:<hex>`); `None` for a digest that is not sha256 hex.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit())).then(|| self.blob_dir().join(hex))
    }

    /// The file a signature manifest for `digest` is kept in.
    pub fn signature_path(&self, digest: &str) -> PathBuf {
        self.root.join("signatures").join(signature_tag(digest))
    }

    /// Reads blob `digest`, re-hashing it: `Ok(None)` when absent, `Err((path, actual))` when
    /// its content is not its digest (tampered or torn).
    pub fn read(&self, digest: &str, max: u64) -> Result<Option<Vec<u8>>, CacheFault> {
        let Some(path) = self.blob_path(digest) else { return Ok(None) };
        let bytes = match crate::input::read_regular_file(&path, max, "cached plugin blob") {
            Ok(b) => b,
            Err(e) => {
                let io = e.into_io();
                return if io.kind() == std::io::ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(CacheFault::Io(OciError::Cache { action: "read", path, source: io }))
                };
            }
        };
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(CacheFault::Tampered { path, actual });
        }
        Ok(Some(bytes))
    }

    /// Writes `bytes` as blob `digest` (temporary file, then rename).
    pub fn write(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, OciError> {
        let path = self.blob_path(digest).ok_or_else(|| OciError::Cache {
            action: "write",
            path: self.blob_dir(),
            source: std::io::Error::other(format!("`{digest}` is not a sha256 digest")),
        })?;
        write_atomic(&path, bytes)?;
        Ok(path)
    }

    /// Moves a pulled (verified) blob into place.
    pub fn persist(&self, digest: &str, file: tempfile::NamedTempFile) -> Result<PathBuf, OciError> {
        let path = self.blob_path(digest).ok_or_else(|| OciError::Cache {
            action: "write",
            path: self.blob_dir(),
            source: std::io::Error::other(format!("`{digest}` is not a sha256 digest")),
        })?;
        file.persist(&path).map_err(|e| OciError::Cache { action: "write", path: path.clone(), source: e.error })?;
        Ok(path)
    }

    /// Creates the blob directory.
    pub fn ensure(&self) -> Result<PathBuf, OciError> {
        let dir = self.blob_dir();
        std::fs::create_dir_all(&dir).map_err(|e| OciError::Cache { action: "write", path: dir.clone(), source: e })?;
        Ok(dir)
    }
}

/// Why a cache read failed.
#[derive(Debug)]
pub enum CacheFault {
    /// The file's content is not its digest.
    Tampered {
        /// The file.
        path: PathBuf,
        /// The digest of what it holds.
        actual: String,
    },
    /// It could not be read.
    Io(OciError),
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    let err = |e: std::io::Error| OciError::Cache { action: "write", path: path.to_path_buf(), source: e };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::Builder::new().prefix(".partial-").tempfile_in(dir).map_err(err)?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// The tag cosign's legacy scheme stores a signature of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// The artifact prpod pushes for a component: its config blob and its manifest.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The config blob (`application/vnd.wasm.config.v0+json`).
    pub config: Vec<u8>,
    /// The manifest.
    pub manifest: RawManifest,
    /// `sha256:` of the component.
    pub layer_digest: String,
    /// What `component.target` says.
    pub target: String,
}

/// What goes into an artifact besides the component.
#[derive(Debug, Clone, Default)]
pub struct ArtifactMeta {
    /// `org.opencontainers.image.title` (default: the file name).
    pub title: String,
    /// `org.opencontainers.image.version` (default: the tag).
    pub version: Option<String>,
    /// `org.opencontainers.image.source`, when given.
    pub source: Option<String>,
    /// `created`, RFC 3339.
    pub created: String,
}

/// Builds the wasm OCI artifact for `component`, which implements `worlds`.
pub fn build_artifact(
    component: &[u8],
    facts: &ComponentFacts,
    worlds: &[super::World],
    meta: &ArtifactMeta,
) -> Artifact {
    let layer_digest = crate::clients::registry::sha256_digest(component);
    let version = facts.version.clone().unwrap_or_else(|| wit_version::CURRENT.to_string());
    let target =
        worlds.iter().map(|w| format!("{}/{}@{version}", wit_version::PACKAGE, w.name())).collect::<Vec<_>>().join(",");
    let config = serde_json::json!({
        "created": meta.created,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
        "component": {
            "exports": facts.exports,
            "imports": facts.imports,
            "target": target,
        },
    });
    let config = serde_json::to_vec(&config).expect("JSON of strings");
    let mut annotations = BTreeMap::from([
        ("org.opencontainers.image.title".to_string(), meta.title.clone()),
        ("org.opencontainers.image.created".to_string(), meta.created.clone()),
    ]);
    if let Some(v) = &meta.version {
        annotations.insert("org.opencontainers.image.version".into(), v.clone());
    }
    if let Some(s) = &meta.source {
        annotations.insert("org.opencontainers.image.source".into(), s.clone());
    }
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        config: OciDescriptor {
            media_type: WASM_CONFIG.into(),
            digest: crate::clients::registry::sha256_digest(&config),
            size: config.len() as i64,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: WASM_LAYER.into(),
            digest: layer_digest.clone(),
            size: component.len() as i64,
            ..Default::default()
        }],
        subject: None,
        artifact_type: None,
        annotations: Some(annotations),
    };
    let bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
    let manifest = RawManifest {
        digest: crate::clients::registry::sha256_digest(&bytes),
        bytes,
        media_type: MANIFEST_MEDIA_TYPE.into(),
    };
    Artifact { config, manifest, layer_digest, target }
}

/// Checks a pulled manifest is a plugin artifact and returns its one layer.
pub fn plugin_layer(reference: &str, bytes: &[u8], media_type: &str) -> Result<OciDescriptor, OciError> {
    let refuse = |why: String| OciError::Layout { reference: reference.to_string(), why };
    if media_type.contains("index") || media_type.contains("manifest.list") {
        return Err(refuse(format!("it is an image index ({media_type}), not a plugin artifact")));
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(bytes).map_err(|e| refuse(format!("its manifest is not an OCI image manifest: {e}")))?;
    if let Some(mt) = &manifest.media_type
        && mt != MANIFEST_MEDIA_TYPE
    {
        return Err(refuse(format!("its manifest media type is {mt}, not {MANIFEST_MEDIA_TYPE}")));
    }
    let config = manifest.config.media_type.as_str();
    if config != WASM_CONFIG && config != KUBEWARDEN_CONFIG {
        return Err(refuse(format!(
            "its config media type is {config}; a plugin artifact has {WASM_CONFIG} (or Kubewarden's {KUBEWARDEN_CONFIG})"
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(refuse(format!(
            "it has {} layers; a plugin artifact has exactly one, the component",
            manifest.layers.len()
        )));
    };
    if layer.media_type != WASM_LAYER && layer.media_type != KUBEWARDEN_LAYER {
        return Err(refuse(format!(
            "its layer media type is {}; a plugin artifact's is {WASM_LAYER} (or Kubewarden's {KUBEWARDEN_LAYER})",
            layer.media_type
        )));
    }
    if layer.size < 0 || layer.size as u64 > MAX_LAYER_BYTES {
        return Err(refuse(format!("its component is {} bytes; prpod loads at most {MAX_LAYER_BYTES}", layer.size)));
    }
    Ok(layer.clone())
}

/// Loads plugin `reference` at manifest `manifest_digest` from the cache alone, every file
/// re-hashed; `expected_layer` (from the lock) must be the manifest's layer. `Ok(None)` when a
/// file is missing; a file whose content is not its digest is an error naming both digests.
pub fn load_cached(
    cache: &OciCache,
    reference: &str,
    manifest_digest: &str,
    expected_layer: Option<&str>,
) -> Result<Option<Fetched>, OciError> {
    let tampered = |what: &'static str, expected: &str, path: PathBuf, actual: String| OciError::DigestMismatch {
        reference: reference.to_string(),
        what,
        expected: expected.to_string(),
        actual,
        whence: format!(
            "the cache file {} was changed after prpod wrote it; delete it and run again to refetch",
            path.display()
        ),
    };
    let manifest = match cache.read(manifest_digest, 8 << 20) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(CacheFault::Tampered { path, actual }) => {
            return Err(tampered("cached manifest", manifest_digest, path, actual));
        }
        Err(CacheFault::Io(e)) => return Err(e),
    };
    let layer = plugin_layer(reference, &manifest, MANIFEST_MEDIA_TYPE)?;
    check_layer(reference, &layer.digest, expected_layer)?;
    let bytes = match cache.read(&layer.digest, MAX_LAYER_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(CacheFault::Tampered { path, actual }) => {
            return Err(tampered("cached layer", &layer.digest, path, actual));
        }
        Err(CacheFault::Io(e)) => return Err(e),
    };
    Ok(Some(Fetched { manifest_digest: manifest_digest.to_string(), layer_digest: layer.digest, bytes: bytes.into() }))
}

fn check_layer(reference: &str, actual: &str, expected: Option<&str>) -> Result<(), OciError> {
    match expected {
        Some(e) if e != actual => Err(OciError::DigestMismatch {
            reference: reference.to_string(),
            what: "layer",
            expected: e.to_string(),
            actual: actual.to_string(),
            whence: "prpod.lock records that layer for this manifest; the lock or the registry was tampered with"
                .into(),
        }),
        _ => Ok(()),
    }
}

/// Fetches plugin `reference` from its registry into `cache`: the manifest (by `manifest_digest`
/// when given, else by the reference's digest or tag), checked to be a plugin artifact, then its
/// layer, streamed to disk with its digest checked. `expected_layer` must match when given.
pub async fn fetch(
    client: &RegistryClient,
    cache: &OciCache,
    reference: &OciRef,
    manifest_digest: Option<&str>,
    expected_layer: Option<&str>,
) -> anyhow::Result<Fetched> {
    let text = reference.to_string();
    // Registry errors stay in the chain as themselves: their kind decides the exit code.
    let registry = |source: RegistryError| {
        anyhow::Error::new(PhaseError::outside_line(source)).context(format!("failed to fetch plugin {text}"))
    };
    let wanted = match manifest_digest {
        Some(d) => reference.pinned(d),
        None => reference.clone(),
    };
    let raw = client.fetch_manifest(&wanted.image_reference()).await.map_err(|e| match e {
        // `fetch_manifest` refuses a manifest whose digest is not the pinned one: say which.
        RegistryError::Protocol { ref detail, .. }
            if detail.starts_with("the registry sent a manifest with digest") =>
        {
            OciError::DigestMismatch {
                reference: text.clone(),
                what: "manifest",
                expected: wanted.digest.clone().unwrap_or_default(),
                actual: detail.rsplit(' ').next().unwrap_or_default().to_string(),
                whence: "the registry answered with other content than the pinned digest".into(),
            }
            .into()
        }
        other => registry(other),
    })?;
    let layer = plugin_layer(&text, &raw.bytes, &raw.media_type)?;
    check_layer(&text, &layer.digest, expected_layer)?;
    let dir = cache.ensure()?;
    cache.write(&raw.digest, &raw.bytes)?;
    let bytes = match cache.read(&layer.digest, MAX_LAYER_BYTES) {
        Ok(Some(b)) => b,
        // Absent or damaged: pull it (a damaged file is replaced by the rename).
        _ => {
            let pulled = client
                .pull_blob_to(&reference.name, &layer.digest, Some(layer.size as u64), MAX_LAYER_BYTES, &dir, true)
                .await
                .map_err(registry)?;
            cache.persist(&layer.digest, pulled.file)?;
            // The bytes that were hashed while they streamed: reading the file back to hash it
            // again cost a second pass over the component. Later runs re-hash the file when
            // they read it (`OciCache::read`).
            pulled.bytes.expect("pulled with keep_bytes")
        }
    };
    Ok(Fetched { manifest_digest: raw.digest, layer_digest: layer.digest, bytes: bytes.into() })
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oci_references() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = OciRef::parse("oci://127.0.0.1:5000/Org/Policy:V1").unwrap();
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/org/policy:V1");
        let r = OciRef::parse(&format!("oci://ghcr.io/acme/p@{d}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, Some(d.as_str())));
        let r = OciRef::parse(&format!("oci://ghcr.io/acme/p:1.0@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        for bad in ["oci://acme/policy:1", "oci://ghcr.io/acme/policy", "oci://ghcr.io/a@sha256:12", "ghcr.io/a:1"] {
            assert!(OciRef::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", "a".repeat(64)));
    }

    #[test]
    fn artifact_layout_and_what_pull_accepts() {
        let component = super::super::reference::builtin("verify-baseline").unwrap();
        let facts = ComponentFacts::read(component).unwrap();
        let meta = ArtifactMeta { title: "verify.wasm".into(), version: Some("1.0.0".into()), ..Default::default() };
        let a = build_artifact(component, &facts, &[super::super::World::Verifier], &meta);
        assert_eq!(a.target, "prpod:plugin/verifier@0.2.0");
        let m: serde_json::Value = serde_json::from_slice(&a.manifest.bytes).unwrap();
        assert_eq!(m["config"]["mediaType"], WASM_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], WASM_LAYER);
        assert_eq!(m["annotations"]["org.opencontainers.image.version"], "1.0.0");
        let c: serde_json::Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(c["component"]["target"], "prpod:plugin/verifier@0.2.0");
        assert!(c["component"]["exports"].as_array().unwrap().iter().any(|e| e == "check-manifests"), "{c}");
        let layer = plugin_layer("p", &a.manifest.bytes, MANIFEST_MEDIA_TYPE).unwrap();
        assert_eq!(layer.digest, a.layer_digest);

        let mut two = m.clone();
        two["layers"] = serde_json::json!([m["layers"][0], m["layers"][0]]);
        let e = plugin_layer("p", two.to_string().as_bytes(), MANIFEST_MEDIA_TYPE).unwrap_err().to_string();
        assert!(e.contains("2 layers"), "{e}");
        let mut image = m.clone();
        image["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        assert!(plugin_layer("p", image.to_string().as_bytes(), MANIFEST_MEDIA_TYPE).is_err());
        let mut kw = m.clone();
        kw["config"]["mediaType"] = KUBEWARDEN_CONFIG.into();
        kw["layers"][0]["mediaType"] = KUBEWARDEN_LAYER.into();
        plugin_layer("p", kw.to_string().as_bytes(), MANIFEST_MEDIA_TYPE).unwrap();
        assert!(plugin_layer("p", b"{}", "application/vnd.oci.image.index.v1+json").is_err());
    }

    #[test]
    fn cache_rehashes_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = OciCache::at(dir.path());
        let digest = crate::clients::registry::sha256_digest(b"component");
        assert!(matches!(cache.read(&digest, 100), Ok(None)));
        let path = cache.write(&digest, b"component").unwrap();
        assert_eq!(cache.read(&digest, 100).unwrap().unwrap(), b"component");
        std::fs::write(&path, b"tampered!").unwrap();
        match cache.read(&digest, 100) {
            Err(CacheFault::Tampered { actual, .. }) => assert_ne!(actual, digest),
            other => panic!("{other:?}"),
        }
    }
}
