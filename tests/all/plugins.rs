//! The plugin runtime: default plugins through the host, and hostile plugins stopped by the
//! sandbox with errors that name the limit, after which the same plugin works again.

use std::time::{Duration, Instant};

use prpod::model::{PrContext, TagSet};
use prpod::plugins::{LimitKind, Limits, Plugin, PluginError, PluginHost, PluginRef, World};

use crate::{context, plugin_file};

fn load(r: &str) -> Plugin {
    PluginHost::new().unwrap().load(&PluginRef::parse(r).unwrap()).unwrap()
}

fn hostile() -> Plugin {
    load(plugin_file("test-hostile").to_str().unwrap())
}

fn hostile_ctx(mode: &str, labels: &[String]) -> PrContext {
    let mut ctx = context(Some(7), mode);
    ctx.labels = labels.to_vec();
    ctx
}

/// After any failure the same plugin must still work: a fresh store per call.
async fn assert_healthy(plugin: &Plugin) {
    let tags = plugin
        .compute_tags(&context(Some(7), "feature/x"), "r.example/app")
        .await
        .expect("normal call after a failure");
    assert_eq!(tags.primary, "pr-7");
}

#[tokio::test]
async fn builtin_tag_default_gives_the_seed_scheme() {
    let p = load("builtin:tag-default");
    assert_eq!(p.worlds(), vec![World::TagPolicy]);
    let ctx = context(Some(42), "Feature/Login_Page");
    let tags = p.compute_tags(&ctx, "127.0.0.1:5443/acme/web").await.unwrap();
    assert_eq!(
        tags,
        TagSet {
            primary: "pr-42".into(),
            extra: vec!["br-feature-login_page".into(), "sha-0123456789ab".into()],
            cache_from: vec!["cache-pr-42".into(), "cache-br-main".into()],
            cache_to: Some("cache-pr-42".into()),
        }
    );
    let release = p.release(&ctx).await.unwrap();
    assert_eq!((release.name.as_str(), release.namespace.as_str()), ("web-pr-42", "web-pr-42"));

    let no_pr = p.compute_tags(&context(None, "fix/bug"), "r/app").await.unwrap();
    assert_eq!(no_pr.primary, "br-fix-bug");

    // A branch named like a PR number cannot take that PR's tag.
    let seven = p.compute_tags(&context(Some(1), "7"), "r/app").await.unwrap();
    assert!(!seven.extra.contains(&"pr-7".to_string()) && seven.primary == "pr-1", "{seven:?}");

    // A fork's branch tags carry the fork's owner (the PR's author).
    let mut fork = context(Some(3), "main");
    fork.fork = true;
    fork.author = "mallory".into();
    let t = p.compute_tags(&fork, "r/app").await.unwrap();
    assert_eq!(t.extra[0], "br-mallory--main");
    assert_eq!(t.cache_to.as_deref(), Some("cache-pr-3"), "a fork PR never writes the base branch's cache");
}

#[tokio::test]
async fn builtin_worlds_are_what_they_say() {
    assert_eq!(load("builtin:chart-webapp").worlds(), vec![World::ChartGenerator]);
    assert_eq!(load("builtin:verify-baseline").worlds(), vec![World::Verifier]);
    let e = load("builtin:tag-default").check_manifests(&context(Some(1), "b"), &[]).await.unwrap_err();
    assert!(matches!(e, PluginError::WrongWorld { world: World::Verifier, .. }), "{e}");
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_the_deadline() {
    let p = hostile().with_limits(Limits { deadline_ms: 300, ..Limits::default() });
    let start = Instant::now();
    let e = p.compute_tags(&hostile_ctx("loop", &[]), "r/app").await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, PluginError::Limit { limit: LimitKind::Deadline(_), hook: "compute-tags", .. }), "{e}");
    assert!(took < Duration::from_millis(300) + Duration::from_secs(1), "stopped after {took:?}");
    assert!(took >= Duration::from_millis(290), "stopped too early: {took:?}");
    assert!(e.to_string().contains("deadline of 300 ms"), "{e}");
    assert!(e.to_string().contains("test_hostile.wasm"), "{e}");
    assert_healthy(&p).await;
}

