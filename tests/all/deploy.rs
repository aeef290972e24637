//! The deploy line below the CLI, on the service world: the chart phase renders what the deploy
//! applies, the deploy phase installs with Helm into a labelled namespace whose pods pull from
//! the TLS registry through the pull Secret prpod attached, verify reads a settled release, and
//! a container that exits at once is stopped early, rolled back, and reported with its log.

use std::time::{Duration, Instant};

use prpod::clients::helm::{Helm, KubeTarget};
use prpod::clients::kube::Kube;
use prpod::clients::registry::CredentialResolver;
use prpod::model::{DeployTarget, ImageRef, PrContext, ReleaseTarget, TagSet};
use prpod::phases::chart::{self, AppConfig, ChartRequest};
use prpod::phases::deploy::{self, DeployConfig, DeployError, DeployLock, DeployRequest};
use prpod::phases::verify;
use prpod::phases::verify::rollout::{self, RolloutWatch};
use prpod::plugins::{PluginHost, PluginRef};
use prpod::secret::Secret;
use prpod_test_support::{World, world};

use crate::context;

/// The digest of the world's web image on the TLS registry (read with skopeo, not prpod).
pub fn web_digest(w: &World) -> String {
    let reg = &w.registry_tls;
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--format", "{{.Digest}}"])
        .arg("--authfile")
        .arg(reg.authfile.as_ref().unwrap())
        .arg("--cert-dir")
        .arg(reg.cert_dir.as_ref().unwrap())
        .arg(format!("docker://{}", w.web_image_tls))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The web image as pods and the node name it (the registry's pod-side address).
pub fn web_image(w: &World) -> ImageRef {
    let path = w.web_image_tls.strip_prefix(&format!("{}/", w.registry_tls.host)).unwrap();
    let (repo, tag) = path.rsplit_once(':').unwrap();
    ImageRef {
        repository: format!("{}/{repo}", w.registry_tls.host_pod),
        tag: Some(tag.into()),
        digest: Some(web_digest(w)),
    }
}

/// The `.dockerconfigjson` for the TLS registry as pods name it, made by the host's resolver.
async fn pull_secret(w: &World) -> Secret {
    let r = &w.registry_tls;
    CredentialResolver::anonymous()
        .with_secret(&r.host_pod, r.user.as_ref().unwrap(), r.password.clone().unwrap(), "the test")
        .dockerconfigjson(&[&r.host_pod])
        .await
        .unwrap()
}

fn ctx_for(image: &ImageRef, release: &ReleaseTarget, registry: &str) -> PrContext {
    let mut c = context(Some(1), "feature/deploy");
    c.target = Some(DeployTarget {
        registry: registry.into(),
        image: image.clone(),
        tags: TagSet { primary: "pr-1".into(), extra: vec![], cache_from: vec![], cache_to: None },
        release: release.clone(),
    });
    c
}

fn test_config(timeout: Duration) -> DeployConfig {
    let mut set = toml::Table::new();
    set.insert("terminationGracePeriodSeconds".into(), toml::Value::Integer(1));
    DeployConfig { timeout, set, ..DeployConfig::default() }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The default chart through the whole deploy line, then a chart whose container exits at once:
/// stopped before the timeout, rolled back to revision 1 (which still serves), and reported with
/// pod, container, reason and the container's log.
#[test]
fn deploy_verify_and_crash_rollback() {
    let w = world();
    let ns = prpod_test_support::unique_name("deploy-phase");
    let release = ReleaseTarget { name: "pr-1".into(), namespace: ns.clone() };
    let image = web_image(w);
    let ctx = ctx_for(&image, &release, &w.registry_tls.host_pod);
    let target = KubeTarget { kubeconfig: Some(w.kubeconfig.clone()), context: None };
    let _cleanup = NamespaceGuard(ns.clone());
    rt().block_on(async {
        let helm = Helm::detect(&w.helm, target.clone(), prpod::config::cache_dir()).await.unwrap();
        let kube = Kube::connect(&target).await.unwrap();
        let cluster = chart::ClusterApi::discover(&kube).await.unwrap();
        let host = PluginHost::new().unwrap();
        let generator = host.load(&PluginRef::parse("builtin:chart-webapp").unwrap()).unwrap();
        let verifier = host.load(&PluginRef::parse("builtin:verify-baseline").unwrap()).unwrap();
        let config = test_config(Duration::from_secs(90));
        let app = AppConfig { port: w.web_port, health_path: Some("/".into()), ..AppConfig::default() };
        let req = ChartRequest {
            ctx: &ctx,
            release: &release,
            image: &image,
            chart_dir: None,
            repository: None,
            cluster: &cluster,
            values_files: vec![],
            set: &config.set,
            app: &app,
            replicas: None,
            pull_secret: Some(&config.pull_secret),
        };
        let rendered = chart::render(&req, &helm, Some(&generator)).await.unwrap();
        assert!(rendered.rendered.contains(&format!("@{}", image.digest.as_ref().unwrap())), "{}", rendered.rendered);
        let scope = chart::ScopePolicy { cluster: &cluster, allow_cluster_kinds: &[] };
        let findings =
            chart::check_manifests(&ctx, &rendered, &image, scope, std::slice::from_ref(&verifier)).await.unwrap();
        assert!(!chart::has_errors(&findings), "{findings:?}");

        deploy::prepare_namespace(&kube, &ctx, &release, Some(&pull_secret(w).await), &config).await.unwrap();
        let labels = kube.namespace_labels(&ns).await.unwrap().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "prpod");
        assert_eq!(labels["prpod.dev/pr"], "1");
        assert_eq!(labels["prpod.dev/repository"], "acme.web");
        assert_eq!(kube.pull_secrets_of(&ns, "default").await.unwrap(), vec![config.pull_secret.clone()]);

        let lock = DeployLock::acquire(&kube, &ctx, &release, Duration::from_secs(10)).await.unwrap();
        assert_eq!(deploy::recover_pending(&helm, &kube, &release, &lock, config.timeout).await.unwrap(), None);
        let dreq = DeployRequest { release: &release, chart: &rendered, config: &config, lock: &lock };
        let mut watch = RolloutWatch::start(&kube, &ns).await.unwrap();
        let rel = deploy::upgrade(&dreq, &helm, &kube, &mut watch, &|_| {}).await.unwrap();
        assert_eq!((rel.revision, rel.status.as_str(), rel.previous_revision), (1, "deployed", None));
        let settled = verify::settle(&mut watch, &release, Duration::from_secs(30), 2).await.unwrap();
        assert!(settled.settled, "{settled:?}");
        let status = settled.snapshot.release_status(&release, None);
        assert_eq!(status.workloads.len(), 1);
        assert_eq!(status.workloads[0].pods.len(), 1, "{status:?}");
        let after = verify::check_release(&ctx, &status, std::slice::from_ref(&verifier)).await.unwrap();
        assert!(!chart::has_errors(&after), "{after:?}");
        let unrouted = verify::wait_for_endpoints(&kube, &release, Duration::from_secs(30)).await.unwrap();
        assert!(unrouted.is_empty(), "services without a ready endpoint: {unrouted:?}");
        let url = verify::preview_url(&kube, &release).await.unwrap().expect("a preview URL");
        assert_eq!(curl(&url), w.web_body, "GET {url}");

        // A chart whose container exits at once: stopped early, rolled back, evidence quoted.
        let crash = crash_chart();
        let req2 = ChartRequest { chart_dir: Some(crash.path().to_path_buf()), ..req.clone() };
        let rendered2 = chart::render(&req2, &helm, None).await.unwrap();
        let dreq = DeployRequest { release: &release, chart: &rendered2, config: &config, lock: &lock };
        let started = Instant::now();
        let mut watch = RolloutWatch::start(&kube, &ns).await.unwrap();
        let err = match deploy::upgrade(&dreq, &helm, &kube, &mut watch, &|_| {}).await {
            Err(e) => e,
            // Helm 4's watcher sometimes calls the Deployment ready at once: against 1.20 its
            // first read can come from the API server's watch cache, from before the upgrade.
            // Then the verify phase catches the crash, as `prpod run` does after Helm returns.
            Ok(rel) => {
                let settled =
                    verify::settle(&mut watch, &release, config.timeout, config.crash_restarts).await.unwrap();
                assert!(!settled.failures.is_empty(), "Helm said {rel:?} and verify saw no failure: {settled:?}");
                let failures = rollout::evidence(&kube, &ns, settled.failures, config.log_lines).await;
                let restored = deploy::roll_back(&helm, &rel, config.timeout).await.unwrap();
                deploy::rolled_back(
                    &release,
                    "a new pod failed after Helm returned".into(),
                    failures,
                    restored,
                    &watch.state,
                )
            }
        };
        let elapsed = started.elapsed();
        let text = err.to_string();
        let DeployError::RolledBack { failures, restored, .. } = &err else { panic!("{err:?}") };
        assert!(elapsed < config.timeout, "stopped after {elapsed:?}, not before the timeout: {text}");
        assert_eq!(*restored, Some(3), "{text}");
        let f = failures.iter().find(|f| f.container == "crash").unwrap_or_else(|| panic!("{text}"));
        assert_eq!(f.reason, "CrashLoopBackOff", "{text}");
        assert_eq!(f.exit_code, Some(3), "{text}");
        assert!(f.log.iter().any(|l| l.contains("cannot start: no config")), "{text}");
        assert_eq!(
            prpod::error::exit_code_for(&anyhow::Error::new(prpod::error::PhaseError::new(
                prpod::model::Phase::Deploy,
                err
            ))),
            5
        );
        lock.release().await;
        // Revision 1's pod still serves.
        assert_eq!(curl(&url), w.web_body, "GET {url} after the rollback");
    });
}

/// The rollout watch behind a TCP proxy that cuts every connection to the API server (and
/// refuses new ones for a second), twice during each rollout: kube-runtime's watcher resumes, so
/// a good chart deploys and verify sees it settle, and a crashing chart is still stopped by the
/// crash detection (not by the timeout) and rolled back. Helm and prpod's other calls go to the
/// API server directly: only the watch is cut.
#[test]
fn a_dropped_watch_resumes_and_the_rollout_ends_right() {
    use std::sync::Arc;

    use crate::fault_proxy::TcpFaultProxy;

    let w = world();
    let ns = prpod_test_support::unique_name("deploy-watch-drop");
    let release = ReleaseTarget { name: "pr-1".into(), namespace: ns.clone() };
    let image = web_image(w);
    let ctx = ctx_for(&image, &release, &w.registry_tls.host_pod);
    let target = KubeTarget { kubeconfig: Some(w.kubeconfig.clone()), context: None };
    let _cleanup = NamespaceGuard(ns.clone());
    // The API server's address from the world's kubeconfig; the proxy listens on the same IP, so
    // the server's certificate still matches.
    let text = std::fs::read_to_string(&w.kubeconfig).unwrap();
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server: https://")).unwrap().to_string();
    let proxy = Arc::new(TcpFaultProxy::start(server.rsplit_once(':').unwrap().0, &server));
    let dir = tempfile::tempdir().unwrap();
    let proxied = dir.path().join("kubeconfig");
    prpod_test_support::write_private(
        &proxied,
        text.replace(&format!("https://{server}"), &format!("https://{}", proxy.addr)).as_bytes(),
    );
    let via_proxy = KubeTarget { kubeconfig: Some(proxied), context: None };
    let cuts = |proxy: Arc<TcpFaultProxy>| {
        std::thread::spawn(move || {
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(1500));
                proxy.cut(Duration::from_secs(1));
            }
        })
    };
    rt().block_on(async {
        let helm = Helm::detect(&w.helm, target.clone(), prpod::config::cache_dir()).await.unwrap();
        let kube = Kube::connect(&target).await.unwrap();
        let watched = Kube::connect(&via_proxy).await.unwrap();
        let host = PluginHost::new().unwrap();
        let generator = host.load(&PluginRef::parse("builtin:chart-webapp").unwrap()).unwrap();
        let config = test_config(Duration::from_secs(90));
        let app = AppConfig { port: w.web_port, health_path: Some("/".into()), ..AppConfig::default() };
        let cluster = chart::ClusterApi::discover(&kube).await.unwrap();
        let req = ChartRequest {
            ctx: &ctx,
            release: &release,
            image: &image,
            chart_dir: None,
            repository: None,
            cluster: &cluster,
            values_files: vec![],
            set: &config.set,
            app: &app,
            replicas: None,
            pull_secret: Some(&config.pull_secret),
        };
        let rendered = chart::render(&req, &helm, Some(&generator)).await.unwrap();
        deploy::prepare_namespace(&kube, &ctx, &release, Some(&pull_secret(w).await), &config).await.unwrap();
        let lock = DeployLock::acquire(&kube, &ctx, &release, Duration::from_secs(10)).await.unwrap();

        let dreq = DeployRequest { release: &release, chart: &rendered, config: &config, lock: &lock };
        let mut watch = RolloutWatch::start(&watched, &ns).await.unwrap();
        let cutter = cuts(proxy.clone());
        let rel = deploy::upgrade(&dreq, &helm, &kube, &mut watch, &|_| {}).await.unwrap();
        assert_eq!(rel.revision, 1);
        cutter.join().unwrap();
        let settled = verify::settle(&mut watch, &release, Duration::from_secs(30), 2).await.unwrap();
        assert!(settled.settled, "{settled:?}");
        let cut = proxy.cut_count.load(std::sync::atomic::Ordering::SeqCst);
        assert!(cut >= 2, "the proxy cut {cut} connection(s)");

        let crash = crash_chart();
        let req2 = ChartRequest { chart_dir: Some(crash.path().to_path_buf()), ..req.clone() };
        let rendered2 = chart::render(&req2, &helm, None).await.unwrap();
        let dreq = DeployRequest { release: &release, chart: &rendered2, config: &config, lock: &lock };
        let mut watch = RolloutWatch::start(&watched, &ns).await.unwrap();
        let cutter = cuts(proxy.clone());
        let started = Instant::now();
        let err = match deploy::upgrade(&dreq, &helm, &kube, &mut watch, &|_| {}).await {
            Err(e) => e,
            // Helm 4 may call the Deployment ready at once (see deploy_verify_and_crash_rollback):
            // then verify, on the same cut watch, catches the crash.
            Ok(rel) => {
                let settled =
                    verify::settle(&mut watch, &release, config.timeout, config.crash_restarts).await.unwrap();
                assert!(!settled.failures.is_empty(), "Helm said {rel:?} and verify saw no failure: {settled:?}");
                let restored = deploy::roll_back(&helm, &rel, config.timeout).await.unwrap();
                deploy::rolled_back(
                    &release,
                    "a new pod failed after Helm returned".into(),
                    settled.failures,
                    restored,
                    &watch.state,
                )
            }
        };
        cutter.join().unwrap();
        let elapsed = started.elapsed();
        let text = err.to_string();
        let DeployError::RolledBack { failures, restored, reason, .. } = &err else { panic!("{err:?}") };
        assert!(elapsed < config.timeout, "stopped after {elapsed:?}, by the timeout: {text}");
        assert!(reason.contains("a new pod failed"), "{text}");
        assert_eq!(*restored, Some(3), "{text}");
        assert!(failures.iter().any(|f| f.container == "crash" && f.reason == "CrashLoopBackOff"), "{text}");
        lock.release().await;
    });
}

