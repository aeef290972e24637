//! A preview's life after its first deploy: the `[lifecycle]` settings, the labels and
//! annotations teardown, gc, sleep and wake read and write on the preview's namespace, and the
//! decision which of a PR's tags may be deleted (never a digest still in use, never a digest
//! another tag still names).
//!
//! Names on the namespace (ownership itself is [`crate::phases::preview`]'s):
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `prpod.dev/closed` | annotation | the PR is closed: teardown started; a run refuses |
//! | `prpod.dev/deployed-commit` | annotation | the SHA last deployed |
//! | `prpod.dev/commits` | annotation | short SHAs deployed, newest last (their `sha-*` tags are the PR's) |
//! | `prpod.dev/updated` | annotation | when the preview was last deployed (RFC 3339) |
//! | `prpod.dev/keep` | label | gc never sleeps nor collects it |
//! | `prpod.dev/ttl` | label | this preview's TTL (`3d`), instead of `[lifecycle] ttl` |
//! | `prpod.dev/asleep` | label | `true`: scaled to 0 by gc |
//! | `prpod.dev/replicas` | annotation | the replica counts before sleeping (JSON) |
//! | `prpod.dev/wake` | label | set by a person: the next gc wakes the preview |

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clients::kube::inuse::ImagesInUse;
use crate::config::{ConfigError, Env, Section};
use crate::error::ResultExt;
use crate::model::Phase;

/// Annotation: the PR is closed (teardown started); a run refuses.
pub const CLOSED: &str = "prpod.dev/closed";
/// Annotation: the SHA last deployed.
pub const DEPLOYED_COMMIT: &str = "prpod.dev/deployed-commit";
/// Annotation: the short SHAs deployed, space-separated, newest last.
pub const COMMITS: &str = "prpod.dev/commits";
/// Annotation: when the preview was last deployed (RFC 3339).
pub const UPDATED: &str = "prpod.dev/updated";
/// Label: never slept nor collected by gc.
pub const KEEP: &str = "prpod.dev/keep";
/// Label: this preview's TTL, overriding `[lifecycle] ttl`.
pub const TTL: &str = "prpod.dev/ttl";
/// Label: `true` while scaled to 0.
pub const ASLEEP: &str = "prpod.dev/asleep";
/// Annotation: the replica counts before sleeping.
pub const REPLICAS: &str = "prpod.dev/replicas";
/// Label: wake this preview at the next gc.
pub const WAKE: &str = "prpod.dev/wake";
/// Short SHAs kept in [`COMMITS`] (older ones fall off; gc's `keep_tags_for` collects their tags).
pub const MAX_COMMITS: usize = 100;

/// `[lifecycle]`: when previews sleep, wake and are collected.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// gc collects a preview not updated for this long (`7d`); unset: never by age.
    #[serde(with = "opt_duration")]
    pub ttl: Option<Duration>,
    /// gc scales a preview not updated for this long to 0 (`8h`); unset: never.
    #[serde(with = "opt_duration")]
    pub sleep_after: Option<Duration>,
    /// A run of a sleeping preview wakes it (default true).
    pub wake_on_push: bool,
    /// gc refuses to collect more than this percentage of the previews it tracks at once
    /// (default 50).
    pub max_share: u8,
    /// gc deletes `sha-*` tags older than this that no preview and no pod uses; unset: never.
    #[serde(with = "opt_duration")]
    pub keep_tags_for: Option<Duration>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig { ttl: None, sleep_after: None, wake_on_push: true, max_share: 50, keep_tags_for: None }
    }
}

