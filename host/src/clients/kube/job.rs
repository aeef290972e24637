//! The Job `prpod dispatch` runs `prpod run` in: its manifests (pure functions of a
//! [`DispatchSpec`], so a plan prints exactly what is applied) and the calls that apply them,
//! replace a PR's previous Job, and follow the Job's pod to its exit code.
//!
//! What the Job may do is its Role, built from the one list of a run's rights
//! ([`super::RUN_RIGHTS`]); the Role is bound with a RoleBinding in the PR's namespace, never to
//! the `admin` ClusterRole (which would let the Job grant its rights on). Nothing is
//! cluster-scoped but the namespace, which the caller creates through the preview's ownership
//! check. The pod runs under the `restricted` Pod Security profile ([`restricted_violations`]
//! says which of its rules a pod spec breaks) unless the operator allowed privileged builds.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, LocalObjectReference,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext,
    PodSpec, PodTemplateSpec, SeccompProfile, Secret as KubeSecret, SecretVolumeSource, SecurityContext,
    ServiceAccount, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde::Serialize;

use super::{ApiRight, Kube, KubeError, MANAGER};
use crate::secret::Secret;

/// The ServiceAccount, Role and RoleBinding of the Job (one each per PR namespace).
pub const SERVICE_ACCOUNT: &str = "prpod-run";
/// The ConfigMap holding the run's `prpod.toml` (and the registry CA, when there is one).
pub const CONFIG_MAP: &str = "prpod-run-config";
/// The Secret holding the git token and the registry credentials.
pub const SECRET: &str = "prpod-run-credentials";
/// The Secret the kubelet pulls the job image with (the pull credentials, when there are).
pub const IMAGE_PULL_SECRET: &str = "prpod-run-image-pull";
/// The PersistentVolumeClaim of the caches (`[dispatch] cache_volume`).
pub const CACHE_CLAIM: &str = "prpod-run-cache";
/// The container's name.
pub const CONTAINER: &str = "prpod";
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/prpod";
/// Where the Secret is mounted (each key a file).
pub const SECRET_DIR: &str = "/var/run/secrets/prpod";
/// Where the caches live (`PRPOD_CACHE_DIR`: clone cache, compiled plugins, Helm).
pub const CACHE_DIR: &str = "/var/cache/prpod";
/// The non-root user and group the pod runs as (the job image's `USER`).
pub const RUN_AS: i64 = 65532;
/// The label that names the commit a Job runs.
pub const COMMIT_LABEL: &str = "prpod.dev/commit";
/// The label that marks prpod's dispatch Jobs.
pub const COMPONENT: (&str, &str) = ("app.kubernetes.io/component", "prpod-dispatch");

/// When the dispatching identity needs a right of [`DISPATCH_RIGHTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchNeed {
    /// Every dispatch.
    Always,
    /// The PR's namespace does not exist yet: dispatch creates it.
    NamespaceAbsent,
    /// `[dispatch] cache_volume`: the caches' PVC.
    CacheVolume,
    /// `deploy.adopt_namespace`: a namespace not labelled as the PR's is checked for another
    /// Helm release.
    AdoptNamespace,
}

/// A right of the identity that runs `prpod dispatch`, and when it needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchRight {
    /// The right, in the PR's namespace (for `namespaces`: on the PR's namespace itself).
    pub right: ApiRight,
    /// When.
    pub need: DispatchNeed,
}

const fn dispatch_right(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    need: DispatchNeed,
    why: &'static str,
) -> DispatchRight {
    DispatchRight { right: ApiRight { verb, group, resource, subresource, when: &[], why }, need }
}

const APPLIED: &str = "dispatch applies the Job's ServiceAccount, Role, RoleBinding, ConfigMap and Secrets \
                       (server-side apply: create the first time, patch after)";
const JOBS: &str = "dispatch lists the PR's Jobs, deletes a superseded one, creates the new one and reads its state";
const PODS: &str = "dispatch finds the Job's pod, stops a superseded Job's pod and streams the pod's log";

