//! The one benchmark run: cold start, guest memory, latency and throughput of
//! the component against a native client, the CLI against the official
//! Cloudsmith CLI, the pull-time doors (Docker credential helper, kubelet
//! provider) and the `serve` door under load, all against stand-ins on loopback.
//!
//! Run it with `scripts/bench.sh` (which installs the official CLI and builds
//! `cloudsmith-gen`). `BENCH_QUICK=1` cuts every count by ten, for a smoke run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use benchmarks::cli::{self, median, ProcessRun};
use benchmarks::embed::Embedding;
use benchmarks::load::{self, quantile, LoadRun};
use benchmarks::native::NativeClient;
use benchmarks::report::{human, verdict, Report};
use benchmarks::standin::StandInThread;
use benchmarks::{doors, serve, ORG, SERVICE};
use cloudsmith_gen::cache::{self, ArtifactCache, CacheOutcome};
use cloudsmith_gen::token_source::StaticTokenSource;
use cloudsmith_gen::{
    sandbox, Authority, EngineOptions, Generator, GeneratorOptions, OutboundPolicy, Secret,
};
use wasmtime::component::Component;
use wasmtime::Engine;

const NAMESPACE: &str = "bench";
const SUBJECT: &str = "system:serviceaccount:bench:bench";
const CONCURRENCY: [usize; 3] = [1, 8, 64];
/// The pool must hold every concurrent call, or calls queue on its semaphore.
const MAX_CONCURRENT: u32 = 64;
/// A memory limit (and pool slot size) matched to the guest, which peaks at a
/// few hundred KiB, for the `max_memory_size` lever.
const GUEST_MATCHED_MEMORY: usize = 4 << 20;

/// How much of everything to do.
struct Counts {
    calls: usize,
    rounds: usize,
    warmup: usize,
    repeats: usize,
    processes: usize,
}

impl Counts {
    fn from_env() -> Counts {
        let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v != "0");
        let scale = if quick { 10 } else { 1 };
        Counts {
            calls: 2000 / scale,
            rounds: 3,
            warmup: 200 / scale,
            repeats: 30 / scale,
            processes: 20 / scale.min(4),
        }
    }
}

/// What every runner shares: the stand-in, the token, the manifest, the answer.
struct Setup {
    standin: StandInThread,
    oidc_token: String,
    manifest: String,
    expected_auth: String,
    expected_access_token: String,
}

impl Setup {
    fn new() -> anyhow::Result<Setup> {
        let standin = StandInThread::start()?;
        let oidc_token = testkit::oidc::token(SUBJECT, &[standin.url.as_str()]);
        let manifest = benchmarks::manifest("bench", &standin.url, "bench", Some(&[standin.url.as_str()]));
        let exp = testkit::cloudsmith::StandInConfig::default().token_exp;
        let expected_access_token = testkit::cloudsmith::access_token_for(SUBJECT, ORG, SERVICE, exp);
        Ok(Setup {
            expected_auth: testkit::cloudsmith::auth_for(&expected_access_token),
            expected_access_token,
            standin,
            oidc_token,
            manifest,
        })
    }

    fn generator(&self, engine: &Engine, component: &Component) -> anyhow::Result<Generator> {
        self.generator_with(engine, component, |_| {})
    }

    /// [`Setup::generator`] with its options adjusted by `tweak`.
    fn generator_with(
        &self,
        engine: &Engine,
        component: &Component,
        tweak: impl FnOnce(&mut GeneratorOptions),
    ) -> anyhow::Result<Generator> {
        let policy = OutboundPolicy::default()
            .allow_only([Authority::new("127.0.0.1", self.standin.port)])
            .allow_http(true);
        let mut options = GeneratorOptions {
            policy,
            max_concurrent_calls: MAX_CONCURRENT as usize,
            ..Default::default()
        };
        tweak(&mut options);
        let tokens = Arc::new(StaticTokenSource::new(Secret::new(self.oidc_token.clone())));
        Generator::new(engine, component, tokens, options)
    }
}

/// Which parts to run: `BENCH_ONLY=doors,serve` (a comma-separated subset of
/// [`PARTS`]) runs only those and lays their rows over the existing results.json;
/// unset, everything but `profile` runs and results.json is written afresh.
/// `profile` (`scripts/profile.sh`) only drives one runner for `perf` and
/// records nothing.
const PARTS: [&str; 5] = ["core", "cli", "doors", "serve", "profile"];

