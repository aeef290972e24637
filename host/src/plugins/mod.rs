//! The plugin boundary: everything prpod does with WebAssembly happens in this module.
//!
//! One wasmtime [`Engine`] per process (with an epoch ticker thread for deadlines), components
//! compiled once and cached on disk ([`cache`]), a pre-instantiated component
//! (`InstancePre`) per world reused for every
//! call, and a fresh, deny-by-default store per call ([`sandbox`]). Every output is validated
//! ([`validate`]) before the rest of prpod sees it.

mod bindings;
mod cache;
pub mod reference;
pub mod sandbox;
pub mod validate;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use crate::model::{AppSpec, ChartFile, Finding, Manifest, PrContext, ReleaseStatus, ReleaseTarget, TagSet};
use bindings::{ChartGeneratorPre, TagPolicyPre, VerifierPre, wit};
pub use reference::PluginRef;
use sandbox::StoreState;
pub use sandbox::{LimitKind, Limits};

/// The worlds of `prpod:plugin` a component can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `tag-policy`: image tags and release name.
    TagPolicy,
    /// `chart-generator`: the Helm chart.
    ChartGenerator,
    /// `verifier`: checks before and after deploy.
    Verifier,
}

impl World {
    /// All worlds, in the order prpod calls them.
    pub const ALL: [World; 3] = [World::TagPolicy, World::ChartGenerator, World::Verifier];

    /// The world's WIT name.
    pub fn name(&self) -> &'static str {
        match self {
            World::TagPolicy => "tag-policy",
            World::ChartGenerator => "chart-generator",
            World::Verifier => "verifier",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong loading or calling a plugin. Each message names the plugin, the
/// hook and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The reference string could not be parsed.
    #[error("invalid plugin reference `{reference}`: {why}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        why: String,
    },
    /// `builtin:<name>` names no builtin.
    #[error("unknown builtin plugin `builtin:{name}`; the builtins are {known}")]
    UnknownBuiltin {
        /// The name asked for.
        name: String,
        /// The builtins that exist.
        known: String,
    },
    /// The plugin file could not be read.
    #[error("failed to read plugin {reference}: {source}")]
    Read {
        /// The reference.
        reference: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's digest differs from the pinned one.
    #[error(
        "plugin {reference} has sha256:{actual}, not the pinned sha256:{expected}; refusing to load it \
         (if the new file is the one you trust, update the pin)"
    )]
    DigestMismatch {
        /// The reference, with its pin.
        reference: String,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The bytes are not a usable component.
    #[error("plugin {plugin} is not a usable WebAssembly component: {why}")]
    NotAComponent {
        /// The plugin.
        plugin: String,
        /// Why.
        why: String,
    },
    /// The component does not implement a world it was asked for.
    #[error("plugin {plugin} does not implement the `{world}` world: {why}")]
    WrongWorld {
        /// The plugin.
        plugin: String,
        /// The world asked for.
        world: World,
        /// Why it does not fit.
        why: String,
    },
    /// A limit ended the call.
    #[error(
        "plugin {plugin} hook {hook} exceeded its {limit} and was stopped; if it legitimately needs more, \
         raise `{key}` under [plugins.<world>.limits] in prpod.toml",
        key = limit.config_key()
    )]
    Limit {
        /// The plugin.
        plugin: String,
        /// The hook (exported function) called.
        hook: &'static str,
        /// The limit.
        limit: LimitKind,
    },
    /// The call trapped (a panic, `unreachable`, out-of-bounds access, ...).
    #[error("plugin {plugin} hook {hook} crashed: {message}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// The hook.
        hook: &'static str,
        /// The trap and whatever the plugin wrote to stderr before it.
        message: String,
    },
    /// The plugin returned `err(...)`.
    #[error("plugin {plugin} hook {hook} failed: {message}")]
    Returned {
        /// The plugin.
        plugin: String,
        /// The hook.
        hook: &'static str,
        /// The plugin's own message.
        message: String,
    },
    /// The plugin returned a value the host refuses.
    #[error("plugin {plugin} hook {hook} returned an invalid {what} {value:?}: {rule}")]
    InvalidOutput {
        /// The plugin.
        plugin: String,
        /// The hook.
        hook: &'static str,
        /// What kind of value (tag, release name, namespace, chart path...).
        what: &'static str,
        /// The offending value.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The engine itself failed (a bug or a broken installation, not the plugin's fault).
    #[error("the WebAssembly engine failed: {0}")]
    Engine(String),
}

/// How often the epoch ticks; deadlines are accurate to about this much.
const TICK: Duration = Duration::from_millis(10);

