//! The deploy phase: the per-PR namespace (labelled as prpod's), the registry pull Secret, the
//! deploy lock, and `helm upgrade --install --wait` with Helm's rollback on failure — watched
//! while it runs, so a rollout that cannot succeed (CrashLoopBackOff, ImagePullBackOff) is
//! stopped early and reported with the pod, the container, the reason and its last log lines.
//!
//! How a rollout ends:
//! - Helm returns success: the release's new revision ([`Release`]).
//! - A new pod fails for good (an image that cannot be pulled; a container in CrashLoopBackOff
//!   after `crash_restarts` restarts; a pod that failed): prpod captures the evidence, then
//!   interrupts Helm, which rolls the release back (Helm 4 `--rollback-on-failure`, Helm 3
//!   `--atomic`) — exit code 5.
//! - `timeout` passes (e.g. a readiness probe that never passes): the same, with the pods that
//!   were not ready as evidence.
//!
//! - The deploy lock is lost (another run took it: see [`crate::phases::preview::lock`]) or a signal
//!   comes (SIGINT, SIGTERM): prpod interrupts Helm (SIGTERM, sent from prpod), gives Helm's own
//!   rollback up to `timeout` to finish, kills it only then, and says the state the release was
//!   left in — exit 4 for a lost lock, 130/143 for a signal.
//!
//! The lock is a `coordination.k8s.io/v1` Lease per release in the namespace ([`DeployLock`]),
//! renewed with a precondition while the deploy runs and released on every path. A release left
//! `pending-*` by a run that was killed (its Lease expired unrenewed) is recovered before the
//! upgrade: rolled back to its last good revision, or uninstalled when it never deployed. A
//! `pending-*` release that no prpod run left behind (no expired Lease) is not touched: the error
//! says what to run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::clients::helm::{Helm, HelmError, KubeTarget};
use crate::clients::kube::{Kube, KubeError};
use crate::config::Config;
use crate::error::{Classify, FailureKind};
use crate::error::{PhaseError, ResultExt};
use crate::model::{PrContext, Release, ReleaseTarget};
use crate::phases::chart::{Charted, RenderedChart};
use crate::phases::preview;
pub use crate::phases::preview::lock::{DeployLock, LockLost};
pub use crate::phases::verify::rollout::PodFailure;
use crate::phases::verify::rollout::{Rollout, RolloutWatch, evidence};
use crate::phases::{DeliverInputs, Phase, lifecycle};
use crate::report::{PhaseHandle, Reporter};
use crate::secret::Secret;
use crate::shutdown::{self, Interrupted};

/// `[deploy]`: the chart, Helm, the cluster and how long a rollout may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// A chart directory in the repository (relative to its root). Unset: the chart-generator
    /// plugin makes one from `[app]`.
    #[serde(default)]
    pub chart: Option<PathBuf>,
    /// Values files (relative to the repository root), applied in order after the chart's own.
    #[serde(default)]
    pub values: Vec<PathBuf>,
    /// Values set on top of the files (`set = { "terminationGracePeriodSeconds" = 1 }`; dotted
    /// TOML keys nest: `image.pullPolicy = "Always"`).
    #[serde(default)]
    pub set: toml::Table,
    /// How long the rollout may take before prpod stops it and Helm rolls back, e.g. `"300s"`,
    /// `"5m"`. Default 5 minutes.
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Restarts after which a container in CrashLoopBackOff fails the rollout at once (0: wait
    /// for the timeout). Default 2.
    #[serde(default = "default_crash_restarts")]
    pub crash_restarts: u32,
    /// Helm binary (a name on PATH or a path). Default `helm`.
    #[serde(default = "default_helm")]
    pub helm: PathBuf,
    /// kubeconfig file. Default: `$KUBECONFIG`, `~/.kube/config`, then in-cluster.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context. Default: the current context.
    #[serde(default)]
    pub kube_context: Option<String>,
    /// Name of the `kubernetes.io/dockerconfigjson` Secret prpod writes in the namespace and
    /// attaches to its `default` ServiceAccount. Default `prpod-registry`.
    #[serde(default = "default_pull_secret")]
    pub pull_secret: String,
    /// Log lines quoted per failing container. Default 20.
    #[serde(default = "default_log_lines")]
    pub log_lines: u32,
    /// Whether the repository's prpod.toml may set `chart`, `values` and `set` (a chart the
    /// pull request chooses). An operator setting. Default false.
    #[serde(default)]
    pub allow_repository_chart: bool,
    /// Whether prpod may adopt an existing namespace it did not create (labelling it as this
    /// preview's). Never `default`, `kube-system`, `kube-public`, `kube-node-lease`, nor another
    /// preview's namespace. Default false.
    #[serde(default)]
    pub adopt_namespace: bool,
    /// Cluster-scoped kinds a chart may create (`"ClusterRole"`, or `"group/Kind"` such as
    /// `"rbac.authorization.k8s.io/ClusterRole"`): an operator's key. Default none: every object
    /// a chart renders must live in the preview's namespace, and anything cluster-scoped
    /// (ClusterRoles and bindings, webhooks, CRDs, Namespaces, PersistentVolumes, ...) is refused
    /// before anything is applied. Objects aimed at another namespace are refused regardless.
    #[serde(default)]
    pub allow_cluster_kinds: Vec<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_crash_restarts() -> u32 {
    2
}
fn default_helm() -> PathBuf {
    PathBuf::from("helm")
}
fn default_pull_secret() -> String {
    "prpod-registry".into()
}
fn default_log_lines() -> u32 {
    20
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            chart: None,
            values: vec![],
            set: toml::Table::new(),
            timeout: default_timeout(),
            crash_restarts: default_crash_restarts(),
            helm: default_helm(),
            kubeconfig: None,
            kube_context: None,
            pull_secret: default_pull_secret(),
            log_lines: default_log_lines(),
            allow_repository_chart: false,
            adopt_namespace: false,
            allow_cluster_kinds: vec![],
        }
    }
}