fn main() -> anyhow::Result<()> {
    let counts = Counts::from_env();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let parts: Vec<&str> = only.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if let Some(unknown) = parts.iter().find(|p| !PARTS.contains(p)) {
        bail!("BENCH_ONLY: unknown part {unknown:?} (expected some of {PARTS:?})");
    }
    let runs = |part: &str| {
        if parts.is_empty() {
            part != "profile"
        } else {
            parts.contains(&part)
        }
    };
    let setup = Setup::new()?;
    if parts == ["profile"] {
        return profile(&setup);
    }
    let mut report = Report::default();
    machine(&mut report);
    if runs("core") {
        core(&setup, &counts, &mut report)?;
    }
    if runs("cli") {
        processes(&setup, &counts, &mut report)?;
    }
    let cloudsmith_gen = benchmarks::serve::cloudsmith_gen_path();
    if runs("doors") || runs("serve") {
        ensure!(
            cloudsmith_gen.is_file(),
            "cloudsmith-gen not found at {} (build it: cargo build --release -p cloudsmith-gen)",
            cloudsmith_gen.display()
        );
    }
    if runs("doors") {
        let lean_helper = cloudsmith_gen.with_file_name("docker-credential-cloudsmith");
        ensure!(
            lean_helper.is_file(),
            "the lean helper is not beside cloudsmith-gen at {} (it is built with it)",
            lean_helper.display()
        );
        let binaries = doors::Binaries {
            cloudsmith_gen: cloudsmith_gen.clone(),
            lean_helper,
            official: std::env::var_os("CLOUDSMITH_CLI").map(PathBuf::from),
        };
        doors::measure(&binaries, counts.processes, &mut report)?;
    }
    if runs("serve") {
        let serve_counts = serve::Counts {
            calls: counts.calls / 2,
            rounds: 2,
            warmup: counts.warmup / 2,
        };
        serve::measure(&cloudsmith_gen, &setup.standin, &serve_counts, &mut report)?;
    }

    println!("{}", report.table());
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results.json");
    let json = if parts.is_empty() {
        report.to_json()
    } else {
        let previous = std::fs::read_to_string(&out)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        report.merged_over(previous, &only)
    };
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("\nresults written to {}", out.display());
    Ok(())
}

/// One runner in a closed loop and nothing else, for `perf record`
/// (`scripts/profile.sh`): `BENCH_PROFILE_RUNNER` is `host` (the component
/// through host-example with pooling, the default), `minimal` or `native`;
/// `BENCH_PROFILE_CONCURRENCY` (default 1) and `BENCH_PROFILE_CALLS` (default
/// 20000) set the load; `BENCH_PROFILE_COMPONENT` runs another build of the
/// component (a path), `BENCH_PROFILE_KEEP_RESIDENT` sets
/// `EngineOptions::keep_resident_bytes`. Prints what the load run measured.
fn profile(setup: &Setup) -> anyhow::Result<()> {
    let var = |name: &str, default: usize| -> anyhow::Result<usize> {
        match std::env::var(name) {
            Ok(v) => v.parse().with_context(|| format!("{name}: not a number: {v:?}")),
            Err(_) => Ok(default),
        }
    };
    let concurrency = var("BENCH_PROFILE_CONCURRENCY", 1)?;
    let calls = var("BENCH_PROFILE_CALLS", 20_000)?;
    let which = std::env::var("BENCH_PROFILE_RUNNER").unwrap_or_else(|_| "host".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let path = std::env::var_os("BENCH_PROFILE_COMPONENT")
            .map(PathBuf::from)
            .unwrap_or_else(|| testkit::artifacts::wasm("cloudsmith-access-token"));
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let runner = match which.as_str() {
            "native" => Runner::Native(NativeClient::new(&setup.manifest, NAMESPACE, &setup.oidc_token)),
            "host" => {
                let engine = sandbox::engine(&EngineOptions {
                    max_concurrent_calls: MAX_CONCURRENT,
                    keep_resident_bytes: var("BENCH_PROFILE_KEEP_RESIDENT", EngineOptions::default().keep_resident_bytes)?,
                    perf_map: true,
                    ..Default::default()
                })?;
                let generator = setup.generator(&engine, &cache::compile(&engine, &bytes)?)?;
                check_component(setup, &generator).await?;
                Runner::Host(generator)
            }
            "minimal" => {
                let engine = Engine::default();
                let component = Component::new(&engine, &bytes).map_err(|e| anyhow::anyhow!("{e:#}"))?;
                let embedding = Embedding::new(&engine, &component, &setup.oidc_token)?;
                check_minimal(setup, &embedding).await?;
                Runner::Minimal(Arc::new(embedding))
            }
            other => bail!("BENCH_PROFILE_RUNNER: {other:?} is not host, minimal or native"),
        };
        let run = runner.load(setup, concurrency, 200, calls).await?;
        println!(
            "profile: {which}, concurrency {concurrency}, {calls} calls: p50 {}, {:.0} /s, client CPU per call {}",
            human(run.quantile(0.5)),
            run.throughput(),
            human(run.cpu_per_call())
        );
        Ok(())
    })
}

