//! An image to push: a manifest plus where each of its blobs comes from, either an OCI image
//! layout on disk (what native builds write, what `skopeo copy oci:` reads) or another
//! repository (base layers that are never downloaded: the registry mounts them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest,
};

use super::{ImageName, RawManifest, RegistryError, sha256_digest};

/// Where a blob's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobSource {
    /// A file (`blobs/sha256/<hex>` of a layout).
    File(PathBuf),
    /// A repository (on this registry: mounted; on another: streamed through, never stored).
    Remote(ImageName),
}

/// An image ready to push.
#[derive(Debug, Clone)]
pub struct OciImage {
    manifest: RawManifest,
    blobs: Vec<(OciDescriptor, BlobSource)>,
    index_from: Option<ImageName>,
    dir: Option<PathBuf>,
}

/// Blobs a layout references but does not hold, and the repository holding each
/// (`{"sha256:...": "registry/repo"}`): a native build's base layers.
const SOURCES_FILE: &str = "prpod-blob-sources.json";

impl OciImage {
    /// Reads an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`) holding
    /// one image manifest (the first, when `index.json` lists several).
    pub fn open(dir: impl AsRef<Path>) -> Result<OciImage, RegistryError> {
        let dir = dir.as_ref();
        let bad = |detail: String| RegistryError::Layout { path: dir.to_path_buf(), detail };
        let index_path = dir.join("index.json");
        let index = std::fs::read(&index_path).map_err(|e| RegistryError::io("read", &index_path, e))?;
        let index: oci_client::manifest::OciImageIndex =
            serde_json::from_slice(&index).map_err(|e| bad(format!("index.json: {e}")))?;
        let entry = index.manifests.first().ok_or_else(|| bad("index.json lists no manifest".into()))?;
        let manifest_path = blob_path(dir, &entry.digest).ok_or_else(|| bad(format!("bad digest {}", entry.digest)))?;
        let bytes = std::fs::read(&manifest_path).map_err(|e| RegistryError::io("read", &manifest_path, e))?;
        if sha256_digest(&bytes) != entry.digest {
            return Err(bad(format!("the manifest blob does not match its digest {}", entry.digest)));
        }
        let sources: BTreeMap<String, String> = match std::fs::read(dir.join(SOURCES_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| bad(format!("{SOURCES_FILE}: {e}")))?,
            Err(_) => BTreeMap::new(),
        };
        let manifest = RawManifest { digest: entry.digest.clone(), bytes, media_type: entry.media_type.clone() };
        let parsed = parse_image_manifest(&manifest).map_err(bad)?;
        let mut blobs = Vec::new();
        for desc in std::iter::once(parsed.config.clone()).chain(parsed.layers.iter().cloned()) {
            let path = blob_path(dir, &desc.digest).ok_or_else(|| bad(format!("bad digest {}", desc.digest)))?;
            let source = if path.is_file() {
                BlobSource::File(path)
            } else if let Some(repo) = sources.get(&desc.digest) {
                let (registry, repository) = repo
                    .split_once('/')
                    .ok_or_else(|| bad(format!("{SOURCES_FILE}: `{repo}` is not registry/repository")))?;
                BlobSource::Remote(ImageName::new(registry, repository))
            } else {
                return Err(bad(format!("blob {} is neither in blobs/sha256 nor in {SOURCES_FILE}", desc.digest)));
            };
            blobs.push((desc, source));
        }
        Ok(OciImage { manifest, blobs, index_from: None, dir: Some(dir.to_path_buf()) })
    }

