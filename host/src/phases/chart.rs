//! The chart phase: the chart a preview is deployed with, rendered once, checked by prpod and by
//! every configured verifier, and then applied exactly as checked.
//!
//! The chart comes from the chart-generator plugin (default `builtin:chart-webapp`, fed an app
//! spec built from `[app]`) or from a directory in the repository (`[deploy] chart`), which is
//! first copied into a private directory with nothing from outside the chart ([`confine`]).
//! Values are layered, later wins: the chart's own `values.yaml`, `[deploy] values` files,
//! `[deploy.set]`, then what prpod injects ([`injected_values`]): the image (repository, tag and
//! digest — prpod always deploys by digest), the PR's labels and annotations, `--replicas`, and
//! the registry pull Secret. `helm template` renders it against the cluster's version and API
//! versions; its output becomes canonical objects ([`applied`]) that prpod's scope rule
//! ([`scope`]), its digest rule and the verifiers judge, and that Helm then installs from a chart
//! of static templates, so nothing is rendered a second time.

pub mod applied;
pub mod confine;
pub mod scope;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;

pub use self::scope::{ClusterApi, SCOPE_RULE};
use crate::clients::helm::{Helm, HelmError, KubeTarget, ValuesFiles};
use crate::clients::kube::{Kube, KubeError};
use crate::config::Config;
use crate::error::Classify;
use crate::error::{PhaseError, ResultExt};
use crate::model::{
    AppSpec, DeployTarget, EnvVar, Finding, ImageRef, Manifest, Port, PrContext, ReleaseTarget, ReportedFinding,
    Resources, Severity,
};
use crate::phases::{DeliverInputs, MAX_VALUES_BYTES, Mode, Phase, Prefetched};
use crate::plugins::{Plugin, PluginError, PluginHost, World};
use crate::report::Reporter;

/// The name prpod's own findings carry as their plugin.
pub const HOST_CHECKS: &str = "prpod";

/// `[app]`: the application the generated chart runs (ignored when `[deploy] chart` names a
/// chart directory).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Application name (DNS-1123 label). Default: the repository's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The port the container listens on. Default 8080.
    #[serde(default = "default_port")]
    pub port: u16,
    /// HTTP path answering 200 when healthy; unset: TCP probes.
    #[serde(default)]
    pub health_path: Option<String>,
    /// Non-secret environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replicas. Default 1 (`--replicas` overrides).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Requests and limits.
    #[serde(default = "default_resources")]
    pub resources: Resources,
    /// Ingress host; `{number}`, `{branch}` and `{release}` are replaced. Unset: no Ingress.
    #[serde(default)]
    pub ingress_host: Option<String>,
}

fn default_port() -> u16 {
    8080
}
fn default_replicas() -> u32 {
    1
}
fn default_resources() -> Resources {
    Resources {
        cpu_request: Some("10m".into()),
        memory_request: Some("16Mi".into()),
        cpu_limit: Some("250m".into()),
        memory_limit: Some("128Mi".into()),
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            name: None,
            port: default_port(),
            health_path: None,
            env: BTreeMap::new(),
            replicas: default_replicas(),
            resources: default_resources(),
            ingress_host: None,
        }
    }
}

