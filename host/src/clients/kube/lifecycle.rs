//! Namespaces over their whole life: listing prpod's previews by label, annotating and
//! labelling them (closed, asleep), deleting them. The decision whose a namespace is stays in
//! `crate::phases::preview`; this module only reads and writes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use super::{Kube, KubeError};

/// One namespace as gc sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceView {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// When it was created.
    pub created: Option<Timestamp>,
    /// It is being deleted (`Terminating`).
    pub deleting: bool,
}

fn view(ns: Namespace) -> NamespaceView {
    NamespaceView {
        name: ns.metadata.name.unwrap_or_default(),
        labels: ns.metadata.labels.unwrap_or_default(),
        annotations: ns.metadata.annotations.unwrap_or_default(),
        created: ns.metadata.creation_timestamp.map(|t| t.0),
        deleting: ns.metadata.deletion_timestamp.is_some(),
    }
}

impl Kube {
    /// Every namespace matching `selector` (`app.kubernetes.io/managed-by=prpod`), with their
    /// metadata: one list call per 500 namespaces. Returns the namespaces and the calls made.
    pub async fn namespaces_labelled(&self, selector: &str) -> Result<(Vec<NamespaceView>, u32), KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut lp = ListParams::default().labels(selector).limit(500);
        let (mut out, mut calls) = (Vec::new(), 0);
        loop {
            calls += 1;
            let list = api
                .list(&lp)
                .await
                .map_err(|e| KubeError::from_kube(format!("list namespaces labelled {selector}"), e))?;
            out.extend(list.items.into_iter().map(view));
            match list.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => return Ok((out, calls)),
            }
        }
    }

    /// Namespace `name` with its metadata, or `None` when it does not exist.
    pub async fn namespace_view(&self, name: &str) -> Result<Option<NamespaceView>, KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = api.get_opt(name).await.map_err(|e| KubeError::from_kube(format!("read namespace {name}"), e))?;
        Ok(ns.map(view))
    }

    /// Sets (`Some`) or removes (`None`) labels and annotations of namespace `name` (a merge
    /// patch: the others stay). The caller has decided the namespace is the preview's.
    pub async fn patch_namespace_meta(
        &self,
        name: &str,
        labels: &BTreeMap<String, Option<String>>,
        annotations: &BTreeMap<String, Option<String>>,
    ) -> Result<(), KubeError> {
        let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
        self.merge_namespace_meta(name, &patch, || format!("update the metadata of namespace {name}")).await
    }

    /// Deletes namespace `name` (and so everything in it), without waiting for it to go;
    /// `Ok(false)` when it did not exist.
    pub async fn delete_namespace(&self, name: &str) -> Result<bool, KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(KubeError::from_kube(format!("delete namespace {name}"), e)),
        }
    }
}