#[tokio::test]
async fn default_deadline_is_two_seconds() {
    let p = hostile();
    let start = Instant::now();
    let e = p.compute_tags(&hostile_ctx("loop", &[]), "r/app").await.unwrap_err();
    let took = start.elapsed();
    assert!(e.to_string().contains("deadline of 2000 ms"), "{e}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn memory_growth_is_stopped_at_the_limit() {
    let p = hostile();
    let e = p.compute_tags(&hostile_ctx("memory", &[]), "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::Limit { limit: LimitKind::Memory(_), .. }), "{e}");
    assert!(e.to_string().contains("memory limit of 64 MiB"), "{e}");
    assert!(e.to_string().contains("memory_mib"), "the fix is named: {e}");
    assert_healthy(&p).await;

    let small = hostile().with_limits(Limits { memory_mib: 4, ..Limits::default() });
    let e = small.compute_tags(&hostile_ctx("memory", &[]), "r/app").await.unwrap_err();
    assert!(e.to_string().contains("memory limit of 4 MiB"), "{e}");
}

#[tokio::test]
async fn filesystem_is_not_reachable() {
    let p = hostile();
    let e = p.compute_tags(&hostile_ctx("read-file", &[]), "r/app").await.unwrap_err();
    let PluginError::Returned { message, .. } = &e else { panic!("expected the plugin's own error, got {e}") };
    assert!(message.starts_with("read-file:"), "{message}");
    assert!(!message.contains("root:"), "{message}");
    assert_healthy(&p).await;
}

#[tokio::test]
async fn network_is_not_reachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = hostile();
    let e = p.compute_tags(&hostile_ctx("socket", &[format!("port={port}")]), "r/app").await.unwrap_err();
    let PluginError::Returned { message, .. } = &e else { panic!("expected the plugin's own error, got {e}") };
    assert!(message.starts_with("socket:"), "{message}");
    assert!(listener.accept().is_err(), "the plugin reached a host socket");
    assert_healthy(&p).await;
}

#[tokio::test]
async fn environment_is_empty() {
    // The test process has PATH (and HOME) set; the plugin must see neither.
    assert!(std::env::var_os("PATH").is_some());
    let p = hostile();
    for var in ["PATH", "HOME"] {
        let e = p.compute_tags(&hostile_ctx("env", &[format!("env={var}")]), "r/app").await.unwrap_err();
        let PluginError::Returned { message, .. } = &e else { panic!("expected the plugin's own error, got {e}") };
        assert!(message.starts_with("env:"), "{message}");
    }
    assert_healthy(&p).await;
}

#[tokio::test]
async fn printing_100_mb_hits_the_output_limit() {
    let p = hostile();
    let start = Instant::now();
    let e = p.compute_tags(&hostile_ctx("print", &[]), "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::Limit { limit: LimitKind::Output(_), .. }), "{e}");
    assert!(e.to_string().contains("output limit of 16 MiB"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert_healthy(&p).await;
}

#[tokio::test]
async fn log_flood_hits_the_output_limit() {
    let p = hostile();
    let e = p.compute_tags(&hostile_ctx("log-flood", &[]), "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::Limit { limit: LimitKind::Output(_), .. }), "{e}");
    assert_healthy(&p).await;
}

#[tokio::test]
async fn trap_is_an_error_not_a_crash() {
    let p = hostile();
    let e = p.compute_tags(&hostile_ctx("trap", &[]), "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::Trap { hook: "compute-tags", .. }), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
    assert_eq!(e.to_string().matches("wasm trap").count(), 1, "said once: {e}");
    assert_healthy(&p).await;
}

#[tokio::test]
async fn panic_message_reaches_the_error() {
    let p = hostile();
    let e = p.compute_tags(&hostile_ctx("panic", &[]), "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::Trap { .. }), "{e}");
    assert!(e.to_string().contains("hostile panic"), "{e}");
    assert_healthy(&p).await;
}

#[tokio::test]
async fn invalid_tag_is_rejected_with_the_value() {
    let p = hostile();
    let e = p.compute_tags(&hostile_ctx("bad-tag", &[]), "r/app").await.unwrap_err();
    assert!(matches!(e, PluginError::InvalidOutput { what: "tag", .. }), "{e}");
    assert!(e.to_string().contains("\"not a valid tag!\""), "{e}");
    assert_healthy(&p).await;
}

#[tokio::test]
async fn invalid_release_name_is_rejected_with_the_value() {
    let p = hostile();
    let e = p.release(&hostile_ctx("bad-release", &[])).await.unwrap_err();
    assert!(matches!(e, PluginError::InvalidOutput { what: "release name", .. }), "{e}");
    assert!(e.to_string().contains("Bad_Release"), "{e}");
}

#[test]
fn core_module_and_garbage_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    // The smallest valid core module: magic + version 1, layer 0.
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let host = PluginHost::new().unwrap();
    let e = host.load(&PluginRef::parse(core.to_str().unwrap()).unwrap()).err().unwrap();
    assert!(matches!(e, PluginError::NotAComponent { .. }), "{e}");
    assert!(e.to_string().contains("core WebAssembly module, not a component"), "{e}");

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"#!/bin/sh\necho hi\n").unwrap();
    let e = host.load(&PluginRef::parse(junk.to_str().unwrap()).unwrap()).err().unwrap();
    assert!(e.to_string().contains("not WebAssembly"), "{e}");

    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(plugin_file("test-hostile")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = host.load(&PluginRef::parse(truncated.to_str().unwrap()).unwrap()).err().unwrap();
    assert!(matches!(e, PluginError::NotAComponent { .. }), "{e}");
}

#[test]
fn pinned_reference_is_checked() {
    let path = plugin_file("test-hostile");
    let host = PluginHost::new().unwrap();
    let e =
        host.load(&PluginRef::parse(&format!("{}#sha256:{}", path.display(), "ab".repeat(32))).unwrap()).err().unwrap();
    assert!(matches!(e, PluginError::DigestMismatch { .. }), "{e}");
    let good = host.load(&PluginRef::parse(path.to_str().unwrap()).unwrap()).unwrap();
    let pinned = format!("{}#sha256:{}", path.display(), good.sha256());
    assert!(host.load(&PluginRef::parse(&pinned).unwrap()).is_ok());
}

/// Runs `prpod` with `args`, killing it after `secs` seconds: a hang is a failure.
fn prpod_within(args: &[&std::ffi::OsStr], secs: u64) -> std::process::Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(args)
        .env("PRPOD_CACHE_DIR", "off")
        .env_remove("PRPOD_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out,
        Err(_) => {
            let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("prpod {args:?} did not finish within {secs} s");
        }
    }
}

#[test]
fn a_fifo_or_a_device_as_config_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("prpod.toml");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0)
        .unwrap();
    for (config, kind) in [(fifo.as_os_str(), "FIFO"), ("/dev/zero".as_ref(), "a device")] {
        let start = Instant::now();
        let out = prpod_within(
            &["--config".as_ref(), config, "plugin".as_ref(), "check".as_ref(), "builtin:tag-default".as_ref()],
            20,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(kind) && stderr.contains(&*config.to_string_lossy()), "{stderr}");
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    }
}

/// 400 KB documents nested as deep as their size allows are refused before parsing, at once,
/// naming the input.
#[test]
fn deeply_nested_yaml_and_json_inputs_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx.json");
    std::fs::write(&ctx, serde_json::to_vec(&context(Some(7), "feature/x")).unwrap()).unwrap();
    let deep_yaml = [
        format!("kind: ConfigMap\ndata: {}", "[".repeat(400_000)),
        (0..890).map(|i| format!("{}k:\n", " ".repeat(i))).collect::<String>(),
        "- ".repeat(200_000),
    ];
    for (i, text) in deep_yaml.iter().enumerate() {
        let manifests = dir.path().join(format!("deep-{i}.yaml"));
        std::fs::write(&manifests, text).unwrap();
        let start = Instant::now();
        let args = ["plugin", "call", "verifier", "builtin:verify-baseline", "--context"];
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        args.extend([ctx.as_os_str(), "--manifests".as_ref(), manifests.as_os_str()]);
        let out = prpod_within(&args, 20);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("more than 100 levels") && stderr.contains(&*manifests.to_string_lossy()), "{stderr}");
        assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    }
    let deep_json = dir.path().join("deep.json");
    std::fs::write(&deep_json, format!("{{\"a\": {}", "[".repeat(400_000))).unwrap();
    let args = ["plugin", "call", "tag-policy", "builtin:tag-default", "--image", "r/x", "--context"];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    args.push(deep_json.as_os_str());
    let out = prpod_within(&args, 20);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("more than 100 levels") && stderr.contains(&*deep_json.to_string_lossy()), "{stderr}");
}

