//! The values that flow through a prpod run.
//!
//! These mirror the records of the WIT package `prpod:plugin` (`wit/types.wit`) field for field,
//! and their serde form (snake_case keys) is the JSON that `prpod plugin call` reads and prints.
//! Keeping one vocabulary for code, WIT and JSON is deliberate: a plugin author reading a JSON
//! report sees the same names their plugin receives.
//!
//! # Images: one vocabulary
//!
//! - [`ImageName`] is a repository, registry host included, without tag or digest
//!   (`ghcr.io/acme/web`), normalised once when read; the host's code passes it, not strings.
//! - [`ImageReference`](crate::clients::registry::ImageReference) is a repository with a tag or a
//!   digest (a `FROM` line, `--image`): the one reference type.
//! - [`BuiltImage`] is a build's output before the push; [`PushedImage`] is the pushed result
//!   (repository, digest, tags). Both carry the [`ImageName`], which serialises as its string.
//! - [`ImageRef`] is only the plugin-facing WIT record `image-ref` (strings, as plugins see
//!   them): it is made from the types above where a plugin or the chart values need it, and is
//!   no vocabulary of its own inside the host.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::clients::registry::ImageName;

/// What happened to the pull request that started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The pull request was opened.
    Opened,
    /// New commits were pushed to the pull request's branch.
    Synchronize,
    /// A closed pull request was reopened.
    Reopened,
    /// The pull request was closed or merged.
    Closed,
    /// A person or CI job ran prpod by hand.
    #[default]
    Manual,
}

/// The pull request (or branch) a run is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrContext {
    /// Clone URL of the repository, without credentials.
    pub repository_url: String,
    /// `owner/name` slug.
    pub repository: String,
    /// Pull request number, when the run is for a pull request.
    #[serde(default)]
    pub number: Option<u64>,
    /// Head branch being previewed.
    pub branch: String,
    /// Branch the pull request targets.
    #[serde(default)]
    pub base_branch: Option<String>,
    /// Full commit SHA of the head commit.
    pub sha: String,
    /// Event that started the run (default `manual`).
    #[serde(default)]
    pub event: Event,
    /// Labels on the pull request.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Login of the author.
    #[serde(default)]
    pub author: String,
    /// Draft pull request.
    #[serde(default)]
    pub draft: bool,
    /// Head branch lives in a fork.
    #[serde(default)]
    pub fork: bool,
    /// What this run deploys, once known (absent for tag-policy).
    #[serde(default)]
    pub target: Option<DeployTarget>,
}

impl PrContext {
    /// A context named by hand rather than by an event: `repository`'s PR `number` at clone URL
    /// `repository_url`, event `manual`, nothing else known yet (callers fill in what they know,
    /// `PrContext { branch, ..PrContext::manual(..) }`).
    pub fn manual(repository_url: String, repository: String, number: Option<u64>) -> PrContext {
        PrContext {
            repository_url,
            repository,
            number,
            branch: String::new(),
            base_branch: None,
            sha: String::new(),
            event: Event::Manual,
            labels: vec![],
            author: String::new(),
            draft: false,
            fork: false,
            target: None,
        }
    }

    /// Checks what the host promises plugins about a context: `repository_url` carries no
    /// credentials. A URL with user info (`https://x-access-token:TOKEN@host/...`) would hand a
    /// token to every plugin; the token belongs in `PRPOD_GIT_TOKEN` (or `token_file` under `[source]`).
    pub fn check(&self) -> Result<(), String> {
        if url_has_userinfo(&self.repository_url) {
            return Err(format!(
                "repository_url `{}` carries user info (credentials); give the URL without them \
                 (`https://host/owner/name.git`) and the token through PRPOD_GIT_TOKEN (or `token_file` under [source] in prpod.toml), \
                 so that no plugin, log or report ever sees it",
                redact_userinfo(&self.repository_url)
            ));
        }
        if let Some(at) = self.repository_url.find(['?', '#']) {
            // Shown without what follows: a query (`?access_token=...`) is where tokens hide.
            return Err(format!(
                "repository_url `{}{}***` carries a query or fragment, which can hold a token; give the URL \
                 without them (`https://host/owner/name.git`) and the token through PRPOD_GIT_TOKEN (or \
                 `token_file` under [source] in prpod.toml)",
                redact_userinfo(&self.repository_url[..at]),
                &self.repository_url[at..at + 1]
            ));
        }
        Ok(())
    }
}

/// Whether `url` (`scheme://[userinfo@]host/...`) has a user info part.
pub fn url_has_userinfo(url: &str) -> bool {
    authority(url).is_some_and(|(_, a)| a.contains('@'))
}

