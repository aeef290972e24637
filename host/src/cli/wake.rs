//! `prpod wake`: a sleeping preview scaled back and Ready; see [`crate::ops::wake`].

use clap::Args;

use super::ContextArgs;
use super::EXIT_OK;
use super::run::DeployFlags;
use crate::config::{Config, Env};
use crate::ops::wake::{WakeRequest, wake};
use crate::report::Reporter;

/// `prpod wake` arguments.
#[derive(Debug, Args)]
pub struct WakeArgs {
    /// The pull request (`--repo-url` and `--pr N` are enough for the default tag-policy).
    #[command(flatten)]
    pub context: ContextArgs,
    /// Cluster settings (`--timeout`: how long to wait for Ready).
    #[command(flatten)]
    pub deploy: DeployFlags,
}

/// Runs `prpod wake`.
pub async fn run(args: WakeArgs, mut config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    args.deploy.apply(&mut config)?;
    let (release, ctx) = crate::ops::status::release_target(None, None, &args.context.flags(), &config, env).await?;
    let ctx = ctx.ok_or_else(|| anyhow::anyhow!("wake needs the PR: pass --repo-url and --pr"))?;
    let report = wake(&config, WakeRequest { ctx, release }, reporter).await?;
    reporter.lines_or_json(&report, &report.lines())?;
    Ok(EXIT_OK)
}