impl Section for LifecycleConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        for (var, key, target) in [
            ("PRPOD_LIFECYCLE_TTL", "lifecycle.ttl", &mut self.ttl),
            ("PRPOD_LIFECYCLE_SLEEP_AFTER", "lifecycle.sleep_after", &mut self.sleep_after),
            ("PRPOD_LIFECYCLE_KEEP_TAGS_FOR", "lifecycle.keep_tags_for", &mut self.keep_tags_for),
        ] {
            if let Some(v) = env.get(var) {
                *target = Some(parse_duration(v).map_err(|why| ConfigError::Env {
                    var: var.into(),
                    key: key.into(),
                    why,
                })?);
            }
        }
        env.apply("PRPOD_LIFECYCLE_WAKE_ON_PUSH", "lifecycle.wake_on_push", &mut self.wake_on_push)?;
        env.apply("PRPOD_LIFECYCLE_MAX_SHARE", "lifecycle.max_share", &mut self.max_share)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.max_share == 0 || self.max_share > 100 {
            return Err(ConfigError::Value {
                key: "lifecycle.max_share".into(),
                why: format!("{} is not a percentage between 1 and 100", self.max_share),
            });
        }
        Ok(())
    }
}

/// Parses `90s`, `30m`, `8h`, `7d`, `2w` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like `90s`, `30m`, `8h`, `7d` or `2w`"))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("`{s}` is not a duration like `90s`, `30m`, `8h`, `7d` or `2w`")),
    };
    if n == 0 {
        return Err(format!("`{s}`: a duration of 0 would act on every preview at once; leave the key out instead"));
    }
    Ok(Duration::from_secs(n.saturating_mul(unit)))
}

/// `7d` for 7 days: the largest unit that divides evenly.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (u, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= n && s.is_multiple_of(n) {
            return format!("{}{u}", s / n);
        }
    }
    format!("{s}s")
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::N(n)) => super::parse_duration(&n.to_string()).map(Some),
            Some(Raw::S(s)) => super::parse_duration(&s).map(Some),
        }
        .map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// One tag kept, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptTag {
    /// The tag.
    pub tag: String,
    /// Its digest.
    pub digest: String,
    /// Why it stays (`shared with main`, `in use by Pod other/web-1`).
    pub why: String,
}

/// One digest to delete, with every tag that goes with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DigestDeletion {
    /// The digest.
    pub digest: String,
    /// Its tags (all of them this PR's).
    pub tags: Vec<String>,
}

/// What may be deleted of one repository's tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TagPlan {
    /// Digests to delete.
    pub delete: Vec<DigestDeletion>,
    /// Tags of this PR that stay.
    pub kept: Vec<KeptTag>,
}

/// Decides which of `ours` (this PR's tags) may go, given every tag of the repository and its
/// digest (`all`) and the images the cluster uses. A registry deletes a digest with all its
/// tags, so a digest goes only when every tag on it is ours, nothing runs it (by digest or by
/// one of its tags), and no `protected` tag (the base branch's cache) names it. A `sha-*` tag
/// on the same digest as one of ours was pushed by the same run: it counts as ours.
pub fn plan_tags(
    all: &BTreeMap<String, String>,
    ours: &BTreeSet<String>,
    protected: &BTreeSet<String>,
    in_use: &ImagesInUse,
    repository: &str,
) -> TagPlan {
    let mut by_digest: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (t, d) in all {
        by_digest.entry(d).or_default().push(t);
    }
    let our_digests: BTreeSet<&str> =
        all.iter().filter(|(t, _)| ours.contains(*t) && !protected.contains(*t)).map(|(_, d)| d.as_str()).collect();
    let mut plan = TagPlan::default();
    for digest in our_digests {
        let tags = &by_digest[digest];
        let is_ours = |t: &str| !protected.contains(t) && (ours.contains(t) || t.starts_with("sha-"));
        let (mine, others): (Vec<&str>, Vec<&str>) = tags.iter().partition(|t| is_ours(t));
        let why = if !others.is_empty() {
            Some(format!("shared with {}", others.join(", ")))
        } else if let Some(users) = in_use.users_of_digest(digest) {
            Some(format!("in use by {}", users.join(", ")))
        } else {
            let users: Vec<String> = mine.iter().flat_map(|t| in_use.users_of_tag(repository, t)).collect();
            (!users.is_empty()).then(|| format!("in use by tag by {}", users.join(", ")))
        };
        match why {
            Some(why) => plan.kept.extend(mine.iter().filter(|t| ours.contains(**t)).map(|t| KeptTag {
                tag: t.to_string(),
                digest: digest.to_string(),
                why: why.clone(),
            })),
            None => plan.delete.push(DigestDeletion {
                digest: digest.to_string(),
                tags: mine.iter().map(|t| t.to_string()).collect(),
            }),
        }
    }
    plan
}

