//! What a preview's chart may create: objects of the preview's namespace, nothing cluster-wide.
//!
//! Every rendered object must be of a namespaced kind and either name the preview's namespace
//! or none (Helm puts it there). Cluster-scoped kinds (ClusterRoles and their bindings,
//! webhooks, CRDs, Namespaces, PersistentVolumes, ...) are refused unless the operator allows
//! the kind (`[deploy] allow_cluster_kinds`); an object aimed at another namespace is always
//! refused. Which kinds are namespaced comes from the cluster's discovery documents when the
//! cluster answers ([`ClusterApi::discover`]); `plan` without a cluster falls back to a
//! built-in list of well-known cluster-scoped kinds ([`ClusterApi::builtin`]).

use std::collections::BTreeMap;

use crate::clients::helm::RenderCapabilities;
use crate::clients::kube::{Kube, KubeError, ServedKind};
use crate::model::{Finding, Manifest, ReportedFinding, Severity};

/// The rule prpod reports scope refusals under (plugin `prpod`).
pub const SCOPE_RULE: &str = "namespace-scope";

/// Well-known cluster-scoped kinds, `(API group, kind)`: the fallback when no cluster answers.
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicyBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storage.k8s.io", "VolumeAttributesClass"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("policy", "PodSecurityPolicy"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("certificates.k8s.io", "ClusterTrustBundle"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "IPAddress"),
    ("networking.k8s.io", "ServiceCIDR"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("resource.k8s.io", "DeviceClass"),
    ("resource.k8s.io", "ResourceSlice"),
    ("authentication.k8s.io", "TokenReview"),
    ("authentication.k8s.io", "SelfSubjectReview"),
    ("authorization.k8s.io", "SubjectAccessReview"),
    ("authorization.k8s.io", "SelfSubjectAccessReview"),
    ("authorization.k8s.io", "SelfSubjectRulesReview"),
    ("internal.apiserver.k8s.io", "StorageVersion"),
    ("storagemigration.k8s.io", "StorageVersionMigration"),
];

/// Whether a kind's objects live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindScope {
    /// In a namespace.
    Namespaced,
    /// Cluster-wide.
    Cluster,
    /// The cluster serves no such kind.
    Unknown,
}

/// The API a chart is rendered and judged against.
#[derive(Debug, Clone, Default)]
pub struct ClusterApi {
    /// The server's version (`v1.20.2`), when it answered.
    kube_version: Option<String>,
    /// `(apiVersion, kind)` -> namespaced, from discovery; empty for the built-in fallback.
    served: BTreeMap<(String, String), bool>,
    /// Whether `served` came from the cluster.
    discovered: bool,
}

/// The API group of an `apiVersion` (`apps/v1` -> `apps`, `v1` -> the core group `""`).
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

impl ClusterApi {
    /// No cluster: Helm's default capabilities, and the built-in list of cluster-scoped kinds
    /// (any other kind counts as namespaced).
    pub fn builtin() -> ClusterApi {
        ClusterApi::default()
    }

    /// From the cluster's version and discovery.
    pub fn from_discovery(kube_version: String, kinds: Vec<ServedKind>) -> ClusterApi {
        let served = kinds.into_iter().map(|k| ((k.api_version, k.kind), k.namespaced)).collect();
        ClusterApi { kube_version: Some(kube_version), served, discovered: true }
    }

    /// Asks the cluster (its version, then its discovery documents).
    pub async fn discover(kube: &Kube) -> Result<ClusterApi, KubeError> {
        let version = kube.server_version().await?;
        Ok(ClusterApi::from_discovery(version, kube.served_kinds().await?))
    }

    /// Whether the kinds came from the cluster.
    pub fn discovered(&self) -> bool {
        self.discovered
    }

    /// What `helm template` renders against: the cluster's version and every `group/version`
    /// and `group/version/Kind` it serves (as Helm builds `.Capabilities` from discovery).
    pub fn capabilities(&self) -> RenderCapabilities {
        let mut api_versions: Vec<String> = Vec::new();
        for (gv, kind) in self.served.keys() {
            if api_versions.last() != Some(gv) && !api_versions.contains(gv) {
                api_versions.push(gv.clone());
            }
            api_versions.push(format!("{gv}/{kind}"));
        }
        RenderCapabilities { kube_version: self.kube_version.clone(), api_versions }
    }