    /// Writes a layout: the config and the manifest into `dir/blobs/sha256`, `index.json`,
    /// `oci-layout`, and the sources of `remote` blobs. `layers` are descriptors of blobs already
    /// in `dir/blobs/sha256` (written by the caller) or listed in `remote`.
    pub fn write(
        dir: impl AsRef<Path>,
        config: &[u8],
        layers: Vec<OciDescriptor>,
        remote: &BTreeMap<String, ImageName>,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Result<OciImage, RegistryError> {
        let dir = dir.as_ref();
        let config_desc = OciDescriptor {
            media_type: oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE.into(),
            digest: sha256_digest(config),
            size: config.len() as i64,
            urls: None,
            annotations: None,
            artifact_type: None,
        };
        write_blob(dir, config)?;
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
            config: config_desc,
            layers,
            subject: None,
            artifact_type: None,
            annotations,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| RegistryError::Config(e.to_string()))?;
        let digest = write_blob(dir, &bytes)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": [{"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": digest, "size": bytes.len()}],
        });
        let sources: BTreeMap<&String, String> = remote.iter().map(|(d, n)| (d, n.to_string())).collect();
        for (name, content) in [
            ("index.json", index.to_string()),
            ("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#.to_string()),
            (SOURCES_FILE, serde_json::to_string(&sources).expect("a map of strings")),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, content).map_err(|e| RegistryError::io("write", &path, e))?;
        }
        OciImage::open(dir)
    }

    /// An image that lives in a registry already (for retagging): every blob comes from `from`.
    pub fn remote(manifest: RawManifest, from: &ImageName) -> Result<OciImage, RegistryError> {
        let is_index =
            manifest.media_type == OCI_IMAGE_INDEX_MEDIA_TYPE || manifest.media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE;
        if is_index {
            return Ok(OciImage { manifest, blobs: Vec::new(), index_from: Some(from.clone()), dir: None });
        }
        let parsed = parse_image_manifest(&manifest).map_err(|detail| RegistryError::Protocol {
            host: from.api_host().to_string(),
            what: format!("read a manifest of {from}"),
            detail,
        })?;
        let blobs = std::iter::once(parsed.config.clone())
            .chain(parsed.layers.iter().cloned())
            .map(|d| (d, BlobSource::Remote(from.clone())))
            .collect();
        Ok(OciImage { manifest, blobs, index_from: None, dir: None })
    }

    /// The file of blob `digest` in the layout at `dir`, when it is there.
    pub fn layout_blob(dir: &Path, digest: &str) -> Option<PathBuf> {
        blob_path(dir, digest).filter(|p| p.is_file())
    }

    /// The manifest digest: what the registry will report after a push.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// The manifest as it will be pushed.
    pub fn manifest(&self) -> &RawManifest {
        &self.manifest
    }

    /// Every blob (config first, then layers) and where it comes from.
    pub fn blobs(&self) -> &[(OciDescriptor, BlobSource)] {
        &self.blobs
    }

    /// The layout directory, for images read from or written to disk.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// For an image index being retagged: the repository its manifests live in (an index can
    /// only be retagged within it).
    pub(crate) fn index_from(&self) -> Option<&ImageName> {
        self.index_from.as_ref()
    }
}

fn parse_image_manifest(m: &RawManifest) -> Result<OciImageManifest, String> {
    serde_json::from_slice(&m.bytes).map_err(|e| format!("not an image manifest ({}): {e}", m.media_type))
}

/// `dir/blobs/sha256/<hex>` for `sha256:<hex>`; `None` for anything else (no path tricks).
pub(crate) fn blob_path(dir: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| dir.join("blobs/sha256").join(hex))
}

/// Writes `bytes` as a blob of the layout in `dir`; returns its digest.
pub(crate) fn write_blob(dir: &Path, bytes: &[u8]) -> Result<String, RegistryError> {
    let digest = sha256_digest(bytes);
    let path = blob_path(dir, &digest).expect("a sha256 digest");
    let parent = path.parent().expect("blobs/sha256");
    std::fs::create_dir_all(parent).map_err(|e| RegistryError::io("create", parent, e))?;
    std::fs::write(&path, bytes).map_err(|e| RegistryError::io("write", &path, e))?;
    Ok(digest)
}
