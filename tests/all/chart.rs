//! The default chart (`builtin:chart-webapp`) rendered by the real Helm: it lints strictly, its
//! rendering matches the checked-in golden file (`PRPOD_BLESS=1` rewrites it), and the default
//! verifier finds nothing wrong with it.

use std::path::Path;
use std::process::Output;

use prpod::model::{
    AppSpec, DeployTarget, EnvVar, ImageRef, Manifest, Port, PrContext, ReleaseTarget, Resources, Severity, TagSet,
};
use prpod::plugins::{PluginHost, PluginRef};
use prpod_test_support::{HelmHome, world};

use crate::{context, repo_root};

const DIGEST: &str = "sha256:4b0c6a3b0f6b1f8b4f2e1c9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b";

fn target() -> DeployTarget {
    DeployTarget {
        registry: "127.0.0.1:5443".into(),
        image: ImageRef {
            repository: "127.0.0.1:5443/acme/web".into(),
            tag: Some("pr-42".into()),
            digest: Some(DIGEST.into()),
        },
        tags: TagSet {
            primary: "pr-42".into(),
            extra: vec!["pr-feature-login".into(), "sha-0123456789ab".into()],
            cache_from: vec![],
            cache_to: None,
        },
        release: ReleaseTarget { name: "pr-42".into(), namespace: "pr-42".into() },
    }
}

fn ctx() -> PrContext {
    let mut c = context(Some(42), "feature/login");
    c.target = Some(target());
    c
}

fn full_app() -> AppSpec {
    AppSpec {
        name: "web".into(),
        image: target().image,
        ports: vec![Port { name: "http".into(), container_port: 8080 }],
        env: vec![EnvVar { name: "GREETING".into(), value: "hello: \"world\" # not a comment".into() }],
        replicas: 2,
        resources: Resources {
            cpu_request: Some("50m".into()),
            memory_request: Some("32Mi".into()),
            cpu_limit: Some("500m".into()),
            memory_limit: Some("128Mi".into()),
        },
        health_path: Some("/healthz".into()),
        ingress_host: Some("pr-42.preview.example.com".into()),
    }
}

