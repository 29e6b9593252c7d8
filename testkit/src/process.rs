//! Running a program with a time bound, starting a server and waiting for its
//! "listening" line ([`Listening`]), and checking output for secrets.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// What a finished program left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Standard output, as UTF-8 (lossy).
    pub stdout: String,
    /// Standard error, as UTF-8 (lossy).
    pub stderr: String,
}

impl Output {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The non-empty lines of standard error.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }

    /// Standard output parsed as JSON; panics with the output if it is not.
    pub fn stdout_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `command` with `stdin` (or none: stdin is closed), capturing stdout
/// and stderr. Fails if it does not finish within `timeout`; the process is
/// killed then, so no test leaves one behind.
pub async fn run(
    mut command: tokio::process::Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let program = format!("{:?}", command.as_std().get_program());
    let mut child = command
        .spawn()
        .map_err(|e| anyhow::anyhow!("could not start {program}: {e}"))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Write from a task so a child that does not read stdin cannot block
        // us before we start collecting its output.
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output?,
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => anyhow::bail!("{program} did not finish within {timeout:?}"),
    };
    Ok(Output {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// [`run`] for code without a tokio runtime (a private one is made for the
/// call).
pub fn run_blocking(
    command: std::process::Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(tokio::process::Command::from(command), stdin, timeout))
}

/// [`run_blocking`] without stdin for a step that must succeed: panics with
/// `what`, the exit code and both outputs otherwise.
pub fn expect_success(what: &str, command: std::process::Command, timeout: Duration) -> Output {
    let out = run_blocking(command, None, timeout).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.success(),
        "{what} failed ({:?}):\n{}{}",
        out.code,
        out.stdout,
        out.stderr
    );
    out
}

/// A server started by [`Listening::start`]: `cloudsmith-gen serve`, or anything that
/// execs it (a shell that sets a limit first, `podman run`), stopped when dropped.
///
/// The program's stderr is read from the start, line by line, on a thread of its own
/// until the program closes it: the first JSON line with `"msg": "listening"` gives
/// [`addr`](Listening::addr) (its `address`), and every line is kept as the program's
/// log ([`logs`](Listening::logs), [`log_json`](Listening::log_json)), so a test can
/// check what was logged and the program never blocks on a full pipe. A soak that logs
/// a line per call can stop keeping them ([`forget_log`](Listening::forget_log)); they
/// are still read. Stdin and stdout are closed.
///
/// Dropped, the program is killed (SIGKILL) and reaped, unless
/// [`terminate_on_drop`](Listening::terminate_on_drop) asked for SIGTERM (podman forwards
/// that to its container; a SIGKILL would leave the container running).
pub struct Listening {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    keep_log: Arc<AtomicBool>,
    terminate_on_drop: bool,
    exited: Option<ExitStatus>,
}

/// Why [`Listening::try_start`] has no server: the program could not be started, exited,
/// or did not say it listens within the bound (it is killed then).
#[derive(Debug)]
pub struct NotListening {
    /// What happened, with the program's name.
    pub reason: String,
    /// Everything the program wrote to stderr.
    pub log: String,
}

impl std::fmt::Display for NotListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; its log:\n{}", self.reason, self.log)
    }
}

impl std::error::Error for NotListening {}

/// How long [`Listening::start`] waits for the listening line: a first start compiles the
/// component (minutes in a debug build on a busy machine).
pub const LISTENING_TIMEOUT: Duration = Duration::from_secs(300);

