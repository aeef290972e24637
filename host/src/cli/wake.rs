//! `prpod wake`: a sleeping preview scaled back and Ready; see [`crate::ops::wake`].

use clap::Args;

use super::ContextArgs;
use super::EXIT_OK;
use super::run::DeployFlags;
use crate::config::{Config, Env};
use crate::ops::wake::wake_pr;
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
    let report = wake_pr(&config, &args.context.flags(), env, reporter).await?;
    reporter.lines_or_json(&report, &report.lines())?;
    Ok(EXIT_OK)
}
