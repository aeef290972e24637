//! Generated bindings for the plugin worlds of every `prpod:plugin` version this host runs,
//! kept private to the plugin boundary, and the conversions between them and the host's own
//! values in [`crate::model`].
//!
//! wasmtime treats 0.1.x and 0.2.x as incompatible (as Cargo does), so each version gets its own
//! bindings: [`v0_1`] from the frozen `wit/v0.1.0/`, [`v0_2`] from `wit/`. The host has one
//! model; each version's records are converted from it (inputs) and into it (outputs) by the
//! same [`adapters!`] definitions, so a field a newer version adds is simply not passed to an
//! older plugin. Within a version, the three worlds share the `types` and `logging` interfaces;
//! generating them once (for `tag-policy`) and pointing the other worlds at that module with
//! `with:` keeps one Rust type per WIT type.

pub(crate) mod generated {
    /// `prpod:plugin@0.1.0`, frozen in `wit/v0.1.0/`.
    pub(crate) mod v0_1 {
        pub(crate) mod tag_policy {
            wasmtime::component::bindgen!({
                path: "../wit/v0.1.0",
                world: "tag-policy",
                imports: { default: trappable },
                exports: { default: async },
            });
        }
        pub(crate) mod chart_generator {
            wasmtime::component::bindgen!({
                path: "../wit/v0.1.0",
                world: "chart-generator",
                imports: { default: trappable },
                exports: { default: async },
                with: {
                    "prpod:plugin/types": crate::plugins::bindings::generated::v0_1::tag_policy::prpod::plugin::types,
                    "prpod:plugin/logging": crate::plugins::bindings::generated::v0_1::tag_policy::prpod::plugin::logging,
                },
            });
        }
        pub(crate) mod verifier {
            wasmtime::component::bindgen!({
                path: "../wit/v0.1.0",
                world: "verifier",
                imports: { default: trappable },
                exports: { default: async },
                with: {
                    "prpod:plugin/types": crate::plugins::bindings::generated::v0_1::tag_policy::prpod::plugin::types,
                    "prpod:plugin/logging": crate::plugins::bindings::generated::v0_1::tag_policy::prpod::plugin::logging,
                },
            });
        }
    }
    /// `prpod:plugin@0.2.0`, the current version, in `wit/`.
    pub(crate) mod v0_2 {
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
                    "prpod:plugin/types": crate::plugins::bindings::generated::v0_2::tag_policy::prpod::plugin::types,
                    "prpod:plugin/logging": crate::plugins::bindings::generated::v0_2::tag_policy::prpod::plugin::logging,
                    "prpod:plugin/host": crate::plugins::bindings::generated::v0_2::tag_policy::prpod::plugin::host,
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
                    "prpod:plugin/types": crate::plugins::bindings::generated::v0_2::tag_policy::prpod::plugin::types,
                    "prpod:plugin/logging": crate::plugins::bindings::generated::v0_2::tag_policy::prpod::plugin::logging,
                    "prpod:plugin/host": crate::plugins::bindings::generated::v0_2::tag_policy::prpod::plugin::host,
                },
            });
        }
    }
}

