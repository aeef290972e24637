//! `prpod dispatch`: `prpod run` for one PR, run inside the cluster as a Kubernetes Job.
//!
//! The caller (the operator's identity) resolves the PR and its release exactly as `run` does
//! (context and tag-policy), then, in the PR's namespace:
//! 1. claims the namespace through the preview's ownership check ([`preview::claim`]): created
//!    with prpod's labels, or refused when it is another repository's or PR's;
//! 2. replaces the PR's previous Job: with `--reset` every one, otherwise a Job still running
//!    for another commit (superseded; the deploy Lease keeps two runs from deploying at once);
//! 3. applies a ServiceAccount, a Role with exactly a run's rights ([`kube::RUN_RIGHTS`]) and a
//!    RoleBinding; a ConfigMap with the run's `prpod.toml`; a Secret with the git token and the
//!    registry credentials (files the run reads through `*_file` keys); the caches' PVC;
//! 4. creates the Job, follows its pod's log and returns the run's own exit code.
//!
//! `--dry-run` stops before 1 and reports the manifests, without a secret value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clients::kube::job::{self, CacheClaim, DispatchSpec, JobStatus, PodState};
use crate::clients::kube::{self, Kube};
use crate::config::{Config, ConfigError, Env, Section};
use crate::error::{Classify, FailureKind, PhaseError, ResultExt};
use crate::model::{Phase, PrContext, ReleaseTarget};
use crate::phases::build::backend::by_name;
use crate::phases::build::{BackendChoice, InPod};
use crate::phases::context::ContextFlags;
use crate::phases::deploy::duration_text;
use crate::phases::{self, Inputs, Mode, Secrets, preview};
use crate::plugins::{PluginRef, World};
use crate::report::{Event, Reporter};
use crate::secret::Secret;

/// `[dispatch] cache_volume`: a PVC for the caches instead of emptyDir.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheVolume {
    /// Its size, a Kubernetes quantity (`10Gi`).
    pub size: String,
    /// Its StorageClass (default: the cluster's default class). A cluster without a dynamic
    /// provisioner needs a PersistentVolume of this class made beforehand.
    #[serde(default)]
    pub storage_class: Option<String>,
}

/// `[dispatch]`: the Job `prpod dispatch` starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// The job image (prpod, helm, git; `images/pr-job/`), env `PRPOD_DISPATCH_IMAGE`. Required
    /// by `dispatch`.
    #[serde(default)]
    pub image: Option<String>,
    /// A PVC for the caches (clone cache, compiled plugins, Helm); default: emptyDir.
    #[serde(default)]
    pub cache_volume: Option<CacheVolume>,
    /// Let the Job's pod run privileged, which buildah needs. Default false: the pod runs under
    /// the `restricted` profile, with the native backend.
    #[serde(default)]
    pub allow_privileged_builds: bool,
    /// How long a finished Job (and its pod, and log) stays: `ttlSecondsAfterFinished`.
    /// Default `1h`.
    #[serde(default = "default_ttl", with = "duration_text")]
    pub ttl_after_finished: Duration,
    /// Time for clone, build and push, added to `[deploy] timeout` for the Job's
    /// `activeDeadlineSeconds`. Default `20m`.
    #[serde(default = "default_build_time", with = "duration_text")]
    pub build_time: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_build_time() -> Duration {
    Duration::from_secs(20 * 60)
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            image: None,
            cache_volume: None,
            allow_privileged_builds: false,
            ttl_after_finished: default_ttl(),
            build_time: default_build_time(),
        }
    }
}

impl Section for DispatchConfig {
    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.apply_opt("PRPOD_DISPATCH_IMAGE", "dispatch.image", &mut self.image)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Value { key: key.into(), why });
        if let Some(c) = &self.cache_volume {
            let ok = c.size.trim_end_matches(|ch: char| ch.is_ascii_alphabetic()).parse::<u64>().is_ok_and(|n| n > 0)
                && ["", "Ki", "Mi", "Gi", "Ti", "K", "M", "G", "T"]
                    .contains(&c.size.trim_start_matches(|ch: char| ch.is_ascii_digit()));
            if !ok {
                return bad("dispatch.cache_volume.size", format!("`{}` is not a size like `10Gi`", c.size));
            }
        }
        if self.ttl_after_finished.as_secs() > i32::MAX as u64 {
            return bad("dispatch.ttl_after_finished", "is too long".into());
        }
        Ok(())
    }
}

/// What `prpod dispatch` was asked.
#[derive(Debug, Default)]
pub struct DispatchRequest {
    /// The PR (as `run` takes it).
    pub context: ContextFlags,
    /// Delete the PR's previous Jobs (and their pods) first, whatever they run.
    pub reset: bool,
    /// Report the plan and the manifests; change nothing.
    pub dry_run: bool,
    /// The registry password from `--registry-password-stdin`.
    pub registry_password: Option<Secret>,
}

