//! `prpod event`: acts on the GitHub Actions event that started the job (see
//! [`crate::ops::event`]).

use clap::Args;

use crate::config::{Config, Env};
use crate::ops::event::{EventRequest, event};
use crate::report::Reporter;

/// `prpod event` arguments: none; everything comes from `GITHUB_EVENT_NAME`, `GITHUB_EVENT_PATH`
/// and `[github]`.
#[derive(Debug, Args)]
pub struct EventArgs {}

/// Runs `prpod event`.
pub async fn run(_args: EventArgs, config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    let outcome = event(&config, EventRequest { env: env.clone() }, reporter).await?;
    reporter.event_report(&outcome.report)?;
    if let Some(err) = &outcome.error {
        reporter.error_stderr(err);
    }
    Ok(outcome.code)
}
