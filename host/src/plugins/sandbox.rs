//! What one plugin call runs inside: a fresh store whose WASI context grants nothing, with a
//! memory limiter, a shared output budget, and stdout/stderr routed to `tracing` under the
//! plugin's name.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{v0_1, v0_2};

const MIB: u64 = 1024 * 1024;

/// Per-call resource limits of a plugin.
///
/// Defaults: 64 MiB of linear memory, a 2 s wall-clock deadline, 16 MiB of output (stdout,
/// stderr, log messages and the returned value together). Override them per plugin in
/// `prpod.toml` (`[plugins.<world>.limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum linear memory per call, in MiB (default 64).
    pub memory_mib: u64,
    /// Wall-clock deadline per call, in milliseconds (default 2000).
    pub deadline_ms: u64,
    /// Maximum output per call, in MiB (default 16).
    pub output_mib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_mib: 64, deadline_ms: 2000, output_mib: 16 }
    }
}

impl Limits {
    /// The memory limit in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * MIB
    }
    /// The deadline as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
    /// The output limit in bytes.
    pub fn output_bytes(&self) -> u64 {
        self.output_mib * MIB
    }
}

/// Which limit ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// The call asked for more linear memory than allowed.
    Memory(u64),
    /// The call ran past its wall-clock deadline.
    Deadline(Duration),
    /// The call wrote more output than allowed.
    Output(u64),
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitKind::Memory(b) => write!(f, "memory limit of {} MiB", b / MIB),
            LimitKind::Deadline(d) => write!(f, "deadline of {} ms", d.as_millis()),
            LimitKind::Output(b) => write!(f, "output limit of {} MiB", b / MIB),
        }
    }
}

impl LimitKind {
    /// The `prpod.toml` key that raises this limit.
    pub fn config_key(&self) -> &'static str {
        match self {
            LimitKind::Memory(_) => "memory_mib",
            LimitKind::Deadline(_) => "deadline_ms",
            LimitKind::Output(_) => "output_mib",
        }
    }
}

/// At most this many log lines (`log()` messages and stdout/stderr lines together) of one call
/// reach prpod's log; later ones are counted, dropped, and the count said once at the end.
pub const MAX_LOG_LINES: u64 = 200;

/// What each log line is charged against the output budget on top of its text: what prpod
/// prints around it (time, level, target, the plugin's name). Without it, a million empty
/// `log()` calls cost nothing against the budget and tens of MB on prpod's stderr.
pub const LOG_LINE_OVERHEAD: u64 = 96;

/// Output accounting shared by the store and its stdio streams (which WASI owns separately).
#[derive(Debug)]
pub(crate) struct OutputBudget {
    used: AtomicU64,
    limit: u64,
    /// Log lines emitted so far, and those dropped past [`MAX_LOG_LINES`].
    log_lines: AtomicU64,
    dropped_lines: AtomicU64,
    /// The last bytes the plugin wrote to stderr: a Rust guest's panic message lands there,
    /// and it belongs in the error we report for the trap that follows.
    stderr_tail: Mutex<Vec<u8>>,
}

const STDERR_TAIL: usize = 2048;

impl OutputBudget {
    fn new(limit: u64) -> Self {
        OutputBudget {
            used: AtomicU64::new(0),
            limit,
            log_lines: AtomicU64::new(0),
            dropped_lines: AtomicU64::new(0),
            stderr_tail: Mutex::new(Vec::new()),
        }
    }

    /// Charges one log line of `len` bytes (plus [`LOG_LINE_OVERHEAD`]): `Err` when that
    /// passes the output limit, `Ok(false)` when the line is to be dropped (past
    /// [`MAX_LOG_LINES`]), `Ok(true)` when it is to be logged.
    pub(crate) fn charge_line(&self, len: u64) -> Result<bool, LimitTrap> {
        if !self.charge(len.saturating_add(LOG_LINE_OVERHEAD)) {
            return Err(LimitTrap("output"));
        }
        if self.log_lines.fetch_add(1, Ordering::Relaxed) < MAX_LOG_LINES {
            return Ok(true);
        }
        self.dropped_lines.fetch_add(1, Ordering::Relaxed);
        Ok(false)
    }

    /// Log lines dropped so far.
    pub(crate) fn dropped_lines(&self) -> u64 {
        self.dropped_lines.load(Ordering::Relaxed)
    }

    /// Charges `n` bytes; false when that passes the limit.
    pub(crate) fn charge(&self, n: u64) -> bool {
        self.used.fetch_add(n, Ordering::Relaxed) + n <= self.limit
    }

    /// Whether anything charged so far passed the limit (the counter only grows).
    pub(crate) fn exceeded(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.limit
    }