/// A dispatch that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// `[dispatch] image` is unset.
    #[error(
        "no job image: set `[dispatch] image` (or PRPOD_DISPATCH_IMAGE) to the PR job image (built from \
         images/pr-job/, e.g. ghcr.io/OWNER/REPO/pr-job:latest)"
    )]
    NoImage,
    /// A build backend that needs more than the restricted profile.
    #[error(
        "`build.backend = \"{backend}\"` needs a privileged pod in a dispatched Job (it mounts, makes user namespaces \
         and switches users); the Job runs under the restricted profile with the native backend. Use the native \
         backend, or set `[dispatch] allow_privileged_builds = true` with a job image that carries buildah"
    )]
    PrivilegedBuild {
        /// The backend.
        backend: &'static str,
    },
    /// A build backend that cannot build in a pod (buildx: no docker daemon there).
    #[error(
        "`build.backend = \"{backend}\"` cannot run in a dispatched Job ({why}): use the native backend (or buildah \
         with `[dispatch] allow_privileged_builds = true`)"
    )]
    NotInPod {
        /// The backend.
        backend: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A plugin the Job cannot reach.
    #[error(
        "plugin `{reference}` ({world}) is a file on this machine, which the Job cannot read: push it to a registry \
         (`prpod plugin push`) and refer to it as oci://..., or use a builtin"
    )]
    LocalPlugin {
        /// The world.
        world: String,
        /// The reference.
        reference: String,
    },
    /// A Job of the same commit is running.
    #[error("Job {job} in {namespace} already runs commit {sha}: wait for it, or pass --reset to replace it")]
    AlreadyRunning {
        /// Its namespace.
        namespace: String,
        /// Its name.
        job: String,
        /// The commit.
        sha: String,
    },
    /// A Job in the namespace that is not this PR's.
    #[error("Job {job} in {namespace} belongs to {owner}, not to this PR: refusing to touch it")]
    ForeignJob {
        /// Its namespace.
        namespace: String,
        /// Its name.
        job: String,
        /// Whose it is.
        owner: String,
    },
    /// The pod never started.
    #[error("the Job's pod {pod} cannot start: {reason}: {message}; check `[dispatch] image` and its pull credentials")]
    PodStuck {
        /// The pod.
        pod: String,
        /// The kubelet's reason.
        reason: String,
        /// Its message.
        message: String,
    },
    /// The dispatching identity lacks rights the dispatch needs.
    #[error(
        "the dispatching identity may not {what} in namespace {namespace}; grant it these rights (a ClusterRole bound \
         to it: the README's \"The dispatching identity needs\" lists them; `namespaces` cannot be granted by a Role \
         in the namespace), or dispatch with a kubeconfig that holds them",
        what = rights_text(missing, role_missing)
    )]
    MissingRights {
        /// The PR's namespace.
        namespace: String,
        /// Rights dispatch itself uses (`create jobs.batch`).
        missing: Vec<String>,
        /// Rights of the Job's Role the identity does not hold (and so cannot grant).
        role_missing: Vec<String>,
    },
    /// The Job was deleted while it ran: superseded by a newer dispatch of the PR, or replaced by
    /// `--reset`.
    #[error(
        "Job {namespace}/{job} was deleted while it ran: a newer dispatch of this PR superseded it (or --reset replaced \
         it); its run was stopped (SIGTERM: it released the deploy lock) and the newer Job deploys the PR"
    )]
    Superseded {
        /// Its namespace.
        namespace: String,
        /// Its name.
        job: String,
    },
    /// The Job ended without the run's exit code.
    #[error("the Job {job} ended without the run's exit code: {why}")]
    JobFailed {
        /// The Job.
        job: String,
        /// What the cluster says.
        why: String,
    },
}

fn rights_text(missing: &[String], role_missing: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(missing.join(", "));
    }
    if !role_missing.is_empty() {
        parts.push(format!(
            "grant the Job's Role {} (Kubernetes lets an identity grant only rights it holds, unless it may `escalate` \
             roles and `bind` the Role)",
            role_missing.join(", ")
        ));
    }
    parts.join("; nor ")
}

impl Classify for DispatchError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            DispatchError::PodStuck { .. } | DispatchError::JobFailed { .. } => Some(FailureKind::External),
            DispatchError::Superseded { .. } => Some(FailureKind::Superseded),
            _ => None,
        }
    }
}

/// What a dispatch did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DispatchReport {
    /// The release and namespace.
    pub release: Option<ReleaseTarget>,
    /// The Job.
    pub job: String,
    /// The job image.
    pub image: String,
    /// Nothing was written.
    pub dry_run: bool,
    /// Jobs deleted first (`--reset`, or superseded: running for an older commit).
    pub replaced: Vec<String>,
    /// The run's exit code (absent on a dry run).
    pub exit_code: Option<i32>,
    /// The manifests (dry run), Secret values left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<serde_json::Value>,
}

impl DispatchReport {
    /// The report for people.
    pub fn lines(&self) -> Vec<String> {
        let ns = self.release.as_ref().map_or("?", |r| r.namespace.as_str());
        let mut out = Vec::new();
        for r in &self.replaced {
            out.push(format!("replaced Job {ns}/{r}"));
        }
        if self.dry_run {
            out.push(format!("would run Job {ns}/{} ({}):", self.job, self.image));
            for m in &self.manifests {
                out.push(serde_yaml::to_string(m).unwrap_or_default());
                out.push("---".into());
            }
        } else {
            out.push(format!(
                "Job {ns}/{} ({}) exited {}",
                self.job,
                self.image,
                self.exit_code.map_or("?".into(), |c| c.to_string())
            ));
        }
        out
    }
}

/// Secret keys (file names in [`job::SECRET_DIR`]).
const GIT_TOKEN: &str = "git-token";
const REGISTRY_PASSWORD: &str = "registry-password";
const REGISTRY_PULL_PASSWORD: &str = "registry-pull-password";
const REGISTRY_CA: &str = "registry-ca.crt";

