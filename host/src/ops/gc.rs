//! `prpod gc`: prpod's previews (namespaces with its ownership labels) collected when their PR
//! is closed or they outlived their TTL, put to sleep when idle, woken when labelled; and
//! `sha-*` tags older than `[lifecycle] keep_tags_for` that nothing uses deleted.
//!
//! - **Outage-safe.** A PR is collected as closed only when the [`ClosedPrs`] source says so
//!   positively; a state it cannot tell ([`PrState::Unknown`]) is reported, acted on by nothing
//!   but the TTL, and makes gc exit [`crate::error::EXIT_GC_UNKNOWN`].
//! - **Bounded.** When more than `[lifecycle] max_share` percent of the previews it tracks (and
//!   more than one) would be collected at once, gc collects none, says so, and exits
//!   [`crate::error::EXIT_GC_REFUSED`].
//! - **Isolated.** Each preview is handled on its own: a failure is reported with its namespace
//!   and the others proceed (exit 4 at the end).
//! - `prpod.dev/keep` blocks sleep and the TTL (not a closed PR); `prpod.dev/ttl` overrides the
//!   TTL for one preview.
//! - The images in use are listed once per sweep, not per preview: the cost per preview stays
//!   flat (the report counts the Kubernetes API calls).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::clients::kube::Kube;
use crate::clients::kube::inuse::ImagesInUse;
use crate::clients::kube::lifecycle::NamespaceView;
use crate::config::Config;
use crate::error::ResultExt;
use crate::model::{PrContext, ReleaseTarget};
use crate::ops::teardown::{TagDeleter, TeardownRequest, default_deleter, teardown_with};
use crate::ops::wake::{sleep_namespace, wake_namespace};
use crate::phases::lifecycle::{self, parse_duration};
use crate::phases::preview::{PR_LABEL, RELEASE_LABEL, REPOSITORY_ANNOTATION, REPOSITORY_LABEL};
use crate::report::Reporter;

/// Previews handled at once.
const CONCURRENCY: usize = 8;

/// What a source knows of one PR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrState {
    /// Open: keep it (unless its TTL ran out).
    Open,
    /// Positively closed or merged: collect it.
    Closed,
    /// The source could not tell (an error, a truncated or malformed answer): why.
    Unknown(String),
}

/// Where gc learns which PRs are closed: a list (`--closed`, a file) or the GitHub API (the
/// GitHub client's implementation). Asked once per sweep, for every PR gc tracks.
#[async_trait::async_trait]
pub trait ClosedPrs: Send + Sync {
    /// The state of each of `prs` (`(repository, number)`); a PR left out of the answer is
    /// unknown.
    async fn states(&self, prs: &[(String, u64)]) -> BTreeMap<(String, u64), PrState>;
}

/// PRs named closed by the operator (`--closed 1,2,3`, `--closed-file`): those are closed,
/// every other is open (the operator's list is the whole truth).
#[derive(Debug, Clone, Default)]
pub struct ClosedList {
    /// Numbers closed in any repository.
    pub numbers: BTreeSet<u64>,
    /// `owner/repo#N`: closed in that repository only.
    pub qualified: BTreeSet<(String, u64)>,
}

impl ClosedList {
    /// Parses `1, 2 owner/repo#3` (commas, spaces or lines; `#` alone starts a comment line).
    pub fn parse(text: &str) -> anyhow::Result<ClosedList> {
        let mut l = ClosedList::default();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            for item in line.split([',', ' ', '\t']).map(str::trim).filter(|s| !s.is_empty()) {
                let bad = || anyhow::anyhow!("closed PR `{item}` is not a number nor owner/repo#N");
                match item.rsplit_once('#').filter(|(repo, _)| !repo.is_empty()) {
                    Some((repo, n)) => {
                        l.qualified.insert((repo.to_string(), n.trim_start_matches('#').parse().map_err(|_| bad())?));
                    }
                    None => {
                        l.numbers.insert(item.trim_start_matches('#').parse().map_err(|_| bad())?);
                    }
                }
            }
        }
        Ok(l)
    }
}