/// The process's one engine, with its epoch ticker thread.
fn engine() -> Result<&'static Engine, PluginError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.wasm_component_model(true);
            config.epoch_interruption(true);
            // A pool of pre-reserved instance slots makes each call's instantiation a matter of
            // microseconds (copy-on-write memory images, no mmap/munmap per call). If this
            // machine cannot reserve the pool's address space, fall back to on-demand.
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config()));
            let engine = match Engine::new(&config) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("pooling allocator unavailable ({e}); allocating plugin instances on demand");
                    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                    Engine::new(&config).map_err(|e| e.to_string())?
                }
            };
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("prpod-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(TICK);
                        ticker.increment_epoch();
                    }
                })
                .map_err(|e| format!("failed to start the epoch thread: {e}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(|e| PluginError::Engine(e.clone()))
}

/// Slots for plugin instances alive at the same time (each call holds one until it returns).
const POOL_INSTANCES: u32 = 64;

fn pooling_config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_INSTANCES);
    // A Rust wasip2 component is a handful of core instances (the program plus adapter shims).
    pool.total_core_instances(POOL_INSTANCES * 8);
    pool.total_memories(POOL_INSTANCES * 2);
    pool.total_tables(POOL_INSTANCES * 8);
    // The per-call memory limit is enforced by the store's limiter; the pool only has to be
    // able to hold the largest limit prpod.toml accepts (4096 MiB).
    pool.max_memory_size(4096 << 20);
    pool.max_memories_per_component(4);
    pool.max_tables_per_component(16);
    // A call touches a few dozen pages (stack, heap). Returning them with madvise costs a TLB
    // shootdown per call, which dominated the call's cost in profiles; instead keep up to
    // 4 MiB resident and reset only the touched pages (PAGEMAP_SCAN, Linux >= 6.7, when
    // available; memset of the low addresses otherwise), and batch what must be decommitted.
    pool.linear_memory_keep_resident(4 << 20);
    pool.table_keep_resident(64 << 10);
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    pool.decommit_batch_size(16);
    pool
}

/// Loads plugins. Cheap to clone; all hosts in a process share one engine.
#[derive(Clone)]
pub struct PluginHost {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
    cache: cache::ComponentCache,
}

impl PluginHost {
    /// A host using the process's engine and the on-disk cache named by `PRPOD_CACHE_DIR`
    /// (default `~/.cache/prpod`; `off` disables it).
    pub fn new() -> Result<PluginHost, PluginError> {
        let engine = engine()?.clone();
        let mut linker = Linker::new(&engine);
        // All of WASI p2 is linked so components built by ordinary toolchains (which import
        // wasi:cli, wasi:filesystem, wasi:sockets...) instantiate; the per-call context then
        // grants none of it.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PluginError::Engine(e.to_string()))?;
        bindings::logging::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        Ok(PluginHost { engine, linker: Arc::new(linker), cache: cache::ComponentCache::from_env() })
    }

    /// Reads, verifies, compiles (or loads from cache) and pre-instantiates a plugin.
    pub fn load(&self, reference: &PluginRef) -> Result<Plugin, PluginError> {
        let (bytes, sha256) = reference.read()?;
        let name: Arc<str> = reference.display_name().into();
        let not_component = |why: String| PluginError::NotAComponent { plugin: name.to_string(), why };
        check_component_header(&bytes).map_err(not_component)?;
        let component =
            self.cache.load_or_compile(&self.engine, &bytes, &sha256).map_err(|e| not_component(format!("{e}")))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            not_component(format!(
                "{e}; prpod grants plugins only WASI 0.2 (with every capability denied) and \
                 prpod:plugin/logging"
            ))
        })?;
        Ok(Plugin {
            name,
            reference: reference.clone(),
            sha256,
            limits: Limits::default(),
            tag_policy: TagPolicyPre::new(pre.clone()).map_err(|e| format!("{e}")),
            chart_generator: ChartGeneratorPre::new(pre.clone()).map_err(|e| format!("{e}")),
            verifier: VerifierPre::new(pre).map_err(|e| format!("{e}")),
            engine: self.engine.clone(),
        })
    }
}

/// Tells a core module (or something that is not WebAssembly at all) from a component before
/// wasmtime's parser gives a less direct message.
fn check_component_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err("the file is not WebAssembly (no `\\0asm` header)".into());
    }
    // Bytes 4..8: version and layer. Layer 0 is a core module, layer 1 a component.
    if bytes[6..8] == [0, 0] {
        return Err("it is a core WebAssembly module, not a component; build it for the \
                    wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
            .into());
    }
    Ok(())
}