/// Refuses what a dispatched Job cannot run: no image, a backend that needs privileges, a
/// plugin on this machine's disk.
pub fn check_dispatchable(config: &Config) -> Result<String, DispatchError> {
    let image = config.dispatch_image().ok_or(DispatchError::NoImage)?;
    if let BackendChoice::Named(name) = config.build.backend
        && let Some(backend) = by_name(name)
    {
        match backend.in_pod() {
            InPod::Restricted => {}
            InPod::Privileged if config.dispatch.allow_privileged_builds => {}
            InPod::Privileged => return Err(DispatchError::PrivilegedBuild { backend: backend.name() }),
            InPod::Unsupported(why) => return Err(DispatchError::NotInPod { backend: backend.name(), why }),
        }
    }
    let mut refs: Vec<(World, Option<&String>)> = vec![
        (World::TagPolicy, config.plugins.tag_policy.reference.as_ref()),
        (World::ChartGenerator, config.plugins.chart_generator.reference.as_ref()),
    ];
    refs.extend(config.plugins.verifier.0.iter().map(|p| (World::Verifier, p.reference.as_ref())));
    for (world, r) in refs {
        if let Some(r) = r
            && matches!(PluginRef::parse(r), Ok(PluginRef::File { .. }))
        {
            return Err(DispatchError::LocalPlugin { world: world.to_string(), reference: r.clone() });
        }
    }
    Ok(image)
}

impl Config {
    /// `[dispatch] image`, when set and not blank.
    fn dispatch_image(&self) -> Option<String> {
        self.dispatch.image.clone().filter(|i| !i.trim().is_empty())
    }
}

/// The credentials the Job gets, by Secret key: the git token, the push password and the pull
/// password, each from where `run` reads it (a file, a variable, stdin; never an argument).
pub fn job_secrets(
    config: &Config,
    env: &Env,
    registry_password: Option<Secret>,
) -> anyhow::Result<BTreeMap<String, Secret>> {
    let mut out = BTreeMap::new();
    if let Some(t) = phases::source::token(&config.source, env)? {
        out.insert(GIT_TOKEN.to_string(), t);
    }
    let r = &config.registry;
    let password = match registry_password {
        Some(p) => Some(p),
        None => match &r.password_file {
            Some(f) => Some(crate::clients::registry::PasswordSource::File(f.clone()).read().outside_line()?),
            None => {
                let var =
                    r.password_env.clone().unwrap_or_else(|| crate::phases::registry::DEFAULT_PASSWORD_ENV.into());
                env.get(&var).map(Secret::new)
            }
        },
    };
    if let Some(p) = password {
        anyhow::ensure!(
            r.username.is_some(),
            "a registry password was given but no username: set `registry.username` or PRPOD_REGISTRY_USER"
        );
        out.insert(REGISTRY_PASSWORD.to_string(), p);
    }
    if let Some((_, p, _)) = r.pull_credentials().outside_line()? {
        out.insert(REGISTRY_PULL_PASSWORD.to_string(), p);
    }
    Ok(out)
}

/// The run's `prpod.toml` for the ConfigMap, and the files it names: the operator's file as
/// written (`raw`), less what names this machine (kubeconfig, Helm path, cache and credential
/// files, `[dispatch]`, `[github]`), with the credential keys pointing at the Secret's files,
/// and the values `PRPOD_*` variables and flags gave for the image, the registry and the deploy
/// timeout.
pub fn job_config(
    raw: Option<toml::Table>,
    config: &Config,
    secret_keys: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    use toml::Value;
    let mut t = raw.unwrap_or_default();
    t.remove("dispatch");
    t.remove("github");
    let section = |t: &mut toml::Table, name: &str| -> toml::Table {
        match t.remove(name) {
            Some(Value::Table(s)) => s,
            _ => toml::Table::new(),
        }
    };
    let mut source = section(&mut t, "source");
    let mut registry = section(&mut t, "registry");
    let mut deploy = section(&mut t, "deploy");
    let mut image = section(&mut t, "image");
    let mut build = section(&mut t, "build");
    for k in ["cache_dir", "token_file"] {
        source.remove(k);
    }
    for k in ["password_file", "password_env", "pull_password_file", "pull_password_env", "docker_config", "ca_file"] {
        registry.remove(k);
    }
    for k in ["kubeconfig", "kube_context", "helm"] {
        deploy.remove(k);
    }
    build.remove("buildah");
    build.remove("buildx");
    let file = |k: &str| Value::String(format!("{}/{k}", job::SECRET_DIR));
    let has = |k: &str| secret_keys.iter().any(|s| s == k);
    if has(GIT_TOKEN) {
        source.insert("token_file".into(), file(GIT_TOKEN));
    }
    source.insert("username".into(), Value::String(config.source.username.clone()));
    if !config.source.plain_http.is_empty() {
        let hosts = config.source.plain_http.iter().cloned().map(Value::String).collect();
        source.insert("plain_http".into(), Value::Array(hosts));
    }
    if has(REGISTRY_PASSWORD) {
        registry.insert("password_file".into(), file(REGISTRY_PASSWORD));
    }
    if has(REGISTRY_PULL_PASSWORD) {
        registry.insert("pull_password_file".into(), file(REGISTRY_PULL_PASSWORD));
    }
    let r = &config.registry;
    for (k, v) in [("username", &r.username), ("pull_username", &r.pull_username), ("host", &r.host)] {
        if let Some(v) = v {
            registry.insert(k.into(), Value::String(v.clone()));
        }
    }
    if r.pull_with_push_credentials {
        registry.insert("pull_with_push_credentials".into(), Value::Boolean(true));
    }
    if !r.plain_http.is_empty() {
        registry.insert("plain_http".into(), Value::Array(r.plain_http.iter().cloned().map(Value::String).collect()));
    }
    let mut files = BTreeMap::new();
    if let Some(ca) = &r.ca_file {
        let text = crate::input::read_text_file(ca, 1024 * 1024, "registry CA file")
            .map_err(|e| anyhow::anyhow!("failed to read `registry.ca_file` {}: {}", ca.display(), e.reason()))?;
        files.insert(REGISTRY_CA.to_string(), text);
        registry.insert("ca_file".into(), Value::String(format!("{}/{REGISTRY_CA}", job::CONFIG_DIR)));
    }
    if let Some(repo) = &config.image.repository {
        image.insert("repository".into(), Value::String(repo.clone()));
    }
    deploy.insert("timeout".into(), Value::String(format!("{}s", config.deploy.timeout.as_secs())));
    build.insert("backend".into(), Value::String(config.build.backend.name().into()));
    for (name, s) in
        [("source", source), ("registry", registry), ("deploy", deploy), ("image", image), ("build", build)]
    {
        if !s.is_empty() {
            t.insert(name.into(), Value::Table(s));
        }
    }
    files.insert("prpod.toml".to_string(), toml::to_string(&t)?);
    Ok(files)
}