/// Every Kubernetes API right `prpod dispatch` itself uses, in the PR's namespace: the requests
/// of this module's methods and of the preview's ownership check. Besides these, the identity
/// must hold every right of the Job's Role (a run's: [`super::run_rights`] for a namespace that
/// exists), since Kubernetes lets an identity grant only rights it holds, unless it may
/// `escalate` roles and `bind` the Role.
///
/// The one list: `dispatch` asks the cluster for the rows that apply before it writes anything
/// and names the missing ones; the README's table ("The dispatching identity needs") and the
/// tests' ClusterRole for a dispatching ServiceAccount follow it.
pub const DISPATCH_RIGHTS: &[DispatchRight] = &[
    dispatch_right(
        "get",
        "",
        "namespaces",
        None,
        DispatchNeed::Always,
        "the PR's namespace is read first (the ownership check)",
    ),
    dispatch_right(
        "create",
        "",
        "namespaces",
        None,
        DispatchNeed::NamespaceAbsent,
        "dispatch creates the PR's namespace",
    ),
    dispatch_right(
        "patch",
        "",
        "namespaces",
        None,
        DispatchNeed::Always,
        "dispatch labels the namespace (repository, PR, commit)",
    ),
    dispatch_right(
        "list",
        "",
        "secrets",
        None,
        DispatchNeed::AdoptNamespace,
        "adopting a namespace: is another Helm release in it?",
    ),
    dispatch_right("create", "", "serviceaccounts", None, DispatchNeed::Always, APPLIED),
    dispatch_right("patch", "", "serviceaccounts", None, DispatchNeed::Always, APPLIED),
    dispatch_right("create", "rbac.authorization.k8s.io", "roles", None, DispatchNeed::Always, APPLIED),
    dispatch_right("patch", "rbac.authorization.k8s.io", "roles", None, DispatchNeed::Always, APPLIED),
    dispatch_right("create", "rbac.authorization.k8s.io", "rolebindings", None, DispatchNeed::Always, APPLIED),
    dispatch_right("patch", "rbac.authorization.k8s.io", "rolebindings", None, DispatchNeed::Always, APPLIED),
    dispatch_right("create", "", "configmaps", None, DispatchNeed::Always, APPLIED),
    dispatch_right("patch", "", "configmaps", None, DispatchNeed::Always, APPLIED),
    dispatch_right("create", "", "secrets", None, DispatchNeed::Always, APPLIED),
    dispatch_right("patch", "", "secrets", None, DispatchNeed::Always, APPLIED),
    dispatch_right(
        "create",
        "",
        "persistentvolumeclaims",
        None,
        DispatchNeed::CacheVolume,
        "dispatch applies the caches' PVC",
    ),
    dispatch_right(
        "patch",
        "",
        "persistentvolumeclaims",
        None,
        DispatchNeed::CacheVolume,
        "dispatch applies the caches' PVC",
    ),
    dispatch_right("list", "batch", "jobs", None, DispatchNeed::Always, JOBS),
    dispatch_right("get", "batch", "jobs", None, DispatchNeed::Always, JOBS),
    dispatch_right("create", "batch", "jobs", None, DispatchNeed::Always, JOBS),
    dispatch_right("delete", "batch", "jobs", None, DispatchNeed::Always, JOBS),
    dispatch_right("list", "", "pods", None, DispatchNeed::Always, PODS),
    dispatch_right("deletecollection", "", "pods", None, DispatchNeed::Always, PODS),
    dispatch_right("get", "", "pods", Some("log"), DispatchNeed::Always, PODS),
];

/// The rows of [`DISPATCH_RIGHTS`] a dispatch needs: into a namespace that exists or not, with
/// or without the caches' PVC, adopting a namespace or not.
pub fn dispatch_rights(namespace_exists: bool, cache_volume: bool, adopt: bool) -> Vec<&'static ApiRight> {
    DISPATCH_RIGHTS
        .iter()
        .filter(|r| match r.need {
            DispatchNeed::Always => true,
            DispatchNeed::NamespaceAbsent => !namespace_exists,
            DispatchNeed::CacheVolume => cache_volume,
            DispatchNeed::AdoptNamespace => adopt,
        })
        .map(|r| &r.right)
        .collect()
}

/// Optional volume for the caches: a PVC of `size` in `storage_class` (instead of emptyDir).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheClaim {
    /// `10Gi`.
    pub size: String,
    /// The StorageClass; `None`: the cluster's default class.
    pub storage_class: Option<String>,
}

/// Everything the manifests are made from: plain values, no config.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchSpec {
    /// The PR's namespace.
    pub namespace: String,
    /// The Job's name.
    pub job_name: String,
    /// Labels of every object (the preview's, plus the commit and the component).
    pub labels: BTreeMap<String, String>,
    /// Annotations of the Job (the preview's: repository, branch, commit).
    pub annotations: BTreeMap<String, String>,
    /// The job image.
    pub image: String,
    /// `prpod` arguments (`run --repo-url ... --pr ...`).
    pub args: Vec<String>,
    /// ConfigMap keys: `prpod.toml` and any file it names (the registry CA).
    pub config_files: BTreeMap<String, String>,
    /// The Secret's keys (values are never part of the spec).
    pub secret_keys: Vec<String>,
    /// Caches on a PVC instead of emptyDir.
    pub cache: Option<CacheClaim>,
    /// `activeDeadlineSeconds`.
    pub active_deadline_secs: i64,
    /// `ttlSecondsAfterFinished`.
    pub ttl_after_finished_secs: i32,
    /// The Role's rules.
    #[serde(skip)]
    pub rules: Vec<PolicyRule>,
    /// Whether the pod pulls the job image with [`IMAGE_PULL_SECRET`].
    pub image_pull_secret: bool,
    /// buildah in the pod: a privileged container (`[dispatch] allow_privileged_builds`).
    pub privileged_build: bool,
}

fn meta(name: &str, spec: &DispatchSpec) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(spec.namespace.clone()),
        labels: Some(spec.labels.clone()),
        ..Default::default()
    }
}

