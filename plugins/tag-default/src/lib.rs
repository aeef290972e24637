//! prpod's default tag-policy: a thin wrapper over the `tag-scheme` crate.

wit_bindgen::generate!({
    path: "../../wit",
    world: "tag-policy",
});

use prpod::plugin::logging::{Level, log};

struct TagDefault;

impl Guest for TagDefault {
    fn compute_tags(ctx: PrContext, image_repository: String) -> Result<TagSet, String> {
        let t = tag_scheme::compute_tags(ctx.number, &ctx.branch, ctx.base_branch.as_deref(), &ctx.sha)?;
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
        let (name, namespace) = tag_scheme::release(ctx.number, &ctx.branch)?;
        log(Level::Debug, &format!("release for branch {:?}: {name} in namespace {namespace}", ctx.branch));
        Ok(ReleaseTarget { name, namespace })
    }
}

export!(TagDefault);
