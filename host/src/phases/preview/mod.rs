//! One preview's identity on a shared cluster: its namespace, the labels that say whose it is,
//! and the ownership check that deploy (and later teardown) run before writing anything there.
//!
//! A cluster is shared by many repositories and pull requests. prpod touches a namespace only
//! when its labels say it is this repository's and this PR's preview:
//!
//! * absent: prpod creates it, with the labels ([`labels`]) and annotations ([`annotations`]);
//! * labelled as prpod's preview of the same repository and PR (or branch): proceed;
//! * anything else — another repository's preview, another PR's, a namespace prpod did not
//!   create — is refused (exit 2) naming its owner. `[deploy] adopt_namespace = true` lets prpod
//!   adopt a namespace it did not create (labelling it), provided it holds no Helm release of
//!   the preview's name that prpod did not make; another preview's namespace is never adopted.
//! * `default`, `kube-system`, `kube-public` and `kube-node-lease` are never a preview's,
//!   whatever a tag-policy plugin returns ([`check_target`]).
//!
//! The preview's deploy lock ([`lock`]: one Lease per release, around deploy and teardown) lives
//! here too: identity and lock are the one concern deploy, verify and teardown share.

pub mod lock;

use std::collections::BTreeMap;

use crate::clients::kube::{Kube, KubeError};
use crate::error::ResultExt;
use crate::model::Phase;
use crate::model::{PrContext, ReleaseTarget};

/// Namespaces no preview may use, adopted or not.
pub const RESERVED_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The label prpod's namespaces carry (`app.kubernetes.io/managed-by=prpod`).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "prpod");
/// The label naming the repository (`owner.name`: labels allow no `/`).
pub const REPOSITORY_LABEL: &str = "prpod.dev/repository";
/// The label naming the pull request number.
pub const PR_LABEL: &str = "prpod.dev/pr";
/// The label naming the release.
pub const RELEASE_LABEL: &str = "prpod.dev/release";
/// The annotation holding the repository slug exactly (`owner/name`).
pub const REPOSITORY_ANNOTATION: &str = "prpod.dev/repository";

/// A namespace prpod may not use for this preview.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// A namespace no preview may use.
    #[error(
        "namespace {namespace} is reserved for the cluster (default, kube-system, kube-public, kube-node-lease): \
         no preview is deployed there, whatever the tag-policy returns; fix the tag-policy plugin's `release`"
    )]
    Reserved {
        /// The namespace.
        namespace: String,
    },
    /// Another preview's namespace.
    #[error(
        "namespace {namespace} belongs to {owner} (prpod's labels say so), not to {us}: refusing to touch it. \
         Two previews got the same name: give the tag-policy names that include the repository (the default \
         does: <repo>-pr-<n>)"
    )]
    OtherPreview {
        /// The namespace.
        namespace: String,
        /// Whose preview it is.
        owner: String,
        /// This run's preview.
        us: String,
    },
    /// A namespace prpod did not create.
    #[error(
        "namespace {namespace} exists and was not created by prpod ({owner}): refusing to deploy {us} into it. \
         Choose another namespace in the tag-policy, or set `[deploy] adopt_namespace = true` in the operator's \
         config to adopt it"
    )]
    NotPrpods {
        /// The namespace.
        namespace: String,
        /// What its labels say instead.
        owner: String,
        /// This run's preview.
        us: String,
    },
    /// The PR's preview was closed (torn down, or being torn down).
    #[error(
        "the preview in namespace {namespace} was closed at {at} (teardown ran: the PR is closed): refusing to \
         deploy into it; reopen the PR after the teardown finished to get a new preview"
    )]
    Closed {
        /// The namespace.
        namespace: String,
        /// When it was closed.
        at: String,
    },
    /// A Helm release prpod did not make, in a namespace being adopted.
    #[error(
        "namespace {namespace} holds a Helm release {release} that prpod did not make: refusing to adopt the \
         namespace and upgrade it; uninstall it, or choose another release name in the tag-policy"
    )]
    ForeignRelease {
        /// The namespace.
        namespace: String,
        /// The release.
        release: String,
    },
}

/// `owner/name` as a label value (`owner.name`: labels allow no `/`), at most 63 characters.
pub fn label_value(s: &str) -> String {
    let v: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '.' }).collect();
    let v: String = v.chars().take(63).collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// Labels prpod puts on a preview's namespace: whose it is, so deploy, teardown and people can
