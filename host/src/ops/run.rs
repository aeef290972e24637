//! `run` (the whole line), `plan` (the same line, writing nothing), `deploy` (the line from an
//! image already pushed) and `build` (the line through the push). All walk [`phases::walk`];
//! the deploying three then [`phases::deliver`]. They differ only in where the line starts and
//! whether it writes. Nothing here prints: the caller renders the [`RunOutcome`].

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::clients::registry::{CredentialResolver, ImageName, ImageReference, RegistryClient};
use crate::config::{Config, Env};
use crate::error::ResultExt;
use crate::error::{EXIT_FINDINGS, EXIT_OK};
use crate::model::ImageRef;
use crate::phases::context::ContextFlags;
use crate::phases::{self, DeliverInputs, Delivered, Inputs, Mode, Phase, Run, Secrets};
use crate::report::{ErrorReport, ImageSummary, Reporter, RunReport};
use crate::secret::Secret;

/// Settings the caller applies to the config inside the run (the command line's flags), so a
/// bad one is reported in the run's report like any other failure of the line.
pub type Settings<'a> = Box<dyn FnOnce(&mut Config) -> anyhow::Result<()> + Send + 'a>;

/// What one walk of the line is asked to do.
pub struct RunRequest<'a> {
    /// The PR context flags (`--repo-url`, `--pr`, ...).
    pub context: ContextFlags,
    /// Applied to the config first (the command line's build and deploy flags).
    pub settings: Settings<'a>,
    /// `--replicas`.
    pub replicas: Option<u32>,
    /// Read the registry password or token from stdin (beats every other credential source).
    pub registry_password_stdin: bool,
    /// Keep the rendered manifests in the report (`plan --show-manifests`).
    pub show_manifests: bool,
    /// `deploy` only: the image to deploy, pinned (`REPOSITORY[:tag]@sha256:<64 hex>`); default:
    /// the digest the policy's primary tag points at.
    pub image: Option<String>,
    /// `deploy` only: the repository checkout holding `[deploy] chart` and `values` (default:
    /// the directory of prpod.toml).
    pub source_dir: Option<PathBuf>,
}

impl RunRequest<'_> {
    /// A run for `context` with every setting from the config (`prpod event`'s run).
    pub fn for_context(context: ContextFlags) -> RunRequest<'static> {
        RunRequest {
            context,
            // The checks the command line's flags end with, on the config as it is.
            settings: Box::new(|c| Ok(c.check()?)),
            replicas: None,
            registry_password_stdin: false,
            show_manifests: false,
            image: None,
            source_dir: None,
        }
    }
}

/// What a walk of the line ended with.
#[derive(Debug)]
pub struct RunOutcome {
    /// The exit code the run means.
    pub code: u8,
    /// The run's report (its `error` set when it failed).
    pub report: RunReport,
    /// The failure, when it failed.
    pub error: Option<anyhow::Error>,
}

/// Where the line starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// From the source: build and push (`run`, `plan`).
    Build,
    /// From an image already pushed (`deploy`).
    Pushed,
}

/// `prpod run`: the whole line for one PR commit.
pub async fn run(config: Config, req: RunRequest<'_>, env: &Env, reporter: &Reporter) -> RunOutcome {
    collect(Start::Build, Mode::Apply, config, req, env, reporter).await
}

/// `prpod plan`: the line up to the pre-deploy findings, writing nothing anywhere.
pub async fn plan(config: Config, req: RunRequest<'_>, env: &Env, reporter: &Reporter) -> RunOutcome {
    collect(Start::Build, Mode::Plan, config, req, env, reporter).await
}

/// `prpod deploy`: the line from an image already pushed.
pub async fn deploy(config: Config, req: RunRequest<'_>, env: &Env, reporter: &Reporter) -> RunOutcome {
    collect(Start::Pushed, Mode::Apply, config, req, env, reporter).await
}

/// `prpod build`: context, tags, source, build, push. A failure is returned as it is (the
/// command has no report to carry it).
pub async fn build(
    mut config: Config,
    req: RunRequest<'_>,
    env: &Env,
    reporter: &Reporter,
) -> anyhow::Result<RunReport> {
    (req.settings)(&mut config)?;
    let secrets = Secrets {
        git_token: phases::source::token(&config.source, env)?,
        registry_password: if req.registry_password_stdin { Some(read_stdin_secret()?) } else { None },
    };
    let inputs = Inputs { config: &config, context: &req.context, env, secrets: &secrets, mode: Mode::Apply };
    let run = phases::walk(&inputs, Phase::Push, reporter).await?;
    let pushed = run.pushed.as_ref();
    Ok(RunReport {
        context: run.context,
        tags: run.tags,
        image: pushed.map(|p| ImageSummary { repository: p.repository.to_string(), digest: p.digest.clone() }),
        backend: run.built.as_ref().map(|b| b.backend.clone()),
        // buildx pushes by itself and says nothing about layers.
        layers: pushed.filter(|_| run.built.as_ref().is_some_and(|b| b.layout.is_some())).map(|p| p.layers),
        phases: reporter.phases(),
        ..RunReport::default()
    })
}