impl crate::config::Section for DeployConfig {
    fn apply_env(&mut self, env: &crate::config::Env) -> Result<(), crate::config::ConfigError> {
        env.apply("PRPOD_HELM", "deploy.helm", &mut self.helm)?;
        env.apply_opt("PRPOD_KUBE_CONTEXT", "deploy.kube_context", &mut self.kube_context)?;
        env.apply_opt("PRPOD_KUBECONFIG", "deploy.kubeconfig", &mut self.kubeconfig)?;
        env.apply_opt("PRPOD_DEPLOY_CHART", "deploy.chart", &mut self.chart)?;
        if let Some(v) = env.get("PRPOD_DEPLOY_TIMEOUT") {
            self.timeout = duration_text::parse(v).map_err(|why| crate::config::ConfigError::Env {
                var: "PRPOD_DEPLOY_TIMEOUT".into(),
                key: "deploy.timeout".into(),
                why,
            })?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), crate::config::ConfigError> {
        let bad = |key: &str, why: String| Err(crate::config::ConfigError::Value { key: key.into(), why });
        if !crate::plugins::validate::is_dns1123_label(&self.pull_secret, 253) {
            return bad("deploy.pull_secret", format!("`{}` is not a valid Secret name", self.pull_secret));
        }
        if self.log_lines > 1000 {
            return bad("deploy.log_lines", format!("{} is more than 1000", self.log_lines));
        }
        for k in &self.allow_cluster_kinds {
            let (group, kind) = k.rsplit_once('/').unwrap_or(("", k));
            let kind_ok = kind.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && kind.chars().all(|c| c.is_ascii_alphanumeric());
            let group_ok = group.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c));
            if !kind_ok || !group_ok {
                return bad(
                    "deploy.allow_cluster_kinds",
                    format!("`{k}` is not a kind like `ClusterRole` or `rbac.authorization.k8s.io/ClusterRole`"),
                );
            }
        }
        for p in self.chart.iter().chain(&self.values) {
            if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return bad(
                    if self.values.contains(p) { "deploy.values" } else { "deploy.chart" },
                    format!("`{}` must be a path inside the repository (relative, no `..`)", p.display()),
                );
            }
        }
        Ok(())
    }
}

impl DeployConfig {
    /// How Helm and the kube client reach the cluster.
    pub fn kube_target(&self) -> KubeTarget {
        KubeTarget { kubeconfig: self.kubeconfig.clone(), context: self.kube_context.clone() }
    }
}

