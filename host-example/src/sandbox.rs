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

/// What one call may create: core instances, linear memories and tables. The store's
/// limiter refuses more at instantiation ([`Limiter`]'s `instances`, `memories`,
/// `tables`, which replace wasmtime's default of 10,000 each), and the pool reserves
/// exactly this much per call slot. The generator has 2 core instances, 1 memory and 1
/// table; a component composed with a plug or two stays well inside.
pub const CORE_INSTANCES_PER_CALL: u32 = 16;
/// See [`CORE_INSTANCES_PER_CALL`].
pub const MEMORIES_PER_CALL: u32 = 4;
/// See [`CORE_INSTANCES_PER_CALL`].
pub const TABLES_PER_CALL: u32 = 8;

/// The most elements one table may have (wasmtime's pooling default); a generator needs
/// a few hundred.
pub const MAX_TABLE_ELEMENTS: usize = 20_000;
/// What one table element costs the host: wasmtime keeps a pointer per element.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// The most data one guest call into the host may copy into host memory (a string, a
/// list: wasmtime's "hostcall fuel", 128 MiB by default), and the bound on one lift of
/// the guest's results. The generator's largest is an HTTP body chunk (4 KiB, the most
/// `blocking-write-and-flush` takes); its outputs are about 2 KiB.
pub const HOST_CALL_BYTES: usize = 16 * 1024;
/// The most bytes of HTTP fields (names and values) one `wasi:http` `fields` may hold
/// (wasmtime-wasi-http's default is 128 KiB).
pub const FIELD_BYTES: usize = HOST_CALL_BYTES;
/// One chunk of an outgoing HTTP body the host buffers; with one chunk in the channel
/// and one in hand, an unsent body holds at most two (wasmtime-wasi-http's default
/// chunk is 1 MiB).
pub const BODY_CHUNK_BYTES: usize = HOST_CALL_BYTES;
/// What one entry of the `wasi:http` resource table may hold in host memory, at most:
/// an outgoing request keeps four guest strings (method, scheme, authority, path),
/// each within [`HOST_CALL_BYTES`]; fields are bounded by [`FIELD_BYTES`], a body by
/// two [`BODY_CHUNK_BYTES`]; plus the entry's own bookkeeping.
pub const RESOURCE_ENTRY_BYTES: usize = 4 * HOST_CALL_BYTES + 1024;
/// The fewest and the most `wasi:http`/WASI resources a call may hold at once. The
/// generator holds about a dozen at its peak (a request, its fields, body and stream,
/// the response future, the response, its body and stream, pollables).
const MIN_RESOURCES: usize = 32;
const MAX_RESOURCES: usize = 1024;
/// Component-model handles (the guest's own resources and its handles to the host's)
/// a call may hold at once, and what the host's handle table spends on each.
pub const COMPONENT_HANDLES: usize = 4096;
const HANDLE_BYTES: usize = 64;

/// One call's memory budget: every linear memory and table the call creates, plus the
/// host memory its resources may hold (the `wasi:http`/WASI resource table, at its
/// capacity, and the component-model handle table), must fit in `bytes`.
///
/// The resources are reserved up front (their capacity times the most one entry may
/// hold, [`RESOURCE_ENTRY_BYTES`]): a guest fills the table through host calls the
/// limiter does not see. What is left bounds the linear memories and tables together,
/// counted as they grow ([`Limiter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The whole budget (`Limits::memory_bytes`).
    pub bytes: usize,
    /// The resource table's capacity: an eighth of the budget, in entries, within
    /// 32..=1024.
    pub resources: usize,
}

impl Budget {
    /// The budget for `bytes` in all.
    pub fn new(bytes: usize) -> Budget {
        let resources = (bytes / 8 / RESOURCE_ENTRY_BYTES).clamp(MIN_RESOURCES, MAX_RESOURCES);
        Budget { bytes, resources }
    }

