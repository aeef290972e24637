//! The plugin boundary: everything prpod does with WebAssembly happens in this module.
//!
//! One wasmtime engine per process (with an epoch ticker that runs while calls are in flight,
//! [`engine`]), components compiled once and cached on disk under a MAC ([`cache`]), a
//! pre-instantiated component (`InstancePre`) reused for every call, and a fresh,
//! deny-by-default store per call ([`sandbox`]). Calls are async: WASI is linked with async host
//! functions, the guest runs on a fiber that yields at every epoch tick, and every call is
//! bounded by `tokio::time::timeout` as well as the epoch deadline, so a plugin that sleeps or
//! waits on a pollable is stopped as surely as one that loops. Results are lifted lazily and
//! charged against the output budget before the host copies them; every output is validated
//! ([`validate`]) before the rest of prpod sees it.

mod bindings;
pub mod bounds;
mod cache;
pub mod chart;
mod engine;
pub mod lock;
pub mod oci;
pub mod reference;
pub mod sandbox;
pub mod trust;
pub mod validate;
pub mod wit_version;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{ComponentExportIndex, HasSelf, Instance, InstancePre, Lift, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use crate::model::{AppSpec, ChartFile, Finding, Manifest, PrContext, ReleaseStatus, ReleaseTarget, TagSet};
use bindings::{v0_1, v0_2};
pub use bounds::LoadLimits;
pub use engine::ticks as epoch_ticks;
pub use reference::PluginRef;
use sandbox::StoreState;
pub use sandbox::{LimitKind, Limits};
use wit_version::Abi;

/// Runs `$body` with `$w` naming the bindings module of `$abi` (`bindings::v0_1` or
/// `bindings::v0_2`): the same code, typed against each version's records. Inputs are converted
/// from the model into that version's records, outputs back into the model, inside `$body`.
macro_rules! by_version {
    ($abi:expr, |$w:ident| $body:block) => {
        match $abi {
            Abi::V0_1 => {
                use bindings::v0_1 as $w;
                $body
            }
            Abi::V0_2 => {
                use bindings::v0_2 as $w;
                $body
            }
        }
    };
}

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
    /// Loading the component would cost more than prpod allows (its shape, or the time its
    /// compile takes).
    #[error("plugin {plugin} was not loaded: {why}; prpod refuses components that cost this much to compile")]
    LoadLimit {
        /// The plugin.
        plugin: String,
        /// Which bound it passed.
        why: String,
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
    /// Every plugin instance slot of this process stayed taken (the call never started).
    #[error(
        "plugin {plugin} hook {hook} could not start: the process's plugin instance pool is busy ({why}); \
         retry, or run fewer plugin calls at once"
    )]
    Busy {
        /// The plugin.
        plugin: String,
        /// The hook.
        hook: &'static str,
        /// What wasmtime said.
        why: String,
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
        rule: String,
    },
    /// The context handed to a hook breaks what the host promises plugins (it carries
    /// credentials).
    #[error("refusing to call plugin {plugin}: {why}")]
    BadContext {
        /// The plugin.
        plugin: String,
        /// What is wrong with the context.
        why: String,
    },
    /// The engine itself failed (a bug or a broken installation, not the plugin's fault).
    #[error("the WebAssembly engine failed: {0}")]
    Engine(String),
}

/// Every list element a plugin returns is charged this much against the output budget on top
/// of its strings: what the host allocates to hold it. Without it, 800 000 empty findings cost
/// nothing against the budget and hundreds of MiB in the host.
pub const ELEMENT_OVERHEAD: u64 = 64;

/// At most this many distinct tags in one tag-set (primary, extra, cache-from and cache-to
/// together, after duplicates are removed).
pub const MAX_TAGS: usize = 64;
/// At most this many files in a generated chart.
pub const MAX_CHART_FILES: usize = 1000;
/// At most this many findings from one verifier hook.
pub const MAX_FINDINGS: usize = 10_000;

/// Loads plugins. One per run (it holds the linker); all hosts in a process share one engine.
#[derive(Clone)]
pub struct PluginHost {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
    cache: cache::ComponentCache,
    load_limits: LoadLimits,
}

