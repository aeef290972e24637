//! The deploy lock of one preview: a `coordination.k8s.io/v1` Lease per release in its
//! namespace, held around everything that changes the release.
//!
//! - Taken with a create, or a replace of the version read (two runs racing: one wins).
//! - Renewed every [`LOCK_TTL`]`/3` with a replace at the version this run wrote last, never a
//!   blind patch: a renewal that finds another holder, another version or no lease reports the
//!   lock lost ([`DeployLock::lost`]); so does a renewal that keeps failing until the lease could
//!   have expired. The deploy stops before Helm, or interrupts its Helm, and says so.
//! - Released on every path: [`DeployLock::release`] on the normal one; dropping the lock
//!   (an error, a signal) spawns the release, and [`finish_releases`] waits for those before the
//!   process exits. A run killed with SIGKILL releases nothing: its lease expires [`LOCK_TTL`]
//!   after its last renewal and the next run takes it over.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::clients::kube::{Kube, KubeError, LeaseRenewal};
use crate::model::{PrContext, ReleaseTarget};

/// How long a lock outlives its holder's last renewal.
pub const LOCK_TTL: Duration = Duration::from_secs(30);

/// A lock that is no longer this run's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lost the deploy lock (Lease {namespace}/{lease}) {why}")]
pub struct LockLost {
    /// The Lease.
    pub lease: String,
    /// Its namespace.
    pub namespace: String,
    /// What happened to it.
    pub why: String,
}

/// The deploy lock of one release, renewed in the background until [`DeployLock::release`] (or
/// until dropped: see the module docs).
pub struct DeployLock {
    kube: Kube,
    namespace: String,
    name: String,
    holder: String,
    renew: tokio::task::JoinHandle<()>,
    state: watch::Receiver<Option<LockLost>>,
    released: bool,
    /// Set by [`DeployLock::leave_to_expire`].
    keep: std::sync::atomic::AtomicBool,
    /// The run that held the lock before and died without releasing it, if any.
    pub taken_over_from: Option<String>,
}

impl std::fmt::Debug for DeployLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployLock").field("lease", &self.name).field("holder", &self.holder).finish()
    }
}

impl DeployLock {
    /// Takes the lock of `release` for this run, waiting up to `wait` for another run to finish.
    pub async fn acquire(
        kube: &Kube,
        ctx: &PrContext,
        release: &ReleaseTarget,
        wait: Duration,
    ) -> Result<DeployLock, KubeError> {
        let name = format!("prpod-deploy-{}", release.name);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let holder = format!("prpod/{}/{}/{}", host.trim(), std::process::id(), ctx.sha.get(..12).unwrap_or(&ctx.sha));
        let taken = kube.acquire_lease(&release.namespace, &name, &holder, LOCK_TTL, wait).await?;
        let (tx, state) = watch::channel(None);
        let renew = tokio::spawn(renew(
            kube.clone(),
            release.namespace.clone(),
            name.clone(),
            holder.clone(),
            taken.version,
            tx,
        ));
        Ok(DeployLock {
            kube: kube.clone(),
            namespace: release.namespace.clone(),
            name,
            holder,
            renew,
            state,
            released: false,
            keep: std::sync::atomic::AtomicBool::new(false),
            taken_over_from: taken.previous_holder,
        })
    }

    /// The Lease's name.
    pub fn lease(&self) -> &str {
        &self.name
    }

    /// `Err` when the lock is no longer this run's.
    pub fn check(&self) -> Result<(), LockLost> {
        match &*self.state.borrow() {
            Some(lost) => Err(lost.clone()),
            None => Ok(()),
        }
    }

    /// Resolves when the lock is lost (never while it is held).
    pub async fn lost(&self) -> LockLost {
        let mut rx = self.state.clone();
        loop {
            if let Some(lost) = &*rx.borrow_and_update() {
                return lost.clone();
            }
            if rx.changed().await.is_err() {
                // The renewal task ended without a loss: released.
                return std::future::pending().await;
            }
        }
    }

