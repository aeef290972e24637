//! The teardown phase: the steps `prpod teardown` (and gc, for each preview it collects) takes on
//! the cluster and the registry, each safe to repeat. The order and the report are
//! [`crate::ops::teardown`]'s; whose a namespace is, [`crate::phases::preview`]'s; which tags
//! may go, [`lifecycle::plan_tags`].

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;

use crate::clients::helm::Helm;
use crate::clients::kube::inuse::ImagesInUse;
use crate::clients::kube::lifecycle::NamespaceView;
use crate::clients::kube::{Kube, KubeError};
use crate::clients::registry::delete::Deleted;
use crate::clients::registry::{ImageName, RegistryClient};
use crate::config::Config;
use crate::error::ResultExt;
use crate::model::{PrContext, ReleaseTarget};
use crate::phases::lifecycle::{self, DigestDeletion, KeptTag};
use crate::phases::preview::{self, Owner};
use crate::plugins::{PluginHost, World};
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
        Ok(self.client.tag_digests(&self.name).await.outside_line()?)
    }

    async fn delete_digest(&self, digest: &str, _tags: &[String]) -> anyhow::Result<bool> {
        Ok(self.client.delete_manifest(&self.name, digest).await.outside_line()? == Deleted::Deleted)
    }

    async fn created(&self, digest: &str) -> anyhow::Result<Option<String>> {
        Ok(self.client.image_created(&self.name, digest).await.outside_line()?)
    }
}

impl DistributionTags {
    /// The repository of `[image] repository`, with `[registry]`'s credentials (and
    /// `password`, from `--registry-password-stdin`).
    pub fn from_config(config: &Config, password: Option<Secret>) -> anyhow::Result<Option<DistributionTags>> {
        let Some(repo) = config.image.repository.as_deref() else { return Ok(None) };
        let name = ImageName::parse(repo).outside_line().context("`image.repository` is not usable")?.value;
        let registry = crate::phases::registry_config(config);
        let creds = registry.credentials(name.api_host(), password).outside_line()?;
        Ok(Some(DistributionTags {
            client: RegistryClient::new(registry.options().outside_line()?, creds).outside_line()?,
            name,
        }))
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

/// The preview's namespace, when it exists and is this PR's; refused (naming its owner) when it
/// is another's. Fills the context's empty branch and commit from what the namespace recorded
/// (they name the tags). `what` is the command, for the refusal.
pub async fn find_preview(
    kube: &Kube,
    ctx: &mut PrContext,
    release: &ReleaseTarget,
    what: &str,
) -> anyhow::Result<Option<NamespaceView>> {
    let ns = &release.namespace;
    let Some(v) = kube.namespace_view(ns).await.outside_line()? else { return Ok(None) };
    match preview::owner_of(ctx, release, &v.labels, &v.annotations) {
        Owner::Us => {}
        Owner::OtherPreview(owner) | Owner::NotPrpods(owner) => anyhow::bail!(
            "namespace {ns} belongs to {owner}, not to {} PR #{}: {what} refuses to touch it (nothing was changed); \
             run it as its owner, or check --repo-url and --pr",
            ctx.repository,
            ctx.number.map_or("?".into(), |n| n.to_string())
        ),
    }
    if ctx.branch.is_empty()
        && let Some(b) = v.annotations.get("prpod.dev/branch")
    {
        ctx.branch = b.clone();
    }
    if ctx.sha.is_empty()
        && let Some(s) = v.annotations.get(lifecycle::DEPLOYED_COMMIT).or(v.annotations.get("prpod.dev/commit"))
    {
        ctx.sha = s.clone();
    }
    Ok(Some(v))
}

/// The short SHAs the preview recorded as its commits.
pub fn recorded_commits(v: &NamespaceView) -> Vec<String> {
    v.annotations
        .get(lifecycle::COMMITS)
        .map(|c| c.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Annotates the namespace [`lifecycle::CLOSED`] (now): a run that starts later refuses it.
pub async fn mark_closed(kube: &Kube, namespace: &str) -> Result<(), KubeError> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ann = BTreeMap::from([(lifecycle::CLOSED.to_string(), Some(now))]);
    kube.patch_namespace_meta(namespace, &BTreeMap::new(), &ann).await
}

/// `helm uninstall` of the release when it exists: `uninstalled`, `absent`, or (dry) `would
/// uninstall`.
pub async fn uninstall(
    config: &crate::phases::deploy::DeployConfig,
    kube: &Kube,
    release: &ReleaseTarget,
    dry_run: bool,
) -> anyhow::Result<&'static str> {
    if !kube.helm_release_exists(&release.namespace, &release.name).await.outside_line()? {
        return Ok("absent");
    }
    if dry_run {
        return Ok("would uninstall");
    }
    let helm = Helm::detect(&config.helm, config.kube_target(), crate::config::cache_dir()).await.outside_line()?;
    helm.uninstall(&release.name, &release.namespace, config.timeout).await.outside_line()?;
    Ok("uninstalled")
}

/// Deletes the namespace (and everything left in it).
pub async fn delete_namespace(kube: &Kube, namespace: &str) -> Result<bool, KubeError> {
    kube.delete_namespace(namespace).await
}

/// The images every workload in every readable namespace names (but `skip`'s).
pub async fn images_in_use(kube: &Kube, skip: Option<&str>) -> Result<ImagesInUse, KubeError> {
    kube.images_in_use(skip).await
}

/// What [`plan_pr_tags`] decided.
#[derive(Debug, Clone, Default)]
pub struct TagDecision {
    /// Digests to delete, with their tags.
    pub delete: Vec<DigestDeletion>,
    /// The PR's tags that stay, and why.
    pub kept: Vec<KeptTag>,
    /// What could not be read while listing the images in use.
    pub unreadable: Vec<String>,
    /// Kubernetes API calls made.
    pub kube_calls: u32,
}

/// The PR's tags as the tag-policy names them (with the `sha-*` of every commit recorded), the
/// base branch's cache protected, and the decision per digest. `in_use`: the images in use
/// when the caller listed them already (the preview's own namespace is left out of them).
#[allow(clippy::too_many_arguments)]
pub async fn plan_pr_tags(
    config: &Config,
    ctx: &PrContext,
    commits: &[String],
    kube: &Kube,
    ns: &str,
    in_use: Option<&ImagesInUse>,
    deleter: &dyn TagDeleter,
) -> anyhow::Result<TagDecision> {
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
            None => kube.images_in_use(Some(ns)).await.outside_line().map_err(anyhow::Error::from),
        }
    })?;
    let path = repository.split_once('/').map_or(repository.as_str(), |(_, p)| p);
    let plan = lifecycle::plan_tags(&all, &ours, &protected, &in_use, path);
    Ok(TagDecision { delete: plan.delete, kept: plan.kept, unreadable: in_use.unreadable, kube_calls: in_use.calls })
}

/// Deletes each planned digest (with its tags).
pub async fn delete_tags(deleter: &dyn TagDeleter, plan: &[DigestDeletion]) -> anyhow::Result<()> {
    for d in plan {
        deleter.delete_digest(&d.digest, &d.tags).await.with_context(|| {
            format!("failed to delete {} ({}) from {}", d.digest, d.tags.join(", "), deleter.repository())
        })?;
    }
    Ok(())
}