/// A chart phase failure.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The repository chart is not there.
    #[error("failed to find the chart directory {path} (`[deploy] chart`): {why}")]
    NoChart {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A values file is missing.
    #[error("failed to read the values file {path} (`[deploy] values`): {why}")]
    Values {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The generated chart could not be written.
    #[error("failed to write the generated chart to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Helm failed.
    #[error(transparent)]
    Helm(#[from] HelmError),
    /// A plugin failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The rendered manifests did not parse, or hold what prpod cannot apply as checked.
    #[error("failed to read the manifests `helm template` rendered: {0}")]
    Manifests(String),
    /// A file of the repository chart may not be copied for Helm (a symlink leaving the chart,
    /// a special file, a bound exceeded).
    #[error("refused the repository chart's {path}: it {why}")]
    Confined {
        /// The file (the chart directory joined with its path in the chart).
        path: PathBuf,
        /// Why, and what to do.
        why: String,
    },
}

impl Classify for ChartError {
    fn failure_kind(&self) -> Option<crate::error::FailureKind> {
        match self {
            ChartError::Helm(e) => e.failure_kind(),
            ChartError::Plugin(p) => p.failure_kind(),
            ChartError::Write { .. } => Some(crate::error::FailureKind::Internal),
            ChartError::NoChart { .. }
            | ChartError::Values { .. }
            | ChartError::Manifests(_)
            | ChartError::Confined { .. } => None,
        }
    }
}

/// Where the chart came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ChartSource {
    /// Generated by a chart-generator plugin.
    Generated {
        /// The plugin.
        plugin: String,
    },
    /// A directory of the repository.
    Directory {
        /// The directory.
        path: PathBuf,
    },
}

/// What the chart phase is asked to render.
#[derive(Debug, Clone)]
pub struct ChartRequest<'a> {
    /// The PR context, with its deploy target filled in.
    pub ctx: &'a PrContext,
    /// Release and namespace.
    pub release: &'a ReleaseTarget,
    /// The image to run (`digest` is `None` only when planning before a build).
    pub image: &'a ImageRef,
    /// A chart directory (already resolved), or `None` for the generator.
    pub chart_dir: Option<PathBuf>,
    /// The repository the chart directory and the values files belong to: no file of the chart
    /// may lead outside it (or outside the chart directory), nor may a values file. `None`: the
    /// chart directory itself is the chart's bound, the working directory the values files'.
    pub repository: Option<PathBuf>,
    /// What the chart is rendered against (the cluster's API, or the built-in fallback).
    pub cluster: &'a ClusterApi,
    /// `[deploy] values` files (already resolved).
    pub values_files: Vec<PathBuf>,
    /// `[deploy.set]`.
    pub set: &'a toml::Table,
    /// `[app]`, for the generator.
    pub app: &'a AppConfig,
    /// `--replicas`, when given.
    pub replicas: Option<u32>,
    /// The pull Secret pods should use, when the registry needs credentials.
    pub pull_secret: Option<&'a str>,
}

/// The chart phase's value.
#[derive(Debug, Clone)]
pub struct RenderedChart {
    /// Where the chart came from.
    pub source: ChartSource,
    /// The chart Helm deploys: prpod's chart of the checked objects, inserted verbatim
    /// ([`applied::write_applied_chart`]).
    pub dir: PathBuf,
    /// The namespace it was rendered for.
    pub namespace: String,
    /// The values files, in order (stored with the release; the applied chart has no template
    /// logic left to use them).
    pub values: ValuesFiles,
    /// The rendered objects, one per manifest (lists split), as checked and applied.
    pub manifests: Vec<Manifest>,
    /// The same objects as YAML, for people (`--show-manifests`).
    pub rendered: String,
    /// What the chart was rendered against, for the phase summary.
    pub rendered_against: String,
}

/// The app spec the generator is given.
pub fn app_spec(
    ctx: &PrContext,
    release: &ReleaseTarget,
    app: &AppConfig,
    image: &ImageRef,
    replicas: Option<u32>,
) -> AppSpec {
    let name = app.name.clone().unwrap_or_else(|| dns_label(ctx.repository.rsplit('/').next().unwrap_or("app")));
    let ingress_host = app.ingress_host.as_ref().map(|h| {
        h.replace("{number}", &ctx.number.map(|n| n.to_string()).unwrap_or_default())
            .replace("{branch}", &dns_label(&ctx.branch))
            .replace("{release}", &release.name)
    });
    AppSpec {
        name,
        image: image.clone(),
        ports: vec![Port { name: "http".into(), container_port: app.port }],
        env: app.env.iter().map(|(k, v)| EnvVar { name: k.clone(), value: v.clone() }).collect(),
        replicas: replicas.unwrap_or(app.replicas),
        resources: app.resources.clone(),
        health_path: app.health_path.clone(),
        ingress_host,
    }
}

/// `s` as a DNS-1123 label: lowercase, runs of other characters as one `-`, at most 53.
pub fn dns_label(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(53).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "app".into() } else { out }
}

/// The full image reference prpod deploys: `repository[:tag][@digest]`.
pub fn image_reference(image: &ImageRef) -> String {
    let mut s = image.repository.clone();
    if let Some(t) = &image.tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = &image.digest {
        s.push('@');
        s.push_str(d);
    }
    s
}

