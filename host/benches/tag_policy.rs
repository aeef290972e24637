//! The cost of a plugin call, beside the same logic in native Rust.
//!
//! - `tag_policy/wasm_instantiate_and_call`: `builtin:tag-default` `compute-tags` through the
//!   host, awaited on a current-thread tokio runtime: fresh store, deny-by-default WASI
//!   context, async instantiate from `InstancePre` on a fiber, call, output charging and
//!   validation, and the call's timeout. Target: p50 <= 20 us on the 2-core CI machines.
//! - `tag_policy/native`: `tag_scheme::compute_tags`, the same logic compiled natively.
//! - After criterion: `prpod plugin call tag-policy builtin:tag-default` as a whole process,
//!   first run with an empty compile cache vs later runs with it warm (target: warm <= 50 ms),
//!   printed as medians and a ratio measured in this same run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use prpod::model::{Event, PrContext};
use prpod::plugins::{PluginHost, PluginRef};

fn ctx() -> PrContext {
    PrContext {
        repository_url: "https://git.example.com/acme/web.git".into(),
        repository: "acme/web".into(),
        number: Some(42),
        branch: "feature/Login-Page".into(),
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

fn tag_policy(c: &mut Criterion) {
    let plugin = PluginHost::new().unwrap().load(&PluginRef::parse("builtin:tag-default").unwrap()).unwrap();
    let ctx = ctx();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("tag_policy");
    group.bench_function("wasm_instantiate_and_call", |b| {
        b.to_async(&runtime).iter(|| async {
            plugin.compute_tags(std::hint::black_box(&ctx), "127.0.0.1:5443/acme/web").await.unwrap()
        })
    });
    group.bench_function("native", |b| {
        b.iter(|| {
            let c = std::hint::black_box(&ctx);
            tag_scheme::compute_tags(c.number, tag_scheme::Branch::own(&c.branch), c.base_branch.as_deref(), &c.sha)
                .unwrap()
        })
    });
    group.finish();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run_process(cache: &Path, ctx_file: &Path) -> Duration {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(["plugin", "call", "tag-policy", "builtin:tag-default", "--image", "127.0.0.1:5443/acme/web"])
        .arg("--context")
        .arg(ctx_file)
        .env("PRPOD_CACHE_DIR", cache)
        .output()
        .expect("failed to run prpod");
    let took = start.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    took
}

/// Whole-process cold (compile) vs warm (cache hit) runs, printed beside each other.
fn process_cold_vs_warm() {
    let dir = tempfile::tempdir().unwrap();
    let ctx_file = dir.path().join("ctx.json");
    std::fs::write(&ctx_file, serde_json::to_vec(&ctx()).unwrap()).unwrap();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..5 {
        let cache = dir.path().join(format!("cache-{i}"));
        cold.push(run_process(&cache, &ctx_file));
        for _ in 0..4 {
            warm.push(run_process(&cache, &ctx_file));
        }
    }
    let (cold, warm) = (median(cold), median(warm));
    println!();
    println!("process: prpod plugin call tag-policy builtin:tag-default");
    println!("  first run, empty cache (compile):  median {:>8.1} ms  (5 runs)", cold.as_secs_f64() * 1e3);
    println!(
        "  later runs, warm cache:            median {:>8.1} ms  (20 runs; target <= 50 ms)",
        warm.as_secs_f64() * 1e3
    );
    println!("  cold / warm:                       {:>8.1}x", cold.as_secs_f64() / warm.as_secs_f64());
}

criterion_group!(benches, tag_policy);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    process_cold_vs_warm();
}
