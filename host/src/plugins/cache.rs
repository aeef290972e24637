//! The on-disk cache of compiled plugins: the one module allowed `unsafe`.
//!
//! Compiling a component with Cranelift takes hundreds of milliseconds; loading its compiled
//! form takes about one. Entries are keyed by the sha256 of the component's bytes, the wasmtime
//! version and the engine's compatibility hash, so a second `prpod` process (or a CI job with a
//! warm cache) never recompiles, and an upgraded prpod never loads another engine's code.
//!
//! Safety: `Component::deserialize_file` trusts its input to be wasmtime's own output. This
//! module only ever deserializes files it wrote itself into a directory it created with mode
//! 0700, under a name derived from the hash of the source bytes; files are written to a
//! temporary name and renamed into place, so a crash never leaves a torn entry under a real
//! name. Anyone who can write to the cache directory can already replace the prpod binary's
//! inputs, so the cache adds no new trust boundary.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept; `None` disables the cache.
#[derive(Debug, Clone)]
pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
}

impl ComponentCache {
    /// `$PRPOD_CACHE_DIR`, else `$XDG_CACHE_HOME/prpod`, else `~/.cache/prpod`; then
    /// `components/`. `PRPOD_CACHE_DIR=off` disables the cache.
    pub(crate) fn from_env() -> Self {
        let base = match std::env::var_os("PRPOD_CACHE_DIR") {
            Some(v) if v == "off" => return ComponentCache { dir: None },
            Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
            _ => directories::BaseDirs::new().map(|d| d.cache_dir().join("prpod")),
        };
        ComponentCache { dir: base.map(|b| b.join("components")) }
    }

    fn entry(&self, engine: &Engine, sha256: &str) -> Option<PathBuf> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let version = env!("PRPOD_WASMTIME_VERSION");
        self.dir.as_ref().map(|d| d.join(format!("{sha256}-wasmtime{version}-{:016x}.cwasm", h.finish())))
    }

    /// The compiled component for `bytes` (whose sha256 is `sha256`), from the cache when
    /// present, else compiled now and stored. Cache failures only cost speed: they are logged
    /// and the component is compiled in memory.
    pub(crate) fn load_or_compile(&self, engine: &Engine, bytes: &[u8], sha256: &str) -> wasmtime::Result<Component> {
        let Some(path) = self.entry(engine, sha256) else {
            return Component::new(engine, bytes);
        };
        if path.is_file() {
            // SAFETY: see the module docs; the file is our own serialized output for these bytes.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => {
                    tracing::debug!(path = %path.display(), "loaded compiled plugin from cache");
                    return Ok(c);
                }
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e}"),
            }
        }
        let component = Component::new(engine, bytes)?;
        match component.serialize() {
            Ok(compiled) => {
                if let Err(e) = write_atomically(&path, &compiled) {
                    tracing::warn!(path = %path.display(), "could not cache compiled plugin: {e}");
                }
            }
            Err(e) => tracing::warn!("could not serialize compiled plugin: {e}"),
        }
        Ok(component)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    create_private_dir(dir)?;
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(bytes)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = format!(".tmp-{}-{:?}", std::process::id(), std::thread::current().id());
    let path = dir.join(name.replace(['(', ')'], ""));
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    Ok((path, file))
}
