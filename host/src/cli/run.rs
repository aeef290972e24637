//! `prpod run` (the whole line), `prpod plan` (the same line, writing nothing) and `prpod deploy`
//! (the line from an image already pushed): their arguments, and one call into [`crate::ops::run`].

use std::path::PathBuf;

use clap::Args;

use super::ContextArgs;
use super::build::BuildFlags;
use crate::config::{Config, Env};
use crate::ops::run::{RunOutcome, RunRequest};
use crate::phases;
use crate::report::Reporter;

/// Deploy settings on the command line (they beat `PRPOD_*` and `prpod.toml`).
#[derive(Debug, Default, Clone, Args)]
pub struct DeployFlags {
    /// Replicas of the preview (injected as `replicas` / `replicaCount`).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// kubeconfig context (`[deploy] kube_context`).
    #[arg(long, value_name = "NAME")]
    pub kube_context: Option<String>,
    /// kubeconfig file (`[deploy] kubeconfig`; default `$KUBECONFIG`, `~/.kube/config`, in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// How long the rollout may take, e.g. `90s`, `5m` (`[deploy] timeout`).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Helm binary (`[deploy] helm`).
    #[arg(long, value_name = "PATH")]
    pub helm: Option<PathBuf>,
}

impl DeployFlags {
    /// Applies the flags to `config`.
    pub fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        if let Some(v) = &self.kube_context {
            config.deploy.kube_context = Some(v.clone());
        }
        if let Some(v) = &self.kubeconfig {
            config.deploy.kubeconfig = Some(v.clone());
        }
        if let Some(v) = &self.timeout {
            config.deploy.timeout =
                phases::deploy::duration_text::parse(v).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
        }
        if let Some(v) = &self.helm {
            config.deploy.helm = v.clone();
        }
        if self.replicas == Some(0) || self.replicas.is_some_and(|r| r > 50) {
            anyhow::bail!("--replicas must be between 1 and 50");
        }
        Ok(())
    }
}

/// `prpod run` / `prpod plan` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pull request.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Build settings.
    #[command(flatten)]
    pub build: BuildFlags,
    /// Deploy settings.
    #[command(flatten)]
    pub deploy: DeployFlags,
    /// Read the registry password or token from stdin (beats every other credential source).
    #[arg(long)]
    pub registry_password_stdin: bool,
}

/// `prpod plan` arguments.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// What `run` would take.
    #[command(flatten)]
    pub run: RunArgs,
    /// Print the rendered manifests (human output; in JSON they are the `manifests` field).
    #[arg(long)]
    pub show_manifests: bool,
}

/// `prpod deploy` arguments.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The pull request.
    #[command(flatten)]
    pub context: ContextArgs,
    /// The image to deploy, pinned: `REPOSITORY@sha256:<64 hex>` (a tag may precede the digest).
    /// Default: the digest the tag-policy's primary tag points at in `[image] repository`.
    #[arg(long, value_name = "REPO@sha256:...")]
    pub image: Option<String>,
    /// The repository checkout holding `[deploy] chart` and `values` (default: the directory of
    /// prpod.toml).
    #[arg(long, value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// Deploy settings.
    #[command(flatten)]
    pub deploy: DeployFlags,
    /// Read the registry password or token from stdin (beats every other credential source).
    #[arg(long)]
    pub registry_password_stdin: bool,
}

/// Runs `prpod run`.
pub async fn run(args: RunArgs, config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    let outcome = crate::ops::run::run(config, args.request(false), env, reporter).await;
    print(outcome, reporter)
}

/// Runs `prpod plan`.
pub async fn plan(args: PlanArgs, config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    let outcome = crate::ops::run::plan(config, args.run.request(args.show_manifests), env, reporter).await;
    print(outcome, reporter)
}

/// Runs `prpod deploy`.
pub async fn deploy(args: DeployArgs, config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    let req = RunRequest {
        context: args.context.flags(),
        settings: Box::new(|c| args.deploy.apply(c)),
        replicas: args.deploy.replicas,
        registry_password_stdin: args.registry_password_stdin,
        show_manifests: false,
        image: args.image.clone(),
        source_dir: args.source_dir.clone(),
    };
    let outcome = crate::ops::run::deploy(config, req, env, reporter).await;
    print(outcome, reporter)
}

impl RunArgs {
    /// The request `run` and `plan` make: the flags are applied inside the run, so a bad one is
    /// reported in the run's report.
    fn request(&self, show_manifests: bool) -> RunRequest<'_> {
        RunRequest {
            context: self.context.flags(),
            settings: Box::new(|c| {
                self.build.apply(c)?;
                self.deploy.apply(c)
            }),
            replicas: self.deploy.replicas,
            registry_password_stdin: self.registry_password_stdin,
            show_manifests,
            image: None,
            source_dir: None,
        }
    }
}

/// Prints the run's report; a failure's human line goes to stderr in both formats (the JSON
/// report carries the error).
fn print(outcome: RunOutcome, reporter: &Reporter) -> anyhow::Result<u8> {
    reporter.run_report(&outcome.report)?;
    if let Some(err) = &outcome.error {
        reporter.error_stderr(err);
    }
    Ok(outcome.code)
}