async fn generate(app: &AppSpec, dir: &Path) {
    let plugin = PluginHost::new().unwrap().load(&PluginRef::parse("builtin:chart-webapp").unwrap()).unwrap();
    for f in plugin.generate(&ctx(), app).await.unwrap() {
        let p = dir.join(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, f.content).unwrap();
    }
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn lint_and_template(helm3: bool, dir: &Path) -> String {
    let w = world();
    let home = HelmHome::new();
    let helm = || if helm3 { w.helm3_cmd(&home) } else { w.helm_cmd(&home) };
    ok(helm().args(["lint", "--strict"]).arg(dir).output().unwrap(), "helm lint --strict");
    ok(helm().args(["template", "pr-42"]).arg(dir).args(["--namespace", "pr-42"]).output().unwrap(), "helm template")
}

#[tokio::test]
async fn default_chart_matches_golden_and_passes_the_default_verifier() {
    let dir = tempfile::tempdir().unwrap();
    generate(&full_app(), dir.path()).await;
    let rendered = lint_and_template(false, dir.path());

    let golden = repo_root().join("tests/golden/chart-webapp.yaml");
    if std::env::var_os("PRPOD_BLESS").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e}; run with PRPOD_BLESS=1 to create it", golden.display()));
    assert_eq!(
        rendered,
        expected,
        "rendered chart differs from {}; if intended, rerun with PRPOD_BLESS=1",
        golden.display()
    );

    let manifests = Manifest::parse_all(&rendered).unwrap();
    let kinds: Vec<&str> = manifests.iter().map(|m| m.kind.as_str()).collect();
    for kind in ["Deployment", "Service", "Ingress"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    // The tag moves with every push; the digest is what makes the Deployment roll.
    assert!(rendered.contains(&format!("image: \"127.0.0.1:5443/acme/web:pr-42@{DIGEST}\"")), "{rendered}");
    // Helm 4's server-side apply against Kubernetes 1.20 needs a protocol on every port entry.
    for m in &manifests {
        let v: serde_yaml::Value = serde_yaml::from_str(&m.text).unwrap();
        let mut ports = Vec::new();
        collect_ports(&v, &mut ports);
        for p in ports {
            assert_eq!(p.get("protocol").and_then(|x| x.as_str()), Some("TCP"), "{}/{}: {p:?}", m.kind, m.name);
        }
    }

    let verifier = PluginHost::new().unwrap().load(&PluginRef::parse("builtin:verify-baseline").unwrap()).unwrap();
    let findings = verifier.check_manifests(&ctx(), &manifests).await.unwrap();
    let errors: Vec<_> = findings.iter().filter(|f| f.severity == Severity::Error).collect();
    assert!(errors.is_empty(), "the default verifier rejects the default chart: {errors:?}");
}

fn collect_ports<'a>(v: &'a serde_yaml::Value, out: &mut Vec<&'a serde_yaml::Value>) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, val) in m {
                if k.as_str() == Some("ports")
                    && let Some(seq) = val.as_sequence()
                {
                    out.extend(seq.iter());
                }
                collect_ports(val, out);
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(|x| collect_ports(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn minimal_chart_lints_with_helm_4_and_helm_3() {
    let app = AppSpec {
        name: "api".into(),
        image: ImageRef { repository: "127.0.0.1:5443/acme/api".into(), tag: Some("pr-42".into()), digest: None },
        ports: vec![Port { name: "http".into(), container_port: 3000 }],
        env: vec![],
        replicas: 1,
        resources: Resources::default(),
        health_path: None,
        ingress_host: None,
    };
    for helm3 in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        generate(&app, dir.path()).await;
        let rendered = lint_and_template(helm3, dir.path());
        assert!(!rendered.contains("kind: Ingress"), "no ingress host, no Ingress");
        assert!(rendered.contains("image: \"127.0.0.1:5443/acme/api:pr-42\""), "{rendered}");
    }
}

/// The default chart really runs: Helm 4 (server-side apply against Kubernetes 1.20) installs
/// it with `--wait`, the pod answers HTTP on its IP, and the default verifier's post-deploy
/// hook, fed the live Deployment status, finds nothing wrong.
#[tokio::test]
async fn default_chart_deploys_and_serves_with_helm_4() {
    let w = world();
    let ns = w.namespace("chart-deploy");
    let (repository, tag) = w.web_image_plain.rsplit_once(':').expect("web image has a tag");
    let app = AppSpec {
        name: "web".into(),
        image: ImageRef { repository: repository.into(), tag: Some(tag.into()), digest: None },
        ports: vec![Port { name: "http".into(), container_port: w.web_port }],
        env: vec![],
        replicas: 1,
        resources: Resources {
            cpu_request: Some("10m".into()),
            memory_request: Some("16Mi".into()),
            cpu_limit: Some("200m".into()),
            memory_limit: Some("64Mi".into()),
        },
        health_path: Some("/".into()),
        ingress_host: None,
    };
    let dir = tempfile::tempdir().unwrap();
    generate(&app, dir.path()).await;
    let home = HelmHome::new();
    ok(
        w.helm_cmd(&home)
            .args(["upgrade", "--install", "pr-42"])
            .arg(dir.path())
            .args(["--namespace", &ns.name, "--wait", "--timeout", "120s"])
            .output()
            .unwrap(),
        "helm upgrade --install --wait",
    );

    let ip = w.kubectl_ok([
        "get",
        "pods",
        "-n",
        &ns.name,
        "-l",
        "app.kubernetes.io/name=web",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    let body = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "10", &format!("http://{ip}:{}/", w.web_port)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&body.stdout).trim(), w.web_body, "GET / on the pod IP {ip}");

    let deploy: serde_json::Value =
        serde_json::from_str(&w.kubectl_ok(["get", "deployment", "web", "-n", &ns.name, "-o", "json"])).unwrap();
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as u32;
    let status = prpod::model::ReleaseStatus {
        release: ReleaseTarget { name: "pr-42".into(), namespace: ns.name.clone() },
        workloads: vec![prpod::model::WorkloadStatus {
            kind: "Deployment".into(),
            name: "web".into(),
            desired: count(&deploy["spec"]["replicas"]),
            ready: count(&deploy["status"]["readyReplicas"]),
            available: count(&deploy["status"]["availableReplicas"]),
            conditions: vec![],
            pods: vec![],
        }],
        warnings: vec![],
    };
    assert_eq!(status.workloads[0].available, 1, "{deploy}");
    let verifier = PluginHost::new().unwrap().load(&PluginRef::parse("builtin:verify-baseline").unwrap()).unwrap();
    let findings = verifier.check_release(&context(Some(42), "feature/login"), &status).await.unwrap();
    assert!(findings.iter().all(|f| f.severity != Severity::Error), "{findings:?}");
    ok(w.helm_cmd(&home).args(["uninstall", "pr-42", "--namespace", &ns.name]).output().unwrap(), "helm uninstall");
}

/// `--out`'s parent is refused when others can write it without the sticky bit, saying why;
/// a sticky one (like /tmp) is fine.
#[test]
fn an_out_parent_others_can_write_is_refused_unless_sticky() {
    use std::os::unix::fs::PermissionsExt;
    let files = vec![prpod::model::ChartFile { path: "Chart.yaml".into(), content: b"name: x\n".to_vec() }];
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = prpod::plugins::chart::write_chart(&open.join("out"), &files).unwrap_err().to_string();
    assert!(e.contains("writable by everyone and not sticky"), "{e}");
    assert!(!open.join("out").exists());
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    prpod::plugins::chart::write_chart(&open.join("out"), &files).unwrap();
    assert!(open.join("out/Chart.yaml").is_file());
}

/// Swapping `--out`'s parent for a symlink while the plugin runs does not move the chart: it
/// lands in the directory that was opened before the plugin ran.
#[test]
fn swapping_the_out_parent_during_generation_does_not_redirect_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent");
    let moved = dir.path().join("parent.moved");
    let attacker = dir.path().join("attacker");
    std::fs::create_dir(&parent).unwrap();
    std::fs::create_dir(&attacker).unwrap();
    let mut c = context(Some(7), "slow-chart");
    c.labels = vec!["sleep-ms=1500".into()];
    let ctx_file = dir.path().join("ctx.json");
    std::fs::write(&ctx_file, serde_json::to_vec(&c).unwrap()).unwrap();
    let app_file = dir.path().join("app.json");
    std::fs::write(&app_file, serde_json::to_vec(&full_app()).unwrap()).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(["plugin", "call", "chart-generator"])
        .arg(crate::plugin_file("test-hostile"))
        .arg("--context")
        .arg(&ctx_file)
        .arg("--app")
        .arg(&app_file)
        .arg("--out")
        .arg(parent.join("out"))
        .args(["--deadline-ms", "10000"])
        .env("PRPOD_CACHE_DIR", "off")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the plugin sleeps (loading it takes a while too), swap the parent.
    std::thread::sleep(std::time::Duration::from_millis(700));
    std::fs::rename(&parent, &moved).unwrap();
    std::os::unix::fs::symlink(&attacker, &parent).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read_dir(&attacker).unwrap().count(), 0, "the chart went to the swapped-in directory");
    assert!(moved.join("out/Chart.yaml").is_file(), "the chart is in the directory opened first");
}