/// The conversions between the model and one version's records, expanded inside that
/// version's module (its records are in scope there). A field that a later version adds to an
/// input record is set in that version's expansion only.
macro_rules! adapters {
    () => {
        use crate::model;

        impl From<&model::Event> for Event {
            fn from(e: &model::Event) -> Self {
                match e {
                    model::Event::Opened => Event::Opened,
                    model::Event::Synchronize => Event::Synchronize,
                    model::Event::Reopened => Event::Reopened,
                    model::Event::Closed => Event::Closed,
                    model::Event::Manual => Event::Manual,
                }
            }
        }

        impl From<&model::ImageRef> for ImageRef {
            fn from(i: &model::ImageRef) -> Self {
                ImageRef { repository: i.repository.clone(), tag: i.tag.clone(), digest: i.digest.clone() }
            }
        }

        impl From<&model::TagSet> for TagSet {
            fn from(t: &model::TagSet) -> Self {
                TagSet {
                    primary: t.primary.clone(),
                    extra: t.extra.clone(),
                    cache_from: t.cache_from.clone(),
                    cache_to: t.cache_to.clone(),
                }
            }
        }

        impl From<&model::ReleaseTarget> for ReleaseTarget {
            fn from(r: &model::ReleaseTarget) -> Self {
                ReleaseTarget { name: r.name.clone(), namespace: r.namespace.clone() }
            }
        }

        impl From<&model::PrContext> for PrContext {
            fn from(c: &model::PrContext) -> Self {
                PrContext {
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
                    target: c.target.as_ref().map(|t| DeployTarget {
                        registry: t.registry.clone(),
                        image: (&t.image).into(),
                        tags: (&t.tags).into(),
                        release: (&t.release).into(),
                    }),
                }
            }
        }

        impl From<&model::AppSpec> for AppSpec {
            fn from(a: &model::AppSpec) -> Self {
                AppSpec {
                    name: a.name.clone(),
                    image: (&a.image).into(),
                    ports: a
                        .ports
                        .iter()
                        .map(|p| Port { name: p.name.clone(), container_port: p.container_port })
                        .collect(),
                    env: a.env.iter().map(|e| EnvVar { name: e.name.clone(), value: e.value.clone() }).collect(),
                    replicas: a.replicas,
                    resources: Resources {
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

        impl From<&model::Manifest> for Manifest {
            fn from(m: &model::Manifest) -> Self {
                Manifest {
                    api_version: m.api_version.clone(),
                    kind: m.kind.clone(),
                    name: m.name.clone(),
                    namespace: m.namespace.clone(),
                    text: m.text.clone(),
                }
            }
        }

        impl From<&model::ReleaseStatus> for ReleaseStatus {
            fn from(s: &model::ReleaseStatus) -> Self {
                ReleaseStatus {
                    release: (&s.release).into(),
                    workloads: s
                        .workloads
                        .iter()
                        .map(|w| WorkloadStatus {
                            kind: w.kind.clone(),
                            name: w.name.clone(),
                            desired: w.desired,
                            ready: w.ready,
                            available: w.available,
                            conditions: w
                                .conditions
                                .iter()
                                .map(|c| Condition {
                                    type_: c.type_.clone(),
                                    status: c.status.clone(),
                                    reason: c.reason.clone(),
                                    message: c.message.clone(),
                                })
                                .collect(),
                            pods: w
                                .pods
                                .iter()
                                .map(|p| PodStatus {
                                    name: p.name.clone(),
                                    phase: p.phase.clone(),
                                    containers: p
                                        .containers
                                        .iter()
                                        .map(|c| ContainerStatus {
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
                        .map(|e| WarningEvent {
                            object: e.object.clone(),
                            reason: e.reason.clone(),
                            message: e.message.clone(),
                            count: e.count,
                        })
                        .collect(),
                }
            }
        }

        impl From<Finding> for model::Finding {
            fn from(f: Finding) -> Self {
                model::Finding {
                    severity: match f.severity {
                        Severity::Info => model::Severity::Info,
                        Severity::Warning => model::Severity::Warning,
                        Severity::Error => model::Severity::Error,
                    },
                    rule: f.rule,
                    message: f.message,
                    object: f.object,
                }
            }
        }

        impl From<TagSet> for model::TagSet {
            fn from(t: TagSet) -> Self {
                model::TagSet { primary: t.primary, extra: t.extra, cache_from: t.cache_from, cache_to: t.cache_to }
            }
        }

        impl From<ReleaseTarget> for model::ReleaseTarget {
            fn from(r: ReleaseTarget) -> Self {
                model::ReleaseTarget { name: r.name, namespace: r.namespace }
            }
        }

        impl From<ChartFile> for model::ChartFile {
            fn from(f: ChartFile) -> Self {
                model::ChartFile { path: f.path, content: f.content }
            }
        }
    };
}

/// `prpod:plugin@0.1.0`: its records, world indices and `logging`.
pub(crate) mod v0_1 {
    pub(crate) use super::generated::v0_1::chart_generator::ChartGeneratorIndices;
    pub(crate) use super::generated::v0_1::tag_policy::TagPolicyIndices;
    pub(crate) use super::generated::v0_1::tag_policy::prpod::plugin::logging;
    pub(crate) use super::generated::v0_1::tag_policy::prpod::plugin::types::*;
    pub(crate) use super::generated::v0_1::verifier::VerifierIndices;
    adapters!();
}

/// `prpod:plugin@0.2.0`: its records, world indices, `logging` and `host`.
pub(crate) mod v0_2 {
    pub(crate) use super::generated::v0_2::chart_generator::ChartGeneratorIndices;
    pub(crate) use super::generated::v0_2::tag_policy::TagPolicyIndices;
    pub(crate) use super::generated::v0_2::tag_policy::prpod::plugin::host;
    pub(crate) use super::generated::v0_2::tag_policy::prpod::plugin::logging;
    pub(crate) use super::generated::v0_2::tag_policy::prpod::plugin::types::*;
    pub(crate) use super::generated::v0_2::verifier::VerifierIndices;
    adapters!();
}