/// The component: size, cold start, guest memory, and latency against native.
fn core(setup: &Setup, counts: &Counts, report: &mut Report) -> anyhow::Result<()> {
    let component_path = testkit::artifacts::wasm("cloudsmith-access-token");
    let component_bytes = std::fs::read(&component_path)?;
    let size = component_bytes.len();
    report.row(
        "component",
        "size of cloudsmith_access_token.wasm",
        format!("{:.1} KiB", size as f64 / 1024.0),
        // The budget since issue 9 (tests/component.rs).
        verdict(size <= 192 * 1024, "≤ 192 KiB"),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let generators = cold_start(setup, &component_bytes, counts, report).await?;
        let minimal = guest_memory(setup, &component_bytes, report).await?;
        latency(setup, &generators, minimal, &component_bytes, counts, report).await?;
        levers(setup, &component_bytes, counts, report).await
    })
}

/// The component built with other link settings (the root build.rs's
/// `CLOUDSMITH_GUEST_*` measuring variables), in `target/bench-guest-<tag>`.
fn component_with(tag: &str, settings: &[(&str, u32)]) -> anyhow::Result<Vec<u8>> {
    let env: Vec<(&str, String)> = settings
        .iter()
        .map(|(name, value)| (*name, value.to_string()))
        .collect();
    let path =
        testkit::artifacts::wasm_variant("cloudsmith-access-token", &format!("bench-guest-{tag}"), &env);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// Each lever of issue 12 on its own: the same runner with the lever as it was
/// (before) and as shipped (after), interleaved in one run, at c=1 and c=64.
async fn levers(setup: &Setup, bytes: &[u8], counts: &Counts, report: &mut Report) -> anyhow::Result<()> {
    let pooled = |options: EngineOptions| -> anyhow::Result<Engine> {
        sandbox::engine(&EngineOptions {
            max_concurrent_calls: MAX_CONCURRENT,
            ..options
        })
    };
    let host = |engine: &Engine, bytes: &[u8], memory_bytes: Option<usize>| -> anyhow::Result<Runner> {
        let component = cache::compile(engine, bytes)?;
        let generator = setup.generator_with(engine, &component, |options| {
            if let Some(bytes) = memory_bytes {
                options.limits.memory_bytes = bytes;
            }
        })?;
        Ok(Runner::Host(generator))
    };
    let minimal = |engine: &Engine| -> anyhow::Result<Runner> {
        let component = Component::new(engine, bytes).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(Runner::Minimal(Arc::new(Embedding::new(
            engine,
            &component,
            &setup.oidc_token,
        )?)))
    };
    let shipped = pooled(EngineOptions::default())?;
    let released = pooled(EngineOptions {
        keep_resident_bytes: 0,
        ..Default::default()
    })?;
    let matched = pooled(EngineOptions {
        max_memory_bytes: GUEST_MATCHED_MEMORY,
        ..Default::default()
    })?;
    // Rust's default stack, with the same heap room as shipped (no memory.grow).
    let one_mib_stack = component_with("stack-1mib", &[("CLOUDSMITH_GUEST_STACK_BYTES", 1 << 20)])?;
    // The component as it was: Rust's default stack, the initial memory the
    // linker gives it (17 pages) and talc's own source, so every call grew it.
    let as_it_was = component_with(
        "before",
        &[
            ("CLOUDSMITH_GUEST_STACK_BYTES", 1 << 20),
            ("CLOUDSMITH_GUEST_INITIAL_MEMORY_BYTES", 17 * 65536),
            ("CLOUDSMITH_GUEST_TALC_GROWS_FIRST", 1),
        ],
    )?;
    // talc's own wasm source, which grows memory on the first allocation, with
    // the initial memory the linker gives the shipped stack and data (5 pages).
    let growing = component_with(
        "grows",
        &[
            ("CLOUDSMITH_GUEST_INITIAL_MEMORY_BYTES", 5 * 65536),
            ("CLOUDSMITH_GUEST_TALC_GROWS_FIRST", 1),
        ],
    )?;
    // (lever, before, after)
    let levers: Vec<(&str, Runner, Runner)> = vec![
        (
            "guest stack 1 MiB -> 256 KiB (host-example, pooling)",
            host(&shipped, &one_mib_stack, None)?,
            host(&shipped, bytes, None)?,
        ),
        (
            "guest allocator: grows memory -> initial pages first, 6 of them (host-example, pooling)",
            host(&shipped, &growing, None)?,
            host(&shipped, bytes, None)?,
        ),
        (
            "pool keep_resident 0 -> 1 MiB (host-example, pooling)",
            host(&released, bytes, None)?,
            host(&shipped, bytes, None)?,
        ),
        (
            "max_memory_size 64 MiB -> 4 MiB (host-example, pooling)",
            host(&shipped, bytes, None)?,
            host(&matched, bytes, Some(GUEST_MATCHED_MEMORY))?,
        ),
        (
            "memory_init_cow off -> on (minimal embedding, on-demand)",
            minimal(&benchmarks::embed::on_demand_engine(false)?)?,
            minimal(&benchmarks::embed::on_demand_engine(true)?)?,
        ),
        (
            "all: 1 MiB stack, 17 pages, keep_resident 0 -> as shipped (host-example, pooling)",
            host(&released, &as_it_was, None)?,
            host(&shipped, bytes, None)?,
        ),
    ];
    for (_, before, after) in &levers {
        for runner in [before, after] {
            runner.call(&setup.manifest).await?;
        }
    }
    for concurrency in [1, 64] {
        let section = format!("levers (issue 12), concurrency {concurrency}");
        for (name, before, after) in &levers {
            let loads = interleaved(
                setup,
                &[before, after],
                concurrency,
                counts.rounds,
                counts.warmup / 2,
                counts.calls / 2,
            )
            .await?;
            let [before, after] =
                <[LoadRun; 2]>::try_from(loads).map_err(|_| anyhow::anyhow!("a lever did not run"))?;
            let change = |b: f64, a: f64| format!("{:+.0}%", (a / b - 1.0) * 100.0);
            let (cpu_b, cpu_a) = (before.cpu_per_call(), after.cpu_per_call());
            report.row(
                &section,
                &format!("{name}: client CPU per call"),
                format!(
                    "{} -> {} ({})",
                    human(cpu_b),
                    human(cpu_a),
                    change(cpu_b.as_secs_f64(), cpu_a.as_secs_f64())
                ),
                "",
            );
            let (p50_b, p50_a) = (before.quantile(0.5), after.quantile(0.5));
            report.row(
                &section,
                &format!("{name}: p50"),
                format!(
                    "{} -> {} ({})",
                    human(p50_b),
                    human(p50_a),
                    change(p50_b.as_secs_f64(), p50_a.as_secs_f64())
                ),
                "",
            );
            let (tp_b, tp_a) = (before.throughput(), after.throughput());
            report.row(
                &section,
                &format!("{name}: throughput"),
                format!("{tp_b:.0} -> {tp_a:.0} /s ({})", change(tp_b, tp_a)),
                "",
            );
        }
    }
    Ok(())
}

/// CPU model, cores, memory and rustc, for the record.
fn machine(report: &mut Report) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo.lines().next().unwrap_or_default().to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    report.machine("cpu", model);
    report.machine("cores", cores.to_string());
    report.machine("memory", memory);
    report.machine("rustc", rustc);
    // The machine is shared: the load when the run started qualifies every figure.
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report.machine("load average", loadavg.trim().to_string());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    report.machine("date", date);
}

