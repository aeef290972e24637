//! One watch of a preview's namespace, shared by the deploy phase (while Helm rolls out) and the
//! verify phase (after it returns): workloads, pods and Warning events as they change, the pods
//! that were there before the deploy (never blamed for its failure), and the rules that decide a
//! rollout cannot succeed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;

use crate::clients::kube::{Kube, KubeError, Observed, PodView, WATCHED_KINDS, WarningView, WorkloadView};

/// One container that made a rollout fail, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodFailure {
    /// Pod.
    pub pod: String,
    /// Container.
    pub container: String,
    /// `CrashLoopBackOff`, `ImagePullBackOff`, `NotReady`, ...
    pub reason: String,
    /// Kubernetes' message, when it gave one.
    pub message: Option<String>,
    /// Exit code of its last run, when it ran.
    pub exit_code: Option<i32>,
    /// Restarts.
    pub restarts: u32,
    /// Its last log lines (of the previous run when it restarted).
    pub log: Vec<String>,
}

impl std::fmt::Display for PodFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod {} container {}: {}", self.pod, self.container, self.reason)?;
        let mut extra = Vec::new();
        if let Some(c) = self.exit_code {
            extra.push(format!("exit code {c}"));
        }
        if self.restarts > 0 {
            extra.push(format!("{} restarts", self.restarts));
        }
        if !extra.is_empty() {
            write!(f, " ({})", extra.join(", "))?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if !self.log.is_empty() {
            write!(f, "; its last log lines:")?;
            for l in &self.log {
                write!(f, "\n    | {l}")?;
            }
        }
        Ok(())
    }
}

/// Waiting reasons that mean an image will not be pulled without a change.
const PULL_FAILURES: [&str; 3] = ["ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];

/// What the watch has seen of the namespace.
#[derive(Debug, Default, Clone)]
pub struct Rollout {
    /// Pods that existed before the deploy began.
    before: HashSet<String>,
    listed: BTreeSet<&'static str>,
    /// Workloads by (kind, name).
    pub workloads: BTreeMap<(String, String), WorkloadView>,
    /// Pods by name (a deleted pod keeps its last state: it may be the evidence).
    pub pods: BTreeMap<String, PodView>,
    gone: HashSet<String>,
    /// Warning events, one per (object, reason), latest last.
    pub warnings: Vec<WarningView>,
}

impl Rollout {
    /// Takes one observation in.
    pub fn apply(&mut self, o: Observed) {
        match o {
            Observed::Pod(p) => {
                if !self.listed.contains("Pod") {
                    self.before.insert(p.name.clone());
                }
                self.gone.remove(&p.name);
                self.pods.insert(p.name.clone(), p);
            }
            Observed::PodGone(name) => {
                self.gone.insert(name);
            }
            Observed::Listed(k) => {
                self.listed.insert(k);
            }
            Observed::Warning(w) => {
                self.warnings.retain(|x| !(x.object == w.object && x.reason == w.reason));
                self.warnings.push(w);
            }
            Observed::Workload(w) => {
                self.workloads.insert((w.kind.clone(), w.name.clone()), w);
            }
        }
    }

    /// Whether every kind's initial listing arrived.
    pub fn all_listed(&self) -> bool {
        WATCHED_KINDS.iter().all(|k| self.listed.contains(k))
    }

    /// Pods that exist now and are not being deleted.
    pub fn live_pods(&self) -> impl Iterator<Item = &PodView> {
        self.pods.values().filter(|p| !p.terminating && !self.gone.contains(&p.name))
    }

    /// Live pods the deploy created.
    fn new_pods(&self) -> impl Iterator<Item = &PodView> {
        self.live_pods().filter(|p| !self.before.contains(&p.name))
    }

    /// The workloads of `release`.
    pub fn release_workloads<'a>(&'a self, release: &'a str) -> impl Iterator<Item = &'a WorkloadView> + 'a {
        self.workloads.values().filter(move |w| w.release.as_deref() == Some(release))
    }

    /// Containers of new pods that failed for good: an image that cannot be pulled, a crash loop
    /// past `crash_restarts` restarts (0: never), a pod that failed.
    pub fn hard_failures(&self, crash_restarts: u32) -> Vec<PodFailure> {
        let mut out = Vec::new();
        for p in self.new_pods() {
            for c in &p.containers {
                let reason = c.waiting_reason.as_deref().unwrap_or("");
                let crash = reason == "CrashLoopBackOff" && crash_restarts > 0 && c.restart_count >= crash_restarts;
                let pull = PULL_FAILURES.contains(&reason);
                let failed_pod = p.phase == "Failed";
                if crash || pull || failed_pod {
                    let exit = c.terminated.as_ref().or(c.last_terminated.as_ref()).map(|t| t.1);
                    let reason = if failed_pod && reason.is_empty() { "PodFailed".into() } else { reason.to_string() };
                    out.push(failure(&p.name, &c.name, reason, c.waiting_message.clone(), exit, c.restart_count));
                }
            }
        }
        out
    }

    /// Containers of new pods that are not ready (what a timeout blames).
    pub fn not_ready(&self) -> Vec<PodFailure> {
        let mut out = Vec::new();
        for p in self.new_pods() {
            if p.containers.is_empty() && p.phase == "Pending" {
                out.push(failure(&p.name, "", "Pending (not scheduled or not started)".into(), None, None, 0));
            }
            for c in p.containers.iter().filter(|c| !c.ready) {
                let reason = c.waiting_reason.clone().unwrap_or_else(|| match &c.terminated {
                    Some((r, _)) => r.clone(),
                    None => "NotReady (readiness probe not passing)".into(),
                });
                let exit = c.terminated.as_ref().or(c.last_terminated.as_ref()).map(|t| t.1);
                out.push(failure(&p.name, &c.name, reason, c.waiting_message.clone(), exit, c.restart_count));
            }
        }
        out
    }
}

