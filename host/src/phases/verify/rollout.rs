//! One watch of a preview's namespace, shared by the deploy phase (while Helm rolls out) and the
//! verify phase (after it returns): workloads, pods and Warning events as they change, the pods
//! that were there before the deploy (never blamed for its failure), and the rules that decide a
//! rollout cannot succeed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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

/// Waiting reasons of a container whose image is not there.
const PULL_FAILURES: [&str; 4] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];

/// Failed pulls after which a pull error that did not look permanent counts as one (the kubelet
/// retries after 10 s, then 20 s: about half a minute).
const PULL_ATTEMPTS: u32 = 3;

/// Whether the kubelet's pull error says the image will not be pulled without a change (a wrong
/// name, tag or digest; credentials; a certificate; a host that does not resolve) rather than
/// a moment's trouble (a dropped connection, a timeout, a 5xx), which the kubelet retries.
fn permanent_pull_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "not found",
        "manifest unknown",
        "name unknown",
        "unauthorized",
        "denied",
        "forbidden",
        "401",
        "403",
        "404",
        "x509",
        "no such host",
        "invalid reference",
        "no basic auth credentials",
    ]
    .iter()
    .any(|k| m.contains(k))
}

/// What the watch saw of one container's pulls.
#[derive(Debug, Default, Clone)]
struct PullState {
    /// Failed pulls seen (each entry into `ErrImagePull`).
    failures: u32,
    /// The last pull error's message (`ImagePullBackOff` carries only "Back-off pulling").
    error: Option<String>,
    /// The waiting reason last seen.
    reason: Option<String>,
}

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
    /// Pull attempts by (pod, container).
    pulls: HashMap<(String, String), PullState>,
    /// Kinds being relisted after a restart of their watch, with the names listed so far.
    relisting: HashMap<&'static str, HashSet<String>>,
}