/// `"90s"`, `"5m"`, `"1h"` or a number of seconds.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `300`, `"300s"`, `"5m"`, `"1h"`.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like `300s`, `5m` or `1h`"))?;
        let secs = match unit {
            "" | "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => return Err(format!("`{s}` is not a duration like `300s`, `5m` or `1h`")),
        };
        if secs == 0 {
            return Err("a timeout of 0 would fail every deploy".into());
        }
        Ok(Duration::from_secs(secs))
    }

    /// serde: a string or an integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => parse(&n.to_string()),
            Raw::S(s) => parse(&s),
        }
        .map_err(serde::de::Error::custom)
    }

    /// serde: as `"<secs>s"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs()))
    }
}

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The rollout failed and Helm rolled the release back (exit 5).
    #[error("{}", rolled_back_message(.release, .namespace, .reason, .failures, .restored))]
    RolledBack {
        /// Release.
        release: String,
        /// Namespace.
        namespace: String,
        /// What ended the rollout.
        reason: String,
        /// The containers that failed.
        failures: Vec<PodFailure>,
        /// The revision now current (after the rollback), if any.
        restored: Option<u32>,
        /// Recent Warning events.
        warnings: Vec<String>,
    },
    /// The deploy lock was lost before or while Helm ran (exit 4): another run may be deploying.
    #[error("{lost}: {state}")]
    LockLost {
        /// What happened to the lock.
        lost: LockLost,
        /// What prpod did about it and the state the release was left in.
        state: String,
    },
    /// A signal stopped the deploy (exit 130 / 143).
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// Helm failed.
    #[error(transparent)]
    Helm(#[from] HelmError),
    /// The cluster failed.
    #[error(transparent)]
    Kube(#[from] KubeError),
}

fn rolled_back_message(
    release: &str,
    namespace: &str,
    reason: &str,
    failures: &[PodFailure],
    restored: &Option<u32>,
) -> String {
    let back = match restored {
        Some(r) => format!("Helm rolled it back (revision {r} now serves)"),
        None => "Helm removed the failed first install".into(),
    };
    let mut s = format!("the deploy of release {release} in namespace {namespace} failed ({reason}) and {back}");
    for f in failures {
        s.push_str("\n  ");
        s.push_str(&f.to_string());
    }
    s
}

impl Classify for DeployError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            DeployError::RolledBack { .. } => Some(FailureKind::RolledBack),
            DeployError::LockLost { .. } => Some(FailureKind::External),
            DeployError::Interrupted(i) => Some(FailureKind::Interrupted(i.signal)),
            DeployError::Helm(e) => e.failure_kind(),
            DeployError::Kube(e) => e.failure_kind(),
        }
    }
}

/// Claims the namespace for this preview ([`preview::claim`]: created, ours, or refused naming
/// its owner) and, when the registry needs credentials, writes the pull Secret and attaches it to
/// the namespace's `default` ServiceAccount — before any pod exists, so every pod of every chart
/// that names no ServiceAccount of its own pulls with it (charts that do name one get
/// `imagePullSecrets` in their values: see the chart phase).
pub async fn prepare_namespace(
    kube: &Kube,
    ctx: &PrContext,
    release: &ReleaseTarget,
    dockerconfigjson: Option<&Secret>,
    config: &DeployConfig,
) -> anyhow::Result<preview::Claimed> {
    let ns = &release.namespace;
    let claimed = preview::claim(kube, ctx, release, config.adopt_namespace).await?;
    if let Some(doc) = dockerconfigjson {
        kube.apply_pull_secret(ns, &config.pull_secret, doc).await.at(Phase::Deploy)?;
        kube.attach_pull_secret(ns, "default", &config.pull_secret).await.at(Phase::Deploy)?;
    }
    Ok(claimed)
}

/// Undoes a deploy the verify phase failed: back to the revision before it, or, when it was the
/// release's first, uninstalls it. Returns the revision that now serves, if any.
pub async fn roll_back(helm: &Helm, deployed: &Release, timeout: Duration) -> Result<Option<u32>, HelmError> {
    match deployed.previous_revision {
        Some(r) => {
            helm.rollback(&deployed.name, &deployed.namespace, r, timeout).await?;
            Ok(helm.status(&deployed.name, &deployed.namespace).await?.map(|s| s.revision))
        }
        None => {
            helm.uninstall(&deployed.name, &deployed.namespace, timeout).await?;
            Ok(None)
        }
    }
}

/// The release's latest revision and its status. Read from the labels of Helm's release Secrets
/// through the API (no Helm process, ~50 ms less per read); from `helm history` when that finds
/// nothing or fails (no release yet, another storage driver, no right to list Secrets).
async fn latest_revision(helm: &Helm, kube: &Kube, name: &str, ns: &str) -> Result<Option<(u32, String)>, HelmError> {
    if let Ok(Some(state)) = kube.helm_release_state(ns, name).await {
        return Ok(Some(state));
    }
    Ok(helm.status(name, ns).await?.map(|r| (r.revision, r.status)))
}