/// tell.
pub fn labels(ctx: &PrContext, release: &ReleaseTarget) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (RELEASE_LABEL.to_string(), release.name.clone()),
        (REPOSITORY_LABEL.to_string(), label_value(&ctx.repository)),
    ]);
    if let Some(n) = ctx.number {
        l.insert(PR_LABEL.into(), n.to_string());
    }
    l
}

/// Annotations on the namespace: the values labels cannot hold exactly.
pub fn annotations(ctx: &PrContext) -> BTreeMap<String, String> {
    BTreeMap::from([
        (REPOSITORY_ANNOTATION.to_string(), ctx.repository.clone()),
        ("prpod.dev/branch".to_string(), ctx.branch.clone()),
        ("prpod.dev/commit".to_string(), ctx.sha.clone()),
    ])
}

/// Refuses a release target no preview may have (a reserved namespace), before anything runs.
pub fn check_target(release: &ReleaseTarget) -> Result<(), OwnershipError> {
    if RESERVED_NAMESPACES.contains(&release.namespace.as_str()) {
        return Err(OwnershipError::Reserved { namespace: release.namespace.clone() });
    }
    Ok(())
}

/// Who a namespace's labels say it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This repository's preview of this PR (or branch).
    Us,
    /// prpod's preview of another repository or PR: a description (`acme/other PR #1`).
    OtherPreview(String),
    /// Not a prpod preview: what it is (`no prpod labels`).
    NotPrpods(String),
}

/// Whose the namespace with `labels` and `annotations` is, seen from this run.
pub fn owner_of(
    ctx: &PrContext,
    release: &ReleaseTarget,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Owner {
    if labels.get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
        let managed = labels.get(MANAGED_BY.0).map(|m| format!("managed by {m}"));
        return Owner::NotPrpods(managed.unwrap_or_else(|| "no prpod labels".into()));
    }
    let repository = annotations
        .get(REPOSITORY_ANNOTATION)
        .cloned()
        .or_else(|| labels.get(REPOSITORY_LABEL).cloned())
        .unwrap_or_else(|| "an unknown repository".into());
    let same_repo = annotations
        .get(REPOSITORY_ANNOTATION)
        .map_or_else(|| labels.get(REPOSITORY_LABEL) == Some(&label_value(&ctx.repository)), |a| *a == ctx.repository);
    let pr = labels.get(PR_LABEL).cloned();
    let same_pr =
        pr == ctx.number.map(|n| n.to_string()) && labels.get(RELEASE_LABEL).is_none_or(|r| *r == release.name);
    if same_repo && same_pr {
        return Owner::Us;
    }
    let what = match pr {
        Some(n) => format!("{repository} PR #{n}"),
        None => format!("{repository} (release {})", labels.get(RELEASE_LABEL).map_or("?", String::as_str)),
    };
    Owner::OtherPreview(what)
}

/// The refusal an owner other than this preview earns; `None` for ours, and for a namespace
/// prpod did not create when the operator lets it be adopted.
fn refusal(ctx: &PrContext, namespace: &str, owner: Owner, adopt: bool) -> Option<OwnershipError> {
    let (namespace, us) = (namespace.to_string(), describe(ctx));
    match owner {
        Owner::Us => None,
        Owner::OtherPreview(owner) => Some(OwnershipError::OtherPreview { namespace, owner, us }),
        Owner::NotPrpods(owner) if !adopt => Some(OwnershipError::NotPrpods { namespace, owner, us }),
        Owner::NotPrpods(_) => None,
    }
}

fn describe(ctx: &PrContext) -> String {
    match ctx.number {
        Some(n) => format!("{} PR #{n}", ctx.repository),
        None => format!("{} branch {}", ctx.repository, ctx.branch),
    }
}

/// What [`claim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The namespace was created.
    Created,
    /// It was already this preview's.
    Ours,
    /// It existed without prpod's labels and was adopted (`adopt_namespace`).
    Adopted,
}

