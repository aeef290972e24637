//! The Kubernetes API, through the `kube` crate: the per-PR namespace and its pull credentials,
//! the deploy lock, watches of workloads, pods and Warning events, container logs, scaling and
//! access reviews.
//!
//! Compatibility: prpod must work against Kubernetes 1.20 as well as current clusters. It is
//! built with k8s-openapi's `earliest` feature and uses only API groups and versions both serve
//! (`core/v1`, `apps/v1`, `authorization.k8s.io/v1`, `coordination.k8s.io/v1`,
//! `networking.k8s.io/v1`); fields newer than 1.20 are optional and simply absent there. Watches
//! use kube's list-then-watch mode (streaming lists need 1.27+).

pub mod inuse;
pub mod lifecycle;
pub mod scale;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Endpoints, Event as KubeEvent, Namespace, Pod, Secret as KubeSecret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use serde_json::json;

use crate::error::{Classify, FailureKind};
use crate::model::Condition;
pub use crate::model::KubeTarget;
use crate::secret::Secret;

/// The annotation Helm (3.2+ and 4) puts on every object of a release.
pub const HELM_RELEASE_ANNOTATION: &str = "meta.helm.sh/release-name";
/// Field manager name for prpod's own writes.
const MANAGER: &str = "prpod";

/// A failed call to the cluster. Messages say what prpod was doing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable kubeconfig / in-cluster config.
    #[error(
        "failed to configure the Kubernetes client: {why}; set KUBECONFIG, pass --kubeconfig / --kube-context, \
         or run in a pod with a ServiceAccount"
    )]
    Config {
        /// Why.
        why: String,
    },
    /// The API server refused the credentials (401).
    #[error("failed to {what}: the cluster rejected the credentials ({message}); refresh the kubeconfig's token")]
    Unauthorized {
        /// What prpod was doing.
        what: String,
        /// The server's message.
        message: String,
    },
    /// The credentials lack a right (403).
    #[error(
        "failed to {what}: forbidden ({message}); grant it to the identity prpod runs as (`prpod doctor` lists every right a deploy needs)"
    )]
    Forbidden {
        /// What prpod was doing.
        what: String,
        /// The server's message.
        message: String,
    },
    /// Any other API error.
    #[error("failed to {what}: {message} (HTTP {code})")]
    Api {
        /// What prpod was doing.
        what: String,
        /// HTTP status.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached.
    #[error(
        "failed to {what}: the cluster is unreachable: {why}; check the kubeconfig's server address and that the API server is up"
    )]
    Unreachable {
        /// What prpod was doing.
        what: String,
        /// Transport error.
        why: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting to {what}")]
    Timeout {
        /// What prpod waited for.
        what: String,
        /// How long.
        after: Duration,
    },
}

impl KubeError {
    fn from_kube(what: impl Into<String>, e: kube::Error) -> KubeError {
        let what = what.into();
        match e {
            kube::Error::Api(s) if s.code == 401 => KubeError::Unauthorized { what, message: s.message },
            kube::Error::Api(s) if s.code == 403 => KubeError::Forbidden { what, message: s.message },
            kube::Error::Api(s) => KubeError::Api { what, code: s.code, message: s.message },
            kube::Error::HyperError(e) => KubeError::Unreachable { what, why: chain(&e) },
            kube::Error::Service(e) => KubeError::Unreachable { what, why: chain(e.as_ref()) },
            other => KubeError::Unreachable { what, why: chain(&other) },
        }
    }

    /// The HTTP status, for API errors.
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Unauthorized { .. } => Some(401),
            KubeError::Forbidden { .. } => Some(403),
            KubeError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

impl Classify for KubeError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            KubeError::Config { .. } | KubeError::Unauthorized { .. } | KubeError::Forbidden { .. } => None,
            KubeError::Api { code, .. } if (400..500).contains(code) && *code != 409 && *code != 429 => None,
            _ => Some(FailureKind::External),
        }
    }
}

/// A connected client and the namespace its config names by default.
#[derive(Clone)]
pub struct Kube {
    client: Client,
    default_namespace: String,
    server: String,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").field("server", &self.server).finish()
    }
}

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

