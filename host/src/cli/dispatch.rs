//! `prpod dispatch`: `prpod run` for the PR as a Kubernetes Job in the PR's namespace, its log
//! streamed back; see [`crate::ops::dispatch`].

use clap::Args;

use super::ContextArgs;
use super::run::DeployFlags;
use crate::config::{Config, Env};
use crate::ops::dispatch::{DispatchRequest, dispatch};
use crate::ops::run::read_stdin_secret;
use crate::report::Reporter;

/// `prpod dispatch` arguments.
#[derive(Debug, Args)]
pub struct DispatchArgs {
    /// The pull request.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Cluster settings (the dispatching identity's) and the deploy timeout the Job gets.
    #[command(flatten)]
    pub deploy: DeployFlags,
    /// Delete the PR's previous Job and its pod first, whatever commit it runs.
    #[arg(long)]
    pub reset: bool,
    /// Print the plan and the manifests (no secret value); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Read the registry password or token from stdin (beats every other credential source).
    #[arg(long)]
    pub registry_password_stdin: bool,
}

/// Runs `prpod dispatch`: exits with the run's own exit code.
pub async fn run(args: DispatchArgs, mut config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    args.deploy.apply(&mut config)?;
    let registry_password = if args.registry_password_stdin { Some(read_stdin_secret()?) } else { None };
    let req =
        DispatchRequest { context: args.context.flags(), reset: args.reset, dry_run: args.dry_run, registry_password };
    let report = dispatch(&config, env, req, reporter).await?;
    reporter.lines_or_json(&report, &report.lines())?;
    Ok(report.exit_code.map_or(super::EXIT_OK, |c| u8::try_from(c).unwrap_or(u8::MAX)))
}