/// Before an upgrade: a release stuck in `pending-*` is recovered when the lock shows the run
/// that left it is dead, else reported with the fix. Returns a note saying what was done.
pub async fn recover_pending(
    helm: &Helm,
    kube: &Kube,
    release: &ReleaseTarget,
    lock: &DeployLock,
    timeout: Duration,
) -> anyhow::Result<Option<String>> {
    let (name, ns) = (&release.name, &release.namespace);
    let Some((revision, status)) = latest_revision(helm, kube, name, ns).await.at(Phase::Deploy)? else {
        return Ok(None);
    };
    if !status.starts_with("pending-") {
        return Ok(None);
    }
    let history = helm.history(name, ns).await.at(Phase::Deploy)?;
    let last_good = history
        .iter()
        .rev()
        .find(|h| h.revision < revision && matches!(h.status.as_str(), "deployed" | "superseded"))
        .map(|h| h.revision);
    let Some(dead) = &lock.taken_over_from else {
        let fix = match last_good {
            Some(r) => format!(
                "if no deploy of it is still running, roll it back with `helm rollback {name} {r} --namespace {ns}` \
                 and run prpod again"
            ),
            None => format!(
                "if no deploy of it is still running, remove it with `helm uninstall {name} --namespace {ns}` \
                 and run prpod again"
            ),
        };
        let pending = HelmError::Pending {
            release: name.clone(),
            namespace: ns.clone(),
            status,
            revision,
            fix: format!("no prpod run holds its deploy lock, so prpod leaves it alone: {fix}"),
        };
        return Err(PhaseError::new(Phase::Deploy, pending).into());
    };
    // Helm changes the release from here: only while the lock is still this run's.
    if let Err(lost) = lock.check() {
        let state = format!("stopped before recovering it; release {name} in namespace {ns} was not changed");
        return Err(PhaseError::new(Phase::Deploy, DeployError::LockLost { lost, state }).into());
    }
    match last_good {
        Some(r) => {
            let mut note = format!(
                "release was stuck in {} (revision {}) by a run that died ({dead}); rolled back to revision {r}",
                status, revision
            );
            if let Err(e) = helm.rollback(name, ns, r, timeout).await {
                // Killed before it had applied everything, the upgrade left objects of revision
                // `r` that its own manifest lacks; Helm's rollback then stops at the first with
                // "original object ... not found", recording a failed rollback whose manifest is
                // revision `r`'s. From that record a second rollback goes through; what the
                // interrupted revision had added is then deleted by hand, as a complete rollback
                // would have.
                let HelmError::Failed { stderr, .. } = &e else { return Err(PhaseError::new(Phase::Deploy, e).into()) };
                if !stderr.contains("original object") {
                    return Err(PhaseError::new(Phase::Deploy, e).into());
                }
                helm.rollback(name, ns, r, timeout).await.at(Phase::Deploy)?;
                let added = added_objects(
                    &helm.manifest(name, ns, revision).await.at(Phase::Deploy)?,
                    &helm.manifest(name, ns, r).await.at(Phase::Deploy)?,
                );
                let mut deleted = Vec::new();
                for o in &added {
                    let gone = kube
                        .delete_release_object(
                            o.namespace.as_deref().unwrap_or(ns),
                            &o.api_version,
                            &o.kind,
                            &o.name,
                            name,
                        )
                        .await
                        .map_err(|k| {
                            anyhow::Error::new(PhaseError::new(Phase::Deploy, k)).context(format!(
                                "rolled {name} back to revision {r}, but could not remove {} {} that the \
                                 interrupted upgrade added; delete it and run prpod again",
                                o.kind, o.name
                            ))
                        })?;
                    if gone {
                        deleted.push(format!("{}/{}", o.kind, o.name));
                    }
                }
                note.push_str(&format!(
                    " (the interrupted upgrade was only partly applied: rolled back in two steps{})",
                    if deleted.is_empty() {
                        String::new()
                    } else {
                        format!(", deleted what it added: {}", deleted.join(", "))
                    }
                ));
            }
            Ok(Some(note))
        }
        None => {
            helm.uninstall(name, ns, timeout).await.at(Phase::Deploy)?;
            Ok(Some(format!(
                "release was stuck in {} (revision {}) by a run that died ({dead}) and never deployed; uninstalled it",
                status, revision
            )))
        }
    }
}

/// One object of a Helm manifest, by identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ManifestObject {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

/// The objects of each YAML document of `manifest` (documents without `kind` and `name` skipped).
fn manifest_objects(manifest: &str) -> std::collections::BTreeSet<ManifestObject> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(manifest)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter_map(|v| {
            let s = |x: &serde_yaml::Value| x.as_str().map(str::to_string);
            Some(ManifestObject {
                api_version: s(&v["apiVersion"])?,
                kind: s(&v["kind"])?,
                namespace: s(&v["metadata"]["namespace"]),
                name: s(&v["metadata"]["name"])?,
            })
        })
        .collect()
}

/// The objects in manifest `newer` that manifest `older` does not have.
fn added_objects(newer: &str, older: &str) -> Vec<ManifestObject> {
    let old = manifest_objects(older);
    manifest_objects(newer).into_iter().filter(|o| !old.contains(o)).collect()
}

/// What the deploy needs.
pub struct DeployRequest<'a> {
    /// Release and namespace.
    pub release: &'a ReleaseTarget,
    /// The rendered chart.
    pub chart: &'a RenderedChart,
    /// Timeouts and evidence settings.
    pub config: &'a DeployConfig,
    /// The release's deploy lock, held by this run: Helm runs only while it is.
    pub lock: &'a DeployLock,
}

/// The revision a failed deploy goes back to, from the release's revisions (number, status)
/// before it: the latest `deployed` one, else the latest `superseded` one; `None` when none ever
/// deployed (the release is then uninstalled). A `failed` latest revision is skipped, not
/// taken as the end of the history.
pub fn rollback_target(revisions: &[(u32, String)]) -> Option<u32> {
    let latest = |status: &str| revisions.iter().filter(|(_, s)| s == status).map(|(r, _)| *r).max();
    latest("deployed").or_else(|| latest("superseded"))
}

