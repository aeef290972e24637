//! The process's one wasmtime engine, and the epoch ticker that lets a running plugin be
//! interrupted.
//!
//! Epoch interruption only fires while wasm code runs: each tick, a running plugin reaches its
//! epoch deadline, and its store's callback either yields to the async executor (so the
//! `tokio::time::timeout` around the call gets a chance to fire, and other tasks run) or, past
//! the call's deadline, interrupts it. The ticker runs only while at least one plugin call is
//! in flight ([`ActiveCall`]): during a minutes-long rollout watch it sleeps instead of waking
//! 100 times a second.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::PluginError;

/// How often the epoch ticks while a call runs; a plugin that computes without pause yields to
/// the executor this often, and deadlines are accurate to about this much.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Slots for plugin instances alive at the same time (each call holds one until it returns).
pub(crate) const POOL_INSTANCES: u32 = 64;

/// Calls in flight; the ticker parks while this is zero.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Ticks so far (for tests of the idle ticker).
static TICKS: AtomicU64 = AtomicU64::new(0);
static TICKER: OnceLock<Thread> = OnceLock::new();

/// The process's engine, created (with its ticker thread) on first use.
pub(crate) fn engine() -> Result<&'static Engine, PluginError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.wasm_component_model(true);
            config.epoch_interruption(true);
            // Async is always on in this wasmtime (`Config::async_support` is a deprecated no-op):
            // calls run on a fiber with its own stack, and host functions (WASI's clocks,
            // pollables, streams) are async, so a plugin that sleeps or blocks parks a future
            // instead of an executor thread.
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
            let thread = std::thread::Builder::new()
                .name("prpod-epoch".into())
                .spawn(move || {
                    loop {
                        if ACTIVE.load(Ordering::Acquire) == 0 {
                            // An `unpark` that raced with this check leaves a token, so a call
                            // that starts now is never missed.
                            std::thread::park();
                            continue;
                        }
                        std::thread::sleep(TICK);
                        ticker.increment_epoch();
                        TICKS.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| format!("failed to start the epoch thread: {e}"))?;
            let _ = TICKER.set(thread.thread().clone());
            Ok(engine)
        })
        .as_ref()
        .map_err(|e| PluginError::Engine(e.clone()))
}

fn pooling_config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_INSTANCES);
    // A Rust wasip2 component is a handful of core instances (the program plus adapter shims).
    pool.total_core_instances(POOL_INSTANCES * 8);
    pool.total_memories(POOL_INSTANCES * 2);
    pool.total_tables(POOL_INSTANCES * 8);
    pool.total_stacks(POOL_INSTANCES);
    // The per-call memory limit is enforced by the store's limiter over all of a call's
    // memories together; the pool only has to be able to hold the largest limit prpod.toml
    // accepts (4096 MiB).
    pool.max_memory_size(4096 << 20);
    pool.max_memories_per_component(4);
    // Multi-memory modules are valid WebAssembly; the limiter counts their memories together.
    pool.max_memories_per_module(4);
    pool.max_tables_per_component(16);
    // A call touches a few dozen pages (stack, heap). Returning them with madvise costs a TLB
    // shootdown per call, which dominated the call's cost in profiles; instead keep up to
    // 4 MiB resident and reset only the touched pages (PAGEMAP_SCAN, Linux >= 6.7, when
    // available; memset of the low addresses otherwise), and batch what must be decommitted.
    pool.linear_memory_keep_resident(4 << 20);
    pool.table_keep_resident(64 << 10);
    pool.async_stack_keep_resident(64 << 10);
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    pool.decommit_batch_size(16);
    pool
}

/// Waits for one of the pool's [`POOL_INSTANCES`] instance slots; held for the call.
pub(crate) async fn call_slot() -> tokio::sync::SemaphorePermit<'static> {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(POOL_INSTANCES as usize);
    SLOTS.acquire().await.expect("the semaphore is never closed")
}

/// Held for the duration of one plugin call: keeps the epoch ticker running.
pub(crate) struct ActiveCall(());

impl ActiveCall {
    /// Marks a call as started (waking the ticker if it slept).
    pub(crate) fn start() -> ActiveCall {
        if ACTIVE.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(t) = TICKER.get()
        {
            t.unpark();
        }
        ActiveCall(())
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Epoch ticks since the process started (they only happen while a call is in flight).
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticker_sleeps_without_calls_and_ticks_during_one() {
        engine().unwrap();
        let before = ticks();
        std::thread::sleep(TICK * 10);
        // At most the one tick that was already under way when the last call ended.
        assert!(ticks() <= before + 1, "the ticker ticked while no call ran");
        let idle = ticks();
        let call = ActiveCall::start();
        std::thread::sleep(TICK * 10);
        drop(call);
        assert!(ticks() >= idle + 3, "the ticker did not tick during a call: {} -> {}", idle, ticks());
    }
}
