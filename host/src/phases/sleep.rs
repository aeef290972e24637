//! Sleeping and waking a preview's workloads (see [`crate::ops::wake`] for when): the replica
//! counts recorded in the namespace's [`lifecycle::REPLICAS`] annotation before scaling to 0,
//! the namespace labelled [`lifecycle::ASLEEP`]; waking restores the counts and waits for Ready.
//! Both are safe to repeat.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clients::kube::{Kube, KubeError};
use crate::phases::lifecycle;

/// What one sleep or wake did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WakeReport {
    /// The namespace.
    pub namespace: String,
    /// `woken`, `awake` (it was not asleep), `slept`, `asleep` (already).
    pub state: String,
    /// Workloads and their replicas (restored, or recorded before sleeping).
    pub replicas: BTreeMap<String, u32>,
    /// Kubernetes API calls made.
    pub kube_calls: u32,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl WakeReport {
    /// For people.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("namespace {}: {}", self.namespace, self.state)];
        out.extend(self.replicas.iter().map(|(w, n)| format!("  {w}: {n} replica(s)")));
        out.push(format!("{:.1}s, {} Kubernetes API calls", self.seconds, self.kube_calls));
        out
    }
}

/// Scales the workloads of `namespace` to 0, recording their counts; a no-op when asleep.
pub async fn sleep_namespace(
    kube: &Kube,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<WakeReport, KubeError> {
    let started = Instant::now();
    let mut r = WakeReport { namespace: namespace.to_string(), ..WakeReport::default() };
    if labels.get(lifecycle::ASLEEP).map(String::as_str) == Some("true") {
        r.state = "asleep".into();
        return Ok(r);
    }
    let workloads = kube.scalable_workloads(namespace).await?;
    r.kube_calls += 2;
    for w in &workloads {
        r.replicas.insert(format!("{}/{}", w.kind, w.name), w.replicas);
    }
    // Recorded first: a sleep killed half-way is finished by the next, never losing the counts.
    let recorded = serde_json::to_string(&r.replicas).unwrap_or_default();
    kube.patch_namespace_meta(
        namespace,
        &BTreeMap::new(),
        &BTreeMap::from([(lifecycle::REPLICAS.to_string(), Some(recorded))]),
    )
    .await?;
    r.kube_calls += 1;
    for w in workloads.iter().filter(|w| w.replicas > 0) {
        kube.scale_workload(namespace, &w.kind, &w.name, 0).await?;
        r.kube_calls += 1;
    }
    kube.patch_namespace_meta(
        namespace,
        &BTreeMap::from([(lifecycle::ASLEEP.to_string(), Some("true".to_string()))]),
        &BTreeMap::new(),
    )
    .await?;
    r.kube_calls += 1;
    r.state = "slept".into();
    r.seconds = started.elapsed().as_secs_f64();
    Ok(r)
}

/// Scales the workloads of `namespace` back to the counts recorded when it went to sleep and
/// waits (up to `timeout`) until each has them Ready; a no-op when it is awake.
pub async fn wake_namespace(
    kube: &Kube,
    namespace: &str,
    annotations: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<WakeReport, KubeError> {
    let started = Instant::now();
    let mut r = WakeReport { namespace: namespace.to_string(), ..WakeReport::default() };
    let Some(recorded) = annotations.get(lifecycle::REPLICAS) else {
        r.state = "awake".into();
        // A wake label on an awake preview is spent.
        kube.patch_namespace_meta(namespace, &BTreeMap::from([(lifecycle::WAKE.to_string(), None)]), &BTreeMap::new())
            .await?;
        r.kube_calls += 1;
        return Ok(r);
    };
    let want = lifecycle::restore_replicas(kube, namespace, recorded).await?;
    r.kube_calls += want.len() as u32;
    r.replicas = want.clone();
    let deadline = Instant::now() + timeout;
    loop {
        let now = kube.scalable_workloads(namespace).await?;
        r.kube_calls += 2;
        let ready = want
            .iter()
            .all(|(w, n)| now.iter().find(|s| format!("{}/{}", s.kind, s.name) == *w).is_none_or(|s| s.ready >= *n));
        if ready {
            break;
        }
        if Instant::now() >= deadline {
            return Err(KubeError::Timeout {
                what: format!("the workloads of {namespace} to be Ready after waking ({recorded})"),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let labels = BTreeMap::from([(lifecycle::ASLEEP.to_string(), None), (lifecycle::WAKE.to_string(), None)]);
    kube.patch_namespace_meta(namespace, &labels, &BTreeMap::from([(lifecycle::REPLICAS.to_string(), None)])).await?;
    r.kube_calls += 1;
    r.state = "woken".into();
    r.seconds = started.elapsed().as_secs_f64();
    Ok(r)
}