    pub(crate) fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().map(|t| t.clone()).unwrap_or_default();
        crate::untrusted::escape(String::from_utf8_lossy(&tail).trim()).into_owned()
    }
}

/// The data of one call's store.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    plugin: Arc<str>,
    memory_limit: u64,
    /// The call's limits and when it started, for `prpod:plugin/host` (0.2.0).
    limits: Limits,
    started: Instant,
    /// Bytes held by all of the call's memories and tables together.
    memory_used: u64,
    pub(crate) output: Arc<OutputBudget>,
    /// Set by the limiter when the plugin asked for more memory than allowed.
    pub(crate) memory_exceeded: bool,
}

impl StoreState {
    /// A deny-by-default context: no preopened directories, no environment, no arguments, no
    /// network (sockets exist but every address is refused and name lookup is off), stdin
    /// closed, stdout and stderr captured.
    pub(crate) fn new(plugin: Arc<str>, limits: &Limits) -> Self {
        let output = Arc::new(OutputBudget::new(limits.output_bytes()));
        let wasi = WasiCtx::builder()
            .stdout(CapturedStdio { plugin: plugin.clone(), stream: "stdout", budget: output.clone() })
            .stderr(CapturedStdio { plugin: plugin.clone(), stream: "stderr", budget: output.clone() })
            // What `get-random-bytes` may ask the host to allocate in one go.
            .max_random_size(MAX_RANDOM_BYTES)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let mut table = ResourceTable::new();
        // The table lives in the host's memory, outside the plugin's memory limit: a plugin
        // that opens pollables or streams without closing them stops at this many.
        table.set_max_capacity(MAX_RESOURCES);
        StoreState {
            wasi,
            table,
            plugin,
            memory_limit: limits.memory_bytes(),
            limits: *limits,
            started: Instant::now(),
            memory_used: 0,
            output,
            memory_exceeded: false,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// At most this many random bytes per `get-random-bytes` call (allocated by the host).
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// At most this many host resources (pollables, streams) open at once in one call.
pub const MAX_RESOURCES: usize = 10_000;

/// Raised inside the guest when a limit is hit, so the call unwinds at once.
#[derive(Debug)]
pub(crate) struct LimitTrap(pub(crate) &'static str);

impl fmt::Display for LimitTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} limit exceeded", self.0)
    }
}

impl std::error::Error for LimitTrap {}

/// What one table element is charged against the memory limit: a function reference is a
/// pointer in wasmtime's tables.
const TABLE_ELEMENT_BYTES: u64 = 8;

impl StoreState {
    /// Charges `grow` more bytes of memories or tables against the call's limit; a call may have
    /// several memories and tables (one per core instance, or several in one module), and the
    /// limit is on what they hold together.
    fn charge_memory(&mut self, grow: u64) -> wasmtime::Result<bool> {
        let total = self.memory_used.saturating_add(grow);
        if total > self.memory_limit {
            self.memory_exceeded = true;
            // Trapping (rather than failing the grow) stops the call here instead of leaving a
            // guest allocator to abort somewhere less clear.
            return Err(wasmtime::Error::new(LimitTrap("memory")));
        }
        self.memory_used = total;
        Ok(true)
    }
}

impl wasmtime::ResourceLimiter for StoreState {
    // Called for each memory's initial size at instantiation (with `current` 0) and for every
    // `memory.grow`, so the running sum covers everything the call's memories ever hold.
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.charge_memory((desired as u64).saturating_sub(current as u64))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let elements = (desired as u64).saturating_sub(current as u64);
        self.charge_memory(elements.saturating_mul(TABLE_ELEMENT_BYTES))
    }
}

impl StoreState {
    /// `logging.log` of every version: one plugin message is one log line.
    fn log(&mut self, level: tracing::Level, message: String) -> wasmtime::Result<()> {
        if !self.output.charge_line(message.len() as u64).map_err(wasmtime::Error::new)? {
            return Ok(());
        }
        // One plugin message is one log line: a newline or an escape sequence in it must not
        // forge a line of prpod's own or drive the terminal.
        let message = crate::untrusted::escape(&message);
        let plugin = &*self.plugin;
        match level {
            tracing::Level::TRACE => tracing::trace!(target: "prpod::plugin", plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "prpod::plugin", plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(target: "prpod::plugin", plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "prpod::plugin", plugin, "{message}"),
            tracing::Level::ERROR => tracing::error!(target: "prpod::plugin", plugin, "{message}"),
        }
        Ok(())
    }
}

/// The `tracing` level of a WIT log level (the same enum in every version).
macro_rules! tracing_level {
    ($level:expr, $m:ident) => {
        match $level {
            $m::Level::Trace => tracing::Level::TRACE,
            $m::Level::Debug => tracing::Level::DEBUG,
            $m::Level::Info => tracing::Level::INFO,
            $m::Level::Warn => tracing::Level::WARN,
            $m::Level::Error => tracing::Level::ERROR,
        }
    };
}

impl v0_1::logging::Host for StoreState {
    fn log(&mut self, level: v0_1::logging::Level, message: String) -> wasmtime::Result<()> {
        use v0_1::logging;
        StoreState::log(self, tracing_level!(level, logging), message)
    }
}

impl v0_2::logging::Host for StoreState {
    fn log(&mut self, level: v0_2::logging::Level, message: String) -> wasmtime::Result<()> {
        use v0_2::logging;
        StoreState::log(self, tracing_level!(level, logging), message)
    }