/// `prpod run`'s arguments for the PR, as the Job gets them.
pub fn run_args(ctx: &PrContext) -> Vec<String> {
    let mut a = vec!["run".to_string(), "--repo-url".into(), ctx.repository_url.clone()];
    if let Some(n) = ctx.number {
        a.extend(["--pr".into(), n.to_string()]);
    }
    a.extend(["--branch".into(), ctx.branch.clone(), "--sha".into(), ctx.sha.clone()]);
    if let Some(b) = &ctx.base_branch {
        a.extend(["--base".into(), b.clone()]);
    }
    a
}

/// The Job's name: per PR (or branch) and commit, at most 58 characters.
pub fn job_name(ctx: &PrContext, release: &ReleaseTarget) -> String {
    let who = match ctx.number {
        Some(n) => format!("pr-{n}"),
        None => release.name.clone(),
    };
    let mut base: String = format!("prpod-{who}").chars().take(50).collect();
    base = base.trim_end_matches('-').to_string();
    format!("{base}-{}", &ctx.sha[..ctx.sha.len().min(7)])
}

/// The manifests' inputs for `ctx`'s run.
pub fn spec(
    config: &Config,
    ctx: &PrContext,
    release: &ReleaseTarget,
    image: String,
    config_files: BTreeMap<String, String>,
    secret_keys: Vec<String>,
    image_pull_secret: bool,
) -> DispatchSpec {
    let mut labels = preview::labels(ctx, release);
    labels.insert(job::COMMIT_LABEL.into(), ctx.sha.clone());
    labels.insert(job::COMPONENT.0.into(), job::COMPONENT.1.into());
    let d = &config.dispatch;
    DispatchSpec {
        namespace: release.namespace.clone(),
        job_name: job_name(ctx, release),
        labels,
        annotations: preview::annotations(ctx),
        image,
        args: run_args(ctx),
        config_files,
        secret_keys,
        cache: d
            .cache_volume
            .as_ref()
            .map(|c| CacheClaim { size: c.size.clone(), storage_class: c.storage_class.clone() }),
        active_deadline_secs: (config.deploy.timeout + d.build_time).as_secs() as i64,
        ttl_after_finished_secs: d.ttl_after_finished.as_secs() as i32,
        rules: job::role_rules(&role_rights(config), &release.namespace),
        image_pull_secret,
        privileged_build: d.allow_privileged_builds
            && config.build.backend.named().and_then(by_name).is_some_and(|b| b.in_pod() == InPod::Privileged),
    }
}

/// The rights of the Job's Role: a run's, into a namespace that exists (dispatch made it), with
/// an Ingress when the app has one, for either Helm.
pub fn role_rights(config: &Config) -> Vec<&'static kube::ApiRight> {
    kube::run_rights(true, config.app.ingress_host.is_some(), None)
}

