//! The preview's namespace as deploy prepares it: created with its labels, labelled, and given
//! the registry pull Secret on its default ServiceAccount. Whose a namespace is is decided in
//! `crate::phases::preview`; this module only reads and writes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Secret as KubeSecret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{Kube, KubeError, MANAGER};
use crate::secret::Secret;

impl Kube {
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
    pub(super) async fn merge_namespace_meta(
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
}