#[async_trait::async_trait]
impl ClosedPrs for ClosedList {
    async fn states(&self, prs: &[(String, u64)]) -> BTreeMap<(String, u64), PrState> {
        prs.iter()
            .map(|(r, n)| {
                let closed = self.numbers.contains(n) || self.qualified.contains(&(r.clone(), *n));
                ((r.clone(), *n), if closed { PrState::Closed } else { PrState::Open })
            })
            .collect()
    }
}

/// What to sweep.
pub struct GcRequest {
    /// Only this repository's previews (`owner/name`); all of prpod's when `None`.
    pub repository: Option<String>,
    /// Which PRs are closed; `None`: only the TTL, sleep and wake apply.
    pub closed: Option<Box<dyn ClosedPrs>>,
    /// Decide and report; change nothing.
    pub dry_run: bool,
    /// Where tags are deleted; `None`: `[image] repository` on its distribution registry.
    pub tags: Option<Arc<dyn TagDeleter>>,
}

/// One preview in a sweep.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcEntry {
    /// The namespace.
    pub namespace: String,
    /// Its repository and PR, as its labels say.
    pub repository: String,
    /// Its PR number.
    pub pr: Option<u64>,
    /// `collect`, `sleep`, `wake` or `keep`.
    pub action: String,
    /// Why.
    pub why: String,
    /// `done`, `would` (dry run), `failed`, `-` (kept).
    pub outcome: String,
    /// The failure, when it failed.
    pub error: Option<String>,
    /// Digests deleted with the preview.
    pub digests_deleted: usize,
    /// Kubernetes API calls for this preview.
    pub kube_calls: u32,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// Previews tracked (prpod's namespaces, not being deleted).
    pub tracked: usize,
    /// Each preview and what happened to it.
    pub previews: Vec<GcEntry>,
    /// Namespaces whose handling failed (the others proceeded).
    pub failed: Vec<String>,
    /// PRs whose state the source could not tell, and why (nothing was done for being closed).
    pub unknown: Vec<String>,
    /// Why gc refused to collect anything (more than `max_share`).
    pub refused: Option<String>,
    /// `sha-*` digests deleted (or that would be) for age, with their tags.
    pub old_tags: Vec<lifecycle::DigestDeletion>,
    /// Images-in-use lookups that could not read something.
    pub unreadable: Vec<String>,
    /// Kubernetes API calls made in all.
    pub kube_calls: u32,
    /// GitHub API calls made in all (`--closed-from-github`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_calls: Option<u64>,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl GcReport {
    /// For people.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.previews {
            let err = e.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
            out.push(format!("{:<8} {:<40} {} ({}){err}", e.action, e.namespace, e.outcome, e.why));
        }
        for d in &self.old_tags {
            out.push(format!(
                "{} old tag(s) {} ({})",
                if self.dry_run { "would delete" } else { "deleted" },
                d.tags.join(", "),
                d.digest
            ));
        }
        out.extend(self.unknown.iter().map(|u| format!("unknown  {u}")));
        if let Some(r) = &self.refused {
            out.push(format!("refused: {r}"));
        }
        out.extend(self.unreadable.iter().map(|u| format!("unread   {u}")));
        out.push(format!(
            "{} preview(s) tracked, {} failed; {:.1}s, {} Kubernetes API calls",
            self.tracked,
            self.failed.len(),
            self.seconds,
            self.kube_calls
        ));
        out
    }

    /// The exit code: 7 refused, 4 a preview failed, 8 a PR's state was unknown, else 0.
    pub fn exit_code(&self) -> u8 {
        use crate::error::FailureKind;
        let kind = if self.refused.is_some() {
            FailureKind::GcRefused
        } else if !self.failed.is_empty() {
            FailureKind::External
        } else if !self.unknown.is_empty() {
            FailureKind::GcUnknown
        } else {
            return crate::error::EXIT_OK;
        };
        kind.exit_code()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Collect,
    Sleep,
    Wake,
    Keep,
}

/// The repository and PR a namespace's labels name.
fn identity(v: &NamespaceView) -> (String, Option<u64>) {
    let repo = v.annotations.get(REPOSITORY_ANNOTATION).or(v.labels.get(REPOSITORY_LABEL)).cloned().unwrap_or_default();
    (repo, v.labels.get(PR_LABEL).and_then(|n| n.parse().ok()))
}