/// The values prpod injects (last, so they win): documented in the README for chart authors.
pub fn injected_values(req: &ChartRequest<'_>) -> serde_json::Value {
    let ctx = req.ctx;
    let number = ctx.number.map(|n| n.to_string()).unwrap_or_default();
    let mut labels = BTreeMap::new();
    labels.insert("app.kubernetes.io/instance".to_string(), req.release.name.clone());
    if !number.is_empty() {
        labels.insert("prpod.dev/pr".to_string(), number.clone());
    }
    let annotations = BTreeMap::from([
        ("prpod.dev/commit".to_string(), ctx.sha.clone()),
        ("prpod.dev/branch".to_string(), ctx.branch.clone()),
        ("prpod.dev/repository".to_string(), ctx.repository.clone()),
    ]);
    let mut v = json!({
        "image": {
            "repository": req.image.repository,
            "tag": req.image.tag.clone().unwrap_or_default(),
            "digest": req.image.digest.clone().unwrap_or_default(),
        },
        "prpod": {
            "image": image_reference(req.image),
            "release": req.release.name,
            "namespace": req.release.namespace,
            "pr": {"number": number, "branch": ctx.branch, "commit": ctx.sha, "repository": ctx.repository},
            "labels": labels,
            "annotations": annotations,
            "pullSecret": req.pull_secret.unwrap_or(""),
        },
    });
    if let Some(r) = req.replicas {
        v["replicas"] = json!(r);
        v["replicaCount"] = json!(r);
    }
    if let Some(s) = req.pull_secret {
        v["imagePullSecrets"] = json!([{"name": s}]);
    }
    v
}

/// Generates the chart (or copies the repository's, confined), writes the values files, renders
/// it once with `helm template` against `req.cluster`, and writes the chart Helm will install:
/// the rendered objects, inserted verbatim. `generator` is the chart-generator plugin, used when
/// no chart directory is configured.
pub async fn render(
    req: &ChartRequest<'_>,
    helm: &Helm,
    generator: Option<&Plugin>,
) -> Result<RenderedChart, ChartError> {
    let (source, dir) = match &req.chart_dir {
        Some(dir) => {
            if !dir.join("Chart.yaml").is_file() {
                return Err(ChartError::NoChart { path: dir.clone(), why: "it has no Chart.yaml".into() });
            }
            // Helm reads the PR's files only from this private copy.
            let copy = fresh_dir(helm, "source-")?;
            confine::copy_chart(dir, req.repository.as_deref().unwrap_or(dir), &copy)?;
            (ChartSource::Directory { path: dir.clone() }, copy)
        }
        None => {
            let generator = generator.expect("a chart generator when no chart directory is configured");
            let app = app_spec(req.ctx, req.release, req.app, req.image, req.replicas);
            let files = generator.generate(req.ctx, &app).await?;
            let dir = fresh_dir(helm, "generated-")?;
            write_chart(&dir, &files)?;
            (ChartSource::Generated { plugin: generator.name().to_string() }, dir)
        }
    };
    let mut values = Vec::new();
    for (i, f) in req.values_files.iter().enumerate() {
        // Helm reads it: never hand it a FIFO, a device or a huge file.
        if let Err(e) = crate::input::check_regular_file(f, crate::input::MAX_JSON_BYTES, "values file") {
            let why = if e.is_not_found() { "no such file".into() } else { e.reason() };
            return Err(ChartError::Values { path: f.clone(), why });
        }
        // Like the chart, the repository's values reach Helm only as private copies.
        let copy = helm.scratch_dir("values")?.join(format!("repository-{i}.yaml"));
        confine::copy_values_file(f, req.repository.as_deref().unwrap_or(Path::new(".")), &copy)?;
        values.push(copy);
    }
    if !req.set.is_empty() {
        let yaml = serde_yaml::to_string(req.set).map_err(|e| ChartError::Manifests(e.to_string()))?;
        values.push(helm.write_values("set.yaml", &yaml)?);
    }
    let injected = serde_yaml::to_string(&injected_values(req)).map_err(|e| ChartError::Manifests(e.to_string()))?;
    values.push(helm.write_values("prpod.yaml", &injected)?);
    let values = ValuesFiles(values);
    let capabilities = req.cluster.capabilities();
    let output = helm.template(&req.release.name, &dir, &req.release.namespace, &values, &capabilities).await?;
    let objects = applied::canonical_objects(&output)?;
    let applied_dir = fresh_dir(helm, "applied-")?;
    applied::write_applied_chart(&applied_dir, &dir, &objects)?;
    Ok(RenderedChart {
        source,
        dir: applied_dir,
        namespace: req.release.namespace.clone(),
        values,
        manifests: objects.iter().map(applied::manifest_of).collect(),
        rendered: applied::display_yaml(&objects),
        rendered_against: req.cluster.describe(),
    })
}

