//! The stand-ins (Cloudsmith, and for `serve` the Kubernetes API) on threads of
//! their own, so that their work can be told apart from the clients' (CPU time
//! is read on their threads) and so that they keep answering while the bench
//! blocks on a child process.

use std::future::Future;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use testkit::cloudsmith::{StandIn, StandInConfig};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A running stand-in Cloudsmith; dropping it stops the server and joins its thread.
pub struct StandInThread {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The port it listens on.
    pub port: u16,
    thread: ServiceThread<StandIn>,
}

impl StandInThread {
    /// Starts a default stand-in on a single-threaded runtime on a new thread.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(StandInConfig::default())
    }

    /// Starts a stand-in with `config` (e.g. a future token `exp`, so that token
    /// caches hit) on a single-threaded runtime on a new thread.
    pub fn start_with(config: StandInConfig) -> anyhow::Result<Self> {
        let thread = ServiceThread::start("stand-in", move || StandIn::start(config))?;
        Ok(StandInThread {
            url: thread.service().url(),
            port: thread.service().port(),
            thread,
        })
    }

    /// CPU time the stand-in's thread has used so far.
    pub async fn cpu_time(&self) -> Duration {
        self.thread.cpu_time().await
    }

    /// How many exchange requests it has received so far (to prove a cache hit made none).
    pub fn requests(&self) -> usize {
        self.thread.service().requests().len()
    }

    /// The stand-in itself.
    pub fn service(&self) -> &StandIn {
        self.thread.service()
    }
}

/// A service (a stand-in, a server) running on a single-threaded tokio runtime on
/// a thread of its own: its CPU time can be read apart from the clients', and it
/// keeps answering while the bench blocks on a child process.
pub struct ServiceThread<T: Send + Sync + 'static> {
    service: Option<Arc<T>>,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + Sync + 'static> ServiceThread<T> {
    /// Runs `make` on a new thread's runtime and keeps what it built alive there
    /// until this handle is dropped.
    pub fn start<F, Fut>(name: &str, make: F) -> anyhow::Result<Self>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<(Arc<T>, Handle)>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                match make().await {
                    Ok(service) => {
                        let service = Arc::new(service);
                        let _ = ready_tx.send(Ok((service.clone(), Handle::current())));
                        let _ = stop_rx.await;
                        // The last reference may be this one: drop it on its own runtime.
                        drop(service);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })?;
        let (service, handle) = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .with_context(|| format!("{name} did not start"))??;
        Ok(ServiceThread {
            service: Some(service),
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The running service.
    pub fn service(&self) -> &T {
        self.service.as_deref().expect("present until dropped")
    }

    /// A handle to the service's runtime, to spawn work next to it.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// CPU time the service's thread has used so far.
    pub async fn cpu_time(&self) -> Duration {
        // A task on the single-threaded runtime runs on its thread.
        self.handle
            .spawn(async { thread_cpu_time() })
            .await
            .unwrap_or_default()
    }
}

impl<T: Send + Sync + 'static> Drop for ServiceThread<T> {
    fn drop(&mut self) {
        // Ours first, so the thread's is the last and the service stops on its runtime.
        self.service = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu_time() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process (all threads).
pub fn process_cpu_time() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and `id` a CPU-time clock id.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