/// Decides one preview's fate from its metadata, its PR's state, the config and the time.
fn decide(
    v: &NamespaceView,
    state: Option<&PrState>,
    config: &Config,
    now: k8s_openapi::jiff::Timestamp,
) -> (Action, String) {
    let lc = &config.lifecycle;
    if state == Some(&PrState::Closed) {
        return (Action::Collect, "its PR is closed".into());
    }
    if v.labels.contains_key(lifecycle::WAKE) {
        return (Action::Wake, "labelled prpod.dev/wake".into());
    }
    if v.labels.get(lifecycle::KEEP).is_some_and(|k| k != "false") {
        return (Action::Keep, "labelled prpod.dev/keep".into());
    }
    let idle = lifecycle::idle_for(&v.annotations, v.created, now);
    let ttl = match v.labels.get(lifecycle::TTL).map(|t| parse_duration(t)) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return (Action::Keep, format!("its prpod.dev/ttl label is not a duration ({e})")),
        None => lc.ttl,
    };
    let f = lifecycle::format_duration;
    match (idle, ttl) {
        (Some(i), Some(t)) if i >= t => return (Action::Collect, format!("not updated for {}, TTL {}", f(i), f(t))),
        _ => {}
    }
    let asleep = v.labels.get(lifecycle::ASLEEP).map(String::as_str) == Some("true");
    match (idle, lc.sleep_after) {
        (Some(i), Some(s)) if i >= s && !asleep => {
            (Action::Sleep, format!("not updated for {}, sleep_after {}", f(i), f(s)))
        }
        _ if asleep => (Action::Keep, "asleep".into()),
        _ => (
            Action::Keep,
            match idle {
                Some(i) => format!("updated {} ago", f(i.max(std::time::Duration::from_secs(1)))),
                None => "no update time".into(),
            },
        ),
    }
}

