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
pub mod lock;
pub mod preview;
pub mod push;
pub mod registry;
// The rollout state machine is verify's (phases/verify/rollout.rs); this alias keeps
// `phases::rollout` paths working until their callers move.
pub use verify::rollout;
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
    /// The image repository (normalised).
    pub image: Option<ImageName>,
    /// The registry client and credentials of the run (deploy reuses them for pull secrets).
    pub registry: Option<registry::Registry>,
    /// The tag-policy's tags.
    pub tags: Option<TagSet>,
    /// The tag-policy's release.
    pub release: Option<ReleaseTarget>,
    /// The image repository (normalised), registry host included.
    pub repository: Option<String>,
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
    let repository = image.to_string();
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
    let tags = plugin.compute_tags(&ctx, &repository).await?;
    let release = plugin.release(&ctx).await?;
    // A policy cannot send a preview to the cluster's own namespaces.
    preview::check_target(&release)?;
    phase.finish(format!("{} (+{} more)", tags.primary, tags.extra.len()));
    run.tags = Some(tags.clone());
    run.release = Some(release);
    run.repository = Some(repository.clone());
    if last == Phase::Tags {
        return Ok(run);
    }

    if inputs.mode == Mode::Plan {
        return plan_build(inputs, ctx, repository, tags, run, reporter).await;
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
    repository: String,
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
        .skip(format!("would build {repository} from {sha12} (backend {})", inputs.config.build.backend.name()));
    let all: Vec<&str> = std::iter::once(&tags.primary).chain(&tags.extra).map(String::as_str).collect();
    reporter.phase(Phase::Push).skip(format!("would push {repository} as {}", all.join(", ")));
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
    use crate::clients::helm::Helm;
    use crate::clients::kube::Kube;
    use crate::model::DeployTarget;

    let mut out = Delivered::default();
    let host = PluginHost::shared()?;
    let dc = &config.deploy;
    let (release, ctx_in) = (input.release, input.ctx);

    // --- chart: generate or take, render, check ---------------------------------------------
    let phase = reporter.phase(Phase::Chart);
    let target = dc.kube_target();
    // The cluster's version and the kinds it serves decide what the chart is rendered against
    // and which objects are namespaced (discovery); a plan also reads the release's latest
    // revision (through the API, no Helm process). Both start now, so the TLS handshake and the
    // requests overlap the chart's generation. A plan without a cluster falls back to Helm's
    // default capabilities and prpod's built-in list of cluster-scoped kinds.
    let cluster_read = {
        let (target, ns, name, plan) =
            (target.clone(), release.namespace.clone(), release.name.clone(), input.mode == Mode::Plan);
        // A prefetch was made for the config's target, which is this one.
        let early = if plan { None } else { input.prefetched.take() };
        tokio::spawn(async move {
            if let Some(early) = early
                && let Ok(Ok((kube, api))) = early.await
            {
                return Some(Ok((kube, api, None)));
            }
            let read = async move {
                let kube = Kube::connect(&target).await?;
                let (api, state) = if plan {
                    let (api, state) =
                        tokio::join!(chart::ClusterApi::discover(&kube), kube.helm_release_state(&ns, &name));
                    (api, Some(state))
                } else {
                    (chart::ClusterApi::discover(&kube).await, None)
                };
                Ok::<_, crate::clients::kube::KubeError>((kube, api, state))
            };
            if plan {
                tokio::time::timeout(std::time::Duration::from_secs(5), read).await.ok()
            } else {
                Some(read.await)
            }
        })
    };
    let helm = Helm::detect(&dc.helm, target.clone(), crate::config::cache_dir()).await?;
    let registry = crate::clients::registry::api_host(input.image.repository.split('/').next().unwrap_or(""));
    let mut ctx = ctx_in.clone();
    ctx.target = Some(DeployTarget {
        registry: registry.to_string(),
        image: input.image.clone(),
        tags: input.tags.clone(),
        release: release.clone(),
    });
    let chart_dir = match (&dc.chart, input.chart_root) {
        (Some(c), Some(root)) => Some(root.join(c)),
        (Some(c), None) => Some(config.resolve_path(c)),
        (None, _) => None,
    };
    let values_files = dc
        .values
        .iter()
        .map(|v| match input.chart_root {
            Some(root) => root.join(v),
            None => config.resolve_path(v),
        })
        .collect();
    // Values files in the pull request's checkout: no symlink followed on the way (one to a file
    // of the runner would be read by Helm into the manifests), regular, and bounded.
    if let Some(root) = input.chart_root {
        for v in &dc.values {
            crate::input::check_repository_file(root, v, MAX_VALUES_BYTES, "the values file (`[deploy] values`)")?;
        }
    }
    let generator = match chart_dir {
        Some(_) => None,
        None => Some(
            host.load(&config.plugin_ref(World::ChartGenerator))?.with_limits(config.limits_for(World::ChartGenerator)),
        ),
    };
    let mut verifiers = Vec::new();
    for (r, limits) in config.verifiers() {
        verifiers.push(host.load(&r)?.with_limits(limits));
    }
    let read = cluster_read.await.map_err(|e| {
        anyhow::Error::new(crate::error::FailureKind::Internal).context(format!("reading the cluster's API: {e}"))
    })?;
    let (kube, cluster, plan_state, unread) = match (input.mode, read) {
        (_, Some(Ok((kube, Ok(api), state)))) => (Some(kube), api, state.map(|s| s.map_err(|e| e.to_string())), None),
        (Mode::Apply, Some(Ok((_, Err(e), _)) | Err(e))) => return Err(e.into()),
        (_, Some(Ok((_, Err(e), state)))) => {
            (None, chart::ClusterApi::builtin(), state.map(|s| s.map_err(|e| e.to_string())), Some(e.to_string()))
        }
        (_, Some(Err(e))) => (None, chart::ClusterApi::builtin(), Some(Err(e.to_string())), Some(e.to_string())),
        (_, None) => (None, chart::ClusterApi::builtin(), None, Some("no answer within 5 s".to_string())),
    };
    if let Some(why) = unread {
        phase.note(format!(
            "the cluster's API could not be read ({why}): the chart renders with Helm's default capabilities \
             and is judged with prpod's built-in list of cluster-scoped kinds; a deploy asks the cluster"
        ));
    }
    let req = chart::ChartRequest {
        ctx: &ctx,
        release,
        image: &input.image,
        chart_dir,
        repository: Some(match input.chart_root {
            Some(root) => root.to_path_buf(),
            None => config.resolve_path(std::path::Path::new(".")),
        }),
        cluster: &cluster,
        values_files,
        set: &dc.set,
        app: &config.app,
        replicas: input.replicas,
        pull_secret: input.pull_secret.as_ref().map(|_| dc.pull_secret.as_str()),
    };
    let rendered = chart::render(&req, &helm, generator.as_ref()).await?;
    let chart_name = chart::chart_name(&rendered.dir);
    let from = match &rendered.source {
        chart::ChartSource::Generated { plugin } => format!("generated by {plugin}"),
        chart::ChartSource::Directory { path } => match input.chart_root.and_then(|r| path.strip_prefix(r).ok()) {
            Some(rel) => format!("from the repository's {}", rel.display()),
            None => format!("from {}", path.display()),
        },
    };
    out.chart = Some(format!("{chart_name} ({from})"));
    out.rendered = Some(rendered.rendered.clone());
    let scope = chart::ScopePolicy { cluster: &cluster, allow_cluster_kinds: &dc.allow_cluster_kinds };
    let findings = chart::check_manifests(&ctx, &rendered, &input.image, scope, &verifiers).await?;
    for f in &findings {
        phase.finding(f.clone());
    }
    let errors = findings.iter().filter(|f| f.finding.severity == crate::model::Severity::Error).count();
    out.findings = findings;
    let kinds: Vec<String> = rendered.manifests.iter().map(|m| format!("{}/{}", m.kind, m.name)).collect();
    let names: Vec<&str> = verifiers.iter().map(|v| v.name()).collect();
    phase.finish(format!(
        "{chart_name} {from}, Helm {}, {}: {}; {errors} error finding(s) ({} and prpod's checks)",
        helm.version(),
        rendered.rendered_against,
        kinds.join(", "),
        names.join(", ")
    ));
    if errors > 0 {
        out.blocked = true;
        reporter.phase(Phase::Deploy).skip("blocked by error findings: nothing was deployed");
        return Ok(out);
    }

    // --- plan: what the deploy would do -----------------------------------------------------
    if input.mode == Mode::Plan {
        let phase = reporter.phase(Phase::Deploy);
        let (name, ns) = (&release.name, &release.namespace);
        // Whose the namespace is: a plan refuses what a run would refuse (reading only).
        if let Some(k) = &kube
            && let Ok(Some(refusal)) = preview::check(k, &ctx, release, dc.adopt_namespace).await
        {
            return Err(refusal.into());
        }
        let current = match plan_state {
            Some(Ok(Some((rev, status)))) => {
                format!("upgrade release {name} in namespace {ns} from revision {rev} ({status})")
            }
            Some(Ok(None)) => format!("install release {name} in namespace {ns} (new)"),
            Some(Err(e)) => format!("install or upgrade release {name} in namespace {ns} (its state is unknown: {e})"),
            None => format!("install or upgrade release {name} in namespace {ns} (the cluster did not answer)"),
        };
        out.plan.push(format!("would {current} with Helm {}", helm.version()));
        if input.pull_secret.is_some() {
            out.plan.push(format!(
                "would write the pull Secret {} and attach it to the namespace's default ServiceAccount",
                dc.pull_secret
            ));
        }
        out.plan.push(format!("would wait up to {}s for the rollout, then run check-release", dc.timeout.as_secs()));
        phase.skip(out.plan[0].clone());
        reporter.phase(Phase::Verify).skip("would check the rollout");
        return Ok(out);
    }

    // --- deploy -----------------------------------------------------------------------------
    let phase = reporter.phase(Phase::Deploy);
    let started = std::time::Instant::now();
    let kube = kube.expect("a deploy has a connected cluster");
    let since = k8s_openapi::jiff::Timestamp::now();
    match deploy::prepare_namespace(&kube, &ctx, release, input.pull_secret.as_ref(), dc).await? {
        preview::Claimed::Created => phase.note(format!("created namespace {}", release.namespace)),
        preview::Claimed::Adopted => {
            phase.note(format!("adopted namespace {} (`adopt_namespace`): it is now this preview's", release.namespace))
        }
        preview::Claimed::Ours => {}
    }
    let (name, ns) = (&release.name, &release.namespace);
    crate::shutdown::note_release(format!("release {name} in namespace {ns} was not changed"));
    // Released on every path: explicitly below, by its drop on an error or a signal.
    let lock = deploy::DeployLock::acquire(&kube, &ctx, release, dc.timeout).await?;
    // Closed meanwhile, or superseded by a newer commit of the PR: stop before Helm (and wake a
    // sleeping preview).
    if let Some(note) =
        lifecycle::check_current(&kube, release, &ctx.sha, input.chart_root, config.lifecycle.wake_on_push).await?
    {
        phase.note(note);
    }
    let recovered = {
        // A Helm rollback runs to its end, even when a signal comes meanwhile.
        let _deferred = crate::shutdown::defer();
        deploy::recover_pending(&helm, &kube, release, &lock, dc.timeout).await?
    };
    if let Some(note) = recovered {
        crate::shutdown::note_release(format!("{note}; release {name} in namespace {ns} was not upgraded"));
        phase.note(note);
    }
    let mut watch = rollout::RolloutWatch::start(&kube, &release.namespace).await?;
    phase.waiting(format!(
        "helm upgrade --install {} (Helm {}): waiting for the rollout",
        release.name,
        helm.version()
    ));
    let dreq = deploy::DeployRequest { release, chart: &rendered, config: dc, lock: &lock };
    let note = |m: String| phase.note(m);
    let deployed = deploy::upgrade(&dreq, &helm, &kube, &mut watch, &note).await?;
    crate::shutdown::note_release(format!(
        "release {name} in namespace {ns} is at revision {} (deployed); its verify did not finish",
        deployed.revision
    ));
    phase.finish(format!(
        "release {} revision {} in namespace {} ({})",
        deployed.name, deployed.revision, deployed.namespace, deployed.chart
    ));
    out.release = Some(deployed.clone());

    // --- verify -----------------------------------------------------------------------------
    let phase = reporter.phase(Phase::Verify);
    phase.waiting("waiting for every replica to be ready");
    let left = dc.timeout.saturating_sub(started.elapsed()).max(std::time::Duration::from_secs(5));
    let settled = verify::settle(&mut watch, release, left, dc.crash_restarts).await?;
    let status = settled.snapshot.release_status(release, Some(since));
    let after = verify::check_release(&ctx, &status, &verifiers).await?;
    for f in &after {
        phase.finding(f.clone());
    }
    let errors = after.iter().filter(|f| f.finding.severity == crate::model::Severity::Error).count();
    out.findings.extend(after);
    if !settled.failures.is_empty() || errors > 0 {
        let failures = rollout::evidence(&kube, &release.namespace, settled.failures.clone(), dc.log_lines).await;
        // Another run holding the lock now may be deploying: a rollback would undo its work.
        if let Err(lost) = lock.check() {
            return Err(deploy::DeployError::LockLost {
                lost,
                state: format!(
                    "the verify of revision {} failed and it was not rolled back; {}",
                    deployed.revision,
                    deploy::release_state(&helm, &kube, release).await
                ),
            }
            .into());
        }
        let restored = {
            let _deferred = crate::shutdown::defer();
            deploy::roll_back(&helm, &deployed, dc.timeout).await?
        };
        let back = match (restored, deployed.previous_revision) {
            (Some(r), Some(to)) if r != to => format!("rolled back to revision {to} (now serving as revision {r})"),
            (Some(r), _) => format!("rolled back to revision {r}"),
            (None, _) => "uninstalled the failed first install".into(),
        };
        crate::shutdown::note_release(format!("release {name} in namespace {ns}: its verify failed and it was {back}"));
        phase.note(back);
        // Not deployed, but its `sha-*` tag is the PR's: teardown deletes it too.
        let _ = lifecycle::record_deployed(&kube, ns, &ctx.sha, false).await;
        lock.release().await;
        if !failures.is_empty() {
            return Err(deploy::rolled_back(
                release,
                "a new pod failed after Helm returned".into(),
                failures,
                restored,
                &watch.state,
            )
            .into());
        }
        out.blocked = true;
        out.release = None;
        return Ok(out);
    }
    // Verified: the commit and time, for superseding, teardown's tags and gc (recorded under the
    // Lease; a failure costs only those).
    if let Err(e) = lifecycle::record_deployed(&kube, ns, &ctx.sha, true).await {
        phase.note(format!("the deployed commit was not recorded on the namespace: {e}"));
    }
    lock.release().await;
    if settled.settled {
        let left = dc.timeout.saturating_sub(started.elapsed()).max(std::time::Duration::from_secs(5));
        let unrouted = verify::wait_for_endpoints(&kube, release, left).await?;
        if !unrouted.is_empty() {
            phase.note(format!(
                "service(s) {} route to no ready pod yet; the preview URL may not answer (check their selectors)",
                unrouted.join(", ")
            ));
        }
    }
    out.preview_url = verify::preview_url(&kube, release).await?;
    let pods: usize = status.workloads.iter().map(|w| w.pods.len()).sum();
    let ready: u32 = status.workloads.iter().map(|w| w.ready).sum();
    phase.finish(format!(
        "{ready} ready of {pods} pod(s){}{}",
        if settled.settled { "" } else { " (not settled in time)" },
        out.preview_url.as_deref().map(|u| format!("; {u}")).unwrap_or_default()
    ));
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
