//! What prpod reads from a namespace: workloads, pods, Warning events, Services, endpoints,
//! Ingress hosts, container logs and Helm's release records, as plain views that verify, status
//! and plan hold without the API types.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Endpoints, Event as KubeEvent, Pod, Secret as KubeSecret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, LogParams};

use super::{HELM_RELEASE_ANNOTATION, Kube, KubeError};
use crate::model::Condition;

/// A workload (Deployment, StatefulSet, DaemonSet) as prpod reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadView {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// The Helm release it belongs to (its `meta.helm.sh/release-name`), if any.
    pub release: Option<String>,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas of the current template.
    pub updated: u32,
    /// Ready replicas.
    pub ready: u32,
    /// Available replicas.
    pub available: u32,
    /// Status conditions.
    pub conditions: Vec<Condition>,
    /// `spec.selector.matchLabels`.
    pub selector: BTreeMap<String, String>,
    /// The images of its pod template's containers.
    pub images: Vec<String>,
}

impl WorkloadView {
    /// Whether the controller has seen the latest spec, every replica is updated, ready and
    /// available, and no old replica is still counted (the status can report 2 available of 1
    /// desired for a moment after the old pod is gone from the pod list).
    pub fn settled(&self) -> bool {
        self.observed_generation >= self.generation
            && self.updated >= self.desired
            && self.ready == self.desired
            && self.available == self.desired
    }

    /// Whether `labels` match this workload's selector.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty() && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// One container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    /// Name.
    pub name: String,
    /// Passes readiness.
    pub ready: bool,
    /// Restarts.
    pub restart_count: u32,
    /// Why it is waiting (`CrashLoopBackOff`, `ImagePullBackOff`, ...).
    pub waiting_reason: Option<String>,
    /// The wait's message.
    pub waiting_message: Option<String>,
    /// How its current run ended, when it has: reason and exit code.
    pub terminated: Option<(String, i32)>,
    /// How its previous run ended: reason and exit code.
    pub last_terminated: Option<(String, i32)>,
    /// The image it runs.
    pub image: String,
}

/// A pod as prpod reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: String,
    /// Pod IP, once it has one.
    pub ip: Option<String>,
    /// Being deleted.
    pub terminating: bool,
    /// Creation time.
    pub created: Option<Timestamp>,
    /// Containers (init containers first).
    pub containers: Vec<ContainerView>,
}

impl PodView {
    /// Whether every container is ready.
    pub fn ready(&self) -> bool {
        !self.containers.is_empty() && self.containers.iter().all(|c| c.ready)
    }
}

/// A Warning event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarningView {
    /// `Kind/name` of the object.
    pub object: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// Times seen.
    pub count: u32,
    /// When last seen.
    pub last_seen: Option<Timestamp>,
}

/// A Service of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// ClusterIP (`None` for headless services).
    pub cluster_ip: Option<String>,
    /// Ports.
    pub ports: Vec<u16>,
    /// Whether it selects pods (so Kubernetes keeps its endpoints); a Service without a selector
    /// points wherever its author's Endpoints say.
    pub selects_pods: bool,
}

fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn release_of(meta: &ObjectMeta) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(HELM_RELEASE_ANNOTATION).cloned())
}

fn u(v: Option<i32>) -> u32 {
    v.unwrap_or(0).max(0) as u32
}