/// A new empty directory (mode 0700) inside Helm's private home, removed with it.
fn fresh_dir(helm: &Helm, prefix: &str) -> Result<PathBuf, ChartError> {
    let parent = helm.scratch_dir("charts")?;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .map_err(|source| ChartError::Write { path: parent.clone(), source })?;
    Ok(dir.keep())
}

fn write_chart(dir: &Path, files: &[crate::model::ChartFile]) -> Result<(), ChartError> {
    // The plugin boundary's writer (cap-std, a temporary directory renamed into place) replaces
    // the fresh, empty `dir`.
    crate::plugins::chart::write_chart(dir, files).map_err(|e| ChartError::Write {
        path: dir.to_path_buf(),
        source: match e {
            crate::plugins::chart::WriteChartError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        },
    })
}

/// Which objects a chart may create outside the preview's namespace: the operator's
/// `[deploy] allow_cluster_kinds`, judged against what the cluster serves.
#[derive(Debug, Clone, Copy)]
pub struct ScopePolicy<'a> {
    /// Which kinds are namespaced.
    pub cluster: &'a ClusterApi,
    /// Cluster-scoped kinds the operator allows (`Kind` or `group/Kind`).
    pub allow_cluster_kinds: &'a [String],
}

/// Runs prpod's own checks — every object in the preview's namespace ([`scope::scope_findings`])
/// and the image run by digest ([`digest_findings`]) — and every verifier's `check-manifests`
/// on the rendered chart (all of them, even after one reports an error).
pub async fn check_manifests(
    ctx: &PrContext,
    chart: &RenderedChart,
    image: &ImageRef,
    scope: ScopePolicy<'_>,
    verifiers: &[Plugin],
) -> Result<Vec<ReportedFinding>, PluginError> {
    let mut out = scope::scope_findings(&chart.manifests, &chart.namespace, scope.cluster, scope.allow_cluster_kinds);
    out.extend(digest_findings(&chart.manifests, image));
    for v in verifiers {
        for f in v.check_manifests(ctx, &chart.manifests).await? {
            out.push(ReportedFinding { plugin: v.name().to_string(), hook: "check-manifests".into(), finding: f });
        }
    }
    Ok(out)
}

/// Every container image of the rendered workloads.
pub fn container_images(manifests: &[Manifest]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in manifests {
        let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(&m.text) else { continue };
        let spec = match m.kind.as_str() {
            "Pod" => v.get("spec"),
            "CronJob" => v
                .get("spec")
                .and_then(|s| s.get("jobTemplate"))
                .and_then(|j| j.get("spec"))
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("spec")),
            _ => v.get("spec").and_then(|s| s.get("template")).and_then(|t| t.get("spec")),
        };
        let Some(spec) = spec else { continue };
        for key in ["initContainers", "containers"] {
            for c in spec.get(key).and_then(|c| c.as_sequence()).into_iter().flatten() {
                if let Some(img) = c.get("image").and_then(|i| i.as_str()) {
                    out.push((format!("{}/{}", m.kind, m.name), img.to_string()));
                }
            }
        }
    }
    out
}

/// prpod's own pre-deploy rule `image-digest`: the chart must run the run's image, and by its
/// digest (a tag can move under a running Deployment; a digest cannot).
pub fn digest_findings(manifests: &[Manifest], image: &ImageRef) -> Vec<ReportedFinding> {
    let Some(digest) = &image.digest else { return vec![] };
    let images = container_images(manifests);
    let ours: Vec<&(String, String)> = images
        .iter()
        .filter(|(_, i)| {
            let repo = i.split('@').next().unwrap_or(i);
            let repo = match repo.rsplit_once(':') {
                Some((r, tag)) if !tag.contains('/') => r,
                _ => repo,
            };
            repo == image.repository
        })
        .collect();
    let finding = |severity, message: String, object: Option<String>| ReportedFinding {
        plugin: HOST_CHECKS.into(),
        hook: "check-manifests".into(),
        finding: Finding { severity, rule: "image-digest".into(), message, object },
    };
    if ours.is_empty() {
        let kinds: Vec<&str> = manifests.iter().map(|m| m.kind.as_str()).collect();
        if !kinds.iter().any(|k| matches!(*k, "Deployment" | "StatefulSet" | "DaemonSet" | "Pod" | "Job" | "CronJob")) {
            return vec![];
        }
        return vec![finding(
            Severity::Warning,
            format!(
                "no container runs {} (the image this run built); a chart should take it from \
                 .Values.image.repository/.tag/.digest or .Values.prpod.image",
                image.repository
            ),
            None,
        )];
    }
    ours.into_iter()
        .filter(|(_, i)| !i.ends_with(&format!("@{digest}")))
        .map(|(obj, i)| {
            finding(
                Severity::Error,
                format!(
                    "{obj} runs `{i}`, not the pushed digest {digest}: a tag can move under a running \
                     workload; use .Values.image.digest (or .Values.prpod.image, `repository:tag@digest`)"
                ),
                Some(obj.clone()),
            )
        })
        .collect()
}

