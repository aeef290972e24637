//! prpod's integration tests: one binary, one module per part of prpod.
//!
//! Plugins are loaded as built artifacts: the first test that needs one runs
//! `scripts/build-plugins` once (a no-op when nothing changed). Tests that need the service
//! world (Helm, registries, the cluster) use `prpod_test_support::world()`, which fails with
//! a message saying `scripts/dev-env up` when the world is not running.

mod build;
mod cache;
mod chart;
mod cli;
mod deploy;
mod dispatch;
mod fault_proxy;
mod gc;
mod github;
mod lock;
mod oci;
mod plugins;
mod preview;
mod push;
mod run;
mod sandbox;
mod teardown;
mod trust;
mod workflows;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prpod::model::{Event, PrContext};

/// A prpod process's stdout as JSON; panics with both streams when it is not.
pub fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A process's stderr as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes a Helm chart `name` (version 0.1.0) of one template file into `dir`.
pub fn write_chart(dir: &Path, name: &str, template: &str) {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("Chart.yaml"), format!("apiVersion: v2\nname: {name}\nversion: 0.1.0\n")).unwrap();
    std::fs::write(dir.join("templates/app.yaml"), template).unwrap();
}

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The directory holding built plugin components, built on first use.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = std::process::Command::new(repo_root().join("scripts/build-plugins"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("failed to run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed");
        let target = std::env::var_os("PRPOD_WASM_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/wasm"));
        target.join("wasm32-wasip2/plugin")
    })
}

/// The built component of crate `name` (e.g. `test-hostile`).
pub fn plugin_file(name: &str) -> PathBuf {
    let p = plugin_dir().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(p.is_file(), "{} was not built by scripts/build-plugins", p.display());
    p
}

/// A PR context for tests.
pub fn context(number: Option<u64>, branch: &str) -> PrContext {
    PrContext {
        repository_url: "https://git.example.com/acme/web.git".into(),
        repository: "acme/web".into(),
        number,
        branch: branch.into(),
        base_branch: Some("main".into()),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        event: Event::Synchronize,
        labels: vec![],
        author: "octo".into(),
        draft: false,
        fork: false,
        target: None,
    }
}