/// Makes the preview's namespace this run's, or refuses: the check every write to the cluster
/// follows. Creates it when absent; keeps its labels current when it is ours (the commit
/// annotation changes every run).
pub async fn claim(kube: &Kube, ctx: &PrContext, release: &ReleaseTarget, adopt: bool) -> anyhow::Result<Claimed> {
    check_target(release)?;
    let ns = &release.namespace;
    let (labels, annotations) = (labels(ctx, release), annotations(ctx));
    // Twice at most: a create that loses a race re-reads what the winner made.
    for _ in 0..2 {
        let Some((have, have_ann)) = kube.namespace_meta(ns).await.at(Phase::Deploy)? else {
            if kube.create_namespace(ns, &labels, &annotations).await.at(Phase::Deploy)? {
                return Ok(Claimed::Created);
            }
            continue;
        };
        let owner = owner_of(ctx, release, &have, &have_ann);
        let ours = owner == Owner::Us;
        if let Some(refused) = refusal(ctx, ns, owner, adopt) {
            return Err(refused.into());
        }
        if let Some(at) = have_ann.get(crate::phases::lifecycle::CLOSED) {
            return Err(OwnershipError::Closed { namespace: ns.clone(), at: at.clone() }.into());
        }
        // Adopting: only where no Helm release of this name was made by someone else.
        if !ours && kube.helm_release_exists(ns, &release.name).await.at(Phase::Deploy)? {
            return Err(OwnershipError::ForeignRelease { namespace: ns.clone(), release: release.name.clone() }.into());
        }
        // The commit annotation changes every run: write only what differs from what was read.
        let current = labels.iter().all(|(k, v)| have.get(k) == Some(v))
            && annotations.iter().all(|(k, v)| have_ann.get(k) == Some(v));
        if !current {
            kube.label_namespace(ns, &labels, &annotations).await.at(Phase::Deploy)?;
        }
        return Ok(if ours { Claimed::Ours } else { Claimed::Adopted });
    }
    anyhow::bail!("namespace {ns} kept changing while prpod created it; run again")
}

/// The ownership check alone, reading only (for `plan`): `Ok(None)` when the namespace is absent
/// or ours, the refusal otherwise; `Err` when the cluster cannot say.
pub async fn check(
    kube: &Kube,
    ctx: &PrContext,
    release: &ReleaseTarget,
    adopt: bool,
) -> Result<Option<OwnershipError>, KubeError> {
    let ns = &release.namespace;
    let Some((have, have_ann)) = kube.namespace_meta(ns).await? else { return Ok(None) };
    Ok(refusal(ctx, ns, owner_of(ctx, release, &have, &have_ann), adopt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(repo: &str, number: Option<u64>) -> PrContext {
        PrContext {
            branch: "b".into(),
            sha: "0".repeat(40),
            ..PrContext::manual(format!("https://git.example/{repo}.git"), repo.into(), number)
        }
    }

    fn target(name: &str) -> ReleaseTarget {
        ReleaseTarget { name: name.into(), namespace: name.into() }
    }

    #[test]
    fn owner_is_told_from_the_labels() {
        let (a, t) = (ctx("acme/hello-web", Some(1)), target("pr-1"));
        let (l, an) = (labels(&a, &t), annotations(&a));
        assert_eq!(owner_of(&a, &t, &l, &an), Owner::Us);
        // Another repository's PR #1 under the same name.
        let other = ctx("acme/other", Some(1));
        assert_eq!(owner_of(&other, &t, &l, &an), Owner::OtherPreview("acme/hello-web PR #1".into()));
        // Another PR of the same repository.
        assert_eq!(
            owner_of(&ctx("acme/hello-web", Some(2)), &t, &l, &an),
            Owner::OtherPreview("acme/hello-web PR #1".into())
        );
        // A namespace nobody labelled.
        assert!(matches!(owner_of(&a, &t, &BTreeMap::new(), &BTreeMap::new()), Owner::NotPrpods(_)));
        // Labels alone (annotations stripped) still tell the repository.
        assert_eq!(owner_of(&a, &t, &l, &BTreeMap::new()), Owner::Us);
        // `acme/x.y` and `acme.x/y` share a label value: the annotation tells them apart.
        let (p, q) = (ctx("acme/x.y", Some(3)), ctx("acme.x/y", Some(3)));
        assert_eq!(label_value(&p.repository), label_value(&q.repository));
        assert!(matches!(owner_of(&q, &t, &labels(&p, &t), &annotations(&p)), Owner::OtherPreview(_)));
    }

    #[test]
    fn label_values() {
        assert_eq!(label_value("acme/web"), "acme.web");
        assert_eq!(label_value("Acme/Ünï"), "Acme..n");
    }

    #[test]
    fn reserved_namespaces_are_refused_whatever_the_policy_says() {
        for ns in RESERVED_NAMESPACES {
            let e = check_target(&ReleaseTarget { name: "x".into(), namespace: ns.into() }).unwrap_err();
            assert!(e.to_string().contains(ns), "{e}");
        }
        assert!(check_target(&target("web-pr-1")).is_ok());
    }
}
