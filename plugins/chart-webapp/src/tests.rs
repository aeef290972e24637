use super::*;
use crate::prpod::plugin::types::{DeployTarget, EnvVar, Event, Port, ReleaseTarget, Resources, TagSet};
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn ctx() -> PrContext {
    PrContext {
        repository_url: "https://git.example.invalid/acme/web.git".into(),
        repository: "acme/web".into(),
        number: Some(42),
        branch: "feature/Login: yes".into(),
        base_branch: Some("main".into()),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        event: Event::Opened,
        labels: vec![],
        author: "alice".into(),
        draft: false,
        fork: false,
        target: Some(DeployTarget {
            registry: "127.0.0.1:5443".into(),
            image: ImageRef {
                repository: "127.0.0.1:5443/acme/web".into(),
                tag: Some("pr-42".into()),
                digest: Some(format!("sha256:{}", "ab".repeat(32))),
            },
            tags: TagSet {
                primary: "pr-42".into(),
                extra: vec!["sha-0123456789ab".into()],
                cache_from: vec![],
                cache_to: None,
            },
            release: ReleaseTarget { name: "pr-42".into(), namespace: "pr-42".into() },
        }),
    }
}

pub(crate) fn app() -> AppSpec {
    AppSpec {
        name: "web".into(),
        image: ImageRef { repository: "127.0.0.1:5443/acme/web".into(), tag: None, digest: None },
        ports: vec![
            Port { name: "http".into(), container_port: 8080 },
            Port { name: "metrics".into(), container_port: 9090 },
        ],
        env: vec![
            EnvVar { name: "GREETING".into(), value: "yes: \"quoted\" # not a comment".into() },
            EnvVar { name: "NUM".into(), value: "0123".into() },
        ],
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

fn file<'a>(files: &'a [ChartFile], path: &str) -> &'a str {
    let f = files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("no {path}"));
    std::str::from_utf8(&f.content).unwrap()
}

#[test]
fn generates_all_files() {
    let files = generate_chart(&ctx(), &app()).unwrap();
    let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "Chart.yaml",
            "values.yaml",
            "templates/_helpers.tpl",
            "templates/deployment.yaml",
            "templates/service.yaml",
            "templates/ingress.yaml",
            "templates/NOTES.txt"
        ]
    );
    let chart = file(&files, "Chart.yaml");
    assert!(chart.contains("\nname: web\n"), "{chart}");
    assert!(chart.contains("\nversion: 0.1.0\n"), "{chart}");
    assert!(chart.contains("\nappVersion: \"pr-42\"\n"), "{chart}");
    assert!(chart.contains("pull request #42 of acme/web"), "{chart}");
    let values = file(&files, "values.yaml");
    for needle in [
        "  repository: \"127.0.0.1:5443/acme/web\"\n",
        "  tag: \"pr-42\"\n",
        "  digest: \"sha256:abab",
        "replicas: 2\n",
        "  number: \"42\"\n",
        "  branch: \"feature/Login: yes\"\n",
        "    value: \"yes: \\\"quoted\\\" # not a comment\"\n",
        "    value: \"0123\"\n",
        "    cpu: \"50m\"\n",
        "healthPath: \"/healthz\"\n",
        "  enabled: true\n  host: \"pr-42.preview.example.com\"\n",
        "tolerations: []\n",
        "terminationGracePeriodSeconds: 5\n",
        "  runAsUser: 65532\n",
    ] {
        assert!(values.contains(needle), "missing {needle:?} in\n{values}");
    }
}

#[test]
fn app_version_falls_back_to_short_sha() {
    let mut c = ctx();
    c.target = None;
    let mut a = app();
    a.image.digest = Some(format!("sha256:{}", "cd".repeat(32)));
    let files = generate_chart(&c, &a).unwrap();
    assert!(file(&files, "Chart.yaml").contains("appVersion: \"0123456789ab\""));
    assert!(file(&files, "values.yaml").contains("  tag: \"\"\n"));
}

#[test]
fn no_ingress_no_health_no_number() {
    let mut c = ctx();
    c.number = None;
    let mut a = app();
    a.ingress_host = None;
    a.health_path = None;
    a.resources = Resources { cpu_request: None, memory_request: None, cpu_limit: None, memory_limit: None };
    let files = generate_chart(&c, &a).unwrap();
    let values = file(&files, "values.yaml");
    assert!(values.contains("  enabled: false\n"));
    assert!(values.contains("healthPath: \"\"\n"));
    assert!(values.contains("resources: {}\n"));
    assert!(values.contains("  number: \"\"\n"));
    assert!(file(&files, "Chart.yaml").contains("branch feature/Login: yes of acme/web"));
}

type Change = Box<dyn Fn(&mut AppSpec)>;

