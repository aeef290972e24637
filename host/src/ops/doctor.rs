//! `doctor`: would a run work here? Tools and their versions, the registry (reachable, and the
//! credentials may push: a push-scope request on the repository), the cluster (reachable, its
//! version) and every right a deploy needs in the target namespace (SelfSubjectAccessReview,
//! from the one list the run follows: [`kube::run_rights`]). Each failure says how to fix it.

use futures::future::join_all;

use super::status::release_target;
use crate::clients::child_env::{self, Tool};
use crate::clients::helm::{Helm, HelmMajor};
use crate::clients::kube::{self, Kube};
use crate::clients::registry::{Credentials, ImageName, RegistryClient};
use crate::config::{Config, Env};
use crate::phases::context::ContextFlags;
use crate::phases::{self};
use crate::report::{Check, CheckStatus, DoctorReport};

/// What `doctor` is asked.
#[derive(Debug, Clone, Default)]
pub struct DoctorRequest {
    /// The PR whose namespace the rights are checked in (`pr` is enough).
    pub context: ContextFlags,
    /// Check rights in this namespace instead of the tag-policy's.
    pub namespace: Option<String>,
}

fn ok(name: &str, detail: impl Into<String>) -> Check {
    Check { name: name.into(), status: CheckStatus::Ok, detail: detail.into(), fix: None }
}
fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name: name.into(), status: CheckStatus::Fail, detail: detail.into(), fix: Some(fix.into()) }
}
fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name: name.into(), status: CheckStatus::Warn, detail: detail.into(), fix: Some(fix.into()) }
}

/// The first line `cmd args` prints, or why it could not run. Like every child, it sees only
/// `tool`'s allow-listed environment.
async fn version_of(cmd: &str, args: &[&str], tool: Tool) -> Result<String, String> {
    let mut c = tokio::process::Command::new(cmd);
    c.args(args).env_clear().envs(child_env::allowed(tool));
    child_env::first_line(c).await
}

/// `prpod doctor`: every check, each failure with its fix.
pub async fn doctor(config: &Config, req: DoctorRequest, env: &Env) -> DoctorReport {
    let mut checks = Vec::new();

    // --- tools ---------------------------------------------------------------------------
    match version_of("git", &["--version"], Tool::Git).await {
        Ok(v) => checks.push(ok("git", v)),
        Err(e) => checks.push(fail("git", format!("not usable: {e}"), "install git (apt-get install git)")),
    }
    let target = config.deploy.kube_target();
    // (which Helm runs decides some of the rights a deploy needs; unknown: those of both)
    let mut helm_major = None;
    match Helm::detect(&config.deploy.helm, target.clone(), crate::config::cache_dir()).await {
        Ok(h) => {
            helm_major = Some(match h.major() {
                HelmMajor::V4 => 4,
                HelmMajor::V3 => 3,
            });
            let how = match h.major() {
                HelmMajor::V4 => "Helm 4: --rollback-on-failure, server-side apply",
                HelmMajor::V3 => "Helm 3: --atomic",
            };
            checks.push(ok("helm", format!("{} {} ({how})", h.binary().display(), h.version())));
        }
        Err(e) => checks.push(fail(
            "helm",
            e.to_string(),
            "install Helm 3.x or 4.x (https://helm.sh/docs/intro/install/) or set `[deploy] helm` / PRPOD_HELM",
        )),
    }
    for b in crate::phases::build::BACKENDS {
        checks.extend(b.doctor_checks(config.build.backend.is(*b)).await);
    }

    // --- registry ------------------------------------------------------------------------
    match &config.image.repository {
        None => checks.push(fail(
            "registry",
            "no image repository configured",
            "set `[image] repository` in prpod.toml (e.g. ghcr.io/acme/web), PRPOD_IMAGE, or pass --image",
        )),
        Some(repo) => checks.extend(registry_checks(config, repo).await),
    }

    // --- cluster and rights --------------------------------------------------------------
    match Kube::connect(&target).await {
        Err(e) => checks.push(fail(
            "cluster",
            e.to_string(),
            "point KUBECONFIG / --kubeconfig / --kube-context at the cluster",
        )),
        Ok(kube) => match kube.server_version().await {
            Err(e) => {
                checks.push(fail("cluster", e.to_string(), "check the kubeconfig's server, certificate and token"))
            }
            Ok(v) => {
                checks.push(ok("cluster", format!("{} answers, Kubernetes {v}", kube.server())));
                let namespace = match &req.namespace {
                    Some(n) => Ok(n.clone()),
                    None => release_target(None, None, &req.context, config, env).await.map(|(r, _)| r.namespace),
                };
                match namespace {
                    Err(e) => checks.push(fail(
                        "rbac",
                        format!("no target namespace: {e}"),
                        "pass --pr N (the tag-policy names the namespace) or --namespace NS",
                    )),
                    Ok(ns) => {
                        checks.extend(rbac_checks(&kube, &ns, config.app.ingress_host.is_some(), helm_major).await)
                    }
                }
            }
        },
    }

    // --- GitHub -----------------------------------------------------------------------------
    checks.extend(crate::phases::github::doctor_checks(config, env).await);

    let ok = checks.iter().all(|c| c.status != CheckStatus::Fail);
    DoctorReport { checks, ok }
}