/// `name-version` of the chart in `dir` (from its `Chart.yaml`).
pub fn chart_name(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("Chart.yaml")).unwrap_or_default();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_default();
    let field =
        |k: &str| v.get(k).and_then(|x| x.as_str().map(str::to_string).or_else(|| x.as_f64().map(|f| f.to_string())));
    format!("{}-{}", field("name").unwrap_or_else(|| "chart".into()), field("version").unwrap_or_default())
}

/// Whether any finding is an error.
pub fn has_errors(findings: &[ReportedFinding]) -> bool {
    findings.iter().any(|f| f.finding.severity == Severity::Error)
}

/// The cluster's answer to the chart phase: a connection, its discovery, and (a plan only) the
/// release's latest revision and status.
type ClusterRead =
    Option<Result<(Kube, Result<ClusterApi, KubeError>, Option<Result<Option<(u32, String)>, KubeError>>), KubeError>>;

/// Starts reading the cluster the chart is rendered against: its version and the kinds it
/// serves decide what the chart is rendered against and which objects are namespaced; a plan
/// also reads the release's latest revision. Started before the chart is generated so the TLS
/// handshake and the requests overlap it. A plan gives up after 5 s (`None`) and falls back to
/// Helm's default capabilities and prpod's built-in list of cluster-scoped kinds.
fn start_cluster_read(
    target: &KubeTarget,
    release: &ReleaseTarget,
    mode: Mode,
    early: Option<Prefetched>,
) -> tokio::task::JoinHandle<ClusterRead> {
    let (target, ns, name, plan) =
        (target.clone(), release.namespace.clone(), release.name.clone(), mode == Mode::Plan);
    // A prefetch was made for the config's target, which is this one.
    let early = if plan { None } else { early };
    tokio::spawn(async move {
        if let Some(early) = early
            && let Ok(Ok((kube, api))) = early.await
        {
            return Some(Ok((kube, api, None)));
        }
        let read = async move {
            let kube = Kube::connect(&target).await?;
            let (api, state) = if plan {
                let (api, state) = tokio::join!(ClusterApi::discover(&kube), kube.helm_release_state(&ns, &name));
                (api, Some(state))
            } else {
                (ClusterApi::discover(&kube).await, None)
            };
            Ok::<_, KubeError>((kube, api, state))
        };
        if plan { tokio::time::timeout(std::time::Duration::from_secs(5), read).await.ok() } else { Some(read.await) }
    })
}

/// What the chart phase hands the deploy and verify phases.
pub struct Charted {
    /// The PR context with its deploy target set (what plugins see from here on).
    pub ctx: PrContext,
    /// The Helm the chart was rendered with and is deployed with.
    pub helm: Helm,
    /// The cluster (`None` only in a plan whose cluster did not answer).
    pub kube: Option<Kube>,
    /// A plan's reading of the release's latest revision and status (`None`: no answer in time).
    pub plan_state: Option<Result<Option<(u32, String)>, String>>,
    /// The rendered chart.
    pub rendered: RenderedChart,
    /// `name-version (where it came from)`.
    pub chart: String,
    /// The verifiers: check-manifests ran, check-release runs after the deploy.
    pub verifiers: Vec<Plugin>,
    /// The pre-deploy findings.
    pub findings: Vec<ReportedFinding>,
}

impl Charted {
    /// How many pre-deploy findings are errors (any one stops the run before the deploy).
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.finding.severity == Severity::Error).count()
    }
}