/// A racer that keeps swapping prpod's temporary directory beside `--out` for a symlink to a
/// private directory never gets that directory chmod-ed or `--out` turned into a symlink.
#[test]
fn swapping_the_temporary_directory_never_redirects_a_write_or_a_chmod() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    let files: Vec<prpod::model::ChartFile> = (0..200)
        .map(|i| prpod::model::ChartFile { path: format!("templates/f{i}.yaml"), content: vec![b'x'; 512] })
        .chain([prpod::model::ChartFile { path: "Chart.yaml".into(), content: b"name: x\n".to_vec() }])
        .collect();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let swaps = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let racer = {
        let (parent, victim, stop, swaps) = (parent.clone(), victim.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for e in std::fs::read_dir(&parent).unwrap().flatten() {
                    let name = e.file_name();
                    if name.to_string_lossy().starts_with(".prpod-chart-") && e.file_type().is_ok_and(|t| t.is_dir()) {
                        let aside = parent.join(format!("aside-{}", swaps.load(Ordering::Relaxed)));
                        if std::fs::rename(e.path(), &aside).is_ok() {
                            let _ = std::os::unix::fs::symlink(&victim, e.path());
                            swaps.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    };
    for round in 0..30 {
        let out = parent.join(format!("out-{round}"));
        let _ = prpod::plugins::chart::write_chart(&out, &files);
        if let Ok(m) = std::fs::symlink_metadata(&out) {
            assert!(!m.file_type().is_symlink(), "round {round}: --out ended as a symlink");
        }
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "round {round}: the victim was chmod-ed");
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "round {round}: a file was written into the victim");
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 0, "the racer never won a swap; the test proved nothing");
}
