//! Generated bindings for the three plugin worlds, kept private to the plugin boundary, and the
//! conversions between them and the host's own values in [`crate::model`].
//!
//! The three worlds share the `types` and `logging` interfaces; generating them once (for
//! `tag-policy`) and pointing the other worlds at that module with `with:` keeps one Rust type
//! per WIT type.

use crate::model;

pub(crate) mod generated {
    pub(crate) mod tag_policy {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "tag-policy",
            imports: { default: trappable },
            exports: { default: async },
        });
    }
    pub(crate) mod chart_generator {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "chart-generator",
            imports: { default: trappable },
            exports: { default: async },
            with: {
                "prpod:plugin/types": crate::plugins::bindings::generated::tag_policy::prpod::plugin::types,
                "prpod:plugin/logging": crate::plugins::bindings::generated::tag_policy::prpod::plugin::logging,
            },
        });
    }
    pub(crate) mod verifier {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "verifier",
            imports: { default: trappable },
            exports: { default: async },
            with: {
                "prpod:plugin/types": crate::plugins::bindings::generated::tag_policy::prpod::plugin::types,
                "prpod:plugin/logging": crate::plugins::bindings::generated::tag_policy::prpod::plugin::logging,
            },
        });
    }
}

pub(crate) use generated::chart_generator::ChartGeneratorIndices;
pub(crate) use generated::tag_policy::TagPolicyIndices;
pub(crate) use generated::tag_policy::prpod::plugin::logging;
pub(crate) use generated::tag_policy::prpod::plugin::types as wit;
pub(crate) use generated::verifier::VerifierIndices;

impl From<&model::Event> for wit::Event {
    fn from(e: &model::Event) -> Self {
        match e {
            model::Event::Opened => wit::Event::Opened,
            model::Event::Synchronize => wit::Event::Synchronize,
            model::Event::Reopened => wit::Event::Reopened,
            model::Event::Closed => wit::Event::Closed,
            model::Event::Manual => wit::Event::Manual,
        }
    }
}

impl From<&model::ImageRef> for wit::ImageRef {
    fn from(i: &model::ImageRef) -> Self {
        wit::ImageRef { repository: i.repository.clone(), tag: i.tag.clone(), digest: i.digest.clone() }
    }
}

impl From<&model::TagSet> for wit::TagSet {
    fn from(t: &model::TagSet) -> Self {
        wit::TagSet {
            primary: t.primary.clone(),
            extra: t.extra.clone(),
            cache_from: t.cache_from.clone(),
            cache_to: t.cache_to.clone(),
        }
    }
}

impl From<&model::ReleaseTarget> for wit::ReleaseTarget {
    fn from(r: &model::ReleaseTarget) -> Self {
        wit::ReleaseTarget { name: r.name.clone(), namespace: r.namespace.clone() }
    }
}

impl From<&model::PrContext> for wit::PrContext {
    fn from(c: &model::PrContext) -> Self {
        wit::PrContext {
            repository_url: c.repository_url.clone(),
            repository: c.repository.clone(),
            number: c.number,
            branch: c.branch.clone(),
            base_branch: c.base_branch.clone(),
            sha: c.sha.clone(),
            event: (&c.event).into(),
            labels: c.labels.clone(),
            author: c.author.clone(),
            draft: c.draft,
            fork: c.fork,
            target: c.target.as_ref().map(|t| wit::DeployTarget {
                registry: t.registry.clone(),
                image: (&t.image).into(),
                tags: (&t.tags).into(),
                release: (&t.release).into(),
            }),
        }
    }
}

impl From<&model::AppSpec> for wit::AppSpec {
    fn from(a: &model::AppSpec) -> Self {
        wit::AppSpec {
            name: a.name.clone(),
            image: (&a.image).into(),
            ports: a
                .ports
                .iter()
                .map(|p| wit::Port { name: p.name.clone(), container_port: p.container_port })
                .collect(),
            env: a.env.iter().map(|e| wit::EnvVar { name: e.name.clone(), value: e.value.clone() }).collect(),
            replicas: a.replicas,
            resources: wit::Resources {
                cpu_request: a.resources.cpu_request.clone(),
                memory_request: a.resources.memory_request.clone(),
                cpu_limit: a.resources.cpu_limit.clone(),
                memory_limit: a.resources.memory_limit.clone(),
            },
            health_path: a.health_path.clone(),
            ingress_host: a.ingress_host.clone(),
        }
    }
}

impl From<&model::Manifest> for wit::Manifest {
    fn from(m: &model::Manifest) -> Self {
        wit::Manifest {
            api_version: m.api_version.clone(),
            kind: m.kind.clone(),
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            text: m.text.clone(),
        }
    }
}

impl From<&model::ReleaseStatus> for wit::ReleaseStatus {
    fn from(s: &model::ReleaseStatus) -> Self {
        wit::ReleaseStatus {
            release: (&s.release).into(),
            workloads: s
                .workloads
                .iter()
                .map(|w| wit::WorkloadStatus {
                    kind: w.kind.clone(),
                    name: w.name.clone(),
                    desired: w.desired,
                    ready: w.ready,
                    available: w.available,
                    conditions: w
                        .conditions
                        .iter()
                        .map(|c| wit::Condition {
                            type_: c.type_.clone(),
                            status: c.status.clone(),
                            reason: c.reason.clone(),
                            message: c.message.clone(),
                        })
                        .collect(),
                    pods: w
                        .pods
                        .iter()
                        .map(|p| wit::PodStatus {
                            name: p.name.clone(),
                            phase: p.phase.clone(),
                            containers: p
                                .containers
                                .iter()
                                .map(|c| wit::ContainerStatus {
                                    name: c.name.clone(),
                                    ready: c.ready,
                                    restart_count: c.restart_count,
                                    waiting_reason: c.waiting_reason.clone(),
                                    waiting_message: c.waiting_message.clone(),
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            warnings: s
                .warnings
                .iter()
                .map(|e| wit::WarningEvent {
                    object: e.object.clone(),
                    reason: e.reason.clone(),
                    message: e.message.clone(),
                    count: e.count,
                })
                .collect(),
        }
    }
}

impl From<wit::Finding> for model::Finding {
    fn from(f: wit::Finding) -> Self {
        model::Finding {
            severity: match f.severity {
                wit::Severity::Info => model::Severity::Info,
                wit::Severity::Warning => model::Severity::Warning,
                wit::Severity::Error => model::Severity::Error,
            },
            rule: f.rule,
            message: f.message,
            object: f.object,
        }
    }
}