/// What a namespace watch reports.
#[derive(Debug, Clone)]
pub enum Observed {
    /// A workload was added or changed.
    Workload(WorkloadView),
    /// A pod was added or changed.
    Pod(PodView),
    /// A pod is gone.
    PodGone(String),
    /// The watch of this kind (`Pod`, `Deployment`, `StatefulSet`, `DaemonSet`, `Event`) is
    /// (re)listing: every object that exists follows, then `Listed`. After a restart (a 410
    /// Gone, a dropped connection), what is not listed again is gone.
    Relisting(&'static str),
    /// Every object of this kind that existed when the watch (re)started has been reported.
    Listed(&'static str),
    /// A Warning event was recorded.
    Warning(WarningView),
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

/// The answer of a SelfSubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Allowed.
    pub allowed: bool,
    /// The authorizer's reason, when it gave one.
    pub reason: Option<String>,
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

fn warning_of(e: &KubeEvent) -> WarningView {
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
    /// Connects using `target` (an explicit kubeconfig and/or context), else `$KUBECONFIG` /
    /// `~/.kube/config`, else the in-cluster ServiceAccount. No request is made yet.
    pub async fn connect(target: &KubeTarget) -> Result<Kube, KubeError> {
        let cfg_err = |why: String| KubeError::Config { why };
        let options = KubeConfigOptions { context: target.context.clone(), ..Default::default() };
        let config = match &target.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| cfg_err(format!("kubeconfig {}: {}", path.display(), chain(&e))))?;
                Config::from_custom_kubeconfig(kc, &options).await.map_err(|e| cfg_err(chain(&e)))?
            }
            None if target.context.is_some() => {
                Config::from_kubeconfig(&options).await.map_err(|e| cfg_err(chain(&e)))?
            }
            None => Config::infer().await.map_err(|e| cfg_err(chain(&e)))?,
        };
        let server = config.cluster_url.to_string();
        let default_namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(|e| cfg_err(chain(&e)))?;
        Ok(Kube { client, default_namespace, server })
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The namespace the config names by default.
    pub fn default_namespace(&self) -> &str {
        &self.default_namespace
    }

    /// The server's version, `v1.20.2`.
    pub async fn server_version(&self) -> Result<String, KubeError> {
        let info =
            self.client.apiserver_version().await.map_err(|e| KubeError::from_kube("read the server version", e))?;
        Ok(info.git_version)
    }

    /// The namespace's labels, or `None` when it does not exist.
    pub async fn namespace_labels(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, KubeError> {
        Ok(self.namespace_meta(name).await?.map(|(labels, _)| labels))
    }

    /// The labels and annotations of namespace `name`, or `None` when it does not exist.
    pub async fn namespace_meta(
        &self,
        name: &str,
    ) -> Result<Option<(BTreeMap<String, String>, BTreeMap<String, String>)>, KubeError> {
        Ok(self.namespace_view(name).await?.map(|v| (v.labels, v.annotations)))
    }

    /// Creates namespace `name` with `labels` and `annotations`; `Ok(false)` when it already
    /// exists (created meanwhile by someone else: the caller checks whose it is).
    pub async fn create_namespace(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<bool, KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.clone()),
                annotations: Some(annotations.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &ns).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(KubeError::from_kube(format!("create namespace {name}"), e)),
        }
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

    /// Sets `labels` and `annotations` on namespace `name` (a merge: others stay). The caller
    /// has decided the namespace is the preview's ([`crate::phases::preview`]).
    pub async fn label_namespace(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), KubeError> {
        let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
        self.merge_namespace_meta(name, &patch, || format!("label namespace {name}")).await
    }

    /// Applies `patch` (`{"metadata": {...}}`) to namespace `name` as a JSON merge patch, so
    /// labels and annotations it does not name stay; `what` names the step in an error.
    async fn merge_namespace_meta(
        &self,
        name: &str,
        patch: &serde_json::Value,
        what: impl FnOnce() -> String,
    ) -> Result<(), KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.patch(
            name,
            &PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() },
            &Patch::Merge(patch),
        )
        .await
        .map_err(|e| KubeError::from_kube(what(), e))?;
        Ok(())
    }

    /// Writes the registry pull credentials as the `kubernetes.io/dockerconfigjson` Secret `name`
    /// in `namespace` (created or replaced).
    pub async fn apply_pull_secret(
        &self,
        namespace: &str,
        name: &str,
        dockerconfigjson: &Secret,
    ) -> Result<(), KubeError> {
        let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), namespace);
        let secret = KubeSecret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), "prpod".into())])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            string_data: Some(BTreeMap::from([(".dockerconfigjson".into(), dockerconfigjson.expose().to_string())])),
            ..Default::default()
        };
        let what = format!("write the registry pull Secret {namespace}/{name}");
        let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        match api.create(&pp, &secret).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let patch = json!({"type": "kubernetes.io/dockerconfigjson",
                    "stringData": {".dockerconfigjson": dockerconfigjson.expose()}});
                api.patch(
                    name,
                    &PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() },
                    &Patch::Merge(&patch),
                )
                .await
                .map(|_| ())
                .map_err(|e| KubeError::from_kube(&what, e))
            }
            Err(e) => Err(KubeError::from_kube(&what, e)),
        }
    }

    /// Adds `secret` to the `imagePullSecrets` of ServiceAccount `account` in `namespace`,
    /// creating the account when the controller has not made it yet. Every pod that runs as the
    /// account (every pod of a chart that names no account of its own) then pulls with it.
    pub async fn attach_pull_secret(&self, namespace: &str, account: &str, secret: &str) -> Result<(), KubeError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("attach the pull Secret to ServiceAccount {namespace}/{account}");
        let pp = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        for _ in 0..5 {
            match api.get_opt(account).await.map_err(|e| KubeError::from_kube(&what, e))? {
                None => {
                    let sa = ServiceAccount {
                        metadata: ObjectMeta { name: Some(account.into()), ..Default::default() },
                        image_pull_secrets: Some(vec![k8s_openapi::api::core::v1::LocalObjectReference {
                            name: secret.into(),
                        }]),
                        ..Default::default()
                    };
                    match api
                        .create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &sa)
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(KubeError::from_kube(&what, e)),
                    }
                }
                Some(sa) => {
                    let mut list: Vec<String> =
                        sa.image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect();
                    if list.iter().any(|n| n == secret) {
                        return Ok(());
                    }
                    list.push(secret.into());
                    // The list is atomic: send it whole, guarded by the resourceVersion we read.
                    let patch = json!({"metadata": {"resourceVersion": sa.metadata.resource_version},
                        "imagePullSecrets": list.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()});
                    match api.patch(account, &pp, &Patch::Merge(&patch)).await {
                        Ok(_) => return Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(KubeError::from_kube(&what, e)),
                    }
                }
            }
        }
        Err(KubeError::Api { what, code: 409, message: "the ServiceAccount kept changing under us".into() })
    }

    /// The `imagePullSecrets` of ServiceAccount `account` (empty when it does not exist).
    pub async fn pull_secrets_of(&self, namespace: &str, account: &str) -> Result<Vec<String>, KubeError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa = api
            .get_opt(account)
            .await
            .map_err(|e| KubeError::from_kube(format!("read ServiceAccount {namespace}/{account}"), e))?;
        Ok(sa.map(|s| s.image_pull_secrets.into_iter().flatten().map(|r| r.name).collect()).unwrap_or_default())
    }

    /// Whether the current identity may `verb` `resource` (in `group`, `""` for core) in
    /// `namespace` (`None`: cluster-wide), with an optional `subresource` and object `name`.
    pub async fn can_i(
        &self,
        namespace: Option<&str>,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        name: Option<&str>,
    ) -> Result<Access, KubeError> {
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: namespace.map(str::to_string),
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    subresource: subresource.map(str::to_string),
                    name: name.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| KubeError::from_kube("ask the cluster what prpod may do (SelfSubjectAccessReview)", e))?;
        let st = out.status.unwrap_or_default();
        Ok(Access { allowed: st.allowed, reason: st.reason.filter(|r| !r.is_empty()) })
    }

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

    /// Deletes object `kind`/`name` (of `api_version`) in `namespace` when Helm's annotations say
    /// it belongs to release `release` there; `Ok(false)` when it is gone already or is not the
    /// release's (then it is left alone). Only namespaced kinds: a cluster-scoped object is
    /// never deleted here (`Ok(false)`).
    pub async fn delete_release_object(
        &self,
        namespace: &str,
        api_version: &str,
        kind: &str,
        name: &str,
        release: &str,
    ) -> Result<bool, KubeError> {
        use kube::api::DynamicObject;
        use kube::core::GroupVersionKind;
        use kube::discovery::Scope;
        let what = format!("delete {kind} {namespace}/{name}");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| KubeError::from_kube(what.clone(), e))?;
        if caps.scope != Scope::Namespaced {
            return Ok(false);
        }
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let Some(obj) = api.get_opt(name).await.map_err(|e| KubeError::from_kube(what.clone(), e))? else {
            return Ok(false);
        };
        let ann = obj.metadata.annotations.unwrap_or_default();
        let ours = ann.get("meta.helm.sh/release-name").map(String::as_str) == Some(release)
            && ann.get("meta.helm.sh/release-namespace").map(String::as_str) == Some(namespace);
        if !ours {
            return Ok(false);
        }
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
            Err(e) => Err(KubeError::from_kube(what, e)),
        }
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

    /// Sets the replicas of Deployment `name` (through its scale subresource).
    pub async fn scale_deployment(&self, namespace: &str, name: &str, replicas: u32) -> Result<(), KubeError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let patch = json!({"spec": {"replicas": replicas}});
        api.patch_scale(
            name,
            &PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| KubeError::from_kube(format!("scale Deployment {namespace}/{name}"), e))?;
        Ok(())
    }

    /// Watches workloads, pods and Warning events in `namespace`: first everything that exists,
    /// then every change, until the stream is dropped. A watch, not a polling loop.
    ///
    /// Each kind's watch recovers as kube-runtime's watcher does (a 410 Gone relists, a dropped
    /// connection watches again), with its default backoff between attempts; the failure is
    /// still reported as an `Err` item, and the stream goes on after it. A relist is reported
    /// as `Relisting` ... `Listed`, so objects deleted meanwhile can be dropped.
    pub fn watch_namespace(&self, namespace: &str) -> impl Stream<Item = Result<Observed, KubeError>> + Send + 'static {
        let ns = namespace.to_string();
        let wc = watcher::Config::default();
        let err = move |what: &'static str| {
            let ns = ns.clone();
            move |e: watcher::Error| match e {
                watcher::Error::InitialListFailed(e)
                | watcher::Error::WatchStartFailed(e)
                | watcher::Error::WatchFailed(e) => KubeError::from_kube(format!("watch {what} in {ns}"), e),
                other => KubeError::Unreachable { what: format!("watch {what} in {ns}"), why: other.to_string() },
            }
        };
        let pods = watcher(Api::<Pod>::namespaced(self.client.clone(), namespace), wc.clone())
            .default_backoff()
            .map_err(err("pods"))
            .map_ok(|ev| match ev {
                watcher::Event::Delete(p) => vec![Observed::PodGone(p.metadata.name.unwrap_or_default())],
                ev => observe(ev, "Pod", |p| Observed::Pod(PodView::from(p))),
            })
            .boxed();
        let deployments = watcher(Api::<Deployment>::namespaced(self.client.clone(), namespace), wc.clone())
            .default_backoff()
            .map_err(err("deployments"))
            .map_ok(|ev| observe(ev, "Deployment", |d| Observed::Workload(WorkloadView::from(d))))
            .boxed();
        let statefulsets = watcher(Api::<StatefulSet>::namespaced(self.client.clone(), namespace), wc.clone())
            .default_backoff()
            .map_err(err("statefulsets"))
            .map_ok(|ev| observe(ev, "StatefulSet", |d| Observed::Workload(WorkloadView::from(d))))
            .boxed();
        let daemonsets = watcher(Api::<DaemonSet>::namespaced(self.client.clone(), namespace), wc.clone())
            .default_backoff()
            .map_err(err("daemonsets"))
            .map_ok(|ev| observe(ev, "DaemonSet", |d| Observed::Workload(WorkloadView::from(d))))
            .boxed();
        let events = watcher(Api::<KubeEvent>::namespaced(self.client.clone(), namespace), wc.fields("type=Warning"))
            .default_backoff()
            .map_err(err("events"))
            .map_ok(|ev| observe(ev, "Event", |e| Observed::Warning(warning_of(e))))
            .boxed();
        futures::stream::select_all([pods, deployments, statefulsets, daemonsets, events])
            .map_ok(|v: Vec<Observed>| futures::stream::iter(v.into_iter().map(Ok)))
            .try_flatten()
    }

    /// Takes the deploy lock of `name` in `namespace` (a `coordination.k8s.io/v1` Lease) for
    /// `holder`, waiting up to `wait` while another live holder has it. A holder that stopped
    /// renewing for `ttl` is dead and its lease is taken over. Every write carries the
    /// resourceVersion it read (a create, or a replace of that version), so of two runs that
    /// race for one lease exactly one wins. Returns whether the lease was taken over from a dead
    /// holder (so whatever it left half-done may be cleaned up).
    pub async fn acquire_lease(
        &self,
        namespace: &str,
        name: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LeaseTaken, KubeError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("take the deploy lock (Lease {namespace}/{name})");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = Timestamp::now();
            let spec = LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(ttl.as_secs() as i32),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                ..Default::default()
            };
            let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
            match api.get_opt(name).await.map_err(|e| KubeError::from_kube(&what, e))? {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
                        spec: Some(spec),
                    };
                    match api.create(&pp, &lease).await {
                        Ok(l) => {
                            return Ok(LeaseTaken { previous_holder: None, version: version_of(&l) });
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(KubeError::from_kube(&what, e)),
                    }
                }
                Some(mut lease) => {
                    let cur = lease.spec.clone().unwrap_or_default();
                    let held_by = cur.holder_identity.clone().filter(|h| !h.is_empty());
                    let expires =
                        cur.renew_time.as_ref().map(|t| t.0).and_then(|t| {
                            t.checked_add(jiff_secs(cur.lease_duration_seconds.unwrap_or(0) as i64)).ok()
                        });
                    let live =
                        held_by.is_some() && held_by.as_deref() != Some(holder) && expires.is_some_and(|e| e > now);
                    if live {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(KubeError::Timeout {
                                what: format!(
                                    "{what}: {} is deploying this preview; try again when it is done",
                                    held_by.unwrap_or_default()
                                ),
                                after: wait,
                            });
                        }
                        // Until the holder releases it (a delete) or its renewals stop; 250 ms
                        // keeps the successor of a run that just ended close behind it.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    lease.spec = Some(spec);
                    // `lease` carries the resourceVersion read above: a replace of a lease
                    // another run changed since is refused (409) and read again.
                    match api.replace(name, &pp, &lease).await {
                        Ok(l) => return Ok(LeaseTaken { previous_holder: held_by, version: version_of(&l) }),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(KubeError::from_kube(&what, e)),
                    }
                }
            }
        }
    }

    /// Renews a lease `holder` holds, at resourceVersion `version` (what its last write
    /// returned): a replace with that version, so a lease another run took over in between is
    /// never written. Returns the new version, or [`LeaseRenewal::Lost`] naming who holds it
    /// now (nobody: it was deleted). An `Err` is a failed call: the lease may still be ours.
    pub async fn renew_lease(
        &self,
        namespace: &str,
        name: &str,
        holder: &str,
        version: &str,
    ) -> Result<LeaseRenewal, KubeError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("renew the deploy lock (Lease {namespace}/{name})");
        let Some(mut lease) = api.get_opt(name).await.map_err(|e| KubeError::from_kube(&what, e))? else {
            return Ok(LeaseRenewal::Lost { holder: None });
        };
        let cur = lease.spec.clone().unwrap_or_default();
        let held_by = cur.holder_identity.clone().filter(|h| !h.is_empty());
        if held_by.as_deref() != Some(holder) {
            return Ok(LeaseRenewal::Lost { holder: held_by });
        }
        // The version read must be the one this holder wrote last: anything else means another
        // writer was in between (who may have taken it and handed it back), and the lock was
        // not held throughout.
        if lease.metadata.resource_version.as_deref() != Some(version) {
            return Ok(LeaseRenewal::Lost { holder: held_by });
        }
        lease.spec = Some(LeaseSpec { renew_time: Some(MicroTime(Timestamp::now())), ..cur });
        let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        match api.replace(name, &pp, &lease).await {
            Ok(l) => Ok(LeaseRenewal::Renewed { version: version_of(&l) }),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                let now = api.get_opt(name).await.ok().flatten();
                Ok(LeaseRenewal::Lost { holder: now.and_then(|l| l.spec?.holder_identity).filter(|h| !h.is_empty()) })
            }
            Err(e) => Err(KubeError::from_kube(&what, e)),
        }
    }

    /// Releases the lease (deletes it) if `holder` still holds it, with the resourceVersion read
    /// as a precondition, so a lease another run took in between is left alone.
    pub async fn release_lease(&self, namespace: &str, name: &str, holder: &str) -> Result<(), KubeError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("release the deploy lock (Lease {namespace}/{name})");
        let Some(l) = api.get_opt(name).await.map_err(|e| KubeError::from_kube(&what, e))? else { return Ok(()) };
        if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(holder) {
            return Ok(());
        }
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: l.metadata.resource_version.clone(),
                uid: l.metadata.uid.clone(),
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            // Gone already, or no longer the version this holder saw (taken over): not ours.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(KubeError::from_kube(&what, e)),
        }
    }
}

