//! The sandbox around each call: engine configuration (async, epoch interruption,
//! optional pooling allocator), per-store limits, the WASI context the guest gets (empty
//! unless the embedder grants something), and bounded capture of its stdout/stderr.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// How often the epoch advances; the deadline's resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Use the pooling instance allocator: instances come from preallocated slots, which
    /// makes instantiation cheap when many calls run. Worth it for long-lived embedders;
    /// a one-shot CLI is better off without it. If the pool cannot be reserved (a
    /// restrictive address-space limit), the engine falls back to on-demand allocation.
    pub pooling: bool,
    /// With pooling: how many calls may hold an instance at once (further calls wait).
    pub max_concurrent_calls: u32,
    /// The most linear memory one instance may have; also sizes pool slots.
    pub max_memory_bytes: usize,
    /// With pooling: how much of each slot's linear memory and tables stays mapped
    /// between calls (reset in place) instead of being handed back to the kernel and
    /// faulted in again by the next call. Zero is wasmtime's default (release it all).
    pub keep_resident_bytes: usize,
    /// Write `/tmp/perf-<pid>.map` as components are compiled, so that `perf` names
    /// the guest's functions in a profile (scripts/profile.sh). Off by default.
    pub perf_map: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            pooling: true,
            max_concurrent_calls: 16,
            max_memory_bytes: Limits::default().memory_bytes,
            keep_resident_bytes: KEEP_RESIDENT_BYTES,
            perf_map: false,
        }
    }
}

/// What a generator call touches of its linear memory (a 256 KiB stack, its data
/// and heap: 6 pages, more only for an unusually large answer) and of its tables,
/// with room to spare. Kept mapped, a slot is reset with `memset` over the pages the call
/// dirtied; released, every call pays `madvise` (and the TLB shootdowns it sends
/// to the other cores) and then page faults. Measured in BENCHMARKS.md ("Levers").
/// Either way the next call starts from the module's initial state: nothing is
/// shared between calls.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// Per-component resources reserved in the pool for each concurrent call. A composed
/// component has several core instances, memories and tables; these are generous.
const CORE_INSTANCES_PER_CALL: u32 = 16;
const MEMORIES_PER_CALL: u32 = 4;
const TABLES_PER_CALL: u32 = 8;

/// Builds an engine for the generator: async support (the host's calls are async),
/// epoch interruption driven by a background ticker, and the pooling allocator if asked.
///
/// The ticker thread holds only a weak reference and ends when the last clone of the
/// engine is dropped.
pub fn engine(options: &EngineOptions) -> anyhow::Result<Engine> {
    let mut config = base_config(options);
    let engine = if options.pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(options)));
        match Engine::new(&config) {
            Ok(engine) => engine,
            // The pool is an optimisation: never fail a call for it.
            Err(_) => Engine::new(&base_config(options))
                .map_err(wasm_err)
                .context("creating the engine")?,
        }
    } else {
        Engine::new(&config)
            .map_err(wasm_err)
            .context("creating the engine")?
    };
    start_epoch_ticker(&engine);
    if options.pooling {
        register_call_slots(&engine, options.max_concurrent_calls.max(1) as usize);
    }
    Ok(engine)
}

/// Call slots of pooled engines. The pool's instance slots belong to the engine, not
/// to one generator: several generators sharing an engine must share one limit, or
/// together they overrun the pool and calls fail instead of waiting.
static CALL_SLOTS: Mutex<Vec<(wasmtime::EngineWeak, Arc<tokio::sync::Semaphore>)>> = Mutex::new(Vec::new());

fn register_call_slots(engine: &Engine, slots: usize) {
    let mut table = CALL_SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    // Forget engines that are gone, so the table stays as small as the live set.
    table.retain(|(weak, _)| weak.upgrade().is_some());
    table.push((engine.weak(), Arc::new(tokio::sync::Semaphore::new(slots))));
}

/// The engine-wide call slots of a pooled engine made by [`engine`], if any.
pub(crate) fn call_slots(engine: &Engine) -> Option<Arc<tokio::sync::Semaphore>> {
    let table = CALL_SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    table
        .iter()
        .find(|(weak, _)| weak.upgrade().is_some_and(|e| Engine::same(&e, engine)))
        .map(|(_, slots)| slots.clone())
}

