//! The deploy lock: one `coordination.k8s.io/v1` Lease per preview, taken, renewed and
//! released with the resourceVersion it read as a precondition, so of two runs exactly one
//! holds it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};

use super::{Kube, KubeError, MANAGER};

impl Kube {
    /// Takes the deploy lock of `name` in `namespace` (a `coordination.k8s.io/v1` Lease) for
    /// `holder`, waiting up to `wait` while another live holder has it. A holder that stopped
    /// renewing for `ttl` is dead and its lease is taken over. Every write carries the
    /// resourceVersion it read (a create, or a replace of that version), so of two runs that
    /// race for one lease exactly one wins. Returns whether the lease was taken over from a dead
    /// holder (so whatever it left half-done may be cleaned up).
    pub async fn acquire_lease(
        &self,
        namespace: &str,
        name: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LeaseTaken, KubeError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("take the deploy lock (Lease {namespace}/{name})");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = Timestamp::now();
            let spec = LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(ttl.as_secs() as i32),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                ..Default::default()
            };
            let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
            match api.get_opt(name).await.map_err(|e| KubeError::from_kube(&what, e))? {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
                        spec: Some(spec),
                    };
                    match api.create(&pp, &lease).await {
                        Ok(l) => {
                            return Ok(LeaseTaken { previous_holder: None, version: version_of(&l) });
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(KubeError::from_kube(&what, e)),
                    }
                }
                Some(mut lease) => {
                    let cur = lease.spec.clone().unwrap_or_default();
                    let held_by = cur.holder_identity.clone().filter(|h| !h.is_empty());
                    let expires =
                        cur.renew_time.as_ref().map(|t| t.0).and_then(|t| {
                            t.checked_add(jiff_secs(cur.lease_duration_seconds.unwrap_or(0) as i64)).ok()
                        });
                    let live =
                        held_by.is_some() && held_by.as_deref() != Some(holder) && expires.is_some_and(|e| e > now);
                    if live {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(KubeError::Timeout {
                                what: format!(
                                    "{what}: {} is deploying this preview; try again when it is done",
                                    held_by.unwrap_or_default()
                                ),
                                after: wait,
                            });
                        }
                        // Until the holder releases it (a delete) or its renewals stop; 250 ms
                        // keeps the successor of a run that just ended close behind it.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    lease.spec = Some(spec);
                    // `lease` carries the resourceVersion read above: a replace of a lease
                    // another run changed since is refused (409) and read again.
                    match api.replace(name, &pp, &lease).await {
                        Ok(l) => return Ok(LeaseTaken { previous_holder: held_by, version: version_of(&l) }),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(KubeError::from_kube(&what, e)),
                    }
                }
            }
        }
    }

    /// Renews a lease `holder` holds, at resourceVersion `version` (what its last write
    /// returned): a replace with that version, so a lease another run took over in between is
    /// never written. Returns the new version, or [`LeaseRenewal::Lost`] naming who holds it
    /// now (nobody: it was deleted). An `Err` is a failed call: the lease may still be ours.
    pub async fn renew_lease(
        &self,
        namespace: &str,
        name: &str,
        holder: &str,
        version: &str,
    ) -> Result<LeaseRenewal, KubeError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("renew the deploy lock (Lease {namespace}/{name})");
        let Some(mut lease) = api.get_opt(name).await.map_err(|e| KubeError::from_kube(&what, e))? else {
            return Ok(LeaseRenewal::Lost { holder: None });
        };
        let cur = lease.spec.clone().unwrap_or_default();
        let held_by = cur.holder_identity.clone().filter(|h| !h.is_empty());
        if held_by.as_deref() != Some(holder) {
            return Ok(LeaseRenewal::Lost { holder: held_by });
        }
        // The version read must be the one this holder wrote last: anything else means another
        // writer was in between (who may have taken it and handed it back), and the lock was
        // not held throughout.
        if lease.metadata.resource_version.as_deref() != Some(version) {
            return Ok(LeaseRenewal::Lost { holder: held_by });
        }
        lease.spec = Some(LeaseSpec { renew_time: Some(MicroTime(Timestamp::now())), ..cur });
        let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        match api.replace(name, &pp, &lease).await {
            Ok(l) => Ok(LeaseRenewal::Renewed { version: version_of(&l) }),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                let now = api.get_opt(name).await.ok().flatten();
                Ok(LeaseRenewal::Lost { holder: now.and_then(|l| l.spec?.holder_identity).filter(|h| !h.is_empty()) })
            }
            Err(e) => Err(KubeError::from_kube(&what, e)),
        }
    }

    /// Releases the lease (deletes it) if `holder` still holds it, with the resourceVersion read
    /// as a precondition, so a lease another run took in between is left alone.
    pub async fn release_lease(&self, namespace: &str, name: &str, holder: &str) -> Result<(), KubeError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("release the deploy lock (Lease {namespace}/{name})");
        let Some(l) = api.get_opt(name).await.map_err(|e| KubeError::from_kube(&what, e))? else { return Ok(()) };
        if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(holder) {
            return Ok(());
        }
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: l.metadata.resource_version.clone(),
                uid: l.metadata.uid.clone(),
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            // Gone already, or no longer the version this holder saw (taken over): not ours.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(KubeError::from_kube(&what, e)),
        }
    }
}

/// The outcome of [`Kube::acquire_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTaken {
    /// Who held the lease before (a run that died without releasing it), if anyone.
    pub previous_holder: Option<String>,
    /// The lease's resourceVersion after this write (what the first renewal must find).
    pub version: String,
}

/// The outcome of [`Kube::renew_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRenewal {
    /// Still held; the lease's resourceVersion after the renewal.
    Renewed {
        /// The new resourceVersion.
        version: String,
    },
    /// No longer held by this holder.
    Lost {
        /// Who holds it now (`None`: nobody, it was deleted).
        holder: Option<String>,
    },
}

fn version_of(l: &Lease) -> String {
    l.metadata.resource_version.clone().unwrap_or_default()
}

fn jiff_secs(s: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(s)
}