/// The Role's rules: each right of `rights` (a run's, from [`super::run_rights`]), one rule per
/// API group and resource. The rule on `namespaces` names the PR's namespace alone.
pub fn role_rules(rights: &[&ApiRight], namespace: &str) -> Vec<PolicyRule> {
    let mut rules: Vec<PolicyRule> = Vec::new();
    for r in rights {
        let resource = match r.subresource {
            Some(s) => format!("{}/{s}", r.resource),
            None => r.resource.to_string(),
        };
        let same = |p: &PolicyRule| {
            p.api_groups.as_deref() == Some(&[r.group.to_string()][..])
                && p.resources.as_deref() == Some(&[resource.clone()][..])
        };
        match rules.iter_mut().find(|p| same(p)) {
            Some(p) => p.verbs.push(r.verb.to_string()),
            None => rules.push(PolicyRule {
                api_groups: Some(vec![r.group.to_string()]),
                resources: Some(vec![resource.clone()]),
                resource_names: (r.resource == "namespaces").then(|| vec![namespace.to_string()]),
                verbs: vec![r.verb.to_string()],
                ..Default::default()
            }),
        }
    }
    rules
}

/// The Job's ServiceAccount.
pub fn service_account(spec: &DispatchSpec) -> ServiceAccount {
    ServiceAccount { metadata: meta(SERVICE_ACCOUNT, spec), ..Default::default() }
}

/// The Job's Role: exactly the rules of the spec.
pub fn role(spec: &DispatchSpec) -> Role {
    Role { metadata: meta(SERVICE_ACCOUNT, spec), rules: Some(spec.rules.clone()) }
}

/// The RoleBinding of the Job's ServiceAccount to its Role (a Role: never a ClusterRole).
pub fn role_binding(spec: &DispatchSpec) -> RoleBinding {
    RoleBinding {
        metadata: meta(SERVICE_ACCOUNT, spec),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: SERVICE_ACCOUNT.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: SERVICE_ACCOUNT.into(),
            namespace: Some(spec.namespace.clone()),
            ..Default::default()
        }]),
    }
}

/// The ConfigMap: the run's `prpod.toml` and the files it names.
pub fn config_map(spec: &DispatchSpec) -> ConfigMap {
    ConfigMap { metadata: meta(CONFIG_MAP, spec), data: Some(spec.config_files.clone()), ..Default::default() }
}

/// The Secret of the run's credentials: `values` by key (each becomes a file in
/// [`SECRET_DIR`]).
pub fn secret(spec: &DispatchSpec, values: &BTreeMap<String, Secret>) -> KubeSecret {
    KubeSecret {
        metadata: meta(SECRET, spec),
        type_: Some("Opaque".into()),
        string_data: Some(values.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect()),
        ..Default::default()
    }
}

/// The `kubernetes.io/dockerconfigjson` Secret the kubelet pulls the job image with.
pub fn image_pull_secret(spec: &DispatchSpec, dockerconfigjson: &Secret) -> KubeSecret {
    KubeSecret {
        metadata: meta(IMAGE_PULL_SECRET, spec),
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        string_data: Some(BTreeMap::from([(".dockerconfigjson".into(), dockerconfigjson.expose().to_string())])),
        ..Default::default()
    }
}