/// The short SHAs in a [`COMMITS`] annotation with `short` appended (once, newest last, at
/// most [`MAX_COMMITS`]).
pub fn commits_with(annotation: Option<&str>, short: &str) -> String {
    let mut v: Vec<&str> = annotation.unwrap_or("").split_whitespace().filter(|s| *s != short).collect();
    v.push(short);
    let start = v.len().saturating_sub(MAX_COMMITS);
    v[start..].join(" ")
}

/// A preview's age by its [`UPDATED`] annotation (else its creation), at `now`.
pub fn idle_for(
    annotations: &BTreeMap<String, String>,
    created: Option<k8s_openapi::jiff::Timestamp>,
    now: k8s_openapi::jiff::Timestamp,
) -> Option<Duration> {
    let updated = annotations.get(UPDATED).and_then(|u| u.parse::<k8s_openapi::jiff::Timestamp>().ok()).or(created)?;
    Some(Duration::from_secs(now.duration_since(updated).as_secs().max(0) as u64))
}

/// Why a run stops after taking the Lease, before Helm.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// The preview was closed while the run waited.
    #[error(transparent)]
    Closed(#[from] crate::phases::preview::OwnershipError),
    /// The preview is asleep and `[lifecycle] wake_on_push = false`.
    #[error(
        "the preview in namespace {namespace} is asleep and `[lifecycle] wake_on_push = false`: nothing was \
         deployed; wake it with `prpod wake --pr N` (or the `prpod.dev/wake` label), then run again"
    )]
    Asleep {
        /// The namespace.
        namespace: String,
    },
    /// A descendant of this run's commit is deployed already.
    #[error(
        "superseded: commit {deployed} is deployed in namespace {namespace}, and this run's commit {ours} is its \
         ancestor (an older commit of the PR): nothing was deployed (exit 6)"
    )]
    Superseded {
        /// The namespace.
        namespace: String,
        /// The commit deployed.
        deployed: String,
        /// This run's commit.
        ours: String,
        /// Exit 6.
        #[source]
        kind: crate::error::FailureKind,
    },
}

/// Under the deploy Lease, before Helm: refuses a closed preview, and a commit that is an
/// ancestor of the one deployed (superseded by ancestry, not by arrival order). `git_dir` is the
/// run's checkout; ancestry it cannot prove (the deployed commit or the history between them is
/// not in the clone cache) does not stop the run, and is returned as a note.
pub async fn check_current(
    kube: &crate::clients::kube::Kube,
    release: &crate::model::ReleaseTarget,
    sha: &str,
    git_dir: Option<&std::path::Path>,
    wake_on_push: bool,
) -> anyhow::Result<Option<String>> {
    let Some((_, ann)) = kube.namespace_meta(&release.namespace).await.at(Phase::Deploy)? else { return Ok(None) };
    if let Some(at) = ann.get(CLOSED) {
        let e = crate::phases::preview::OwnershipError::Closed { namespace: release.namespace.clone(), at: at.clone() };
        return Err(Stop::from(e).into());
    }
    let mut notes = Vec::new();
    if let Some(recorded) = ann.get(REPLICAS) {
        // Asleep: the upgrade must find the workloads at their counts (Helm's server-side apply
        // would not take `replicas` back from prpod's scale).
        if !wake_on_push {
            return Err(Stop::Asleep { namespace: release.namespace.clone() }.into());
        }
        restore_replicas(kube, &release.namespace, recorded).await.at(Phase::Deploy)?;
        notes.push(format!("woke the preview (it was asleep): replicas {recorded}"));
    }
    let Some(deployed) = ann.get(DEPLOYED_COMMIT).filter(|d| d.as_str() != sha && !sha.is_empty()) else {
        return Ok((!notes.is_empty()).then(|| notes.join("; ")));
    };
    let Some(dir) = git_dir else { return Ok((!notes.is_empty()).then(|| notes.join("; "))) };
    match crate::clients::git::ancestry::is_ancestor(dir, sha, deployed).await {
        Some(true) => Err(Stop::Superseded {
            namespace: release.namespace.clone(),
            deployed: deployed.clone(),
            ours: sha.to_string(),
            kind: crate::error::FailureKind::Superseded,
        }
        .into()),
        Some(false) => Ok((!notes.is_empty()).then(|| notes.join("; "))),
        None => {
            notes.push(format!(
                "commit {deployed} is deployed; whether it descends from this commit is unknown (not in the clone \
                 cache's history: raise `[source] depth`), so this run deploys"
            ));
            Ok(Some(notes.join("; ")))
        }
    }
}