/// Asks the cluster (SelfSubjectAccessReviews) whether the dispatching identity holds every
/// right this dispatch into `ns` uses ([`job::dispatch_rights`]) and may grant the Job's Role
/// (`escalate` and `bind` on roles, or every right of the Role), before anything is written;
/// the missing ones, named. A cluster that does not answer the reviews is not refused here:
/// the writes below would name their own refusal.
async fn check_rights(kube: &Kube, ns: &str, config: &Config, reporter: &Reporter) -> anyhow::Result<()> {
    let exists = matches!(kube.namespace_meta(ns).await, Ok(Some(_)));
    let ask = |r: &kube::ApiRight| {
        if r.resource == "namespaces" {
            kube.can_i(None, r.verb, r.group, r.resource, r.subresource, Some(ns))
        } else {
            kube.can_i(Some(ns), r.verb, r.group, r.resource, r.subresource, None)
        }
    };
    let missing = async |rights: &[&'static kube::ApiRight]| -> Result<Vec<String>, kube::KubeError> {
        let answers = futures::future::join_all(rights.iter().map(|r| ask(r))).await;
        let mut out = Vec::new();
        for (r, a) in rights.iter().zip(answers) {
            if !a?.allowed {
                out.push(right_text(r, ns));
            }
        }
        Ok(out)
    };
    let result = async {
        let own = missing(&job::dispatch_rights(
            exists,
            config.dispatch.cache_volume.is_some(),
            config.deploy.adopt_namespace,
        ))
        .await?;
        let rbac = "rbac.authorization.k8s.io";
        let (escalate, bind) = futures::future::join(
            kube.can_i(Some(ns), "escalate", rbac, "roles", None, None),
            kube.can_i(Some(ns), "bind", rbac, "roles", None, Some(job::SERVICE_ACCOUNT)),
        )
        .await;
        let role = if escalate?.allowed && bind?.allowed { Vec::new() } else { missing(&role_rights(config)).await? };
        Ok::<_, kube::KubeError>((own, role))
    }
    .await;
    match result {
        Ok((own, role)) if own.is_empty() && role.is_empty() => Ok(()),
        Ok((missing, role_missing)) => {
            Err(PhaseError::outside_line(DispatchError::MissingRights { namespace: ns.into(), missing, role_missing })
                .into())
        }
        Err(e) => {
            reporter
                .emit(Event::Note(Phase::Deploy, format!("could not check the dispatching identity's rights: {e}")));
            Ok(())
        }
    }
}

/// `create jobs.batch`, `get namespaces/NS`: a right as a refusal names it.
fn right_text(r: &kube::ApiRight, ns: &str) -> String {
    if r.resource == "namespaces" {
        format!("{} namespaces/{ns}", r.verb)
    } else {
        format!("{} {}", r.verb, r.resource_name())
    }
}

/// The manifests of `spec` as JSON, the Secret's values left out (a dry run's report).
pub fn manifests(spec: &DispatchSpec) -> anyhow::Result<Vec<serde_json::Value>> {
    let placeholder: BTreeMap<String, Secret> =
        spec.secret_keys.iter().map(|k| (k.clone(), Secret::new("<secret: not shown>"))).collect();
    let mut out = vec![
        serde_json::to_value(job::service_account(spec))?,
        serde_json::to_value(job::role(spec))?,
        serde_json::to_value(job::role_binding(spec))?,
        serde_json::to_value(job::config_map(spec))?,
        serde_json::to_value(job::secret(spec, &placeholder))?,
    ];
    if let Some(c) = job::cache_claim(spec) {
        out.push(serde_json::to_value(c)?);
    }
    out.push(serde_json::to_value(job::job(spec))?);
    Ok(out)
}

