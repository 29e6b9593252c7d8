//! Running a CLI as a child process and measuring it as an operator would:
//! wall time from spawn to exit, and the child's own peak resident set size.
//!
//! The peak RSS comes from GNU time (`/usr/bin/time -f %M`), not from our own
//! `wait4`: Linux carries a process's RSS high-water mark across `execve`, and
//! std spawns children sharing the bench's address space until the exec, so a
//! direct child's `ru_maxrss` reads at least the bench's own RSS (about 65 MiB
//! here, whatever the CLI). GNU time's child is forked from a 2 MiB process,
//! so its figure is the CLI's own.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A child that has not exited by then is killed: benchmark loops are bounded.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// One finished run of a child process.
#[derive(Debug, Clone)]
pub struct ProcessRun {
    /// From spawn until the child was reaped.
    pub wall: Duration,
    /// The child's peak resident set size (`ru_maxrss`), in KiB.
    pub max_rss_kib: u64,
    /// Whether it exited with status 0.
    pub success: bool,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// GNU time, which reports its child's peak RSS.
const GNU_TIME: &str = "/usr/bin/time";

/// Runs `command` under GNU time, feeding it `stdin`, and measures it.
pub fn run(command: &Command, stdin: &[u8]) -> anyhow::Result<ProcessRun> {
    let rss_file = std::env::temp_dir().join(format!("bench-maxrss-{}", std::process::id()));
    let mut timed = under_time(command, &rss_file);
    let mut run = run_direct(&mut timed, stdin)?;
    let rss = std::fs::read_to_string(&rss_file).with_context(|| format!("{GNU_TIME} wrote no figure"))?;
    // With a non-zero exit GNU time writes a "Command exited" line first.
    run.max_rss_kib = rss
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("GNU time's %M is not a number")?;
    let _ = std::fs::remove_file(&rss_file);
    Ok(run)
}

/// `command` wrapped as `/usr/bin/time -f %M -o FILE program args...`, with
/// the same environment changes and working directory.
fn under_time(command: &Command, rss_file: &std::path::Path) -> Command {
    let mut timed = Command::new(GNU_TIME);
    timed
        .args(["-f", "%M", "-o"])
        .arg(rss_file)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    timed
}

/// Runs `command` directly, feeding it `stdin`; `max_rss_kib` is the direct
/// child's `ru_maxrss` (see the module docs for why that overstates).
pub fn run_direct(command: &mut Command, stdin: &[u8]) -> anyhow::Result<ProcessRun> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("spawning {:?}", command.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let watchdog = watchdog(pid);
    if let Some(mut input) = child.stdin.take() {
        // A child that exits without reading closes the pipe: not our failure.
        let _ = input.write_all(stdin);
    }
    let mut stderr_pipe = child.stderr.take().context("stderr is piped")?;
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("stdout is piped")?
        .read_to_string(&mut stdout)?;
    let (status, max_rss_kib) = wait4(pid)?;
    let wall = started.elapsed();
    let _ = watchdog.send(());
    Ok(ProcessRun {
        wall,
        max_rss_kib,
        success: status == 0,
        stdout,
        stderr: stderr_reader.join().unwrap_or_default(),
    })
}

/// Kills `pid` unless told to stand down within [`CHILD_TIMEOUT`].
fn watchdog(pid: libc::pid_t) -> mpsc::Sender<()> {
    let (done, wait) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if wait.recv_timeout(CHILD_TIMEOUT) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    done
}

/// Reaps `pid` and returns its exit status (or 128 + signal) and its own
/// `ru_maxrss`. `getrusage(RUSAGE_CHILDREN)` would give the maximum over every
/// child so far, which mixes the two CLIs; wait4 gives this child's.
fn wait4(pid: libc::pid_t) -> anyhow::Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid for writes; `pid` is our child,
    // which std's `Child` will not wait for again (it is only dropped).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        bail!("wait4({pid}) failed: {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    // Linux reports ru_maxrss in KiB.
    Ok((code, usage.ru_maxrss.max(0) as u64))
}

/// Median of `values` (upper median for an even count); zero when empty.
pub fn median<T: Ord + Copy + Default>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}
