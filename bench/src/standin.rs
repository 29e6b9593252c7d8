//! The stand-in Cloudsmith on a thread of its own, so that its work can be
//! told apart from the clients' (its CPU time is read on its thread) and so
//! that it keeps answering while the bench blocks on a child process.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use testkit::cloudsmith::{StandIn, StandInConfig};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A running stand-in; dropping it stops the server and joins its thread.
pub struct StandInThread {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The port it listens on.
    pub port: u16,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StandInThread {
    /// Starts a default stand-in on a single-threaded runtime on a new thread.
    pub fn start() -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("stand-in".into())
            .spawn(move || serve(ready_tx, stop_rx))?;
        let (url, port, handle) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the stand-in did not start")??;
        Ok(StandInThread {
            url,
            port,
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// CPU time the stand-in's thread has used so far.
    pub async fn cpu_time(&self) -> Duration {
        // A task on the stand-in's single-threaded runtime runs on its thread.
        self.handle
            .spawn(async { thread_cpu_time() })
            .await
            .unwrap_or_default()
    }
}

impl Drop for StandInThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Ready = anyhow::Result<(String, u16, Handle)>;

fn serve(ready: mpsc::Sender<Ready>, stop: oneshot::Receiver<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    runtime.block_on(async move {
        match StandIn::start(StandInConfig::default()).await {
            Ok(standin) => {
                let _ = ready.send(Ok((standin.url(), standin.port(), Handle::current())));
                let _ = stop.await;
                drop(standin);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    });
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