/// The revision to go back to if this deploy fails (see [`rollback_target`]). Read from the
/// API (Helm's release Secrets' labels) when it answers, else from `helm history`.
async fn rollback_target_of(helm: &Helm, kube: &Kube, name: &str, ns: &str) -> Result<Option<u32>, HelmError> {
    let revisions = match kube.helm_release_revisions(ns, name).await {
        Ok(list) if !list.is_empty() => list,
        _ => helm.history(name, ns).await?.into_iter().map(|h| (h.revision, h.status)).collect(),
    };
    Ok(rollback_target(&revisions))
}

/// `release X in namespace Y is at revision N (status)`, read now; for messages.
pub async fn release_state(helm: &Helm, kube: &Kube, release: &ReleaseTarget) -> String {
    let (name, ns) = (&release.name, &release.namespace);
    match latest_revision(helm, kube, name, ns).await {
        Ok(Some((r, status))) if status.starts_with("pending-") => format!(
            "release {name} in namespace {ns} was left at revision {r} ({status}); the next run recovers it once \
             its deploy lock has expired"
        ),
        Ok(Some((r, status))) => format!("release {name} in namespace {ns} is at revision {r} ({status})"),
        Ok(None) => format!("release {name} does not exist in namespace {ns}"),
        Err(e) => format!("the state of release {name} in namespace {ns} is unknown ({e})"),
    }
}

/// Why a running Helm was stopped from outside the rollout.
enum Halt {
    Lost(LockLost),
    Signal(shutdown::Signal),
}