impl PluginHost {
    /// The process's host, made on first use. The phases of one run (tags, then chart and
    /// verifiers) each ask for it and get the same linker and cache: one host per run.
    pub fn shared() -> Result<PluginHost, PluginError> {
        static SHARED: std::sync::OnceLock<PluginHost> = std::sync::OnceLock::new();
        if let Some(h) = SHARED.get() {
            return Ok(h.clone());
        }
        let made = PluginHost::new()?;
        Ok(SHARED.get_or_init(|| made).clone())
    }

    /// A host using the process's engine and the on-disk cache named by `PRPOD_CACHE_DIR`
    /// (default `~/.cache/prpod`; `off` disables it).
    pub fn new() -> Result<PluginHost, PluginError> {
        let engine = engine::engine()?.clone();
        let mut linker = Linker::new(&engine);
        // All of WASI p2 is linked so components built by ordinary toolchains (which import
        // wasi:cli, wasi:filesystem, wasi:sockets...) instantiate; the per-call context then
        // grants none of it. The async variant, because a sync host call made from a tokio task
        // would block_on inside the runtime and panic.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        // Every supported prpod:plugin version's imports: wasmtime keeps 0.1.x and 0.2.x apart,
        // so a 0.1.0 component links against 0.1.0's logging and a 0.2.0 one against 0.2.0's.
        let engine_error = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        v0_1::logging::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s).map_err(engine_error)?;
        v0_2::logging::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s).map_err(engine_error)?;
        v0_2::host::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s).map_err(engine_error)?;
        Ok(PluginHost {
            engine,
            linker: Arc::new(linker),
            cache: cache::ComponentCache::from_env(),
            load_limits: LoadLimits::default(),
        })
    }

    /// Replaces the bounds on loading (compiling) plugins.
    pub fn with_load_limits(mut self, limits: LoadLimits) -> PluginHost {
        self.load_limits = limits;
        self
    }

    /// Reads, verifies, compiles (or loads from the cache) and pre-instantiates a plugin. This
    /// reads files and may compile for a second: from async code, call it before the hot path
    /// or in `spawn_blocking`.
    pub fn load(&self, reference: &PluginRef) -> Result<Plugin, PluginError> {
        let (bytes, sha256) = reference.read()?;
        let name: Arc<str> = reference.display_name().into();
        let not_component = |why: String| PluginError::NotAComponent { plugin: name.to_string(), why };
        check_component_header(&bytes).map_err(not_component)?;
        let facts = wit_version::ComponentFacts::read(&bytes).map_err(not_component)?;
        let abi = facts.abi().map_err(not_component)?;
        let too_costly = |why: String| PluginError::LoadLimit { plugin: name.to_string(), why };
        bounds::check_shape(&bytes, &self.load_limits).map_err(too_costly)?;
        let component = self
            .cache
            .load_or_compile(&self.engine, &bytes, &sha256, self.load_limits.compile_deadline)
            .map_err(|e| match e.downcast_ref::<cache::CompileTimeout>() {
                Some(t) => too_costly(t.to_string()),
                None => not_component(format!("{e:#}")),
            })?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let e = format!("{e:#}");
            let hint = if e.contains("wasi:http") {
                "; a JavaScript plugin built with componentize-js imports wasi:http unless it is \
                 built with `-d http -d fetch-event`"
            } else {
                ""
            };
            not_component(format!(
                "{e}; prpod grants plugins only WASI 0.2 (with every capability denied), \
                 prpod:plugin/logging and (from 0.2.0) prpod:plugin/host{hint}"
            ))
        })?;
        // The generated bindings type-check each world's exports against the WIT (with the
        // cause: which record or field differs); the calls themselves go through the export
        // indices, lifting results lazily.
        let export =
            |name: &str| pre.component().get_export_index(None, name).ok_or_else(|| format!("it exports no `{name}`"));
        // Each version's bindings check the exports against that version's WIT.
        let (tag_policy, chart_generator, verifier) = by_version!(abi, |w| {
            (
                w::TagPolicyIndices::new(&pre)
                    .map_err(|e| format!("{e:#}"))
                    .and_then(|_| Ok([export("compute-tags")?, export("release")?])),
                w::ChartGeneratorIndices::new(&pre).map_err(|e| format!("{e:#}")).and_then(|_| export("generate")),
                w::VerifierIndices::new(&pre)
                    .map_err(|e| format!("{e:#}"))
                    .and_then(|_| Ok([export("check-manifests")?, export("check-release")?])),
            )
        });
        Ok(Plugin {
            name,
            reference: reference.clone(),
            sha256,
            wit_version: facts.version_label(),
            abi,
            limits: Limits::default(),
            pre,
            tag_policy,
            chart_generator,
            verifier,
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

/// A loaded plugin, ready to be called any number of times, concurrently too (each call gets a
/// fresh instance in a fresh store).
pub struct Plugin {
    name: Arc<str>,
    reference: PluginRef,
    sha256: String,
    wit_version: String,
    /// Which version's bindings its calls go through.
    abi: Abi,
    limits: Limits,
    pre: InstancePre<StoreState>,
    tag_policy: Result<[ComponentExportIndex; 2], String>,
    chart_generator: Result<ComponentExportIndex, String>,
    verifier: Result<[ComponentExportIndex; 2], String>,
    engine: Engine,
}

/// At most this many frames of a crashed plugin's backtrace are shown.
const BACKTRACE_FRAMES: usize = 16;

/// Why a call failed, for people: the cause first (the trap, the exit status, the host
/// error such as a full resource table), then what wrapped it, then the wasm backtrace. The
/// backtrace's function names come from the plugin, so everything is escaped.
fn trap_message(e: &wasmtime::Error) -> String {
    let escape = |s: &str| crate::untrusted::escape(s).into_owned();
    let mut message = if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        format!("the plugin called exit({}) instead of returning", exit.0)
    } else if let Some(trap) = e.downcast_ref::<Trap>() {
        // (its Display already starts with "wasm trap: ")
        trap.to_string()
    } else {
        escape(&e.root_cause().to_string())
    };
    // What wrapped the cause, outermost last (the backtrace is shown on its own below).
    let cause = e.root_cause().to_string();
    let backtrace = e.downcast_ref::<wasmtime::WasmBacktrace>().map(ToString::to_string);
    for layer in e.chain() {
        let text = layer.to_string();
        if Some(&text) == backtrace.as_ref() || text == cause || layer.is::<Trap>() {
            continue;
        }
        message.push_str(" (");
        message.push_str(&escape(text.lines().next().unwrap_or_default()));
        message.push(')');
    }
    if let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
        let frames: Vec<String> =
            bt.frames().iter().take(BACKTRACE_FRAMES).map(|f| escape(f.func_name().unwrap_or("<unnamed>"))).collect();
        if !frames.is_empty() {
            message.push_str("; wasm backtrace: ");
            message.push_str(&frames.join(" <- "));
            if bt.frames().len() > BACKTRACE_FRAMES {
                message.push_str(&format!(" <- ... ({} more frames)", bt.frames().len() - BACKTRACE_FRAMES));
            }
        }
    }
    message
}