#[test]
fn rejects_bad_specs_with_clear_errors() {
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|a| a.name = "Web".into()), "app name \"Web\" is not valid"),
        (Box::new(|a| a.name = "1web".into()), "app name \"1web\""),
        (Box::new(|a| a.name = "a".repeat(54)), "app name"),
        (Box::new(|a| a.ports.clear()), "has no ports"),
        (Box::new(|a| a.ports[0].name = "HTTP".into()), "port name \"HTTP\" is not valid"),
        (Box::new(|a| a.ports[0].name = "1234".into()), "port name \"1234\""),
        (Box::new(|a| a.ports[0].name = "a-very-long-port-name".into()), "port name"),
        (Box::new(|a| a.ports[1].name = "http".into()), "used twice"),
        (Box::new(|a| a.ports[1].container_port = 8080), "listed twice"),
        (Box::new(|a| a.ports[0].container_port = 0), "container port 0"),
        (Box::new(|a| a.replicas = 51), "replicas = 51"),
        (Box::new(|a| a.env[0].name = "1X".into()), "environment variable name \"1X\""),
        (Box::new(|a| a.env[1].name = "GREETING".into()), "set twice"),
        (Box::new(|a| a.resources.cpu_limit = Some("lots".into())), "resources.cpu-limit = \"lots\""),
        (Box::new(|a| a.health_path = Some("healthz".into())), "health path \"healthz\""),
        (Box::new(|a| a.ingress_host = Some("Bad Host".into())), "ingress host \"Bad Host\""),
        (Box::new(|a| a.image.repository = "Registry/X".into()), "image repository"),
        (Box::new(|a| a.image.tag = Some("not a tag".into())), "image tag \"not a tag\""),
    ];
    for (change, want) in cases {
        let mut a = app();
        change(&mut a);
        let err = generate_chart(&ctx(), &a).unwrap_err();
        assert!(err.contains(want), "want {want:?}, got {err:?}");
    }
    // Neither tag nor digest anywhere.
    let mut c = ctx();
    c.target = None;
    let err = generate_chart(&c, &app()).unwrap_err();
    assert!(err.contains("neither a tag nor a digest"), "{err}");
}

#[test]
fn quantities_and_names() {
    use validate::*;
    for q in ["1", "250m", "0.5", "128Mi", "1Gi", "2G", "1e3", "100k"] {
        assert!(is_quantity(q), "{q}");
    }
    for q in ["", "m", "1.2.3", "12 Mi", "1mi", ".5", "-1"] {
        assert!(!is_quantity(q), "{q}");
    }
    assert!(is_port_name("http"));
    assert!(is_port_name("h2c-1"));
    assert!(!is_port_name("a--b"));
    assert!(is_host("*.preview.example.com"));
    assert!(!is_host("a..b"));
}

#[test]
fn quote_escapes() {
    assert_eq!(values::quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
}

/// A helm binary: `$HELM`, the dev-env caches, or `helm` on PATH.
fn helm() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(h) = std::env::var("HELM") {
        candidates.push(h.into());
    }
    let home = std::env::var("HOME").unwrap_or_default();
    for dir in ["/var/tmp/prpod-dev-env".to_string(), format!("{home}/.cache/prpod-dev-env")] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                candidates.push(e.path().join("helm"));
                candidates.push(e.path().join("bin/helm"));
            }
            candidates.push(Path::new(&dir).join("helm"));
            candidates.push(Path::new(&dir).join("bin/helm"));
        }
    }
    for p in std::env::var("PATH").unwrap_or_default().split(':') {
        candidates.push(Path::new(p).join("helm"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn write_chart(dir: &Path, files: &[ChartFile]) {
    let _ = std::fs::remove_dir_all(dir);
    for f in files {
        let p = dir.join(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &f.content).unwrap();
    }
}

/// `helm lint --strict` and `helm template` on generated charts, when helm is available.
#[test]
fn helm_lint_and_template() {
    let Some(helm) = helm() else {
        eprintln!("helm not found: skipping helm lint/template of the generated chart");
        return;
    };
    let base = std::env::temp_dir().join(format!("prpod-chart-webapp-test-{}", std::process::id()));
    let mut variants = vec![(ctx(), app())];
    let mut a = app();
    a.ingress_host = None;
    a.health_path = None;
    a.env.clear();
    let mut c = ctx();
    c.number = None;
    variants.push((c, a));
    for (i, (c, a)) in variants.iter().enumerate() {
        let dir = base.join(format!("{i}")).join(&a.name);
        write_chart(&dir, &generate_chart(c, a).unwrap());
        let lint = Command::new(&helm).arg("lint").arg("--strict").arg(&dir).output().unwrap();
        assert!(
            lint.status.success(),
            "helm lint --strict failed:\n{}\n{}",
            String::from_utf8_lossy(&lint.stdout),
            String::from_utf8_lossy(&lint.stderr)
        );
        let out = Command::new(&helm).args(["template", "pr-42", "--namespace", "pr-42"]).arg(&dir).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("protocol: TCP"));
        assert!(text.contains("automountServiceAccountToken: false"));
        assert!(text.contains("runAsNonRoot: true"));
        assert!(text.contains("terminationGracePeriodSeconds: 5"));
        if a.ingress_host.is_some() {
            assert!(text.contains("kind: Ingress"));
            assert!(text.contains("httpGet:"));
            assert!(text.contains("image: \"127.0.0.1:5443/acme/web:pr-42@sha256:abab"));
            assert!(text.contains("prpod.dev/pr: \"42\""));
        } else {
            assert!(!text.contains("kind: Ingress"));
            assert!(text.contains("tcpSocket:"));
            assert!(!text.contains("prpod.dev/pr:"));
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}
