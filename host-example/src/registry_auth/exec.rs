//! Running credential helpers, as docker-credential-helpers' client does.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::config::{first_json_value, go_string, member};
use super::{AuthError, CredentialHelpers, DEFAULT_HELPER_TIMEOUT, HELPER_PREFIX, MAX_HELPER_OUTPUT_BYTES};
use crate::secret::{one_line, shown, Secret};
use cloudsmith_gen_core::docker::NOT_FOUND;

/// Runs credential helper programs (`docker-credential-NAME get`) found on a search path,
/// as docker-credential-helpers' client/client.go `Get` does: the server on stdin, the
/// answer on stdout, stderr passed through to ours (a helper may print a login hint
/// there), the process's environment. Unlike Docker's client, it waits at most a timeout
/// (then kills the helper) and reads at most [`MAX_HELPER_OUTPUT_BYTES`].
#[derive(Debug, Clone)]
pub struct ExecHelpers {
    search_path: OsString,
    timeout: Duration,
    /// Variables removed from one helper's environment: (helper, variable).
    removed: Vec<(String, OsString)>,
}

impl ExecHelpers {
    /// Helpers found on `search_path` (`PATH`'s syntax), waited for at most
    /// [`DEFAULT_HELPER_TIMEOUT`].
    pub fn new(search_path: impl Into<OsString>) -> Self {
        ExecHelpers {
            search_path: search_path.into(),
            timeout: DEFAULT_HELPER_TIMEOUT,
            removed: Vec::new(),
        }
    }

    /// Helpers found on this process's `PATH` (none when it is unset, as in Go).
    pub fn from_process() -> Self {
        Self::new(std::env::var_os("PATH").unwrap_or_default())
    }

    /// Waits at most `timeout` for each helper.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs `helper` without the variable `var`: the host runs its own helper without the
    /// variable that would make it fetch the component being fetched.
    pub fn without_env_for(mut self, helper: &str, var: &str) -> Self {
        self.removed.push((helper.to_string(), var.into()));
        self
    }

    /// The program of `helper` (`docker-credential-<helper>`) on the search path.
    pub fn find(&self, helper: &str) -> Option<PathBuf> {
        // A name with a path separator would make Go's exec run it relative to the working
        // directory; a config file's helper name is a name, not a path.
        if helper.is_empty() || helper.contains(['/', '\\', '\0']) {
            return None;
        }
        self.find_program(&format!("{HELPER_PREFIX}{helper}"))
    }

    /// Go's `exec.LookPath`: the first regular, executable file `name` in a directory of
    /// the search path. Relative directories (an empty entry is `.`) are skipped, where Go
    /// refuses the result (`exec.ErrDot`): never a helper from the working directory.
    fn find_program(&self, name: &str) -> Option<PathBuf> {
        std::env::split_paths(&self.search_path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(name))
            .find(|path| is_executable(path))
    }

    /// The platform's default helper, when its program is on the search path
    /// (credentials/default_store.go `DetectDefaultStore` and `defaultCredentialsStore`:
    /// `pass` on Linux when the `pass` program is found, else `secretservice`;
    /// `osxkeychain` on macOS; `wincred` on Windows; none elsewhere).
    pub fn default_store(&self) -> Option<&'static str> {
        let store = if cfg!(target_os = "linux") {
            if self.find_program("pass").is_some() {
                "pass"
            } else {
                "secretservice"
            }
        } else if cfg!(target_os = "macos") {
            "osxkeychain"
        } else if cfg!(windows) {
            "wincred"
        } else {
            return None;
        };
        self.find(store).map(|_| store)
    }
}