/// The error wasmtime raises when lifting a result would copy more than the store's hostcall
/// fuel allows (its type is private; its message is stable).
const FUEL_EXHAUSTED: &str = "too much data is being copied between the host and the guest";

/// A failure of the host's own machinery inside a call (not the plugin's doing).
#[derive(Debug)]
struct HostFault(String);

impl std::fmt::Display for HostFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HostFault {}

/// What a hook returned, in the host's memory, with what it costs against the output budget:
/// its strings plus [`ELEMENT_OVERHEAD`] per list element.
trait Charged {
    fn charge(&self) -> u64;
}

impl Charged for String {
    fn charge(&self) -> u64 {
        self.len() as u64
    }
}

impl<T: Charged> Charged for Vec<T> {
    fn charge(&self) -> u64 {
        self.iter().map(|e| ELEMENT_OVERHEAD + e.charge()).sum()
    }
}

impl<T: Charged> Charged for Option<T> {
    fn charge(&self) -> u64 {
        self.as_ref().map_or(0, Charged::charge)
    }
}

impl Charged for TagSet {
    fn charge(&self) -> u64 {
        self.primary.charge() + self.extra.charge() + self.cache_from.charge() + self.cache_to.charge()
    }
}

impl Charged for ReleaseTarget {
    fn charge(&self) -> u64 {
        self.name.charge() + self.namespace.charge()
    }
}

impl Charged for ChartFile {
    fn charge(&self) -> u64 {
        self.path.charge() + self.content.len() as u64
    }
}

