//! The verify phase: after Helm returns, the release's workloads are watched (not polled) until
//! each has every replica updated, ready and available — or the time left runs out — and the
//! result, with the pods' phases, container waiting reasons and restart counts and the Warning
//! events since the deploy began, becomes the `release-status` every verifier's `check-release`
//! judges. An `error` finding fails the run: the release is rolled back to the revision before
//! (or uninstalled, when this was its first), and prpod exits 1.

pub mod rollout;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use self::rollout::{PodFailure, Rollout, RolloutWatch};
use crate::clients::kube::{Kube, KubeError, PodView, WarningView, WorkloadView};
use crate::model::{
    ContainerStatus, PodStatus, PrContext, ReleaseStatus, ReleaseTarget, ReportedFinding, WarningEvent, WorkloadStatus,
};
use crate::plugins::{Plugin, PluginError};

/// What the cluster showed of a release.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The release's workloads.
    pub workloads: Vec<WorkloadView>,
    /// Pods of the namespace that are not being deleted.
    pub pods: Vec<PodView>,
    /// Warning events.
    pub warnings: Vec<WarningView>,
}

impl Snapshot {
    /// The pods a workload selects.
    pub fn pods_of<'a>(&'a self, w: &'a WorkloadView) -> impl Iterator<Item = &'a PodView> + 'a {
        self.pods.iter().filter(move |p| !p.terminating && w.selects(&p.labels))
    }

    /// Whether every workload is settled and has no pods beyond its desired count (old pods of
    /// a rollout still running).
    pub fn settled(&self) -> bool {
        self.workloads.iter().all(|w| w.settled() && self.pods_of(w).count() as u32 <= w.desired.max(1))
    }

    /// The `release-status` record plugins judge. Warnings older than `since` are left out.
    pub fn release_status(&self, release: &ReleaseTarget, since: Option<Timestamp>) -> ReleaseStatus {
        let workloads = self
            .workloads
            .iter()
            .map(|w| WorkloadStatus {
                kind: w.kind.clone(),
                name: w.name.clone(),
                desired: w.desired,
                ready: w.ready,
                available: w.available,
                conditions: w.conditions.clone(),
                pods: self.pods_of(w).map(pod_status).collect(),
            })
            .collect();
        let warnings = self
            .warnings
            .iter()
            .filter(|e| since.is_none_or(|s| e.last_seen.is_none_or(|t| t >= s)))
            .map(|e| WarningEvent {
                object: e.object.clone(),
                reason: e.reason.clone(),
                message: e.message.clone(),
                count: e.count,
            })
            .collect();
        ReleaseStatus { release: release.clone(), workloads, warnings }
    }
}

/// A pod as the WIT `pod-status` record has it.
pub fn pod_status(p: &PodView) -> PodStatus {
    PodStatus {
        name: p.name.clone(),
        phase: p.phase.clone(),
        containers: p
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                ready: c.ready,
                restart_count: c.restart_count,
                waiting_reason: c.waiting_reason.clone(),
                waiting_message: c.waiting_message.clone(),
            })
            .collect(),
    }
}

/// Reads the release's state once (for `prpod status`).
pub async fn snapshot(kube: &Kube, release: &ReleaseTarget) -> Result<Snapshot, KubeError> {
    let ns = &release.namespace;
    let (workloads, pods, warnings) =
        tokio::try_join!(kube.release_workloads(ns, &release.name), kube.pods(ns), kube.warnings(ns))?;
    Ok(Snapshot { workloads, pods: pods.into_iter().filter(|p| !p.terminating).collect(), warnings })
}

/// How the release looked when the verify phase stopped watching.
#[derive(Debug, Clone)]
pub struct Settled {
    /// What the cluster showed.
    pub snapshot: Snapshot,
    /// Every workload had all replicas updated, ready and available.
    pub settled: bool,
    /// Containers that failed for good (the rollout cannot succeed), if any.
    pub failures: Vec<PodFailure>,
}

/// Keeps watching (the watch the deploy phase started) until the release's workloads settle, a
/// new pod fails for good, or `wait` passes. Running out of time is not an error here: the
/// verifiers judge the state.
pub async fn settle(
    watch: &mut RolloutWatch,
    release: &ReleaseTarget,
    wait: Duration,
    crash_restarts: u32,
) -> Result<Settled, KubeError> {
    settle_when(watch, release, wait, crash_restarts, |_| true).await
}

/// [`settle`], counting the workloads settled only once `seen` also holds. A change made just
/// before (a scale) reaches the watch a moment later, and until it does the old state looks
/// settled; `seen` says what the change must look like (e.g. the new replica count).
pub async fn settle_when(
    watch: &mut RolloutWatch,
    release: &ReleaseTarget,
    wait: Duration,
    crash_restarts: u32,
    seen: impl Fn(&Snapshot) -> bool,
) -> Result<Settled, KubeError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if watch.state.all_listed() {
            let snapshot = snapshot_of(&watch.state, release);
            let failures = watch.state.hard_failures(crash_restarts);
            if !failures.is_empty() {
                return Ok(Settled { snapshot, settled: false, failures });
            }
            if seen(&snapshot) && snapshot.settled() {
                return Ok(Settled { snapshot, settled: true, failures });
            }
        }
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) | Err(_) => {
                return Ok(Settled { snapshot: snapshot_of(&watch.state, release), settled: false, failures: vec![] });
            }
        }
    }
}

