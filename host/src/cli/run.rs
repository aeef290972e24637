//! `prpod run` (the whole line), `prpod plan` (the same line, writing nothing) and `prpod deploy`
//! (the line from an image already pushed). All three walk [`phases::walk`] then
//! [`phases::deliver`]; they differ only in where the line starts and whether it writes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::ContextArgs;
use super::build::{BuildFlags, read_stdin_secret};
use super::{EXIT_FINDINGS, EXIT_OK};
use crate::clients::registry::{CredentialResolver, ImageName, ImageReference, RegistryClient};
use crate::config::{Config, Env};
use crate::model::ImageRef;
use crate::phases::context::ContextFlags;
use crate::phases::{self, DeliverInputs, Delivered, Inputs, Mode, Phase, Run, Secrets};
use crate::report::{ErrorReport, ImageSummary, Reporter, RunReport};
use crate::secret::Secret;

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
    execute(Start::Build(args), Mode::Apply, false, config, env, reporter).await
}

/// Runs `prpod plan`.
pub async fn plan(args: PlanArgs, config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    execute(Start::Build(args.run), Mode::Plan, args.show_manifests, config, env, reporter).await
}

/// Runs `prpod deploy`.
pub async fn deploy(args: DeployArgs, config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    execute(Start::Pushed(args), Mode::Apply, false, config, env, reporter).await
}

enum Start {
    Build(RunArgs),
    Pushed(DeployArgs),
}

/// Walks the line and prints the report. A failure is reported with the phases that ran (the
/// JSON report carries `error` with its causes) and becomes the exit code.
async fn execute(
    start: Start,
    mode: Mode,
    show_manifests: bool,
    config: Config,
    env: &Env,
    reporter: &Reporter,
) -> anyhow::Result<u8> {
    let outcome = collect(start, mode, show_manifests, config, env, reporter).await;
    reporter.run_report(&outcome.report)?;
    if let Some(err) = &outcome.error {
        // The JSON report carries the error; the human line goes to stderr in both formats.
        reporter.error_stderr(err);
    }
    Ok(outcome.code)
}

/// What a walk of the line ended with, for a caller that prints its own document.
#[derive(Debug)]
pub struct RunOutcome {
    /// The exit code the run means.
    pub code: u8,
    /// The run's report (its `error` set when it failed).
    pub report: RunReport,
    /// The failure, when it failed.
    pub error: Option<anyhow::Error>,
}

/// `prpod run` with `context` over the environment's (GitHub Actions' event), without printing
/// the report: `prpod event` embeds it in its own.
pub async fn run_collected(context: ContextFlags, config: Config, env: &Env, reporter: &Reporter) -> RunOutcome {
    let args = RunArgs {
        context: context.into(),
        build: super::build::BuildFlags::default(),
        deploy: DeployFlags::default(),
        registry_password_stdin: false,
    };
    collect(Start::Build(args), Mode::Apply, false, config, env, reporter).await
}

async fn collect(
    start: Start,
    mode: Mode,
    show_manifests: bool,
    mut config: Config,
    env: &Env,
    reporter: &Reporter,
) -> RunOutcome {
    let mut report = RunReport::default();
    // SIGINT / SIGTERM end the run in a known state (see `crate::shutdown`): guards release the
    // deploy lock and remove temporary files, Helm is stopped and its rollback waited for.
    if let Err(e) = crate::shutdown::listen() {
        tracing::warn!("cannot handle SIGINT/SIGTERM ({e}): a signal kills prpod at once");
    }
    let result = crate::shutdown::interruptible(line(start, mode, &mut config, env, reporter, &mut report)).await;
    // Locks dropped on an error or a signal are released in the background: wait for them.
    crate::phases::lock::finish_releases().await;
    report.phases = reporter.phases();
    report.findings = Some(reporter.findings());
    if !show_manifests {
        report.manifests = None;
    }
    match result {
        Ok(delivered) => {
            RunOutcome { code: if delivered.blocked { EXIT_FINDINGS } else { EXIT_OK }, report, error: None }
        }
        Err(err) => {
            let e = ErrorReport::of(&err);
            report.error = Some(e.clone());
            RunOutcome { code: e.exit_code, report, error: Some(err) }
        }
    }
}

