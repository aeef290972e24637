//! `prpod teardown`: one PR's preview removed, leaving nothing and deleting nothing in use.
//!
//! In order, each step safe to repeat (a teardown killed half-way is finished by the next):
//! 1. the ownership check: the namespace must be this repository's and this PR's preview
//!    ([`preview::owner_of`]); anything else is refused naming its owner;
//! 2. the namespace is annotated [`lifecycle::CLOSED`], so a run that starts now refuses;
//! 3. the deploy Lease is taken ([`DeployLock`]), so teardown never races a run of the PR;
//! 4. `helm uninstall`;
//! 5. the PR's tags: primary, branch, cache (never the base branch's), and the `sha-*` tags of
//!    the commits it deployed. A registry deletes a digest with every tag on it, so a digest
//!    goes only when all its tags are the PR's and no workload in any namespace readable runs it
//!    ([`lifecycle::plan_tags`]); kept tags are reported with the reason;
//! 6. the namespace is deleted (last: its annotations are what the next teardown reads).
//!
//! `dry_run` reads everything and writes nothing: the report lists what would go and why each
//! kept thing stays.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::clients::helm::Helm;
use crate::clients::kube::Kube;
use crate::clients::kube::inuse::ImagesInUse;
use crate::clients::registry::delete::Deleted;
use crate::clients::registry::{ImageName, RegistryClient};
use crate::config::Config;
use crate::model::{PrContext, ReleaseTarget};
use crate::phases::lifecycle::{self, DigestDeletion, KeptTag};
use crate::phases::lock::DeployLock;
use crate::phases::preview::{self, Owner};
use crate::plugins::{PluginHost, World};
use crate::report::Reporter;
use crate::secret::Secret;

/// Where a PR's tags live and how they are deleted: distribution's manifest API
/// ([`DistributionTags`]), or GHCR's package versions (the GitHub client's implementation).
#[async_trait::async_trait]
pub trait TagDeleter: Send + Sync {
    /// The repository, for messages (`ghcr.io/acme/web`).
    fn repository(&self) -> String;
    /// Every tag of the repository and the digest it points at.
    async fn tag_digests(&self) -> anyhow::Result<BTreeMap<String, String>>;
    /// Deletes `digest` (and with it every one of `tags`, which are all the tags on it);
    /// `Ok(false)` when it was gone already.
    async fn delete_digest(&self, digest: &str, tags: &[String]) -> anyhow::Result<bool>;
    /// When the image `digest` was created (RFC 3339), for gc's `keep_tags_for`; `None` when
    /// unknown (the image is then kept).
    async fn created(&self, _digest: &str) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
}

/// A distribution (OCI) registry: `DELETE /v2/<name>/manifests/<digest>`.
pub struct DistributionTags {
    /// The client, with credentials that may delete.
    pub client: RegistryClient,
    /// The repository.
    pub name: ImageName,
}

#[async_trait::async_trait]
impl TagDeleter for DistributionTags {
    fn repository(&self) -> String {
        self.name.to_string()
    }

    async fn tag_digests(&self) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(self.client.tag_digests(&self.name).await?)
    }

    async fn delete_digest(&self, digest: &str, _tags: &[String]) -> anyhow::Result<bool> {
        Ok(self.client.delete_manifest(&self.name, digest).await? == Deleted::Deleted)
    }

    async fn created(&self, digest: &str) -> anyhow::Result<Option<String>> {
        Ok(self.client.image_created(&self.name, digest).await?)
    }
}

impl DistributionTags {
    /// The repository of `[image] repository`, with `[registry]`'s credentials (and
    /// `password`, from `--registry-password-stdin`).
    pub fn from_config(config: &Config, password: Option<Secret>) -> anyhow::Result<Option<DistributionTags>> {
        let Some(repo) = config.image.repository.as_deref() else { return Ok(None) };
        let name = ImageName::parse(repo).context("`image.repository` is not usable")?.value;
        let registry = crate::phases::registry_config(config);
        let creds = registry.credentials(name.api_host(), password)?;
        Ok(Some(DistributionTags { client: RegistryClient::new(registry.options()?, creds)?, name }))
    }
}

