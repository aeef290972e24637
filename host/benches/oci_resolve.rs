//! What an OCI plugin costs a run once it is locked and cached, beside a local file.
//!
//! - `plugin_source/local_file`: reading `verify-baseline.wasm` from a file and hashing it, what
//!   `PluginRef::read` does for `path` (and `path#sha256:`) references.
//! - `plugin_source/oci_locked_cached`: resolving `oci://.../verifier:1` through prpod.lock and
//!   the cache (lock parsed, manifest and component re-hashed, no request: the registry client
//!   factory panics if asked), then `PluginRef::read` of the result.
//!
//! Target: the OCI path adds at most 1 ms over the local file. The loading (compile-cache hit,
//! instantiate) that follows is the same for both and is left out.

use std::path::Path;

use criterion::{Criterion, criterion_group};
use prpod::clients::registry::{ImageName, RegistryClient};
use prpod::plugins::lock::{LockEntry, LockFile, ResolveOptions};
use prpod::plugins::oci::{self, ArtifactMeta, OciCache};
use prpod::plugins::trust::TrustedKeys;
use prpod::plugins::wit_version::ComponentFacts;
use prpod::plugins::{PluginRef, World};

const REFERENCE: &str = "oci://registry.example:5000/acme/verifier:1";

/// Fills `dir` with what a first run leaves: the component file, its cache entries and the lock.
fn setup(dir: &Path) -> (std::path::PathBuf, OciCache, std::path::PathBuf) {
    let component = prpod::plugins::reference::builtin("verify-baseline").unwrap();
    let file = dir.join("verify-baseline.wasm");
    std::fs::write(&file, component).unwrap();
    let facts = ComponentFacts::read(component).unwrap();
    let artifact = oci::build_artifact(component, &facts, &[World::Verifier], &ArtifactMeta::default());
    let cache = OciCache::at(dir.join("cache"));
    cache.write(&artifact.manifest.digest, &artifact.manifest.bytes).unwrap();
    cache.write(&artifact.layer_digest, component).unwrap();
    let lock = dir.join("prpod.lock");
    LockFile {
        version: 1,
        plugins: vec![LockEntry {
            reference: REFERENCE.into(),
            manifest: artifact.manifest.digest.clone(),
            layer: artifact.layer_digest.clone(),
            resolved_at: oci::now_rfc3339(),
        }],
    }
    .write(&lock)
    .unwrap();
    (file, cache, lock)
}

fn plugin_source(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (file, cache, lock) = setup(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let refs = vec![REFERENCE.to_string()];
    let options = ResolveOptions { locked: true, update: None, write: true };
    let keys = TrustedKeys::default();
    let offline =
        |_: &ImageName| -> anyhow::Result<RegistryClient> { panic!("a locked, cached plugin asked the network") };
    let local = PluginRef::parse(file.to_str().unwrap()).unwrap();

    let mut group = c.benchmark_group("plugin_source");
    group.bench_function("local_file", |b| b.iter(|| std::hint::black_box(local.read().unwrap())));
    group.bench_function("oci_locked_cached", |b| {
        b.to_async(&runtime).iter(|| async {
            let r = prpod::plugins::lock::resolve(&refs, &lock, &cache, &keys, &options, &offline).await.unwrap();
            let PluginRef::Oci { reference, .. } = PluginRef::parse(REFERENCE).unwrap() else { unreachable!() };
            let resolved = PluginRef::Oci { reference, resolved: r.plugins.get(REFERENCE).cloned() };
            std::hint::black_box(resolved.read().unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, plugin_source);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