/// One kind the API server serves, as its discovery documents list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedKind {
    /// `v1`, `apps/v1`, ...
    pub api_version: String,
    /// `Pod`, `Deployment`, ...
    pub kind: String,
    /// Whether its objects live in a namespace (`false`: cluster-scoped).
    pub namespaced: bool,
}

impl Kube {
    /// Every kind the server serves, from its discovery documents (`/api`, `/apis` and one per
    /// group version; the legacy form, which Kubernetes 1.20 and current releases both serve).
    /// A group version whose document fails (an aggregated API that is down) is left out with
    /// a warning, as kubectl does; the list of groups itself must answer.
    pub async fn served_kinds(&self) -> Result<Vec<ServedKind>, KubeError> {
        let what = "read the API server's discovery documents";
        let core = self.client.list_core_api_versions().await.map_err(|e| KubeError::from_kube(what, e))?;
        let groups = self.client.list_api_groups().await.map_err(|e| KubeError::from_kube(what, e))?;
        let mut versions: Vec<String> = core.versions;
        versions.extend(groups.groups.iter().flat_map(|g| g.versions.iter().map(|v| v.group_version.clone())));
        // One after the other, on the one pooled connection: measured against 1.20 (24 group
        // versions), 32 ms, where all at once (a TLS handshake each) took 90 ms.
        let mut out = Vec::new();
        for gv in versions {
            let list = if gv.contains('/') {
                self.client.list_api_group_resources(&gv).await
            } else {
                self.client.list_core_api_resources(&gv).await
            };
            let list = match list {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("discovery of {gv} failed, its kinds are unknown to prpod: {}", chain(&e));
                    continue;
                }
            };
            // Subresources (`pods/log`, `deployments/scale`) are not kinds of objects.
            for r in list.resources.into_iter().filter(|r| !r.name.contains('/')) {
                out.push(ServedKind { api_version: gv.clone(), kind: r.kind, namespaced: r.namespaced });
            }
        }
        Ok(out)
    }
}