/// The caches' PersistentVolumeClaim, when the spec asks for one.
pub fn cache_claim(spec: &DispatchSpec) -> Option<PersistentVolumeClaim> {
    let c = spec.cache.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: meta(CACHE_CLAIM, spec),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: c.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(c.size.clone()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Job: one pod, never retried (`backoffLimit: 0`: a second try would deploy the same commit
/// again after a failure the first already reported), bounded by `activeDeadlineSeconds`.
pub fn job(spec: &DispatchSpec) -> Job {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let empty = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    let cache = match &spec.cache {
        Some(_) => Volume {
            name: "cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: CACHE_CLAIM.into(),
                read_only: Some(false),
            }),
            ..Default::default()
        },
        None => empty("cache"),
    };
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource { name: CONFIG_MAP.into(), ..Default::default() }),
            ..Default::default()
        },
        Volume {
            name: "credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(SECRET.into()),
                // read by the pod's group (fsGroup) only
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        cache,
        empty("tmp"),
    ];
    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("credentials", SECRET_DIR, true),
        mount("cache", CACHE_DIR, false),
        mount("tmp", "/tmp", false),
    ];
    let env = |k: &str, v: &str| EnvVar { name: k.into(), value: Some(v.into()), ..Default::default() };
    let mut envs = vec![
        env("PRPOD_CONFIG", &format!("{CONFIG_DIR}/prpod.toml")),
        env("PRPOD_CACHE_DIR", CACHE_DIR),
        env("HOME", "/tmp"),
        env("TMPDIR", "/tmp"),
    ];
    let (pod_security, security) = if spec.privileged_build {
        // buildah in a container: see README "prpod dispatch": it mounts (overlay or fuse), makes
        // user namespaces and switches users, which a restricted pod may not.
        volumes.push(empty("containers"));
        mounts.push(mount("containers", "/var/lib/containers", false));
        envs.push(env("PRPOD_BUILDAH_ROOT", "/var/lib/containers/storage"));
        (
            PodSecurityContext {
                seccomp_profile: Some(SeccompProfile { type_: "Unconfined".into(), ..Default::default() }),
                ..Default::default()
            },
            SecurityContext { privileged: Some(true), run_as_user: Some(0), ..Default::default() },
        )
    } else {
        (
            PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                ..Default::default()
            },
            SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                privileged: Some(false),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                ..Default::default()
            },
        )
    };
    let pod = PodSpec {
        service_account_name: Some(SERVICE_ACCOUNT.into()),
        // (the run talks to the API server as the ServiceAccount: in-cluster config)
        automount_service_account_token: Some(true),
        restart_policy: Some("Never".into()),
        security_context: Some(pod_security),
        image_pull_secrets: spec
            .image_pull_secret
            .then(|| vec![LocalObjectReference { name: IMAGE_PULL_SECRET.into() }]),
        containers: vec![Container {
            name: CONTAINER.into(),
            image: Some(spec.image.clone()),
            args: Some(spec.args.clone()),
            env: Some(envs),
            volume_mounts: Some(mounts),
            working_dir: Some("/tmp".into()),
            security_context: Some(security),
            ..Default::default()
        }],
        volumes: Some(volumes),
        ..Default::default()
    };
    let mut job_meta = meta(&spec.job_name, spec);
    job_meta.annotations = Some(spec.annotations.clone());
    Job {
        metadata: job_meta,
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(spec.active_deadline_secs),
            ttl_seconds_after_finished: Some(spec.ttl_after_finished_secs),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(spec.labels.clone()), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The rules of Pod Security's `restricted` profile (Kubernetes 1.25's, which 1.20 cannot
/// enforce) that `pod` breaks, one line each; empty when it complies.
pub fn restricted_violations(pod: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    let psc = pod.security_context.clone().unwrap_or_default();
    if pod.host_network == Some(true) || pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        out.push("host namespaces (hostNetwork, hostPID, hostIPC) are not allowed".into());
    }
    for v in pod.volumes.iter().flatten() {
        let allowed = v.config_map.is_some()
            || v.secret.is_some()
            || v.empty_dir.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some()
            || v.csi.is_some()
            || v.ephemeral.is_some();
        if !allowed {
            out.push(format!("volume {} is of a type the profile does not allow", v.name));
        }
    }
    if psc.run_as_user == Some(0) {
        out.push("the pod runs as UID 0".into());
    }
    let pod_seccomp = psc.seccomp_profile.as_ref().map(|s| s.type_.as_str());
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        let sc = c.security_context.clone().unwrap_or_default();
        let name = &c.name;
        if sc.privileged == Some(true) {
            out.push(format!("container {name} is privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            out.push(format!("container {name} must set allowPrivilegeEscalation: false"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            out.push(format!("container {name} must drop ALL capabilities"));
        }
        if let Some(add) = caps.add.as_ref().filter(|a| a.iter().any(|c| c != "NET_BIND_SERVICE")) {
            out.push(format!("container {name} adds capabilities {add:?} (only NET_BIND_SERVICE is allowed)"));
        }
        if sc.run_as_non_root.or(psc.run_as_non_root) != Some(true) {
            out.push(format!("container {name} must set runAsNonRoot: true"));
        }
        if sc.run_as_user == Some(0) {
            out.push(format!("container {name} runs as UID 0"));
        }
        let seccomp = sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()).or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            out.push(format!("container {name} must set seccompProfile RuntimeDefault or Localhost"));
        }
        for p in c.ports.iter().flatten() {
            if p.host_port.is_some_and(|h| h != 0) {
                out.push(format!("container {name} uses a hostPort"));
            }
        }
    }
    out
}

/// A dispatch Job as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobView {
    /// Its name.
    pub name: String,
    /// The commit it runs ([`COMMIT_LABEL`]).
    pub commit: Option<String>,
    /// Whether it has not finished (neither Complete nor Failed).
    pub running: bool,
    /// All its labels (the ownership check reads them).
    #[serde(skip)]
    pub labels: BTreeMap<String, String>,
    /// All its annotations.
    #[serde(skip)]
    pub annotations: BTreeMap<String, String>,
}

/// Where a Job's pod is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// No pod yet (or none left).
    Absent,
    /// Scheduled, pulling, starting: `reason` when the kubelet gave one (`ErrImagePull`).
    Waiting {
        /// The pod.
        pod: String,
        /// The container's waiting reason and message.
        reason: Option<(String, String)>,
    },
    /// The container runs (its `restarts` so far).
    Running {
        /// The pod.
        pod: String,
        /// The container's restart count.
        restarts: i32,
    },
    /// The container ended with `exit_code`.
    Terminated {
        /// The pod.
        pod: String,
        /// Its exit code.
        exit_code: i32,
        /// Its reason (`Completed`, `Error`, `OOMKilled`, `DeadlineExceeded`).
        reason: String,
    },
}

/// Where a dispatch Job is ([`Kube::job_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// Gone, or being deleted: a newer dispatch of the PR superseded it, or `--reset` replaced it.
    Deleted,
    /// Its `Failed` condition: the reason and message (`DeadlineExceeded: ...`).
    Failed(String),
    /// Running, or complete.
    Other,
}

fn pod_state(p: &Pod) -> PodState {
    let pod = p.metadata.name.clone().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    let c = status.container_statuses.iter().flatten().find(|c| c.name == CONTAINER).cloned();
    let Some(c) = c else {
        // a pod the deadline killed before its container started
        if status.phase.as_deref() == Some("Failed") {
            return PodState::Terminated {
                pod,
                exit_code: -1,
                reason: status.reason.unwrap_or_else(|| "Failed".into()),
            };
        }
        return PodState::Waiting { pod, reason: None };
    };
    let state = c.state.unwrap_or_default();
    if let Some(t) = state.terminated {
        return PodState::Terminated { pod, exit_code: t.exit_code, reason: t.reason.unwrap_or_default() };
    }
    if state.running.is_some() {
        return PodState::Running { pod, restarts: c.restart_count };
    }
    let reason =
        state.waiting.and_then(|w| w.reason.map(|r| (r, w.message.unwrap_or_default()))).filter(|(r, _)| !r.is_empty());
    PodState::Waiting { pod, reason }
}

