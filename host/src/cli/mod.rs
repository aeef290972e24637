//! Command-line parsing: one file per subcommand, each parsing its arguments and calling into
//! the library. Nothing here prints except through [`Reporter`].

pub mod build;
pub mod doctor;
pub mod event;
pub mod gc;
pub mod plugin;
pub mod plugin_oci;
pub mod run;
pub mod status;
pub mod teardown;
pub mod wake;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, Env};
use crate::phases::build::BackendChoice;
use crate::phases::context::ContextFlags;
use crate::report::{Format, Reporter};

pub use crate::error::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK, EXIT_PLUGIN, exit_code_for};

/// prpod: a running preview for every pull request.
#[derive(Debug, Parser)]
#[command(name = "prpod", version, about, long_about = None)]
pub struct Cli {
    /// How to render results and errors.
    #[arg(long, global = true, value_enum, default_value_t = OutputArg::Human)]
    pub output: OutputArg,
    /// Config file (default: ./prpod.toml when it exists).
    #[arg(long, global = true, env = "PRPOD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Use prpod.lock as it is: an OCI plugin reference not in it is an error (CI).
    #[arg(long, global = true, env = "PRPOD_LOCKED")]
    pub locked: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect, call and export plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Clone the PR's commit, build the image and push it under the tag-policy's tags.
    Build(build::BuildArgs),
    /// The whole line for one PR commit: build, push, chart, checks, deploy, verify.
    Run(run::RunArgs),
    /// Everything `run` would do up to the pre-deploy findings, writing nothing anywhere.
    Plan(run::PlanArgs),
    /// The line from an image already pushed: chart, checks, deploy, verify.
    Deploy(run::DeployArgs),
    /// A PR's preview as it runs now; `--replicas N` scales it.
    Status(status::StatusArgs),
    /// Would a run work here? Tools, registry access, cluster access and rights.
    Doctor(doctor::DoctorArgs),
    /// Act on the GitHub Actions event (`GITHUB_EVENT_PATH`): run, tear down or skip, and tell
    /// the PR (one comment, a Deployment, the job summary).
    Event(event::EventArgs),
    /// Remove a PR's preview: release, namespace and its tags (never a digest in use).
    Teardown(teardown::TeardownArgs),
    /// Collect closed and expired previews, sleep idle ones, wake labelled ones (safe in a CronJob).
    Gc(gc::GcArgs),
    /// Wake a sleeping preview: its replicas restored, waiting for Ready.
    Wake(wake::WakeArgs),
}

impl Cli {
    /// Runs the command (on the caller's tokio runtime); returns the process exit code.
    pub async fn run(self, reporter: &Reporter) -> anyhow::Result<u8> {
        let env = Env::from_process();
        let mut config = load_config(self.config.as_deref(), &env)?;
        config.apply_env(&env)?;
        // OCI plugins are resolved (through prpod.lock, the cache, signatures) before any
        // command that loads the config's plugins.
        if matches!(
            self.command,
            Command::Build(_) | Command::Run(_) | Command::Plan(_) | Command::Deploy(_) | Command::Status(_)
        ) {
            crate::ops::plugin_oci::resolve_config(&mut config, self.locked).await?;
        }
        match self.command {
            Command::Plugin(cmd) => plugin::run(cmd, &config, reporter).await,
            Command::Build(args) => build::run(args, config, &env, reporter).await,
            Command::Run(args) => run::run(args, config, &env, reporter).await,
            Command::Plan(args) => run::plan(args, config, &env, reporter).await,
            Command::Deploy(args) => run::deploy(args, config, &env, reporter).await,
            Command::Status(args) => status::run(args, config, &env, reporter).await,
            Command::Doctor(args) => doctor::run(args, config, &env, reporter).await,
            Command::Event(args) => event::run(args, config, &env, reporter).await,
            Command::Teardown(args) => teardown::run(args, config, &env, reporter).await,
            Command::Gc(args) => gc::run(args, config, &env, reporter).await,
            Command::Wake(args) => wake::run(args, config, &env, reporter).await,
        }
    }
}

/// The operator's config: `--config` / `PRPOD_CONFIG`, else `./prpod.toml`. In GitHub Actions
/// (`GITHUB_ACTIONS=true`) without `--config`, the working directory is a checkout of the
/// repository, which a pull request may have written: there `./prpod.toml` is read as the
/// repository's file, and an operator key in it is an error (see [`crate::repo_config`]).
fn load_config(explicit: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    match explicit {
        Some(path) => Config::load(path),
        None if Path::new("prpod.toml").is_file() && env.get("GITHUB_ACTIONS") == Some("true") => {
            let mut config = Config::default();
            if let Some(repo) = crate::repo_config::read(Path::new("."), false)? {
                config.apply_repository(&repo)?;
            }
            Ok(config)
        }
        None if Path::new("prpod.toml").is_file() => Config::load(Path::new("prpod.toml")),
        None => Ok(Config::default()),
    }
}

/// `--output`: the clap face of [`Format`] (nothing below `cli/` knows clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputArg {
    /// Readable text for people (results that are documents are still printed as JSON).
    #[default]
    Human,
    /// One JSON document per result on stdout; errors as `{"error": ...}` JSON too.
    Json,
}

impl From<OutputArg> for Format {
    fn from(a: OutputArg) -> Format {
        match a {
            OutputArg::Human => Format::Human,
            OutputArg::Json => Format::Json,
        }
    }
}

/// `--backend`: the clap face of [`BackendChoice`]; its values are `auto` and the names of
/// [`crate::phases::build::BACKENDS`], so a new backend needs no change here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendArg(BackendChoice);

impl clap::ValueEnum for BackendArg {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: std::sync::OnceLock<Vec<BackendArg>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| BackendChoice::all().map(BackendArg).collect())
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self.0 {
            BackendChoice::Auto => "the first of the backends below that can build the Dockerfile here".to_string(),
            BackendChoice::Named(n) => {
                crate::phases::build::backend::by_name(n).map(|b| b.describe()).unwrap_or(n).to_string()
            }
        };
        Some(clap::builder::PossibleValue::new(self.0.name()).help(help))
    }
}

impl From<BackendArg> for BackendChoice {
    fn from(a: BackendArg) -> BackendChoice {
        a.0
    }
}

/// The PR context flags every pipeline command takes (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ContextArgs {
    /// Repository clone URL (HTTPS, no credentials in it). Default: `[source] url`, or the
    /// GitHub Actions repository.
    #[arg(long, value_name = "URL")]
    pub repo_url: Option<String>,
    /// Pull request number.
    #[arg(long, value_name = "N")]
    pub pr: Option<u64>,
    /// Head branch of the pull request.
    #[arg(long)]
    pub branch: Option<String>,
    /// Full commit SHA to build (40 hex digits).
    #[arg(long)]
    pub sha: Option<String>,
    /// Branch the pull request targets.
    #[arg(long, value_name = "BRANCH")]
    pub base: Option<String>,
}

impl ContextArgs {
    /// The flags as the context phase takes them.
    pub fn flags(&self) -> ContextFlags {
        ContextFlags {
            repo_url: self.repo_url.clone(),
            pr: self.pr,
            branch: self.branch.clone(),
            sha: self.sha.clone(),
            base: self.base.clone(),
        }
    }
}

impl From<ContextFlags> for ContextArgs {
    /// The context phase's flags as command-line arguments (`prpod event` builds them from the
    /// event payload).
    fn from(f: ContextFlags) -> ContextArgs {
        ContextArgs { repo_url: f.repo_url, pr: f.pr, branch: f.branch, sha: f.sha, base: f.base }
    }
}