/// prpod's previews on the cluster (namespaces with its ownership labels; one repository's
/// when `repository` is given), not counting those being deleted; and the list calls made.
pub async fn list_previews(
    kube: &crate::clients::kube::Kube,
    repository: Option<&str>,
) -> Result<(Vec<crate::clients::kube::lifecycle::NamespaceView>, u32), crate::clients::kube::KubeError> {
    use crate::phases::preview::{MANAGED_BY, REPOSITORY_ANNOTATION, REPOSITORY_LABEL, label_value};
    let mut selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    if let Some(r) = repository {
        selector.push_str(&format!(",{REPOSITORY_LABEL}={}", label_value(r)));
    }
    let (found, calls) = kube.namespaces_labelled(&selector).await?;
    // Labels alone cannot tell `acme/x.y` from `acme.x/y`: the annotation can.
    let previews = found
        .into_iter()
        .filter(|v| !v.deleting)
        .filter(|v| repository.is_none_or(|r| v.annotations.get(REPOSITORY_ANNOTATION).is_none_or(|a| a.as_str() == r)))
        .collect();
    Ok((previews, calls))
}

/// Scales each workload recorded in a [`REPLICAS`] annotation back to its count (one that is
/// gone is skipped), without waiting; returns the counts.
pub async fn restore_replicas(
    kube: &crate::clients::kube::Kube,
    namespace: &str,
    recorded: &str,
) -> Result<BTreeMap<String, u32>, crate::clients::kube::KubeError> {
    let want: BTreeMap<String, u32> = serde_json::from_str(recorded).unwrap_or_default();
    for (w, n) in &want {
        let (kind, name) = w.split_once('/').unwrap_or(("Deployment", w));
        match kube.scale_workload(namespace, kind, name, *n).await {
            // Removed since (a deploy changed the chart): nothing to restore.
            Err(e) if e.code() == Some(404) => {}
            other => other?,
        }
    }
    Ok(want)
}

/// After a verified deploy (`verified`): records the commit as deployed, and when, on the
/// namespace, for superseding, teardown's `sha-*` tags and gc's age; the preview is awake (Helm
/// put the chart's replica counts back). After a deploy that was rolled back: records only that
/// the commit's tags are the PR's.
pub async fn record_deployed(
    kube: &crate::clients::kube::Kube,
    namespace: &str,
    sha: &str,
    verified: bool,
) -> Result<(), crate::clients::kube::KubeError> {
    let commits = kube.namespace_meta(namespace).await?.and_then(|(_, a)| a.get(COMMITS).cloned());
    let short = &sha[..sha.len().min(12)];
    let mut ann = BTreeMap::from([(COMMITS.to_string(), Some(commits_with(commits.as_deref(), short)))]);
    let mut labels = BTreeMap::new();
    if verified {
        ann.insert(DEPLOYED_COMMIT.to_string(), Some(sha.to_string()));
        ann.insert(UPDATED.to_string(), Some(k8s_openapi::jiff::Timestamp::now().to_string()));
        ann.insert(REPLICAS.to_string(), None);
        labels.insert(ASLEEP.to_string(), None);
        labels.insert(WAKE.to_string(), None);
    }
    kube.patch_namespace_meta(namespace, &labels, &ann).await
}

/// A preview's place in its life, for `prpod status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LifecycleStatus {
    /// `awake` or `asleep`.
    pub state: String,
    /// When it was last deployed (RFC 3339), when known.
    pub updated: Option<String>,
    /// When gc will put it to sleep (`sleep_after` after the update), if it will.
    pub sleeps_at: Option<String>,
    /// When gc will collect it (the TTL after the update), if it will.
    pub collected_at: Option<String>,
    /// Labelled `prpod.dev/keep`: never slept nor collected by age.
    pub kept: bool,
}