/// `url` with any user info replaced by `***`, for messages.
pub fn redact_userinfo(url: &str) -> String {
    match authority(url) {
        Some((start, a)) if a.contains('@') => {
            let at = a.rfind('@').expect("checked");
            format!("{}***{}", &url[..start], &url[start + at..])
        }
        _ => url.to_string(),
    }
}

/// The authority part of a `scheme://authority/...` URL, and where it starts.
fn authority(url: &str) -> Option<(usize, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((start, &rest[..end]))
}

/// The WIT record `image-ref` that plugins (and chart values) see: a repository string with a
/// tag and/or digest. Inside the host an image is an [`ImageName`] or an
/// [`ImageReference`](crate::clients::registry::ImageReference); this record is made from them at
/// the plugin boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// Repository including the registry host.
    pub repository: String,
    /// Tag, if any.
    #[serde(default)]
    pub tag: Option<String>,
    /// Digest (`sha256:...`), if known.
    #[serde(default)]
    pub digest: Option<String>,
}

impl From<crate::clients::registry::ImageReference> for ImageRef {
    /// The plugin boundary: the host's reference as the strings plugins see.
    fn from(r: crate::clients::registry::ImageReference) -> ImageRef {
        ImageRef { repository: r.name.to_string(), tag: r.tag, digest: r.digest }
    }
}

/// The tags a tag-policy assigns to one build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagSet {
    /// The tag deployments use.
    pub primary: String,
    /// Further tags pushed for the same image.
    #[serde(default)]
    pub extra: Vec<String>,
    /// Cache tags to import build cache from, in order.
    #[serde(default)]
    pub cache_from: Vec<String>,
    /// Cache tag to export build cache to.
    #[serde(default)]
    pub cache_to: Option<String>,
}

impl TagSet {
    /// Every tag in the set: primary, extras, cache-from, cache-to.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.primary).chain(&self.extra).chain(&self.cache_from).chain(&self.cache_to)
    }
}

/// Where a pull request's Helm release lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseTarget {
    /// Helm release name (DNS-1123, at most 53 characters).
    pub name: String,
    /// Namespace (DNS-1123, at most 63 characters).
    pub namespace: String,
}

/// What a run deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployTarget {
    /// Registry host (and port) images must come from.
    pub registry: String,
    /// The image built for this run.
    pub image: ImageRef,
    /// The tags tag-policy chose.
    pub tags: TagSet,
    /// The release tag-policy chose.
    pub release: ReleaseTarget,
}

/// One TCP port a container listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Port name.
    pub name: String,
    /// Port number inside the container.
    pub container_port: u16,
}

/// One non-secret environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Variable value.
    pub value: String,
}

/// Kubernetes resource quantities for a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU request.
    #[serde(default)]
    pub cpu_request: Option<String>,
    /// Memory request.
    #[serde(default)]
    pub memory_request: Option<String>,
    /// CPU limit.
    #[serde(default)]
    pub cpu_limit: Option<String>,
    /// Memory limit.
    #[serde(default)]
    pub memory_limit: Option<String>,
}

fn one() -> u32 {
    1
}

/// The application a chart is generated for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Application name.
    pub name: String,
    /// Image to run.
    pub image: ImageRef,
    /// Ports; the first is the one probes and the Service use.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Non-secret environment variables.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Replicas (default 1).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Resource requests and limits.
    #[serde(default)]
    pub resources: Resources,
    /// Health check path.
    #[serde(default)]
    pub health_path: Option<String>,
    /// Ingress host, if an Ingress is wanted.
    #[serde(default)]
    pub ingress_host: Option<String>,
}

/// One file of a generated chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartFile {
    /// Path relative to the chart root, `/`-separated.
    pub path: String,
    /// File contents.
    pub content: Vec<u8>,
}

/// One rendered Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when set.
    pub namespace: Option<String>,
    /// The object's full YAML text.
    pub text: String,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Information only.
    Info,
    /// Worth a look.
    Warning,
    /// A rule was broken: stops the run.
    Error,
}

/// One result of a verifier rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// Stable rule identifier.
    pub rule: String,
    /// What is wrong and what to do.
    pub message: String,
    /// The object concerned (`Kind/name`).
    pub object: Option<String>,
}

/// One status condition of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Condition type, e.g. `Available`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default)]
    pub message: Option<String>,
}