fn snapshot_of(state: &Rollout, release: &ReleaseTarget) -> Snapshot {
    Snapshot {
        workloads: state.release_workloads(&release.name).cloned().collect(),
        pods: state.live_pods().cloned().collect(),
        warnings: state.warnings.clone(),
    }
}

/// Runs every verifier's `check-release` (all of them) on `status`.
pub async fn check_release(
    ctx: &PrContext,
    status: &ReleaseStatus,
    verifiers: &[Plugin],
) -> Result<Vec<ReportedFinding>, PluginError> {
    let mut out = Vec::new();
    for v in verifiers {
        for f in v.check_release(ctx, status).await? {
            out.push(ReportedFinding { plugin: v.name().to_string(), hook: "check-release".into(), finding: f });
        }
    }
    Ok(out)
}

/// Waits until every Service of the release that selects pods routes to at least one ready
/// address, or `wait` passes. A pod turns Ready before the endpoints controller lists it, so
/// "every replica ready" alone can hand out a preview URL that does not answer yet. Returns the
/// Services still without a ready endpoint when time ran out (empty when all route).
pub async fn wait_for_endpoints(
    kube: &Kube,
    release: &ReleaseTarget,
    wait: Duration,
) -> Result<Vec<String>, KubeError> {
    let deadline = tokio::time::Instant::now() + wait;
    let services = kube.release_services(&release.namespace, &release.name).await?;
    let mut pending: Vec<String> = services.into_iter().filter(|s| s.selects_pods).map(|s| s.name).collect();
    loop {
        let mut still = Vec::new();
        for name in pending {
            if kube.ready_endpoints(&release.namespace, &name).await? == 0 {
                still.push(name);
            }
        }
        pending = still;
        if pending.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(pending);
        }
        // Endpoints follow pod readiness within a second or so; polling a handful of objects
        // is cheaper than another watch for the few seconds this lasts.
        tokio::time::sleep_until((tokio::time::Instant::now() + Duration::from_millis(250)).min(deadline)).await;
    }
}

/// Where the preview answers: `http://HOST/` of the release's first Ingress host, else
/// `http://CLUSTER-IP:PORT/` of its first Service (reachable from inside the cluster's network).
pub async fn preview_url(kube: &Kube, release: &ReleaseTarget) -> Result<Option<String>, KubeError> {
    let ns = &release.namespace;
    if let Some(host) = kube.release_ingress_hosts(ns, &release.name).await?.into_iter().next() {
        return Ok(Some(format!("http://{host}/")));
    }
    let services = kube.release_services(ns, &release.name).await?;
    Ok(services.iter().find_map(|s| {
        let ip = s.cluster_ip.as_ref()?;
        let port = s.ports.first()?;
        Some(if *port == 80 { format!("http://{ip}/") } else { format!("http://{ip}:{port}/") })
    }))
}

/// The image digests the release's workloads run (`sha256:...`), for `prpod status`.
pub fn digests(snapshot: &Snapshot) -> Vec<String> {
    let mut out: Vec<String> = snapshot
        .workloads
        .iter()
        .flat_map(|w| w.images.iter())
        .filter_map(|i| i.split_once('@').map(|(_, d)| d.to_string()))
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::clients::kube::ContainerView;

    fn pod(name: &str, labels: &[(&str, &str)], ready: bool) -> PodView {
        PodView {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            phase: "Running".into(),
            ip: None,
            terminating: false,
            created: None,
            containers: vec![ContainerView {
                name: "web".into(),
                ready,
                restart_count: 0,
                waiting_reason: None,
                waiting_message: None,
                terminated: None,
                last_terminated: None,
                image: "x".into(),
            }],
        }
    }

    #[test]
    fn status_maps_pods_to_their_workload() {
        let w = WorkloadView {
            kind: "Deployment".into(),
            name: "web".into(),
            release: Some("pr-1".into()),
            generation: 1,
            observed_generation: 1,
            desired: 1,
            updated: 1,
            ready: 1,
            available: 1,
            conditions: vec![],
            selector: BTreeMap::from([("app".into(), "web".into())]),
            images: vec!["r/web:pr-1@sha256:abc".into()],
        };
        let mut s = Snapshot {
            workloads: vec![w],
            pods: vec![pod("web-1", &[("app", "web")], true), pod("other", &[("app", "db")], true)],
            warnings: vec![],
        };
        assert!(s.settled());
        let rs = s.release_status(&ReleaseTarget { name: "pr-1".into(), namespace: "pr-1".into() }, None);
        assert_eq!(rs.workloads[0].pods.len(), 1);
        assert_eq!(digests(&s), vec!["sha256:abc".to_string()]);
        // An old pod still running beside the new one: not settled yet.
        s.pods.push(pod("web-0", &[("app", "web")], true));
        assert!(!s.settled());
    }
}