fn base_config(options: &EngineOptions) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    if options.perf_map {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

fn pool(options: &EngineOptions) -> PoolingAllocationConfig {
    let calls = options.max_concurrent_calls.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(calls)
        .total_core_instances(calls * CORE_INSTANCES_PER_CALL)
        .total_memories(calls * MEMORIES_PER_CALL)
        .total_tables(calls * TABLES_PER_CALL)
        .total_stacks(calls)
        .max_memory_size(options.max_memory_bytes)
        .linear_memory_keep_resident(options.keep_resident_bytes)
        .table_keep_resident(options.keep_resident_bytes);
    pool
}

fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    // Without a ticker the deadline still holds through the async timeout around each
    // call; only a guest spinning without host calls would escape, so carry on.
    drop(spawned);
}

/// Converts wasmtime's error (its own type in this version) into `anyhow`, keeping the
/// whole cause chain in the message.
pub(crate) fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// Limits applied to every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The most linear memory the guest may use, in bytes (default 64 MiB).
    pub memory_bytes: usize,
    /// The whole call, token source and network included (default 90 s).
    pub deadline: Duration,
    /// How much of the guest's stdout and of its stderr is kept (default 64 KiB each);
    /// the rest is dropped, never an error.
    pub output_capture_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 * 1024 * 1024,
            deadline: Duration::from_secs(90),
            output_capture_bytes: 64 * 1024,
        }
    }
}

/// The most table elements an instance may have; a generator needs a few hundred.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The store's resource limiter: memory and tables, remembering whether the guest hit
/// the memory limit so the failure can be named.
pub(crate) struct Limiter {
    memory_bytes: usize,
    pub(crate) memory_exceeded: bool,
}

impl Limiter {
    pub(crate) fn new(memory_bytes: usize) -> Self {
        Limiter {
            memory_bytes,
            memory_exceeded: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_exceeded = true;
            // An error (rather than a failed grow) traps at once, where the guest asked.
            wasmtime::bail!("memory limit of {} bytes exceeded", self.memory_bytes);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// What the embedder grants the guest beyond the empty default: read-only directories
/// and environment variables, for composed components whose plugs read a token file or
/// variable. Nothing is inherited from the host process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasiGrants {
    /// `(host directory, guest path)` pairs, preopened read-only.
    pub dirs: Vec<(PathBuf, String)>,
    /// `(name, value)` pairs the guest sees as its environment.
    pub env: Vec<(String, String)>,
}

/// Builds the guest's WASI context: no stdin, no arguments, no network sockets, only the
/// granted directories (read-only) and variables, stdout/stderr into `capture`.
pub(crate) fn wasi_ctx(grants: &WasiGrants, capture: &Capture) -> anyhow::Result<WasiCtx> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(capture.stdout.clone())
        .stderr(capture.stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (name, value) in &grants.env {
        builder.env(name, value);
    }
    for (host, guest) in &grants.dirs {
        builder
            .preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(wasm_err)
            .with_context(|| format!("granting directory {}", host.display()))?;
    }
    Ok(builder.build())
}

/// The guest's captured stdout and stderr for one call.
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    pub(crate) stdout: BoundedPipe,
    pub(crate) stderr: BoundedPipe,
}

impl Capture {
    pub(crate) fn new(capacity: usize) -> Self {
        Capture {
            stdout: BoundedPipe::new(capacity),
            stderr: BoundedPipe::new(capacity),
        }
    }
}

/// An in-memory output stream that keeps the first `capacity` bytes and silently drops
/// the rest. (wasmtime's `MemoryOutputPipe` traps the guest when full, which would turn
/// a chatty guest into a failed call.)
#[derive(Debug, Clone)]
pub(crate) struct BoundedPipe {
    capacity: usize,
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl BoundedPipe {
    fn new(capacity: usize) -> Self {
        BoundedPipe {
            capacity,
            buffer: Arc::default(),
        }
    }

    /// What was kept, lossily decoded.
    pub(crate) fn contents(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl IsTerminal for BoundedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for BoundedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.capacity.saturating_sub(buffer.len());
        buffer.extend_from_slice(&buf[..buf.len().min(room)]);
        // Claim the whole write: dropping the excess is the point.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn bounded_pipe_keeps_the_first_bytes() {
        let pipe = BoundedPipe::new(5);
        let mut w = pipe.clone();
        w.write_all(b"hello world").await.unwrap();
        w.write_all(b"more").await.unwrap();
        assert_eq!(pipe.contents(), "hello");
    }

    #[test]
    fn limiter_names_memory_overrun() {
        let mut l = Limiter::new(1024);
        assert!(l.memory_growing(0, 1024, None).unwrap());
        assert!(l.memory_growing(1024, 2048, None).is_err());
        assert!(l.memory_exceeded);
    }
}