impl Charged for Finding {
    fn charge(&self) -> u64 {
        self.rule.charge() + self.message.charge() + self.object.charge()
    }
}

/// The typed export `index` of `instance`; a type mismatch here is a bug in [`bindings::raw`]
/// (the world's types were checked at load).
fn typed<P, R>(
    store: &mut Store<StoreState>,
    instance: &Instance,
    index: &ComponentExportIndex,
) -> wasmtime::Result<wasmtime::component::TypedFunc<P, R>>
where
    P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
    R: wasmtime::component::ComponentNamedList + Lift,
{
    instance
        .get_typed_func::<P, R>(&mut *store, index)
        .map_err(|e| wasmtime::Error::new(HostFault(format!("prpod's view of the export is wrong: {e:#}"))))
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

    /// The `prpod:plugin` version it was built against (`0.1.0`, `0.2.0`), or `unversioned`.
    pub fn wit_version(&self) -> &str {
        &self.wit_version
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

    /// The world's exports, after checking the context the hook will get: a plugin never sees
    /// a credential.
    fn exports<'a, E>(
        &self,
        world: World,
        exports: &'a Result<E, String>,
        ctx: &PrContext,
    ) -> Result<&'a E, PluginError> {
        let exports = exports.as_ref().map_err(|why| PluginError::WrongWorld {
            plugin: self.name.to_string(),
            world,
            why: why.clone(),
        })?;
        ctx.check().map_err(|why| PluginError::BadContext { plugin: self.name.to_string(), why })?;
        Ok(exports)
    }

    /// Runs one hook in a fresh store under this plugin's limits, and turns every way it can
    /// fail into a [`PluginError`] naming the plugin and the hook.
    ///
    /// The deadline holds whatever the guest does: while it computes, each epoch tick yields
    /// to the executor (and past the deadline interrupts it); while it waits in a host call
    /// (a sleep, a pollable that never becomes ready), `tokio::time::timeout` drops the call's
    /// future, which tears the fiber down.
    async fn call<R: Charged>(
        &self,
        hook: &'static str,
        f: impl AsyncFnOnce(&mut Store<StoreState>, Instance) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, PluginError> {
        // One pool slot per call in flight: a call that finds every slot taken waits for one
        // (each holder is bounded by its own deadline) instead of failing to instantiate.
        let _slot = engine::call_slot().await;
        let _active = engine::ActiveCall::start();
        let mut store = Store::new(&self.engine, StoreState::new(self.name.clone(), &self.limits));
        store.limiter(|s| s);
        // Bounds what wasmtime allocates while lifting the result into the host (and each
        // guest-to-host call's arguments), in host bytes, before anything is copied: a plugin
        // returning 800 000 findings or a 50 MiB error string is stopped there, not after the
        // host holds it all.
        store.set_hostcall_fuel(usize::try_from(self.limits.output_bytes()).unwrap_or(usize::MAX));
        let deadline = self.limits.deadline();
        let started = Instant::now();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            // Never before the deadline: a plugin gets every millisecond it was promised.
            Ok(if started.elapsed() >= deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        let result = {
            let store = &mut store;
            let work = async move {
                let instance = self.pre.instantiate_async(&mut *store).await?;
                f(store, instance).await
            };
            tokio::time::timeout(deadline, work).await
        };
        let state = store.data();
        let plugin = self.name.to_string();
        let dropped = state.output.dropped_lines();
        if dropped > 0 {
            tracing::warn!(
                target: "prpod::plugin",
                plugin = %plugin,
                hook,
                "dropped {dropped} log lines of this call: a call may log at most {} lines",
                sandbox::MAX_LOG_LINES
            );
        }
        let limit = |limit| PluginError::Limit { plugin: plugin.clone(), hook, limit };
        let result = match result {
            Err(_elapsed) => return Err(limit(LimitKind::Deadline(deadline))),
            Ok(r) => r,
        };
        let output_limit = || limit(LimitKind::Output(self.limits.output_bytes()));
        match result {
            Ok(Ok(value)) => {
                if !state.output.charge(value.charge()) {
                    return Err(output_limit());
                }
                Ok(value)
            }
            Ok(Err(message)) => {
                if !state.output.charge(message.charge()) {
                    return Err(output_limit());
                }
                // Shown to people: escaped, so it cannot drive their terminal.
                let message = crate::untrusted::escape(&message).into_owned();
                Err(PluginError::Returned { plugin, hook, message })
            }
            Err(e) => {
                if state.memory_exceeded {
                    return Err(limit(LimitKind::Memory(self.limits.memory_bytes())));
                }
                if state.output.exceeded() || format!("{e:#}").contains(FUEL_EXHAUSTED) {
                    return Err(output_limit());
                }
                if let Some(HostFault(why)) = e.downcast_ref::<HostFault>() {
                    return Err(PluginError::Engine(format!("plugin {plugin} hook {hook}: {why}")));
                }
                if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    return Err(limit(LimitKind::Deadline(deadline)));
                }
                if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
                    return Err(PluginError::Busy { plugin, hook, why: format!("{e:#}") });
                }
                let mut message = trap_message(&e);
                let stderr = state.output.stderr_tail();
                if !stderr.is_empty() {
                    message.push_str("; the plugin's last words on stderr: ");
                    message.push_str(&stderr);
                }
                Err(PluginError::Trap { plugin, hook, message })
            }
        }
    }

    fn invalid(&self, hook: &'static str, what: &'static str, value: &str, rule: impl Into<String>) -> PluginError {
        PluginError::InvalidOutput {
            plugin: self.name.to_string(),
            hook,
            what,
            value: value.to_string(),
            rule: rule.into(),
        }
    }

    /// `tag-policy.compute-tags`: the tags for an image built for `ctx`. Every tag is checked
    /// against the OCI tag grammar; a tag given twice is kept once (said once in the log); at
    /// most [`MAX_TAGS`] distinct tags.
    pub async fn compute_tags(&self, ctx: &PrContext, image_repository: &str) -> Result<TagSet, PluginError> {
        const HOOK: &str = "compute-tags";
        let [index, _] = self.exports(World::TagPolicy, &self.tag_policy, ctx)?;
        let tags = by_version!(self.abi, |w| {
            let ctx = w::PrContext::from(ctx);
            self.call(HOOK, async |store, instance| {
                let func = typed::<(&w::PrContext, &str), (Result<w::TagSet, String>,)>(store, &instance, index)?;
                Ok(func.call_async(&mut *store, (&ctx, image_repository)).await?.0.map(TagSet::from))
            })
            .await?
        });
        let tags = self.dedup_tags(tags);
        let count = tags.all().count();
        if count > MAX_TAGS {
            return Err(self.invalid(
                HOOK,
                "number of tags",
                &count.to_string(),
                format!("at most {MAX_TAGS} distinct tags per build"),
            ));
        }
        for tag in tags.all() {
            if !validate::is_valid_tag(tag) {
                return Err(self.invalid(HOOK, "tag", tag, "a tag must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}"));
            }
        }
        Ok(tags)
    }

    /// Removes repeated tags (an extra tag equal to the primary, a cache tag listed twice),
    /// keeping the first of each, and says once which were dropped.
    fn dedup_tags(&self, mut tags: TagSet) -> TagSet {
        let mut dropped = Vec::new();
        let mut pushed = std::collections::HashSet::from([tags.primary.clone()]);
        tags.extra.retain(|t| {
            let first = pushed.insert(t.clone());
            if !first {
                dropped.push(t.clone());
            }
            first
        });
        let mut cache = std::collections::HashSet::new();
        tags.cache_from.retain(|t| {
            let first = cache.insert(t.clone());
            if !first {
                dropped.push(t.clone());
            }
            first
        });
        if !dropped.is_empty() {
            let list: Vec<_> = dropped.iter().map(|t| crate::untrusted::escape(t).into_owned()).collect();
            tracing::warn!(
                plugin = &*self.name,
                "the tag-policy returned these tags more than once; each is used once: {}",
                list.join(", ")
            );
        }
        tags
    }

    /// `tag-policy.release`: the Helm release and namespace for `ctx`, checked as DNS-1123 labels.
    pub async fn release(&self, ctx: &PrContext) -> Result<ReleaseTarget, PluginError> {
        const HOOK: &str = "release";
        let [_, index] = self.exports(World::TagPolicy, &self.tag_policy, ctx)?;
        let release = by_version!(self.abi, |w| {
            let ctx = w::PrContext::from(ctx);
            self.call(HOOK, async |store, instance| {
                let func = typed::<(&w::PrContext,), (Result<w::ReleaseTarget, String>,)>(store, &instance, index)?;
                Ok(func.call_async(&mut *store, (&ctx,)).await?.0.map(ReleaseTarget::from))
            })
            .await?
        });
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

    /// `chart-generator.generate`: the chart's files (at most [`MAX_CHART_FILES`]), each path
    /// checked to stay inside the chart directory and to be writable as given (no file that is
    /// also a directory, no name longer than a file system allows); `Chart.yaml` required.
    pub async fn generate(&self, ctx: &PrContext, app: &AppSpec) -> Result<Vec<ChartFile>, PluginError> {
        const HOOK: &str = "generate";
        let index = self.exports(World::ChartGenerator, &self.chart_generator, ctx)?;
        let files = by_version!(self.abi, |w| {
            let ctx = w::PrContext::from(ctx);
            let app = w::AppSpec::from(app);
            self.call(HOOK, async |store, instance| {
                let func = typed::<(&w::PrContext, &w::AppSpec), (Result<Vec<w::ChartFile>, String>,)>(
                    store, &instance, index,
                )?;
                let files = func.call_async(&mut *store, (&ctx, &app)).await?.0;
                Ok(files.map(|f| f.into_iter().map(ChartFile::from).collect::<Vec<_>>()))
            })
            .await?
        });
        if files.len() > MAX_CHART_FILES {
            return Err(self.too_many(HOOK, "chart files", files.len(), MAX_CHART_FILES));
        }
        if let Err((value, rule)) = chart::check_paths(&files) {
            return Err(self.invalid(HOOK, "chart file path", &value, rule));
        }
        Ok(files)
    }

    fn too_many(&self, hook: &'static str, what: &'static str, n: usize, max: usize) -> PluginError {
        self.invalid(hook, "number of results", &format!("{n} {what}"), format!("at most {max} {what} are accepted"))
    }

    /// `verifier.check-manifests`: findings about the rendered manifests, before deploy (at
    /// most [`MAX_FINDINGS`]).
    pub async fn check_manifests(&self, ctx: &PrContext, manifests: &[Manifest]) -> Result<Vec<Finding>, PluginError> {
        const HOOK: &str = "check-manifests";
        let [index, _] = self.exports(World::Verifier, &self.verifier, ctx)?;
        let findings = by_version!(self.abi, |w| {
            let ctx = w::PrContext::from(ctx);
            let manifests: Vec<w::Manifest> = manifests.iter().map(w::Manifest::from).collect();
            self.call(HOOK, async |store, instance| {
                let func = typed::<(&w::PrContext, &[w::Manifest]), (Result<Vec<w::Finding>, String>,)>(
                    store, &instance, index,
                )?;
                let findings = func.call_async(&mut *store, (&ctx, &manifests)).await?.0;
                Ok(findings.map(|f| f.into_iter().map(Finding::from).collect::<Vec<_>>()))
            })
            .await?
        });
        self.findings(HOOK, findings)
    }

    /// `verifier.check-release`: findings about the deployed release (at most
    /// [`MAX_FINDINGS`]).
    pub async fn check_release(&self, ctx: &PrContext, status: &ReleaseStatus) -> Result<Vec<Finding>, PluginError> {
        const HOOK: &str = "check-release";
        let [_, index] = self.exports(World::Verifier, &self.verifier, ctx)?;
        let findings = by_version!(self.abi, |w| {
            let ctx = w::PrContext::from(ctx);
            let status = w::ReleaseStatus::from(status);
            self.call(HOOK, async |store, instance| {
                let func = typed::<(&w::PrContext, &w::ReleaseStatus), (Result<Vec<w::Finding>, String>,)>(
                    store, &instance, index,
                )?;
                let findings = func.call_async(&mut *store, (&ctx, &status)).await?.0;
                Ok(findings.map(|f| f.into_iter().map(Finding::from).collect::<Vec<_>>()))
            })
            .await?
        });
        self.findings(HOOK, findings)
    }

    fn findings(&self, hook: &'static str, findings: Vec<Finding>) -> Result<Vec<Finding>, PluginError> {
        if findings.len() > MAX_FINDINGS {
            return Err(self.too_many(hook, "findings", findings.len(), MAX_FINDINGS));
        }
        Ok(findings)
    }
}