/// A chart with the same Service as the default chart's (so the preview URL is the same) and a
/// Deployment whose container exits at once.
fn crash_chart() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::write_chart(
        dir.path(),
        "crash",
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: web, app.kubernetes.io/instance: {{ .Release.Name | quote }}}}
  template:
    metadata: {labels: {app.kubernetes.io/name: web, app.kubernetes.io/instance: {{ .Release.Name | quote }}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: crash
          image: {{ .Values.prpod.image | quote }}
          command: ["/bin/sh", "-c", "echo starting; echo cannot start: no config >&2; exit 3"]
          ports: [{name: http, containerPort: 8080, protocol: TCP}]
          readinessProbe: {tcpSocket: {port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app.kubernetes.io/name: web, app.kubernetes.io/instance: {{ .Release.Name | quote }}}
  ports: [{name: http, port: 80, targetPort: http, protocol: TCP}]
"#,
    );
    dir
}

/// GET `url`'s body. Once the Endpoints list the pod, kube-proxy still has to write its iptables
/// rules (a fraction of a second on this node), so a refused connection is retried for 5 s.
fn curl(url: &str) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("curl").args(["-sf", "--max-time", "10", url]).output().unwrap();
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() || Instant::now() > until {
            return body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Deletes the namespace when the test ends, pass or fail.
pub struct NamespaceGuard(pub String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let _ = world().kubectl(["delete", "namespace", &self.0, "--wait=false", "--ignore-not-found"]);
    }
}

/// A chart whose output depends on the cluster: `lookup` of the pull Secret and of a Namespace
/// (which, found, adds a ClusterRoleBinding to cluster-admin), and `.Capabilities`. Rendered
/// once against the cluster's version and API versions, with `lookup` finding nothing: what
/// Helm 4 and Helm 3 install is exactly what was checked (no ClusterRoleBinding, no Secret data).
#[test]
fn the_checked_rendering_is_the_one_applied_with_helm_4_and_3() {
    let w = world();
    for helm3 in [false, true] {
        let ns = prpod_test_support::unique_name("rendered-once");
        let crb = prpod_test_support::unique_name("prpod-test-escalate");
        let _cleanup = NamespaceGuard(ns.clone());
        let _crb = ClusterRoleBindingGuard(crb.clone());
        let release = ReleaseTarget { name: "pr-1".into(), namespace: ns.clone() };
        let image = web_image(w);
        let ctx = ctx_for(&image, &release, &w.registry_tls.host_pod);
        let target = KubeTarget { kubeconfig: Some(w.kubeconfig.clone()), context: None };
        let dir = tempfile::tempdir().unwrap();
        crate::write_chart(
            dir.path(),
            "lookup",
            &format!(
                r#"{{{{- $pull := lookup "v1" "Secret" .Release.Namespace "prpod-registry" }}}}
{{{{- $system := lookup "v1" "Namespace" "" "kube-system" }}}}
apiVersion: v1
kind: ConfigMap
metadata: {{name: rendered}}
data:
  pull: {{{{ $pull | toJson | b64enc | quote }}}}
  lookup: {{{{ if $system }}}}"cluster"{{{{ else }}}}"client"{{{{ end }}}}
  kube: {{{{ .Capabilities.KubeVersion.Version | quote }}}}
  apps: {{{{ .Capabilities.APIVersions.Has "apps/v1/Deployment" | quote }}}}
  invented: {{{{ .Capabilities.APIVersions.Has "prpod.invalid/v1" | quote }}}}
{{{{- if $system }}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {crb}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {{{{ .Release.Namespace }}}}}}]
{{{{- end }}}}
"#
            ),
        );
        let version = rt().block_on(async {
            let helm = Helm::detect(if helm3 { &w.helm3 } else { &w.helm }, target.clone(), prpod::config::cache_dir())
                .await
                .unwrap();
            let kube = Kube::connect(&target).await.unwrap();
            let cluster = chart::ClusterApi::discover(&kube).await.unwrap();
            let version = kube.server_version().await.unwrap();
            let config = test_config(Duration::from_secs(60));
            // The pull Secret is there before the chart renders (as on every upgrade).
            deploy::prepare_namespace(&kube, &ctx, &release, Some(&pull_secret(w).await), &config).await.unwrap();
            let app = AppConfig::default();
            let req = ChartRequest {
                ctx: &ctx,
                release: &release,
                image: &image,
                chart_dir: Some(dir.path().to_path_buf()),
                repository: None,
                cluster: &cluster,
                values_files: vec![],
                set: &config.set,
                app: &app,
                replicas: None,
                pull_secret: Some(&config.pull_secret),
            };
            let rendered = chart::render(&req, &helm, None).await.unwrap();
            let kinds: Vec<&str> = rendered.manifests.iter().map(|m| m.kind.as_str()).collect();
            assert_eq!(kinds, ["ConfigMap"], "{}", rendered.rendered);
            let scope = chart::ScopePolicy { cluster: &cluster, allow_cluster_kinds: &[] };
            let findings = chart::check_manifests(&ctx, &rendered, &image, scope, &[]).await.unwrap();
            assert!(!chart::has_errors(&findings), "{findings:?}");

            let lock = DeployLock::acquire(&kube, &ctx, &release, Duration::from_secs(10)).await.unwrap();
            let dreq = DeployRequest { release: &release, chart: &rendered, config: &config, lock: &lock };
            let mut watch = RolloutWatch::start(&kube, &ns).await.unwrap();
            deploy::upgrade(&dreq, &helm, &kube, &mut watch, &|_| {}).await.unwrap();
            lock.release().await;
            version
        });
        let data: serde_json::Value =
            serde_json::from_str(&w.kubectl_ok(["get", "configmap", "rendered", "-n", &ns, "-o", "jsonpath={.data}"]))
                .unwrap();
        let helm_name = if helm3 { "Helm 3" } else { "Helm 4" };
        assert_eq!(data["lookup"], "client", "{helm_name}: the applied ConfigMap was rendered a second time: {data}");
        use base64::Engine;
        let pull = base64::engine::general_purpose::STANDARD.decode(data["pull"].as_str().unwrap()).unwrap();
        assert_eq!(String::from_utf8(pull).unwrap(), "{}", "{helm_name}: lookup reached the pull Secret");
        assert_eq!(data["kube"], version.as_str(), "{helm_name}: rendered against the cluster's version");
        assert_eq!((&data["apps"], &data["invented"]), (&"true".into(), &"false".into()), "{data}");
        let got = w.kubectl(["get", "clusterrolebinding", &crb]);
        assert!(!got.status.success(), "{helm_name} created the unchecked ClusterRoleBinding {crb}");
    }
}

