//! `prpod build`: context, tags, source, build, push; prints the image, its digest and tags.

use anyhow::Context;
use clap::Args;

use super::BackendArg;
use super::ContextArgs;
use super::EXIT_OK;
use crate::config::{Config, Env};
use crate::ops::run::RunRequest;
use crate::report::Reporter;

/// `prpod build` arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The pull request.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Flags that override `prpod.toml` and `PRPOD_*`.
    #[command(flatten)]
    pub overrides: BuildFlags,
    /// Read the registry password or token from stdin (beats every other credential source).
    #[arg(long)]
    pub registry_password_stdin: bool,
}

/// Build settings on the command line (they beat `PRPOD_*` and `prpod.toml`).
#[derive(Debug, Default, Args)]
pub struct BuildFlags {
    /// Image repository, registry host included (`[image] repository`).
    #[arg(long, value_name = "REPOSITORY")]
    pub image: Option<String>,
    /// Build backend (`[build] backend`).
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Dockerfile, relative to the context directory (`[image] dockerfile`).
    #[arg(long, value_name = "PATH")]
    pub dockerfile: Option<std::path::PathBuf>,
    /// Build context, relative to the repository root (`[image] context`).
    #[arg(long, value_name = "DIR")]
    pub context_dir: Option<std::path::PathBuf>,
    /// Target platform, os/arch (`[image] platform`).
    #[arg(long)]
    pub platform: Option<String>,
    /// A build argument, NAME=VALUE (repeatable; adds to `[image] build_args`).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub build_args: Vec<String>,
    /// History to fetch, 0 = all (`[source] depth`).
    #[arg(long)]
    pub depth: Option<u32>,
}

impl BuildFlags {
    /// Applies the flags to `config` and checks the result.
    pub fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        if let Some(v) = &self.image {
            config.image.repository = Some(v.clone());
        }
        if let Some(v) = self.backend {
            config.build.backend = v.into();
        }
        if let Some(v) = &self.dockerfile {
            config.image.dockerfile = v.clone();
            config.operator_set("image.dockerfile");
        }
        if let Some(v) = &self.context_dir {
            config.image.context = v.clone();
            config.operator_set("image.context");
        }
        if let Some(v) = &self.platform {
            config.image.platform = Some(v.clone());
        }
        if let Some(v) = self.depth {
            config.source.depth = v;
        }
        for arg in &self.build_args {
            let (k, v) = arg.split_once('=').with_context(|| format!("--build-arg `{arg}` is not NAME=VALUE"))?;
            config.image.build_args.insert(k.to_string(), v.to_string());
        }
        config.check()?;
        Ok(())
    }
}

/// Runs `prpod build`.
pub async fn run(args: BuildArgs, config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    let req = RunRequest {
        context: args.context.flags(),
        settings: Box::new(|c| args.overrides.apply(c)),
        registry_password_stdin: args.registry_password_stdin,
        ..RunRequest::for_context(Default::default())
    };
    let report = crate::ops::run::build(config, req, env, reporter).await?;
    reporter.run_report(&report)?;
    Ok(EXIT_OK)
}