/// The outcome of [`Kube::acquire_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTaken {
    /// Who held the lease before (a run that died without releasing it), if anyone.
    pub previous_holder: Option<String>,
    /// The lease's resourceVersion after this write (what the first renewal must find).
    pub version: String,
}

/// The outcome of [`Kube::renew_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRenewal {
    /// Still held; the lease's resourceVersion after the renewal.
    Renewed {
        /// The new resourceVersion.
        version: String,
    },
    /// No longer held by this holder.
    Lost {
        /// Who holds it now (`None`: nobody, it was deleted).
        holder: Option<String>,
    },
}

fn version_of(l: &Lease) -> String {
    l.metadata.resource_version.clone().unwrap_or_default()
}

fn jiff_secs(s: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(s)
}

/// The kinds [`Kube::watch_namespace`] reports `Listed` for.
pub const WATCHED_KINDS: [&str; 5] = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "Event"];

fn observe<K>(ev: watcher::Event<K>, kind: &'static str, f: impl Fn(&K) -> Observed) -> Vec<Observed> {
    match ev {
        watcher::Event::Apply(k) | watcher::Event::InitApply(k) => vec![f(&k)],
        watcher::Event::InitDone => vec![Observed::Listed(kind)],
        watcher::Event::Init => vec![Observed::Relisting(kind)],
        watcher::Event::Delete(_) => vec![],
    }
}