async fn registry_checks(config: &Config, repo: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let name = match ImageName::parse(repo) {
        Ok(n) => n.value,
        Err(e) => return vec![fail("registry", e.to_string(), "fix `[image] repository`")],
    };
    let host = name.api_host().to_string();
    let registry = phases::registry_config(config);
    let resolver = match registry.credentials(&host, None) {
        Ok(r) => r,
        Err(e) => return vec![fail("registry credentials", e.to_string(), "see the README's registry credentials")],
    };
    let resolved = resolver.resolve(&host).await;
    if let Ok(r) = &resolved
        && let Credentials::Basic { password, .. } = &r.credentials
        && host == "ghcr.io"
        && password.expose().starts_with("github_pat_")
    {
        out.push(warn(
            "ghcr token",
            "the token looks like a fine-grained personal access token (github_pat_…), which GHCR has not accepted for pushes",
            "use a classic PAT with write:packages, or a GitHub App / GITHUB_TOKEN with `packages: write`",
        ));
    }
    let source = resolved.as_ref().map(|r| r.source.clone()).unwrap_or_default();
    let client = match registry.options().and_then(|o| RegistryClient::new(o, resolver.clone())) {
        Ok(c) => c,
        Err(e) => return vec![fail("registry", e.to_string(), "fix `[registry]`")],
    };
    match client.check_push_access(&name).await {
        Ok(()) => out.push(ok("registry push access", format!("{repo}: may push (credentials {source})"))),
        Err(e) => out.push(fail(
            "registry push access",
            e.to_string(),
            "give prpod credentials that may push there: PRPOD_REGISTRY_USER + PRPOD_REGISTRY_PASSWORD, \
             --registry-password-stdin, or a docker config.json",
        )),
    }
    out.extend(pull_secret_checks(&registry, &resolver, &name).await);
    out
}

/// The pull Secret a run would write: whether there is one, whether its credential outlives the
/// job, and whether it can read the repository (with those credentials alone). Without one, the
/// registry must let the cluster pull anonymously.
async fn pull_secret_checks(
    registry: &crate::phases::registry::RegistryConfig,
    resolver: &crate::clients::registry::CredentialResolver,
    name: &ImageName,
) -> Vec<Check> {
    use crate::clients::registry::CredentialResolver;
    const NAME: &str = "registry pull secret";
    const FIX: &str = "give prpod read-only pull credentials: `registry.pull_username` + PRPOD_REGISTRY_PULL_PASSWORD \
                       (or `pull_password_file`)";
    let host = name.api_host();
    let mut out = Vec::new();
    let pull_resolver = match resolver.pull_only(host).await {
        Err(e) => return vec![fail(NAME, e.to_string(), FIX)],
        Ok(None) => {
            // No pull Secret: fine when the registry serves the image without credentials.
            let anonymous = registry.options().and_then(|o| RegistryClient::new(o, CredentialResolver::anonymous()));
            let verdict = match anonymous {
                Ok(c) => c.check_pull_access(name).await,
                Err(e) => Err(e),
            };
            return vec![match verdict {
                Ok(()) => ok(NAME, format!("none (no pull credentials given); {name} can be pulled without")),
                Err(e) => warn(
                    NAME,
                    format!("none (no pull credentials given), and {name} cannot be pulled without: {e}"),
                    FIX,
                ),
            }];
        }
        Ok(Some(r)) => r,
    };
    if let Ok(Some(p)) = resolver.pull_secret(host).await
        && let Some(why) = &p.short_lived
    {
        out.push(warn(
            "registry pull secret lifetime",
            format!("the pull Secret's credential looks short-lived: {why}; pods rescheduled later cannot pull"),
            FIX,
        ));
    }
    let client = match registry.options().and_then(|o| RegistryClient::new(o, pull_resolver)) {
        Ok(c) => c,
        Err(e) => return vec![fail(NAME, e.to_string(), "fix `[registry]`")],
    };
    out.push(match client.check_pull_access(name).await {
        Ok(()) => ok(NAME, format!("its credentials may pull from {name}")),
        Err(e) => fail(NAME, format!("its credentials cannot pull from {name}: {e}"), FIX),
    });
    out
}

