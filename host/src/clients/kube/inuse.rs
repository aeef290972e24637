//! Which images the cluster runs or will run: the image references of every Pod and pod
//! template (Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs) in every
//! namespace the identity can read, as werf's cleanup reads them. Teardown and gc keep every
//! digest named here.
//!
//! A kind that cannot be listed across namespaces (403) is listed namespace by namespace; a
//! namespace that cannot be read is skipped and named in [`ImagesInUse::unreadable`], so the
//! caller can say what it could not see.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};

use super::{Kube, KubeError};

/// The kinds whose objects name images: `(group, version, kind, plural)`. CronJob is
/// `batch/v1` from Kubernetes 1.21; 1.20 serves it as `batch/v1beta1` (tried second).
const KINDS: [(&str, &str, &str, &str); 8] = [
    ("", "v1", "Pod", "pods"),
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "DaemonSet", "daemonsets"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
    ("batch", "v1", "Job", "jobs"),
    ("batch", "v1", "CronJob", "cronjobs"),
    ("batch", "v1beta1", "CronJob", "cronjobs"),
];

/// Objects per list page.
const PAGE: u32 = 500;

/// The images the cluster's workloads name.
#[derive(Debug, Clone, Default)]
pub struct ImagesInUse {
    /// `sha256:...` manifest digests (from `image: repo@sha256:...` and pods' `imageID`), each
    /// with the objects naming it (`Pod ns/name`).
    pub digests: BTreeMap<String, Vec<String>>,
    /// References by tag (`host/repo:tag`, no digest), each with the objects naming it.
    pub tagged: BTreeMap<String, Vec<String>>,
    /// What could not be read (`Pods in namespace x: forbidden`).
    pub unreadable: Vec<String>,
    /// Kubernetes API calls made.
    pub calls: u32,
}

impl ImagesInUse {
    /// Who uses `digest`, if anyone.
    pub fn users_of_digest(&self, digest: &str) -> Option<&Vec<String>> {
        self.digests.get(digest)
    }

    /// Who uses tag `tag` of repository path `repository` (`acme/web`) by tag, on any registry
    /// name (a registry has several names: the host's, the pods').
    pub fn users_of_tag(&self, repository: &str, tag: &str) -> Vec<String> {
        let suffix = format!("/{repository}:{tag}");
        self.tagged.iter().filter(|(r, _)| r.ends_with(&suffix)).flat_map(|(_, w)| w.clone()).collect()
    }

    /// The same without the objects of namespace `ns` (and with no calls counted).
    pub fn without_namespace(&self, ns: &str) -> ImagesInUse {
        let prefix = format!(" {ns}/");
        let keep = |m: &BTreeMap<String, Vec<String>>| -> BTreeMap<String, Vec<String>> {
            m.iter()
                .filter_map(|(k, v)| {
                    let v: Vec<String> = v.iter().filter(|u| !u.contains(&prefix)).cloned().collect();
                    (!v.is_empty()).then(|| (k.clone(), v))
                })
                .collect()
        };
        ImagesInUse {
            digests: keep(&self.digests),
            tagged: keep(&self.tagged),
            unreadable: self.unreadable.clone(),
            calls: 0,
        }
    }

    fn add(&mut self, reference: &str, user: &str) {
        let push = |m: &mut BTreeMap<String, Vec<String>>, k: String| {
            let v = m.entry(k).or_default();
            if !v.iter().any(|u| u == user) {
                v.push(user.to_string());
            }
        };
        // `docker-pullable://host/repo@sha256:...`, `host/repo@sha256:...`, `sha256:...`
        let reference = reference.rsplit("://").next().unwrap_or(reference);
        if let Some((_, digest)) = reference.split_once('@') {
            push(&mut self.digests, digest.to_string());
        } else if reference.starts_with("sha256:") {
            push(&mut self.digests, reference.to_string());
        } else if !reference.is_empty() {
            push(&mut self.tagged, reference.to_string());
        }
    }
}