    /// What the resource and handle tables are charged, up front.
    pub fn reserved(&self) -> usize {
        self.resources * RESOURCE_ENTRY_BYTES + COMPONENT_HANDLES * HANDLE_BYTES
    }

    /// What is left for linear memories and tables.
    pub fn for_memories_and_tables(&self) -> usize {
        self.bytes.saturating_sub(self.reserved())
    }
}

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

/// The pool, sized from the per-call counts: each call slot gets exactly what one call
/// may create, so a call can neither take another slot's memories nor fail for want of
/// one while its own limits hold.
fn pool(options: &EngineOptions) -> PoolingAllocationConfig {
    let calls = options.max_concurrent_calls.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(calls)
        .total_core_instances(calls * CORE_INSTANCES_PER_CALL)
        .max_core_instances_per_component(CORE_INSTANCES_PER_CALL)
        .total_memories(calls * MEMORIES_PER_CALL)
        .max_memories_per_component(MEMORIES_PER_CALL)
        .max_memories_per_module(MEMORIES_PER_CALL)
        .total_tables(calls * TABLES_PER_CALL)
        .max_tables_per_component(TABLES_PER_CALL)
        .max_tables_per_module(TABLES_PER_CALL)
        .table_elements(MAX_TABLE_ELEMENTS)
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
    /// The call's memory budget, in bytes (default 64 MiB): every linear memory and
    /// table the guest creates, and the host resources it may hold, together (see
    /// [`Budget`]).
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

/// The store's resource limiter: the call's [`Budget`] over every linear memory and
/// table together, and the counts of instances, memories and tables. It remembers
/// whether the guest ran over the budget, so the failure can be named.
pub(crate) struct Limiter {
    budget: Budget,
    /// Bytes of linear memory and table elements the call has now.
    used: usize,
    /// The limit the guest ran into, if it did.
    pub(crate) hit: Option<LimitHit>,
}

impl Limiter {
    pub(crate) fn new(budget: Budget) -> Self {
        Limiter {
            budget,
            used: 0,
            hit: None,
        }
    }

    /// Charges `current -> desired` bytes; past the budget, the error traps the guest
    /// where it asked (a failed grow would let it carry on, and a generator out of
    /// memory has nothing useful to do).
    fn grow(&mut self, current: usize, desired: usize, what: &str) -> wasmtime::Result<bool> {
        let used = self.used.saturating_sub(current).saturating_add(desired);
        if used > self.budget.for_memories_and_tables() {
            self.hit = Some(LimitHit::Budget);
            wasmtime::bail!(
                "{what} would take the call's memories and tables to {used} bytes, past its budget of {} \
                 ({} bytes in all, {} reserved for host resources)",
                self.budget.for_memories_and_tables(),
                self.budget.bytes,
                self.budget.reserved()
            );
        }
        self.used = used;
        Ok(true)
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current, desired, "a linear memory")
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            let what = format!("a table may have at most {MAX_TABLE_ELEMENTS} elements");
            self.hit = Some(LimitHit::Count(what.clone()));
            wasmtime::bail!("{what}");
        }
        self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
            "a table",
        )
    }

    fn instances(&self) -> usize {
        CORE_INSTANCES_PER_CALL as usize
    }

    fn memories(&self) -> usize {
        MEMORIES_PER_CALL as usize
    }

    fn tables(&self) -> usize {
        TABLES_PER_CALL as usize
    }
}

/// A sandbox limit a wasmtime error shows was hit (see [`limit_hit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// The call's [`Budget`]: its resource or handle table is full.
    Budget,
    /// A count or a per-call bound, described for the error line.
    Count(String),
}