/// A component whose code compiles in minutes (deeply nested loops: a few hundred KB) is
/// refused before Cranelift sees it; one that is merely slow stops at the compile deadline;
/// the error names the plugin either way.
#[test]
fn loading_is_bounded_in_shape_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let depth = 30_000;
    let nested = format!("(component (core module (func {} {})))", "(loop ".repeat(depth), ")".repeat(depth));
    let nested_path = dir.path().join("nested-loops.wasm");
    std::fs::write(&nested_path, wat::parse_str(&nested).unwrap()).unwrap();
    let start = Instant::now();
    let e = PluginHost::new().unwrap().load(&PluginRef::parse(nested_path.to_str().unwrap()).unwrap()).err().unwrap();
    assert!(matches!(e, PluginError::LoadLimit { .. }), "{e}");
    assert!(e.to_string().contains("nested-loops.wasm") && e.to_string().contains("deep"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());

    // The same in the text format is refused before anything parses it.
    let text_path = dir.path().join("nested-loops.wat");
    std::fs::write(&text_path, &nested).unwrap();
    let e = PluginHost::new().unwrap().load(&PluginRef::parse(text_path.to_str().unwrap()).unwrap()).err().unwrap();
    assert!(e.to_string().contains("nested-loops.wat") && e.to_string().contains("not WebAssembly"), "{e}");

    // Within the shape bounds but slower to compile than the deadline: 10 000 small functions
    // (about a second; the compile goes on in the background after the refusal).
    let many =
        format!("(component (core module {}))", "(func (result i32) i32.const 1 i32.const 2 i32.add) ".repeat(10_000));
    let many_path = dir.path().join("many-functions.wasm");
    std::fs::write(&many_path, wat::parse_str(&many).unwrap()).unwrap();
    let deadline = Duration::from_millis(300);
    let host = PluginHost::new()
        .unwrap()
        .with_load_limits(prpod::plugins::LoadLimits { compile_deadline: deadline, ..Default::default() });
    let start = Instant::now();
    let e = host.load(&PluginRef::parse(many_path.to_str().unwrap()).unwrap()).err().unwrap();
    assert!(matches!(e, PluginError::LoadLimit { .. }), "{e}");
    assert!(e.to_string().contains("many-functions.wasm") && e.to_string().contains("took longer than 300 ms"), "{e}");
    assert!(start.elapsed() < deadline + Duration::from_secs(1), "took {:?}", start.elapsed());
}

