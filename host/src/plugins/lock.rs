//! `prpod.lock`: which manifest (and layer) each OCI plugin reference resolved to, and resolving
//! references through it.
//!
//! ```toml
//! # Written by prpod; commit it. `prpod plugin update [REF]` re-resolves.
//! version = 1
//!
//! [[plugin]]
//! ref = "oci://ghcr.io/acme/policy:1.2.0"
//! manifest = "sha256:…"   # the manifest digest: what a tag pointed to
//! layer = "sha256:…"      # the component's digest inside it
//! resolved_at = "2026-12-04T17:40:00Z"
//! ```
//!
//! A reference in the lock is used at its locked manifest digest; with its manifest and layer in
//! the cache no request is made at all. A tag is asked about only when something has to be
//! fetched anyway (a cold or damaged cache), and if it moved that is reported while the locked
//! digest is kept. A reference not in the lock is resolved and added, unless `--locked`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::oci::{self, Fetched, OciCache, OciError, OciRef};
use super::trust::TrustedKeys;
use crate::clients::registry::{ImageName, RegistryClient};

/// The lock file's name; it lives next to prpod.toml.
pub const LOCK_FILE: &str = "prpod.lock";

/// The lock file's format version.
const VERSION: u32 = 1;

/// One locked plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// The reference as written in prpod.toml.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The manifest digest it resolved to.
    pub manifest: String,
    /// The component's (layer's) digest.
    pub layer: String,
    /// When it was resolved (RFC 3339).
    pub resolved_at: String,
}

/// The whole of prpod.lock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// Format version (1).
    pub version: u32,
    /// The plugins, sorted by reference.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<LockEntry>,
}

impl LockFile {
    /// Reads `path`; an absent file is an empty lock.
    pub fn read(path: &Path) -> anyhow::Result<LockFile> {
        use anyhow::Context;
        if !path.exists() {
            return Ok(LockFile { version: VERSION, plugins: Vec::new() });
        }
        let text = crate::input::read_text_file(path, crate::input::MAX_CONFIG_BYTES, "lock file")?;
        let lock: LockFile = toml::from_str(&text).with_context(|| {
            format!("failed to parse {}; fix it or delete it and run `prpod plugin update`", path.display())
        })?;
        if lock.version != VERSION {
            anyhow::bail!("{} has version {}; this prpod reads version {VERSION}", path.display(), lock.version);
        }
        Ok(lock)
    }

    /// Writes the lock to `path` (temporary file and rename).
    pub fn write(&self, path: &Path) -> Result<(), OciError> {
        let mut sorted = self.clone();
        sorted.plugins.sort_by(|a, b| a.reference.cmp(&b.reference));
        let body = toml::to_string(&sorted).expect("a lock serialises");
        let text = format!("# Written by prpod; commit it. `prpod plugin update [REF]` re-resolves.\n{body}");
        oci::write_atomic(path, text.as_bytes())
    }

    /// The entry of `reference`.
    pub fn get(&self, reference: &str) -> Option<&LockEntry> {
        self.plugins.iter().find(|e| e.reference == reference)
    }

    fn set(&mut self, entry: LockEntry) {
        self.plugins.retain(|e| e.reference != entry.reference);
        self.plugins.push(entry);
    }
}

/// Where the lock of a config lives: next to the file, else in the working directory.
pub fn lock_path(config_path: Option<&Path>) -> PathBuf {
    match config_path.and_then(Path::parent) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(LOCK_FILE),
        _ => PathBuf::from(LOCK_FILE),
    }
}

/// How to resolve.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// `--locked`: a reference not in the lock is an error; the lock is never written.
    pub locked: bool,
    /// References to re-resolve even though locked (`prpod plugin update`); `Some(empty)` means all.
    pub update: Option<Vec<String>>,
    /// Write the lock when it changed (runs and `update` do; `plugin check` does not).
    pub write: bool,
}

/// A reference `--locked` could not resolve.
#[derive(Debug, thiserror::Error)]
#[error(
    "--locked: {} not in {lock}; run `prpod plugin update` (or a run without --locked) and commit the lock",
    refs.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ") + if refs.len() == 1 { " is" } else { " are" }
)]
pub struct NotLocked {
    /// The references.
    pub refs: Vec<String>,
    /// The lock file.
    pub lock: String,
}

/// What resolving did.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Each reference's verified component.
    pub plugins: BTreeMap<String, Fetched>,
    /// Lines for people: a moved tag, a refetched cache file, a written lock.
    pub notes: Vec<String>,
    /// The lock's entries for the references resolved.
    pub entries: Vec<LockEntry>,
    /// Whether the lock file was written.
    pub lock_written: bool,
}

