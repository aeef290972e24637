//! `prpod status`: a PR's preview as it runs now; `--replicas N` scales its Deployment and waits
//! for the rollout (see [`crate::ops::status`]).

use clap::Args;

use super::ContextArgs;
use super::EXIT_OK;
use super::run::DeployFlags;
use crate::config::{Config, Env};
use crate::ops::status::StatusRequest;
use crate::report::Reporter;

/// `prpod status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The pull request (`--pr N` alone is enough for the default tag-policy).
    #[command(flatten)]
    pub context: ContextArgs,
    /// Release name, instead of asking the tag-policy (needs --namespace too).
    #[arg(long, requires = "namespace")]
    pub release: Option<String>,
    /// Namespace, instead of asking the tag-policy.
    #[arg(long, requires = "release")]
    pub namespace: Option<String>,
    /// Cluster settings, and `--replicas N`: scale the release's Deployment and wait for it.
    #[command(flatten)]
    pub deploy: DeployFlags,
    /// The Deployment to scale, when the release has several.
    #[arg(long, value_name = "NAME")]
    pub deployment: Option<String>,
}

/// Runs `prpod status`.
pub async fn run(args: StatusArgs, mut config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    args.deploy.apply(&mut config)?;
    let req = StatusRequest {
        context: args.context.flags(),
        release: args.release,
        namespace: args.namespace,
        replicas: args.deploy.replicas,
        deployment: args.deployment,
    };
    let report = crate::ops::status::status(&config, req, env).await?;
    reporter.status_report(&report)?;
    Ok(EXIT_OK)
}