/// The registry password from stdin (`--registry-password-stdin`).
pub fn read_stdin_secret() -> anyhow::Result<Secret> {
    use std::io::Read;
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("failed to read the registry password from stdin")?;
    let secret = Secret::new(s);
    anyhow::ensure!(!secret.is_empty(), "--registry-password-stdin: stdin was empty");
    Ok(secret)
}

/// Walks the line. A failure is kept with the phases that ran (the report carries `error` with
/// its causes) and becomes the exit code.
async fn collect(
    start: Start,
    mode: Mode,
    mut config: Config,
    req: RunRequest<'_>,
    env: &Env,
    reporter: &Reporter,
) -> RunOutcome {
    let mut report = RunReport::default();
    let show_manifests = req.show_manifests;
    // SIGINT / SIGTERM end the run in a known state (see `crate::shutdown`): guards release the
    // deploy lock and remove temporary files, Helm is stopped and its rollback waited for.
    if let Err(e) = crate::shutdown::listen() {
        tracing::warn!("cannot handle SIGINT/SIGTERM ({e}): a signal kills prpod at once");
    }
    let result = crate::shutdown::interruptible(line(start, mode, req, &mut config, env, reporter, &mut report)).await;
    // Locks dropped on an error or a signal are released in the background: wait for them.
    crate::phases::preview::lock::finish_releases().await;
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
    req: RunRequest<'_>,
    config: &mut Config,
    env: &Env,
    reporter: &Reporter,
    report: &mut RunReport,
) -> anyhow::Result<Delivered> {
    (req.settings)(config)?;
    let (source_dir, image_flag) = match start {
        Start::Build => (None, None),
        Start::Pushed => {
            if let Some(i) = &req.image {
                // `--image` names the repository; the policy's tags are computed for it.
                let r = parse_pinned(i)?;
                config.image.repository = Some(r.name.to_string());
            }
            (req.source_dir, req.image)
        }
    };
    let secrets = Secrets {
        git_token: phases::source::token(&config.source, env)?,
        registry_password: if req.registry_password_stdin { Some(read_stdin_secret()?) } else { None },
    };
    // The chart phase needs the cluster's discovery: read it while the build half runs.
    let prefetched = (mode == Mode::Apply).then(|| phases::prefetch_cluster(&config.deploy.kube_target()));
    let inputs = Inputs { config, context: &req.context, env, secrets: &secrets, mode };
    let last = match start {
        Start::Build => Phase::Push,
        Start::Pushed => Phase::Tags,
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
    let repository = run.image.clone().context("the walk produced no image repository")?;

    // The registry bundle the walk resolved in its context phase (credentials are read once).
    let registry = run.registry.clone().context("the walk produced no registry")?;
    // The image to deploy, as a reference; it becomes the plugin-facing `ImageRef` here.
    let reference = match (&run.pushed, image_flag) {
        (Some(p), _) => ImageReference {
            name: p.repository.clone(),
            tag: Some(tags.primary.clone()),
            digest: Some(p.digest.clone()),
        },
        (None, Some(flag)) => {
            let r = parse_pinned(&flag)?;
            ImageReference { tag: r.tag.or(Some(tags.primary.clone())), ..r }
        }
        (None, None) if mode == Mode::Plan => {
            ImageReference { name: repository, tag: Some(tags.primary.clone()), digest: None }
        }
        (None, None) => resolve_primary(&registry.client, repository, &tags.primary).await?,
    };
    let host = reference.name.api_host().to_string();
    let image = ImageRef::from(reference);
    if let Some(d) = &image.digest {
        report.image = Some(ImageSummary { repository: image.repository.clone(), digest: d.clone() });
    }
    report.deploy_image = Some(phases::chart::image_reference(&image));
    let pull = pull_secret(&registry.credentials, &host, reporter).await?;
    let chart_root = run.checkout.as_ref().map(|c| c.path.clone()).or(source_dir);
    let input = DeliverInputs {
        ctx,
        tags,
        release,
        image,
        chart_root: chart_root.as_deref(),
        replicas: req.replicas,
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
fn is_operator_file(config: &Config, dir: &Path) -> bool {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    config.path.as_deref().is_some_and(|p| same(p, &dir.join(crate::repo_config::FILE_NAME)))
}

/// `REPO[:tag]@sha256:<64 hex>`, required to be pinned.
fn parse_pinned(text: &str) -> anyhow::Result<ImageReference> {
    let r = ImageReference::parse(text).at(Phase::Deploy)?.value;
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
    let Some(pull) = resolver.pull_secret(host).await.at(Phase::Deploy)? else { return Ok(None) };
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
async fn resolve_primary(client: &RegistryClient, repository: ImageName, tag: &str) -> anyhow::Result<ImageReference> {
    let reference = ImageReference { name: repository, tag: Some(tag.to_string()), digest: None };
    let digest = client.manifest_digest(&reference).await.at(Phase::Deploy)?.with_context(|| {
        format!("{reference} does not exist: build and push it first (`prpod build`), or pass --image REPO@sha256:...")
    })?;
    Ok(ImageReference { digest: Some(digest), ..reference })
}