/// Every string under an `image` or `imageID` key in `v` (containers, init and ephemeral
/// containers, container statuses).
fn images_of(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("image" | "imageID", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => images_of(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| images_of(v, out)),
        _ => {}
    }
}

impl Kube {
    /// The images named by every workload in every namespace readable, except in
    /// `skip_namespace` (the preview being torn down: its own pods are going).
    pub async fn images_in_use(&self, skip_namespace: Option<&str>) -> Result<ImagesInUse, KubeError> {
        let mut out = ImagesInUse::default();
        let mut namespaces: Option<Vec<String>> = None;
        let mut cronjobs_listed = false;
        for (group, version, kind, plural) in KINDS {
            if kind == "CronJob" && cronjobs_listed {
                continue;
            }
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
            let all: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            match self.list_images(&all, kind, skip_namespace, &mut out).await {
                Ok(()) => cronjobs_listed |= kind == "CronJob",
                // Not served (batch/v1 CronJob on 1.20): the next version is tried.
                Err(e) if e.code() == Some(404) => {}
                Err(e) if e.code() == Some(403) => {
                    // Namespace by namespace, skipping those it may not read.
                    if namespaces.is_none() {
                        out.calls += 1;
                        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
                        match api.list_metadata(&ListParams::default()).await {
                            Ok(l) => {
                                namespaces = Some(l.items.into_iter().filter_map(|n| n.metadata.name).collect());
                            }
                            Err(e) => {
                                out.unreadable.push(format!(
                                    "{kind}s in every namespace, and the list of namespaces: {}",
                                    KubeError::from_kube("list namespaces", e)
                                ));
                                namespaces = Some(Vec::new());
                                continue;
                            }
                        }
                    }
                    let mut any = false;
                    for ns in namespaces.clone().unwrap_or_default() {
                        if Some(ns.as_str()) == skip_namespace {
                            continue;
                        }
                        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &ar);
                        match self.list_images(&api, kind, skip_namespace, &mut out).await {
                            Ok(()) => any = true,
                            Err(e) if matches!(e.code(), Some(403 | 404)) => {
                                out.unreadable.push(format!("{kind}s in namespace {ns}: {e}"));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    cronjobs_listed |= kind == "CronJob" && any;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn list_images(
        &self,
        api: &Api<DynamicObject>,
        kind: &str,
        skip_namespace: Option<&str>,
        out: &mut ImagesInUse,
    ) -> Result<(), KubeError> {
        let mut lp = ListParams::default().limit(PAGE);
        loop {
            out.calls += 1;
            let list = api.list(&lp).await.map_err(|e| KubeError::from_kube(format!("list {kind}s"), e))?;
            for o in &list.items {
                let ns = o.metadata.namespace.as_deref().unwrap_or("");
                if Some(ns) == skip_namespace {
                    continue;
                }
                let user = format!("{kind} {ns}/{}", o.metadata.name.as_deref().unwrap_or("?"));
                let mut refs = Vec::new();
                images_of(&o.data, &mut refs);
                for r in refs {
                    out.add(&r, &user);
                }
            }
            match list.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_sorted_into_digests_and_tags() {
        let pod = serde_json::json!({
            "spec": {"containers": [{"name": "a", "image": "reg:5000/acme/web:pr-7"}],
                     "initContainers": [{"name": "i", "image": "reg/acme/init@sha256:aa"}]},
            "status": {"containerStatuses": [{"imageID": "docker-pullable://reg/acme/web@sha256:bb"}]}
        });
        let mut refs = Vec::new();
        images_of(&pod, &mut refs);
        let mut u = ImagesInUse::default();
        for r in refs {
            u.add(&r, "Pod ns/p");
        }
        assert!(u.users_of_digest("sha256:aa").is_some() && u.users_of_digest("sha256:bb").is_some());
        assert_eq!(u.users_of_tag("acme/web", "pr-7"), ["Pod ns/p"]);
        assert!(u.users_of_tag("acme/web", "pr-8").is_empty());
    }
}