impl LifecycleStatus {
    /// One line for people.
    pub fn summary(&self) -> String {
        let mut s = self.state.clone();
        if let Some(u) = &self.updated {
            s.push_str(&format!(", updated {u}"));
        }
        if self.kept {
            s.push_str(", kept (prpod.dev/keep)");
        }
        if let Some(t) = &self.sleeps_at {
            s.push_str(&format!(", sleeps at {t}"));
        }
        if let Some(t) = &self.collected_at {
            s.push_str(&format!(", collected at {t}"));
        }
        s
    }
}

/// Where the preview with these `labels` and `annotations` (created at `created`) stands.
pub fn status_of(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    created: Option<k8s_openapi::jiff::Timestamp>,
    config: &LifecycleConfig,
) -> LifecycleStatus {
    let updated = annotations.get(UPDATED).and_then(|u| u.parse::<k8s_openapi::jiff::Timestamp>().ok()).or(created);
    let asleep = labels.get(ASLEEP).map(String::as_str) == Some("true");
    let kept = labels.get(KEEP).is_some_and(|k| k != "false");
    let ttl = labels.get(TTL).and_then(|t| parse_duration(t).ok()).or(config.ttl);
    let at = |d: Option<Duration>| {
        let (u, d) = (updated?, d?);
        u.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(d.as_secs() as i64)).ok().map(|t| t.to_string())
    };
    LifecycleStatus {
        state: if asleep { "asleep" } else { "awake" }.into(),
        updated: updated.map(|u| u.to_string()),
        sleeps_at: if asleep || kept { None } else { at(config.sleep_after) },
        collected_at: if kept { None } else { at(ttl) },
        kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_digest_goes_only_when_all_its_tags_are_ours_and_nothing_runs_it() {
        let all: BTreeMap<String, String> = [
            ("pr-7", "sha256:a"),
            ("sha-aaaaaaaaaaaa", "sha256:a"),
            ("br-x", "sha256:a"),
            ("cache-pr-7", "sha256:c"),
            ("cache-br-main", "sha256:c2"),
            ("sha-bbbbbbbbbbbb", "sha256:b"),
            ("main", "sha256:b"),
            ("sha-dddddddddddd", "sha256:d"),
            ("pr-8", "sha256:e"),
        ]
        .iter()
        .map(|(t, d)| (t.to_string(), d.to_string()))
        .collect();
        let ours = set(&["pr-7", "br-x", "cache-pr-7", "sha-bbbbbbbbbbbb", "sha-dddddddddddd"]);
        let mut in_use = ImagesInUse::default();
        in_use.digests.insert("sha256:d".into(), vec!["Pod other/web".into()]);
        let plan = plan_tags(&all, &ours, &set(&["cache-br-main"]), &in_use, "acme/web");
        let deleted: Vec<&str> = plan.delete.iter().map(|d| d.digest.as_str()).collect();
        assert_eq!(deleted, ["sha256:a", "sha256:c"]);
        assert_eq!(plan.delete[0].tags, ["br-x", "pr-7", "sha-aaaaaaaaaaaa"]);
        let kept: Vec<(&str, &str)> = plan.kept.iter().map(|k| (k.tag.as_str(), k.why.as_str())).collect();
        assert_eq!(kept, [("sha-bbbbbbbbbbbb", "shared with main"), ("sha-dddddddddddd", "in use by Pod other/web")]);
        // pr-8 is not ours: never in the plan.
        assert!(!plan.delete.iter().any(|d| d.tags.contains(&"pr-8".to_string())));
    }

    #[test]
    fn durations_and_commits() {
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(format_duration(Duration::from_secs(8 * 3600)), "8h");
        assert!(parse_duration("0").is_err() && parse_duration("7y").is_err());
        assert_eq!(commits_with(Some("a b"), "a"), "b a");
        assert_eq!(commits_with(None, "c"), "c");
    }
}
