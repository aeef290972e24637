//! prpod's default tag-policy: a thin wrapper over the `tag-scheme` crate.

wit_bindgen::generate!({
    path: "../../wit",
    world: "tag-policy",
});

use prpod::plugin::logging::{Level, log};

struct TagDefault;

impl Guest for TagDefault {
    fn compute_tags(ctx: PrContext, image_repository: String) -> Result<TagSet, String> {
        let t = tag_scheme::compute_tags(ctx.number, branch(&ctx), ctx.base_branch.as_deref(), &ctx.sha)?;
        log(
            Level::Debug,
            &format!(
                "tags for {image_repository} (branch {:?}): primary {}, extra [{}]",
                ctx.branch,
                t.primary,
                t.extra.join(", ")
            ),
        );
        Ok(TagSet { primary: t.primary, extra: t.extra, cache_from: t.cache_from, cache_to: t.cache_to })
    }

    fn release(ctx: PrContext) -> Result<ReleaseTarget, String> {
        let (name, namespace) = tag_scheme::release(&ctx.repository, ctx.number, branch(&ctx))?;
        log(Level::Debug, &format!("release for branch {:?}: {name} in namespace {namespace}", ctx.branch));
        Ok(ReleaseTarget { name, namespace })
    }
}

/// The branch being previewed; a fork's carries the fork's owner. The 0.1 context has no field
/// for the head repository's owner, so the pull request's author stands for it: on GitHub a fork
/// PR's author is the owner of the fork in all but organisation-owned forks.
fn branch(ctx: &PrContext) -> tag_scheme::Branch<'_> {
    tag_scheme::Branch {
        name: &ctx.branch,
        fork_owner: (ctx.fork && !ctx.author.is_empty()).then_some(ctx.author.as_str()),
    }
}

export!(TagDefault);