// ---- the rights a run needs ------------------------------------------------------------------

/// A condition under which a run needs a right of [`RUN_RIGHTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    /// The preview's namespace does not exist yet: prpod creates it.
    NamespaceAbsent,
    /// The namespace exists: prpod updates its labels and annotations.
    NamespacePresent,
    /// The chart has an Ingress (`[app] ingress_host`).
    Ingress,
    /// Helm 3 runs the deploy.
    Helm3,
    /// Helm 4 runs the deploy.
    Helm4,
}

/// One Kubernetes API right: `verb` on `resource` (of API `group`, `""` for core) in the
/// preview's namespace — or, for `namespaces`, on the preview's namespace itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRight {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'static str,
    /// The API group (`""`: core, `apps`, `coordination.k8s.io`, ...).
    pub group: &'static str,
    /// The resource, plural (`secrets`, `deployments`).
    pub resource: &'static str,
    /// A subresource (`log`), if any.
    pub subresource: Option<&'static str>,
    /// Every condition that must hold for a run to need it (none: every run does).
    pub when: &'static [Needed],
    /// Which request needs it, for the message that names a missing one.
    pub why: &'static str,
}

impl ApiRight {
    /// `deployments.apps`, `pods/log`: the resource as RBAC rules and `kubectl auth can-i` name it.
    pub fn resource_name(&self) -> String {
        let mut r = self.resource.to_string();
        if !self.group.is_empty() {
            r = format!("{r}.{}", self.group);
        }
        if let Some(s) = self.subresource {
            r = format!("{r}/{s}");
        }
        r
    }
}