    /// One line for the phase summary.
    pub fn describe(&self) -> String {
        match &self.kube_version {
            Some(v) => format!("rendered against Kubernetes {v} ({} kinds)", self.served.len()),
            None => "rendered with Helm's default capabilities (no cluster answered)".into(),
        }
    }

    /// The scope of `kind` in `api_version`; `crds` are the kinds the chart itself defines.
    pub fn scope(&self, api_version: &str, kind: &str, crds: &BTreeMap<(String, String), bool>) -> KindScope {
        let group = group_of(api_version);
        let from = |n: bool| if n { KindScope::Namespaced } else { KindScope::Cluster };
        if let Some(n) = self.served.get(&(api_version.to_string(), kind.to_string())) {
            return from(*n);
        }
        // The kind in another version of its group: scope does not change between versions.
        if let Some((_, n)) = self.served.iter().find(|((gv, k), _)| k == kind && group_of(gv) == group) {
            return from(*n);
        }
        if let Some(n) = crds.get(&(group.to_string(), kind.to_string())) {
            return from(*n);
        }
        if CLUSTER_SCOPED.iter().any(|(g, k)| *g == group && *k == kind) {
            return KindScope::Cluster;
        }
        if self.discovered { KindScope::Unknown } else { KindScope::Namespaced }
    }
}

/// Whether `allow` (`[deploy] allow_cluster_kinds`: `Kind` or `group/Kind`) lets `kind` of
/// `api_version` be created cluster-wide.
fn allowed(allow: &[String], api_version: &str, kind: &str) -> bool {
    allow.iter().any(|a| match a.rsplit_once('/') {
        Some((g, k)) => k == kind && g == group_of(api_version),
        None => a == kind,
    })
}

/// The kinds the rendered CustomResourceDefinitions define: `(group, kind)` -> namespaced.
fn defined_kinds(manifests: &[Manifest]) -> BTreeMap<(String, String), bool> {
    let mut out = BTreeMap::new();
    for m in manifests.iter().filter(|m| m.kind == "CustomResourceDefinition") {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&m.text) else { continue };
        let spec = &v["spec"];
        if let (Some(g), Some(k)) = (spec["group"].as_str(), spec["names"]["kind"].as_str()) {
            out.insert((g.to_string(), k.to_string()), spec["scope"].as_str() != Some("Cluster"));
        }
    }
    out
}

