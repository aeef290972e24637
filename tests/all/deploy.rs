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
use prpod::phases::rollout::{self, RolloutWatch};
use prpod::phases::verify;
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
        let helm = Helm::detect(&w.helm, target.clone()).await.unwrap();
        let kube = Kube::connect(&target).await.unwrap();
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
            values_files: vec![],
            set: &config.set,
            app: &app,
            replicas: None,
            pull_secret: Some(&config.pull_secret),
        };
        let rendered = chart::render(&req, &helm, Some(&generator)).await.unwrap();
        assert!(rendered.rendered.contains(&format!("@{}", image.digest.as_ref().unwrap())), "{}", rendered.rendered);
        let findings = chart::check_manifests(&ctx, &rendered, &image, std::slice::from_ref(&verifier)).await.unwrap();
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
        assert_eq!(prpod::error::exit_code_for(&anyhow::Error::new(err)), 5);
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
        let helm = Helm::detect(&w.helm, target.clone()).await.unwrap();
        let kube = Kube::connect(&target).await.unwrap();
        let watched = Kube::connect(&via_proxy).await.unwrap();
        let host = PluginHost::new().unwrap();
        let generator = host.load(&PluginRef::parse("builtin:chart-webapp").unwrap()).unwrap();
        let config = test_config(Duration::from_secs(90));
        let app = AppConfig { port: w.web_port, health_path: Some("/".into()), ..AppConfig::default() };
        let req = ChartRequest {
            ctx: &ctx,
            release: &release,
            image: &image,
            chart_dir: None,
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