    fn enabled(&mut self, level: v0_2::logging::Level) -> wasmtime::Result<bool> {
        use v0_2::logging;
        // `enabled!` needs a constant level; the subscriber's filter decides per call site.
        Ok(match tracing_level!(level, logging) {
            tracing::Level::TRACE => tracing::enabled!(target: "prpod::plugin", tracing::Level::TRACE),
            tracing::Level::DEBUG => tracing::enabled!(target: "prpod::plugin", tracing::Level::DEBUG),
            tracing::Level::INFO => tracing::enabled!(target: "prpod::plugin", tracing::Level::INFO),
            tracing::Level::WARN => tracing::enabled!(target: "prpod::plugin", tracing::Level::WARN),
            tracing::Level::ERROR => tracing::enabled!(target: "prpod::plugin", tracing::Level::ERROR),
        })
    }
}

impl v0_2::host::Host for StoreState {
    fn prpod_version(&mut self) -> wasmtime::Result<String> {
        Ok(env!("CARGO_PKG_VERSION").to_string())
    }

    fn limits(&mut self) -> wasmtime::Result<v0_2::host::CallLimits> {
        Ok(v0_2::host::CallLimits {
            memory_bytes: self.limits.memory_bytes(),
            deadline_ms: self.limits.deadline_ms,
            output_bytes: self.limits.output_bytes(),
        })
    }

    fn remaining_ms(&mut self) -> wasmtime::Result<u64> {
        let left = self.limits.deadline().saturating_sub(self.started.elapsed());
        Ok(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The plugin's stdout or stderr: counted against the output budget and forwarded line by line
/// to `tracing` at debug level (stdout) or info level (stderr).
struct CapturedStdio {
    plugin: Arc<str>,
    stream: &'static str,
    budget: Arc<OutputBudget>,
}

impl IsTerminal for CapturedStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(CapturedStream {
            plugin: self.plugin.clone(),
            stream: self.stream,
            budget: self.budget.clone(),
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 asks for this, and prpod links WASIp2 alone: nothing can write here.
        Box::new(tokio::io::sink())
    }
}

struct CapturedStream {
    plugin: Arc<str>,
    stream: &'static str,
    budget: Arc<OutputBudget>,
    line: Vec<u8>,
}

/// A line longer than this is logged in pieces, so a plugin printing without newlines cannot
/// make the host buffer without bound.
const MAX_LINE: usize = 4096;

impl CapturedStream {
    /// Logs the buffered line; `Err` when its charge passes the output limit.
    fn emit(&mut self) -> Result<(), LimitTrap> {
        if self.line.is_empty() {
            return Ok(());
        }
        // The bytes were charged by `write`; the line pays its prefix.
        if !self.budget.charge_line(0)? {
            self.line.clear();
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = crate::untrusted::escape(text.trim_end());
        let plugin = &*self.plugin;
        // Info, not warn: a crash's stderr is already quoted in the error the caller gets.
        if self.stream == "stderr" {
            tracing::info!(target: "prpod::plugin", plugin, stream = "stderr", "{text}");
        } else {
            tracing::debug!(target: "prpod::plugin", plugin, stream = "stdout", "{text}");
        }
        self.line.clear();
        Ok(())
    }
}

impl OutputStream for CapturedStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        if !self.budget.charge(bytes.len() as u64) {
            return Err(StreamError::Trap(wasmtime::Error::new(LimitTrap("output"))));
        }
        if self.stream == "stderr"
            && let Ok(mut tail) = self.budget.stderr_tail.lock()
        {
            tail.extend_from_slice(&bytes);
            let excess = tail.len().saturating_sub(STDERR_TAIL);
            tail.drain(..excess);
        }
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") || self.line.len() >= MAX_LINE {
                self.emit().map_err(|t| StreamError::Trap(wasmtime::Error::new(t)))?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedStream {
    async fn ready(&mut self) {}
}

impl Drop for CapturedStream {
    fn drop(&mut self) {
        // A last line past the output limit is simply not logged.
        let _ = self.emit();
    }
}