/// The state of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStatus {
    /// Container name.
    pub name: String,
    /// Passes its readiness probe.
    #[serde(default)]
    pub ready: bool,
    /// Restart count.
    #[serde(default)]
    pub restart_count: u32,
    /// Why the container is waiting.
    #[serde(default)]
    pub waiting_reason: Option<String>,
    /// Details of the wait.
    #[serde(default)]
    pub waiting_message: Option<String>,
}

/// The state of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodStatus {
    /// Pod name.
    pub name: String,
    /// Pod phase.
    pub phase: String,
    /// Its containers.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
}

/// The rollout state of one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadStatus {
    /// Workload kind.
    pub kind: String,
    /// Workload name.
    pub name: String,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas ready.
    #[serde(default)]
    pub ready: u32,
    /// Replicas available.
    #[serde(default)]
    pub available: u32,
    /// Status conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The workload's pods.
    #[serde(default)]
    pub pods: Vec<PodStatus>,
}

/// A recent Warning event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarningEvent {
    /// The object the event is about (`Kind/name`).
    pub object: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// Times seen.
    #[serde(default = "one")]
    pub count: u32,
}

/// What a release looks like after deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseStatus {
    /// The release.
    pub release: ReleaseTarget,
    /// Its workloads.
    #[serde(default)]
    pub workloads: Vec<WorkloadStatus>,
    /// Recent Warning events in its namespace.
    #[serde(default)]
    pub warnings: Vec<WarningEvent>,
}

impl Manifest {
    /// Splits multi-document YAML (such as `helm template` output) into manifests, skipping
    /// empty documents. Each object's text is re-serialized from what was parsed. The text is
    /// bounded in size and nesting before the parser sees it
    /// ([`crate::input::check_yaml_nesting`]): a chart is the PR's to write.
    pub fn parse_all(text: &str) -> anyhow::Result<Vec<Manifest>> {
        crate::input::check_yaml_nesting(text, "the manifests")?;
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let field = |v: &serde_yaml::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            let meta = value.get("metadata").cloned().unwrap_or_default();
            out.push(Manifest {
                api_version: field(&value, "apiVersion").unwrap_or_default(),
                kind: field(&value, "kind").unwrap_or_default(),
                name: field(&meta, "name").unwrap_or_default(),
                namespace: field(&meta, "namespace"),
                text: serde_yaml::to_string(&value)?,
            });
        }
        Ok(out)
    }
}

/// A repository checked out at exactly one commit (the source phase's value).
#[derive(Debug, Clone, Serialize)]
pub struct Checkout {
    /// The work tree: the commit's files and nothing else.
    pub path: PathBuf,
    /// The full SHA `HEAD` was verified to be.
    pub sha: String,
    /// Where it was fetched from (no credentials).
    pub repository_url: String,
    /// Objects received by this run's fetch (0: everything was in the cache).
    pub objects_fetched: u64,
    /// Keeps the run's work tree alive: it is removed when the last clone of this value drops.
    #[serde(skip)]
    pub work_dir: Option<std::sync::Arc<tempfile::TempDir>>,
}

/// What a push moved: layers uploaded, found already present, mounted from another repository of
/// the same registry, and the bytes sent. `layers` in the JSON report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LayerStats {
    /// Layers uploaded.
    pub pushed: u32,
    /// Layers the registry already had in this repository.
    pub skipped: u32,
    /// Layers mounted from another repository of the same registry.
    pub mounted: u32,
    /// Blob bytes uploaded (layers and config).
    pub bytes_uploaded: u64,
}

/// An image pushed under its tags (the push phase's value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushedImage {
    /// Repository, registry host included (serialised as `registry/repository`).
    pub repository: ImageName,
    /// Manifest digest, as the registry reported it.
    pub digest: String,
    /// Every tag now pointing at `digest`.
    pub tags: Vec<String>,
    /// What the push moved.
    pub layers: LayerStats,
}

/// An image a build backend produced (the build phase's value).
#[derive(Debug, Clone, Serialize)]
pub struct BuiltImage {
    /// The backend that built it (`native`, `buildah`, `buildx`).
    pub backend: String,
    /// Repository it is meant for, registry host included (serialised as `registry/repository`).
    pub repository: ImageName,
    /// An OCI image layout directory holding the image, for prpod's own push; `None` when the
    /// backend pushed the image itself (buildx).
    pub layout: Option<PathBuf>,
    /// The image manifest's digest.
    pub digest: String,
    /// Build steps run and steps served from cache, when the backend says.
    pub steps: Option<BuildSteps>,
    /// Keeps `layout` alive: removed when the last clone of this value drops.
    #[serde(skip)]
    pub work_dir: Option<std::sync::Arc<tempfile::TempDir>>,
}