fn images_of(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> Vec<String> {
    spec.map(|s| s.containers.iter().filter_map(|c| c.image.clone()).collect()).unwrap_or_default()
}

fn conditions<C>(list: Option<&Vec<C>>, f: impl Fn(&C) -> Condition) -> Vec<Condition> {
    list.map(|l| l.iter().map(f).collect()).unwrap_or_default()
}

impl From<&Deployment> for WorkloadView {
    fn from(d: &Deployment) -> WorkloadView {
        let spec = d.spec.as_ref();
        let st = d.status.as_ref();
        WorkloadView {
            kind: "Deployment".into(),
            name: d.metadata.name.clone().unwrap_or_default(),
            release: release_of(&d.metadata),
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: st.and_then(|s| s.observed_generation).unwrap_or(0),
            desired: spec.and_then(|s| s.replicas).map_or(1, |r| r.max(0) as u32),
            updated: u(st.and_then(|s| s.updated_replicas)),
            ready: u(st.and_then(|s| s.ready_replicas)),
            available: u(st.and_then(|s| s.available_replicas)),
            conditions: conditions(st.and_then(|s| s.conditions.as_ref()), |c| Condition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            }),
            selector: spec.and_then(|s| s.selector.match_labels.clone()).unwrap_or_default(),
            images: images_of(spec.and_then(|s| s.template.spec.as_ref())),
        }
    }
}

impl From<&StatefulSet> for WorkloadView {
    fn from(d: &StatefulSet) -> WorkloadView {
        let spec = d.spec.as_ref();
        let st = d.status.as_ref();
        WorkloadView {
            kind: "StatefulSet".into(),
            name: d.metadata.name.clone().unwrap_or_default(),
            release: release_of(&d.metadata),
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: st.and_then(|s| s.observed_generation).unwrap_or(0),
            desired: spec.and_then(|s| s.replicas).map_or(1, |r| r.max(0) as u32),
            updated: u(st.and_then(|s| s.updated_replicas)),
            ready: u(st.and_then(|s| s.ready_replicas)),
            // `availableReplicas` is 1.22+ for StatefulSets: fall back to ready on 1.20.
            available: u(st.and_then(|s| s.available_replicas.or(s.ready_replicas))),
            conditions: conditions(st.and_then(|s| s.conditions.as_ref()), |c| Condition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            }),
            selector: spec.and_then(|s| s.selector.match_labels.clone()).unwrap_or_default(),
            images: images_of(spec.and_then(|s| s.template.spec.as_ref())),
        }
    }
}

impl From<&DaemonSet> for WorkloadView {
    fn from(d: &DaemonSet) -> WorkloadView {
        let spec = d.spec.as_ref();
        let st = d.status.as_ref();
        WorkloadView {
            kind: "DaemonSet".into(),
            name: d.metadata.name.clone().unwrap_or_default(),
            release: release_of(&d.metadata),
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: st.and_then(|s| s.observed_generation).unwrap_or(0),
            desired: st.map_or(0, |s| s.desired_number_scheduled.max(0) as u32),
            updated: u(st.and_then(|s| s.updated_number_scheduled)),
            ready: st.map_or(0, |s| s.number_ready.max(0) as u32),
            available: u(st.and_then(|s| s.number_available)),
            conditions: conditions(st.and_then(|s| s.conditions.as_ref()), |c| Condition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            }),
            selector: spec.and_then(|s| s.selector.match_labels.clone()).unwrap_or_default(),
            images: images_of(spec.and_then(|s| s.template.spec.as_ref())),
        }
    }
}

impl From<&Pod> for PodView {
    fn from(p: &Pod) -> PodView {
        let st = p.status.as_ref();
        let statuses = st
            .map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()))
            .into_iter()
            .flatten();
        let containers = statuses
            .map(|c| {
                let state = c.state.as_ref();
                let waiting = state.and_then(|s| s.waiting.as_ref());
                let term = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| {
                    (t.reason.clone().unwrap_or_else(|| "Terminated".into()), t.exit_code)
                };
                ContainerView {
                    name: c.name.clone(),
                    ready: c.ready,
                    restart_count: c.restart_count.max(0) as u32,
                    waiting_reason: waiting.and_then(|w| w.reason.clone()),
                    waiting_message: waiting.and_then(|w| w.message.clone()),
                    terminated: state.and_then(|s| s.terminated.as_ref()).map(term),
                    last_terminated: c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(term),
                    image: c.image.clone(),
                }
            })
            .collect();
        PodView {
            name: p.metadata.name.clone().unwrap_or_default(),
            labels: labels_of(&p.metadata),
            phase: st.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into()),
            ip: st.and_then(|s| s.pod_ip.clone()),
            terminating: p.metadata.deletion_timestamp.is_some(),
            created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            containers,
        }
    }
}

