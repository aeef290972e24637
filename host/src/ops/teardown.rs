//! `prpod teardown`: one PR's preview removed, leaving nothing and deleting nothing in use.
//!
//! In order, each step safe to repeat (a teardown killed half-way is finished by the next):
//! 1. the ownership check: the namespace must be this repository's and this PR's preview
//!    ([`preview::owner_of`]); anything else is refused naming its owner;
//! 2. the namespace is annotated [`crate::phases::lifecycle::CLOSED`], so a run that starts now refuses;
//! 3. the deploy Lease is taken ([`DeployLock`]), so teardown never races a run of the PR;
//! 4. `helm uninstall`;
//! 5. the PR's tags: primary, branch, cache (never the base branch's), and the `sha-*` tags of
//!    the commits it deployed. A registry deletes a digest with every tag on it, so a digest
//!    goes only when all its tags are the PR's and no workload in any namespace readable runs it
//!    ([`crate::phases::lifecycle::plan_tags`]); kept tags are reported with the reason;
//! 6. the namespace is deleted (last: its annotations are what the next teardown reads).
//!
//! `dry_run` reads everything and writes nothing: the report lists what would go and why each
//! kept thing stays.

use std::time::Instant;

use serde::Serialize;

use crate::clients::kube::Kube;
use crate::clients::kube::inuse::ImagesInUse;
use crate::config::Config;
use crate::error::ResultExt;
use crate::model::{PrContext, ReleaseTarget};
use crate::phases::lifecycle::{DigestDeletion, KeptTag};
use crate::phases::preview::lock::DeployLock;
use crate::phases::{preview, teardown};
use crate::plugins::{PluginHost, World};
use crate::report::Reporter;

pub use crate::phases::teardown::{DistributionTags, TagDeleter, default_deleter};

/// What to tear down.
pub struct TeardownRequest {
    /// The PR: repository and number (branch and SHA are read from the namespace when empty).
    pub ctx: PrContext,
    /// The release, instead of asking the tag-policy.
    pub release: Option<ReleaseTarget>,
    /// Read everything, write nothing; report what would be done.
    pub dry_run: bool,
    /// Where the tags are deleted; `None`: `[image] repository` on its distribution registry
    /// (no tags are deleted when that is unset either).
    pub tags: Option<Box<dyn TagDeleter>>,
}

/// What a teardown did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TeardownReport {
    /// The release and namespace.
    pub release: Option<ReleaseTarget>,
    /// Nothing was written.
    pub dry_run: bool,
    /// `deleted`, `absent`, `deleting` (a previous teardown's), or `would delete`.
    pub namespace: String,
    /// `uninstalled`, `absent`, or `would uninstall`.
    pub helm_release: String,
    /// The image repository whose tags were considered.
    pub repository: Option<String>,
    /// Digests deleted (or that would be), with their tags.
    pub deleted: Vec<DigestDeletion>,
    /// The PR's tags that stay, and why.
    pub kept: Vec<KeptTag>,
    /// What could not be read while looking for images in use (those namespaces were not seen).
    pub unreadable: Vec<String>,
    /// Notes (why a step was skipped).
    pub notes: Vec<String>,
    /// Kubernetes API calls made.
    pub kube_calls: u32,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl TeardownReport {
    /// The report for people, one line each.
    pub fn lines(&self) -> Vec<String> {
        let would = if self.dry_run { "would delete" } else { "deleted" };
        let mut out = Vec::new();
        if let Some(r) = &self.release {
            out.push(format!("release   {} in namespace {}: {}", r.name, r.namespace, self.helm_release));
            out.push(format!("namespace {}: {}", r.namespace, self.namespace));
        }
        for d in &self.deleted {
            out.push(format!("{would} {} ({})", d.digest, d.tags.join(", ")));
        }
        for k in &self.kept {
            out.push(format!("kept    {} ({}): {}", k.tag, k.digest, k.why));
        }
        out.extend(self.unreadable.iter().map(|u| format!("unread  {u}")));
        out.extend(self.notes.iter().map(|n| format!("note    {n}")));
        out.push(format!("{:.1}s, {} Kubernetes API calls", self.seconds, self.kube_calls));
        out
    }
}

