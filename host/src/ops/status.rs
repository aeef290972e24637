//! `status`: a PR's preview as it runs now — release, revision, chart, image digest, pods
//! (phase, ready, restarts, age), the preview URL; `replicas` scales its Deployment and waits for
//! the rollout. Also [`release_target`], the release a PR's preview lives in, which every command
//! that finds a preview by its PR shares.

use anyhow::Context;

use crate::clients::helm::Helm;
use crate::clients::kube::Kube;
use crate::config::{Config, Env};
use crate::error::ResultExt;
use crate::model::{PrContext, ReleaseTarget};
use crate::phases::context::ContextFlags;
use crate::phases::verify::rollout;
use crate::phases::{self, verify};
use crate::plugins::{PluginHost, World};
use crate::report::{PodLine, StatusReport, WorkloadLine};

/// What `status` is asked.
#[derive(Debug, Clone, Default)]
pub struct StatusRequest {
    /// The PR (`pr` alone is enough for the default tag-policy).
    pub context: ContextFlags,
    /// Release name, instead of asking the tag-policy (with `namespace`).
    pub release: Option<String>,
    /// Namespace, instead of asking the tag-policy (with `release`).
    pub namespace: Option<String>,
    /// Scale the release's Deployment to this many replicas and wait for it.
    pub replicas: Option<u32>,
    /// The Deployment to scale, when the release has several.
    pub deployment: Option<String>,
}

/// The release a PR's preview lives in: given, or the tag-policy's for the context (the full
/// context when flags or GitHub Actions give one; `--pr N` alone otherwise).
pub async fn release_target(
    release: Option<&str>,
    namespace: Option<&str>,
    flags: &ContextFlags,
    config: &Config,
    env: &Env,
) -> anyhow::Result<(ReleaseTarget, Option<PrContext>)> {
    if let (Some(r), Some(n)) = (release, namespace) {
        return Ok((ReleaseTarget { name: r.into(), namespace: n.into() }, None));
    }
    let ctx = match phases::context::resolve(flags, &config.source, env) {
        Ok(c) => c,
        Err(e) => {
            let n =
                flags.pr.with_context(|| format!("no PR context ({e}); pass --pr N, or --release and --namespace"))?;
            // The default names include the repository: find it as the context would.
            let url = flags
                .repo_url
                .clone()
                .or_else(|| env.get("PRPOD_SOURCE_URL").map(str::to_string))
                .or_else(|| config.source.url.clone());
            let repository = env
                .get("GITHUB_REPOSITORY")
                .map(str::to_string)
                .or_else(|| url.as_deref().map(phases::context::slug_from_url))
                .filter(|r| !r.is_empty())
                .with_context(|| {
                    format!(
                        "no repository for PR #{n}: the preview's names include it; pass --repo-url URL (or set \
                         `[source] url`), or --release and --namespace"
                    )
                })?;
            PrContext {
                branch: flags.branch.clone().unwrap_or_default(),
                base_branch: flags.base.clone(),
                sha: flags.sha.clone().unwrap_or_default(),
                ..PrContext::manual(url.unwrap_or_default(), repository, Some(n))
            }
        }
    };
    let plugin = PluginHost::shared()?
        .load(&config.plugin_ref(World::TagPolicy))?
        .with_limits(config.limits_for(World::TagPolicy));
    Ok((plugin.release(&ctx).await?, Some(ctx)))
}