/// Both engines' generators, pooling on and off, for the latency runs.
struct Generators {
    pooling: Generator,
    on_demand: Generator,
}

/// Compile vs precompiled load vs linking vs instantiation, pooling on and off.
async fn cold_start(
    setup: &Setup,
    bytes: &[u8],
    counts: &Counts,
    report: &mut Report,
) -> anyhow::Result<Generators> {
    let mut generators = Vec::new();
    for pooling in [true, false] {
        let label = if pooling { "pooling" } else { "on-demand" };
        let engine = sandbox::engine(&EngineOptions {
            pooling,
            max_concurrent_calls: MAX_CONCURRENT,
            ..Default::default()
        })?;
        let compile = time_median(counts.repeats.min(5), || cache::compile(&engine, bytes).map(drop))?;
        report.row(
            "cold start",
            &format!("[{label}] compile from bytes (Cranelift)"),
            human(compile),
            "",
        );
        let dir = tempfile_dir()?;
        let cache = ArtifactCache::new(dir.join("cache"));
        let (component, outcome) = cache.load(&engine, bytes)?;
        ensure!(
            matches!(outcome, CacheOutcome::Stored(_)),
            "first load should store: {outcome:?}"
        );
        let load = time_median(counts.repeats, || {
            let (_, outcome) = cache.load(&engine, bytes)?;
            ensure!(matches!(outcome, CacheOutcome::Hit(_)), "cache miss: {outcome:?}");
            Ok(())
        })?;
        report.row(
            "cold start",
            &format!("[{label}] precompiled load (host cache: read + SHA-256 + deserialize)"),
            human(load),
            verdict(load <= Duration::from_millis(5), "≤ 5 ms"),
        );
        let serialized = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let deserialize = time_median(counts.repeats, || {
            // SAFETY: these bytes were produced by `serialize` on this engine just above.
            unsafe { Component::deserialize(&engine, &serialized) }
                .map(drop)
                .map_err(|e| anyhow::anyhow!("{e:#}"))
        })?;
        report.row(
            "cold start",
            &format!("[{label}] Component::deserialize alone"),
            human(deserialize),
            "",
        );
        let link = time_median(counts.repeats, || setup.generator(&engine, &component).map(drop))?;
        report.row(
            "cold start",
            &format!("[{label}] Generator::new (link + InstancePre)"),
            human(link),
            "",
        );
        let generator = setup.generator(&engine, &component)?;
        let (instantiate, first_call) = instantiation(setup, &generator, counts.calls / 2).await?;
        report.row(
            "cold start",
            &format!("[{label}] InstancePre instantiation p50"),
            human(quantile(&instantiate, 0.5)),
            // Issue 12: at most 15 µs with pooling (the on-demand row has no goal).
            if pooling {
                verdict(
                    quantile(&instantiate, 0.5) <= Duration::from_micros(15),
                    "≤ 15 µs",
                )
            } else {
                String::new()
            },
        );
        report.row(
            "cold start",
            &format!("[{label}] InstancePre instantiation p99"),
            human(quantile(&instantiate, 0.99)),
            "",
        );
        report.row(
            "cold start",
            &format!("[{label}] first generate on a new Generator"),
            human(first_call),
            "",
        );
        generators.push(generator);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let on_demand = generators.pop().context("two generators")?;
    let pooling = generators.pop().context("two generators")?;
    Ok(Generators { pooling, on_demand })
}

/// Instantiation times (sorted) over `calls` sequential generates, as the host
/// reports them, and the very first call's latency.
async fn instantiation(
    setup: &Setup,
    generator: &Generator,
    calls: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    check_component(setup, generator).await?;
    let first = started.elapsed();
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let traced = generator.generate_traced(&setup.manifest, NAMESPACE).await;
        traced
            .result
            .map_err(|e| anyhow::anyhow!("generate failed: {e}"))?;
        times.push(traced.report.instantiate);
    }
    times.sort_unstable();
    Ok((times, first))
}

