//! Records the wasmtime version prpod was built with: compiled plugins are cached on disk keyed
//! by it (with the engine's compatibility hash), so an upgrade never loads stale machine code.

fn main() {
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let version = text
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        // Without a lock file (e.g. `cargo install` without --locked) the engine's own version
        // check on deserialize still refuses artifacts of another wasmtime.
        .unwrap_or_else(|| "unlocked".to_string());
    println!("cargo:rustc-env=PRPOD_WASMTIME_VERSION={version}");
}