impl Rollout {
    /// Takes one observation in.
    pub fn apply(&mut self, o: Observed) {
        match o {
            Observed::Pod(p) => {
                if !self.listed.contains("Pod") {
                    self.before.insert(p.name.clone());
                }
                if let Some(seen) = self.relisting.get_mut("Pod") {
                    seen.insert(p.name.clone());
                }
                self.gone.remove(&p.name);
                for c in &p.containers {
                    let st = self.pulls.entry((p.name.clone(), c.name.clone())).or_default();
                    let reason = c.waiting_reason.as_deref();
                    if reason == Some("ErrImagePull") && st.reason.as_deref() != Some("ErrImagePull") {
                        st.failures += 1;
                        st.error = c.waiting_message.clone();
                    }
                    st.reason = c.waiting_reason.clone();
                }
                self.pods.insert(p.name.clone(), p);
            }
            Observed::PodGone(name) => {
                self.gone.insert(name);
            }
            Observed::Relisting(k) => {
                self.relisting.insert(k, HashSet::new());
            }
            Observed::Listed(k) => {
                self.listed.insert(k);
                // After a restarted watch, what was not listed again was deleted meanwhile (its
                // delete event was lost with the connection).
                if let Some(seen) = self.relisting.remove(k) {
                    if k == "Pod" {
                        let gone: Vec<String> = self.pods.keys().filter(|p| !seen.contains(*p)).cloned().collect();
                        self.gone.extend(gone);
                    } else {
                        self.workloads.retain(|(kind, name), _| kind != k || seen.contains(name));
                    }
                }
            }
            Observed::Warning(w) => {
                self.warnings.retain(|x| !(x.object == w.object && x.reason == w.reason));
                self.warnings.push(w);
            }
            Observed::Workload(w) => {
                if let Some(seen) = self.relisting.get_mut(w.kind.as_str()) {
                    seen.insert(w.name.clone());
                }
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
                // An image that is not there fails the rollout when the kubelet's error says it
                // will not be (a bad name, credentials) or after `PULL_ATTEMPTS` failed pulls:
                // one dropped connection to the registry is not a broken deploy.
                let pulls = self.pulls.get(&(p.name.clone(), c.name.clone()));
                let pull_error = pulls.and_then(|s| s.error.clone());
                let pull = match reason {
                    "InvalidImageName" | "ErrImageNeverPull" => true,
                    "ErrImagePull" | "ImagePullBackOff" => {
                        pull_error.as_deref().is_some_and(permanent_pull_error)
                            || pulls.map_or(0, |s| s.failures.max(1)) >= PULL_ATTEMPTS
                    }
                    _ => false,
                };
                let failed_pod = p.phase == "Failed";
                if crash || pull || failed_pod {
                    let exit = c.terminated.as_ref().or(c.last_terminated.as_ref()).map(|t| t.1);
                    let reason = if failed_pod && reason.is_empty() { "PodFailed".into() } else { reason.to_string() };
                    let message =
                        if pull { pull_error.or_else(|| c.waiting_message.clone()) } else { c.waiting_message.clone() };
                    out.push(failure(&p.name, &c.name, reason, message, exit, c.restart_count));
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
    /// pod a deploy creates afterwards counts as new). `Err` when the cluster refuses the watch
    /// (a right missing) or the pods are not listed within 30 s; a transient failure on the way
    /// is recovered by the watch itself.
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

    /// Waits for the next observation and takes it in; `None` when the watch ended. Transient
    /// failures never reach here (the watch recovers by itself, see
    /// `clients::kube::watch`); a refusal in mid-rollout (a right revoked) is logged and the
    /// wait goes on, since the watcher keeps retrying behind it. It never returns `Err` (the
    /// signature stays for callers that match on it).
    pub async fn next(&mut self) -> Option<Result<(), KubeError>> {
        loop {
            match self.stream.next().await? {
                Ok(o) => {
                    self.state.apply(o);
                    return Some(Ok(()));
                }
                Err(e) => tracing::info!("{e}; the watch resumes"),
            }
        }
    }
}

/// Reads the last log lines of each failing container (of its previous run when it restarted),
/// for at most five containers.
pub async fn evidence(kube: &Kube, namespace: &str, list: Vec<PodFailure>, lines: u32) -> Vec<PodFailure> {
    let mut out = Vec::new();
    for mut f in list.into_iter().take(5) {
        let pulling = PULL_FAILURES.contains(&f.reason.as_str());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::kube::ContainerView;

    fn waiting(reason: &str, message: &str) -> Observed {
        Observed::Pod(PodView {
            name: "web-1".into(),
            labels: BTreeMap::new(),
            phase: "Pending".into(),
            ip: None,
            terminating: false,
            created: None,
            containers: vec![ContainerView {
                name: "web".into(),
                ready: false,
                restart_count: 0,
                waiting_reason: Some(reason.into()),
                waiting_message: Some(message.into()),
                terminated: None,
                last_terminated: None,
                image: "r/web@sha256:00".into(),
            }],
        })
    }

    fn rollout() -> Rollout {
        let mut r = Rollout::default();
        r.apply(Observed::Listed("Pod"));
        r
    }

    #[test]
    fn a_pull_that_failed_once_on_a_dropped_connection_is_retried_not_failed() {
        let mut r = rollout();
        let eof =
            "failed to pull and unpack image: failed to do request: Get \"https://r/v2/web/manifests/sha256:00\": EOF";
        for round in 1..=PULL_ATTEMPTS {
            r.apply(waiting("ErrImagePull", eof));
            r.apply(waiting("ImagePullBackOff", "Back-off pulling image \"r/web@sha256:00\""));
            let failures = r.hard_failures(2);
            if round < PULL_ATTEMPTS {
                assert!(failures.is_empty(), "after {round} failed pull(s): {failures:?}");
            } else {
                assert_eq!(failures.len(), 1);
                assert_eq!(failures[0].reason, "ImagePullBackOff");
                assert_eq!(failures[0].message.as_deref(), Some(eof), "the pull's error, not the back-off's");
            }
        }
    }

    /// A watch restarted after a 410 Gone or a dropped connection relists: a pod deleted while
    /// it was down (its delete event lost) is gone, not a live pod to blame or wait for.
    #[test]
    fn a_relisted_watch_forgets_what_was_deleted_meanwhile() {
        let mut r = rollout();
        r.apply(waiting("CrashLoopBackOff", "back-off"));
        let Observed::Pod(mut p) = waiting("CrashLoopBackOff", "back-off") else { unreachable!() };
        p.containers[0].restart_count = 5;
        r.apply(Observed::Pod(p));
        assert_eq!(r.hard_failures(2).len(), 1);
        r.apply(Observed::Relisting("Pod"));
        let Observed::Pod(mut other) = waiting("ContainerCreating", "") else { unreachable!() };
        other.name = "web-2".into();
        r.apply(Observed::Pod(other));
        r.apply(Observed::Listed("Pod"));
        assert!(r.hard_failures(2).is_empty(), "web-1 was deleted while the watch was down");
        assert_eq!(r.live_pods().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["web-2"]);
        assert!(r.new_pods().any(|p| p.name == "web-2"), "a pod first seen in a relist is new");
    }

    #[test]
    fn a_pull_error_that_will_not_go_away_fails_at_once() {
        for message in [
            "rpc error: code = NotFound desc = failed to pull and unpack image: manifest unknown",
            "failed to authorize: failed to fetch anonymous token: unexpected status: 401 Unauthorized",
            "failed to do request: Head \"https://nope:5000/v2/\": dial tcp: lookup nope: no such host",
        ] {
            let mut r = rollout();
            r.apply(waiting("ErrImagePull", message));
            let failures = r.hard_failures(2);
            assert_eq!(failures.len(), 1, "{message}");
            assert_eq!(failures[0].message.as_deref(), Some(message));
        }
        let mut r = rollout();
        r.apply(waiting("InvalidImageName", "couldn't parse image reference"));
        assert_eq!(r.hard_failures(2).len(), 1);
    }
}
