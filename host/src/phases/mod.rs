//! The line of phases a run walks (see `shared/DESIGN.md`): context, tags, source, build, push,
//! chart, deploy, verify. Each phase is a function of the values before it: it takes what it
//! needs as arguments and returns its value; it calls clients, never another phase. `run`,
//! `build`, `deploy` and `plan` walk the same line ([`walk`]); `plan` replaces the side-effecting
//! steps with "what would happen".
//!
//! Every step of the line runs inside [`Reporter::phase`], so the human view and the JSON report
//! list the same phases with the same durations, and a failing phase is recorded as `failed`.

pub mod build;
pub mod chart;
pub mod context;
pub mod deploy;
pub mod github;
pub mod lifecycle;
pub mod preview;
pub mod push;
pub mod registry;
pub mod sleep;
pub mod source;
pub mod teardown;
pub mod verify;

use crate::clients::registry::ImageName;
use crate::config::{Config, Env};
use crate::model::{BuiltImage, Checkout, PrContext, PushedImage, ReleaseTarget, TagSet};
use crate::plugins::{PluginHost, World};
use crate::report::Reporter;
use crate::secret::Secret;

pub use crate::model::Phase;

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a walk of the line starts from: the resolved config, the context flags, the
/// environment it was read from and the credentials (which only clients ever see).
pub struct Inputs<'a> {
    /// `prpod.toml` with environment and flags already applied.
    pub config: &'a Config,
    /// The PR context flags (`--repo-url`, `--pr`, ...).
    pub context: &'a context::ContextFlags,
    /// The environment (GitHub Actions variables, tokens).
    pub env: &'a Env,
    /// Credentials, handed to the clients that need them.
    pub secrets: &'a Secrets,
    /// Apply, or only plan.
    pub mode: Mode,
}

/// Whether a walk changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Build, push, deploy.
    #[default]
    Apply,
    /// `prpod plan`: the steps that only read run as in a real run; each step that would write
    /// (build, push, the cluster) is skipped and says what it would do.
    Plan,
}

/// The credentials of a run that prpod reads itself; the other registry credentials are
/// resolved from `[registry]` by [`registry::Registry::for_push`].
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    /// Token for cloning over HTTPS (`source.token_file`, `PRPOD_GIT_TOKEN`, `GITHUB_TOKEN`).
    pub git_token: Option<Secret>,
    /// Registry password or token from `--registry-password-stdin` (beats the other sources).
    pub registry_password: Option<Secret>,
}

impl Secrets {
    /// Every secret, for scrubbing text that came from outside.
    pub fn all(&self) -> impl Iterator<Item = &Secret> {
        self.git_token.iter().chain(&self.registry_password)
    }
}

/// The values of one walk of the line, each present once its phase ran.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// The PR context.
    pub context: Option<PrContext>,
    /// The image repository (normalised), registry host included; its string form is
    /// `image.to_string()`.
    pub image: Option<ImageName>,
    /// The registry client and credentials of the run (deploy reuses them for pull secrets).
    pub registry: Option<registry::Registry>,
    /// The tag-policy's tags.
    pub tags: Option<TagSet>,
    /// The tag-policy's release.
    pub release: Option<ReleaseTarget>,
    /// The checked-out commit.
    pub checkout: Option<Checkout>,
    /// The built image.
    pub built: Option<BuiltImage>,
    /// The pushed image.
    pub pushed: Option<PushedImage>,
    /// The repository's prpod.toml at the PR's commit, when it has one (already checked: only
    /// keys the repository may set). The walk applied it for the build; the deploy half applies
    /// it too ([`Config::apply_repository`]).
    pub repository_config: Option<crate::repo_config::RepositoryConfig>,
}

