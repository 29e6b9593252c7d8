//! A minimal wasmtime embedding of the component, for what host-example's API
//! does not report: the guest's linear memory peak per call.
//!
//! It links the same WASI and wasi:http implementations as host-example and
//! answers `token-source` with a fixed token through wasmtime's dynamic API
//! (no bindgen, so nothing here can drift from the WIT silently: a call whose
//! result is not the expected shape fails).

use std::future::Future;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use http_body_util::BodyExt;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker, ResourceTable, Val};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

const TOKEN_SOURCE: &str = "secretgen:generator/token-source@0.1.0";
const GENERATOR: &str = "secretgen:generator/generator@0.1.0";

/// An engine with the pooling allocator tuned for many short calls: slots for
/// `calls` concurrent instances, and the memory, tables and async stacks a
/// call touched kept resident and reset with `memset` on release, instead of
/// `madvise`d away and page-faulted back in by the next call (wasmtime's
/// default). The guest touches about 1 MiB, so keeping 2 MiB covers it.
pub fn tuned_pooling_engine(calls: u32) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(calls)
        .total_core_instances(calls * 16)
        .total_memories(calls * 4)
        .total_tables(calls * 8)
        .total_stacks(calls)
        .max_memory_size(64 << 20)
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(1 << 20)
        .async_stack_keep_resident(256 << 10);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(wasm)
}

/// An engine with wasmtime's defaults (on-demand allocation) and copy-on-write
/// memory initialisation on or off (wasmtime's default is on).
pub fn on_demand_engine(memory_init_cow: bool) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.memory_init_cow(memory_init_cow);
    Engine::new(&config).map_err(wasm)
}

/// Records the largest linear memory any instance in the store asked for.
#[derive(Debug, Default)]
struct PeakMemory {
    peak_bytes: usize,
}

impl ResourceLimiter for PeakMemory {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for the initial allocation too, so this sees every size the memory had.
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// Sends the guest's requests over [`crate::transport`], with no policy: the
/// bench only ever points the guest at the loopback stand-in.
struct PlainHttp;

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for PlainHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>> + Send>
    {
        Box::new(async move {
            let connect_failed =
                |e: anyhow::Error| wasmtime_wasi_http::Error::Connect(std::io::Error::other(e.to_string()));
            let authority = request
                .uri()
                .authority()
                .ok_or(wasmtime_wasi_http::Error::HttpRequestUriInvalid)?
                .to_string();
            let (mut parts, body) = request.into_parts();
            // On the wire the request line carries the path only (origin form).
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = path
                .parse()
                .map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
            let mut sender = crate::transport::connect(&authority)
                .await
                .map_err(connect_failed)?;
            let response = sender
                .send_request(http::Request::from_parts(parts, body))
                .await?;
            let response = response.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// One call's store data.
struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: PlainHttp,
    memory: PeakMemory,
    token: Arc<str>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// What one call through the minimal embedding returned.
#[derive(Debug)]
pub struct Call {
    /// ESO's outputs, in the guest's order.
    pub outputs: Vec<(String, Vec<u8>)>,
    /// The largest linear memory the call's instance reached, in bytes.
    pub peak_memory_bytes: usize,
}

/// The component, linked once, with a fixed service account token.
pub struct Embedding {
    pre: InstancePre<State>,
    generate: ComponentExportIndex,
    token: Arc<str>,
}

impl Embedding {
    /// Links `component` (compiled for `engine`) against WASI, wasi:http and a
    /// token source that always answers `token`.
    pub fn new(engine: &Engine, component: &Component, token: &str) -> anyhow::Result<Self> {
        let mut linker = Linker::<State>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(wasm)?;
        linker
            .root()
            .instance(TOKEN_SOURCE)
            .map_err(wasm)?
            .func_new("service-account-token", |store, _ty, _params, results| {
                let token = store.data().token.to_string();
                results[0] = Val::Result(Ok(Some(Box::new(Val::String(token)))));
                Ok(())
            })
            .map_err(wasm)?;
        let pre = linker.instantiate_pre(component).map_err(wasm)?;
        let interface = component
            .get_export_index(None, GENERATOR)
            .with_context(|| format!("the component does not export {GENERATOR}"))?;
        let generate = component
            .get_export_index(Some(&interface), "generate")
            .context("the generator interface has no `generate`")?;
        Ok(Embedding {
            pre,
            generate,
            token: token.into(),
        })
    }

    /// Runs `generate(manifest, namespace)` in a fresh store.
    pub async fn generate(&self, manifest: &str, namespace: &str) -> anyhow::Result<Call> {
        let state = State {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: PlainHttp,
            memory: PeakMemory::default(),
            token: self.token.clone(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.memory);
        let instance = self.pre.instantiate_async(&mut store).await.map_err(wasm)?;
        let func = instance
            .get_func(&mut store, self.generate)
            .context("`generate` is not a function")?;
        let params = [Val::String(manifest.into()), Val::String(namespace.into())];
        let mut results = [Val::Bool(false)];
        func.call_async(&mut store, &params, &mut results)
            .await
            .map_err(wasm)?;
        let [result] = results;
        Ok(Call {
            outputs: outputs_of(result)?,
            peak_memory_bytes: store.data().memory.peak_bytes,
        })
    }
}

/// Reads `result<list<tuple<string, list<u8>>>, generate-error>`.
fn outputs_of(result: Val) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let list = match result {
        Val::Result(Ok(Some(list))) => *list,
        Val::Result(Err(error)) => bail!("generate failed: {error:?}"),
        other => bail!("unexpected result shape: {other:?}"),
    };
    let Val::List(entries) = list else {
        bail!("outputs are not a list");
    };
    entries.into_iter().map(entry_of).collect()
}

fn entry_of(entry: Val) -> anyhow::Result<(String, Vec<u8>)> {
    let Val::Tuple(mut pair) = entry else {
        bail!("an output is not a tuple");
    };
    match (pair.pop(), pair.pop()) {
        (Some(Val::List(bytes)), Some(Val::String(key))) => {
            let bytes = bytes
                .into_iter()
                .map(|b| match b {
                    Val::U8(b) => Ok(b),
                    other => Err(anyhow!("output byte is {other:?}")),
                })
                .collect::<anyhow::Result<_>>()?;
            Ok((key, bytes))
        }
        _ => bail!("an output is not (string, list<u8>)"),
    }
}

/// wasmtime 48's error is its own type; keep its whole chain in an `anyhow`.
fn wasm(e: wasmtime::Error) -> anyhow::Error {
    anyhow!("{e:#}")
}
