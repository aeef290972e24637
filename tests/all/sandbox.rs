//! The sandbox holds whatever a plugin does: a deadline that covers sleeps and pollables in
//! every hook, one memory limit over all of a call's memories, an output budget that counts
//! errors and list elements, caps on what a hook may return, and chart paths checked before
//! anything is written. After each failure the same plugin answers the next call normally.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prpod::model::{AppSpec, ImageRef, PrContext, ReleaseStatus, ReleaseTarget};
use prpod::plugins::{LimitKind, Limits, Plugin, PluginError, PluginHost, PluginRef};

use crate::{context, plugin_file};

fn hostile(limits: Limits) -> Plugin {
    let path = plugin_file("test-hostile");
    PluginHost::new().unwrap().load(&PluginRef::parse(path.to_str().unwrap()).unwrap()).unwrap().with_limits(limits)
}

fn ctx(branch: &str) -> PrContext {
    context(Some(7), branch)
}

fn app() -> AppSpec {
    AppSpec {
        name: "web".into(),
        image: ImageRef { repository: "r.example/web".into(), tag: Some("pr-7".into()), digest: None },
        ports: vec![],
        env: vec![],
        replicas: 1,
        resources: Default::default(),
        health_path: None,
        ingress_host: None,
    }
}

fn status() -> ReleaseStatus {
    ReleaseStatus {
        release: ReleaseTarget { name: "pr-7".into(), namespace: "pr-7".into() },
        workloads: vec![],
        warnings: vec![],
    }
}

/// Calls `hook` of the hostile plugin with branch `mode`; the error, or a description of the
/// unexpected success.
async fn call_hook(p: &Plugin, hook: &str, mode: &str) -> Result<(), PluginError> {
    let c = ctx(mode);
    match hook {
        "compute-tags" => p.compute_tags(&c, "r/app").await.map(drop),
        "release" => p.release(&c).await.map(drop),
        "generate" => p.generate(&c, &app()).await.map(drop),
        "check-manifests" => p.check_manifests(&c, &[]).await.map(drop),
        "check-release" => p.check_release(&c, &status()).await.map(drop),
        _ => unreachable!(),
    }
}

const HOOKS: [&str; 5] = ["compute-tags", "release", "generate", "check-manifests", "check-release"];

/// Every hook, waiting in `mode`, ends with the deadline error within deadline + 1 s; then the
/// same hook answers normally.
async fn deadline_holds(mode: &str) {
    let deadline = Duration::from_millis(300);
    let p = hostile(Limits { deadline_ms: 300, ..Limits::default() });
    for hook in HOOKS {
        let start = Instant::now();
        let e = call_hook(&p, hook, mode).await.unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(&e, PluginError::Limit { limit: LimitKind::Deadline(_), hook: h, .. } if *h == hook),
            "{mode} in {hook}: {e}"
        );
        assert!(took >= deadline, "{mode} in {hook}: stopped before the deadline, after {took:?}");
        assert!(took < deadline + Duration::from_secs(1), "{mode} in {hook}: stopped only after {took:?}");
        call_hook(&p, hook, "feature/x").await.unwrap_or_else(|e| panic!("{hook} after {mode}: {e}"));
    }
}

#[tokio::test]
async fn an_hour_long_sleep_is_stopped_at_the_deadline_in_every_hook() {
    deadline_holds("sleep").await;
}

