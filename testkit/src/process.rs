//! Running a program with a time bound, and checking its output for secrets.

use std::process::Stdio;
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
