//! Command-line parsing: one file per subcommand, each parsing its arguments and calling into
//! the library. Nothing here prints except through [`Reporter`].

pub mod plugin;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::plugins::PluginError;
use crate::report::{Format, Reporter};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: a verifier reported an `error` finding.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: bad input (arguments, config, files, plugin references).
pub const EXIT_INPUT: u8 = 2;
/// Exit code: a plugin failed (limit, crash, error result, invalid output).
pub const EXIT_PLUGIN: u8 = 3;

/// prpod: a running preview for every pull request.
#[derive(Debug, Parser)]
#[command(name = "prpod", version, about, long_about = None)]
pub struct Cli {
    /// How to render results and errors.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub output: Format,
    /// Config file (default: ./prpod.toml when it exists).
    #[arg(long, global = true, env = "PRPOD_CONFIG")]
    pub config: Option<PathBuf>,
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
}

impl Cli {
    /// Runs the command; returns the process exit code.
    pub fn run(self, reporter: &Reporter) -> anyhow::Result<u8> {
        let config = load_config(self.config.as_deref())?;
        match self.command {
            Command::Plugin(cmd) => plugin::run(cmd, &config, reporter),
        }
    }
}

fn load_config(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    match explicit {
        Some(path) => Config::load(path),
        None if Path::new("prpod.toml").is_file() => Config::load(Path::new("prpod.toml")),
        None => Ok(Config::default()),
    }
}

/// The exit code for a failure: plugin failures are told apart from bad input so CI can tell
/// "fix your plugin" from "fix your invocation".
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(p) = cause.downcast_ref::<PluginError>() {
            return match p {
                PluginError::Limit { .. }
                | PluginError::Trap { .. }
                | PluginError::Returned { .. }
                | PluginError::InvalidOutput { .. }
                | PluginError::Engine(_) => EXIT_PLUGIN,
                _ => EXIT_INPUT,
            };
        }
    }
    EXIT_INPUT
}