/// Asks the cluster for every right a deploy into `ns` needs — the rows of the one list the run
/// follows ([`kube::run_rights`]), no more and no fewer — one SelfSubjectAccessReview each.
async fn rbac_checks(kube: &Kube, ns: &str, ingress: bool, helm_major: Option<u8>) -> Vec<Check> {
    let exists = match kube.namespace_labels(ns).await {
        Ok(labels) => labels.is_some(),
        // (not allowed to read it: that is the first missing right below; a run would create it)
        Err(_) => false,
    };
    let list = kube::run_rights(exists, ingress, helm_major);
    let answers = join_all(list.iter().map(|r| {
        if r.resource == "namespaces" {
            kube.can_i(None, r.verb, r.group, r.resource, r.subresource, Some(ns))
        } else {
            kube.can_i(Some(ns), r.verb, r.group, r.resource, r.subresource, None)
        }
    }))
    .await;
    let mut missing: Vec<&kube::ApiRight> = Vec::new();
    for (r, a) in list.iter().zip(answers) {
        match a {
            Ok(a) if a.allowed => {}
            Ok(_) => missing.push(r),
            Err(e) => {
                return vec![fail(
                    "rbac",
                    e.to_string(),
                    "prpod needs to create SelfSubjectAccessReviews (every identity may by default); check the \
                     cluster's authorization",
                )];
            }
        }
    }
    if missing.is_empty() {
        return vec![ok("rbac", format!("every right a deploy needs in namespace {ns} ({} checked)", list.len()))];
    }
    let named: Vec<String> = missing
        .iter()
        .map(|r| {
            if r.resource == "namespaces" {
                format!("{} namespaces/{ns}", r.verb)
            } else {
                format!("{} {}", r.verb, r.resource_name())
            }
        })
        .collect();
    let mut whys: Vec<&str> = Vec::new();
    for r in &missing {
        if !whys.contains(&r.why) {
            whys.push(r.why);
        }
    }
    vec![fail(
        "rbac",
        format!("missing in namespace {ns}: {} (needed for: {})", named.join(", "), whys.join("; ")),
        format!(
            "bind prpod's identity to a Role in {ns} with these rules (namespaces need a ClusterRole): {}",
            role_rules(&missing)
        ),
    )]
}

/// The rights as RBAC rules, one per API group and resource: `{apiGroups: ["apps"], resources:
/// ["deployments"], verbs: ["get", "list"]}`.
fn role_rules(rights: &[&kube::ApiRight]) -> String {
    let mut rules: Vec<(&str, String, Vec<&str>)> = Vec::new();
    for r in rights {
        let resource = match r.subresource {
            Some(s) => format!("{}/{s}", r.resource),
            None => r.resource.to_string(),
        };
        match rules.iter_mut().find(|(g, res, _)| *g == r.group && *res == resource) {
            Some((_, _, verbs)) => verbs.push(r.verb),
            None => rules.push((r.group, resource, vec![r.verb])),
        }
    }
    let rules: Vec<String> = rules
        .iter()
        .map(|(g, res, verbs)| {
            format!("{{apiGroups: [\"{g}\"], resources: [\"{res}\"], verbs: [\"{}\"]}}", verbs.join("\", \""))
        })
        .collect();
    format!("[{}]", rules.join(", "))
}