fn failure(
    pod: &str,
    container: &str,
    reason: String,
    message: Option<String>,
    exit_code: Option<i32>,
    restarts: u32,
) -> PodFailure {
    PodFailure { pod: pod.into(), container: container.into(), reason, message, exit_code, restarts, log: vec![] }
}

/// The watch and what it has seen.
pub struct RolloutWatch {
    stream: Pin<Box<dyn Stream<Item = Result<Observed, KubeError>> + Send>>,
    /// What it has seen.
    pub state: Rollout,
    namespace: String,
}

impl RolloutWatch {
    /// Starts watching `namespace` and returns once the pods that exist now are known (so every
    /// pod a deploy creates afterwards counts as new).
    pub async fn start(kube: &Kube, namespace: &str) -> Result<RolloutWatch, KubeError> {
        let mut w = RolloutWatch {
            stream: Box::pin(kube.watch_namespace(namespace)),
            state: Rollout::default(),
            namespace: namespace.to_string(),
        };
        let wait = Duration::from_secs(30);
        let deadline = tokio::time::Instant::now() + wait;
        while !w.state.listed.contains("Pod") {
            match tokio::time::timeout_at(deadline, w.stream.next()).await {
                Ok(Some(Ok(o))) => w.state.apply(o),
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) | Err(_) => {
                    return Err(KubeError::Timeout {
                        what: format!("list the pods of namespace {namespace}"),
                        after: wait,
                    });
                }
            }
        }
        Ok(w)
    }

    /// The namespace watched.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Waits for the next observation and takes it in; `None` when the watch ended.
    pub async fn next(&mut self) -> Option<Result<(), KubeError>> {
        match self.stream.next().await? {
            Ok(o) => {
                self.state.apply(o);
                Some(Ok(()))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// Reads the last log lines of each failing container (of its previous run when it restarted),
/// for at most five containers.
pub async fn evidence(kube: &Kube, namespace: &str, list: Vec<PodFailure>, lines: u32) -> Vec<PodFailure> {
    let mut out = Vec::new();
    for mut f in list.into_iter().take(5) {
        let pulling = PULL_FAILURES.contains(&f.reason.as_str()) || f.reason == "ErrImagePull";
        if !f.container.is_empty() && !pulling {
            let previous = f.restarts > 0;
            let (pod, c) = (&f.pod, &f.container);
            let text = match kube.container_logs(namespace, pod, c, previous, i64::from(lines)).await {
                Ok(t) => Some(t),
                Err(_) if previous => kube.container_logs(namespace, pod, c, false, i64::from(lines)).await.ok(),
                Err(_) => None,
            };
            f.log = text.unwrap_or_default().lines().map(str::to_string).collect();
        }
        out.push(f);
    }
    out
}