const fn right(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    when: &'static [Needed],
    why: &'static str,
) -> ApiRight {
    ApiRight { verb, group, resource, subresource: None, when, why }
}

const HELM_STORE: &str =
    "Helm keeps each release revision in a Secret; prpod reads their labels and writes the pull Secret";
const PULL_SA: &str = "the pull Secret is attached to the namespace's default ServiceAccount";
const LOCK: &str = "the deploy lock (a Lease per release)";
const APPLY: &str = "Helm applies, upgrades, rolls back and removes the chart's objects";
const WATCH: &str = "prpod watches the rollout (workloads, pods, Warning events)";
const HELM4_WAIT: &str = "Helm 4's --wait watches the release's objects";

/// Every Kubernetes API right a deploy (`prpod run`, `prpod deploy`) uses: the requests this
/// module's methods make for the deploy and verify phases, and those of the Helm they run
/// (`upgrade --install --wait` with its rollback, `rollback`, `uninstall`, `history`).
///
/// The one list: `prpod doctor` asks the cluster for exactly the rows that apply
/// ([`run_rights`]); a method that starts making another kind of request adds its row here.
/// `tests/all/run.rs` deploys as a ServiceAccount whose Role holds only these rights.
/// (`status --replicas` also needs `patch deployments.apps/scale`; it is not a deploy.)
pub const RUN_RIGHTS: &[ApiRight] = &[
    // the namespace ([`Kube::namespace_labels`], [`Kube::create_namespace`]); Helm is not asked
    // to create it
    right("get", "", "namespaces", &[], "the preview's namespace is read before anything is written"),
    right("create", "", "namespaces", &[Needed::NamespaceAbsent], "prpod creates the preview's namespace"),
    right(
        "patch",
        "",
        "namespaces",
        &[Needed::NamespacePresent],
        "prpod labels the namespace (repository, PR, commit)",
    ),
    // Helm's release storage; the pull Secret ([`Kube::apply_pull_secret`]); the release's
    // state from the storage's labels ([`Kube::helm_release_state`])
    right("get", "", "secrets", &[], HELM_STORE),
    right("list", "", "secrets", &[], HELM_STORE),
    right("create", "", "secrets", &[], HELM_STORE),
    right("update", "", "secrets", &[], HELM_STORE),
    right("patch", "", "secrets", &[], HELM_STORE),
    right("delete", "", "secrets", &[], HELM_STORE),
    // [`Kube::attach_pull_secret`]
    right("get", "", "serviceaccounts", &[], PULL_SA),
    right("create", "", "serviceaccounts", &[], PULL_SA),
    right("patch", "", "serviceaccounts", &[], PULL_SA),
    // [`Kube::acquire_lease`], renewal and release
    right("get", "coordination.k8s.io", "leases", &[], LOCK),
    right("create", "coordination.k8s.io", "leases", &[], LOCK),
    right("update", "coordination.k8s.io", "leases", &[], LOCK),
    right("patch", "coordination.k8s.io", "leases", &[], LOCK),
    right("delete", "coordination.k8s.io", "leases", &[], LOCK),
    // the chart's objects (the default chart: a Deployment, a Service, an Ingress when asked);
    // [`Kube::delete_release_object`] after an interrupted upgrade
    right("get", "apps", "deployments", &[], APPLY),
    right("create", "apps", "deployments", &[], APPLY),
    right("update", "apps", "deployments", &[], APPLY),
    right("patch", "apps", "deployments", &[], APPLY),
    right("delete", "apps", "deployments", &[], APPLY),
    right("get", "", "services", &[], APPLY),
    right("create", "", "services", &[], APPLY),
    right("update", "", "services", &[], APPLY),
    right("patch", "", "services", &[], APPLY),
    right("delete", "", "services", &[], APPLY),
    right("get", "networking.k8s.io", "ingresses", &[Needed::Ingress], APPLY),
    right("create", "networking.k8s.io", "ingresses", &[Needed::Ingress], APPLY),
    right("update", "networking.k8s.io", "ingresses", &[Needed::Ingress], APPLY),
    right("patch", "networking.k8s.io", "ingresses", &[Needed::Ingress], APPLY),
    right("delete", "networking.k8s.io", "ingresses", &[Needed::Ingress], APPLY),
    // the rollout watch ([`Kube::watch_namespace`], [`Kube::release_workloads`], [`Kube::pods`],
    // [`Kube::warnings`]) and the failing container's log ([`Kube::container_logs`])
    right("list", "apps", "deployments", &[], WATCH),
    right("watch", "apps", "deployments", &[], WATCH),
    right("list", "apps", "statefulsets", &[], WATCH),
    right("watch", "apps", "statefulsets", &[], WATCH),
    right("list", "apps", "daemonsets", &[], WATCH),
    right("watch", "apps", "daemonsets", &[], WATCH),
    right("list", "", "pods", &[], WATCH),
    right("watch", "", "pods", &[], WATCH),
    right("list", "", "events", &[], WATCH),
    right("watch", "", "events", &[], WATCH),
    ApiRight {
        verb: "get",
        group: "",
        resource: "pods",
        subresource: Some("log"),
        when: &[],
        why: "quoting a failing container's log",
    },
    // verify: the preview's address and whether its Services route to a ready pod
    // ([`Kube::release_services`], [`Kube::ready_endpoints`], [`Kube::release_ingress_hosts`])
    right("list", "", "services", &[], "the preview's address (its Service)"),
    right("get", "", "endpoints", &[], "the preview's Services must route to a ready pod"),
    right("list", "networking.k8s.io", "ingresses", &[], "the preview's address (an Ingress host, when there is one)"),
    // Helm's own waits
    right(
        "list",
        "apps",
        "replicasets",
        &[],
        "Helm's --wait reads a Deployment's ReplicaSets (Helm 3: the new one's readiness; Helm 4: without them \
         kstatus leaves the Deployment `Unknown` until the timeout)",
    ),
    right("watch", "", "services", &[Needed::Helm4], HELM4_WAIT),
    right("watch", "networking.k8s.io", "ingresses", &[Needed::Helm4, Needed::Ingress], HELM4_WAIT),
];