/// One call through host-example, checked against the stand-in's exact answer.
async fn check_component(setup: &Setup, generator: &Generator) -> anyhow::Result<()> {
    let credentials = generator
        .generate(&setup.manifest, NAMESPACE)
        .await
        .map_err(|e| anyhow::anyhow!("generate failed: {e}"))?;
    ensure!(
        credentials.auth().expose() == setup.expected_auth,
        "component: wrong auth"
    );
    Ok(())
}

/// The guest's linear memory peak per call, through the minimal embedding
/// (which it returns for the latency runs).
async fn guest_memory(setup: &Setup, bytes: &[u8], report: &mut Report) -> anyhow::Result<Arc<Embedding>> {
    let engine = Engine::default();
    let component = Component::new(&engine, bytes).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let embedding = Embedding::new(&engine, &component, &setup.oidc_token)?;
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(check_minimal(setup, &embedding).await?);
    }
    report.row(
        "component",
        "guest linear memory peak per generate",
        format!("{:.0} KiB", peak as f64 / 1024.0),
        "",
    );
    Ok(Arc::new(embedding))
}

/// One call through the minimal embedding, checked; returns its memory peak.
async fn check_minimal(setup: &Setup, embedding: &Embedding) -> anyhow::Result<usize> {
    let call = embedding.generate(&setup.manifest, NAMESPACE).await?;
    let auth = call.outputs.first().map(|(_, v)| v.as_slice());
    ensure!(
        auth == Some(setup.expected_auth.as_bytes()),
        "minimal embedding: wrong auth"
    );
    Ok(call.peak_memory_bytes)
}

