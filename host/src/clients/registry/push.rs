//! prpod's own push: blobs first (HEAD-checked, mounted across repositories of the same
//! registry, otherwise streamed from disk, a bounded number at once), then the manifest under
//! every tag, each checked against the digest the registry reports.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use super::transport::{Attempt, RetryNotice, error_chain, pull_scope, push_scope};
use super::{BlobSource, ImageName, OciDescriptor, OciImage, RegistryClient, RegistryError};
use crate::model::{LayerStats, PushedImage};

/// How one blob got into the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobOutcome {
    /// Uploaded.
    Pushed,
    /// Already there.
    Skipped,
    /// Mounted from another repository.
    Mounted,
}

/// Progress of a push, for the reporter (a progress bar over bytes, a line per retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// The push starts: this many blobs of this many bytes in all (what an upload of everything
    /// would send).
    Started {
        /// `registry/repository`.
        repository: String,
        /// Blobs (config + layers).
        blobs: usize,
        /// Their total size.
        total_bytes: u64,
    },
    /// Bytes of a blob were sent.
    Bytes {
        /// The blob.
        digest: String,
        /// Bytes sent since the last event for this blob.
        sent: u64,
    },
    /// An upload attempt failed after sending `discarded` bytes; they will be sent again.
    Restarted {
        /// The blob.
        digest: String,
        /// Bytes to take back from the progress count.
        discarded: u64,
    },
    /// A blob is in the repository.
    Blob {
        /// The blob.
        digest: String,
        /// Its size.
        size: u64,
        /// How it got there.
        outcome: BlobOutcome,
    },
    /// An operation failed and will be retried.
    Retrying(RetryNotice),
    /// A tag points at the pushed manifest (verified).
    Tagged {
        /// The tag.
        tag: String,
        /// The digest.
        digest: String,
    },
}

/// Read size for blob uploads: large enough that syscalls and TLS records are not the cost,
/// small enough that a handful of concurrent uploads stay far below the memory budget.
const CHUNK: usize = 256 * 1024;

