//! The on-disk cache of compiled plugins: the one module allowed `unsafe`.
//!
//! Compiling a component with Cranelift takes hundreds of milliseconds (seconds for an 18 MB
//! Python plugin); loading its compiled form takes about one. But a compiled entry is native
//! code that `Component::deserialize` runs without any check (wasmtime's own CLI only loads
//! one behind `--allow-precompiled`), and CI systems restore cache directories across jobs,
//! fork PRs included, under the same uid. So the cache trusts no file it did not authenticate:
//!
//! - **Every entry carries a MAC**: HMAC-SHA256 over the plugin's sha256, the engine key
//!   (wasmtime version + the engine's compatibility hash) and the compiled bytes, keyed by a
//!   secret that does not live in the cache directory: `PRPOD_CACHE_KEY` when set (for CI
//!   caches shared between trusted jobs), else a random key created 0600 under the user's
//!   config directory (`~/.config/prpod/cache-key`). An entry that fails the MAC — tampered
//!   code, another plugin's entry copied under this one's name, a torn or truncated file — is
//!   never deserialized: the plugin is recompiled and the entry replaced, with a warning.
//! - **Ownership, as ssh treats its keys**: the cache directory and the entry must be owned by
//!   the current user and not writable by group or others; otherwise prpod warns and compiles
//!   in memory, touching nothing there.
//! - **Writes never follow a planted path**: entries are written to a `tempfile` (`O_EXCL`,
//!   random name) and renamed into place; entries and lock files are opened `O_NOFOLLOW`.
//! - **One compile per entry**: a lock file per entry (`flock`) makes N processes that need
//!   the same uncached plugin compile it once; the others wait and load the result.
//!
//! Cache failures only ever cost speed: they are logged and the component is compiled in memory.
#![allow(unsafe_code)]

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// What every entry file starts with, before its MAC.
const MAGIC: &[u8; 8] = b"PRPODC01";
const MAC_LEN: usize = 32;

/// Where compiled components are kept; `None` disables the cache.
#[derive(Debug, Clone)]
pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
}

/// The key that authenticates cache entries.
struct CacheKey(Vec<u8>);

impl ComponentCache {
    /// `$PRPOD_CACHE_DIR`, else `$XDG_CACHE_HOME/prpod`, else `~/.cache/prpod`; then
    /// `components/`. `PRPOD_CACHE_DIR=off` disables the cache.
    pub(crate) fn from_env() -> Self {
        ComponentCache { dir: crate::config::cache_dir().map(|b| b.join("components")) }
    }

    /// The compiled component for `bytes` (whose sha256 is `sha256`), from the cache when an
    /// authentic entry is there, else compiled now and stored.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
        deadline: Duration,
    ) -> wasmtime::Result<Component> {
        let compile = |bytes: &[u8]| compile(engine, bytes, sha256, deadline);
        let Some(dir) = &self.dir else {
            return compile(bytes);
        };
        let key = match cache_key() {
            Ok(k) => k,
            Err(why) => {
                warn_once(&format!("not using the plugin cache: {why}; compiling in memory"));
                return compile(bytes);
            }
        };
        if let Err(why) = ensure_private_dir(dir) {
            warn_once(&format!("not using the plugin cache {}: {why}; compiling in memory", dir.display()));
            return compile(bytes);
        }
        let engine_key = engine_key(engine);
        let entry = dir.join(format!("{sha256}-{engine_key}.cwasm"));
        let mac_input = MacInput { key, sha256, engine_key: &engine_key };

        let max = max_entry_bytes(bytes.len());
        if let Some(c) = self.try_load(engine, &entry, &mac_input, max) {
            return Ok(c);
        }
        // Not there (or refused): compile under the entry's lock, so that concurrent processes
        // needing the same plugin compile it once; whoever waited finds the entry written.
        let lock = match open_lock(&entry) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(path = %entry.display(), "could not lock the plugin cache entry ({e}); compiling without it");
                None
            }
        };
        if lock.is_some()
            && let Some(c) = self.try_load(engine, &entry, &mac_input, max)
        {
            return Ok(c);
        }
        let component = compile(bytes)?;
        match component.serialize() {
            Ok(compiled) => {
                if let Err(e) = write_entry(dir, &entry, &mac_input, &compiled) {
                    tracing::warn!(path = %entry.display(), "could not cache the compiled plugin: {e}");
                }
            }
            Err(e) => tracing::warn!("could not serialize the compiled plugin: {e}"),
        }
        drop(lock);
        Ok(component)
    }

    /// The entry's component if the file is there, ours, private, and authentic. Every
    /// refusal but "not there" is a warning: someone or something changed the cache.
    fn try_load(&self, engine: &Engine, entry: &Path, mac: &MacInput<'_>, max: u64) -> Option<Component> {
        let compiled = match read_entry(entry, max) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(why) => {
                tracing::warn!(path = %entry.display(), "refusing plugin cache entry: {why}; recompiling and replacing it");
                return None;
            }
        };
        let Some(code) = mac.verify(&compiled) else {
            tracing::warn!(
                path = %entry.display(),
                "refusing plugin cache entry: its MAC does not match (tampered, copied from another plugin, written \
                 with another cache key, or torn); recompiling and replacing it"
            );
            return None;
        };
        // SAFETY: `code` was authenticated above: it is the output of `Component::serialize`
        // that this cache key's holder wrote for exactly this plugin (sha256) and engine.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(c) => {
                tracing::debug!(path = %entry.display(), "loaded compiled plugin from cache");
                Some(c)
            }
            Err(e) => {
                tracing::warn!(path = %entry.display(), "ignoring unusable plugin cache entry: {e}; recompiling");
                None
            }
        }
    }
}