/// Runs `prpod dispatch`; the report carries the run's exit code.
pub async fn dispatch(
    config: &Config,
    env: &Env,
    req: DispatchRequest,
    reporter: &Reporter,
) -> anyhow::Result<DispatchReport> {
    let image = check_dispatchable(config).outside_line()?;
    let values = job_secrets(config, env, req.registry_password.clone())?;
    for v in values.values() {
        reporter.redact(v);
    }
    // The PR and its release, as `run` resolves them (context, tag-policy).
    let secrets = Secrets { git_token: values.get(GIT_TOKEN).cloned(), registry_password: req.registry_password };
    let mode = if req.dry_run { Mode::Plan } else { Mode::Apply };
    let inputs = Inputs { config, context: &req.context, env, secrets: &secrets, mode };
    let run = phases::walk(&inputs, Phase::Tags, reporter).await?;
    let ctx = run.context.clone().ok_or_else(|| anyhow::anyhow!("the walk produced no context"))?;
    let release = run.release.clone().ok_or_else(|| anyhow::anyhow!("the walk produced no release"))?;
    let registry = run.registry.clone().ok_or_else(|| anyhow::anyhow!("the walk produced no registry"))?;
    // The kubelet pulls the job image with the pull credentials (the separate-pull-credential
    // rule: never the push credentials, unless the operator said so).
    let image_host =
        crate::clients::registry::ImageReference::parse(&image).outside_line()?.value.name.api_host().to_string();
    let pull = registry.credentials.pull_secret(&image_host).await.outside_line()?;

    let raw = match &config.path {
        Some(p) => {
            let text = crate::input::read_text_file(p, crate::input::MAX_CONFIG_BYTES, "config").map_err(|e| {
                anyhow::anyhow!("failed to read the config {} for the Job: {}", p.display(), e.reason())
            })?;
            Some(toml::from_str::<toml::Table>(&text)?)
        }
        None => None,
    };
    let keys: Vec<String> = values.keys().cloned().collect();
    let files = job_config(raw, config, &keys)?;
    let spec = spec(config, &ctx, &release, image.clone(), files, keys, pull.is_some());
    let mut report = DispatchReport {
        release: Some(release.clone()),
        job: spec.job_name.clone(),
        image,
        dry_run: req.dry_run,
        ..Default::default()
    };
    if req.dry_run {
        report.manifests = manifests(&spec)?;
        return Ok(report);
    }

    let kube = Kube::connect(&config.deploy.kube_target()).await.outside_line()?;
    let ns = &release.namespace;
    check_rights(&kube, ns, config, reporter).await?;
    preview::claim(&kube, &ctx, &release, config.deploy.adopt_namespace).await?;
    for j in kube.dispatch_jobs(ns).await.outside_line()? {
        if preview::owner_of(&ctx, &release, &j.labels, &j.annotations) != preview::Owner::Us {
            let owner = j.annotations.get(preview::REPOSITORY_ANNOTATION).cloned().unwrap_or_else(|| "another".into());
            return Err(PhaseError::outside_line(DispatchError::ForeignJob {
                namespace: ns.clone(),
                job: j.name,
                owner,
            })
            .into());
        }
        let same = j.commit.as_deref() == Some(ctx.sha.as_str());
        if j.running && same && !req.reset {
            return Err(PhaseError::outside_line(DispatchError::AlreadyRunning {
                namespace: ns.clone(),
                job: j.name,
                sha: ctx.sha.clone(),
            })
            .into());
        }
        // A finished Job of the PR is removed too (the name is reused for the same commit).
        let why = if req.reset {
            "--reset"
        } else if j.running {
            "superseded: it runs an older commit"
        } else {
            "finished"
        };
        reporter.emit(Event::Note(Phase::Deploy, format!("deleting Job {ns}/{} ({why})", j.name)));
        kube.delete_job(ns, &j.name, Duration::from_secs(120)).await.outside_line()?;
        if j.running || req.reset {
            report.replaced.push(j.name);
        }
    }
    kube.apply_namespaced(ns, &job::service_account(&spec)).await.outside_line()?;
    kube.apply_namespaced(ns, &job::role(&spec)).await.outside_line()?;
    kube.apply_namespaced(ns, &job::role_binding(&spec)).await.outside_line()?;
    kube.apply_namespaced(ns, &job::config_map(&spec)).await.outside_line()?;
    kube.apply_namespaced(ns, &job::secret(&spec, &values)).await.outside_line()?;
    if let Some(p) = &pull {
        kube.apply_namespaced(ns, &job::image_pull_secret(&spec, &p.dockerconfigjson)).await.outside_line()?;
    }
    if let Some(c) = job::cache_claim(&spec) {
        kube.apply_namespaced(ns, &c).await.outside_line()?;
    }
    kube.create_job(ns, &job::job(&spec)).await.outside_line()?;
    reporter.emit(Event::Note(Phase::Deploy, format!("started Job {ns}/{} ({})", spec.job_name, spec.image)));
    report.exit_code = Some(follow(&kube, ns, &spec.job_name, reporter).await?);
    Ok(report)
}

/// How long the pod may stay unable to start (image pull, config) before dispatch gives up.
const STUCK: Duration = Duration::from_secs(90);

/// How long the cluster may keep failing transiently (unreachable, 5xx) while dispatch follows
/// the Job before it gives up.
const UNREACHABLE: Duration = Duration::from_secs(60);