/// A loaded plugin, ready to be called any number of times (each call gets a fresh instance).
pub struct Plugin {
    name: Arc<str>,
    reference: PluginRef,
    sha256: String,
    limits: Limits,
    tag_policy: Result<TagPolicyPre<StoreState>, String>,
    chart_generator: Result<ChartGeneratorPre<StoreState>, String>,
    verifier: Result<VerifierPre<StoreState>, String>,
    engine: Engine,
}

impl Plugin {
    /// The plugin's short name (`builtin:<name>` or its file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it was loaded from.
    pub fn reference(&self) -> &PluginRef {
        &self.reference
    }

    /// sha256 of its bytes, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Its per-call limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Replaces its per-call limits.
    pub fn with_limits(mut self, limits: Limits) -> Plugin {
        self.limits = limits;
        self
    }

    /// The worlds it implements.
    pub fn worlds(&self) -> Vec<World> {
        World::ALL.into_iter().filter(|w| self.world_error(*w).is_none()).collect()
    }

    /// Why it does not implement `world`, or `None` when it does.
    pub fn world_error(&self, world: World) -> Option<String> {
        match world {
            World::TagPolicy => self.tag_policy.as_ref().err().cloned(),
            World::ChartGenerator => self.chart_generator.as_ref().err().cloned(),
            World::Verifier => self.verifier.as_ref().err().cloned(),
        }
    }