impl RegistryClient {
    /// Pushes `image` to `target` under every one of `tags` and returns the digest (verified
    /// against the registry's) and what happened to the layers (the config is not counted as a
    /// layer; its bytes are in `bytes_uploaded`). Blobs already in `target` are
    /// skipped, blobs from another repository of the same registry are mounted, the rest are
    /// streamed (from disk, or from their registry) with at most `concurrency` uploads at once;
    /// transient failures are retried per blob. `progress` sees every [`PushEvent`].
    pub async fn push(
        &self,
        image: &OciImage,
        target: &ImageName,
        tags: &[String],
        progress: &(dyn Fn(&PushEvent) + Send + Sync),
    ) -> Result<PushedImage, RegistryError> {
        if tags.is_empty() {
            return Err(RegistryError::Config(format!("nothing to push to {target}: no tags")));
        }
        if let Some(from) = image.index_from()
            && from != target
        {
            return Err(RegistryError::Config(format!(
                "{} is an image index (multi-platform); prpod retags an index only within its repository {from}",
                image.digest()
            )));
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PushEvent>();
        let work = async move {
            let result = self.push_inner(image, target, tags, &tx).await;
            drop(tx);
            result
        };
        let drain = async {
            while let Some(event) = rx.recv().await {
                progress(&event);
            }
        };
        let (result, ()) = tokio::join!(work, drain);
        result
    }

    async fn push_inner(
        &self,
        image: &OciImage,
        target: &ImageName,
        tags: &[String],
        events: &UnboundedSender<PushEvent>,
    ) -> Result<PushedImage, RegistryError> {
        let host = target.api_host();
        // One token covers the push and every mount source of the same registry.
        let mut scopes: BTreeSet<String> = BTreeSet::from([push_scope(target.repository())]);
        for (_, source) in image.blobs() {
            if let BlobSource::Remote(from) = source
                && from.api_host() == host
                && from.repository() != target.repository()
            {
                scopes.insert(pull_scope(from.repository()));
            }
        }
        let scopes: Vec<String> = scopes.into_iter().collect();
        let total: u64 = image.blobs().iter().map(|(d, _)| d.size.max(0) as u64).sum();
        let _ = events.send(PushEvent::Started {
            repository: target.to_string(),
            blobs: image.blobs().len(),
            total_bytes: total,
        });

        let notify = |n: RetryNotice| {
            let _ = events.send(PushEvent::Retrying(n));
        };
        // One HEAD for the manifest by digest first: a repository that has the manifest has
        // every blob it references (the registry refuses a manifest with missing blobs), so a
        // re-push skips the blob checks entirely; and this first request learns the auth
        // challenge alone, before the concurrent requests start.
        let by_digest =
            super::ImageReference { name: target.clone(), tag: None, digest: Some(image.digest().to_string()) };
        let present = self.manifest_digest_with(&by_digest, &scopes, &notify).await?.is_some();
        let config_digest = image.blobs().first().map(|(d, _)| d.digest.clone());
        let blobs: &[(OciDescriptor, BlobSource)] = if present { &[] } else { image.blobs() };
        if present {
            for (desc, _) in image.blobs() {
                let size = desc.size.max(0) as u64;
                let _ =
                    events.send(PushEvent::Blob { digest: desc.digest.clone(), size, outcome: BlobOutcome::Skipped });
            }
        }
        let outcomes: Vec<(bool, BlobOutcome, u64)> = futures_util::stream::iter(blobs)
            .map(|(desc, source)| {
                let scopes = &scopes;
                let notify = &notify;
                let is_config = Some(&desc.digest) == config_digest.as_ref();
                async move {
                    let outcome = self.put_blob(target, desc, source, scopes, events, notify).await?;
                    let size = desc.size.max(0) as u64;
                    let _ = events.send(PushEvent::Blob { digest: desc.digest.clone(), size, outcome });
                    Ok::<_, RegistryError>((is_config, outcome, size))
                }
            })
            .buffer_unordered(self.options().concurrency.max(1))
            .try_collect()
            .await?;
        let mut layers = LayerStats::default();
        if present {
            layers.skipped = image.blobs().len().saturating_sub(1) as u32;
        }
        for (is_config, outcome, size) in outcomes {
            if outcome == BlobOutcome::Pushed {
                layers.bytes_uploaded += size;
            }
            if is_config {
                continue;
            }
            match outcome {
                BlobOutcome::Pushed => layers.pushed += 1,
                BlobOutcome::Skipped => layers.skipped += 1,
                BlobOutcome::Mounted => layers.mounted += 1,
            }
        }
        for tag in tags {
            self.put_manifest_with(target, tag, image.manifest(), &notify).await?;
            let _ = events.send(PushEvent::Tagged { tag: tag.clone(), digest: image.digest().to_string() });
        }
        Ok(PushedImage { repository: target.clone(), digest: image.digest().to_string(), tags: tags.to_vec(), layers })
    }

    /// Gets one blob into `target`: skip, mount, or upload.
    async fn put_blob(
        &self,
        target: &ImageName,
        desc: &OciDescriptor,
        source: &BlobSource,
        scopes: &[String],
        events: &UnboundedSender<PushEvent>,
        notify: &(dyn Fn(RetryNotice) + Send + Sync),
    ) -> Result<BlobOutcome, RegistryError> {
        let digest = &desc.digest;
        if self.blob_exists_with(target, digest, scopes, notify).await? {
            return Ok(BlobOutcome::Skipped);
        }
        let t = self.transport();
        let host = target.api_host();
        let mount_from = match source {
            BlobSource::Remote(from) if from.api_host() == host && from.repository() != target.repository() => {
                Some(from)
            }
            _ => None,
        };
        let uploads = self.url_of(target, "blobs/uploads/");
        let size = desc.size.max(0) as u64;
        let sent = Arc::new(AtomicU64::new(0));
        t.retry(host, &format!("upload blob {digest}"), notify, || {
            let sent = sent.clone();
            let uploads = uploads.clone();
            async move {
                let discarded = sent.swap(0, Ordering::Relaxed);
                if discarded > 0 {
                    let _ = events.send(PushEvent::Restarted { digest: digest.clone(), discarded });
                }
                let mut post = t.http.post(&uploads).header(CONTENT_LENGTH, "0");
                if let Some(from) = mount_from {
                    post = post.query(&[("mount", digest.as_str()), ("from", from.repository())]);
                }
                let resp = t.send(host, scopes, post).await?;
                match resp.status() {
                    StatusCode::CREATED if mount_from.is_some() => return Ok(BlobOutcome::Mounted),
                    StatusCode::ACCEPTED => {}
                    _ => return Err(t.unexpected(host, "push to", target.repository(), resp).await),
                }
                let put_url = self.upload_put_url(target, digest, &resp)?;
                let body = self.blob_body(source, digest, size, sent.clone(), events.clone()).await?;
                let put = t
                    .http
                    .put(put_url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size.to_string())
                    .body(body);
                let resp = t.send(host, scopes, put).await?;
                if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
                    return Err(t
                        .unexpected(host, &format!("upload blob {digest} to"), target.repository(), resp)
                        .await);
                }
                Ok(BlobOutcome::Pushed)
            }
        })
        .await
    }