/// Walks the line from the start through `last` (inclusive), recording each phase with the
/// reporter. On error the run so far is lost with it: the reporter already holds the phases.
pub async fn walk(inputs: &Inputs<'_>, last: Phase, reporter: &Reporter) -> anyhow::Result<Run> {
    let mut run = Run::default();
    let config = inputs.config;
    redact_secrets(inputs, reporter);

    // Context: the PR, the image it becomes, and the registry credentials (read now, so a
    // missing password fails before anything is cloned or built).
    let phase = reporter.phase(Phase::Context);
    let ctx = context::resolve(inputs.context, &config.source, inputs.env)?;
    let image = build::image_name(&config.image, &phase)?;
    let registry =
        registry::Registry::for_push(&registry_config(config), &image, inputs.secrets.registry_password.as_ref())?;
    refuse_untrusted_fork(&ctx, inputs)?;
    phase.finish(context::summary(&ctx));
    run.context = Some(ctx.clone());
    run.image = Some(image.clone());
    run.registry = Some(registry.clone());
    if last == Phase::Context {
        return Ok(run);
    }

    let phase = reporter.phase(Phase::Tags);
    let host = PluginHost::shared()?;
    let plugin = host.load(&config.plugin_ref(World::TagPolicy))?;
    let plugin = plugin.with_limits(config.limits_for(World::TagPolicy));
    let tags = plugin.compute_tags(&ctx, &image.to_string()).await?;
    let release = plugin.release(&ctx).await?;
    // A policy cannot send a preview to the cluster's own namespaces.
    preview::check_target(&release)?;
    phase.finish(format!("{} (+{} more)", tags.primary, tags.extra.len()));
    run.tags = Some(tags.clone());
    run.release = Some(release);
    if last == Phase::Tags {
        return Ok(run);
    }

    if inputs.mode == Mode::Plan {
        return plan_build(inputs, ctx, &image, tags, run, reporter).await;
    }

    let phase = reporter.phase(Phase::Source);
    let checkout = source::fetch_checkout(&ctx, &config.source, inputs.secrets, &phase).await?;
    let repo_config = source::repository_config(&checkout, config, &phase)?;
    phase.finish(source::summary(&checkout));
    run.checkout = Some(checkout.clone());
    let merged;
    let config = match &repo_config {
        Some(r) => {
            let mut c = config.clone();
            c.apply_repository(r)?;
            merged = c;
            &merged
        }
        None => config,
    };
    run.repository_config = repo_config;
    if last == Phase::Source {
        return Ok(run);
    }

    let phase = reporter.phase(Phase::Build);
    let built = build::build(&checkout, &ctx, &image, &tags, config, &registry, &phase).await?;
    phase.finish(build::summary(&built));
    run.built = Some(built.clone());
    if last == Phase::Build {
        return Ok(run);
    }

    let phase = reporter.phase(Phase::Push);
    let (pushed, already) = push::push(&built, &image, &tags, &registry, &phase).await?;
    if already {
        phase.skip(format!("{} pushed {}@{} itself", built.backend, pushed.repository, pushed.digest));
    } else {
        phase.finish(push::summary(&pushed));
    }
    run.pushed = Some(pushed);
    Ok(run)
}

/// Registers every secret the run can reach with the reporter, which scrubs them from all it
/// prints: the credentials prpod read, and the variables and files that hold others.
fn redact_secrets(inputs: &Inputs<'_>, reporter: &Reporter) {
    for s in inputs.secrets.all() {
        reporter.redact(s);
    }
    for var in ["PRPOD_GIT_TOKEN", "GITHUB_TOKEN", "PRPOD_CACHE_KEY", "ACTIONS_RUNTIME_TOKEN"] {
        if let Some(v) = inputs.env.get(var) {
            reporter.redact(&Secret::new(v));
        }
    }
    for secret in registry_secrets(inputs) {
        reporter.redact(&secret);
    }
}

/// The registry passwords the operator's settings make reachable: push and pull, from their
/// variables (the defaults, or the ones `[registry]` names) and files. Files are read as the
/// credentials resolver reads them (bounded, trailing newline removed).
fn registry_secrets(inputs: &Inputs<'_>) -> Vec<Secret> {
    use crate::clients::registry::PasswordSource;
    use crate::phases::registry::{DEFAULT_PASSWORD_ENV, DEFAULT_PULL_PASSWORD_ENV};
    let r = &inputs.config.registry;
    let vars = [DEFAULT_PASSWORD_ENV, DEFAULT_PULL_PASSWORD_ENV].into_iter();
    let vars = vars.chain(r.password_env.as_deref()).chain(r.pull_password_env.as_deref());
    let mut out: Vec<Secret> = vars.filter_map(|v| inputs.env.get(v)).map(Secret::new).collect();
    for file in r.password_file.iter().chain(&r.pull_password_file) {
        out.extend(PasswordSource::File(file.clone()).read().ok());
    }
    out
}