/// prpod's own pre-deploy rule [`SCOPE_RULE`]: every object in `namespace` (or naming none),
/// no cluster-scoped kind unless `allow` names it.
pub fn scope_findings(
    manifests: &[Manifest],
    namespace: &str,
    api: &ClusterApi,
    allow: &[String],
) -> Vec<ReportedFinding> {
    let crds = defined_kinds(manifests);
    let mut out = Vec::new();
    for m in manifests {
        let object = format!("{}/{}", m.kind, m.name);
        let message = match api.scope(&m.api_version, &m.kind, &crds) {
            KindScope::Cluster if !allowed(allow, &m.api_version, &m.kind) => format!(
                "{object} is cluster-scoped ({} {}): a preview's chart may only create objects in its own \
                 namespace {namespace}; remove it from the chart, or have the operator allow the kind with \
                 `[deploy] allow_cluster_kinds = [\"{}\"]`",
                m.api_version, m.kind, m.kind
            ),
            KindScope::Cluster => continue,
            KindScope::Unknown => format!(
                "{object}: the cluster serves no kind {} in {}, so prpod cannot tell where it would be created; \
                 install its CustomResourceDefinition first, or fix apiVersion/kind",
                m.kind, m.api_version
            ),
            KindScope::Namespaced => match &m.namespace {
                Some(ns) if ns != namespace => format!(
                    "{object} is aimed at namespace {ns}, not the preview's namespace {namespace}: a preview's \
                     chart may only create objects in its own namespace; remove metadata.namespace (prpod deploys \
                     into {namespace})"
                ),
                _ => continue,
            },
        };
        out.push(ReportedFinding {
            plugin: super::HOST_CHECKS.into(),
            hook: "check-manifests".into(),
            finding: Finding { severity: Severity::Error, rule: SCOPE_RULE.into(), message, object: Some(object) },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(api_version: &str, kind: &str, name: &str, namespace: Option<&str>, text: &str) -> Manifest {
        Manifest {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            namespace: namespace.map(Into::into),
            text: text.into(),
        }
    }

    fn rules(f: &[ReportedFinding]) -> Vec<(&str, &str)> {
        f.iter().map(|f| (f.finding.rule.as_str(), f.finding.object.as_deref().unwrap_or(""))).collect()
    }

    #[test]
    fn the_builtin_list_refuses_cluster_kinds_and_other_namespaces() {
        let api = ClusterApi::builtin();
        let list = [
            m("v1", "ConfigMap", "ok", None, "{}"),
            m("v1", "ConfigMap", "here", Some("pr-1"), "{}"),
            m("v1", "ConfigMap", "there", Some("kube-system"), "{}"),
            m("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "admin", None, "{}"),
            m("rbac.authorization.k8s.io/v1", "RoleBinding", "local", None, "{}"),
            m("v1", "Namespace", "other", None, "{}"),
            m("example.com/v1", "Widget", "w", None, "{}"),
        ];
        let f = scope_findings(&list, "pr-1", &api, &[]);
        assert_eq!(
            rules(&f),
            [
                (SCOPE_RULE, "ConfigMap/there"),
                (SCOPE_RULE, "ClusterRoleBinding/admin"),
                (SCOPE_RULE, "Namespace/other")
            ]
        );
        assert!(f.iter().all(|f| f.plugin == "prpod" && f.finding.severity == Severity::Error));
        assert!(f[1].finding.message.contains("allow_cluster_kinds = [\"ClusterRoleBinding\"]"), "{f:?}");
        // Allowed by the operator, by kind or by group/kind; another namespace never is.
        let allow = ["ClusterRoleBinding".to_string(), "/Namespace".to_string()];
        assert_eq!(rules(&scope_findings(&list, "pr-1", &api, &allow)), [(SCOPE_RULE, "ConfigMap/there")]);
    }

    #[test]
    fn discovery_decides_and_unknown_kinds_are_refused() {
        let served = vec![
            ServedKind { api_version: "v1".into(), kind: "ConfigMap".into(), namespaced: true },
            ServedKind { api_version: "example.com/v1".into(), kind: "Widget".into(), namespaced: false },
            ServedKind { api_version: "example.com/v1".into(), kind: "Gadget".into(), namespaced: true },
        ];
        let api = ClusterApi::from_discovery("v1.20.2".into(), served);
        let crd = r#"{"spec": {"group": "x.io", "scope": "Namespaced", "names": {"kind": "Thing"}}}"#;
        let list = [
            m("example.com/v1", "Widget", "w", None, "{}"),
            m("example.com/v2", "Gadget", "g", None, "{}"),
            m("nowhere.io/v1", "Ghost", "g", None, "{}"),
            m("apiextensions.k8s.io/v1", "CustomResourceDefinition", "things.x.io", None, crd),
            m("x.io/v1", "Thing", "t", None, "{}"),
        ];
        let f = scope_findings(&list, "pr-1", &api, &["CustomResourceDefinition".into()]);
        assert_eq!(rules(&f), [(SCOPE_RULE, "Widget/w"), (SCOPE_RULE, "Ghost/g")]);
        assert!(f[1].finding.message.contains("serves no kind Ghost"), "{f:?}");
        let caps = api.capabilities();
        assert_eq!(caps.kube_version.as_deref(), Some("v1.20.2"));
        for v in ["v1", "v1/ConfigMap", "example.com/v1", "example.com/v1/Widget"] {
            assert!(caps.api_versions.iter().any(|a| a == v), "{v} missing: {:?}", caps.api_versions);
        }
        assert_eq!(caps.api_versions.iter().filter(|a| *a == "example.com/v1").count(), 1);
    }
}