/// A compile that ran past its deadline (it goes on in the background until it ends; the
/// plugin is refused now).
#[derive(Debug)]
pub(crate) struct CompileTimeout(pub(crate) Duration);

impl std::fmt::Display for CompileTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "compiling it took longer than {} ms", self.0.as_millis())
    }
}

impl std::error::Error for CompileTimeout {}

/// Compiles on a thread of its own, waiting at most `deadline`: Cranelift cannot be
/// interrupted, but the caller is not held past the deadline.
fn compile(engine: &Engine, bytes: &[u8], sha256: &str, deadline: Duration) -> wasmtime::Result<Component> {
    tracing::debug!(sha256, "compiling plugin");
    let (tx, rx) = std::sync::mpsc::channel();
    let (engine, bytes) = (engine.clone(), bytes.to_vec());
    std::thread::Builder::new()
        .name("prpod-compile".into())
        .spawn(move || {
            let _ = tx.send(Component::new(&engine, &bytes));
        })
        .map_err(|e| wasmtime::Error::msg(format!("failed to start a compile thread: {e}")))?;
    match rx.recv_timeout(deadline) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(wasmtime::Error::new(CompileTimeout(deadline))),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(wasmtime::Error::msg("the compile thread ended without a result"))
        }
    }
}

/// The wasmtime version and the engine's compatibility hash: an upgraded prpod (or one with
/// different engine settings) never loads another engine's code.
fn engine_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("wasmtime{}-{:016x}", env!("PRPOD_WASMTIME_VERSION"), h.finish())
}

struct MacInput<'a> {
    key: &'static CacheKey,
    sha256: &'a str,
    engine_key: &'a str,
}

impl MacInput<'_> {
    fn mac(&self) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key.0).expect("HMAC takes any key length");
        // Length-prefixed, so no two (sha256, engine key) pairs feed the same bytes.
        for part in [self.sha256.as_bytes(), self.engine_key.as_bytes()] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac
    }

    /// The compiled code inside `file` when its MAC is right.
    fn verify<'f>(&self, file: &'f [u8]) -> Option<&'f [u8]> {
        let rest = file.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < MAC_LEN {
            return None;
        }
        let (tag, code) = rest.split_at(MAC_LEN);
        let mut mac = self.mac();
        mac.update(code);
        mac.verify_slice(tag).ok().map(|()| code)
    }
}

