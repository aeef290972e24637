//! The Kubernetes API, through the `kube` crate: the per-PR namespace and its pull credentials,
//! the deploy lock, watches of workloads, pods and Warning events, container logs, scaling and
//! access reviews.
//!
//! Compatibility: prpod must work against Kubernetes 1.20 as well as current clusters. It is
//! built with k8s-openapi's `earliest` feature and uses only API groups and versions both serve
//! (`core/v1`, `apps/v1`, `authorization.k8s.io/v1`, `coordination.k8s.io/v1`,
//! `networking.k8s.io/v1`); fields newer than 1.20 are optional and simply absent there. Watches
//! use kube's list-then-watch mode (streaming lists need 1.27+).
//!
//! One file per concern: [`views`] (what prpod reads: workloads, pods, Warning events,
//! Services, endpoints, logs, Helm's release records), [`namespace`] (the preview's namespace
//! and its pull credentials), [`lease`] (the deploy lock), [`watch`] (the namespace watch the
//! rollout is verified from) and [`scale`]; this file holds the connection, the error, access
//! reviews, discovery and the rights a run needs.

pub mod inuse;
mod lease;
pub mod lifecycle;
mod namespace;
pub mod scale;
mod views;
mod watch;

pub use lease::{LeaseRenewal, LeaseTaken};
pub use views::{ContainerView, PodView, ServiceView, WarningView, WorkloadView};
pub use watch::{Observed, WATCHED_KINDS};

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::time::Duration;

use crate::error::{Classify, FailureKind};
pub use crate::model::KubeTarget;

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

    /// Whether trying again may succeed: the cluster unreachable, a timeout, a conflict (409),
    /// a watch whose resourceVersion expired (410 Gone), throttling (429) or a server error
    /// (5xx). A refusal (no config, 401, 403, another 4xx) is not: it needs a fix.
    pub fn is_transient(&self) -> bool {
        match self {
            KubeError::Config { .. } | KubeError::Unauthorized { .. } | KubeError::Forbidden { .. } => false,
            KubeError::Api { code, .. } => !(400..500).contains(code) || matches!(code, 409 | 410 | 429),
            KubeError::Unreachable { .. } | KubeError::Timeout { .. } => true,
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

/// The answer of a SelfSubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Allowed.
    pub allowed: bool,
    /// The authorizer's reason, when it gave one.
    pub reason: Option<String>,
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
}
