//! The namespace watch the rollout is verified from: workloads, pods and Warning events, first
//! everything that exists, then every change.
//!
//! It yields observed states, not failures: recovery is kube-runtime's `watcher` (a 410 Gone or
//! a desynced watch relists, a dropped connection or a restarting API server watches again),
//! paced by its `default_backoff` (800 ms doubling to 30 s, reset after a quiet 120 s), and
//! this module drops the transient failures it reports along the way ([`KubeError::is_transient`]),
//! so phases never see them. What a restart missed arrives as `Relisting` ... `Listed`.

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event as KubeEvent, Pod};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::views::warning_of;
use super::{Kube, KubeError, PodView, WarningView, WorkloadView};

/// What a namespace watch reports.
#[derive(Debug, Clone)]
pub enum Observed {
    /// A workload was added or changed.
    Workload(WorkloadView),
    /// A pod was added or changed.
    Pod(PodView),
    /// A pod is gone.
    PodGone(String),
    /// The watch of this kind (`Pod`, `Deployment`, `StatefulSet`, `DaemonSet`, `Event`) is
    /// (re)listing: every object that exists follows, then `Listed`. After a restart (a 410
    /// Gone, a dropped connection), what is not listed again is gone.
    Relisting(&'static str),
    /// Every object of this kind that existed when the watch (re)started has been reported.
    Listed(&'static str),
    /// A Warning event was recorded.
    Warning(WarningView),
}

impl Kube {
    /// Watches workloads, pods and Warning events in `namespace`: first everything that exists,
    /// then every change, until the stream is dropped. A watch, not a polling loop.
    ///
    /// Each kind's watch recovers by itself (see the module doc) and never ends; a relist is
    /// reported as `Relisting` ... `Listed`, so objects deleted meanwhile can be dropped. An
    /// `Err` item is a refusal no retry fixes (credentials rejected, a right missing, another
    /// 4xx): transient failures never come out. The watcher keeps retrying behind a refusal, so
    /// the caller decides whether to wait on.
    pub fn watch_namespace(&self, namespace: &str) -> impl Stream<Item = Result<Observed, KubeError>> + Send + 'static {
        let ns = namespace.to_string();
        let wc = watcher::Config::default();
        let err = move |what: &'static str| {
            let ns = ns.clone();
            move |e: watcher::Error| match e {
                watcher::Error::InitialListFailed(e)
                | watcher::Error::WatchStartFailed(e)
                | watcher::Error::WatchFailed(e) => KubeError::from_kube(format!("watch {what} in {ns}"), e),
                // The server's own error event in the stream (a 410 Gone when the watch's
                // resourceVersion expired): classified by its code like any API error.
                watcher::Error::WatchError(s) => {
                    KubeError::from_kube(format!("watch {what} in {ns}"), kube::Error::Api(s))
                }
                other => KubeError::Unreachable { what: format!("watch {what} in {ns}"), why: other.to_string() },
            }
        };
        let pods = watcher(Api::<Pod>::namespaced(self.client.clone(), namespace), wc.clone())
            .default_backoff()
            .map_err(err("pods"))
            .map_ok(|ev| match ev {
                watcher::Event::Delete(p) => vec![Observed::PodGone(p.metadata.name.unwrap_or_default())],
                ev => observe(ev, "Pod", |p| Observed::Pod(PodView::from(p))),
            })
            .boxed();
        let deployments = watcher(Api::<Deployment>::namespaced(self.client.clone(), namespace), wc.clone())
            .default_backoff()
            .map_err(err("deployments"))
            .map_ok(|ev| observe(ev, "Deployment", |d| Observed::Workload(WorkloadView::from(d))))
            .boxed();
        let statefulsets = watcher(Api::<StatefulSet>::namespaced(self.client.clone(), namespace), wc.clone())
            .default_backoff()
            .map_err(err("statefulsets"))
            .map_ok(|ev| observe(ev, "StatefulSet", |d| Observed::Workload(WorkloadView::from(d))))
            .boxed();
        let daemonsets = watcher(Api::<DaemonSet>::namespaced(self.client.clone(), namespace), wc.clone())
            .default_backoff()
            .map_err(err("daemonsets"))
            .map_ok(|ev| observe(ev, "DaemonSet", |d| Observed::Workload(WorkloadView::from(d))))
            .boxed();
        let events = watcher(Api::<KubeEvent>::namespaced(self.client.clone(), namespace), wc.fields("type=Warning"))
            .default_backoff()
            .map_err(err("events"))
            .map_ok(|ev| observe(ev, "Event", |e| Observed::Warning(warning_of(e))))
            .boxed();
        recovering(
            futures::stream::select_all([pods, deployments, statefulsets, daemonsets, events])
                .map_ok(|v: Vec<Observed>| futures::stream::iter(v.into_iter().map(Ok)))
                .try_flatten(),
        )
    }
}

/// The kinds [`Kube::watch_namespace`] reports `Listed` for.
pub const WATCHED_KINDS: [&str; 5] = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "Event"];

fn observe<K>(ev: watcher::Event<K>, kind: &'static str, f: impl Fn(&K) -> Observed) -> Vec<Observed> {
    match ev {
        watcher::Event::Apply(k) | watcher::Event::InitApply(k) => vec![f(&k)],
        watcher::Event::InitDone => vec![Observed::Listed(kind)],
        watcher::Event::Init => vec![Observed::Relisting(kind)],
        watcher::Event::Delete(_) => vec![],
    }
}

/// Drops the transient failures of `stream` (logged; the watcher behind it relists or watches
/// again after its backoff) and passes on observations and refusals.
fn recovering<S>(stream: S) -> impl Stream<Item = Result<Observed, KubeError>> + Send + 'static
where
    S: Stream<Item = Result<Observed, KubeError>> + Send + 'static,
{
    stream.filter(|item| {
        let keep = match item {
            Err(e) if e.is_transient() => {
                tracing::info!("{e}; the watch resumes");
                false
            }
            _ => true,
        };
        futures::future::ready(keep)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> KubeError {
        KubeError::Api { what: "watch pods in ns".into(), code, message: "m".into() }
    }

    #[test]
    fn transient_failures_never_come_out() {
        let items = vec![
            Ok(Observed::Listed("Pod")),
            Err(KubeError::Unreachable { what: "watch pods in ns".into(), why: "connection reset".into() }),
            Err(api(410)),
            Err(api(503)),
            Err(api(429)),
            Ok(Observed::Relisting("Pod")),
            Err(KubeError::Forbidden { what: "watch pods in ns".into(), message: "no".into() }),
            Err(api(404)),
            Ok(Observed::PodGone("web-1".into())),
        ];
        let out: Vec<_> = futures::executor::block_on(recovering(futures::stream::iter(items)).collect());
        let seen: Vec<String> = out
            .iter()
            .map(|i| match i {
                Ok(o) => format!("{o:?}"),
                Err(e) => format!("err {:?}", e.code()),
            })
            .collect();
        assert_eq!(
            seen,
            [r#"Listed("Pod")"#, r#"Relisting("Pod")"#, "err Some(403)", "err Some(404)", r#"PodGone("web-1")"#]
        );
    }
}