/// The current user's uid.
fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuses what is not ours or is writable by others.
fn check_private(meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    if meta.uid() != uid() {
        return Err(format!("{what} is owned by uid {}, not by the current user (uid {})", meta.uid(), uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("{what} is writable by group or others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

/// Creates the cache directory 0700 when missing; refuses one that is not ours or not private.
fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        return Err(format!("cannot create it: {e}"));
    }
    let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    check_private(&meta, "the directory")
}

/// The largest entry prpod reads for a plugin of `plugin_len` bytes: compiled code is a few
/// times the size of the WebAssembly it comes from. A larger file (a sparse 1 TiB one costs an
/// attacker nothing) is refused before a byte of it is read.
fn max_entry_bytes(plugin_len: usize) -> u64 {
    (plugin_len as u64).saturating_mul(16).saturating_add(64 << 20)
}

/// The entry's bytes; `None` when there is none; `Err` when there is one we must not trust.
fn read_entry(entry: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    let open = crate::input::Open { no_follow: true };
    match crate::input::read_bounded(entry, max, "plugin cache entry", open, |meta| check_private(meta, "the entry")) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.reason()),
    }
}

/// The per-entry lock, held until dropped.
fn open_lock(entry: &Path) -> std::io::Result<File> {
    let mut name = entry.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(PathBuf::from(name))?;
    file.lock()?;
    Ok(file)
}

/// Writes MAGIC + MAC + code to a fresh temporary file (`O_EXCL`, random name, 0600) and
/// renames it over the entry: readers see the old entry or the new one, never a torn one, and
/// whatever was planted at the entry's name (a symlink included) is replaced, not followed.
fn write_entry(dir: &Path, entry: &Path, mac: &MacInput<'_>, code: &[u8]) -> std::io::Result<()> {
    let mut tag = mac.mac();
    tag.update(code);
    let tag = tag.finalize().into_bytes();
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(MAGIC)?;
    tmp.write_all(&tag)?;
    tmp.write_all(code)?;
    tmp.as_file().sync_all()?;
    tmp.persist(entry).map_err(|e| e.error)?;
    Ok(())
}

/// The cache key: `PRPOD_CACHE_KEY`, else the user's key file (created on first use).
fn cache_key() -> Result<&'static CacheKey, String> {
    static KEY: OnceLock<Result<CacheKey, String>> = OnceLock::new();
    KEY.get_or_init(|| {
        // An empty variable counts as unset, as everywhere else (CI systems export empty values
        // for secrets a fork's job does not get).
        if let Some(v) = std::env::var_os("PRPOD_CACHE_KEY").filter(|v| !v.is_empty()) {
            let v = v.into_encoded_bytes();
            if v.len() < 16 {
                return Err("PRPOD_CACHE_KEY is shorter than 16 bytes; use a long random value".into());
            }
            return Ok(CacheKey(v));
        }
        let dir = directories::BaseDirs::new()
            .map(|d| d.config_dir().join("prpod"))
            .ok_or("no home directory for the cache key; set PRPOD_CACHE_KEY")?;
        key_file(&dir.join("cache-key")).map(CacheKey)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The largest cache key file prpod reads (it writes 64 hex digits).
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Reads the key file, creating it (32 random bytes, hex, mode 0600, `O_EXCL`) when missing.
fn key_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::DirBuilderExt;
    let shown = path.display();
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut random = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    if std::fs::symlink_metadata(path).is_err() {
        // Written whole to a temporary file, then linked into place without replacing: a
        // process racing us either wins (and we read its key) or loses; nobody reads half a key.
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".cache-key-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| format!("cannot create {shown}: {e}"))?;
        tmp.write_all(hex::encode(random).as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| format!("cannot write {shown}: {e}"))?;
        match tmp.persist_noclobber(path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {shown}: {}", e.error)),
        }
    }
    let open = crate::input::Open { no_follow: true };
    let key = crate::input::read_bounded(path, MAX_KEY_FILE_BYTES, "the cache key", open, |meta| {
        check_private(meta, "it")?;
        if meta.mode() & 0o044 != 0 {
            return Err("it is readable by group or others; chmod 600 it".into());
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    if key.len() < 32 {
        return Err(format!("the cache key {shown} is too short; delete it and prpod makes a new one"));
    }
    Ok(key)
}

fn warn_once(message: &str) {
    static SAID: OnceLock<()> = OnceLock::new();
    SAID.get_or_init(|| tracing::warn!("{message}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_binds_plugin_engine_and_code() {
        let key: &'static CacheKey = Box::leak(Box::new(CacheKey(b"0123456789abcdef".to_vec())));
        let a = MacInput { key, sha256: "aa", engine_key: "e1" };
        let mut tag = a.mac();
        tag.update(b"code");
        let file = [MAGIC.as_slice(), &tag.finalize().into_bytes(), b"code"].concat();
        assert_eq!(a.verify(&file), Some(b"code".as_slice()));
        assert_eq!(MacInput { key, sha256: "bb", engine_key: "e1" }.verify(&file), None, "another plugin's entry");
        assert_eq!(MacInput { key, sha256: "aa", engine_key: "e2" }.verify(&file), None, "another engine's entry");
        let other: &'static CacheKey = Box::leak(Box::new(CacheKey(b"fedcba9876543210".to_vec())));
        assert_eq!(MacInput { key: other, sha256: "aa", engine_key: "e1" }.verify(&file), None, "another key");
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(a.verify(&flipped), None, "tampered code");
        assert_eq!(a.verify(&file[..file.len() - 1]), None, "truncated");
        assert_eq!(a.verify(b"PRPODC01short"), None);
    }
}