    /// The body of a blob upload: the file streamed in chunks, or the blob streamed from the
    /// registry that has it; either way counting bytes into `sent` and the progress events.
    async fn blob_body(
        &self,
        source: &BlobSource,
        digest: &str,
        size: u64,
        sent: Arc<AtomicU64>,
        events: UnboundedSender<PushEvent>,
    ) -> Result<reqwest::Body, Attempt> {
        let owned = digest.to_string();
        let count = move |n: usize| {
            sent.fetch_add(n as u64, Ordering::Relaxed);
            let _ = events.send(PushEvent::Bytes { digest: owned.clone(), sent: n as u64 });
        };
        match source {
            BlobSource::File(path) => {
                let file =
                    tokio::fs::File::open(path).await.map_err(|e| Attempt::Fail(RegistryError::io("read", path, e)))?;
                let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
                if len != size {
                    return Err(Attempt::Fail(RegistryError::Layout {
                        path: path.clone(),
                        detail: format!("the blob file has {len} bytes, the manifest says {size}"),
                    }));
                }
                let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK).inspect(move |chunk| {
                    if let Ok(c) = chunk {
                        count(c.len());
                    }
                });
                Ok(reqwest::Body::wrap_stream(stream))
            }
            BlobSource::Remote(from) => {
                let t = self.transport();
                let host = from.api_host();
                let url = self.url_of(from, &format!("blobs/{digest}"));
                let resp = t.send(host, &[pull_scope(from.repository())], t.http.get(&url)).await?;
                if !resp.status().is_success() {
                    return Err(t.unexpected(host, &format!("blob {digest}"), from.repository(), resp).await);
                }
                let stream = resp.bytes_stream().inspect(move |chunk| {
                    if let Ok(c) = chunk {
                        count(c.len());
                    }
                });
                let stream = stream.map_err(|e| std::io::Error::other(error_chain(&e)));
                Ok(reqwest::Body::wrap_stream(stream))
            }
        }
    }

    pub(crate) fn url_of(&self, name: &ImageName, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.transport().base_url(name.api_host()), name.repository())
    }
}

/// How long a push of `bytes` may retry in the worst case with `policy` (for docs and tests).
#[allow(dead_code)]
pub(crate) fn worst_case_wait(policy: &super::RetryPolicy) -> Duration {
    (1..policy.attempts).map(|a| policy.initial_backoff.saturating_mul(1 << (a - 1)).min(policy.max_backoff)).sum()
}