/// The rows of [`RUN_RIGHTS`] a deploy needs: into a namespace that exists or not, with or
/// without an Ingress, with Helm `helm_major` (3 or 4; `None` when unknown: both).
pub fn run_rights(namespace_exists: bool, ingress: bool, helm_major: Option<u8>) -> Vec<&'static ApiRight> {
    let holds = |c: &Needed| match c {
        Needed::NamespaceAbsent => !namespace_exists,
        Needed::NamespacePresent => namespace_exists,
        Needed::Ingress => ingress,
        Needed::Helm3 => helm_major != Some(4),
        Needed::Helm4 => helm_major != Some(3),
    };
    RUN_RIGHTS.iter().filter(|r| r.when.iter().all(holds)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_rights_follow_the_namespace_the_ingress_and_helm() {
        let has =
            |rs: &[&ApiRight], verb: &str, res: &str| rs.iter().any(|r| r.verb == verb && r.resource_name() == res);
        let fresh = run_rights(false, false, Some(4));
        assert!(has(&fresh, "create", "namespaces") && !has(&fresh, "patch", "namespaces"));
        let existing = run_rights(true, false, Some(4));
        assert!(!has(&existing, "create", "namespaces") && has(&existing, "patch", "namespaces"));
        // verify reads endpoints and looks for an Ingress host on every run
        assert!(has(&existing, "get", "endpoints") && has(&existing, "list", "ingresses.networking.k8s.io"));
        assert!(!has(&existing, "create", "ingresses.networking.k8s.io"));
        assert!(has(&run_rights(true, true, Some(4)), "create", "ingresses.networking.k8s.io"));
        assert!(has(&existing, "list", "replicasets.apps"), "both Helms' --wait read ReplicaSets");
        assert!(has(&existing, "watch", "services") && !has(&run_rights(true, false, Some(3)), "watch", "services"));
        assert!(has(&run_rights(true, false, None), "watch", "services"), "unknown Helm: the rights of both");
        assert!(has(&existing, "get", "pods/log"));
        // no row twice
        for (i, a) in RUN_RIGHTS.iter().enumerate() {
            assert!(
                !RUN_RIGHTS[i + 1..].iter().any(|b| (b.verb, b.resource_name()) == (a.verb, a.resource_name())),
                "{} {} is listed twice",
                a.verb,
                a.resource_name()
            );
        }
    }

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
