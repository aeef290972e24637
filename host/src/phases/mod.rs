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
pub mod push;
pub mod source;
pub mod rollout;
pub mod verify;

use serde::Serialize;

use crate::config::{Config, Env};
use crate::model::{BuiltImage, Checkout, PrContext, PushedImage, ReleaseTarget, TagSet};
use crate::plugins::{PluginHost, World};
use crate::report::Reporter;
use crate::secret::Secret;

/// One step of the line, in the order a run walks them. Its [`Phase::name`] is what the human
/// view prints and what `phases[].name` says in the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Who and what the run is about: flags and GitHub Actions' event ([`context`]).
    Context,
    /// The tag-policy plugin's tags and release.
    Tags,
    /// Clone or fetch, then check out the exact commit ([`source`]).
    Source,
    /// Build the image ([`build`]).
    Build,
    /// Push it under every tag ([`push`]).
    Push,
    /// Generate and render the chart.
    Chart,
    /// Helm upgrade --install.
    Deploy,
    /// Rollout checks.
    Verify,
}

impl Phase {
    /// Every phase, in the order of the line.
    pub const LINE: [Phase; 8] = [
        Phase::Context,
        Phase::Tags,
        Phase::Source,
        Phase::Build,
        Phase::Push,
        Phase::Chart,
        Phase::Deploy,
        Phase::Verify,
    ];

    /// The phase's name in output (`source`, `build`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Context => "context",
            Phase::Tags => "tags",
            Phase::Source => "source",
            Phase::Build => "build",
            Phase::Push => "push",
            Phase::Chart => "chart",
            Phase::Deploy => "deploy",
            Phase::Verify => "verify",
        }
    }
}

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
}

/// The credentials of a run, each for exactly one client.
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
}

/// Walks the line from the start through `last` (inclusive), recording each phase with the
/// reporter. On error the run so far is lost with it: the reporter already holds the phases.
pub async fn walk(inputs: &Inputs<'_>, last: Phase, reporter: &Reporter) -> anyhow::Result<Run> {
    let mut run = Run::default();
    let host = PluginHost::new()?;

    let phase = reporter.phase(Phase::Context);
    let ctx = context::resolve(inputs.context, &inputs.config.source, inputs.env)?;
    phase.finish(context::summary(&ctx));
    run.context = Some(ctx.clone());
    if last == Phase::Context {
        return Ok(run);
    }

    let phase = reporter.phase(Phase::Tags);
    let repository = build::image_repository(&inputs.config.image, &phase)?;
    let plugin = host.load(&inputs.config.plugin_ref(World::TagPolicy))?;
    let plugin = plugin.with_limits(inputs.config.limits_for(World::TagPolicy));
    let tags = plugin.compute_tags(&ctx, &repository)?;
    let release = plugin.release(&ctx)?;
    phase.finish(format!("{} (+{} more)", tags.primary, tags.extra.len()));
    run.tags = Some(tags.clone());
    run.release = Some(release);
    if last == Phase::Tags {
        return Ok(run);
    }

    let phase = reporter.phase(Phase::Source);
    let checkout = source::fetch_checkout(&ctx, &inputs.config.source, inputs.secrets, &phase).await?;
    phase.finish(source::summary(&checkout));
    run.checkout = Some(checkout.clone());
    if last == Phase::Source {
        return Ok(run);
    }

    let phase = reporter.phase(Phase::Build);
    let built = build::build(&checkout, &repository, &tags, inputs, &phase).await?;
    phase.finish(build::summary(&built));
    run.built = Some(built.clone());
    if last == Phase::Build {
        return Ok(run);
    }

    let phase = reporter.phase(Phase::Push);
    let pushed = push::push(&built, &tags, inputs, &phase).await?;
    phase.finish(push::summary(&pushed));
    run.pushed = Some(pushed);
    Ok(run)
}
