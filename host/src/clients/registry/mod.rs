//! The OCI registry client: credentials, references, manifests, blobs, and prpod's own push.
//!
//! What comes from where:
//! - [oci-client](https://docs.rs/oci-client): the reference grammar and Docker Hub defaults
//!   ([`Reference`], whose rules [`ImageReference::parse`] checks by hand: its regex takes ~50 ms
//!   to compile), and the manifest, index and descriptor types with their media types.
//! - written here: the HTTP exchange ([`transport`]): the auth challenge and Bearer token flow
//!   with several scopes per token (a cross-repository mount needs `pull` on the source),
//!   retries that honour `Retry-After`, and blob uploads streamed from disk with progress
//!   (oci-client's uploads take the blob in memory or as a one-shot stream that cannot be
//!   replayed after a dropped connection, and report no progress).
//!
//! ```no_run
//! # async fn f() -> Result<(), prpod::clients::registry::RegistryError> {
//! use prpod::clients::registry::*;
//! let creds = CredentialResolver::anonymous()
//!     .with_password("127.0.0.1:5443", "ci", &PasswordSource::Env("PRPOD_REGISTRY_PASSWORD".into()))?;
//! let client = RegistryClient::new(RegistryOptions::default(), creds)?;
//! let repo = ImageName::parse("127.0.0.1:5443/Acme/Web")?.value; // → 127.0.0.1:5443/acme/web
//! let image = OciImage::open("target/image")?;
//! let pushed = client.push(&image, &repo, &["pr-1".into()], &|_event| {}).await?;
//! println!("{} {:?}", pushed.digest, pushed.layers);
//! # Ok(()) }
//! ```

mod artifact;
mod credentials;
pub mod delete;
mod error;
mod layout;
mod push;
mod reference;
mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use artifact::PulledBlob;
pub use credentials::{Access, CredentialResolver, Credentials, PasswordSource, PullSecret, Resolved, short_lived};
pub use error::RegistryError;
pub use layout::{BlobSource, OciImage};
pub use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
pub use push::{BlobOutcome, PushEvent};
pub use reference::{ImageName, ImageReference, Normalized, Reference, api_host};
pub use transport::RetryNotice;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use transport::{Attempt, Transport, pull_scope, push_scope};

/// When and how often to retry a failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per operation, the first included (default 5).
    pub attempts: u32,
    /// Wait after the first failure; doubles after each (default 500 ms).
    pub initial_backoff: Duration,
    /// Longest backoff wait (default 4 s).
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured (default 30 s): a registry asking for an hour is down.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // 5 attempts wait 0.5 + 1 + 2 + 4 = 7.5 s in all: a registry that stays down fails a
        // run in under 10 s, a registry restarting (a few seconds) is ridden out.
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// How the client talks to registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// PEM bundle of extra CAs to trust (added to the system's), e.g. `PRPOD_REGISTRY_CA`.
    pub ca_file: Option<PathBuf>,
    /// Hosts (`host:port`) spoken to over plain HTTP (loopback registries in CI).
    pub plain_http: Vec<String>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Blobs uploaded at once (default 4).
    pub concurrency: usize,
    /// TCP + TLS connect timeout (default 10 s).
    pub connect_timeout: Duration,
    /// Longest silence while reading an answer (default 120 s).
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            ca_file: None,
            plain_http: Vec::new(),
            retry: RetryPolicy::default(),
            concurrency: 4,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// A manifest as the registry stores it: the exact bytes (their sha256 is the digest).
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// `Content-Type`.
    pub media_type: String,
    /// `sha256:` of the bytes.
    pub digest: String,
}

/// Accept header for manifests: OCI and Docker v2, images and indexes.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Client for OCI registries (distribution API v2). Cheap to clone; one per run.
#[derive(Clone)]
pub struct RegistryClient {
    t: Arc<Transport>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").field("options", &self.t.opts).finish_non_exhaustive()
    }
}

fn no_notice(_: RetryNotice) {}

