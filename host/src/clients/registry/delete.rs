//! Tag listing and manifest deletion on a distribution registry (`GET /v2/<name>/tags/list`,
//! `DELETE /v2/<name>/manifests/<digest>`), for teardown and gc.
//!
//! Distribution deletes manifests by digest only, and a delete removes every tag pointing at
//! that digest. Callers therefore resolve every tag of the repository to its digest first
//! ([`RegistryClient::tag_digests`]) and decide per digest, never per tag (see
//! `crate::phases::teardown`).

use std::collections::BTreeMap;

use reqwest::StatusCode;
use reqwest::header::ACCEPT;

use super::transport::{pull_scope, push_scope};
use super::{
    ImageName, ImageReference, MANIFEST_ACCEPT, MAX_JSON, RegistryClient, RegistryError, limited_body, no_notice,
};

/// Tags asked for per page of `tags/list`; the registry may answer fewer and a `Link` header.
const PAGE: usize = 1000;
/// Pages of tags read at most (a repository with more than a million tags is not a preview's).
const MAX_PAGES: usize = 1000;

/// What a manifest delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The manifest (and every tag on it) is gone.
    Deleted,
    /// It was not there (deleted before: a second teardown).
    Absent,
}

/// `repository:NAME:pull,push,delete`, for token services that grant deletes separately.
fn delete_scope(repository: &str) -> String {
    format!("{},delete", push_scope(repository))
}

impl RegistryClient {
    /// Every tag of repository `name`, following `Link: <...>; rel="next"` pages; empty for a
    /// repository the registry does not know.
    pub async fn list_tags(&self, name: &ImageName) -> Result<Vec<String>, RegistryError> {
        let host = name.api_host();
        let scopes = [pull_scope(name.repository())];
        let mut url = self.url(name, &format!("tags/list?n={PAGE}"));
        let mut tags = Vec::new();
        for _ in 0..MAX_PAGES {
            let (page, next) = self
                .t
                .retry(host, &format!("list the tags of {name}"), &no_notice, || async {
                    let resp = self.t.send(host, &scopes, self.t.http.get(&url)).await?;
                    match resp.status() {
                        StatusCode::NOT_FOUND => Ok((Vec::new(), None)),
                        s if s.is_success() => {
                            let next = resp
                                .headers()
                                .get("link")
                                .and_then(|v| v.to_str().ok())
                                .and_then(next_link)
                                .map(|l| self.absolute(name, &l));
                            let body = limited_body(resp, MAX_JSON).await?;
                            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                                super::transport::Attempt::Fail(RegistryError::Protocol {
                                    host: host.to_string(),
                                    what: format!("list the tags of {name}"),
                                    detail: format!("the answer is not JSON: {e}"),
                                })
                            })?;
                            let page: Vec<String> = v
                                .get("tags")
                                .and_then(|t| t.as_array())
                                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                                .unwrap_or_default();
                            Ok((page, next))
                        }
                        _ => Err(self.t.unexpected(host, "list tags of", name.repository(), resp).await),
                    }
                })
                .await?;
            tags.extend(page);
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Every tag of `name` with the digest it points at (a HEAD per tag, eight at a time). A tag
    /// deleted between the listing and its HEAD is left out.
    pub async fn tag_digests(&self, name: &ImageName) -> Result<BTreeMap<String, String>, RegistryError> {
        use futures::StreamExt;
        let tags = self.list_tags(name).await?;
        let heads = futures::stream::iter(tags.into_iter().map(|tag| async move {
            let r = ImageReference { name: name.clone(), tag: Some(tag.clone()), digest: None };
            self.manifest_digest(&r).await.map(|d| d.map(|d| (tag, d)))
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        let mut out = BTreeMap::new();
        for h in heads {
            if let Some((t, d)) = h? {
                out.insert(t, d);
            }
        }
        Ok(out)
    }

    /// The `created` time of the image `digest` in `name` (from its config), as RFC 3339 text;
    /// `None` for an index or an image without one.
    pub async fn image_created(&self, name: &ImageName, digest: &str) -> Result<Option<String>, RegistryError> {
        let r = ImageReference { name: name.clone(), tag: None, digest: Some(digest.to_string()) };
        let m = self.fetch_manifest(&r).await?;
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
        let Some(config) = v.pointer("/config/digest").and_then(|d| d.as_str()) else { return Ok(None) };
        let blob = self.fetch_blob(name, config).await?;
        let c: serde_json::Value = serde_json::from_slice(&blob).unwrap_or_default();
        Ok(c.get("created").and_then(|c| c.as_str()).map(str::to_string))
    }

    /// `DELETE /v2/NAME/manifests/DIGEST`: removes the manifest and **every tag on it**.
    /// A registry with deletes disabled answers 405 (`UNSUPPORTED`): an error saying so.
    pub async fn delete_manifest(&self, name: &ImageName, digest: &str) -> Result<Deleted, RegistryError> {
        let host = name.api_host();
        let scopes = [delete_scope(name.repository())];
        let url = self.url(name, &format!("manifests/{digest}"));
        self.t
            .retry(host, &format!("delete {name}@{digest}"), &no_notice, || async {
                let resp = self.t.send(host, &scopes, self.t.http.delete(&url).header(ACCEPT, MANIFEST_ACCEPT)).await?;
                match resp.status() {
                    StatusCode::NOT_FOUND => Ok(Deleted::Absent),
                    s if s.is_success() => Ok(Deleted::Deleted),
                    StatusCode::METHOD_NOT_ALLOWED => Err(super::transport::Attempt::Fail(RegistryError::Protocol {
                        host: host.to_string(),
                        what: format!("delete {name}@{digest}"),
                        detail: "the registry does not allow deletes (405); enable them (distribution: \
                                 `storage.delete.enabled: true`) or delete the tags by hand"
                            .into(),
                    })),
                    _ => Err(self.t.unexpected(host, "delete from", name.repository(), resp).await),
                }
            })
            .await
    }
}

/// The target of `rel="next"` in a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_headers() {
        assert_eq!(
            super::next_link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(super::next_link(r#"</x>; rel="prev""#), None);
    }
}