/// The release of the PR: given, or the tag-policy's.
async fn release_of(config: &Config, req: &TeardownRequest) -> anyhow::Result<ReleaseTarget> {
    let release = match &req.release {
        Some(r) => r.clone(),
        None => {
            let plugin = PluginHost::shared()?
                .load(&config.plugin_ref(World::TagPolicy))?
                .with_limits(config.limits_for(World::TagPolicy));
            plugin.release(&req.ctx).await?
        }
    };
    preview::check_target(&release)?;
    Ok(release)
}

/// Tears down one PR's preview (see the module docs).
pub async fn teardown(config: &Config, req: TeardownRequest, reporter: &Reporter) -> anyhow::Result<TeardownReport> {
    let kube = Kube::connect(&config.deploy.kube_target()).await.outside_line()?;
    teardown_with(config, &kube, req, None, reporter).await
}

/// `prpod teardown`: the preview of the PR `flags` name (the tag-policy names its release),
/// removed; every deploy lock this process dropped is released before it returns.
pub async fn teardown_pr(
    config: &Config,
    flags: &crate::phases::context::ContextFlags,
    dry_run: bool,
    env: &crate::config::Env,
    reporter: &Reporter,
) -> anyhow::Result<TeardownReport> {
    let (release, ctx) = super::status::release_target(None, None, flags, config, env).await?;
    let ctx = ctx.ok_or_else(|| anyhow::anyhow!("teardown needs the PR: pass --repo-url and --pr"))?;
    let req = TeardownRequest { ctx, release: Some(release), dry_run, tags: None };
    let report = teardown(config, req, reporter).await;
    crate::phases::preview::lock::finish_releases().await;
    report
}

/// [`teardown`] on a connected cluster, with the images in use when the caller listed them
/// already (gc tears down many previews through one connection and one listing).
pub async fn teardown_with(
    config: &Config,
    kube: &Kube,
    mut req: TeardownRequest,
    in_use: Option<&ImagesInUse>,
    _reporter: &Reporter,
) -> anyhow::Result<TeardownReport> {
    let started = Instant::now();
    let release = release_of(config, &req).await?;
    let ns = release.namespace.clone();
    let mut report =
        TeardownReport { release: Some(release.clone()), dry_run: req.dry_run, ..TeardownReport::default() };

    // 1. Whose is it?
    report.kube_calls += 1;
    let view = teardown::find_preview(kube, &mut req.ctx, &release, "teardown").await?;
    let commits = view.as_ref().map(teardown::recorded_commits).unwrap_or_default();
    let live = view.as_ref().is_some_and(|v| !v.deleting);

    // 2 + 3. Closed, then the Lease (a namespace being deleted takes no new Lease).
    let mut lock = None;
    report.namespace = match &view {
        None => "absent",
        Some(v) if v.deleting => "deleting",
        Some(_) if req.dry_run => "would delete",
        Some(_) => {
            teardown::mark_closed(kube, &ns).await.outside_line()?;
            lock = Some(DeployLock::acquire(kube, &req.ctx, &release, config.deploy.timeout).await.outside_line()?);
            report.kube_calls += 3;
            "closed"
        }
    }
    .into();

    // 4. The release.
    report.helm_release = if live {
        report.kube_calls += 1;
        teardown::uninstall(&config.deploy, kube, &release, req.dry_run).await?
    } else {
        "absent"
    }
    .into();

    // 5. The tags.
    let deleter = match req.tags.take() {
        Some(d) => Some(d),
        None => match default_deleter(config)? {
            Ok(d) => Some(Box::new(d) as Box<dyn TagDeleter>),
            Err(why) => {
                report.notes.push(why);
                None
            }
        },
    };
    if let Some(deleter) = deleter {
        report.repository = Some(deleter.repository());
        let plan = teardown::plan_pr_tags(config, &req.ctx, &commits, kube, &ns, in_use, deleter.as_ref()).await?;
        report.kube_calls += plan.kube_calls;
        report.unreadable.extend(plan.unreadable);
        report.kept.extend(plan.kept);
        if !req.dry_run {
            teardown::delete_tags(deleter.as_ref(), &plan.delete).await?;
        }
        report.deleted = plan.delete;
    }

    // 6. The namespace, last.
    if live && !req.dry_run {
        report.kube_calls += 1;
        teardown::delete_namespace(kube, &ns).await.outside_line()?;
        report.namespace = "deleted".into();
    }
    if let Some(l) = lock {
        // Its Lease went with the namespace: releasing finds nothing, which is fine.
        report.kube_calls += 2;
        l.release().await;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