    fn pre<'a, P>(&self, world: World, pre: &'a Result<P, String>) -> Result<&'a P, PluginError> {
        pre.as_ref().map_err(|why| PluginError::WrongWorld { plugin: self.name.to_string(), world, why: why.clone() })
    }

    /// Runs one hook in a fresh store under this plugin's limits, and turns every way it can
    /// fail into a [`PluginError`] naming the plugin and the hook.
    fn call<R>(
        &self,
        hook: &'static str,
        f: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<Result<R, String>>,
        size_of: impl FnOnce(&R) -> u64,
    ) -> Result<R, PluginError> {
        let mut store = Store::new(&self.engine, StoreState::new(self.name.clone(), &self.limits));
        store.limiter(|s| s);
        // One tick more than the deadline divided by the tick: the ticker may be about to tick
        // when the call starts, and a plugin must never be stopped before its deadline.
        let ticks = self.limits.deadline().as_millis().div_ceil(TICK.as_millis()) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let result = f(&mut store);
        let state = store.data();
        let plugin = self.name.to_string();
        let limit = |limit| PluginError::Limit { plugin: plugin.clone(), hook, limit };
        match result {
            Ok(Ok(value)) => {
                if !state.output.charge(size_of(&value)) {
                    return Err(limit(LimitKind::Output(self.limits.output_bytes())));
                }
                Ok(value)
            }
            Ok(Err(message)) => Err(PluginError::Returned { plugin, hook, message }),
            Err(e) => {
                if state.memory_exceeded {
                    return Err(limit(LimitKind::Memory(self.limits.memory_bytes())));
                }
                if state.output.exceeded() {
                    return Err(limit(LimitKind::Output(self.limits.output_bytes())));
                }
                let trap = e.downcast_ref::<Trap>();
                if trap == Some(&Trap::Interrupt) {
                    return Err(limit(LimitKind::Deadline(self.limits.deadline())));
                }
                let mut message = match trap {
                    Some(t) => t.to_string(),
                    None => e.to_string().lines().next().unwrap_or_default().to_string(),
                };
                let stderr = state.output.stderr_tail();
                if !stderr.is_empty() {
                    message.push_str("; the plugin's last words on stderr: ");
                    message.push_str(&stderr);
                }
                Err(PluginError::Trap { plugin, hook, message })
            }
        }
    }

    fn invalid(&self, hook: &'static str, what: &'static str, value: &str, rule: &'static str) -> PluginError {
        PluginError::InvalidOutput { plugin: self.name.to_string(), hook, what, value: value.to_string(), rule }
    }

    /// `tag-policy.compute-tags`: the tags for an image built for `ctx`. Every tag is checked
    /// against the OCI tag grammar.
    pub fn compute_tags(&self, ctx: &PrContext, image_repository: &str) -> Result<TagSet, PluginError> {
        const HOOK: &str = "compute-tags";
        let pre = self.pre(World::TagPolicy, &self.tag_policy)?;
        let ctx = wit::PrContext::from(ctx);
        let tags = self.call(
            HOOK,
            |store| {
                let tags = pre.instantiate(&mut *store)?.call_compute_tags(&mut *store, &ctx, image_repository)?;
                Ok(tags.map(TagSet::from))
            },
            |t| t.all().map(|s| s.len() as u64).sum(),
        )?;
        for tag in tags.all() {
            if !validate::is_valid_tag(tag) {
                return Err(self.invalid(HOOK, "tag", tag, "a tag must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}"));
            }
        }
        Ok(tags)
    }

    /// `tag-policy.release`: the Helm release and namespace for `ctx`, checked as DNS-1123 labels.
    pub fn release(&self, ctx: &PrContext) -> Result<ReleaseTarget, PluginError> {
        const HOOK: &str = "release";
        let pre = self.pre(World::TagPolicy, &self.tag_policy)?;
        let ctx = wit::PrContext::from(ctx);
        let release = self.call(
            HOOK,
            |store| pre.instantiate(&mut *store)?.call_release(&mut *store, &ctx),
            |r| (r.name.len() + r.namespace.len()) as u64,
        )?;
        let release = ReleaseTarget::from(release);
        if !validate::is_dns1123_label(&release.name, validate::MAX_RELEASE_NAME) {
            return Err(self.invalid(
                HOOK,
                "release name",
                &release.name,
                "a Helm release name must be a DNS-1123 label (lowercase letters, digits, '-') of at most 53 characters",
            ));
        }
        if !validate::is_dns1123_label(&release.namespace, validate::MAX_NAMESPACE) {
            return Err(self.invalid(
                HOOK,
                "namespace",
                &release.namespace,
                "a namespace must be a DNS-1123 label (lowercase letters, digits, '-') of at most 63 characters",
            ));
        }
        Ok(release)
    }

    /// `chart-generator.generate`: the chart's files, with every path checked to stay inside
    /// the chart directory and `Chart.yaml` required.
    pub fn generate(&self, ctx: &PrContext, app: &AppSpec) -> Result<Vec<ChartFile>, PluginError> {
        const HOOK: &str = "generate";
        let pre = self.pre(World::ChartGenerator, &self.chart_generator)?;
        let ctx = wit::PrContext::from(ctx);
        let app = wit::AppSpec::from(app);
        let files = self.call(
            HOOK,
            |store| pre.instantiate(&mut *store)?.call_generate(&mut *store, &ctx, &app),
            |files| files.iter().map(|f| (f.path.len() + f.content.len()) as u64).sum(),
        )?;
        let files: Vec<ChartFile> = files.into_iter().map(ChartFile::from).collect();
        let mut seen = std::collections::HashSet::new();
        for f in &files {
            if !validate::is_safe_relative_path(&f.path) {
                return Err(self.invalid(
                    HOOK,
                    "chart file path",
                    &f.path,
                    "paths must be relative, '/'-separated, without '.' or '..' parts",
                ));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(self.invalid(HOOK, "chart file path", &f.path, "each path may appear only once"));
            }
        }
        if !seen.contains("Chart.yaml") {
            return Err(self.invalid(HOOK, "chart", "(no Chart.yaml)", "a chart must contain Chart.yaml at its root"));
        }
        Ok(files)
    }

    /// `verifier.check-manifests`: findings about the rendered manifests, before deploy.
    pub fn check_manifests(&self, ctx: &PrContext, manifests: &[Manifest]) -> Result<Vec<Finding>, PluginError> {
        let pre = self.pre(World::Verifier, &self.verifier)?;
        let ctx = wit::PrContext::from(ctx);
        let manifests: Vec<wit::Manifest> = manifests.iter().map(wit::Manifest::from).collect();
        let findings = self.call(
            "check-manifests",
            |store| pre.instantiate(&mut *store)?.call_check_manifests(&mut *store, &ctx, &manifests),
            |f| findings_size(f),
        )?;
        Ok(findings.into_iter().map(Finding::from).collect())
    }

    /// `verifier.check-release`: findings about the deployed release.
    pub fn check_release(&self, ctx: &PrContext, status: &ReleaseStatus) -> Result<Vec<Finding>, PluginError> {
        let pre = self.pre(World::Verifier, &self.verifier)?;
        let ctx = wit::PrContext::from(ctx);
        let status = wit::ReleaseStatus::from(status);
        let findings = self.call(
            "check-release",
            |store| pre.instantiate(&mut *store)?.call_check_release(&mut *store, &ctx, &status),
            |f| findings_size(f),
        )?;
        Ok(findings.into_iter().map(Finding::from).collect())
    }
}

fn findings_size(findings: &[wit::Finding]) -> u64 {
    findings.iter().map(|f| (f.rule.len() + f.message.len() + f.object.as_ref().map_or(0, |o| o.len())) as u64).sum()
}