/// Who makes the calls in a latency run.
#[derive(Clone)]
enum Runner {
    /// The native baseline.
    Native(NativeClient),
    /// The component through host-example (policy, limits, deadline, journal).
    Host(Generator),
    /// The component through the bench's minimal embedding (no policy, no limits).
    Minimal(Arc<Embedding>),
}

impl Runner {
    async fn call(&self, manifest: &str) -> anyhow::Result<()> {
        match self {
            Runner::Native(client) => client.generate().await.map(drop),
            Runner::Host(generator) => generator
                .generate(manifest, NAMESPACE)
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("generate failed: {e}")),
            Runner::Minimal(embedding) => embedding.generate(manifest, NAMESPACE).await.map(drop),
        }
    }

    /// A load run of `calls` calls at `concurrency`, after `warmup` unrecorded calls.
    async fn load(
        &self,
        setup: &Setup,
        concurrency: usize,
        warmup: usize,
        calls: usize,
    ) -> anyhow::Result<LoadRun> {
        let op = {
            let runner = self.clone();
            let manifest: Arc<str> = setup.manifest.as_str().into();
            move || {
                let (runner, manifest) = (runner.clone(), manifest.clone());
                async move { runner.call(&manifest).await }
            }
        };
        if warmup > 0 {
            load::run(&setup.standin, concurrency, warmup, op.clone()).await?;
        }
        load::run(&setup.standin, concurrency, calls, op).await
    }
}

/// Latency and throughput: native vs the component through host-example
/// (pooling on and off) and through the minimal embedding (on-demand, and
/// pooling tuned to keep memory resident: an experiment toward the goals).
async fn latency(
    setup: &Setup,
    generators: &Generators,
    minimal: Arc<Embedding>,
    bytes: &[u8],
    counts: &Counts,
    report: &mut Report,
) -> anyhow::Result<()> {
    let native = NativeClient::new(&setup.manifest, NAMESPACE, &setup.oidc_token);
    let outputs = native.generate().await?;
    ensure!(
        outputs.first().map(|(_, v)| v.as_slice()) == Some(setup.expected_auth.as_bytes()),
        "native: wrong auth"
    );
    check_component(setup, &generators.on_demand).await?;
    let tuned = {
        let engine = benchmarks::embed::tuned_pooling_engine(MAX_CONCURRENT)?;
        let component = Component::new(&engine, bytes).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Arc::new(Embedding::new(&engine, &component, &setup.oidc_token)?)
    };
    check_minimal(setup, &tuned).await?;
    let runners = [
        ("native", Runner::Native(native)),
        (
            "component, host-example, pooling",
            Runner::Host(generators.pooling.clone()),
        ),
        (
            "component, host-example, on-demand",
            Runner::Host(generators.on_demand.clone()),
        ),
        ("component, minimal embedding", Runner::Minimal(minimal)),
        (
            "component, minimal embedding, tuned pooling",
            Runner::Minimal(tuned),
        ),
    ];
    for concurrency in CONCURRENCY {
        let all: Vec<&Runner> = runners.iter().map(|(_, runner)| runner).collect();
        let loads = interleaved(
            setup,
            &all,
            concurrency,
            counts.rounds,
            counts.warmup,
            counts.calls,
        )
        .await?;
        let runs: Vec<(&str, LoadRun)> = runners.iter().map(|(name, _)| *name).zip(loads).collect();
        record_level(report, &runs);
    }
    Ok(())
}