impl Kube {
    /// Creates or updates `obj` in `namespace` by server-side apply (prpod owns the fields it
    /// sets; a second dispatch converges instead of failing on "already exists").
    pub async fn apply_namespaced<K>(&self, namespace: &str, obj: &K) -> Result<(), KubeError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        let kind = K::kind(&K::DynamicType::default()).to_string();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
            .await
            .map_err(|e| KubeError::from_kube(format!("apply {kind} {namespace}/{name}"), e))?;
        Ok(())
    }

    /// The dispatch Jobs in `namespace` (those labelled [`COMPONENT`]).
    pub async fn dispatch_jobs(&self, namespace: &str) -> Result<Vec<JobView>, KubeError> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let lp = ListParams::default().labels(&format!("{}={}", COMPONENT.0, COMPONENT.1));
        let list = api.list(&lp).await.map_err(|e| KubeError::from_kube(format!("list the Jobs of {namespace}"), e))?;
        Ok(list
            .items
            .into_iter()
            .map(|j| {
                let labels = j.metadata.labels.clone().unwrap_or_default();
                let st = j.status.unwrap_or_default();
                let finished = st
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True");
                JobView {
                    name: j.metadata.name.unwrap_or_default(),
                    commit: labels.get(COMMIT_LABEL).cloned(),
                    running: !finished,
                    labels,
                    annotations: j.metadata.annotations.unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Deletes Job `name` and its pods, and waits until both are gone (at most `wait`).
    pub async fn delete_job(&self, namespace: &str, name: &str, wait: Duration) -> Result<(), KubeError> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("delete Job {namespace}/{name}");
        let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match jobs.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(KubeError::from_kube(&what, e)),
        }
        // The pod is deleted with the Job (background propagation); delete it now too, so the
        // old run is stopped (SIGTERM: it releases the deploy Lease) before the new one starts.
        let lp = ListParams::default().labels(&format!("job-name={name}"));
        let _ = pods.delete_collection(&DeleteParams::default(), &lp).await;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let job = jobs.get_opt(name).await.map_err(|e| KubeError::from_kube(&what, e))?;
            let left = pods.list_metadata(&lp).await.map_err(|e| KubeError::from_kube(&what, e))?;
            if job.is_none() && left.items.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(KubeError::Timeout { what: format!("{what} and its pod"), after: wait });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Creates Job `job` (it must not exist).
    pub async fn create_job(&self, namespace: &str, job: &Job) -> Result<(), KubeError> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let name = job.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, job)
            .await
            .map_err(|e| KubeError::from_kube(format!("create Job {namespace}/{name}"), e))?;
        Ok(())
    }

    /// Where Job `name` is: gone or being deleted (a newer dispatch or `--reset` removed it),
    /// failed (with the reason its condition gives, `DeadlineExceeded`), or neither.
    pub async fn job_status(&self, namespace: &str, name: &str) -> Result<JobStatus, KubeError> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let job =
            api.get_opt(name).await.map_err(|e| KubeError::from_kube(format!("read Job {namespace}/{name}"), e))?;
        let Some(job) = job else { return Ok(JobStatus::Deleted) };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(JobStatus::Deleted);
        }
        let failed = job.status.and_then(|s| {
            s.conditions
                .into_iter()
                .flatten()
                .find(|c| c.type_ == "Failed" && c.status == "True")
                .map(|c| format!("{}: {}", c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
        });
        Ok(failed.map_or(JobStatus::Other, JobStatus::Failed))
    }

    /// The state of Job `name`'s pod (the newest, should there be several).
    pub async fn job_pod(&self, namespace: &str, name: &str) -> Result<PodState, KubeError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let lp = ListParams::default().labels(&format!("job-name={name}"));
        let list = api.list(&lp).await.map_err(|e| KubeError::from_kube(format!("find the pod of Job {name}"), e))?;
        let newest = list.items.iter().max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        Ok(newest.map(pod_state).unwrap_or(PodState::Absent))
    }

    /// Streams the log of the job container of `pod` from where `cursor` got to, line by line,
    /// until the stream ends: with `follow`, when the container ends or the connection closes
    /// (the API server or the kubelet may close a long request; see [`LogCursor`]); without, at
    /// the log's current end. Pass `complete` once the container has ended: its last line is
    /// passed on even without a newline (otherwise such a line may be cut and is left for the
    /// next stream to send whole).
    pub async fn follow_log(
        &self,
        namespace: &str,
        pod: &str,
        cursor: &mut LogCursor,
        follow: bool,
        complete: bool,
        on_line: impl FnMut(&str),
    ) -> Result<(), KubeError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let lp = LogParams {
            container: Some(CONTAINER.into()),
            follow,
            timestamps: true,
            since_time: cursor.since(),
            ..Default::default()
        };
        let what = || format!("follow the log of {namespace}/{pod}");
        let reader = api.log_stream(pod, &lp).await.map_err(|e| KubeError::from_kube(what(), e))?;
        cursor
            .pass_lines(reader, complete, on_line)
            .await
            .map_err(|e| KubeError::Unreachable { what: what(), why: e.to_string() })
    }
}