/// A repository chart whose `leak.txt` links to `/proc/self/environ`, read with
/// `{{ .Files.Get "leak.txt" | b64enc }}`: `prpod deploy` refuses it naming the link (exit 2),
/// and nothing of the environment reaches its output, plain or base64-encoded.
#[test]
fn a_chart_symlink_leaving_the_chart_is_refused_and_nothing_leaks() {
    let w = world();
    let p = crate::run::Preview::new(
        false,
        &prpod_test_support::unique_name("prpod-test/leak"),
        "chart = \"deploy/chart\"\n",
    );
    let chart = p.dir.path().join("deploy/chart");
    crate::write_chart(
        &chart,
        "leak",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: leak}\ndata:\n  env: {{ .Files.Get \"leak.txt\" | b64enc | quote }}\n",
    );
    std::os::unix::fs::symlink("/proc/self/environ", chart.join("leak.txt")).unwrap();
    let image = web_image(w);
    let image = format!("{}@{}", image.repository, image.digest.unwrap());
    let sha = crate::run::fake_sha("leak");
    let out = p.deploy(&image, &sha, &["--source-dir", p.dir.path().to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "stdout: {stdout}\nstderr: {stderr}");
    let r = crate::json(&out);
    let err = r["error"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("deploy/chart/leak.txt") && err.contains("/proc/self/environ"), "{r}");
    assert!(r["manifests"].is_null(), "{r}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains("PRPOD_"), "{text}");
        assert_no_encoded_environment(text);
    }
    let ns = w.kubectl(["get", "namespace", &p.ns]);
    assert!(!ns.status.success(), "nothing was applied, not even the namespace");
}

/// Base64 runs in `text` decode to nothing holding an environment variable of prpod's.
fn assert_no_encoded_environment(text: &str) {
    use base64::Engine;
    for run in text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=".contains(c))).filter(|r| r.len() >= 16) {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(run) {
            let decoded = String::from_utf8_lossy(&bytes);
            assert!(!decoded.contains("PRPOD_") && !decoded.contains("PATH="), "the environment leaked: {decoded}");
        }
    }
}