/// A `prpod:plugin@0.1.0` tag-policy (the default tag-policy as built before 0.2.0, kept as a
/// fixture) with the 0.2.0 default chart-generator and verifier, through one host as one run
/// calls them: the 0.1.0 plugin's tags and release flow into the 0.2.0 plugins' inputs.
#[tokio::test]
async fn plugins_of_0_1_0_and_0_2_0_run_side_by_side_in_one_run() {
    use prpod::model::{AppSpec, DeployTarget, ImageRef, Manifest, Port, Resources, Severity};
    let host = PluginHost::new().unwrap();
    let fixture = crate::repo_root().join("tests/fixtures/wit-0.1.0/tag-default.wasm");
    let policy = host.load(&PluginRef::File { path: fixture, sha256: None }).unwrap();
    let chart = host.load(&PluginRef::parse("builtin:chart-webapp").unwrap()).unwrap();
    let verifier = host.load(&PluginRef::parse("builtin:verify-baseline").unwrap()).unwrap();
    assert_eq!((policy.wit_version(), policy.worlds()), ("0.1.0", vec![World::TagPolicy]));
    assert_eq!((chart.wit_version(), chart.worlds()), ("0.2.0", vec![World::ChartGenerator]));
    assert_eq!((verifier.wit_version(), verifier.worlds()), ("0.2.0", vec![World::Verifier]));

    let registry = "127.0.0.1:5443";
    let repository = format!("{registry}/acme/web");
    let mut ctx = context(Some(42), "Feature/Login");
    let tags = policy.compute_tags(&ctx, &repository).await.unwrap();
    assert_eq!(tags.primary, "pr-42");
    assert_eq!(tags.extra, ["br-feature-login", "sha-0123456789ab"]);
    let release = policy.release(&ctx).await.unwrap();
    assert_eq!(release.name, "web-pr-42");
    let image = ImageRef { repository: repository.clone(), tag: Some(tags.primary.clone()), digest: None };
    ctx.target = Some(DeployTarget { registry: registry.into(), image: image.clone(), tags, release });

    // The 0.2.0 chart-generator completes the app's image from the target the 0.1.0 policy made.
    let app = AppSpec {
        name: "web".into(),
        image: ImageRef { repository: String::new(), tag: None, digest: None },
        ports: vec![Port { name: "http".into(), container_port: 8080 }],
        env: vec![],
        replicas: 1,
        resources: Resources::default(),
        health_path: None,
        ingress_host: None,
    };
    let files = chart.generate(&ctx, &app).await.unwrap();
    let chart_yaml = files.iter().find(|f| f.path == "Chart.yaml").expect("a Chart.yaml");
    assert!(String::from_utf8_lossy(&chart_yaml.content).contains("appVersion: \"pr-42\""), "{chart_yaml:?}");
    let values = files.iter().find(|f| f.path == "values.yaml").expect("a values.yaml");
    assert!(String::from_utf8_lossy(&values.content).contains("pr-42"), "{values:?}");

    // The 0.2.0 verifier judges images against the registry of that same target.
    let deployment = |image: &str| Manifest {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "web".into(),
        namespace: Some("web-pr-42".into()),
        text: format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: web-pr-42}}\nspec:\n  template:\n    \
             spec:\n      containers:\n      - name: web\n        image: {image}\n"
        ),
    };
    let findings = verifier.check_manifests(&ctx, &[deployment("evil.example/web:1")]).await.unwrap();
    let registry_errors: Vec<_> =
        findings.iter().filter(|f| f.rule == "image-registry" && f.severity == Severity::Error).collect();
    assert_eq!(registry_errors.len(), 1, "{findings:?}");
    assert!(registry_errors[0].message.contains(registry), "{findings:?}");
    let ours = verifier.check_manifests(&ctx, &[deployment(&format!("{repository}:pr-42"))]).await.unwrap();
    assert!(!ours.iter().any(|f| f.rule == "image-registry"), "{ours:?}");
    // The same verifier built against 0.1.0, in the same host, judges alike.
    let old_verifier = host
        .load(&PluginRef::File {
            path: crate::repo_root().join("tests/fixtures/wit-0.1.0/verify-baseline.wasm"),
            sha256: None,
        })
        .unwrap();
    assert_eq!(old_verifier.wit_version(), "0.1.0");
    assert_eq!(old_verifier.check_manifests(&ctx, &[deployment("evil.example/web:1")]).await.unwrap(), findings);
}