#[tokio::test]
async fn a_never_ready_pollable_is_stopped_at_the_deadline_in_every_hook() {
    deadline_holds("block").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_between_short_sleeps_is_stopped_at_the_deadline_in_every_hook() {
    deadline_holds("sleep-loop").await;
}

/// Other tasks keep running while a plugin computes: the guest yields at every epoch tick.
#[tokio::test]
async fn a_looping_plugin_does_not_starve_the_runtime() {
    let p = hostile(Limits { deadline_ms: 500, ..Limits::default() });
    let ticks = tokio::spawn(async {
        let mut n = 0u32;
        let end = Instant::now() + Duration::from_millis(400);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
            n += 1;
        }
        n
    });
    let e = p.compute_tags(&ctx("loop"), "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::Limit { limit: LimitKind::Deadline(_), .. }), "{e}");
    let n = ticks.await.unwrap();
    // 20 ticks at most; a plugin that never yields lets through 1 at most (the runtime's one
    // thread is its). 5 leaves room for a loaded CI machine, where sleeps overshoot.
    assert!(n >= 5, "a task on the same current-thread runtime ran only {n} times while the plugin looped");
}

/// A component (text format) whose core module has two memories; `compute-tags` grows each by
/// `pages` 64 KiB pages, then traps. Its types mirror `wit/types.wit`.
fn two_memory_component(pages: u32) -> Vec<u8> {
    let wat = format!(
        r#"(component
  (type $image-ref' (record (field "repository" string) (field "tag" (option string)) (field "digest" (option string))))
  (export $image-ref "image-ref" (type $image-ref'))
  (type $tag-set' (record (field "primary" string) (field "extra" (list string)) (field "cache-from" (list string)) (field "cache-to" (option string))))
  (export $tag-set "tag-set" (type $tag-set'))
  (type $release-target' (record (field "name" string) (field "namespace" string)))
  (export $release-target "release-target" (type $release-target'))
  (type $deploy-target' (record (field "registry" string) (field "image" $image-ref) (field "tags" $tag-set) (field "release" $release-target)))
  (export $deploy-target "deploy-target" (type $deploy-target'))
  (type $event' (enum "opened" "synchronize" "reopened" "closed" "manual"))
  (export $event "event" (type $event'))
  (type $pr-context' (record
    (field "repository-url" string) (field "repository" string) (field "number" (option u64))
    (field "branch" string) (field "base-branch" (option string)) (field "sha" string) (field "event" $event)
    (field "labels" (list string)) (field "author" string) (field "draft" bool) (field "fork" bool)
    (field "target" (option $deploy-target))))
  (export $pr-context "pr-context" (type $pr-context'))
  (core module $m
    (memory (export "memory") 1)
    (memory $second 1)
    (global $next (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $next))
      ;; bump allocator, every block 16-byte aligned
      (global.set $next (i32.and (i32.add (i32.add (global.get $next) (local.get 3)) (i32.const 15)) (i32.const -16)))
      (local.get $p))
    (func (export "grow-both") (param i32) (result i32)
      (drop (memory.grow 0 (i32.const {pages})))
      (drop (memory.grow $second (i32.const {pages})))
      unreachable))
  (core instance $i (instantiate $m))
  (func $compute-tags (param "ctx" $pr-context) (param "image-repository" string) (result (result $tag-set (error string)))
    (canon lift (core func $i "grow-both") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (export "compute-tags" (func $compute-tags))
  (func $release (param "ctx" $pr-context) (result (result $release-target (error string)))
    (canon lift (core func $i "grow-both") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (export "release" (func $release))
)"#
    );
    wat::parse_str(&wat).expect("the two-memory component is valid")
}

fn write_temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[tokio::test]
async fn the_memory_limit_covers_all_memories_of_a_call_together() {
    // Each memory grows to 60 % of a 10 MiB limit: either alone fits, both together do not.
    let pages = (10 * 16) * 6 / 10;
    let (_dir, path) = write_temp("two-memories.wasm", &two_memory_component(pages));
    let p = PluginHost::new()
        .unwrap()
        .load(&PluginRef::parse(path.to_str().unwrap()).unwrap())
        .unwrap()
        .with_limits(Limits { memory_mib: 10, ..Limits::default() });
    let e = p.compute_tags(&ctx("x"), "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::Limit { limit: LimitKind::Memory(_), .. }), "{e}");
    assert!(e.to_string().contains("memory limit of 10 MiB"), "{e}");
    // With room for both, the same call gets past both grows (and reaches its trap).
    let roomy = p.with_limits(Limits { memory_mib: 20, ..Limits::default() });
    let e = roomy.compute_tags(&ctx("x"), "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::Trap { .. }), "{e}");
}

#[tokio::test]
async fn a_world_that_does_not_type_check_says_what_differs() {
    // `ctx` as a string instead of a `pr-context` record.
    let text = r#"(component
  (type $tag-set' (record (field "primary" u32) (field "extra" (list string)) (field "cache-from" (list string)) (field "cache-to" (option string))))
  (export $tag-set "tag-set" (type $tag-set'))
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 64)
    (func (export "f") (param i32 i32 i32 i32) (result i32) unreachable))
  (core instance $i (instantiate $m))
  (func $compute-tags (param "ctx" string) (param "image-repository" string) (result (result $tag-set (error string)))
    (canon lift (core func $i "f") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (export "compute-tags" (func $compute-tags))
)"#;
    let (_dir, path) = write_temp("wrong-types.wasm", &wat::parse_str(text).unwrap());
    let p = PluginHost::new().unwrap().load(&PluginRef::parse(path.to_str().unwrap()).unwrap()).unwrap();
    let why = p.world_error(prpod::plugins::World::TagPolicy).expect("it does not implement tag-policy");
    // The cause, not just "type-checking export func `compute-tags`".
    assert!(why.contains("compute-tags"), "{why}");
    assert!(why.contains("expected `record` found `string`"), "no cause given: {why}");
}

#[tokio::test]
async fn a_huge_error_message_hits_the_output_limit() {
    let p = hostile(Limits::default());
    for hook in HOOKS {
        let e = call_hook(&p, hook, "big-err").await.unwrap_err();
        assert!(matches!(e, PluginError::Limit { limit: LimitKind::Output(_), .. }), "{hook}: {e}");
        assert!(e.to_string().len() < 4096, "{hook}: the error quotes the flood");
    }
    call_hook(&p, "compute-tags", "feature/x").await.unwrap();
}

#[tokio::test]
async fn eight_hundred_thousand_empty_findings_hit_the_output_limit() {
    let p = hostile(Limits::default());
    for hook in ["check-manifests", "check-release"] {
        let e = call_hook(&p, hook, "many-findings").await.unwrap_err();
        assert!(matches!(e, PluginError::Limit { limit: LimitKind::Output(_), .. }), "{hook}: {e}");
    }
}

#[tokio::test]
async fn result_lists_are_capped() {
    let p = hostile(Limits::default());
    let e = call_hook(&p, "check-manifests", "too-many-findings").await.unwrap_err();
    assert!(matches!(e, PluginError::InvalidOutput { .. }), "{e}");
    assert!(e.to_string().contains("at most 10000 findings"), "{e}");
    let e = call_hook(&p, "generate", "many-files").await.unwrap_err();
    assert!(e.to_string().contains("at most 1000 chart files"), "{e}");
    let e = call_hook(&p, "compute-tags", "many-tags").await.unwrap_err();
    assert!(e.to_string().contains("at most 64 distinct tags"), "{e}");
}

#[tokio::test]
async fn repeated_tags_are_used_once() {
    let p = hostile(Limits::default());
    let tags = p.compute_tags(&ctx("dup-tags"), "r/app").await.unwrap();
    assert_eq!(tags.primary, "pr-7");
    assert_eq!(tags.extra, vec!["x".to_string()]);
    assert_eq!(tags.cache_from, vec!["c".to_string()]);
}

#[tokio::test]
async fn chart_paths_that_cannot_be_written_are_the_plugins_error() {
    let p = hostile(Limits::default());
    for (mode, value) in [("file-and-dir", "templates"), ("long-name", "nnnnn"), ("chart-yaml-dir", "Chart.yaml")] {
        let e = p.generate(&ctx(mode), &app()).await.unwrap_err();
        assert!(matches!(e, PluginError::InvalidOutput { what: "chart file path", .. }), "{mode}: {e}");
        assert!(e.to_string().contains(value), "{mode}: {e}");
        assert!(e.to_string().contains("test_hostile.wasm"), "{mode}: the plugin is named: {e}");
    }
    assert_eq!(p.generate(&ctx("feature/x"), &app()).await.unwrap().len(), 2);
}

#[tokio::test]
async fn escape_sequences_in_errors_are_made_inert() {
    let p = hostile(Limits::default());
    let e = p.compute_tags(&ctx("ansi"), "r/app").await.unwrap_err();
    let text = e.to_string();
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("\\x1b[2J"), "{text}");
}

#[tokio::test]
async fn a_context_carrying_a_token_never_reaches_a_plugin() {
    let p = hostile(Limits::default());
    let mut c = ctx("feature/x");
    c.repository_url = "https://x-access-token:ghs_sekrit123@github.com/acme/web.git".into();
    let e = p.compute_tags(&c, "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::BadContext { .. }), "{e}");
    assert!(!e.to_string().contains("ghs_sekrit123"), "{e}");
    assert!(e.to_string().contains("PRPOD_GIT_TOKEN"), "{e}");
}

#[tokio::test]
async fn a_query_or_fragment_in_the_repository_url_never_reaches_a_plugin() {
    let p = hostile(Limits::default());
    for url in
        ["https://github.com/acme/web.git?access_token=ghs_sekrit123", "https://github.com/acme/web.git#ghs_sekrit123"]
    {
        let mut c = ctx("feature/x");
        c.repository_url = url.into();
        let e = p.compute_tags(&c, "r/app").await.unwrap_err();
        assert!(matches!(e, PluginError::BadContext { .. }), "{url}: {e}");
        assert!(!e.to_string().contains("ghs_sekrit123"), "{e}");
        assert!(e.to_string().contains("query or fragment"), "{e}");
    }
}

/// The error of a crash leads with its cause (the exit status, the host's refusal), then the
/// backtrace; never just "error while executing at wasm backtrace:".
#[tokio::test]
async fn a_crash_is_reported_by_its_cause_first() {
    let p = hostile(Limits::default());
    for (mode, cause) in [
        ("exit", "called exit("),
        ("resource-flood", "resource table has no free keys"),
        ("huge-random", "exceeds limit"),
    ] {
        let e = p.compute_tags(&ctx(mode), "r/app").await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, PluginError::Trap { .. }), "{mode}: {text}");
        let at = text.find(cause).unwrap_or_else(|| panic!("{mode}: the cause `{cause}` is missing: {text}"));
        if let Some(bt) = text.find("backtrace") {
            assert!(at < bt, "{mode}: the cause comes after the backtrace: {text}");
        }
        assert!(!text.contains("crashed: error while executing"), "{mode}: {text}");
        call_hook(&p, "compute-tags", "feature/x").await.unwrap_or_else(|e| panic!("after {mode}: {e}"));
    }
}

/// With every instance slot of the pool taken by sleeping calls, an innocent call waits for a
/// slot and succeeds.
#[tokio::test]
async fn an_innocent_call_waits_for_a_pool_slot() {
    let sleeper = hostile(Limits { deadline_ms: 1000, ..Limits::default() });
    let innocent = hostile(Limits { deadline_ms: 5000, ..Limits::default() });
    let sleeping: Vec<_> = (0..64).map(|_| call_hook(&sleeper, "compute-tags", "sleep")).collect();
    let late = async {
        // Let the sleepers take their slots first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        innocent.compute_tags(&ctx("feature/x"), "r/app").await
    };
    let (slept, tags) = tokio::join!(futures::future::join_all(sleeping), late);
    let tags = tags.unwrap_or_else(|e| panic!("the innocent call failed: {e}"));
    assert_eq!(tags.primary, "pr-7");
    for e in slept {
        let e = e.unwrap_err();
        assert!(matches!(e, PluginError::Limit { limit: LimitKind::Deadline(_), .. }), "{e}");
    }
}

/// Runs `prpod plugin call tag-policy` with the hostile plugin in `mode` (with `labels`);
/// returns the process output.
fn prpod_hostile(mode: &str, labels: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ctx(mode);
    c.labels = labels.iter().map(|l| l.to_string()).collect();
    let ctx_file = dir.path().join("ctx.json");
    std::fs::write(&ctx_file, serde_json::to_vec(&c).unwrap()).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(["plugin", "call", "tag-policy"])
        .arg(plugin_file("test-hostile"))
        .args(["--image", "r.example/web", "--context"])
        .arg(&ctx_file)
        .env("PRPOD_LOG", "prpod=debug")
        .env("PRPOD_CACHE_DIR", "off")
        .output()
        .unwrap()
}

/// Every log line is charged with what prpod prints around it, and at most a few hundred are
/// printed; the rest are counted and the count said.
#[test]
fn millions_of_empty_log_lines_keep_stderr_bounded() {
    for mode in ["log-lines", "print-lines"] {
        let out = prpod_hostile(mode, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.len() < 256 << 10, "{mode}: {} bytes of stderr", stderr.len());
        assert!(stderr.contains("dropped"), "{mode}: {}", &stderr[stderr.len().saturating_sub(2000)..]);
        // A few thousand lines fit the output limit: the call succeeds, and the count is exact.
        let out = prpod_hostile(mode, &["lines=5000"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {stderr}");
        // Every line past the first 200 is counted (the plugin logs a line of its own too).
        let dropped: u64 = stderr
            .split("dropped ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!("{mode}: no count of dropped lines: {}", &stderr[stderr.len().saturating_sub(2000)..])
            });
        assert!((4800..4810).contains(&dropped), "{mode}: dropped {dropped} of 5000 lines");
    }
}