/// `prpod status`: the preview as it runs now; with `replicas`, its Deployment scaled first and
/// waited for.
pub async fn status(config: &Config, req: StatusRequest, env: &Env) -> anyhow::Result<StatusReport> {
    let (release, _) =
        release_target(req.release.as_deref(), req.namespace.as_deref(), &req.context, config, env).await?;
    let target = config.deploy.kube_target();
    let (helm, kube) = tokio::try_join!(
        async {
            Helm::detect(&config.deploy.helm, target.clone(), crate::config::cache_dir())
                .await
                .outside_line()
                .map_err(anyhow::Error::from)
        },
        async { Kube::connect(&target).await.outside_line().map_err(anyhow::Error::from) },
    )?;
    let current = helm.status(&release.name, &release.namespace).await.outside_line()?.with_context(|| {
        format!(
            "there is no release {} in namespace {} (nothing deployed for this PR yet?)",
            release.name, release.namespace
        )
    })?;
    let mut report = StatusReport {
        release: Some(release.clone()),
        revision: Some(current.revision),
        status: Some(current.status.clone()),
        chart: Some(current.chart.clone()),
        ..StatusReport::default()
    };

    if let Some(n) = req.replicas {
        let snap = verify::snapshot(&kube, &release).await.outside_line()?;
        let deployments: Vec<_> = snap.workloads.iter().filter(|w| w.kind == "Deployment").collect();
        let name = match (&req.deployment, deployments.as_slice()) {
            (Some(d), _) => d.clone(),
            (None, [one]) => one.name.clone(),
            (None, []) => anyhow::bail!("release {} has no Deployment to scale", release.name),
            (None, many) => anyhow::bail!(
                "release {} has {} Deployments ({}): name one with --deployment",
                release.name,
                many.len(),
                many.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        };
        let mut watch = rollout::RolloutWatch::start(&kube, &release.namespace).await.outside_line()?;
        kube.scale_deployment(&release.namespace, &name, n).await.outside_line()?;
        let scaled = |s: &verify::Snapshot| s.workloads.iter().any(|w| w.name == name && w.desired == n);
        let settled =
            verify::settle_when(&mut watch, &release, config.deploy.timeout, config.deploy.crash_restarts, scaled)
                .await
                .outside_line()?;
        let ok = settled.settled
            && settled.snapshot.workloads.iter().any(|w| w.name == name && w.desired == n && w.available >= n);
        if !ok || !settled.failures.is_empty() {
            // The cluster did not do what it was asked: an external failure (exit 4), with what
            // the pods said.
            return Err(anyhow::Error::new(crate::error::FailureKind::External).context(format!(
                "Deployment {name} did not reach {n} available replicas within {}s ({} available){}; \
                 see `kubectl get pods -n {}`",
                config.deploy.timeout.as_secs(),
                settled.snapshot.workloads.iter().find(|w| w.name == name).map_or(0, |w| w.available),
                settled.failures.iter().map(|f| format!("\n  {f}")).collect::<String>(),
                release.namespace
            )));
        }
        report.scaled =
            Some(format!("Deployment {name} to {n} replicas (until the next deploy, which applies the chart's count)"));
    }

    let snap = verify::snapshot(&kube, &release).await.outside_line()?;
    report.images = snap.workloads.iter().flat_map(|w| w.images.clone()).collect();
    report.images.dedup();
    report.image_digests = verify::digests(&snap);
    report.workloads = snap
        .workloads
        .iter()
        .map(|w| WorkloadLine {
            kind: w.kind.clone(),
            name: w.name.clone(),
            desired: w.desired,
            ready: w.ready,
            available: w.available,
        })
        .collect();
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut pods: Vec<PodLine> = snap
        .workloads
        .iter()
        .flat_map(|w| snap.pods_of(w))
        .map(|p| PodLine {
            name: p.name.clone(),
            phase: p.phase.clone(),
            ready: p.containers.iter().filter(|c| c.ready).count() as u32,
            containers: p.containers.len() as u32,
            restarts: p.containers.iter().map(|c| c.restart_count).sum(),
            age_seconds: p.created.map(|c| now.duration_since(c).as_secs().max(0) as u64),
            waiting: p.containers.iter().find_map(|c| c.waiting_reason.clone()),
        })
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods.dedup_by(|a, b| a.name == b.name);
    report.pods = pods;
    report.preview_url = verify::preview_url(&kube, &release).await.outside_line()?;
    if let Some(v) = kube.namespace_view(&release.namespace).await.outside_line()? {
        report.lifecycle =
            Some(crate::phases::lifecycle::status_of(&v.labels, &v.annotations, v.created, &config.lifecycle));
    }
    Ok(report)
}