/// `helm upgrade --install` for the rendered chart, watched (through `watch`, started before
/// this call so the pods that were there before are known) until Helm returns. `note` tells a
/// person what is going on. Helm starts only while `req.lock` is held; a lost lock or a signal
/// interrupts it (see the module docs).
pub async fn upgrade(
    req: &DeployRequest<'_>,
    helm: &Helm,
    kube: &Kube,
    watch: &mut RolloutWatch,
    note: &(dyn Fn(String) + Send + Sync),
) -> Result<Release, DeployError> {
    let (name, ns) = (&req.release.name, &req.release.namespace);
    let previous = rollback_target_of(helm, kube, name, ns).await?;

    // Helm changes the release from here: a signal no longer drops this future (which would
    // kill Helm mid-write); it is handled below.
    let _deferred = shutdown::defer();
    let unchanged = || format!("stopped before Helm ran; release {name} in namespace {ns} was not changed");
    if let Err(lost) = req.lock.check() {
        return Err(DeployError::LockLost { lost, state: unchanged() });
    }
    if let Some(signal) = shutdown::received() {
        return Err(Interrupted { signal, state: unchanged() }.into());
    }

    // Helm's own timeout is a backstop: prpod stops the rollout at `timeout` itself, after it has
    // captured the evidence (once Helm rolls back, the failed pods are gone).
    let helm_timeout = req.config.timeout + Duration::from_secs(60);
    let upgrade = helm.spawn_upgrade(name, &req.chart.dir, ns, &req.chart.values, helm_timeout)?;
    let pid = upgrade.pid();
    let done = upgrade.wait();
    tokio::pin!(done);
    let deadline = tokio::time::Instant::now() + req.config.timeout;
    let started = Instant::now();
    let mut stopped: Option<(String, Vec<PodFailure>)> = None;
    let mut halted: Option<Halt> = None;
    // Once Helm is asked to stop from outside, its rollback gets `timeout` (what its own
    // `--rollback-on-failure` / `--atomic` wait allows) before Helm is killed.
    let rollback_grace = req.config.timeout;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut killed = false;
    let result = loop {
        tokio::select! {
            r = &mut done => break r,
            o = watch.next(), if stopped.is_none() && halted.is_none() => match o {
                Some(Ok(())) => {
                    let hard = watch.state.hard_failures(req.config.crash_restarts);
                    if !hard.is_empty() {
                        let what: Vec<String> = hard.iter().map(|h| format!("{} in pod {}", h.reason, h.pod)).collect();
                        note(format!("the rollout cannot succeed ({}): stopping Helm, which rolls back", what.join(", ")));
                        let ev = evidence(kube, ns, hard, req.config.log_lines).await;
                        signal_helm(pid, rustix::process::Signal::TERM);
                        stopped = Some(("a new pod failed".into(), ev));
                    }
                }
                // The watch resumes by itself (see `RolloutWatch::next`); it never ends early.
                Some(Err(e)) => tracing::debug!("rollout watch: {e}"),
                None => {}
            },
            _ = tokio::time::sleep_until(deadline), if stopped.is_none() && halted.is_none() => {
                let ev = evidence(kube, ns, watch.state.not_ready(), req.config.log_lines).await;
                note(format!("the rollout is not done after {}s: stopping Helm, which rolls back", req.config.timeout.as_secs()));
                signal_helm(pid, rustix::process::Signal::TERM);
                stopped = Some((format!("not ready within {}s, the configured timeout", req.config.timeout.as_secs()), ev));
            }
            lost = req.lock.lost(), if halted.is_none() => {
                note(format!("{lost}: stopping Helm, which rolls back"));
                signal_helm(pid, rustix::process::Signal::TERM);
                halted = Some(Halt::Lost(lost));
                kill_at = Some(tokio::time::Instant::now() + rollback_grace);
            }
            s = shutdown::wait(), if halted.is_none() => {
                note(format!("{s} received: stopping Helm, which rolls back"));
                signal_helm(pid, rustix::process::Signal::TERM);
                halted = Some(Halt::Signal(s));
                kill_at = Some(tokio::time::Instant::now() + rollback_grace);
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() => {
                note(format!("Helm did not finish its rollback within {}s: killing it", rollback_grace.as_secs()));
                signal_helm(pid, rustix::process::Signal::KILL);
                kill_at = None;
                killed = true;
            }
        }
    };
    tracing::debug!("helm upgrade returned after {:?}", started.elapsed());
    if let Some(halt) = halted {
        let what = match &result {
            Ok(r) => format!("Helm had finished the upgrade (revision {})", r.revision),
            Err(_) if killed => {
                format!("Helm did not finish its rollback within {}s and was killed", rollback_grace.as_secs())
            }
            Err(HelmError::RolledBack { .. }) => "stopped Helm, which rolled the release back".into(),
            Err(e) => format!("stopped Helm ({e})"),
        };
        let state = format!("{what}; {}", release_state(helm, kube, req.release).await);
        if state.contains("(pending-") {
            // Released, the lock would tell the next run that nobody left the release pending
            // (and it would refuse to touch it); expired, it lets the next run recover it.
            req.lock.leave_to_expire();
        }
        return Err(match halt {
            Halt::Lost(lost) => DeployError::LockLost { lost, state },
            Halt::Signal(signal) => Interrupted { signal, state: format!("during the deploy: {state}") }.into(),
        });
    }
    match result {
        Ok(r) => Ok(Release {
            name: r.name,
            namespace: r.namespace,
            revision: r.revision,
            status: r.status,
            chart: r.chart,
            previous_revision: previous,
        }),
        Err(HelmError::RolledBack { stderr, .. }) => {
            let (reason, failures) = match stopped {
                Some(s) => s,
                None => {
                    let mut list = watch.state.hard_failures(1);
                    list.extend(watch.state.not_ready());
                    (stderr, evidence(kube, ns, list, req.config.log_lines).await)
                }
            };
            let restored = helm.status(name, ns).await.ok().flatten().filter(|r| r.status == "deployed");
            Err(rolled_back(req.release, reason, failures, restored.map(|r| r.revision), &watch.state))
        }
        Err(e) => Err(e.into()),
    }
}

/// The error of a rollout that failed and was rolled back.
pub fn rolled_back(
    release: &ReleaseTarget,
    reason: String,
    failures: Vec<PodFailure>,
    restored: Option<u32>,
    seen: &Rollout,
) -> DeployError {
    let warnings = seen
        .warnings
        .iter()
        .rev()
        .take(5)
        .map(|w| format!("{} {}: {} (x{})", w.object, w.reason, w.message, w.count))
        .collect();
    DeployError::RolledBack {
        release: release.name.clone(),
        namespace: release.namespace.clone(),
        reason,
        failures,
        restored,
        warnings,
    }
}

/// A plan's deploy phase: what the deploy would do, reading only. The namespace's owner is
/// checked as a run would (a plan refuses what a run would refuse). Records the deploy and
/// verify phases as skipped with the reporter.
pub async fn describe_plan(
    charted: &Charted,
    release: &ReleaseTarget,
    with_pull_secret: bool,
    config: &DeployConfig,
    reporter: &Reporter,
) -> anyhow::Result<Vec<String>> {
    let phase = reporter.phase(Phase::Deploy);
    let (name, ns) = (&release.name, &release.namespace);
    if let Some(k) = &charted.kube
        && let Ok(Some(refusal)) = preview::check(k, &charted.ctx, release, config.adopt_namespace).await
    {
        return Err(refusal.into());
    }
    let current = match &charted.plan_state {
        Some(Ok(Some((rev, status)))) => {
            format!("upgrade release {name} in namespace {ns} from revision {rev} ({status})")
        }
        Some(Ok(None)) => format!("install release {name} in namespace {ns} (new)"),
        Some(Err(e)) => format!("install or upgrade release {name} in namespace {ns} (its state is unknown: {e})"),
        None => format!("install or upgrade release {name} in namespace {ns} (the cluster did not answer)"),
    };
    let mut plan = vec![format!("would {current} with Helm {}", charted.helm.version())];
    if with_pull_secret {
        plan.push(format!(
            "would write the pull Secret {} and attach it to the namespace's default ServiceAccount",
            config.pull_secret
        ));
    }
    plan.push(format!("would wait up to {}s for the rollout, then run check-release", config.timeout.as_secs()));
    phase.skip(plan[0].clone());
    reporter.phase(Phase::Verify).skip("would check the rollout");
    Ok(plan)
}

/// A release Helm installed or upgraded, still under the deploy lock, with the watch its verify
/// reads.
pub struct Installed {
    /// The release as Helm left it.
    pub release: Release,
    /// The deploy lock, held until the verify has decided.
    pub lock: DeployLock,
    /// The rollout watch, started before Helm.
    pub watch: RolloutWatch,
    /// When the deploy phase started (the verify gets what is left of `[deploy] timeout`).
    pub started: Instant,
    /// The cluster's time at the start: events before it are not this deploy's.
    pub since: k8s_openapi::jiff::Timestamp,
}

/// The deploy phase: the namespace claimed (and the pull Secret written), the deploy lock taken,
/// the release checked to be current (closed PR, newer commit), a pending Helm operation
/// recovered, then `helm upgrade --install` while the rollout is watched. Records the phase with
/// the reporter; on an error or a signal the lock is released by its drop.
pub async fn install(
    config: &Config,
    charted: &Charted,
    input: &DeliverInputs<'_>,
    reporter: &Reporter,
) -> anyhow::Result<Installed> {
    let dc = &config.deploy;
    let (release, ctx, helm) = (input.release, &charted.ctx, &charted.helm);
    let phase = reporter.phase(Phase::Deploy);
    let started = Instant::now();
    let kube = charted.kube.as_ref().expect("a deploy has a connected cluster");
    let since = k8s_openapi::jiff::Timestamp::now();
    match prepare_namespace(kube, ctx, release, input.pull_secret.as_ref(), dc).await? {
        preview::Claimed::Created => phase.note(format!("created namespace {}", release.namespace)),
        preview::Claimed::Adopted => {
            phase.note(format!("adopted namespace {} (`adopt_namespace`): it is now this preview's", release.namespace))
        }
        preview::Claimed::Ours => {}
    }
    let (name, ns) = (&release.name, &release.namespace);
    shutdown::note_release(format!("release {name} in namespace {ns} was not changed"));
    // Released on every path: explicitly by the caller, by its drop on an error or a signal.
    let lock = DeployLock::acquire(kube, ctx, release, dc.timeout).await.at(Phase::Deploy)?;
    // Closed meanwhile, or superseded by a newer commit of the PR: stop before Helm (and wake a
    // sleeping preview).
    if let Some(note) =
        lifecycle::check_current(kube, release, &ctx.sha, input.chart_root, config.lifecycle.wake_on_push).await?
    {
        phase.note(note);
    }
    let recovered = {
        // A Helm rollback runs to its end, even when a signal comes meanwhile.
        let _deferred = shutdown::defer();
        recover_pending(helm, kube, release, &lock, dc.timeout).await?
    };
    if let Some(note) = recovered {
        shutdown::note_release(format!("{note}; release {name} in namespace {ns} was not upgraded"));
        phase.note(note);
    }
    let mut watch = RolloutWatch::start(kube, &release.namespace).await.at(Phase::Deploy)?;
    phase.waiting(format!(
        "helm upgrade --install {} (Helm {}): waiting for the rollout",
        release.name,
        helm.version()
    ));
    let dreq = DeployRequest { release, chart: &charted.rendered, config: dc, lock: &lock };
    let note = |m: String| phase.note(m);
    let deployed = upgrade(&dreq, helm, kube, &mut watch, &note).await.at(Phase::Deploy)?;
    shutdown::note_release(format!(
        "release {name} in namespace {ns} is at revision {} (deployed); its verify did not finish",
        deployed.revision
    ));
    phase.finish(format!(
        "release {} revision {} in namespace {} ({})",
        deployed.name, deployed.revision, deployed.namespace, deployed.chart
    ));
    Ok(Installed { release: deployed, lock, watch, started, since })
}

/// Undoes a release its verify failed (`failures`: pods that failed after Helm returned; none
/// when only `error` findings failed it): back to the revision before, or uninstalled when it
/// was the first; then the lock is released. Pod failures are an error (exit 5); findings alone
/// are not (the caller reports the run as blocked). When the lock was lost meanwhile, nothing is
/// rolled back: another run holding it may be deploying.
pub async fn roll_back_unverified(
    charted: &Charted,
    kube: &Kube,
    release: &ReleaseTarget,
    installed: Installed,
    failures: Vec<PodFailure>,
    config: &DeployConfig,
    phase: &PhaseHandle,
) -> anyhow::Result<()> {
    let Installed { release: deployed, lock, watch, .. } = installed;
    let (helm, deployed) = (&charted.helm, &deployed);
    let (name, ns) = (&release.name, &release.namespace);
    let failures = evidence(kube, &release.namespace, failures, config.log_lines).await;
    if let Err(lost) = lock.check() {
        let lost = DeployError::LockLost {
            lost,
            state: format!(
                "the verify of revision {} failed and it was not rolled back; {}",
                deployed.revision,
                release_state(helm, kube, release).await
            ),
        };
        return Err(PhaseError::new(Phase::Deploy, lost).into());
    }
    let restored = {
        let _deferred = shutdown::defer();
        roll_back(helm, deployed, config.timeout).await.at(Phase::Deploy)?
    };
    let back = match (restored, deployed.previous_revision) {
        (Some(r), Some(to)) if r != to => format!("rolled back to revision {to} (now serving as revision {r})"),
        (Some(r), _) => format!("rolled back to revision {r}"),
        (None, _) => "uninstalled the failed first install".into(),
    };
    shutdown::note_release(format!("release {name} in namespace {ns}: its verify failed and it was {back}"));
    phase.note(back);
    // Not deployed, but its `sha-*` tag is the PR's: teardown deletes it too.
    let _ = lifecycle::record_deployed(kube, ns, &charted.ctx.sha, false).await;
    lock.release().await;
    if !failures.is_empty() {
        let failed =
            rolled_back(release, "a new pod failed after Helm returned".into(), failures, restored, &watch.state);
        return Err(PhaseError::new(Phase::Deploy, failed).into());
    }
    Ok(())
}

/// Sends `signal` to Helm: SIGTERM asks it to stop (it cancels its wait and rolls the release
/// back); SIGKILL ends it.
fn signal_helm(pid: Option<u32>, signal: rustix::process::Signal) {
    let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else { return };
    if let Err(e) = rustix::process::kill_process(pid, signal) {
        // ESRCH: Helm has just exited, which `done` reports.
        tracing::debug!("failed to signal helm (pid {}): {e}", pid.as_raw_nonzero());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_objects_are_those_only_the_newer_manifest_has() {
        let older = "---\n# Source: a/templates/x.yaml\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n\
                     ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n";
        let newer = "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n\
                     apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: stuck, namespace: other}\n---\n\
                     apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n---\n# empty\n";
        let added = added_objects(newer, older);
        let names: Vec<_> = added.iter().map(|o| (o.kind.as_str(), o.name.as_str(), o.namespace.as_deref())).collect();
        assert_eq!(names, vec![("Deployment", "stuck", Some("other")), ("ConfigMap", "web", None)]);
        assert!(added_objects(older, older).is_empty());
    }

    #[test]
    fn a_failed_latest_revision_is_skipped_for_the_last_deployed_one() {
        let r =
            |list: &[(u32, &str)]| rollback_target(&list.iter().map(|(n, s)| (*n, s.to_string())).collect::<Vec<_>>());
        assert_eq!(r(&[(1, "superseded"), (2, "deployed"), (3, "failed")]), Some(2));
        assert_eq!(r(&[(1, "deployed"), (2, "failed"), (3, "failed")]), Some(1));
        assert_eq!(r(&[(1, "superseded"), (2, "failed")]), Some(1));
        assert_eq!(r(&[(1, "superseded"), (2, "superseded"), (3, "deployed")]), Some(3));
        assert_eq!(r(&[(1, "failed")]), None);
        assert_eq!(r(&[]), None);
    }

    #[test]
    fn allowed_cluster_kinds_must_be_kinds() {
        use crate::config::Section;
        let with = |k: &str| DeployConfig { allow_cluster_kinds: vec![k.into()], ..DeployConfig::default() }.check();
        assert!(with("ClusterRole").is_ok());
        assert!(with("rbac.authorization.k8s.io/ClusterRole").is_ok());
        for bad in ["", "clusterrole", "Cluster Role", "RBAC/ClusterRole", "*"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("deploy.allow_cluster_kinds"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_text::parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration_text::parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration_text::parse("30").unwrap(), Duration::from_secs(30));
        assert!(duration_text::parse("5 minutes").is_err());
        assert!(duration_text::parse("0s").is_err());
    }

    #[test]
    fn failure_text_quotes_the_log() {
        let f = PodFailure {
            pod: "web-1".into(),
            container: "web".into(),
            reason: "CrashLoopBackOff".into(),
            message: None,
            exit_code: Some(3),
            restarts: 2,
            log: vec!["boom".into()],
        };
        assert_eq!(
            f.to_string(),
            "pod web-1 container web: CrashLoopBackOff (exit code 3, 2 restarts); its last log lines:\n    | boom"
        );
    }
}