/// How far a container's log has been passed on, so that a log stream that ends before the
/// container does (the API server or kubelet closing a long request, a proxy cutting it) is
/// resumed without a line repeated or lost.
///
/// Lines are asked for with their kubelet timestamps (`timestamps=true`, RFC 3339 with
/// nanoseconds). A resumed stream starts at the last passed line's second (`sinceTime` has
/// whole seconds: kube rounds it, so it is floored here, never later than the line), and the
/// lines of it already passed are skipped: every line stamped before the last one, and as many
/// lines stamped exactly as the last one as were passed (several lines can share a stamp). A
/// line whose stamp cannot be read is passed on as it is.
#[derive(Debug, Default, Clone)]
pub struct LogCursor {
    /// The stamp of the newest line passed on.
    last: Option<Timestamp>,
    /// How many lines stamped `last` were passed on.
    passed_at_last: usize,
    /// How many lines stamped `last` the current stream has sent.
    seen_at_last: usize,
}

impl LogCursor {
    /// Whether a line was passed on already (a next stream resumes).
    pub fn started(&self) -> bool {
        self.last.is_some()
    }

    /// The `sinceTime` of the next stream: the second of the newest passed line (`None`: from
    /// the container's start).
    pub fn since(&self) -> Option<Timestamp> {
        self.last.map(|t| Timestamp::from_second(t.as_second()).unwrap_or(t))
    }

