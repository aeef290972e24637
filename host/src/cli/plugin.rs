//! `prpod plugin check | call | export`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{EXIT_FINDINGS, EXIT_OK};
use crate::config::{Config, LimitOverrides};
use crate::model::{AppSpec, Manifest, PrContext, ReleaseStatus, Severity};
use crate::plugins::{Plugin, PluginHost, PluginRef, World, chart};
use crate::report::Reporter;

/// Plugin subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Say which worlds a component implements, or why it is not usable.
    Check {
        /// Plugin reference: a path, `path#sha256:<hex>`, `builtin:<name>` or `oci://...`.
        reference: String,
    },
    /// Call one world's hooks with inputs from JSON files.
    #[command(subcommand)]
    Call(CallCommand),
    /// Publish a component to an OCI registry (wasm OCI artifact layout).
    Push(super::plugin_oci::PushArgs),
    /// Fetch an OCI plugin into the cache and say what it is.
    Pull(super::plugin_oci::PullArgs),
    /// Re-resolve the config's OCI plugins (all, or those named) and write prpod.lock.
    Update(super::plugin_oci::UpdateArgs),
    /// Sign an OCI plugin (cosign's legacy key-based `.sig` format).
    Sign(super::plugin_oci::SignArgs),
    /// Write a builtin plugin out as a component file.
    Export {
        /// `builtin:<name>`.
        reference: String,
        /// File to write (refused when it exists, unless --force).
        #[arg(short, long)]
        out: PathBuf,
        /// Overwrite `--out` when it exists.
        #[arg(long)]
        force: bool,
    },
}

/// Limit overrides on the command line (beat `prpod.toml`).
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Memory limit per call, MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Deadline per call, ms.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Output limit per call, MiB.
    #[arg(long)]
    output_mib: Option<u64>,
}

