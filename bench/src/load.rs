//! A closed-loop load driver: `concurrency` tasks each run calls back to back
//! until `calls` have been made, recording every call's latency.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::standin::{process_cpu_time, StandInThread};

/// The outcome of one load run.
#[derive(Debug, Clone)]
pub struct LoadRun {
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Every call's latency, sorted ascending.
    pub latencies: Vec<Duration>,
    /// Wall time from the first call's start to the last call's end.
    pub wall: Duration,
    /// CPU time the bench process spent outside the stand-in's thread: the
    /// clients' cost (runtime, HTTP, and for the component wasmtime and the guest).
    pub client_cpu: Duration,
}

impl LoadRun {
    /// The `q`-quantile latency (nearest rank), e.g. `0.5`, `0.99`.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }

    /// Completed calls per second.
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    /// Client CPU time per call.
    pub fn cpu_per_call(&self) -> Duration {
        self.client_cpu / self.latencies.len().max(1) as u32
    }

    /// Merges another run at the same concurrency (rounds of one runner).
    pub fn merge(mut self, other: LoadRun) -> LoadRun {
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
        self.wall += other.wall;
        self.client_cpu += other.client_cpu;
        self
    }
}

/// The `q`-quantile of sorted `values` (nearest rank); zero when empty.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `calls` calls of `op` with `concurrency` tasks on the current tokio
/// runtime. Fails on the first failed call: a benchmark of failures is not one.
pub async fn run<F, Fut>(
    standin: &StandInThread,
    concurrency: usize,
    calls: usize,
    op: F,
) -> anyhow::Result<LoadRun>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(calls)));
    let (cpu_before, server_before) = (process_cpu_time(), standin.cpu_time().await);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(op.clone(), next.clone(), calls, latencies.clone())))
        .collect();
    for worker in workers {
        worker.await??;
    }
    let wall = started.elapsed();
    let server_cpu = standin.cpu_time().await.saturating_sub(server_before);
    let client_cpu = process_cpu_time()
        .saturating_sub(cpu_before)
        .saturating_sub(server_cpu);
    let mut latencies = std::mem::take(&mut *latencies.lock().expect("latencies lock"));
    latencies.sort_unstable();
    Ok(LoadRun {
        concurrency,
        latencies,
        wall,
        client_cpu,
    })
}

async fn worker<F, Fut>(
    op: Arc<F>,
    next: Arc<AtomicUsize>,
    calls: usize,
    latencies: Arc<Mutex<Vec<Duration>>>,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut mine = Vec::new();
    while next.fetch_add(1, Ordering::Relaxed) < calls {
        let started = Instant::now();
        op().await?;
        mine.push(started.elapsed());
    }
    latencies.lock().expect("latencies lock").extend(mine);
    Ok(())
}