/// The chart phase: the chart generated (chart-generator plugin) or taken (`[deploy] chart`),
/// rendered against the cluster, and checked (prpod's rules and each verifier's
/// check-manifests). Records the phase with the reporter.
pub async fn prepare(config: &Config, input: &mut DeliverInputs<'_>, reporter: &Reporter) -> anyhow::Result<Charted> {
    let host = PluginHost::shared()?;
    let phase = reporter.phase(Phase::Chart);
    let dc = &config.deploy;
    let release = input.release;
    let target = dc.kube_target();
    let cluster_read = start_cluster_read(&target, release, input.mode, input.prefetched.take());
    let helm = Helm::detect(&dc.helm, target.clone(), crate::config::cache_dir()).await.at(Phase::Chart)?;
    let registry = crate::clients::registry::api_host(input.image.repository.split('/').next().unwrap_or(""));
    let mut ctx = input.ctx.clone();
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
        (Mode::Apply, Some(Ok((_, Err(e), _)) | Err(e))) => return Err(PhaseError::new(Phase::Chart, e).into()),
        (_, Some(Ok((_, Err(e), state)))) => {
            (None, ClusterApi::builtin(), state.map(|s| s.map_err(|e| e.to_string())), Some(e.to_string()))
        }
        (_, Some(Err(e))) => (None, ClusterApi::builtin(), Some(Err(e.to_string())), Some(e.to_string())),
        (_, None) => (None, ClusterApi::builtin(), None, Some("no answer within 5 s".to_string())),
    };
    if let Some(why) = unread {
        phase.note(format!(
            "the cluster's API could not be read ({why}): the chart renders with Helm's default capabilities \
             and is judged with prpod's built-in list of cluster-scoped kinds; a deploy asks the cluster"
        ));
    }
    let req = ChartRequest {
        ctx: &ctx,
        release,
        image: &input.image,
        chart_dir,
        repository: Some(match input.chart_root {
            Some(root) => root.to_path_buf(),
            None => config.resolve_path(Path::new(".")),
        }),
        cluster: &cluster,
        values_files,
        set: &dc.set,
        app: &config.app,
        replicas: input.replicas,
        pull_secret: input.pull_secret.as_ref().map(|_| dc.pull_secret.as_str()),
    };
    let rendered = render(&req, &helm, generator.as_ref()).await.at(Phase::Chart)?;
    let chart_name = chart_name(&rendered.dir);
    let from = match &rendered.source {
        ChartSource::Generated { plugin } => format!("generated by {plugin}"),
        ChartSource::Directory { path } => match input.chart_root.and_then(|r| path.strip_prefix(r).ok()) {
            Some(rel) => format!("from the repository's {}", rel.display()),
            None => format!("from {}", path.display()),
        },
    };
    let scope = ScopePolicy { cluster: &cluster, allow_cluster_kinds: &dc.allow_cluster_kinds };
    let findings = check_manifests(&ctx, &rendered, &input.image, scope, &verifiers).await?;
    for f in &findings {
        phase.finding(f.clone());
    }
    let charted =
        Charted { ctx, helm, kube, plan_state, chart: format!("{chart_name} ({from})"), rendered, verifiers, findings };
    let kinds: Vec<String> = charted.rendered.manifests.iter().map(|m| format!("{}/{}", m.kind, m.name)).collect();
    let names: Vec<&str> = charted.verifiers.iter().map(|v| v.name()).collect();
    phase.finish(format!(
        "{chart_name} {from}, Helm {}, {}: {}; {} error finding(s) ({} and prpod's checks)",
        charted.helm.version(),
        charted.rendered.rendered_against,
        kinds.join(", "),
        charted.errors(),
        names.join(", ")
    ));
    Ok(charted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(image: &str) -> Manifest {
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  template:\n    spec:\n      containers:\n        - name: web\n          image: \"{image}\"\n"
        );
        Manifest::parse_all(&text).unwrap().remove(0)
    }

    #[test]
    fn digest_rule() {
        let image = ImageRef {
            repository: "127.0.0.1:5443/acme/web".into(),
            tag: Some("pr-1".into()),
            digest: Some("sha256:abc".into()),
        };
        assert!(digest_findings(&[manifest("127.0.0.1:5443/acme/web:pr-1@sha256:abc")], &image).is_empty());
        let f = digest_findings(&[manifest("127.0.0.1:5443/acme/web:pr-1")], &image);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].finding.severity, Severity::Error);
        assert_eq!(f[0].plugin, "prpod");
        let f = digest_findings(&[manifest("docker.io/library/nginx:1")], &image);
        assert_eq!(f[0].finding.severity, Severity::Warning);
    }

    #[test]
    fn labels() {
        assert_eq!(dns_label("acme/Hello_Web"), "acme-hello-web");
        assert_eq!(dns_label("--"), "app");
    }
}