/// Charts of the repository with a ClusterRoleBinding of the namespace's default ServiceAccount
/// to cluster-admin, and with an object in another namespace: `prpod deploy` refuses each with
/// prpod's `namespace-scope` finding naming the object (exit 1, as any error finding) before
/// anything is applied; with the kind allowed by the operator only the other namespace remains.
#[test]
fn cluster_scoped_and_other_namespace_objects_are_refused_before_anything_is_applied() {
    let w = world();
    let crb = prpod_test_support::unique_name("prpod-test-admin");
    let _crb = ClusterRoleBindingGuard(crb.clone());
    let image = web_image(w);
    let image = format!("{}@{}", image.repository, image.digest.unwrap());
    let cases = [
        (
            "",
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {crb}}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}\n\
                 subjects: [{{kind: ServiceAccount, name: default, namespace: {{{{ .Release.Namespace }}}}}}]\n"
            ),
            vec![format!("ClusterRoleBinding/{crb}")],
        ),
        (
            "",
            "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: mine}}\n  \
             - {apiVersion: v1, kind: ConfigMap, metadata: {name: theirs, namespace: default}}\n"
                .to_string(),
            vec!["ConfigMap/theirs".to_string()],
        ),
        (
            "allow_cluster_kinds = [\"Namespace\"]\n",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: prpod-test-allowed}\n---\napiVersion: v1\nkind: Secret\n\
             metadata: {name: planted, namespace: kube-system}\n"
                .to_string(),
            vec!["Secret/planted".to_string()],
        ),
    ];
    for (extra, template, refused) in cases {
        let p = crate::run::Preview::new(
            false,
            &prpod_test_support::unique_name("prpod-test/scope"),
            &format!("chart = \"deploy/chart\"\n{extra}"),
        );
        crate::write_chart(&p.dir.path().join("deploy/chart"), "scope", &template);
        let sha = crate::run::fake_sha("scope");
        let out = p.deploy(&image, &sha, &["--source-dir", p.dir.path().to_str().unwrap()]);
        let r = crate::json(&out);
        assert_eq!(out.status.code(), Some(1), "{r}\n{}", crate::stderr(&out));
        let objects: Vec<&str> = r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["rule"] == "namespace-scope")
            .inspect(|f| assert!(f["plugin"] == "prpod" && f["severity"] == "error", "{f}"))
            .map(|f| f["object"].as_str().unwrap())
            .collect();
        assert_eq!(objects, refused, "{r}");
        assert!(r["revision"].is_null(), "{r}");
        assert!(!w.kubectl(["get", "namespace", &p.ns]).status.success(), "nothing applied: {r}");
    }
    assert!(!w.kubectl(["get", "clusterrolebinding", &crb]).status.success());
    assert!(!w.kubectl(["get", "namespace", "prpod-test-allowed"]).status.success());
}

/// Deletes a ClusterRoleBinding when the test ends (one the code under test should never make).
struct ClusterRoleBindingGuard(String);

impl Drop for ClusterRoleBindingGuard {
    fn drop(&mut self) {
        let _ = world().kubectl(["delete", "clusterrolebinding", &self.0, "--ignore-not-found"]);
    }
}