    /// Lines of `reader` (one stream, as the kubelet sends it with timestamps) not passed on
    /// before, without their stamps, to `on_line`. A last line without a newline is passed on
    /// only when the log is `complete` (the container ended); otherwise the stream may have been
    /// cut inside it, and the next stream sends it whole.
    pub async fn pass_lines<R: futures::AsyncBufRead + Unpin>(
        &mut self,
        mut reader: R,
        complete: bool,
        mut on_line: impl FnMut(&str),
    ) -> std::io::Result<()> {
        use futures::AsyncBufReadExt;
        self.seen_at_last = 0;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).await? == 0 {
                return Ok(());
            }
            let whole = buf.last() == Some(&b'\n');
            if !whole && !complete {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.strip_suffix('\n').unwrap_or(&text);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(l) = self.accept(line) {
                on_line(l);
            }
        }
    }

    /// `line` (`STAMP TEXT`) without its stamp when it was not passed on before; `None` when it
    /// was.
    pub fn accept<'a>(&mut self, line: &'a str) -> Option<&'a str> {
        let Some((stamp, text)) = line.split_once(' ').and_then(|(s, t)| Some((s.parse::<Timestamp>().ok()?, t)))
        else {
            return Some(line);
        };
        match self.last {
            Some(last) if stamp < last => None,
            Some(last) if stamp == last => {
                self.seen_at_last += 1;
                if self.seen_at_last <= self.passed_at_last {
                    return None;
                }
                self.passed_at_last += 1;
                Some(text)
            }
            _ => {
                self.last = Some(stamp);
                self.passed_at_last = 1;
                self.seen_at_last = 1;
                Some(text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> DispatchSpec {
        DispatchSpec {
            namespace: "web-pr-7".into(),
            job_name: "prpod-pr-7-0123456".into(),
            labels: BTreeMap::from([("prpod.dev/pr".into(), "7".into())]),
            annotations: BTreeMap::new(),
            image: "ghcr.io/acme/prpod/pr-job:latest".into(),
            args: vec!["run".into(), "--pr".into(), "7".into()],
            config_files: BTreeMap::from([("prpod.toml".into(), "[image]\n".into())]),
            secret_keys: vec!["git-token".into()],
            cache: None,
            active_deadline_secs: 1500,
            ttl_after_finished_secs: 3600,
            rules: role_rules(&super::super::run_rights(true, false, None), "web-pr-7"),
            image_pull_secret: false,
            privileged_build: false,
        }
    }

    #[test]
    fn the_pod_complies_with_the_restricted_profile() {
        let j = job(&spec());
        let pod = j.spec.as_ref().unwrap().template.spec.clone().unwrap();
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        let js = j.spec.unwrap();
        assert_eq!(js.backoff_limit, Some(0));
        assert_eq!(js.active_deadline_seconds, Some(1500));
        assert_eq!(js.ttl_seconds_after_finished, Some(3600));
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        // every writable path is an emptyDir or the cache volume
        let mounts: Vec<_> = c.volume_mounts.iter().flatten().filter(|m| m.read_only != Some(true)).collect();
        assert_eq!(mounts.iter().map(|m| m.mount_path.as_str()).collect::<Vec<_>>(), [CACHE_DIR, "/tmp"]);
        assert_eq!(pod.security_context.unwrap().run_as_user, Some(RUN_AS));
    }

    #[test]
    fn the_checker_names_what_breaks_the_profile() {
        let j = job(&DispatchSpec { privileged_build: true, ..spec() });
        let pod = j.spec.unwrap().template.spec.unwrap();
        let v = restricted_violations(&pod);
        for want in ["privileged", "allowPrivilegeEscalation", "drop ALL", "runAsNonRoot", "seccompProfile", "UID 0"] {
            assert!(v.iter().any(|l| l.contains(want)), "{want} not in {v:?}");
        }
        let mut pod = job(&spec()).spec.unwrap().template.spec.unwrap();
        pod.volumes.as_mut().unwrap().push(Volume {
            name: "host".into(),
            host_path: Some(Default::default()),
            ..Default::default()
        });
        assert_eq!(restricted_violations(&pod), vec!["volume host is of a type the profile does not allow"]);
    }

    #[test]
    fn caches_are_an_empty_dir_or_the_claim() {
        let s = spec();
        assert!(cache_claim(&s).is_none());
        let vols = job(&s).spec.unwrap().template.spec.unwrap().volumes.unwrap();
        assert!(vols.iter().find(|v| v.name == "cache").unwrap().empty_dir.is_some());
        let s = DispatchSpec {
            cache: Some(CacheClaim { size: "5Gi".into(), storage_class: Some("local".into()) }),
            ..spec()
        };
        let claim = cache_claim(&s).unwrap().spec.unwrap();
        assert_eq!(claim.storage_class_name.as_deref(), Some("local"));
        assert_eq!(claim.resources.unwrap().requests.unwrap()["storage"], Quantity("5Gi".into()));
        let vols = job(&s).spec.unwrap().template.spec.unwrap().volumes.unwrap();
        let cache = vols.iter().find(|v| v.name == "cache").unwrap();
        assert_eq!(cache.persistent_volume_claim.as_ref().unwrap().claim_name, CACHE_CLAIM);
    }

    #[test]
    fn rbac_is_a_role_of_the_run_rights_in_the_namespace() {
        let s = spec();
        let b = role_binding(&s);
        assert_eq!(b.role_ref.kind, "Role");
        assert_ne!(b.role_ref.name, "admin");
        assert_eq!(b.subjects.unwrap()[0].namespace.as_deref(), Some("web-pr-7"));
        let rules = role(&s).rules.unwrap();
        let granted: usize = rules.iter().map(|r| r.verbs.len()).sum();
        assert_eq!(granted, super::super::run_rights(true, false, None).len(), "one verb per right");
        let ns = rules.iter().find(|r| r.resources.as_deref() == Some(&["namespaces".to_string()][..])).unwrap();
        assert_eq!(ns.resource_names.as_deref(), Some(&["web-pr-7".to_string()][..]));
        assert!(!ns.verbs.contains(&"create".to_string()), "the Job cannot create namespaces");
        let all: Vec<&String> = rules.iter().flat_map(|r| r.resources.iter().flatten()).collect();
        for forbidden in ["roles", "rolebindings", "clusterroles", "jobs"] {
            assert!(!all.iter().any(|r| *r == forbidden), "{forbidden} in {all:?}");
        }
        // pods are watched and their logs read, never created (a pod could run as any account)
        let pods = rules.iter().find(|r| r.resources.as_deref() == Some(&["pods".to_string()][..])).unwrap();
        assert_eq!(pods.verbs, ["list", "watch"]);
        assert!(!rules.iter().any(|r| r.verbs.iter().any(|v| v == "*" || v == "escalate" || v == "bind")));
    }

    #[test]
    fn the_secret_is_mounted_as_files_never_in_the_spec() {
        let s = spec();
        let values = BTreeMap::from([("git-token".to_string(), Secret::new("s3cr3t-token"))]);
        let sec = secret(&s, &values);
        assert_eq!(sec.string_data.unwrap()["git-token"], "s3cr3t-token");
        let text = serde_json::to_string(&job(&s)).unwrap() + &serde_json::to_string(&config_map(&s)).unwrap();
        assert!(!text.contains("s3cr3t"));
        let pod = job(&s).spec.unwrap().template.spec.unwrap();
        let v = pod.volumes.unwrap().into_iter().find(|v| v.name == "credentials").unwrap();
        assert_eq!(v.secret.unwrap().secret_name.as_deref(), Some(SECRET));
        assert!(pod.containers[0].env.iter().flatten().all(|e| e.value_from.is_none()));
    }

    /// The kubelet's side of a log request, faked: the container's whole log (stamped lines,
    /// some sharing a stamp, one without a final newline) and what a stream with `since` sends
    /// (every line stamped at or after it, rounded to the second as kube sends `sinceTime`).
    struct FakeLog(Vec<(Timestamp, String)>);

    impl FakeLog {
        fn new() -> FakeLog {
            let at = |s: &str| s.parse::<Timestamp>().unwrap();
            let mut lines = Vec::new();
            for (i, t) in [
                "2026-12-04T23:50:01.100000000Z",
                "2026-12-04T23:50:01.700000000Z",
                "2026-12-04T23:50:01.700000000Z",
                "2026-12-04T23:50:01.700000000Z",
                "2026-12-04T23:50:02.000000000Z",
                "2026-12-04T23:50:02.999999999Z",
                "2026-12-04T23:50:04.500000000Z",
                "2026-12-04T23:50:04.500000000Z",
            ]
            .iter()
            .enumerate()
            {
                lines.push((at(t), format!("line {i}: {}", "x".repeat(i))));
            }
            FakeLog(lines)
        }

        fn text(&self, since: Option<Timestamp>) -> String {
            // as kube sends `sinceTime`: rounded to the second
            let since = since.map(|s| s.round(k8s_openapi::jiff::Unit::Second).unwrap());
            self.0.iter().filter(|(t, _)| since.is_none_or(|s| *t >= s)).map(|(t, l)| format!("{t} {l}\n")).collect()
        }
    }

    fn pass(cursor: &mut LogCursor, bytes: &[u8], complete: bool, out: &mut Vec<String>) {
        futures::executor::block_on(cursor.pass_lines(bytes, complete, |l| out.push(l.to_string()))).unwrap();
    }

    #[test]
    fn a_log_stream_cut_anywhere_resumes_without_a_line_twice_or_lost() {
        let log = FakeLog::new();
        let want: Vec<String> = log.0.iter().map(|(_, l)| l.clone()).collect();
        let full = log.text(None);
        // cut after every byte: the first stream ends there (mid-line too), the second resumes
        for cut in 0..=full.len() {
            let mut cursor = LogCursor::default();
            let mut out = Vec::new();
            pass(&mut cursor, &full.as_bytes()[..cut], false, &mut out);
            let since = cursor.since();
            if let Some(s) = since {
                assert_eq!(s.subsec_nanosecond(), 0, "sinceTime is whole seconds");
            }
            pass(&mut cursor, log.text(since).as_bytes(), false, &mut out);
            assert_eq!(out, want, "cut at byte {cut}");
            // the container ended: the last look sends the lines since the last second again
            let rest = log.text(cursor.since());
            pass(&mut cursor, rest.as_bytes(), true, &mut out);
            assert_eq!(out, want, "cut at byte {cut}, then the final read");
        }
        // cut three times, at every line boundary, each resumed stream cut again
        let ends: Vec<usize> = full.match_indices('\n').map(|(i, _)| i + 1).collect();
        for &a in &ends {
            let mut cursor = LogCursor::default();
            let mut out = Vec::new();
            pass(&mut cursor, &full.as_bytes()[..a], false, &mut out);
            for _ in 0..2 {
                let resumed = log.text(cursor.since());
                let half = resumed.len() / 2;
                pass(&mut cursor, &resumed.as_bytes()[..half], false, &mut out);
            }
            let rest = log.text(cursor.since());
            pass(&mut cursor, rest.as_bytes(), true, &mut out);
            assert_eq!(out, want, "cuts after byte {a}");
        }
    }

    #[test]
    fn a_last_line_without_a_newline_waits_for_the_container_to_end() {
        let mut cursor = LogCursor::default();
        let mut out = Vec::new();
        let text = b"2026-12-04T23:50:01.1Z done\n2026-12-04T23:50:01.2Z exit wi";
        pass(&mut cursor, text, false, &mut out);
        assert_eq!(out, ["done"]);
        pass(&mut cursor, b"2026-12-04T23:50:01.1Z done\n2026-12-04T23:50:01.2Z exit without newline", true, &mut out);
        assert_eq!(out, ["done", "exit without newline"]);
        // a line the kubelet did not stamp is passed on as it is
        assert_eq!(cursor.accept("no stamp here"), Some("no stamp here"));
    }

    #[test]
    fn the_readme_lists_every_right_of_the_dispatching_identity() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let start = readme.find("**The dispatching identity needs**").expect("the README's dispatch rights table");
        let table: Vec<&str> =
            readme[start..].lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).collect();
        for r in DISPATCH_RIGHTS {
            let res = match r.right.subresource {
                Some(s) => format!("`{}/{s}`", r.right.resource),
                None if r.right.group.is_empty() => format!("`{}`", r.right.resource),
                None => format!("`{}.{}`", r.right.resource, r.right.group),
            };
            let verb = format!("`{}`", r.right.verb);
            assert!(
                table.iter().any(|row| row.contains(&res) && row.contains(&verb)),
                "the README's table has no row with {verb} on {res}"
            );
        }
        // and the rights that are not this list's: escalate/bind, or every right of the Role
        assert!(table.iter().any(|row| row.contains("`escalate`") && row.contains("`bind`")));
    }

    #[test]
    fn dispatch_rights_follow_the_namespace_the_cache_and_adoption() {
        let has =
            |rs: &[&ApiRight], verb: &str, res: &str| rs.iter().any(|r| r.verb == verb && r.resource_name() == res);
        let first = dispatch_rights(false, false, false);
        assert!(has(&first, "create", "namespaces") && has(&first, "create", "jobs.batch"));
        assert!(!has(&first, "create", "persistentvolumeclaims") && !has(&first, "list", "secrets"));
        let again = dispatch_rights(true, true, true);
        assert!(!has(&again, "create", "namespaces"));
        assert!(has(&again, "create", "persistentvolumeclaims") && has(&again, "list", "secrets"));
        assert!(has(&again, "get", "pods/log") && has(&again, "deletecollection", "pods"));
        for (i, a) in DISPATCH_RIGHTS.iter().enumerate() {
            assert!(
                !DISPATCH_RIGHTS[i + 1..]
                    .iter()
                    .any(|b| (b.right.verb, b.right.resource_name()) == (a.right.verb, a.right.resource_name())),
                "{} {} is listed twice",
                a.right.verb,
                a.right.resource_name()
            );
        }
    }
}