    /// Stops renewing the lock and leaves it to expire instead of releasing it: for a release
    /// this run left `pending-*` (Helm killed), which the run that takes the expired lock over
    /// recovers, and which a run finding no lock would leave alone.
    pub fn leave_to_expire(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::SeqCst);
        self.renew.abort();
    }

    /// Releases the lock and waits until it is released.
    pub async fn release(mut self) {
        self.released = true;
        self.renew.abort();
        if !self.keep.load(std::sync::atomic::Ordering::SeqCst) {
            release_now(&self.kube, &self.namespace, &self.name, &self.holder).await;
        }
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        self.renew.abort();
        if self.released || self.keep.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // Dropped on an error or a signal: release in the background; the process waits for it
        // in `finish_releases` before it exits.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "the deploy lock {}/{} is left to expire: no runtime to release it",
                self.namespace,
                self.name
            );
            return;
        };
        let (kube, ns, name, holder) =
            (self.kube.clone(), self.namespace.clone(), self.name.clone(), self.holder.clone());
        let task = rt.spawn(async move { release_now(&kube, &ns, &name, &holder).await });
        pending().lock().unwrap_or_else(|e| e.into_inner()).push(task);
    }
}

async fn release_now(kube: &Kube, ns: &str, name: &str, holder: &str) {
    // Bounded: a cluster that does not answer leaves the lease to expire.
    match tokio::time::timeout(Duration::from_secs(10), kube.release_lease(ns, name, holder)).await {
        Ok(Ok(())) => tracing::debug!("released the deploy lock {ns}/{name}"),
        Ok(Err(e)) => tracing::warn!("{e}; it expires {}s after its last renewal", LOCK_TTL.as_secs()),
        Err(_) => tracing::warn!(
            "releasing the deploy lock {ns}/{name} timed out; it expires {}s after its last renewal",
            LOCK_TTL.as_secs()
        ),
    }
}

fn pending() -> &'static Mutex<Vec<tokio::task::JoinHandle<()>>> {
    static PENDING: OnceLock<Mutex<Vec<tokio::task::JoinHandle<()>>>> = OnceLock::new();
    PENDING.get_or_init(Mutex::default)
}

/// Waits for the releases of locks that were dropped (each is bounded to 10 s). Called before
/// the process exits, so a failed or interrupted run's successor does not wait for the expiry.
pub async fn finish_releases() {
    let tasks = std::mem::take(&mut *pending().lock().unwrap_or_else(|e| e.into_inner()));
    for t in tasks {
        let _ = t.await;
    }
}

/// The renewal loop: every `LOCK_TTL / 3`, a conditional renewal; on a failed call, again after
/// a second, until the lease could have expired (then it is as good as lost).
async fn renew(
    kube: Kube,
    ns: String,
    name: String,
    holder: String,
    mut version: String,
    tx: watch::Sender<Option<LockLost>>,
) {
    let mut renewed = Instant::now();
    let mut next = LOCK_TTL / 3;
    let lost = |why: String| LockLost { lease: name.clone(), namespace: ns.clone(), why };
    loop {
        tokio::time::sleep(next).await;
        match kube.renew_lease(&ns, &name, &holder, &version).await {
            Ok(LeaseRenewal::Renewed { version: v }) => {
                version = v;
                renewed = Instant::now();
                next = LOCK_TTL / 3;
            }
            Ok(LeaseRenewal::Lost { holder: now }) => {
                let why = match now {
                    Some(h) if h == holder => "(another writer changed it while this run held it)".to_string(),
                    Some(h) => format!("to {h}"),
                    None => "(it was deleted)".to_string(),
                };
                tracing::warn!("lost the deploy lock {ns}/{name} {why}");
                let _ = tx.send(Some(lost(why)));
                return;
            }
            Err(e) => {
                // Another run may take a lease its holder has not renewed for LOCK_TTL; stop
                // counting on it a few seconds before that.
                if renewed.elapsed() + Duration::from_secs(5) >= LOCK_TTL {
                    let why = format!("(it could not be renewed for {}s: {e})", renewed.elapsed().as_secs());
                    let _ = tx.send(Some(lost(why)));
                    return;
                }
                tracing::warn!("failed to renew the deploy lock {ns}/{name}: {e}; retrying");
                next = Duration::from_secs(1);
            }
        }
    }
}