impl CredentialHelpers for ExecHelpers {
    fn get(&self, helper: &str, server: &str) -> Result<Option<(String, Secret)>, AuthError> {
        let name = format!("{HELPER_PREFIX}{helper}");
        let fail = |why: String| {
            AuthError::Helper(format!(
                "credential helper {} for {}: {why}",
                shown(&name),
                shown(server)
            ))
        };
        let program = self
            .find(helper)
            .ok_or_else(|| fail("not found on PATH".into()))?;
        let removed = self
            .removed
            .iter()
            .filter(|(h, _)| h == helper)
            .map(|(_, var)| var.as_os_str());
        let (status, stdout) = run_get(&program, &name, server, self.timeout, removed).map_err(fail)?;
        answer(status, &stdout).map_err(fail)
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// How often the exit status is polled once stdout has closed (the exit follows at once).
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(20);

/// Runs `program get` with `server` on stdin; its exit status and stdout, or why not (one
/// line, no output).
fn run_get<'a>(
    program: &Path,
    name: &str,
    server: &str,
    timeout: Duration,
    removed: impl Iterator<Item = &'a std::ffi::OsStr>,
) -> Result<(ExitStatus, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let mut command = Command::new(program);
    for var in removed {
        command.env_remove(var);
    }
    command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // client/command.go runs the name, not the path: argv[0] is `docker-credential-NAME`,
    // which a multi-call program (ours among them) dispatches on.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::arg0(&mut command, name);
    let mut child = command.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    let timed_out = || format!("no answer within {}", seconds(timeout));

    // client/client.go Get: the server on stdin, with no newline, then end of input. From
    // a thread, so that a helper that never reads cannot block us past the deadline.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let server = server.to_string();
    thread::spawn(move || {
        // A helper that exits without reading breaks the pipe: its exit status tells why.
        let _ = stdin.write_all(server.as_bytes());
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(cloudsmith_gen_core::read_bounded(
            stdout,
            MAX_HELPER_OUTPUT_BYTES,
            "its output",
        ));
    });
    // Stdout closes when the helper exits. A process the helper started that keeps it open
    // outlives the deadline only in that thread, which ends when that process does.
    let stdout = match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            kill(&mut child);
            return Err(e.to_string());
        }
        Err(_) => {
            kill(&mut child);
            return Err(timed_out());
        }
    };
    let mut poll = FIRST_POLL;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok((status, stdout)),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(poll);
                poll = (poll * 2).min(MAX_POLL);
            }
            Ok(None) => {
                kill(&mut child);
                return Err(timed_out());
            }
            Err(e) => {
                kill(&mut child);
                return Err(format!("waiting for it: {e}"));
            }
        }
    }
}

/// Kills the helper and reaps it. What it started itself lives on: helpers run in our
/// process group, as Docker runs them, so that Ctrl-C reaches them with us and one that
/// asks something on the terminal can read it; a group of their own would let this kill
/// them whole, at the cost of both.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `1s`, `1.5s`.
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

/// A finished `get`'s answer (client/client.go `Get`).
pub(super) fn answer(status: ExitStatus, stdout: &[u8]) -> Result<Option<(String, Secret)>, String> {
    let text = String::from_utf8_lossy(stdout);
    if !status.success() {
        // credentials/error.go IsErrCredentialsNotFoundMessage: a failed `get` whose
        // stdout, trimmed, is exactly the not-found message has no credentials.
        if text.trim() == NOT_FOUND {
            return Ok(None);
        }
        // A helper prints its error on stdout (credentials/credentials.go Serve): a
        // message, shown cut and redacted; but never what looks like an answer.
        let message = one_line(&text, 200);
        return Err(if message.is_empty() {
            format!("failed ({status})")
        } else if message.starts_with('{') {
            format!("failed ({status}), printing JSON")
        } else {
            format!("failed ({status}): {message}")
        });
    }
    // The output of a successful `get` is credentials: no error below quotes any of it,
    // nor serde's messages, which would.
    let text = std::str::from_utf8(stdout).map_err(|_| "printed an answer that is not UTF-8".to_string())?;
    // json.NewDecoder(...).Decode into Credentials: the first JSON value, the fields
    // ServerURL, Username and Secret matched ignoring case, others ignored; `null` and
    // missing fields are empty. No output at all is Go's io.EOF, an error.
    let object = match first_json_value(text) {
        Ok(None) => return Err("printed nothing".into()),
        Err(_) => return Err("printed an answer that is not JSON".into()),
        Ok(Some(Value::Null)) => Map::new(),
        Ok(Some(Value::Object(object))) => object,
        Ok(Some(_)) => return Err("printed an answer that is not a JSON object".into()),
    };
    let field = |name: &str| {
        go_string(member(&object, name)).ok_or_else(|| format!("printed a `{name}` that is not a string"))
    };
    field("ServerURL")?;
    Ok(Some((field("Username")?, Secret::new(field("Secret")?))))
}