/// Which sandbox limit, if any, `e` (whose text is `text`) reports. wasmtime names
/// these in its messages only (its error types for them are private); the texts are
/// those of the pinned wasmtime 48.0.8 (`store.rs` `bump_resource_counts`,
/// `component/func/options.rs` `HostcallFuelExhausted`,
/// `vm/component/handle_table.rs` `insert`, `vm/instance/allocator/pooling.rs`
/// `validate_component`, `pooling/memory_pool.rs` and `table_pool.rs` `validate`).
pub(crate) fn limit_hit(e: &wasmtime::Error, text: &str) -> Option<LimitHit> {
    use wasmtime::component::ResourceTableError;
    if matches!(
        e.downcast_ref::<ResourceTableError>(),
        Some(ResourceTableError::Full)
    ) || text.contains("resource table has no free keys")
        || text.contains("store handle limit exceeded")
    {
        return Some(LimitHit::Budget);
    }
    let counts = [
        (
            "instance count too high",
            "core module instances",
            CORE_INSTANCES_PER_CALL,
        ),
        (
            "core module instances, which exceeds",
            "core module instances",
            CORE_INSTANCES_PER_CALL,
        ),
        ("memory count too high", "linear memories", MEMORIES_PER_CALL),
        (
            "linear memories, which exceeds",
            "linear memories",
            MEMORIES_PER_CALL,
        ),
        ("defined memories count of", "linear memories", MEMORIES_PER_CALL),
        ("table count too high", "tables", TABLES_PER_CALL),
        ("tables, which exceeds", "tables", TABLES_PER_CALL),
        ("defined tables count of", "tables", TABLES_PER_CALL),
    ];
    for (needle, what, most) in counts {
        if text.contains(needle) {
            return Some(LimitHit::Count(format!(
                "a call may create at most {most} {what}"
            )));
        }
    }
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        return Some(LimitHit::Count(format!(
            "it passed more than {} KiB to the host at once",
            HOST_CALL_BYTES / 1024
        )));
    }
    None
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
        let budget = Budget::new(32 << 20);
        let room = budget.for_memories_and_tables();
        let mut l = Limiter::new(budget);
        assert!(l.memory_growing(0, 1024, None).unwrap());
        assert!(l.memory_growing(1024, room, None).unwrap());
        assert!(l.memory_growing(room, room + 1, None).is_err());
        assert_eq!(l.hit, Some(LimitHit::Budget));
    }

    #[test]
    fn the_budget_counts_every_memory_and_table_of_the_call() {
        // Each memory alone is within the budget; together they are not.
        let budget = Budget::new(32 << 20);
        let half = budget.for_memories_and_tables() / 2;
        let mut l = Limiter::new(budget);
        assert!(l.memory_growing(0, half, None).unwrap());
        assert!(l.memory_growing(0, half, None).unwrap());
        assert!(l.memory_growing(0, 64 * 1024, None).is_err());
        assert_eq!(l.hit, Some(LimitHit::Budget));

        // Tables are charged a pointer per element, and no table outgrows its bound.
        let mut l = Limiter::new(budget);
        assert!(l
            .memory_growing(0, budget.for_memories_and_tables() - 8 * 1000, None)
            .unwrap());
        assert!(l.table_growing(0, 1000, None).unwrap());
        assert!(l.table_growing(0, 1, None).is_err());
        let mut l = Limiter::new(budget);
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).is_err());
        assert_eq!(
            l.hit,
            Some(LimitHit::Count("a table may have at most 20000 elements".into()))
        );
    }

    #[test]
    fn the_budget_reserves_the_resource_tables_within_it() {
        for mib in [1, 4, 32, 64, 4096] {
            let budget = Budget::new(mib << 20);
            assert!((32..=1024).contains(&budget.resources), "{mib} MiB: {budget:?}");
            assert_eq!(
                budget.reserved() + budget.for_memories_and_tables(),
                (mib << 20).max(budget.reserved()),
                "{mib} MiB"
            );
        }
        // The default budget leaves a generator (about 1.5 MiB of memory) plenty.
        assert!(Budget::new(64 << 20).for_memories_and_tables() > 48 << 20);
    }
}