/// `rounds` load runs of `calls` calls per runner at `concurrency`, the order of
/// the runners reversed every other round so that drift (thermal, other load)
/// falls on all of them; `warmup` unrecorded calls each in the first round.
/// Returns each runner's rounds merged, in the runners' order.
async fn interleaved(
    setup: &Setup,
    runners: &[&Runner],
    concurrency: usize,
    rounds: usize,
    warmup: usize,
    calls: usize,
) -> anyhow::Result<Vec<LoadRun>> {
    let mut runs: Vec<Option<LoadRun>> = vec![None; runners.len()];
    for round in 0..rounds {
        let warmup = if round == 0 { warmup } else { 0 };
        let mut order: Vec<usize> = (0..runners.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let run = runners[i].load(setup, concurrency, warmup, calls).await?;
            runs[i] = Some(match runs[i].take() {
                Some(so_far) => so_far.merge(run),
                None => run,
            });
        }
    }
    runs.into_iter()
        .map(|run| run.context("a runner did not run"))
        .collect()
}

/// The rows and plot points of one concurrency level; `runs[0]` is native.
fn record_level(report: &mut Report, runs: &[(&str, LoadRun)]) {
    let Some((_, native)) = runs.first() else {
        return;
    };
    let section = format!("latency and throughput, concurrency {}", native.concurrency);
    for (name, run) in runs {
        report.load(name, run);
        let p50_p99 = format!("{} / {}", human(run.quantile(0.5)), human(run.quantile(0.99)));
        report.row(&section, &format!("{name}: p50 / p99"), p50_p99, "");
        report.row(
            &section,
            &format!("{name}: throughput"),
            format!("{:.0} /s", run.throughput()),
            "",
        );
        report.row(
            &section,
            &format!("{name}: client CPU per call"),
            human(run.cpu_per_call()),
            "",
        );
    }
    // Issue 12's goals: CPU per call and (at c=1) p50 within 1.5× of native,
    // throughput at least 0.67× native at c=8 and c=64.
    let concurrency = native.concurrency;
    for (name, run) in &runs[1..] {
        let p50 = run.quantile(0.5).as_secs_f64() / native.quantile(0.5).as_secs_f64();
        let throughput = run.throughput() / native.throughput();
        let cpu = run.cpu_per_call().as_secs_f64() / native.cpu_per_call().as_secs_f64();
        let p50_goal = if concurrency == 1 {
            verdict(p50 <= 1.5, "≤ 1.5×")
        } else {
            String::new()
        };
        report.row(
            &section,
            &format!("{name} / native: p50"),
            format!("{p50:.2}×"),
            p50_goal,
        );
        let throughput_goal = if concurrency > 1 {
            verdict(throughput >= 0.67, "≥ 0.67×")
        } else {
            String::new()
        };
        report.row(
            &section,
            &format!("{name} / native: throughput"),
            format!("{throughput:.2}×"),
            throughput_goal,
        );
        report.row(
            &section,
            &format!("{name} / native: client CPU per call"),
            format!("{cpu:.2}×"),
            verdict(cpu <= 1.5, "≤ 1.5×"),
        );
    }
}

/// The two CLIs as processes against the same stand-in.
fn processes(setup: &Setup, counts: &Counts, report: &mut Report) -> anyhow::Result<()> {
    let work = tempfile_dir()?;
    let ours = cloudsmith_gen(setup, &work)?;
    let official = official_cli(setup, &work);
    let (Some(mut ours), Some(mut official)) = (ours, official) else {
        report.row(
            "CLI end to end",
            "skipped",
            "a CLI is missing",
            "see scripts/bench.sh",
        );
        return Ok(());
    };
    // Warm: our precompile cache is filled, both have been loaded once (page cache).
    ours.run_checked(setup)?;
    official.run_checked(setup)?;
    let (mut ours_runs, mut official_runs) = (Vec::new(), Vec::new());
    for _ in 0..counts.processes {
        ours_runs.push(ours.run_checked(setup)?);
        official_runs.push(official.run_checked(setup)?);
    }
    let _ = std::fs::remove_dir_all(&work);
    record_processes(report, &ours_runs, &official_runs);
    Ok(())
}