/// What `prpod:plugin/host` (new in 0.2.0) tells a plugin: prpod's version and the call's
/// limits, as configured, and the time left; and `logging.enabled`, the host's log filter.
#[tokio::test]
async fn a_0_2_0_plugin_reads_its_limits_and_prpods_version_from_the_host() {
    // This thread's log filter: errors recorded, debug dropped (the call runs on this thread).
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_test_writer().finish();
    let _log = tracing::subscriber::set_default(subscriber);
    let limits = Limits { memory_mib: 48, deadline_ms: 1500, output_mib: 3 };
    let p = hostile().with_limits(limits);
    assert_eq!(p.wit_version(), "0.2.0");
    let tags = p.compute_tags(&hostile_ctx("host-info", &[]), "r/app").await.unwrap();
    assert_eq!(tags.primary, "deadline-1500");
    let version = env!("CARGO_PKG_VERSION").replace('.', "-");
    let want = [
        format!("memory-{}", 48u64 << 20),
        format!("output-{}", 3u64 << 20),
        format!("prpod-{version}"),
        "error-logged-true".to_string(),
        "debug-logged-false".to_string(),
        "remaining-ok".to_string(),
    ];
    let extra: std::collections::BTreeSet<_> = tags.extra.iter().cloned().collect();
    for w in &want {
        assert!(extra.contains(w), "{w} missing from {:?}", tags.extra);
    }
}

