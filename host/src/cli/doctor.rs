//! `prpod doctor`: would a run work here (see [`crate::ops::doctor`])? The exit code is 0 only
//! when nothing failed.

use clap::Args;

use super::ContextArgs;
use super::run::DeployFlags;
use super::{EXIT_FINDINGS, EXIT_OK};
use crate::config::{Config, Env};
use crate::ops::doctor::DoctorRequest;
use crate::report::Reporter;

/// `prpod doctor` arguments.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The pull request whose namespace the rights are checked in (`--pr N` is enough).
    #[command(flatten)]
    pub context: ContextArgs,
    /// Check rights in this namespace instead of the tag-policy's.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Image repository (`[image] repository`).
    #[arg(long, value_name = "REPOSITORY")]
    pub image: Option<String>,
    /// Cluster settings.
    #[command(flatten)]
    pub deploy: DeployFlags,
}

/// Runs `prpod doctor`.
pub async fn run(args: DoctorArgs, mut config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    args.deploy.apply(&mut config)?;
    if let Some(i) = &args.image {
        config.image.repository = Some(i.clone());
    }
    let req = DoctorRequest { context: args.context.flags(), namespace: args.namespace };
    let report = crate::ops::doctor::doctor(&config, req, env).await;
    reporter.doctor_report(&report)?;
    // 1, like error findings: a check failed; the report says which and how to fix it.
    Ok(if report.ok { EXIT_OK } else { EXIT_FINDINGS })
}
