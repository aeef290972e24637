//! The `prpod` binary: parse arguments, run one command, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use prpod::cli::{Cli, exit_code_for};
use prpod::report::Reporter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs (including plugins' own output) go to stderr, filtered by PRPOD_LOG (default: warn).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRPOD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let reporter = Reporter::new(cli.output);
    match cli.run(&reporter) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            reporter.error(&err);
            ExitCode::from(exit_code_for(&err))
        }
    }
}