/// One `prpod plan` with a `prpod:plugin@0.1.0` tag-policy, the 0.2.0 default chart-generator,
/// and two verifiers, the 0.2.0 default and the same verifier built against 0.1.0: the 0.1.0
/// policy names the tags, release and image the 0.2.0 chart deploys, and both verifiers pass
/// the result.
#[test]
fn a_plan_runs_0_1_0_and_0_2_0_plugins_together() {
    use crate::run::{Preview, explain, publish_example};
    let w = prpod_test_support::world();
    let fixtures = crate::repo_root().join("tests/fixtures/wit-0.1.0");
    let (name, head) = publish_example(w);
    let extra = format!(
        "\n[plugins.tag-policy]\nref = \"{}\"\n\n[[plugins.verifier]]\nref = \"builtin:verify-baseline\"\n\n\
         [[plugins.verifier]]\nref = \"{}\"\n",
        fixtures.join("tag-default.wasm").display(),
        fixtures.join("verify-baseline.wasm").display()
    );
    let p =
        Preview::new(false, &prpod_test_support::unique_name("prpod-test/wit-versions"), &extra).of_repository(&name);
    let mut args = vec!["--output".to_string(), "json".into(), "plan".into()];
    args.extend(p.context(&head));
    args.push("--show-manifests".into());
    let out = p.prpod(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = crate::json(&out);
    let primary = format!("pr-{}", p.pr);
    assert_eq!(r["tags"]["primary"], primary.as_str(), "{r}");
    assert_eq!(r["release"]["name"], p.ns.as_str(), "{r}");
    let manifests = r["manifests"].as_str().unwrap();
    assert!(manifests.contains(&format!("{}:{primary}", p.repository)), "{manifests}");
    assert!(r["chart"].as_str().unwrap().contains("generated by builtin:chart-webapp"), "{r}");
    // Both verifiers were loaded and called on these manifests (a plugin that cannot be loaded
    // or called fails the plan), and neither found anything: the manifests are clean.
    assert_eq!(r["findings"], serde_json::json!([]), "{r}");
}