/// How much of a build ran and how much came from cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BuildSteps {
    /// Steps executed.
    pub executed: u32,
    /// Steps served from the layer cache.
    pub cached: u32,
}

/// A finding together with the verifier plugin that reported it (`prpod` for the host's own
/// checks), as the JSON report lists it: the finding's fields plus `plugin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedFinding {
    /// The plugin that reported it (`builtin:verify-baseline`, a file name, or `prpod`).
    pub plugin: String,
    /// Before (`check-manifests`) or after (`check-release`) the deploy.
    pub hook: String,
    /// The finding.
    #[serde(flatten)]
    pub finding: Finding,
}

/// A Helm release after a deploy (the deploy phase's value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Release name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Helm revision now current.
    pub revision: u32,
    /// Helm's status of that revision (`deployed`, ...).
    pub status: String,
    /// `name-version` of the chart.
    pub chart: String,
    /// The revision that was current before this deploy, if any.
    #[serde(default)]
    pub previous_revision: Option<u32>,
}

/// One step of the line, in the order a run walks them. Its [`Phase::name`] is what the human
/// view prints and what `phases[].name` says in the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Who and what the run is about: flags and GitHub Actions' event ([`context`](crate::phases::context)).
    Context,
    /// The tag-policy plugin's tags and release.
    Tags,
    /// Clone or fetch, then check out the exact commit ([`source`](crate::phases::source)).
    Source,
    /// Build the image ([`build`](crate::phases::build)).
    Build,
    /// Push it under every tag ([`push`](crate::phases::push)).
    Push,
    /// Generate and render the chart.
    Chart,
    /// Helm upgrade --install.
    Deploy,
    /// Rollout checks.
    Verify,
}

impl Phase {
    /// Every phase, in the order of the line.
    pub const LINE: [Phase; 8] = [
        Phase::Context,
        Phase::Tags,
        Phase::Source,
        Phase::Build,
        Phase::Push,
        Phase::Chart,
        Phase::Deploy,
        Phase::Verify,
    ];

    /// The phase's name in output (`source`, `build`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Context => "context",
            Phase::Tags => "tags",
            Phase::Source => "source",
            Phase::Build => "build",
            Phase::Push => "push",
            Phase::Chart => "chart",
            Phase::Deploy => "deploy",
            Phase::Verify => "verify",
        }
    }
}

/// How the cluster is reached: by Helm and by the kube client alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeTarget {
    /// A kubeconfig file; `None`: `$KUBECONFIG`, then `~/.kube/config`, then the in-cluster
    /// ServiceAccount (when prpod runs in a pod).
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig; `None`: its current context.
    pub context: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_and_built_images_serialise_their_repository_as_the_string_reports_always_had() {
        let name = ImageName::parse("ghcr.io/Acme/Web").unwrap().value;
        let pushed = PushedImage {
            repository: name.clone(),
            digest: "sha256:ab".into(),
            tags: vec!["pr-1".into()],
            layers: LayerStats::default(),
        };
        let json = serde_json::to_value(&pushed).unwrap();
        assert_eq!(json["repository"], "ghcr.io/acme/web");
        let built = BuiltImage {
            backend: "native".into(),
            repository: ImageName::parse("nginx").unwrap().value,
            layout: None,
            digest: "sha256:ab".into(),
            steps: None,
            work_dir: None,
        };
        assert_eq!(serde_json::to_value(&built).unwrap()["repository"], "docker.io/library/nginx");
    }

    #[test]
    fn an_image_reference_becomes_the_plugin_record_field_for_field() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let r = crate::clients::registry::ImageReference::parse(&format!("127.0.0.1:5443/Acme/Web:PR-1@{digest}"));
        let i = ImageRef::from(r.unwrap().value);
        assert_eq!(i.repository, "127.0.0.1:5443/acme/web");
        assert_eq!(i.tag.as_deref(), Some("PR-1"));
        assert_eq!(i.digest, Some(digest));
    }

    #[test]
    fn urls_with_credentials_are_found_and_redacted() {
        assert!(url_has_userinfo("https://x-access-token:ghs_abc@github.com/acme/web.git"));
        assert!(url_has_userinfo("http://user@127.0.0.1:47580/web.git"));
        assert!(!url_has_userinfo("https://github.com/acme/web.git"));
        assert!(!url_has_userinfo("https://github.com/acme/we@b.git"));
        assert!(!url_has_userinfo("git@github.com:acme/web.git"));
        assert_eq!(redact_userinfo("https://x:ghs_abc@github.com/a.git"), "https://***@github.com/a.git");
    }
}
