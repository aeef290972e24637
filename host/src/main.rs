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
    let reporter = Reporter::new(cli.output.into());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let err = anyhow::Error::new(e).context("failed to start the async runtime");
            reporter.error(&err);
            return ExitCode::from(prpod::error::EXIT_INTERNAL);
        }
    };
    match runtime.block_on(cli.run(&reporter)) {
        Ok(code) => ExitCode::from(code),
        // Whoever read our output went away (`prpod ... | head`): nothing left to say to them.
        Err(err) if is_broken_pipe(&err) => ExitCode::from(prpod::error::EXIT_OK),
        Err(err) => {
            reporter.error(&err);
            ExitCode::from(exit_code_for(&err))
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>().and_then(|e| e.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}
