//! `prpod plugin push | pull | update | sign`: plugins distributed through OCI registries.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::EXIT_OK;
use crate::config::Config;
use crate::ops::plugin_oci::{self, PushRequest};
use crate::report::Reporter;

/// `prpod plugin push FILE oci://REGISTRY/REPO:TAG`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The component file.
    pub file: PathBuf,
    /// Where to push: `oci://REGISTRY/REPO:TAG`.
    pub target: String,
    /// Overwrite the tag when it exists (versions are meant to be immutable).
    #[arg(long)]
    pub force: bool,
    /// `org.opencontainers.image.title` (default: the file name).
    #[arg(long)]
    pub title: Option<String>,
    /// `org.opencontainers.image.source` (the plugin's source repository URL).
    #[arg(long)]
    pub source: Option<String>,
}

/// `prpod plugin pull oci://...`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// `oci://REGISTRY/REPO:TAG` or `oci://REGISTRY/REPO@sha256:...`.
    pub reference: String,
}

/// `prpod plugin update [REF...]`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The OCI references (as written in prpod.toml) to re-resolve; none: all.
    pub references: Vec<String>,
}

/// `prpod plugin sign oci://... --key KEY`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The plugin (`oci://REGISTRY/REPO:TAG` or `@sha256:...`).
    pub reference: String,
    /// PKCS#8 PEM ECDSA P-256 private key file.
    #[arg(long)]
    pub key: PathBuf,
}

/// Runs `plugin push`.
pub async fn push(a: PushArgs, config: &Config, reporter: &Reporter) -> anyhow::Result<u8> {
    let req = PushRequest { file: a.file, target: a.target, force: a.force, title: a.title, source: a.source };
    reporter.result(&plugin_oci::push(config, req).await?)?;
    Ok(EXIT_OK)
}

/// Runs `plugin pull`.
pub async fn pull(a: PullArgs, config: &Config, reporter: &Reporter) -> anyhow::Result<u8> {
    reporter.result(&plugin_oci::pull(config, &a.reference).await?)?;
    Ok(EXIT_OK)
}

/// Runs `plugin update`.
pub async fn update(a: UpdateArgs, config: &Config, reporter: &Reporter) -> anyhow::Result<u8> {
    let entries = plugin_oci::update(config, &a.references).await?;
    reporter.result(&json!({ "plugins": entries }))?;
    Ok(EXIT_OK)
}

/// Runs `plugin sign`.
pub async fn sign(a: SignArgs, config: &Config, reporter: &Reporter) -> anyhow::Result<u8> {
    reporter.result(&plugin_oci::sign(config, &a.reference, &a.key).await?)?;
    Ok(EXIT_OK)
}