/// The tag deleter of `[image] repository` on its distribution registry, or why there is none
/// (no repository; GHCR, whose package versions the GitHub client deletes).
pub fn default_deleter(config: &Config) -> anyhow::Result<Result<DistributionTags, String>> {
    Ok(match DistributionTags::from_config(config, None)? {
        Some(d) if d.name.api_host() == "ghcr.io" => Err(format!(
            "{}: GHCR deletes tags through the GitHub Packages API (the GitHub client's TagDeleter, used by \
             `prpod event`); no tags were deleted here",
            d.name
        )),
        Some(d) => Ok(d),
        None => Err("no `[image] repository`: no tags were considered".into()),
    })
}

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
    let kube = Kube::connect(&config.deploy.kube_target()).await?;
    teardown_with(config, &kube, req, None, reporter).await
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
    let view = kube.namespace_view(&ns).await?;
    let mut commits = Vec::new();
    if let Some(v) = &view {
        match preview::owner_of(&req.ctx, &release, &v.labels, &v.annotations) {
            Owner::Us => {}
            Owner::OtherPreview(owner) | Owner::NotPrpods(owner) => anyhow::bail!(
                "namespace {ns} belongs to {owner}, not to {} PR #{}: teardown refuses to touch it (nothing was \
                 changed); tear it down as its owner, or check --repo-url and --pr",
                req.ctx.repository,
                req.ctx.number.map_or("?".into(), |n| n.to_string())
            ),
        }
        // The branch and commits the preview recorded name its tags.
        if req.ctx.branch.is_empty()
            && let Some(b) = v.annotations.get("prpod.dev/branch")
        {
            req.ctx.branch = b.clone();
        }
        if req.ctx.sha.is_empty()
            && let Some(s) = v.annotations.get(lifecycle::DEPLOYED_COMMIT).or(v.annotations.get("prpod.dev/commit"))
        {
            req.ctx.sha = s.clone();
        }
        commits = v
            .annotations
            .get(lifecycle::COMMITS)
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
    }

    // 2 + 3. Closed, then the Lease (a namespace being deleted takes no new Lease).
    let mut lock = None;
    match &view {
        Some(v) if v.deleting => report.namespace = "deleting".into(),
        Some(_) if req.dry_run => report.namespace = "would delete".into(),
        Some(_) => {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            report.kube_calls += 1;
            kube.patch_namespace_meta(
                &ns,
                &BTreeMap::new(),
                &BTreeMap::from([(lifecycle::CLOSED.to_string(), Some(now))]),
            )
            .await?;
            report.kube_calls += 2;
            lock = Some(DeployLock::acquire(kube, &req.ctx, &release, config.deploy.timeout).await?);
        }
        None => report.namespace = "absent".into(),
    }

    // 4. The release.
    let live = view.as_ref().is_some_and(|v| !v.deleting);
    report.kube_calls += u32::from(live);
    let has_release = live && kube.helm_release_exists(&ns, &release.name).await?;
    report.helm_release = match (has_release, req.dry_run) {
        (false, _) => "absent".into(),
        (true, true) => "would uninstall".into(),
        (true, false) => {
            let helm = Helm::detect(&config.deploy.helm, config.deploy.kube_target()).await?;
            helm.uninstall(&release.name, &ns, config.deploy.timeout).await?;
            "uninstalled".into()
        }
    };

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
    match deleter {
        None => {}
        Some(deleter) => {
            report.repository = Some(deleter.repository());
            let plan =
                plan_pr_tags(config, &req.ctx, &commits, kube, &ns, in_use, deleter.as_ref(), &mut report).await?;
            for d in &plan {
                if !req.dry_run {
                    deleter.delete_digest(&d.digest, &d.tags).await.with_context(|| {
                        format!("failed to delete {} ({}) from {}", d.digest, d.tags.join(", "), deleter.repository())
                    })?;
                }
            }
            report.deleted = plan;
        }
    }

    // 6. The namespace, last.
    if view.as_ref().is_some_and(|v| !v.deleting) && !req.dry_run {
        report.kube_calls += 1;
        kube.delete_namespace(&ns).await?;
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

/// The PR's tags as the tag-policy names them (with the `sha-*` of every commit recorded), the
/// base branch's cache protected, and the decision per digest.
#[allow(clippy::too_many_arguments)]
async fn plan_pr_tags(
    config: &Config,
    ctx: &PrContext,
    commits: &[String],
    kube: &Kube,
    ns: &str,
    in_use: Option<&ImagesInUse>,
    deleter: &dyn TagDeleter,
    report: &mut TeardownReport,
) -> anyhow::Result<Vec<DigestDeletion>> {
    let mut ctx = ctx.clone();
    if ctx.sha.len() < 7 {
        // The tag-policy wants a commit; none is known (the namespace is gone): the primary,
        // branch and cache tags do not depend on it.
        ctx.sha = "0".repeat(40);
    }
    let repository = deleter.repository();
    let plugin = PluginHost::shared()?
        .load(&config.plugin_ref(World::TagPolicy))?
        .with_limits(config.limits_for(World::TagPolicy));
    let tags = plugin.compute_tags(&ctx, &repository).await?;
    let mut ours: BTreeSet<String> = std::iter::once(tags.primary.clone())
        .chain(tags.extra.iter().cloned())
        .chain(tags.cache_to.iter().cloned())
        .collect();
    ours.extend(commits.iter().map(|c| format!("sha-{c}")));
    ours.remove(&format!("sha-{}", &"0".repeat(12)));
    let protected: BTreeSet<String> =
        tags.cache_from.iter().filter(|t| Some(*t) != tags.cache_to.as_ref()).cloned().collect();
    let (all, in_use) = tokio::try_join!(deleter.tag_digests(), async {
        match in_use {
            // The preview's own pods are going with it.
            Some(u) => Ok(u.without_namespace(ns)),
            None => kube.images_in_use(Some(ns)).await.map_err(anyhow::Error::from),
        }
    })?;
    report.kube_calls += in_use.calls;
    report.unreadable.extend(in_use.unreadable.iter().cloned());
    let path = repository.split_once('/').map_or(repository.as_str(), |(_, p)| p);
    let plan = lifecycle::plan_tags(&all, &ours, &protected, &in_use, path);
    report.kept.extend(plan.kept);
    Ok(plan.delete)
}
