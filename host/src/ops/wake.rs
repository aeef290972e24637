//! Sleep and wake: a preview nobody looked at for `[lifecycle] sleep_after` is scaled to 0 by
//! gc (its namespace and release stay); `prpod wake --pr N`, a `prpod.dev/wake` label (at the
//! next gc) or the next run (`wake_on_push`) brings it back.
//!
//! Sleeping records each Deployment's and StatefulSet's replica count in the namespace's
//! [`crate::phases::lifecycle::REPLICAS`] annotation before scaling it to 0, then labels the namespace
//! [`crate::phases::lifecycle::ASLEEP`]. Waking scales each back to what was recorded and waits until every one
//! has its replicas Ready, then removes the label and the annotation. Both are safe to repeat.

use crate::clients::kube::Kube;
use crate::config::Config;
use crate::error::ResultExt;
use crate::model::{PrContext, ReleaseTarget};
use crate::phases::teardown::find_preview;
use crate::report::Reporter;

pub use crate::phases::sleep::{WakeReport, sleep_namespace, wake_namespace};

/// What to wake.
pub struct WakeRequest {
    /// The PR (repository and number).
    pub ctx: PrContext,
    /// Its release (the tag-policy's).
    pub release: ReleaseTarget,
}

/// `prpod wake` for the PR `flags` name (the tag-policy names its release).
pub async fn wake_pr(
    config: &Config,
    flags: &crate::phases::context::ContextFlags,
    env: &crate::config::Env,
    reporter: &Reporter,
) -> anyhow::Result<WakeReport> {
    let (release, ctx) = super::status::release_target(None, None, flags, config, env).await?;
    let ctx = ctx.ok_or_else(|| anyhow::anyhow!("wake needs the PR: pass --repo-url and --pr"))?;
    wake(config, WakeRequest { ctx, release }, reporter).await
}

/// `prpod wake`: the PR's preview, if asleep, scaled back and Ready.
pub async fn wake(config: &Config, req: WakeRequest, _reporter: &Reporter) -> anyhow::Result<WakeReport> {
    let kube = Kube::connect(&config.deploy.kube_target()).await.outside_line()?;
    let ns = &req.release.namespace;
    let mut ctx = req.ctx.clone();
    let Some(v) = find_preview(&kube, &mut ctx, &req.release, "wake").await? else {
        anyhow::bail!("there is no preview in namespace {ns} (nothing deployed for this PR, or it was torn down)")
    };
    let mut r = wake_namespace(&kube, ns, &v.annotations, config.deploy.timeout).await.outside_line()?;
    r.kube_calls += 1;
    Ok(r)
}