/// Runs one sweep (see the module docs).
pub async fn gc(config: &Config, req: GcRequest, reporter: &Reporter) -> anyhow::Result<GcReport> {
    let started = Instant::now();
    let kube = Kube::connect(&config.deploy.kube_target()).await.outside_line()?;
    let mut report = GcReport { dry_run: req.dry_run, ..GcReport::default() };
    let (previews, calls) = lifecycle::list_previews(&kube, req.repository.as_deref()).await.outside_line()?;
    report.kube_calls += calls;
    report.tracked = previews.len();

    // The PRs' states, in one question.
    let prs: Vec<(String, u64)> = previews
        .iter()
        .filter_map(|v| match identity(v) {
            (r, Some(n)) => Some((r, n)),
            _ => None,
        })
        .collect();
    let states = match &req.closed {
        Some(source) => Some(source.states(&prs).await),
        None => None,
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut plan = Vec::new();
    for v in &previews {
        let (repository, pr) = identity(v);
        let state = match (&states, pr) {
            (Some(s), Some(n)) => {
                Some(s.get(&(repository.clone(), n)).cloned().unwrap_or(PrState::Unknown("not in the answer".into())))
            }
            _ => None,
        };
        if let Some(PrState::Unknown(why)) = &state {
            report.unknown.push(format!("{repository} PR #{}: {why}", pr.unwrap_or(0)));
        }
        let (action, why) = decide(v, state.as_ref(), config, now);
        plan.push((
            v.clone(),
            action,
            GcEntry { namespace: v.name.clone(), repository, pr, why, ..GcEntry::default() },
        ));
    }
    let collecting = plan.iter().filter(|(_, a, _)| *a == Action::Collect).count();
    let share = u64::from(config.lifecycle.max_share);
    if collecting > 1 && (collecting as u64) * 100 > share * report.tracked as u64 {
        report.refused = Some(format!(
            "{collecting} of the {} previews tracked would be collected at once, more than `[lifecycle] max_share` \
             ({share}%): nothing was collected. If that is right (many PRs closed), run gc with \
             PRPOD_LIFECYCLE_MAX_SHARE=100 once; if not, check the closed-PR source",
            report.tracked
        ));
    }

    // What the cluster runs, once for the sweep.
    let needs_tags = plan.iter().any(|(_, a, _)| *a == Action::Collect) && report.refused.is_none();
    let in_use = if needs_tags || config.lifecycle.keep_tags_for.is_some() {
        let u = crate::phases::teardown::images_in_use(&kube, None).await.outside_line()?;
        report.kube_calls += u.calls;
        report.unreadable.extend(u.unreadable.iter().cloned());
        Some(Arc::new(u))
    } else {
        None
    };
    let deleter: Option<Arc<dyn TagDeleter>> = match &req.tags {
        Some(d) => Some(d.clone()),
        None => default_deleter(config)?.ok().map(|d| Arc::new(d) as Arc<dyn TagDeleter>),
    };

    let refused = report.refused.is_some();
    let results: Vec<GcEntry> = futures::stream::iter(plan.into_iter().map(|(v, action, mut entry)| {
        let (kube, in_use, deleter) = (kube.clone(), in_use.clone(), deleter.clone());
        async move {
            entry.action = match action {
                Action::Collect => "collect",
                Action::Sleep => "sleep",
                Action::Wake => "wake",
                Action::Keep => "keep",
            }
            .into();
            if action == Action::Keep || (action == Action::Collect && refused) {
                entry.outcome = if action == Action::Keep { "-" } else { "refused" }.into();
                return entry;
            }
            if req.dry_run {
                entry.outcome = "would".into();
                return entry;
            }
            let done = handle(config, &kube, &v, &action, &entry, in_use.as_deref(), deleter, reporter).await;
            match done {
                Ok((calls, digests)) => {
                    entry.outcome = "done".into();
                    entry.kube_calls = calls;
                    entry.digests_deleted = digests;
                }
                Err(e) => {
                    entry.outcome = "failed".into();
                    entry.error = Some(format!("{e:#}"));
                }
            }
            entry
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    report.previews = results;
    report.previews.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    report.failed = report.previews.iter().filter(|e| e.outcome == "failed").map(|e| e.namespace.clone()).collect();
    report.kube_calls += report.previews.iter().map(|e| e.kube_calls).sum::<u32>();

    // Old `sha-*` tags nothing uses.
    if let (Some(keep), Some(deleter), Some(in_use)) = (config.lifecycle.keep_tags_for, &deleter, &in_use)
        && !refused
    {
        report.old_tags = old_sha_tags(deleter.as_ref(), in_use, keep, now).await?;
        if !req.dry_run {
            for d in &report.old_tags {
                deleter.delete_digest(&d.digest, &d.tags).await?;
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One preview's action; returns the Kubernetes calls made and digests deleted.
#[allow(clippy::too_many_arguments)]
async fn handle(
    config: &Config,
    kube: &Kube,
    v: &NamespaceView,
    action: &Action,
    entry: &GcEntry,
    in_use: Option<&ImagesInUse>,
    deleter: Option<Arc<dyn TagDeleter>>,
    reporter: &Reporter,
) -> anyhow::Result<(u32, usize)> {
    match action {
        Action::Sleep => Ok((sleep_namespace(kube, &v.name, &v.labels).await.outside_line()?.kube_calls, 0)),
        Action::Wake => Ok((
            wake_namespace(kube, &v.name, &v.annotations, config.deploy.timeout).await.outside_line()?.kube_calls,
            0,
        )),
        Action::Keep => Ok((0, 0)),
        Action::Collect => {
            let pr = entry.pr.ok_or_else(|| anyhow::anyhow!("namespace {} has no prpod.dev/pr label", v.name))?;
            let ctx = PrContext {
                branch: v.annotations.get("prpod.dev/branch").cloned().unwrap_or_default(),
                sha: v.annotations.get(lifecycle::DEPLOYED_COMMIT).cloned().unwrap_or_default(),
                ..PrContext::manual(String::new(), entry.repository.clone(), Some(pr))
            };
            let release = ReleaseTarget {
                name: v.labels.get(RELEASE_LABEL).cloned().unwrap_or_else(|| v.name.clone()),
                namespace: v.name.clone(),
            };
            let tags = deleter.map(|d| Box::new(Shared(d)) as Box<dyn TagDeleter>);
            let req = TeardownRequest { ctx, release: Some(release), dry_run: false, tags };
            let r = teardown_with(config, kube, req, in_use, reporter).await?;
            Ok((r.kube_calls, r.deleted.len()))
        }
    }
}

/// A shared deleter, handed to each preview's teardown.
struct Shared(Arc<dyn TagDeleter>);

#[async_trait::async_trait]
impl TagDeleter for Shared {
    fn repository(&self) -> String {
        self.0.repository()
    }
    async fn tag_digests(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.0.tag_digests().await
    }
    async fn delete_digest(&self, digest: &str, tags: &[String]) -> anyhow::Result<bool> {
        self.0.delete_digest(digest, tags).await
    }
}

/// Digests whose every tag is a `sha-*` tag (no PR's primary or branch tag, no cache tag names
/// them), that nothing in the cluster runs, and whose image is older than `keep`. An image
/// without a creation time is kept.
async fn old_sha_tags(
    deleter: &dyn TagDeleter,
    in_use: &ImagesInUse,
    keep: std::time::Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> anyhow::Result<Vec<lifecycle::DigestDeletion>> {
    let all = deleter.tag_digests().await?;
    let mut by_digest: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (t, d) in &all {
        by_digest.entry(d).or_default().push(t);
    }
    let repository = deleter.repository();
    let path = repository.split_once('/').map_or(repository.as_str(), |(_, p)| p).to_string();
    let mut out = Vec::new();
    for (digest, tags) in by_digest {
        if !tags.iter().all(|t| t.starts_with("sha-"))
            || in_use.users_of_digest(digest).is_some()
            || tags.iter().any(|t| !in_use.users_of_tag(&path, t).is_empty())
        {
            continue;
        }
        let Some(created) = deleter_created(deleter, digest).await else { continue };
        if now.duration_since(created).as_secs() >= keep.as_secs() as i64 {
            out.push(lifecycle::DigestDeletion {
                digest: digest.to_string(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
            });
        }
    }
    Ok(out)
}

async fn deleter_created(deleter: &dyn TagDeleter, digest: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    deleter.created(digest).await.ok().flatten()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(labels: &[(&str, &str)], updated_hours_ago: i64) -> NamespaceView {
        let now = k8s_openapi::jiff::Timestamp::now();
        let t = now.checked_sub(k8s_openapi::jiff::SignedDuration::from_hours(updated_hours_ago)).unwrap();
        NamespaceView {
            name: "web-pr-1".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: BTreeMap::from([(lifecycle::UPDATED.to_string(), t.to_string())]),
            created: None,
            deleting: false,
        }
    }

    #[test]
    fn what_gc_does_with_one_preview() {
        let mut config = Config::default();
        config.lifecycle.ttl = Some(std::time::Duration::from_secs(7 * 86_400));
        config.lifecycle.sleep_after = Some(std::time::Duration::from_secs(8 * 3600));
        let now = k8s_openapi::jiff::Timestamp::now();
        let d = |v: &NamespaceView, s: Option<&PrState>| decide(v, s, &config, now).0;
        assert_eq!(d(&ns(&[], 1), None), Action::Keep);
        assert_eq!(d(&ns(&[], 9), None), Action::Sleep);
        assert_eq!(d(&ns(&[(lifecycle::ASLEEP, "true")], 9), None), Action::Keep);
        assert_eq!(d(&ns(&[], 24 * 8), None), Action::Collect);
        assert_eq!(d(&ns(&[(lifecycle::TTL, "30d")], 24 * 8), None), Action::Sleep);
        assert_eq!(d(&ns(&[(lifecycle::KEEP, "true")], 24 * 8), None), Action::Keep);
        // Closed beats keep; unknown is not closed.
        assert_eq!(d(&ns(&[(lifecycle::KEEP, "true")], 1), Some(&PrState::Closed)), Action::Collect);
        assert_eq!(d(&ns(&[], 1), Some(&PrState::Unknown("502".into()))), Action::Keep);
        assert_eq!(d(&ns(&[(lifecycle::WAKE, "")], 1), None), Action::Wake);
        assert_eq!(d(&ns(&[(lifecycle::WAKE, "")], 1), Some(&PrState::Closed)), Action::Collect);
    }

    #[test]
    fn closed_lists() {
        let l = ClosedList::parse("1, 2\n# comment\nacme/web#3 #4").unwrap();
        assert_eq!(l.numbers, BTreeSet::from([1, 2, 4]));
        assert!(l.qualified.contains(&("acme/web".to_string(), 3)));
        assert!(ClosedList::parse("one").is_err());
    }
}
