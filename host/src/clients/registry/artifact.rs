//! Small artifacts: blobs pushed from memory (a wasm component, a signature payload) and blobs
//! pulled to a file with their digest checked while they stream.
//!
//! The rest of an artifact's exchange is the image client's own: manifests go through
//! [`RegistryClient::put_manifest`] / [`RegistryClient::fetch_manifest`], so the same transport,
//! credential sources and origin rules apply (credentials go only to the registry that
//! challenged).

use std::io::Write;
use std::path::Path;

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use sha2::Digest;

use super::transport::{Attempt, error_chain, pull_scope, push_scope};
use super::{BlobOutcome, ImageName, RegistryClient, RegistryError, no_notice};

/// A blob pulled into a temporary file next to where it will live; its sha256 matched the digest
/// asked for. Persist it (rename) or drop it (deleted).
pub struct PulledBlob {
    /// The file, in the directory the caller gave.
    pub file: tempfile::NamedTempFile,
    /// Its size.
    pub size: u64,
    /// The same bytes in memory, when asked for: the ones hashed while they streamed, so a
    /// caller that needs them does not read the file back (and hash it again).
    pub bytes: Option<Vec<u8>>,
}

impl std::fmt::Debug for PulledBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulledBlob")
            .field("file", &self.file.path())
            .field("size", &self.size)
            .field("bytes", &self.bytes.as_ref().map(Vec::len))
            .finish()
    }
}

impl RegistryClient {
    /// Puts `bytes` into `name` as blob `digest` (`sha256:` of the bytes, checked here), unless
    /// the repository has it already.
    pub async fn push_blob_bytes(
        &self,
        name: &ImageName,
        digest: &str,
        bytes: bytes::Bytes,
    ) -> Result<BlobOutcome, RegistryError> {
        if super::sha256_digest(&bytes) != digest {
            return Err(RegistryError::Config(format!("blob {digest} to push has other content than its digest says")));
        }
        let scopes = [push_scope(name.repository())];
        if self.blob_exists_with(name, digest, &scopes, &no_notice).await? {
            return Ok(BlobOutcome::Skipped);
        }
        let t = self.transport();
        let host = name.api_host();
        let uploads = self.url_of(name, "blobs/uploads/");
        t.retry(host, &format!("upload blob {digest}"), &no_notice, || {
            let bytes = bytes.clone();
            let uploads = uploads.clone();
            let scopes = &scopes;
            async move {
                let resp = t.send(host, scopes, t.http.post(&uploads).header(CONTENT_LENGTH, "0")).await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(t.unexpected(host, "push to", name.repository(), resp).await);
                }
                let url = self.upload_put_url(name, digest, &resp)?;
                let put = t
                    .http
                    .put(url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, bytes.len().to_string())
                    .body(bytes);
                let resp = t.send(host, scopes, put).await?;
                if !resp.status().is_success() {
                    return Err(t.unexpected(host, &format!("upload blob {digest} to"), name.repository(), resp).await);
                }
                Ok(BlobOutcome::Pushed)
            }
        })
        .await
    }

    /// Streams blob `digest` of `name` into a temporary file in `dir`, hashing as it goes: more
    /// than `max_bytes` (or than `expected_size`, when known) stops the transfer, and a digest
    /// that differs is refused (retried once as a transient fault, then reported). With
    /// `keep_bytes`, the bytes are also kept in memory ([`PulledBlob::bytes`]).
    pub async fn pull_blob_to(
        &self,
        name: &ImageName,
        digest: &str,
        expected_size: Option<u64>,
        max_bytes: u64,
        dir: &Path,
        keep_bytes: bool,
    ) -> Result<PulledBlob, RegistryError> {
        let t = self.transport();
        let host = name.api_host();
        let scopes = [pull_scope(name.repository())];
        let url = self.url_of(name, &format!("blobs/{digest}"));
        let limit = expected_size.map_or(max_bytes, |s| s.min(max_bytes));
        if expected_size.is_some_and(|s| s > max_bytes) {
            return Err(RegistryError::Protocol {
                host: host.to_string(),
                what: format!("fetch blob {digest}"),
                detail: format!(
                    "its manifest says {} bytes, more than the limit of {max_bytes}",
                    expected_size.unwrap_or(0)
                ),
            });
        }
        t.retry(host, &format!("fetch blob {digest}"), &no_notice, || {
            let url = url.clone();
            let scopes = &scopes;
            async move {
                let resp = t.send(host, scopes, t.http.get(&url)).await?;
                if !resp.status().is_success() {
                    return Err(t.unexpected(host, &format!("blob {digest}"), name.repository(), resp).await);
                }
                let io = |e: std::io::Error| Attempt::Fail(RegistryError::io("write", dir, e));
                let mut file = tempfile::Builder::new().prefix(".partial-").tempfile_in(dir).map_err(io)?;
                let mut hasher = sha2::Sha256::new();
                let mut size = 0u64;
                // Sized up front from the manifest (bounded by `limit`), so it never reallocates.
                let mut kept = keep_bytes.then(|| Vec::with_capacity(expected_size.unwrap_or(0).min(limit) as usize));
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| Attempt::Retry { detail: error_chain(&e), after: None })?;
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(Attempt::Fail(RegistryError::Protocol {
                            host: host.to_string(),
                            what: format!("fetch blob {digest}"),
                            detail: format!("it is larger than {limit} bytes (the manifest's size or prpod's limit)"),
                        }));
                    }
                    hasher.update(&chunk);
                    file.write_all(&chunk).map_err(io)?;
                    if let Some(k) = kept.as_mut() {
                        k.extend_from_slice(&chunk);
                    }
                }
                let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
                if actual != digest {
                    return Err(Attempt::Retry { detail: format!("blob {digest} arrived as {actual}"), after: None });
                }
                if expected_size.is_some_and(|s| s != size) {
                    return Err(Attempt::Retry {
                        detail: format!("blob {digest} arrived with {size} bytes"),
                        after: None,
                    });
                }
                file.as_file().sync_all().map_err(io)?;
                Ok(PulledBlob { file, size, bytes: kept })
            }
        })
        .await
    }
}