/// A pull request from a fork runs code and files its author controls: with secrets present (a
/// git token, registry credentials) it is refused unless the operator set `[source] allow_forks`.
fn refuse_untrusted_fork(ctx: &PrContext, inputs: &Inputs<'_>) -> anyhow::Result<()> {
    if !ctx.fork || inputs.config.source.allow_forks {
        return Ok(());
    }
    let mut held = Vec::new();
    if inputs.secrets.git_token.is_some() {
        held.push("a git token");
    }
    if inputs.secrets.registry_password.is_some() || !registry_secrets(inputs).is_empty() {
        held.push("registry credentials");
    }
    anyhow::ensure!(
        held.is_empty(),
        "pull request {} of {} comes from a fork, and this run holds {}: refusing to build and deploy a fork's \
         code with them. Run fork pull requests without secrets (GitHub gives `pull_request` runs from forks \
         none), or set `[source] allow_forks = true` (PRPOD_ALLOW_FORKS=true) in the operator's config if you \
         accept that a fork's Dockerfile and chart run with these credentials in reach",
        ctx.number.map(|n| format!("#{n}")).unwrap_or_else(|| ctx.branch.clone()),
        ctx.repository,
        held.join(" and ")
    );
    Ok(())
}

/// The build half of a plan: the source is read (for the repository's prpod.toml and chart); the
/// build and the push say what they would do.
async fn plan_build(
    inputs: &Inputs<'_>,
    ctx: PrContext,
    image: &ImageName,
    tags: TagSet,
    mut run: Run,
    reporter: &Reporter,
) -> anyhow::Result<Run> {
    // The source is always read: the repository's prpod.toml at this commit says what the app
    // is and which chart it takes, and a plan checks what a run would deploy.
    let phase = reporter.phase(Phase::Source);
    let sha12 = ctx.sha.get(..12).unwrap_or(&ctx.sha);
    let checkout = source::fetch_checkout(&ctx, &inputs.config.source, inputs.secrets, &phase).await?;
    run.repository_config = source::repository_config(&checkout, inputs.config, &phase)?;
    phase.finish(source::summary(&checkout));
    run.checkout = Some(checkout);
    reporter
        .phase(Phase::Build)
        .skip(format!("would build {image} from {sha12} (backend {})", inputs.config.build.backend.name()));
    let all: Vec<&str> = std::iter::once(&tags.primary).chain(&tags.extra).map(String::as_str).collect();
    reporter.phase(Phase::Push).skip(format!("would push {image} as {}", all.join(", ")));
    Ok(run)
}

/// A connection to the cluster and its discovery, started early ([`prefetch_cluster`]).
pub type Prefetched = tokio::task::JoinHandle<
    Result<
        (crate::clients::kube::Kube, Result<chart::ClusterApi, crate::clients::kube::KubeError>),
        crate::clients::kube::KubeError,
    >,
>;

/// Starts connecting to `target` and reading its discovery documents now, so a `run` has them
/// when its chart phase starts (the build half takes far longer than the ~60 ms they cost).
/// Nothing is written; a failure here is simply asked again by the chart phase.
pub fn prefetch_cluster(target: &crate::clients::helm::KubeTarget) -> Prefetched {
    let t = target.clone();
    tokio::spawn(async move {
        let kube = crate::clients::kube::Kube::connect(&t).await?;
        let api = chart::ClusterApi::discover(&kube).await;
        Ok((kube, api))
    })
}

/// Largest values file prpod hands Helm from the repository.
pub const MAX_VALUES_BYTES: u64 = 8 << 20;

/// What the deploy half of the line (chart, deploy, verify) starts from.
pub struct DeliverInputs<'a> {
    /// The PR context.
    pub ctx: &'a PrContext,
    /// The tag-policy's tags.
    pub tags: &'a TagSet,
    /// The tag-policy's release.
    pub release: &'a ReleaseTarget,
    /// The image to deploy: repository, primary tag, and its digest (`None` only in a plan).
    pub image: crate::model::ImageRef,
    /// Where `[deploy] chart` and `values` are found: the checkout (run, plan) or the repository
    /// directory given to `deploy`.
    pub chart_root: Option<&'a std::path::Path>,
    /// `--replicas`.
    pub replicas: Option<u32>,
    /// The `.dockerconfigjson` pods pull the image with, when the registry needs credentials.
    pub pull_secret: Option<Secret>,
    /// Apply, or only plan.
    pub mode: Mode,
    /// The cluster's connection and discovery, when the caller started them early
    /// ([`prefetch_cluster`]).
    pub prefetched: Option<Prefetched>,
}

