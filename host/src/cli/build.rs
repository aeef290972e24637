//! `prpod build`: context, tags, source, build, push; prints the image, its digest and tags.

use std::io::Read;

use anyhow::Context;
use clap::Args;

use super::BackendArg;
use super::ContextArgs;
use super::EXIT_OK;
use crate::config::{Config, Env};
use crate::phases::{self, Inputs, Phase, Secrets};
use crate::report::{ImageSummary, Reporter, RunReport};
use crate::secret::Secret;

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
pub async fn run(args: BuildArgs, mut config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    args.overrides.apply(&mut config)?;
    let secrets = Secrets {
        git_token: phases::source::token(&config.source, env)?,
        registry_password: if args.registry_password_stdin { Some(read_stdin_secret()?) } else { None },
    };
    let inputs =
        Inputs { config: &config, context: &args.context.flags(), env, secrets: &secrets, mode: phases::Mode::Apply };
    let run = phases::walk(&inputs, Phase::Push, reporter).await?;
    let pushed = run.pushed.as_ref();
    reporter.run_report(&RunReport {
        context: run.context,
        tags: run.tags,
        image: pushed.map(|p| ImageSummary { repository: p.repository.clone(), digest: p.digest.clone() }),
        backend: run.built.as_ref().map(|b| b.backend.clone()),
        // buildx pushes by itself and says nothing about layers.
        layers: pushed.filter(|_| run.built.as_ref().is_some_and(|b| b.layout.is_some())).map(|p| p.layers),
        phases: reporter.phases(),
        ..RunReport::default()
    })?;
    Ok(EXIT_OK)
}

pub(crate) fn read_stdin_secret() -> anyhow::Result<Secret> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("failed to read the registry password from stdin")?;
    let secret = Secret::new(s);
    anyhow::ensure!(!secret.is_empty(), "--registry-password-stdin: stdin was empty");
    Ok(secret)
}
