//! `prpod plugin ...` as a process: JSON on stdout, exit codes, errors that name the input.

use std::path::Path;
use std::process::{Command, Output};

use crate::{context, json, stderr};

fn prpod(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(args)
        .env("PRPOD_CACHE_DIR", cache)
        .env_remove("PRPOD_CONFIG")
        .current_dir(cache)
        .output()
        .expect("failed to run prpod")
}

fn write_context(dir: &Path) -> String {
    let p = dir.join("ctx.json");
    std::fs::write(&p, serde_json::to_vec(&context(Some(42), "feature/login")).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

/// `prpod plugin call tag-policy builtin:tag-default --context CTX --image 127.0.0.1:5443/acme/web EXTRA...`.
fn call_tag_default(dir: &Path, ctx: &str, extra: &[&str]) -> Output {
    let mut args = vec!["plugin", "call", "tag-policy", "builtin:tag-default", "--context", ctx];
    args.extend(["--image", "127.0.0.1:5443/acme/web"]);
    args.extend(extra);
    prpod(dir, &args)
}

#[test]
fn call_tag_policy_prints_tags_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_context(dir.path());
    let out = call_tag_default(dir.path(), &ctx, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["primary"], "pr-42");
    assert_eq!(v["extra"][0], "br-feature-login");
    assert_eq!(v["cache_from"][1], "cache-br-main");
    assert_eq!(v["cache_to"], "cache-pr-42");
    assert_eq!(v["release"]["name"], "web-pr-42");
    assert_eq!(v["release"]["namespace"], "web-pr-42");
}

#[test]
fn compiled_plugins_are_cached_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let cache_entries = |d: &Path| {
        std::fs::read_dir(d.join("components"))
            .map(|r| r.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "cwasm")).count())
            .unwrap_or(0)
    };
    assert_eq!(cache_entries(dir.path()), 0);
    let first = prpod(dir.path(), &["plugin", "check", "builtin:tag-default"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(cache_entries(dir.path()), 1);
    let second = Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(["plugin", "check", "builtin:tag-default"])
        .env("PRPOD_CACHE_DIR", dir.path())
        .env("PRPOD_LOG", "prpod=debug")
        .output()
        .unwrap();
    assert!(second.status.success());
    assert!(stderr(&second).contains("loaded compiled plugin from cache"), "{}", stderr(&second));
    assert_eq!(cache_entries(dir.path()), 1);
}

#[test]
fn check_names_worlds_and_refuses_core_modules() {
    let dir = tempfile::tempdir().unwrap();
    let out = prpod(dir.path(), &["plugin", "check", "builtin:verify-baseline"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["worlds"], serde_json::json!(["verifier"]));
    assert!(v["not_implemented"]["tag-policy"].is_string());

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = prpod(dir.path(), &["plugin", "check", core.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a component"), "{}", stderr(&out));
}

#[test]
fn export_writes_a_pinnable_builtin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tags.wasm");
    let out = prpod(dir.path(), &["plugin", "export", "builtin:tag-default", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(std::fs::read(&file).unwrap(), prpod::plugins::reference::builtin("tag-default").unwrap());
    let pinned = v["reference"].as_str().unwrap();
    let out = prpod(dir.path(), &["plugin", "check", pinned]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = prpod(dir.path(), &["plugin", "export", "builtin:nope", "-o", "x.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("builtin:tag-default"), "lists the builtins: {}", stderr(&out));
}

/// `prpod plugin call verifier builtin:verify-baseline --context CTX FLAG FILE`.
fn verify(dir: &Path, ctx: &str, flag: &str, file: &Path) -> Output {
    let args =
        ["plugin", "call", "verifier", "builtin:verify-baseline", "--context", ctx, flag, file.to_str().unwrap()];
    prpod(dir, &args)
}

#[test]
fn verifier_exit_code_follows_error_findings() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_context(dir.path());
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      \
         hostNetwork: true\n      containers:\n      - name: web\n        image: nginx:latest\n        \
         securityContext: {privileged: true}\n",
    )
    .unwrap();
    let out = verify(dir.path(), &ctx, "--manifests", &bad);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    let rules: Vec<&str> = v["findings"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    for rule in ["privileged", "host-network", "resources", "run-as-non-root", "image-pinned"] {
        assert!(rules.contains(&rule), "missing {rule} in {rules:?}");
    }
    assert_eq!(v["hook"], "check-manifests");

    let status = dir.path().join("status.json");
    std::fs::write(
        &status,
        r#"{"release": {"name": "pr-42", "namespace": "pr-42"},
            "workloads": [{"kind": "Deployment", "name": "web", "desired": 1, "ready": 0, "available": 0,
              "pods": [{"name": "web-abc", "phase": "Pending",
                "containers": [{"name": "web", "waiting_reason": "ImagePullBackOff", "waiting_message": "not found"}]}]}]}"#,
    )
    .unwrap();
    let out = verify(dir.path(), &ctx, "--status", &status);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("web-abc") && text.contains("ImagePullBackOff"), "{text}");

    let healthy = dir.path().join("ok.json");
    std::fs::write(
        &healthy,
        r#"{"release": {"name": "pr-42", "namespace": "pr-42"},
            "workloads": [{"kind": "Deployment", "name": "web", "desired": 1, "ready": 1, "available": 1}]}"#,
    )
    .unwrap();
    let out = verify(dir.path(), &ctx, "--status", &healthy);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn bad_inputs_name_the_file_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx.json");
    std::fs::write(&ctx, r#"{"repository": "acme/web", "branhc": "x"}"#).unwrap();
    let out = prpod(
        dir.path(),
        &["plugin", "call", "tag-policy", "builtin:tag-default", "--context", ctx.to_str().unwrap(), "--image", "r/a"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("ctx.json") && err.contains("branhc"), "{err}");

    let cfg = dir.path().join("prpod.toml");
    std::fs::write(&cfg, "[plugins.tag-policy.limits]\ndeadline_ms = 0\n").unwrap();
    let out = prpod(dir.path(), &["plugin", "check", "builtin:tag-default"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("plugins.tag-policy.limits.deadline_ms"), "{}", stderr(&out));
}

#[test]
fn plugin_failure_exits_3_with_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(Some(1), "loop");
    ctx.labels.clear();
    let p = dir.path().join("ctx.json");
    std::fs::write(&p, serde_json::to_vec(&ctx).unwrap()).unwrap();
    let hostile = crate::plugin_file("test-hostile");
    let out = prpod(
        dir.path(),
        &[
            "--output",
            "json",
            "plugin",
            "call",
            "tag-policy",
            hostile.to_str().unwrap(),
            "--context",
            p.to_str().unwrap(),
            "--image",
            "r/a",
            "--deadline-ms",
            "200",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let v = json(&out);
    assert!(v["error"].as_str().unwrap().contains("deadline of 200 ms"), "{v}");
}

#[test]
fn chart_generator_refuses_a_non_empty_out_dir() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_context(dir.path());
    let app = dir.path().join("app.json");
    std::fs::write(&app, r#"{"name": "web", "image": {"repository": "127.0.0.1:5443/acme/web", "tag": "pr-42"}, "ports": [{"name": "http", "container_port": 8080}]}"#).unwrap();
    let out_dir = dir.path().join("chart");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("keep.txt"), "mine").unwrap();
    let args = |out: &str| {
        vec![
            "plugin".to_string(),
            "call".into(),
            "chart-generator".into(),
            "builtin:chart-webapp".into(),
            "--context".into(),
            ctx.clone(),
            "--app".into(),
            app.to_str().unwrap().into(),
            "--out".into(),
            out.into(),
        ]
    };
    let a = args(out_dir.to_str().unwrap());
    let out = prpod(dir.path(), &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(out_dir.join("keep.txt")).unwrap(), "mine");

    let fresh = dir.path().join("fresh");
    let a = args(fresh.to_str().unwrap());
    let out = prpod(dir.path(), &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fresh.join("Chart.yaml").is_file());
    assert!(fresh.join("templates/deployment.yaml").is_file());
}

#[test]
fn out_of_range_limit_flag_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_context(dir.path());
    let out = call_tag_default(dir.path(), &ctx, &["--memory-mib", "100000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`--memory-mib` is 100000"), "{}", stderr(&out));
}

/// A context file for `branch` (the hostile plugin's mode), and its path.
fn write_context_for(dir: &Path, name: &str, branch: &str, labels: &[&str]) -> String {
    let mut ctx = context(Some(7), branch);
    ctx.labels = labels.iter().map(|l| l.to_string()).collect();
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(&ctx).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

fn hostile_ref() -> String {
    crate::plugin_file("test-hostile").to_str().unwrap().to_string()
}

fn chart_args<'a>(plugin: &'a str, ctx: &'a str, app: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["plugin", "call", "chart-generator", plugin, "--context", ctx, "--app", app, "--out", out]
}

fn write_app(dir: &Path) -> String {
    let app = dir.join("app.json");
    std::fs::write(&app, r#"{"name": "web", "image": {"repository": "127.0.0.1:5443/acme/web", "tag": "pr-42"}}"#)
        .unwrap();
    app.to_str().unwrap().to_string()
}

#[test]
fn plugin_text_cannot_drive_the_terminal_or_forge_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_context_for(dir.path(), "ansi.json", "ansi", &[]);
    let hostile = hostile_ref();
    for format in ["human", "json"] {
        let out = Command::new(env!("CARGO_BIN_EXE_prpod"))
            .args(["--output", format, "plugin", "call", "tag-policy", &hostile, "--context", &ctx, "--image", "r/app"])
            .env("PRPOD_CACHE_DIR", dir.path().join("cache"))
            .env("PRPOD_LOG", "prpod::plugin=info")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{format}");
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains('\x1b') && !text.contains('\x07'), "{format} {stream}: {text:?}");
            assert!(
                !text.lines().any(|l| l.starts_with("2026-11-28T00:00:00Z")),
                "{format} {stream}: a plugin forged a log line: {text}"
            );
        }
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("innocent\\n2026-11-28"),
            "the log line is kept, escaped"
        );
    }
}

#[test]
fn devices_and_fifos_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fifo = fifo.to_str().unwrap();
    let ctx = write_context(dir.path());
    let cases: Vec<Vec<&str>> = vec![
        vec!["plugin", "check", "/dev/zero"],
        vec!["plugin", "check", fifo],
        vec!["plugin", "call", "tag-policy", "builtin:tag-default", "--context", "/dev/zero", "--image", "r/a"],
        vec!["plugin", "call", "tag-policy", "builtin:tag-default", "--context", fifo, "--image", "r/a"],
        vec!["plugin", "call", "verifier", "builtin:verify-baseline", "--context", &ctx, "--manifests", "/dev/zero"],
    ];
    for args in cases {
        let start = std::time::Instant::now();
        let out = prpod(dir.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("not a regular file"), "{args:?}: {}", stderr(&out));
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "{args:?} took {:?}", start.elapsed());
    }
}

#[test]
fn export_refuses_to_overwrite_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tags.wasm");
    std::fs::write(&file, b"mine").unwrap();
    let path = file.to_str().unwrap();
    let out = prpod(dir.path(), &["plugin", "export", "builtin:tag-default", "-o", path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    let out = prpod(dir.path(), &["plugin", "export", "builtin:tag-default", "-o", path, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&file).unwrap(), prpod::plugins::reference::builtin("tag-default").unwrap());
}

#[test]
fn a_repository_url_with_a_token_is_refused_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(Some(42), "main");
    ctx.repository_url = "https://x-access-token:ghs_NotForPlugins42@github.com/acme/web.git".into();
    let p = dir.path().join("ctx.json");
    std::fs::write(&p, serde_json::to_vec(&ctx).unwrap()).unwrap();
    let out = call_tag_default(dir.path(), p.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("PRPOD_GIT_TOKEN") && err.contains("repository_url"), "{err}");
    assert!(!err.contains("ghs_NotForPlugins42") && !String::from_utf8_lossy(&out.stdout).contains("ghs_"), "{err}");
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_context(dir.path());
    for format in ["human", "json"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_prpod"))
            .args(["--output", format, "plugin", "call", "tag-policy", "builtin:tag-default"])
            .args(["--context", &ctx, "--image", "r/a"])
            .env("PRPOD_CACHE_DIR", dir.path().join("cache"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{format}: {err}");
        assert_eq!(out.status.code(), Some(0), "{format}: {err}");
    }
}

#[test]
fn a_symlink_planted_in_out_during_the_call_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = write_context_for(dir.path(), "slow.json", "slow-chart", &["sleep-ms=1500"]);
    let app = write_app(dir.path());
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let out_dir = dir.path().join("chart");
    let hostile = hostile_ref();
    let args = chart_args(&hostile, &ctx, &app, out_dir.to_str().unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(&args)
        .env("PRPOD_CACHE_DIR", dir.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the plugin sleeps: `--out` appears, with `templates` pointing at the victim.
    std::thread::sleep(std::time::Duration::from_millis(700));
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::symlink(&victim, out_dir.join("templates")).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not an empty directory"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "prpod wrote through the planted symlink");
    // No temporary directory is left beside --out.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".prpod-chart-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn unwritable_chart_paths_exit_3_naming_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let app = write_app(dir.path());
    let hostile = hostile_ref();
    for mode in ["file-and-dir", "long-name", "chart-yaml-dir"] {
        let ctx = write_context_for(dir.path(), &format!("{mode}.json"), mode, &[]);
        let out_dir = dir.path().join(format!("out-{mode}"));
        let out = prpod(dir.path(), &chart_args(&hostile, &ctx, &app, out_dir.to_str().unwrap()));
        assert_eq!(out.status.code(), Some(3), "{mode}: {}", stderr(&out));
        assert!(stderr(&out).contains("test_hostile.wasm"), "{mode}: {}", stderr(&out));
        assert!(!out_dir.exists(), "{mode}: half a chart was left");
    }
}