async fn line(
    start: Start,
    mode: Mode,
    config: &mut Config,
    env: &Env,
    reporter: &Reporter,
    report: &mut RunReport,
) -> anyhow::Result<Delivered> {
    let (context, password_stdin, replicas, source_dir, image_flag) = match &start {
        Start::Build(a) => {
            a.build.apply(config)?;
            a.deploy.apply(config)?;
            (a.context.flags(), a.registry_password_stdin, a.deploy.replicas, None, None)
        }
        Start::Pushed(a) => {
            a.deploy.apply(config)?;
            if let Some(i) = &a.image {
                // `--image` names the repository; the policy's tags are computed for it.
                let r = parse_pinned(i)?;
                config.image.repository = Some(r.name.to_string());
            }
            (a.context.flags(), a.registry_password_stdin, a.deploy.replicas, a.source_dir.clone(), a.image.clone())
        }
    };
    let secrets = Secrets {
        git_token: phases::source::token(&config.source, env)?,
        registry_password: if password_stdin { Some(read_stdin_secret()?) } else { None },
    };
    // The chart phase needs the cluster's discovery: read it while the build half runs.
    let prefetched = (mode == Mode::Apply).then(|| phases::prefetch_cluster(&config.deploy.kube_target()));
    let inputs = Inputs { config, context: &context, env, secrets: &secrets, mode };
    let last = match start {
        Start::Build(_) => Phase::Push,
        Start::Pushed(_) => Phase::Tags,
    };
    let run: Run = phases::walk(&inputs, last, reporter).await?;
    // The repository's prpod.toml: from the commit the walk checked out, or the directory given
    // to `deploy`.
    let repo_config = match (&run.repository_config, &source_dir) {
        (Some(r), _) => Some(r.clone()),
        // Unless that directory's prpod.toml is the operator's own file (prpod run in it).
        (None, Some(dir)) if run.checkout.is_none() && !is_operator_file(config, dir) => {
            crate::repo_config::read(dir, config.deploy.allow_repository_chart)?
        }
        _ => None,
    };
    if let Some(r) = &repo_config {
        config.apply_repository(r)?;
    }
    report.context = run.context.clone();
    report.tags = run.tags.clone();
    report.backend = run.built.as_ref().map(|b| b.backend.clone());
    report.layers = run.pushed.as_ref().map(|p| p.layers);
    let (ctx, tags, release) = (
        run.context.as_ref().context("the walk produced no context")?,
        run.tags.as_ref().context("the walk produced no tags")?,
        run.release.as_ref().context("the walk produced no release")?,
    );
    report.release = Some(release.clone());
    let repository = run.repository.clone().context("the walk produced no image repository")?;

    // The registry bundle the walk resolved in its context phase (credentials are read once).
    let registry = run.registry.clone().context("the walk produced no registry")?;
    let image = match (&run.pushed, image_flag) {
        (Some(p), _) => ImageRef {
            repository: p.repository.clone(),
            tag: Some(tags.primary.clone()),
            digest: Some(p.digest.clone()),
        },
        (None, Some(flag)) => {
            let r = parse_pinned(&flag)?;
            ImageRef { repository: r.name.to_string(), tag: r.tag.or(Some(tags.primary.clone())), digest: r.digest }
        }
        (None, None) if mode == Mode::Plan => {
            ImageRef { repository: repository.clone(), tag: Some(tags.primary.clone()), digest: None }
        }
        (None, None) => resolve_primary(&registry.client, &repository, &tags.primary).await?,
    };
    if let Some(d) = &image.digest {
        report.image = Some(ImageSummary { repository: image.repository.clone(), digest: d.clone() });
    }
    report.deploy_image = Some(phases::chart::image_reference(&image));
    let host = ImageName::parse(&image.repository)?.value.api_host().to_string();
    let pull = pull_secret(&registry.credentials, &host, reporter).await?;
    let chart_root = run.checkout.as_ref().map(|c| c.path.clone()).or(source_dir);
    let input = DeliverInputs {
        ctx,
        tags,
        release,
        image,
        chart_root: chart_root.as_deref(),
        replicas,
        pull_secret: pull,
        mode,
        prefetched,
    };
    let delivered = phases::deliver(config, input, reporter).await?;
    report.chart = delivered.chart.clone();
    report.manifests = delivered.rendered.clone();
    report.revision = delivered.release.as_ref().map(|r| r.revision);
    report.preview_url = delivered.preview_url.clone();
    if mode == Mode::Plan {
        report.plan = Some(delivered.plan.clone());
    }
    Ok(delivered)
}

/// Whether `dir/prpod.toml` is the file the operator's config was read from.
fn is_operator_file(config: &Config, dir: &std::path::Path) -> bool {
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    config.path.as_deref().is_some_and(|p| same(p, &dir.join(crate::repo_config::FILE_NAME)))
}

/// `REPO[:tag]@sha256:<64 hex>`, required to be pinned.
fn parse_pinned(text: &str) -> anyhow::Result<ImageReference> {
    let r = ImageReference::parse(text)?.value;
    let pinned = r.digest.as_deref().is_some_and(|d| {
        d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    anyhow::ensure!(
        pinned,
        "--image {text} is not pinned by digest: pass REPOSITORY@sha256:<64 hex> (prpod deploys by digest, \
         since a tag can move), or leave --image out to deploy what the policy's primary tag points at"
    );
    Ok(r)
}

/// The `.dockerconfigjson` of the preview's pull Secret for `host`: the pull credentials
/// (`registry.pull_username`), or the push credentials with `pull_with_push_credentials`;
/// `None` otherwise (no pull Secret). Warns when its credential looks like it dies with the job.
async fn pull_secret(resolver: &CredentialResolver, host: &str, reporter: &Reporter) -> anyhow::Result<Option<Secret>> {
    let Some(pull) = resolver.pull_secret(host).await? else { return Ok(None) };
    if let Some(why) = &pull.short_lived {
        reporter.emit(crate::report::Event::Note(
            Phase::Deploy,
            format!(
                "warning: the pull Secret's credential looks short-lived: {why}; a pod rescheduled after that \
                 (or `status --replicas`) cannot pull the image. Give prpod pull credentials that outlive the job \
                 (`registry.pull_username` + PRPOD_REGISTRY_PULL_PASSWORD, e.g. a read-only token)"
            ),
        ));
    }
    Ok(Some(pull.dockerconfigjson))
}

/// What the policy's primary tag points at (a HEAD on the registry).
async fn resolve_primary(client: &RegistryClient, repository: &str, tag: &str) -> anyhow::Result<ImageRef> {
    let reference = ImageReference::parse(&format!("{repository}:{tag}"))?.value;
    let digest = client.manifest_digest(&reference).await?.with_context(|| {
        format!("{repository}:{tag} does not exist: build and push it first (`prpod build`), or pass --image REPO@sha256:...")
    })?;
    Ok(ImageRef { repository: repository.to_string(), tag: Some(tag.to_string()), digest: Some(digest) })
}
