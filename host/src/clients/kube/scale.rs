//! Scaling a preview's workloads down to sleep and back up to wake: Deployments and
//! StatefulSets through their scale subresource.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use super::{Kube, KubeError, MANAGER};

/// A workload that has a replica count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalable {
    /// `Deployment` or `StatefulSet`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// `spec.replicas` (1 when unset, Kubernetes' default).
    pub replicas: u32,
    /// `status.readyReplicas`.
    pub ready: u32,
}

impl Kube {
    /// The Deployments and StatefulSets of `namespace` with their replica counts (two calls).
    pub async fn scalable_workloads(&self, namespace: &str) -> Result<Vec<Scalable>, KubeError> {
        let lp = ListParams::default();
        let what = |k: &str| format!("list the {k}s of {namespace}");
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let statefulsets: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        let (d, s) = tokio::join!(deployments.list(&lp), statefulsets.list(&lp));
        let mut out: Vec<Scalable> = d
            .map_err(|e| KubeError::from_kube(what("Deployment"), e))?
            .items
            .into_iter()
            .map(|d| Scalable {
                kind: "Deployment".into(),
                name: d.metadata.name.unwrap_or_default(),
                replicas: d.spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as u32,
                ready: d.status.and_then(|s| s.ready_replicas).unwrap_or(0).max(0) as u32,
            })
            .collect();
        out.extend(s.map_err(|e| KubeError::from_kube(what("StatefulSet"), e))?.items.into_iter().map(|s| Scalable {
            kind: "StatefulSet".into(),
            name: s.metadata.name.unwrap_or_default(),
            replicas: s.spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as u32,
            ready: s.status.and_then(|s| s.ready_replicas).unwrap_or(0).max(0) as u32,
        }));
        Ok(out)
    }

    /// Sets the replicas of the `kind` (`Deployment` or `StatefulSet`) `name` in `namespace`.
    pub async fn scale_workload(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        replicas: u32,
    ) -> Result<(), KubeError> {
        let patch = json!({"spec": {"replicas": replicas}});
        let pp = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        let what = format!("scale {kind} {namespace}/{name} to {replicas}");
        let r = match kind {
            "StatefulSet" => {
                Api::<StatefulSet>::namespaced(self.client.clone(), namespace)
                    .patch_scale(name, &pp, &Patch::Merge(&patch))
                    .await
            }
            _ => {
                Api::<Deployment>::namespaced(self.client.clone(), namespace)
                    .patch_scale(name, &pp, &Patch::Merge(&patch))
                    .await
            }
        };
        r.map_err(|e| KubeError::from_kube(what, e))?;
        Ok(())
    }
}

impl Kube {
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
}