impl Listening {
    /// Starts `command` and waits up to [`LISTENING_TIMEOUT`] for its listening line;
    /// panics with the program's log if there is none.
    pub fn start(command: std::process::Command) -> Listening {
        Listening::try_start(command, LISTENING_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `command` and waits up to `timeout` for its listening line. The program is
    /// killed and reaped before an error is returned.
    pub fn try_start(
        mut command: std::process::Command,
        timeout: Duration,
    ) -> Result<Listening, NotListening> {
        let program = format!("{:?}", command.get_program());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NotListening {
                reason: format!("could not start {program}: {e}"),
                log: String::new(),
            })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep_log = Arc::new(AtomicBool::new(true));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn({
            let (log, keep_log) = (log.clone(), keep_log.clone());
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let address = listening_address(&line);
                    if keep_log.load(Ordering::Relaxed) {
                        log.lock().unwrap().push(line);
                    }
                    if let Some(address) = address {
                        let _ = tx.send(Some(address));
                    }
                }
                // Closed stderr: the program is gone (or closed it without listening).
                let _ = tx.send(None);
            }
        });
        let failed = |mut child: Child, reason: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(NotListening {
                reason,
                log: log.lock().unwrap().join("\n"),
            })
        };
        match rx.recv_timeout(timeout) {
            Ok(Some(address)) => match address.parse() {
                Ok(addr) => Ok(Listening {
                    child,
                    addr,
                    log,
                    keep_log,
                    terminate_on_drop: false,
                    exited: None,
                }),
                Err(e) => failed(child, format!("{program} listens on {address:?}: {e}")),
            },
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                failed(child, format!("{program} closed stderr without listening"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => failed(
                child,
                format!("{program} did not say it listens within {timeout:?}"),
            ),
        }
    }

    /// Starts the command `command` makes for a loopback address of this process's own
    /// (127.x.y.z, see [`own_loopback`]), for a server that must listen on a fixed port
    /// (ESO's Webhook URL names 8443); when the log says that address is in use, another
    /// (five tries). Panics when none starts.
    pub fn start_on_own_loopback(
        mut command: impl FnMut(std::net::Ipv4Addr) -> std::process::Command,
    ) -> Listening {
        let mut last = None;
        for _ in 0..5 {
            match Listening::try_start(command(own_loopback()), LISTENING_TIMEOUT) {
                Ok(server) => return server,
                Err(e) if e.log.contains("in use") => last = Some(e),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free loopback address: {}", last.expect("five tries"));
    }

    /// `cloudsmith-gen serve` as the soaks run it ([`crate::tools::cloudsmith_gen`]:
    /// `CLOUDSMITH_GEN`, a release build say, else the one cargo built): on 127.0.0.1 at a
    /// port the OS picks, no per-caller rate limit, no compiled-component cache, plain
    /// http to `allow_host`, with `kubeconfig`, `manifest` and `extra` flags. Its log line
    /// per call is read, not kept ([`forget_log`](Listening::forget_log)).
    pub fn soak_serve(
        kubeconfig: &std::path::Path,
        manifest: &std::path::Path,
        allow_host: &str,
        extra: &[String],
    ) -> Listening {
        let binary = crate::tools::cloudsmith_gen();
        println!("serve: {}", binary.display());
        let mut command = std::process::Command::new(&binary);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "0"])
            .args(["--allow-http", "--no-cache", "--allow-host", allow_host])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--manifest")
            .arg(manifest)
            .args(extra);
        let server = Listening::start(command);
        server.forget_log();
        server
    }

    /// SIGTERM instead of SIGKILL when dropped (and a wait for the exit).
    pub fn terminate_on_drop(mut self) -> Listening {
        self.terminate_on_drop = true;
        self
    }

    /// The address of the listening line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (`VmRSS` of `/proc/<pid>/status`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }

    /// Waits for every task of `tasks` (callers that count the calls they finished in
    /// `done`), sampling [`rss_bytes`](Listening::rss_bytes) when `done` reaches each of
    /// `marks` (ascending; a mark not reached is sampled once the tasks are done). Prints
    /// each sample after `label`; returns them, one per mark. A task's panic is raised
    /// here.
    pub async fn rss_at_marks(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        done: &std::sync::atomic::AtomicUsize,
        marks: &[usize],
        label: &str,
    ) -> Vec<u64> {
        let started = std::time::Instant::now();
        let mut samples = Vec::new();
        let mut marks = marks.iter().copied().peekable();
        while let Some(&mark) = marks.peek() {
            if done.load(Ordering::Relaxed) >= mark || tasks.is_empty() {
                let rss = self.rss_bytes();
                println!(
                    "{label}: after {:>6} calls ({:>6.1}s): server RSS {:>6.1} MiB",
                    done.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64(),
                    rss as f64 / 1048576.0
                );
                samples.push(rss);
                marks.next();
                continue;
            }
            tokio::select! {
                joined = tasks.join_next() => { if let Some(r) = joined { r.expect("client task") } }
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("client task");
        }
        samples
    }

    /// Stops keeping log lines (they are still read and dropped); what was kept stays.
    pub fn forget_log(&self) {
        self.keep_log.store(false, Ordering::Relaxed);
    }

    /// The log so far, one line per line.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log so far, each line as JSON; panics on a line that is not.
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}")))
            .collect()
    }

    /// Sends `signal` (a name `kill` knows: `TERM`, `KILL`, `HUP`…) and waits for the exit.
    pub fn stop(&mut self, signal: &str) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} {}", self.child.id());
        let status = self.child.wait().expect("wait for the exit");
        self.exited = Some(status);
        status
    }

    /// The exit status, if the program has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if self.terminate_on_drop {
            let _ = self.stop("TERM");
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A soak's number of calls: `SOAK_CALLS` when set (and a number), else `default`.
pub fn soak_calls(default: usize) -> usize {
    std::env::var("SOAK_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A loopback address (127.x.y.z, never 127.0.0.1) drawn at random, so a fixed port is
/// most likely free on it even while other test processes use the same port.
pub fn own_loopback() -> std::net::Ipv4Addr {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let n = h.finish();
    std::net::Ipv4Addr::new(
        127,
        1 + (n % 250) as u8,
        (n >> 8) as u8,
        1 + ((n >> 16) % 250) as u8,
    )
}

/// The `address` of a JSON log line whose `msg` is `listening`.
fn listening_address(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["msg"] == "listening").then(|| v["address"].as_str().unwrap_or_default().to_string())
}

/// Panics if any of `secrets` (or, for a JWT, its payload or signature
/// alone) appears in any of `haystacks`. Empty secrets are ignored.
pub fn assert_no_secret(haystacks: &[&str], secrets: &[&str]) {
    if let Some(leak) = find_secret(haystacks, secrets) {
        panic!("{leak}");
    }
}

/// [`assert_no_secret`] without the panic: describes the first leak found
/// (naming only the secret's first characters), or `None`.
pub fn find_secret(haystacks: &[&str], secrets: &[&str]) -> Option<String> {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let mut needles = vec![*secret];
        // A client that quotes a cut-down token still leaks it: look for the
        // distinctive parts too (a JWT header is shared by many tokens).
        let parts: Vec<&str> = secret.split('.').collect();
        if parts.len() == 3 {
            needles.extend(parts[1..].iter().filter(|p| p.len() >= 16));
        }
        for (i, haystack) in haystacks.iter().enumerate() {
            if let Some(needle) = needles.iter().find(|n| haystack.contains(**n)) {
                let shown: String = needle.chars().take(12).collect();
                return Some(format!(
                    "secret leaked: output #{i} contains {shown}…:\n{haystack}"
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_captures_exit_code_stdout_stderr_and_stdin() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = run(cmd, Some(b"hello".to_vec()), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "hello");
        assert_eq!(out.stderr_lines(), ["err"]);
        assert!(!out.success());
    }

    #[tokio::test]
    async fn run_gives_up_on_a_program_that_hangs() {
        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("30");
        let err = run(cmd, None, Duration::from_millis(200)).await.unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn run_blocking_works_without_a_runtime() {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo ok"]);
        let out = run_blocking(cmd, None, Duration::from_secs(10)).unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "ok\n");
    }

    /// A shell that logs like serve: a line before, the listening line, a line after.
    fn fake_server(address: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            &format!(
                "echo '{{\"msg\":\"starting\"}}' >&2; \
                 echo '{{\"msg\":\"listening\",\"address\":\"{address}\"}}' >&2; \
                 echo '{{\"msg\":\"after\"}}' >&2; exec sleep 30"
            ),
        ]);
        cmd
    }

    #[test]
    fn listening_reads_the_address_and_keeps_the_log() {
        let mut server = Listening::start(fake_server("127.0.0.1:4321"));
        assert_eq!(server.addr(), "127.0.0.1:4321".parse().unwrap());
        assert!(server.rss_bytes() > 0);
        for _ in 0..100 {
            if server.log_json().len() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let messages: Vec<_> = server.log_json().iter().map(|l| l["msg"].clone()).collect();
        assert_eq!(messages, ["starting", "listening", "after"]);
        assert_eq!(server.exited(), None);
        let status = server.stop("TERM");
        assert!(!status.success());
        assert_eq!(server.exited(), Some(status));
    }

    #[test]
    fn listening_fails_with_the_log_of_a_program_that_exits() {
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            "echo 'error: --listen 127.0.0.1:1: address in use' >&2; exit 2",
        ]);
        let err = Listening::try_start(cmd, Duration::from_secs(30)).err().unwrap();
        assert!(err.reason.contains("without listening"), "{err}");
        assert!(err.log.contains("address in use"), "{err}");
    }

    #[test]
    fn listening_gives_up_on_a_program_that_never_listens() {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        let err = Listening::try_start(cmd, Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(err.reason.contains("did not say it listens"), "{err}");
    }

    #[test]
    fn find_secret_names_the_leak_without_panicking() {
        let leak = find_secret(&["ok", "token=abcdefghijklmnop"], &["abcdefghijklmnop"]).unwrap();
        assert!(
            leak.starts_with("secret leaked: output #1 contains abcdefghijkl…"),
            "{leak}"
        );
        assert_eq!(find_secret(&["ok"], &["abcdefghijklmnop"]), None);
    }

    #[test]
    fn assert_no_secret_passes_clean_output() {
        assert_no_secret(
            &["error: 401 OIDC token cannot be authenticated"],
            &["eyJ.abc.def", ""],
        );
    }

    #[test]
    #[should_panic(expected = "secret leaked")]
    fn assert_no_secret_catches_a_whole_secret() {
        assert_no_secret(&["fine", "detail: s3cr3t-value"], &["s3cr3t-value"]);
    }

    #[test]
    #[should_panic(expected = "secret leaked")]
    fn assert_no_secret_catches_a_jwt_signature_alone() {
        let jwt = crate::oidc::token("system:serviceaccount:a:b", &["x"]);
        let signature = jwt.rsplit('.').next().unwrap();
        assert_no_secret(&[&format!("error: …{signature}")], &[&jwt]);
    }
}