/// What the deploy half produced.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    /// The chart (`name-version`, and where it came from).
    pub chart: Option<String>,
    /// `helm template`'s output.
    pub rendered: Option<String>,
    /// Every verifier finding, before and after the deploy.
    pub findings: Vec<crate::model::ReportedFinding>,
    /// An `error` finding stopped the run (nothing deployed, or the deploy was rolled back).
    pub blocked: bool,
    /// The release after the deploy.
    pub release: Option<crate::model::Release>,
    /// Where the preview answers.
    pub preview_url: Option<String>,
    /// What a plan would do.
    pub plan: Vec<String>,
}

/// Chart, pre-deploy findings, deploy and verify (the second half of the line), shared by `run`,
/// `deploy` and `plan`. In [`Mode::Plan`] nothing is written anywhere: the chart is rendered and
/// checked, and the deploy says what it would do (reading the release's current revision when
/// the cluster answers).
pub async fn deliver(config: &Config, mut input: DeliverInputs<'_>, reporter: &Reporter) -> anyhow::Result<Delivered> {
    let dc = &config.deploy;
    let release = input.release;
    let charted = chart::prepare(config, &mut input, reporter).await?;
    let mut out = Delivered {
        chart: Some(charted.chart.clone()),
        rendered: Some(charted.rendered.rendered.clone()),
        findings: charted.findings.clone(),
        ..Delivered::default()
    };
    if charted.errors() > 0 {
        out.blocked = true;
        reporter.phase(Phase::Deploy).skip("blocked by error findings: nothing was deployed");
        return Ok(out);
    }
    if input.mode == Mode::Plan {
        out.plan = deploy::describe_plan(&charted, release, input.pull_secret.is_some(), dc, reporter).await?;
        return Ok(out);
    }

    let mut installed = deploy::install(config, &charted, &input, reporter).await?;
    out.release = Some(installed.release.clone());
    let kube = charted.kube.as_ref().expect("a deploy has a connected cluster");
    let phase = reporter.phase(Phase::Verify);
    // What is left of `[deploy] timeout` after the deploy, and never less than 5 s.
    let started = installed.started;
    let left = || dc.timeout.saturating_sub(started.elapsed()).max(std::time::Duration::from_secs(5));
    let verdict = verify::verify_release(
        &mut installed.watch,
        &charted,
        release,
        installed.since,
        left(),
        dc.crash_restarts,
        &phase,
    )
    .await?;
    out.findings.extend(verdict.findings.iter().cloned());
    if !verdict.passed() {
        let failures = verdict.settled.failures.clone();
        deploy::roll_back_unverified(&charted, kube, release, installed, failures, dc, &phase).await?;
        out.blocked = true;
        out.release = None;
        return Ok(out);
    }
    // Verified: the commit and time, for superseding, teardown's tags and gc (recorded under the
    // Lease; a failure costs only those).
    if let Err(e) = lifecycle::record_deployed(kube, &release.namespace, &charted.ctx.sha, true).await {
        phase.note(format!("the deployed commit was not recorded on the namespace: {e}"));
    }
    installed.lock.release().await;
    out.preview_url = verify::served(kube, release, &verdict, left(), &phase).await?;
    phase.finish(verdict.summary(out.preview_url.as_deref()));
    Ok(out)
}

/// The `[registry]` settings (credential sources, CA, plain-HTTP hosts), with `PRPOD_REGISTRY_*`
/// applied.
pub fn registry_config(config: &Config) -> crate::phases::registry::RegistryConfig {
    // `[registry]` from prpod.toml; the variables again in case the config was not read through
    // `Config::apply_env` (they beat the file either way).
    let mut r = config.registry.clone();
    r.apply_vars(|k| std::env::var(k).ok());
    r
}