fn record_processes(report: &mut Report, ours: &[ProcessRun], official: &[ProcessRun]) {
    let wall = |runs: &[ProcessRun]| median(&runs.iter().map(|r| r.wall).collect::<Vec<_>>());
    let rss = |runs: &[ProcessRun]| median(&runs.iter().map(|r| r.max_rss_kib).collect::<Vec<_>>());
    let section = "CLI end to end (median of runs)";
    report.row(section, "cloudsmith-gen generate: wall", human(wall(ours)), "");
    report.row(
        section,
        "cloudsmith-gen generate: peak RSS",
        format!("{:.1} MiB", rss(ours) as f64 / 1024.0),
        "",
    );
    report.row(
        section,
        "cloudsmith credential-helper docker: wall",
        human(wall(official)),
        "",
    );
    report.row(
        section,
        "cloudsmith credential-helper docker: peak RSS",
        format!("{:.1} MiB", rss(official) as f64 / 1024.0),
        "",
    );
    let wall_ratio = wall(ours).as_secs_f64() / wall(official).as_secs_f64();
    let rss_ratio = rss(ours) as f64 / rss(official) as f64;
    report.row(
        section,
        "cloudsmith-gen / official: wall",
        format!("{wall_ratio:.3}×"),
        "",
    );
    report.row(
        section,
        "cloudsmith-gen / official: peak RSS",
        format!("{rss_ratio:.3}×"),
        "",
    );
}

/// A CLI invocation that can be repeated and whose output is checked.
struct CliUnderTest {
    name: &'static str,
    command: Box<dyn Fn() -> Command>,
    stdin: Vec<u8>,
    check: fn(&Setup, &ProcessRun) -> bool,
}

impl CliUnderTest {
    fn run_checked(&mut self, setup: &Setup) -> anyhow::Result<ProcessRun> {
        let run = cli::run(&(self.command)(), &self.stdin)?;
        if !run.success || !(self.check)(setup, &run) {
            bail!(
                "{} failed or answered wrongly (exit ok: {}): {}",
                self.name,
                run.success,
                run.stderr.lines().last().unwrap_or_default()
            );
        }
        Ok(run)
    }
}

/// `cloudsmith-gen generate` with a warm precompile cache in `work`.
fn cloudsmith_gen(setup: &Setup, work: &Path) -> anyhow::Result<Option<CliUnderTest>> {
    let bin = serve::cloudsmith_gen_path();
    if !bin.is_file() {
        eprintln!(
            "cloudsmith-gen not found at {} (build it: cargo build --release -p cloudsmith-gen)",
            bin.display()
        );
        return Ok(None);
    }
    let manifest = work.join("manifest.json");
    std::fs::write(&manifest, &setup.manifest)?;
    let cache = work.join("cache");
    let allow = format!("127.0.0.1:{}", setup.standin.port);
    let token = setup.oidc_token.clone();
    let command = move || {
        let mut command = Command::new(&bin);
        command
            .arg("generate")
            .arg("--manifest")
            .arg(&manifest)
            .args(["--namespace", NAMESPACE, "--allow-http", "--allow-host", &allow])
            // The same token source as the official CLI's: an environment variable.
            .args(["--oidc-token-env", "CLOUDSMITH_OIDC_TOKEN"])
            .env("CLOUDSMITH_OIDC_TOKEN", &token)
            .arg("--cache-dir")
            .arg(&cache)
            .env_remove("RUST_LOG");
        command
    };
    Ok(Some(CliUnderTest {
        name: "cloudsmith-gen",
        command: Box::new(command),
        stdin: Vec::new(),
        check: |setup, run| run.stdout.contains(&setup.expected_auth),
    }))
}

/// The official CLI's Docker credential helper, configured for the stand-in
/// through its documented environment variables.
fn official_cli(setup: &Setup, work: &Path) -> Option<CliUnderTest> {
    let bin = std::env::var_os("CLOUDSMITH_CLI").map(PathBuf::from)?;
    let home = work.join("home");
    let url = setup.standin.url.clone();
    let token = setup.oidc_token.clone();
    let command = move || benchmarks::doors::official_helper_command(&bin, &home, &url, &token);
    Some(CliUnderTest {
        name: "cloudsmith credential-helper docker",
        command: Box::new(command),
        stdin: testkit::cloudsmith::REGISTRY.as_bytes().to_vec(),
        check: |setup, run| run.stdout.contains(&setup.expected_access_token),
    })
}

/// Median wall time of `repeats` runs of `f`.
fn time_median(repeats: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed());
    }
    Ok(median(&times))
}

/// A fresh private directory under the system temp dir.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cloudsmith-bench-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