pub(super) fn warning_of(e: &KubeEvent) -> WarningView {
    let o = &e.involved_object;
    let last = e
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t: &MicroTime| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    WarningView {
        object: format!("{}/{}", o.kind.clone().unwrap_or_default(), o.name.clone().unwrap_or_default()),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
        count: e.count.unwrap_or(1).max(1) as u32,
        last_seen: last,
    }
}

impl Kube {
    /// The workloads in `namespace` that belong to Helm release `release`.
    pub async fn release_workloads(&self, namespace: &str, release: &str) -> Result<Vec<WorkloadView>, KubeError> {
        let what = format!("list the workloads of release {release} in {namespace}");
        let lp = ListParams::default();
        let mut out: Vec<WorkloadView> = Vec::new();
        let d: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        out.extend(d.list(&lp).await.map_err(|e| KubeError::from_kube(&what, e))?.items.iter().map(WorkloadView::from));
        let s: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        out.extend(s.list(&lp).await.map_err(|e| KubeError::from_kube(&what, e))?.items.iter().map(WorkloadView::from));
        let ds: Api<DaemonSet> = Api::namespaced(self.client.clone(), namespace);
        out.extend(
            ds.list(&lp).await.map_err(|e| KubeError::from_kube(&what, e))?.items.iter().map(WorkloadView::from),
        );
        out.retain(|w| w.release.as_deref() == Some(release));
        Ok(out)
    }

