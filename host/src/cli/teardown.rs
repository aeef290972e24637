//! `prpod teardown`: the PR's preview removed (release, namespace, tags); see
//! [`crate::ops::teardown`].

use clap::Args;

use super::ContextArgs;
use super::EXIT_OK;
use super::run::DeployFlags;
use crate::config::{Config, Env};
use crate::ops::teardown::teardown_pr;
use crate::report::Reporter;

/// `prpod teardown` arguments.
#[derive(Debug, Args)]
pub struct TeardownArgs {
    /// The pull request (`--repo-url` and `--pr N` are enough for the default tag-policy).
    #[command(flatten)]
    pub context: ContextArgs,
    /// Cluster settings.
    #[command(flatten)]
    pub deploy: DeployFlags,
    /// List what would be deleted, and why each kept thing is kept; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `prpod teardown`.
pub async fn run(args: TeardownArgs, mut config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    args.deploy.apply(&mut config)?;
    let report = teardown_pr(&config, &args.context.flags(), args.dry_run, env, reporter).await?;
    reporter.lines_or_json(&report, &report.lines())?;
    Ok(EXIT_OK)
}
