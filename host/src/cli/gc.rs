//! `prpod gc`: collect closed and expired previews, sleep idle ones, wake labelled ones, delete
//! old unused `sha-*` tags; see [`crate::ops::gc`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::run::DeployFlags;
use crate::config::{Config, Env};
use crate::ops::gc::{ClosedList, ClosedPrs, GcRequest, gc};
use crate::report::Reporter;

/// `prpod gc` arguments.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only this repository's previews (`owner/name`); default: every preview prpod made.
    #[arg(long, value_name = "OWNER/NAME")]
    pub repository: Option<String>,
    /// PRs that are closed: `1,2,3` or `owner/repo#4` (every other PR counts as open).
    #[arg(long, value_name = "LIST", conflicts_with = "closed_file")]
    pub closed: Option<String>,
    /// A file listing the closed PRs (numbers or `owner/repo#N`, by comma, space or line).
    #[arg(long, value_name = "FILE")]
    pub closed_file: Option<PathBuf>,
    /// Ask the GitHub API which PRs are closed (`[github]` credentials); a PR whose state it
    /// cannot tell is left alone.
    #[arg(long, conflicts_with_all = ["closed", "closed_file"])]
    pub closed_from_github: bool,
    /// Decide and report; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Cluster settings.
    #[command(flatten)]
    pub deploy: DeployFlags,
}

/// Runs `prpod gc`.
pub async fn run(args: GcArgs, mut config: Config, env: &Env, reporter: &Reporter) -> anyhow::Result<u8> {
    args.deploy.apply(&mut config)?;
    let github = match args.closed_from_github {
        true => Some(crate::phases::github::github_client(&config.github, env, args.repository.as_deref()).await?),
        false => None,
    };
    let closed: Option<Box<dyn ClosedPrs>> = match (&args.closed, &args.closed_file) {
        _ if github.is_some() => {
            let client = github.clone().expect("checked");
            Some(Box::new(crate::ops::github_sources::GithubClosedPrs { client }))
        }
        (Some(list), _) => Some(Box::new(ClosedList::parse(list).context("--closed")?)),
        (None, Some(f)) => {
            let text = crate::input::read_text_file(f, 1 << 20, "the closed-PR file (--closed-file)")?;
            Some(Box::new(ClosedList::parse(&text).with_context(|| format!("--closed-file {}", f.display()))?))
        }
        (None, None) => None,
    };
    let req = GcRequest { repository: args.repository, closed, dry_run: args.dry_run, tags: None };
    let report = gc(&config, req, reporter).await;
    crate::phases::preview::lock::finish_releases().await;
    let mut report = report?;
    report.github_calls = github.map(|g| g.api_calls());
    reporter.lines_or_json(&report, &report.lines())?;
    Ok(report.exit_code())
}