    /// The pods in `namespace`.
    pub async fn pods(&self, namespace: &str) -> Result<Vec<PodView>, KubeError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| KubeError::from_kube(format!("list pods in {namespace}"), e))?;
        Ok(list.items.iter().map(PodView::from).collect())
    }

    /// Warning events in `namespace`, oldest first.
    pub async fn warnings(&self, namespace: &str) -> Result<Vec<WarningView>, KubeError> {
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), namespace);
        let list = api
            .list(&ListParams::default().fields("type=Warning"))
            .await
            .map_err(|e| KubeError::from_kube(format!("list events in {namespace}"), e))?;
        let mut w: Vec<WarningView> = list.items.iter().map(warning_of).collect();
        w.sort_by_key(|e| e.last_seen);
        Ok(w)
    }

    /// The Services of release `release` in `namespace`.
    pub async fn release_services(&self, namespace: &str, release: &str) -> Result<Vec<ServiceView>, KubeError> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| KubeError::from_kube(format!("list services in {namespace}"), e))?;
        Ok(list
            .items
            .iter()
            .filter(|s| release_of(&s.metadata).as_deref() == Some(release))
            .map(|s| {
                let spec = s.spec.as_ref();
                ServiceView {
                    name: s.metadata.name.clone().unwrap_or_default(),
                    cluster_ip: spec.and_then(|x| x.cluster_ip.clone()).filter(|ip| ip != "None" && !ip.is_empty()),
                    ports: spec
                        .and_then(|x| x.ports.as_ref())
                        .map(|p| p.iter().map(|p| p.port as u16).collect())
                        .unwrap_or_default(),
                    selects_pods: spec.and_then(|x| x.selector.as_ref()).is_some_and(|s| !s.is_empty()),
                }
            })
            .collect())
    }

    /// How many ready addresses Service `name` in `namespace` routes to (0 when its Endpoints do
    /// not exist yet). Read from core/v1 Endpoints, which every Kubernetes from 1.20 to today
    /// serves (discovery.k8s.io/v1 EndpointSlices arrived in 1.21).
    pub async fn ready_endpoints(&self, namespace: &str, name: &str) -> Result<usize, KubeError> {
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), namespace);
        let ep = api
            .get_opt(name)
            .await
            .map_err(|e| KubeError::from_kube(format!("read the endpoints of service {name} in {namespace}"), e))?;
        Ok(ep
            .and_then(|e| e.subsets)
            .unwrap_or_default()
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum())
    }

    /// The hosts of the Ingresses of release `release` in `namespace`.
    pub async fn release_ingress_hosts(&self, namespace: &str, release: &str) -> Result<Vec<String>, KubeError> {
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| KubeError::from_kube(format!("list ingresses in {namespace}"), e))?;
        Ok(list
            .items
            .iter()
            .filter(|i| release_of(&i.metadata).as_deref() == Some(release))
            .flat_map(|i| i.spec.iter().flat_map(|s| s.rules.iter().flatten()).filter_map(|r| r.host.clone()))
            .collect())
    }

    /// The last `lines` lines of a container's log (`previous`: of its last terminated run).
    pub async fn container_logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
        lines: i64,
    ) -> Result<String, KubeError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let lp = LogParams {
            container: Some(container.into()),
            previous,
            tail_lines: Some(lines),
            limit_bytes: Some(16 * 1024),
            ..Default::default()
        };
        api.logs(pod, &lp).await.map_err(|e| KubeError::from_kube(format!("read the log of {pod}/{container}"), e))
    }

    /// Whether Helm has a release `release` in `namespace` (its release Secrets).
    pub async fn helm_release_exists(&self, namespace: &str, release: &str) -> Result<bool, KubeError> {
        let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), namespace);
        let lp = ListParams::default().labels(&format!("owner=helm,name={release}")).limit(1);
        let list = api
            .list_metadata(&lp)
            .await
            .map_err(|e| KubeError::from_kube(format!("read release {release} in {namespace}"), e))?;
        Ok(!list.items.is_empty())
    }

    /// The latest revision and status of Helm release `release` as Helm 3 and 4 store it (Secrets
    /// labelled `owner=helm,name=RELEASE`, one per revision), without running Helm: a read for
    /// `prpod plan`. `None` when there is no release.
    pub async fn helm_release_state(&self, namespace: &str, release: &str) -> Result<Option<(u32, String)>, KubeError> {
        Ok(self.helm_release_revisions(namespace, release).await?.into_iter().max_by_key(|(v, _)| *v))
    }

    /// Every stored revision of Helm release `release` and its status, oldest first (read as
    /// [`Kube::helm_release_state`] does); empty when there is no release.
    pub async fn helm_release_revisions(
        &self,
        namespace: &str,
        release: &str,
    ) -> Result<Vec<(u32, String)>, KubeError> {
        let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), namespace);
        let lp = ListParams::default().labels(&format!("owner=helm,name={release}"));
        let list = api
            .list_metadata(&lp)
            .await
            .map_err(|e| KubeError::from_kube(format!("read release {release} in {namespace}"), e))?;
        let mut revisions: Vec<(u32, String)> = list
            .items
            .iter()
            .filter_map(|s| {
                let l = s.metadata.labels.as_ref()?;
                Some((l.get("version")?.parse::<u32>().ok()?, l.get("status")?.clone()))
            })
            .collect();
        revisions.sort();
        Ok(revisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_needs_every_count() {
        let mut w = WorkloadView {
            kind: "Deployment".into(),
            name: "web".into(),
            release: Some("pr-1".into()),
            generation: 2,
            observed_generation: 2,
            desired: 3,
            updated: 3,
            ready: 3,
            available: 3,
            conditions: vec![],
            selector: BTreeMap::from([("app".into(), "web".into())]),
            images: vec![],
        };
        assert!(w.settled());
        w.observed_generation = 1;
        assert!(!w.settled());
        w.observed_generation = 2;
        w.available = 2;
        assert!(!w.settled());
        assert!(w.selects(&BTreeMap::from([("app".into(), "web".into()), ("x".into(), "y".into())])));
        assert!(!w.selects(&BTreeMap::new()));
    }
}
