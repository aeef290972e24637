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