/// Resolves every OCI reference in `refs` through the lock at `lock_path` and `cache`,
/// fetching only what is missing, checking `trust` when it has keys. `client_for` makes the
/// registry client for a repository; it is called only when the network is needed.
pub async fn resolve(
    refs: &[String],
    lock_path: &Path,
    cache: &OciCache,
    trust: &TrustedKeys,
    options: &ResolveOptions,
    client_for: &(dyn Fn(&ImageName) -> anyhow::Result<RegistryClient> + Send + Sync),
) -> anyhow::Result<Resolution> {
    let mut lock = LockFile::read(lock_path)?;
    let before = lock.clone();
    let mut out = Resolution::default();
    let update = |r: &str| options.update.as_ref().is_some_and(|u| u.is_empty() || u.iter().any(|x| x == r));
    let missing: Vec<String> = refs.iter().filter(|r| lock.get(r).is_none() || update(r)).cloned().collect::<Vec<_>>();
    if options.locked && !missing.is_empty() {
        return Err(NotLocked { refs: missing, lock: lock_path.display().to_string() }.into());
    }
    for text in refs {
        if out.plugins.contains_key(text) {
            continue;
        }
        let reference =
            OciRef::parse(text).map_err(|why| anyhow::anyhow!("invalid plugin reference `{text}`: {why}"))?;
        let locked = lock.get(text).filter(|_| !update(text)).cloned();
        let mut client: Option<RegistryClient> = None;
        let fetched = match &locked {
            Some(entry) => {
                if let Some(pinned) = &reference.digest
                    && *pinned != entry.manifest
                {
                    return Err(OciError::DigestMismatch {
                        reference: text.clone(),
                        what: "manifest",
                        expected: pinned.clone(),
                        actual: entry.manifest.clone(),
                        whence: format!(
                            "the reference pins it, {} records the other; fix the lock",
                            lock_path.display()
                        ),
                    }
                    .into());
                }
                match oci::load_cached(cache, text, &entry.manifest, Some(&entry.layer)) {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        let c = client.insert(client_for(&reference.name)?);
                        fetch_locked(c, cache, &reference, entry, &mut out.notes).await?
                    }
                    Err(e @ OciError::DigestMismatch { .. }) if !options.locked => {
                        out.notes.push(format!("{e}; refetching it"));
                        remove_tampered(cache, entry);
                        let c = client.insert(client_for(&reference.name)?);
                        fetch_locked(c, cache, &reference, entry, &mut out.notes).await?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                let c = client.insert(client_for(&reference.name)?);
                let f = oci::fetch(c, cache, &reference, reference.digest.as_deref(), None).await?;
                if let Some(old) = before.get(text)
                    && old.manifest != f.manifest_digest
                {
                    out.notes.push(format!("{text} updated: {} -> {}", old.manifest, f.manifest_digest));
                }
                f
            }
        };
        if !trust.is_empty() {
            let key = super::trust::ensure_signed(
                trust,
                cache,
                &reference,
                &fetched.manifest_digest,
                &mut client,
                client_for,
            )
            .await?;
            tracing::debug!(plugin = %text, key = %key, "signature verified");
        }
        let entry = match locked {
            Some(e) => e,
            None => LockEntry {
                reference: text.clone(),
                manifest: fetched.manifest_digest.clone(),
                layer: fetched.layer_digest.clone(),
                resolved_at: oci::now_rfc3339(),
            },
        };
        lock.set(entry.clone());
        out.entries.push(entry);
        out.plugins.insert(text.clone(), fetched);
    }
    if options.write && !options.locked && lock != before {
        lock.write(lock_path)?;
        out.lock_written = true;
    }
    Ok(out)
}

/// Fetches a locked plugin at its locked digests; when it was locked by tag, also says whether
/// the tag moved (the locked digest is used either way).
async fn fetch_locked(
    client: &RegistryClient,
    cache: &OciCache,
    reference: &OciRef,
    entry: &LockEntry,
    notes: &mut Vec<String>,
) -> anyhow::Result<Fetched> {
    if reference.digest.is_none()
        && let Ok(Some(now)) = client.manifest_digest(&reference.image_reference()).await
        && now != entry.manifest
    {
        notes.push(format!(
            "tag {reference} moved: it now points to {now}, prpod.lock has {}; running the locked digest \
             (`prpod plugin update {reference}` takes the new one)",
            entry.manifest
        ));
    }
    oci::fetch(client, cache, reference, Some(&entry.manifest), Some(&entry.layer)).await
}

/// Deletes cache files whose content is not their name, so the fetch rewrites them.
fn remove_tampered(cache: &OciCache, entry: &LockEntry) {
    for digest in [&entry.manifest, &entry.layer] {
        if let Err(oci::CacheFault::Tampered { path, .. }) = cache.read(digest, oci::MAX_LAYER_BYTES)
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!("failed to remove the damaged cache file {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_round_trips_sorted_and_locked_refuses_unknown_refs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let entry = |r: &str| LockEntry {
            reference: r.into(),
            manifest: format!("sha256:{}", "1".repeat(64)),
            layer: format!("sha256:{}", "2".repeat(64)),
            resolved_at: "2026-12-04T00:00:00Z".into(),
        };
        let mut lock = LockFile { version: 1, plugins: vec![] };
        lock.set(entry("oci://h.example/b:1"));
        lock.set(entry("oci://h.example/a:1"));
        lock.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.find("h.example/a").unwrap() < text.find("h.example/b").unwrap(), "{text}");
        assert!(text.contains("[[plugin]]") && text.contains("resolved_at"), "{text}");
        assert_eq!(LockFile::read(&path).unwrap().get("oci://h.example/b:1"), Some(&entry("oci://h.example/b:1")));
        assert_eq!(lock_path(Some(Path::new("conf/prpod.toml"))), Path::new("conf/prpod.lock"));

        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let refs = vec!["oci://h.example/a:1".to_string(), "oci://h.example/c:2".to_string()];
        let opts = ResolveOptions { locked: true, ..Default::default() };
        let cache = OciCache::at(dir.path().join("cache"));
        let never = |_: &ImageName| -> anyhow::Result<RegistryClient> { panic!("no network under this test") };
        let e =
            rt.block_on(resolve(&refs, &path, &cache, &TrustedKeys::default(), &opts, &never)).unwrap_err().to_string();
        assert!(e.contains("`oci://h.example/c:2` is not in") && !e.contains("h.example/a"), "{e}");
    }
}