impl RegistryClient {
    /// A client with `options`, resolving credentials through `credentials`.
    pub fn new(options: RegistryOptions, credentials: CredentialResolver) -> Result<RegistryClient, RegistryError> {
        Ok(RegistryClient { t: Arc::new(Transport::new(options, credentials)?) })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &RegistryOptions {
        &self.t.opts
    }

    /// A `.dockerconfigjson` with this client's credentials for each of `hosts` (those it has
    /// credentials for), for a Kubernetes `kubernetes.io/dockerconfigjson` pull Secret.
    pub async fn dockerconfigjson(&self, hosts: &[&str]) -> Result<crate::secret::Secret, RegistryError> {
        self.t.credentials_resolver().dockerconfigjson(hosts).await
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.t
    }

    fn url(&self, name: &ImageName, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.t.base_url(name.api_host()), name.repository())
    }

    /// Checks that the credentials may push to `repository` (`prpod doctor`): authenticates with
    /// the push scope and opens (then cancels) a blob upload, which is what a push needs.
    pub async fn check_push_access(&self, repository: &ImageName) -> Result<(), RegistryError> {
        let host = repository.api_host();
        let scopes = [push_scope(repository.repository())];
        let url = self.url(repository, "blobs/uploads/");
        self.t
            .retry(host, &format!("check push access to {repository}"), &no_notice, || async {
                let resp = self.t.send(host, &scopes, self.t.http.post(&url).header("Content-Length", "0")).await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(self.t.unexpected(host, "push to", repository.repository(), resp).await);
                }
                if let Some(loc) = location(&resp) {
                    let cancel = self.absolute(repository, &loc);
                    // Best effort: an abandoned upload session expires on its own.
                    let _ = self.t.send(host, &scopes, self.t.http.delete(cancel)).await;
                }
                Ok(())
            })
            .await
    }

    /// Checks that the credentials may read `repository` (`prpod doctor`, for the pull Secret):
    /// authenticates with the pull scope and lists its tags. A repository without tags yet
    /// passes: the credentials were accepted.
    pub async fn check_pull_access(&self, repository: &ImageName) -> Result<(), RegistryError> {
        self.has_tags(repository).await.map(|_| ())
    }

    /// The digest of `reference`'s manifest (HEAD), or `None` when the tag does not exist.
    pub async fn manifest_digest(&self, reference: &ImageReference) -> Result<Option<String>, RegistryError> {
        self.manifest_digest_with(reference, &[pull_scope(reference.name.repository())], &no_notice).await
    }

    pub(crate) async fn manifest_digest_with(
        &self,
        reference: &ImageReference,
        scopes: &[String],
        notify: &(dyn Fn(RetryNotice) + Send + Sync),
    ) -> Result<Option<String>, RegistryError> {
        let name = &reference.name;
        let host = name.api_host();
        let url = self.url(name, &format!("manifests/{}", reference.manifest_ref()));
        self.t
            .retry(host, &format!("look up {reference}"), notify, || async {
                let resp = self.t.send(host, scopes, self.t.http.head(&url).header(ACCEPT, MANIFEST_ACCEPT)).await?;
                match resp.status() {
                    StatusCode::NOT_FOUND => Ok(None),
                    s if s.is_success() => Ok(header(&resp, "docker-content-digest")),
                    _ => Err(self.t.unexpected(host, "look up", name.repository(), resp).await),
                }
            })
            .await
    }

    /// Whether repository `name` holds any tag (`GET /v2/NAME/tags/list?n=1`); a repository the
    /// registry does not know is `false`. Used to pick the first existing cache repository.
    pub async fn has_tags(&self, name: &ImageName) -> Result<bool, RegistryError> {
        let host = name.api_host();
        let scopes = [pull_scope(name.repository())];
        let url = self.url(name, "tags/list?n=1");
        self.t
            .retry(host, &format!("list the tags of {name}"), &no_notice, || async {
                let resp = self.t.send(host, &scopes, self.t.http.get(&url)).await?;
                match resp.status() {
                    StatusCode::NOT_FOUND => Ok(false),
                    s if s.is_success() => {
                        let body = limited_body(resp, MAX_JSON).await?;
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        Ok(v.get("tags").and_then(|t| t.as_array()).is_some_and(|t| !t.is_empty()))
                    }
                    _ => Err(self.t.unexpected(host, "list tags of", name.repository(), resp).await),
                }
            })
            .await
    }

    /// Fetches `reference`'s manifest as stored (bytes, media type, digest checked against the
    /// bytes and against the reference's digest when pinned).
    pub async fn fetch_manifest(&self, reference: &ImageReference) -> Result<RawManifest, RegistryError> {
        let name = &reference.name;
        let host = name.api_host();
        let scopes = [pull_scope(name.repository())];
        let url = self.url(name, &format!("manifests/{}", reference.manifest_ref()));
        let raw = self
            .t
            .retry(host, &format!("fetch manifest {reference}"), &no_notice, || async {
                let resp = self.t.send(host, &scopes, self.t.http.get(&url).header(ACCEPT, MANIFEST_ACCEPT)).await?;
                if !resp.status().is_success() {
                    return Err(self
                        .t
                        .unexpected(host, &format!("manifest {reference}"), name.repository(), resp)
                        .await);
                }
                let media_type = header(&resp, CONTENT_TYPE.as_str()).unwrap_or_default();
                let bytes = limited_body(resp, MAX_JSON).await?;
                Ok(RawManifest { digest: sha256_digest(&bytes), bytes, media_type })
            })
            .await?;
        if let Some(pinned) = &reference.digest
            && *pinned != raw.digest
        {
            return Err(RegistryError::Protocol {
                host: host.to_string(),
                what: format!("fetch manifest {reference}"),
                detail: format!("the registry sent a manifest with digest {}", raw.digest),
            });
        }
        Ok(raw)
    }

    /// Fetches a small blob (an image config) into memory, checking its digest.
    pub async fn fetch_blob(&self, name: &ImageName, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let host = name.api_host();
        let scopes = [pull_scope(name.repository())];
        let url = self.url(name, &format!("blobs/{digest}"));
        self.t
            .retry(host, &format!("fetch blob {digest}"), &no_notice, || async {
                let resp = self.t.send(host, &scopes, self.t.http.get(&url)).await?;
                if !resp.status().is_success() {
                    return Err(self.t.unexpected(host, &format!("blob {digest}"), name.repository(), resp).await);
                }
                let bytes = limited_body(resp, MAX_JSON).await?;
                if sha256_digest(&bytes) != digest {
                    return Err(Attempt::Retry {
                        detail: format!("blob {digest} arrived with another digest"),
                        after: None,
                    });
                }
                Ok(bytes)
            })
            .await
    }

    /// Whether `digest` exists in `name` (HEAD). `scopes` lets a push reuse its push token.
    pub(crate) async fn blob_exists_with(
        &self,
        name: &ImageName,
        digest: &str,
        scopes: &[String],
        notify: &(dyn Fn(RetryNotice) + Send + Sync),
    ) -> Result<bool, RegistryError> {
        let host = name.api_host();
        let url = self.url(name, &format!("blobs/{digest}"));
        self.t
            .retry(host, &format!("check blob {digest}"), notify, || async {
                let resp = self.t.send(host, scopes, self.t.http.head(&url)).await?;
                match resp.status() {
                    StatusCode::NOT_FOUND => Ok(false),
                    s if s.is_success() => Ok(true),
                    _ => Err(self.t.unexpected(host, "check a blob in", name.repository(), resp).await),
                }
            })
            .await
    }

    /// Whether `digest` exists in `name`.
    pub async fn blob_exists(&self, name: &ImageName, digest: &str) -> Result<bool, RegistryError> {
        self.blob_exists_with(name, digest, &[pull_scope(name.repository())], &no_notice).await
    }

    /// Puts `manifest` under `tag` (or a digest) in `name` and checks the digest the registry
    /// reports (its `Docker-Content-Digest`, else a HEAD) equals `manifest.digest`.
    pub async fn put_manifest(&self, name: &ImageName, tag: &str, manifest: &RawManifest) -> Result<(), RegistryError> {
        self.put_manifest_with(name, tag, manifest, &no_notice).await
    }

    pub(crate) async fn put_manifest_with(
        &self,
        name: &ImageName,
        tag: &str,
        manifest: &RawManifest,
        notify: &(dyn Fn(RetryNotice) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let host = name.api_host();
        let scopes = [push_scope(name.repository())];
        let url = self.url(name, &format!("manifests/{tag}"));
        let reported = self
            .t
            .retry(host, &format!("put manifest {name}:{tag}"), notify, || async {
                let req = self.t.http.put(&url).header(CONTENT_TYPE, &manifest.media_type).body(manifest.bytes.clone());
                let resp = self.t.send(host, &scopes, req).await?;
                if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
                    return Err(self.t.unexpected(host, "push to", name.repository(), resp).await);
                }
                Ok(header(&resp, "docker-content-digest"))
            })
            .await?;
        let registry_digest = match reported {
            Some(d) => d,
            None => {
                let r = ImageReference { name: name.clone(), tag: Some(tag.to_string()), digest: None };
                self.manifest_digest(&r).await?.unwrap_or_default()
            }
        };
        if registry_digest != manifest.digest {
            return Err(RegistryError::DigestMismatch {
                host: host.to_string(),
                repository: name.repository().to_string(),
                tag: tag.to_string(),
                ours: manifest.digest.clone(),
                registry: registry_digest,
            });
        }
        Ok(())
    }

    /// Tags an image that is already in the registry with more tags, without a rebuild: fetches
    /// `source`'s manifest and pushes it (and, for another repository or registry, its blobs)
    /// under each of `tags` in `target`.
    pub async fn retag(
        &self,
        source: &ImageReference,
        target: &ImageName,
        tags: &[String],
        progress: &(dyn Fn(&PushEvent) + Send + Sync),
    ) -> Result<crate::model::PushedImage, RegistryError> {
        let manifest = self.fetch_manifest(source).await?;
        let image = OciImage::remote(manifest, &source.name)?;
        self.push(&image, target, tags, progress).await
    }

    /// Turns a `Location` header (absolute, or relative to the registry) into a URL.
    pub(crate) fn absolute(&self, name: &ImageName, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.t.base_url(name.api_host()))
        }
    }

    /// The URL to `PUT` blob `digest` to, from the `202 Accepted` that opened its upload
    /// session in `name`: the session's `Location` with `?digest=` added. A missing or
    /// unparsable `Location` fails the attempt (a registry bug, not worth a retry).
    pub(crate) fn upload_put_url(
        &self,
        name: &ImageName,
        digest: &str,
        accepted: &reqwest::Response,
    ) -> Result<reqwest::Url, Attempt> {
        let host = name.api_host();
        let loc = location(accepted).ok_or_else(|| {
            Attempt::Fail(RegistryError::Protocol {
                host: host.to_string(),
                what: format!("upload blob {digest}"),
                detail: "202 without a Location header".into(),
            })
        })?;
        let mut url = reqwest::Url::parse(&self.absolute(name, &loc)).map_err(|e| {
            Attempt::Fail(RegistryError::Protocol {
                host: host.to_string(),
                what: format!("upload blob {digest}"),
                detail: format!("bad Location `{loc}`: {e}"),
            })
        })?;
        url.query_pairs_mut().append_pair("digest", digest);
        Ok(url)
    }
}

/// Largest manifest or config prpod reads into memory (distribution's own limit is 4 MiB).
const MAX_JSON: usize = 8 << 20;

async fn limited_body(resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Attempt> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Attempt::Retry { detail: transport::error_chain(&e), after: None })?;
        if out.len() + chunk.len() > max {
            return Err(Attempt::Fail(RegistryError::Protocol {
                host: String::new(),
                what: "read a manifest".into(),
                detail: format!("it is larger than {max} bytes"),
            }));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn location(resp: &reqwest::Response) -> Option<String> {
    header(resp, LOCATION.as_str())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