/// `prpod plugin call <world>`.
#[derive(Debug, Subcommand)]
pub enum CallCommand {
    /// compute-tags and release; prints `{"primary", "extra", "cache_from", "cache_to", "release"}`.
    TagPolicy {
        /// Plugin reference.
        reference: String,
        /// PR context JSON file.
        #[arg(long)]
        context: PathBuf,
        /// Image repository (registry host and path, no tag).
        #[arg(long)]
        image: String,
        /// Limit overrides.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// generate; writes the chart into --out (which must be new or empty).
    ChartGenerator {
        /// Plugin reference.
        reference: String,
        /// PR context JSON file.
        #[arg(long)]
        context: PathBuf,
        /// App spec JSON file.
        #[arg(long)]
        app: PathBuf,
        /// Directory to write the chart to.
        #[arg(long)]
        out: PathBuf,
        /// Limit overrides.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// check-manifests (with --manifests) or check-release (with --status); prints findings and
    /// exits 1 when any is an error.
    Verifier {
        /// Plugin reference.
        reference: String,
        /// PR context JSON file.
        #[arg(long)]
        context: PathBuf,
        /// Rendered manifests (multi-document YAML, e.g. `helm template` output).
        #[arg(long, conflicts_with = "status", required_unless_present = "status")]
        manifests: Option<PathBuf>,
        /// Release status JSON file.
        #[arg(long)]
        status: Option<PathBuf>,
        /// Limit overrides.
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// Runs a plugin subcommand.
pub async fn run(cmd: PluginCommand, config: &Config, reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        PluginCommand::Check { reference } => check(&reference, config, reporter).await,
        PluginCommand::Push(a) => super::plugin_oci::push(a, config, reporter).await,
        PluginCommand::Pull(a) => super::plugin_oci::pull(a, config, reporter).await,
        PluginCommand::Update(a) => super::plugin_oci::update(a, config, reporter).await,
        PluginCommand::Sign(a) => super::plugin_oci::sign(a, config, reporter).await,
        PluginCommand::Export { reference, out, force } => export(&reference, &out, force, reporter),
        PluginCommand::Call(call) => run_call(call, config, reporter).await,
    }
}

async fn check(reference: &str, config: &Config, reporter: &Reporter) -> anyhow::Result<u8> {
    let plugin = PluginHost::new()?.load(&crate::ops::plugin_oci::plugin_ref(config, reference).await?)?;
    let worlds = plugin.worlds();
    let missing: serde_json::Map<String, serde_json::Value> = World::ALL
        .into_iter()
        .filter_map(|w| plugin.world_error(w).map(|why| (w.name().to_string(), why.into())))
        .collect();
    if worlds.is_empty() {
        let why: Vec<String> = missing.iter().map(|(w, why)| format!("{w}: {}", why.as_str().unwrap_or(""))).collect();
        bail!(
            "plugin {} implements none of the prpod:plugin worlds (tag-policy, chart-generator, verifier): {}",
            plugin.name(),
            why.join("; ")
        );
    }
    reporter.result(&json!({
        "plugin": plugin.name(),
        "sha256": plugin.sha256(),
        "wit_version": plugin.wit_version(),
        "worlds": worlds,
        "not_implemented": missing,
    }))?;
    Ok(EXIT_OK)
}

fn export(reference: &str, out: &Path, force: bool, reporter: &Reporter) -> anyhow::Result<u8> {
    let PluginRef::Builtin(name) = PluginRef::parse(reference)? else {
        bail!("`{reference}` is not a builtin; export takes builtin:<name> (it copies no other files)");
    };
    let (bytes, sha256) = PluginRef::Builtin(name.clone()).read()?;
    if !force && std::fs::symlink_metadata(out).is_ok() {
        bail!("refusing to overwrite {}: it exists; pick another path or pass --force", out.display());
    }
    // Written beside the target and renamed over it: a failure never leaves half a component
    // under the name, and with --force a symlink at `out` is replaced, not followed.
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("failed to write {}", out.display()))?;
    std::io::Write::write_all(&mut tmp, &bytes).with_context(|| format!("failed to write {}", out.display()))?;
    let persisted = if force { tmp.persist(out) } else { tmp.persist_noclobber(out) };
    persisted.map_err(|e| e.error).with_context(|| format!("failed to write {}", out.display()))?;
    reporter.result(&json!({
        "plugin": format!("builtin:{name}"),
        "path": out,
        "sha256": sha256,
        "reference": format!("{}#sha256:{sha256}", out.display()),
    }))?;
    Ok(EXIT_OK)
}

async fn load(reference: &str, world: World, config: &Config, limits: &LimitArgs) -> anyhow::Result<Plugin> {
    let overrides = LimitOverrides {
        memory_mib: limits.memory_mib,
        deadline_ms: limits.deadline_ms,
        output_mib: limits.output_mib,
    };
    overrides.check(|k| format!("--{}", k.replace('_', "-"))).map_err(anyhow::Error::msg)?;
    let plugin = PluginHost::new()?.load(&crate::ops::plugin_oci::plugin_ref(config, reference).await?)?;
    Ok(plugin.with_limits(overrides.apply(config.limits_for(world))))
}

fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = crate::input::read_text_file(path, crate::input::MAX_JSON_BYTES, what)?;
    crate::input::check_json_nesting(&text, &format!("{what} {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!("failed to parse {what} {} (the README's \"JSON inputs\" section shows its fields)", path.display())
    })
}

/// A PR context file: JSON, and no credentials in it.
fn read_context(path: &Path) -> anyhow::Result<PrContext> {
    let ctx: PrContext = read_json(path, "PR context")?;
    ctx.check().map_err(|why| anyhow::anyhow!("PR context {}: {why}", path.display()))?;
    Ok(ctx)
}

async fn run_call(call: CallCommand, config: &Config, reporter: &Reporter) -> anyhow::Result<u8> {
    match call {
        CallCommand::TagPolicy { reference, context, image, limits } => {
            let ctx = read_context(&context)?;
            let plugin = load(&reference, World::TagPolicy, config, &limits).await?;
            let tags = plugin.compute_tags(&ctx, &image).await?;
            let release = plugin.release(&ctx).await?;
            reporter.result(&json!({
                "primary": tags.primary,
                "extra": tags.extra,
                "cache_from": tags.cache_from,
                "cache_to": tags.cache_to,
                "release": release,
            }))?;
            Ok(EXIT_OK)
        }
        CallCommand::ChartGenerator { reference, context, app, out, limits } => {
            let ctx = read_context(&context)?;
            let app: AppSpec = read_json(&app, "app spec")?;
            // Checked before the plugin runs (so a bad --out costs nothing) and again when the
            // chart is renamed into place (so nothing planted meanwhile is overwritten).
            // The parent is opened here, once: what happens to its path while the plugin runs
            // cannot move the chart elsewhere.
            let target = chart::OutDir::open(&out)?;
            let plugin = load(&reference, World::ChartGenerator, config, &limits).await?;
            let files = plugin.generate(&ctx, &app).await?;
            target.write(&files)?;
            reporter.result(&json!({
                "out": out,
                "files": files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            }))?;
            Ok(EXIT_OK)
        }
        CallCommand::Verifier { reference, context, manifests, status, limits } => {
            let ctx = read_context(&context)?;
            let plugin = load(&reference, World::Verifier, config, &limits).await?;
            let (hook, findings) = match (manifests, status) {
                (Some(path), _) => {
                    let text = crate::input::read_text_file(&path, crate::input::MAX_JSON_BYTES, "manifests")?;
                    let manifests = Manifest::parse_all(&text)
                        .with_context(|| format!("failed to parse manifests {}", path.display()))?;
                    ("check-manifests", plugin.check_manifests(&ctx, &manifests).await?)
                }
                (None, Some(path)) => {
                    let status: ReleaseStatus = read_json(&path, "release status")?;
                    ("check-release", plugin.check_release(&ctx, &status).await?)
                }
                (None, None) => bail!("give --manifests FILE.yaml or --status STATUS.json"),
            };
            let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
            reporter.result(&json!({ "hook": hook, "errors": errors, "findings": findings }))?;
            Ok(if errors > 0 { EXIT_FINDINGS } else { EXIT_OK })
        }
    }
}