/// Follows Job `name`'s pod: streams its log and returns the container's exit code.
///
/// The pod never restarts its container (`restartPolicy: Never`, `backoffLimit: 0`), but a log
/// stream can end before the container does: the API server or the kubelet closes a long
/// request, a proxy or load balancer cuts it. While the container runs, each ended stream is
/// resumed where it stopped ([`job::LogCursor`]: no line twice, none lost); once it has ended,
/// the rest of its log is read before its exit code is returned.
async fn follow(kube: &Kube, ns: &str, name: &str, reporter: &Reporter) -> anyhow::Result<i32> {
    let mut cursor = job::LogCursor::default();
    let mut stuck_since: Option<(tokio::time::Instant, String)> = None;
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        match follow_step(kube, ns, name, &mut cursor, &mut stuck_since, reporter).await {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => failing_since = None,
            Err(Step::Kube(e)) if e.is_transient() => {
                reporter.emit(Event::Note(Phase::Deploy, format!("{e}; trying again")));
                let since = failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > UNREACHABLE {
                    return Err(PhaseError::outside_line(e).into());
                }
            }
            Err(Step::Kube(e)) => return Err(PhaseError::outside_line(e).into()),
            Err(Step::Dispatch(e)) => return Err(PhaseError::outside_line(e).into()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Why a look at the Job stopped [`follow`].
enum Step {
    /// The cluster failed (transiently or not).
    Kube(kube::KubeError),
    /// The Job cannot give the run's exit code.
    Dispatch(DispatchError),
}

impl From<kube::KubeError> for Step {
    fn from(e: kube::KubeError) -> Step {
        Step::Kube(e)
    }
}

/// One look at Job `name`'s pod: streams what its log has (following it while the container
/// runs); the exit code once the container has ended.
async fn follow_step(
    kube: &Kube,
    ns: &str,
    name: &str,
    cursor: &mut job::LogCursor,
    stuck_since: &mut Option<(tokio::time::Instant, String)>,
    reporter: &Reporter,
) -> Result<Option<i32>, Step> {
    let print = |line: &str| reporter.emit(Event::Note(Phase::Deploy, format!("│ {line}")));
    match kube.job_pod(ns, name).await? {
        PodState::Running { pod, .. } => {
            *stuck_since = None;
            if cursor.started() {
                reporter.emit(Event::Note(
                    Phase::Deploy,
                    format!("the log stream of {ns}/{pod} ended while it runs: resuming it after the last line"),
                ));
            }
            kube.follow_log(ns, &pod, cursor, true, false, print).await?;
        }
        PodState::Terminated { pod, exit_code, reason } => {
            // the lines since the last stream (all of them when it ran to its end between two
            // looks); a pod deleted meanwhile has no log left to read
            match kube.follow_log(ns, &pod, cursor, false, true, print).await {
                Err(e) if e.code() == Some(404) => {}
                r => r?,
            }
            if (0..=125).contains(&exit_code) {
                return Ok(Some(exit_code));
            }
            return Err(Step::Dispatch(match kube.job_status(ns, name).await? {
                JobStatus::Deleted => DispatchError::Superseded { namespace: ns.into(), job: name.into() },
                JobStatus::Failed(w) => DispatchError::JobFailed {
                    job: name.into(),
                    why: format!("{reason} (exit {exit_code}); the Job: {w}"),
                },
                JobStatus::Other => {
                    DispatchError::JobFailed { job: name.into(), why: format!("{reason} (exit {exit_code})") }
                }
            }));
        }
        PodState::Waiting { pod, reason: Some((r, m)) }
            if !matches!(r.as_str(), "ContainerCreating" | "PodInitializing") =>
        {
            let since = stuck_since.get_or_insert_with(|| (tokio::time::Instant::now(), r.clone()));
            if since.0.elapsed() > STUCK {
                return Err(Step::Dispatch(DispatchError::PodStuck { pod, reason: r, message: m }));
            }
        }
        PodState::Absent => match kube.job_status(ns, name).await? {
            JobStatus::Deleted => {
                return Err(Step::Dispatch(DispatchError::Superseded { namespace: ns.into(), job: name.into() }));
            }
            JobStatus::Failed(why) => return Err(Step::Dispatch(DispatchError::JobFailed { job: name.into(), why })),
            JobStatus::Other => {}
        },
        PodState::Waiting { .. } => *stuck_since = None,
    }
    Ok(None)
}

/// A file path the Job reads a credential from (for the README and tests).
pub fn secret_file(key: &str) -> PathBuf {
    PathBuf::from(job::SECRET_DIR).join(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> PrContext {
        PrContext {
            branch: "feature/x".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            base_branch: Some("main".into()),
            ..PrContext::manual("https://git.example/acme/web.git".into(), "acme/web".into(), Some(7))
        }
    }

    fn target() -> ReleaseTarget {
        ReleaseTarget { name: "web-pr-7".into(), namespace: "web-pr-7".into() }
    }

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prpod.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&p).unwrap()
    }

    #[test]
    fn dispatch_section_reads_and_checks() {
        let c = config(
            "[dispatch]\nimage = \"r/pr-job:1\"\ncache_volume = { size = \"5Gi\", storage_class = \"local\" }\n\
             ttl_after_finished = \"2h\"\nbuild_time = \"10m\"\n",
        );
        assert_eq!(c.dispatch.image.as_deref(), Some("r/pr-job:1"));
        assert_eq!(c.dispatch.ttl_after_finished, Duration::from_secs(7200));
        assert_eq!(c.dispatch.cache_volume.as_ref().unwrap().storage_class.as_deref(), Some("local"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prpod.toml");
        std::fs::write(&p, "[dispatch]\ncache_volume = { size = \"lots\" }\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("dispatch.cache_volume.size"), "{e}");
        std::fs::write(&p, "[dispatch]\nimagee = \"x\"\n").unwrap();
        assert!(Config::load(&p).unwrap_err().to_string().contains("imagee"));
        let mut c = Config::default();
        c.apply_env(&Env::from_pairs([("PRPOD_DISPATCH_IMAGE", "env/img:2")])).unwrap();
        assert_eq!(check_dispatchable(&c).unwrap(), "env/img:2");
    }

    #[test]
    fn what_a_job_cannot_run_is_refused_before_anything() {
        assert!(matches!(check_dispatchable(&Config::default()), Err(DispatchError::NoImage)));
        let c = config("[dispatch]\nimage = \"i\"\n[build]\nbackend = \"buildah\"\n");
        let e = check_dispatchable(&c).unwrap_err();
        assert!(e.to_string().contains("allow_privileged_builds"), "{e}");
        let c = config("[dispatch]\nimage = \"i\"\nallow_privileged_builds = true\n[build]\nbackend = \"buildah\"\n");
        assert!(check_dispatchable(&c).is_ok());
        let s = spec(&c, &ctx(), &target(), "i".into(), BTreeMap::new(), vec![], false);
        assert!(s.privileged_build);
        let c = config("[dispatch]\nimage = \"i\"\n[build]\nbackend = \"buildx\"\n");
        assert!(matches!(check_dispatchable(&c), Err(DispatchError::NotInPod { backend: "buildx", .. })));
        let c = config("[dispatch]\nimage = \"i\"\n[plugins.verifier]\nref = \"mine.wasm\"\n");
        assert!(matches!(check_dispatchable(&c), Err(DispatchError::LocalPlugin { .. })));
    }

    #[test]
    fn the_spec_names_the_job_per_pr_and_commit_with_the_preview_labels() {
        let c = config("[dispatch]\nimage = \"i\"\nbuild_time = \"10m\"\n[deploy]\ntimeout = \"5m\"\n");
        let s = spec(&c, &ctx(), &target(), "i".into(), BTreeMap::new(), vec![], false);
        assert_eq!(s.job_name, "prpod-pr-7-0123456");
        assert_eq!(s.active_deadline_secs, 900);
        assert_eq!(s.ttl_after_finished_secs, 3600);
        assert_eq!(s.labels[preview::PR_LABEL], "7");
        assert_eq!(s.labels[preview::REPOSITORY_LABEL], "acme.web");
        assert_eq!(s.labels[job::COMMIT_LABEL], ctx().sha);
        assert!(!s.privileged_build);
        // the ownership check accepts the Job's labels as this PR's, and refuses them for another
        let other = PrContext { number: Some(8), ..ctx() };
        assert_eq!(preview::owner_of(&ctx(), &target(), &s.labels, &s.annotations), preview::Owner::Us);
        assert!(matches!(
            preview::owner_of(&other, &target(), &s.labels, &s.annotations),
            preview::Owner::OtherPreview(_)
        ));
        assert_eq!(
            s.args,
            [
                "run",
                "--repo-url",
                "https://git.example/acme/web.git",
                "--pr",
                "7",
                "--branch",
                "feature/x",
                "--sha",
                &ctx().sha,
                "--base",
                "main"
            ]
        );
        let long = ReleaseTarget { name: "x".repeat(80), namespace: "n".into() };
        let branch = PrContext { number: None, ..ctx() };
        assert!(job_name(&branch, &long).len() <= 58);
    }

    #[test]
    fn the_job_config_points_at_the_secret_files_and_drops_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let text = format!(
            "[image]\nrepository = \"reg/acme/web\"\n[source]\ncache_dir = \"/home/me/c\"\n\
             [registry]\nusername = \"u\"\npassword_env = \"MY_PW\"\nca_file = \"{}\"\n\
             [deploy]\nkubeconfig = \"/home/me/.kube/config\"\nhelm = \"/opt/helm\"\n\
             [dispatch]\nimage = \"i\"\n[app]\nport = 9000\n",
            ca.display()
        );
        let p = dir.path().join("prpod.toml");
        std::fs::write(&p, &text).unwrap();
        let mut c = Config::load(&p).unwrap();
        c.apply_env(&Env::from_pairs([("PRPOD_IMAGE", "reg/acme/other")])).unwrap();
        let env = Env::from_pairs([("MY_PW", "pw-value"), ("PRPOD_GIT_TOKEN", "tok-value")]);
        let values = job_secrets(&c, &env, None).unwrap();
        assert_eq!(values.keys().collect::<Vec<_>>(), [GIT_TOKEN, REGISTRY_PASSWORD]);
        assert_eq!(values[REGISTRY_PASSWORD].expose(), "pw-value");
        let keys: Vec<String> = values.keys().cloned().collect();
        let files = job_config(Some(toml::from_str(&text).unwrap()), &c, &keys).unwrap();
        let toml_text = &files["prpod.toml"];
        assert!(!toml_text.contains("pw-value") && !toml_text.contains("tok-value"));
        for gone in ["/home/me", "/opt/helm", "MY_PW", "[dispatch]"] {
            assert!(!toml_text.contains(gone), "{gone} in:\n{toml_text}");
        }
        let job: Config = {
            let p2 = dir.path().join("job.toml");
            std::fs::write(&p2, toml_text).unwrap();
            Config::load(&p2).unwrap()
        };
        assert_eq!(job.source.token_file, Some(secret_file(GIT_TOKEN)));
        assert_eq!(job.registry.password_file, Some(secret_file(REGISTRY_PASSWORD)));
        assert_eq!(job.registry.ca_file, Some(PathBuf::from("/etc/prpod/registry-ca.crt")));
        assert_eq!(job.image.repository.as_deref(), Some("reg/acme/other"), "the variable's value is carried");
        assert_eq!(job.app.port, 9000);
        assert!(files[REGISTRY_CA].starts_with("-----BEGIN"));
        // no pull credentials: no pull password in the Secret
        assert!(!values.contains_key(REGISTRY_PULL_PASSWORD));
    }

    #[test]
    fn a_pod_that_never_starts_is_an_external_failure_a_refusal_is_bad_input() {
        // as `dispatch` returns them: wrapped where they cross into the command
        let code = |e: DispatchError| crate::error::exit_code_for(&PhaseError::outside_line(e).into());
        let stuck = DispatchError::PodStuck { pod: "p".into(), reason: "ErrImagePull".into(), message: "m".into() };
        assert_eq!(code(stuck), crate::error::EXIT_EXTERNAL);
        let failed = DispatchError::JobFailed { job: "j".into(), why: "DeadlineExceeded".into() };
        assert_eq!(code(failed), crate::error::EXIT_EXTERNAL);
        let running = DispatchError::AlreadyRunning { namespace: "n".into(), job: "j".into(), sha: "s".into() };
        assert_eq!(code(running), crate::error::EXIT_INPUT);
    }

    #[test]
    fn dry_run_manifests_carry_no_secret_value() {
        let c = config("[dispatch]\nimage = \"i\"\n");
        let s = spec(&c, &ctx(), &target(), "i".into(), BTreeMap::new(), vec![GIT_TOKEN.into()], false);
        let m = manifests(&s).unwrap();
        let kinds: Vec<&str> = m.iter().map(|v| v["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret", "Job"]);
        assert_eq!(m[4]["stringData"][GIT_TOKEN], "<secret: not shown>");
    }
}
