//! `prpod teardown`: the PR's preview removed (release, namespace, tags); see
//! [`crate::ops::teardown`].

use clap::Args;

use super::ContextArgs;
use super::EXIT_OK;
use super::run::DeployFlags;
use crate::config::{Config, Env};
use crate::ops::teardown::{TeardownRequest, teardown};
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
    let (release, ctx) = crate::ops::status::release_target(None, None, &args.context.flags(), &config, env).await?;
    let ctx = ctx.ok_or_else(|| anyhow::anyhow!("teardown needs the PR: pass --repo-url and --pr"))?;
    let req = TeardownRequest { ctx, release: Some(release), dry_run: args.dry_run, tags: None };
    let report = teardown(&config, req, reporter).await;
    crate::phases::preview::lock::finish_releases().await;
    let report = report?;
    reporter.lines_or_json(&report, &report.lines())?;
    Ok(EXIT_OK)
}
