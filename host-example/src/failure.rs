//! Why a command failed, classified for its exit code.
//!
//! The bottom layer of the binary: setup, the mint port and every door return a
//! [`Failure`], and only `main` turns one into the process's exit (one `error:` line
//! and [`Failure::exit_code`]). `serve` maps the same classification to HTTP statuses.

use cloudsmith_gen::oci::OciError;
use cloudsmith_gen::{Error, GenerateError, HostError};

/// The exit codes, for `--help`. docs/cli.md's table gives the same meanings and names
/// the classes of each; the tests below hold the two to [`Failure::exit_code`].
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other failure (writing output, runtime)
  2  usage or invalid input (arguments, manifest, spec, component file)
  3  token source failed (file, variable, Kubernetes TokenRequest)
  4  refused by the outbound policy (host not allowed, plain http)
  5  Cloudsmith refused the exchange (401/403 credentials, other 4xx)
  6  Cloudsmith rate limit (429)
  7  upstream or transport failure after retries (5xx, connect, TLS, timeout)
  8  Cloudsmith answered success without a usable token
  9  sandbox limit or crash (deadline, memory limit, trap, bad outputs)
 10  the component's registry failed: refused, not found, unreachable, or an artifact
     that is not the pinned Wasm component (digest, media type, size, core module)
On failure stderr holds one line: `error: <cause>`.";

/// Longest `error:` line kept: enough for a path and a cause, short of a flood.
const MAX_MESSAGE_CHARS: usize = 600;

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments, configuration, manifest, component file or protocol input.
    Usage(anyhow::Error),
    /// The call failed.
    Call(Error),
    /// Anything else: writing the output, starting the runtime.
    Other(anyhow::Error),
    /// The whole call ran past a door's bound (the kubelet provider's `--deadline`).
    OutOfTime(String),
    /// Fetching the component from its registry (or pushing it) failed.
    Registry(OciError),
}

impl Failure {
    /// A usage failure with this message.
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Failure::Usage(anyhow::anyhow!("{message}"))
    }

    /// A token-source failure with this message (exit 3), for a door that finds no
    /// token source before any call.
    pub fn no_token_source(message: impl Into<String>) -> Self {
        Failure::Call(Error::Generate(GenerateError::TokenSource(message.into())))
    }

    /// The process's exit code (see [`EXIT_CODES`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Other(_) => 1,
            Failure::OutOfTime(_) => 9,
            Failure::Registry(_) => 10,
            Failure::Call(Error::Generate(e)) => match e {
                GenerateError::InvalidSpec(_) => 2,
                GenerateError::TokenSource(_) => 3,
                GenerateError::PolicyDenied { .. } => 4,
                GenerateError::Unauthorized(_) | GenerateError::Rejected(_) => 5,
                GenerateError::RateLimited { .. } => 6,
                GenerateError::Upstream { .. } => 7,
                GenerateError::InvalidToken(_) => 8,
            },
            Failure::Call(Error::Host(e)) => match e {
                HostError::TokenSourceUnavailable(_) => 3,
                HostError::DeadlineExceeded { .. }
                | HostError::MemoryLimitExceeded { .. }
                | HostError::SandboxLimitExceeded(_)
                | HostError::Trap(_)
                | HostError::Instantiate(_)
                | HostError::InvalidOutput(_) => 9,
            },
        }
    }

    /// The one-line message: anyhow's chain joined with `: `, folded onto one line,
    /// anything shaped like a token redacted.
    pub fn message(&self) -> String {
        let text = match self {
            Failure::Usage(e) | Failure::Other(e) => format!("{e:#}"),
            Failure::Call(e) => e.to_string(),
            Failure::OutOfTime(m) => m.clone(),
            Failure::Registry(e) => e.message().to_string(),
        };
        cloudsmith_gen::secret::one_line(&text, MAX_MESSAGE_CHARS)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use cloudsmith_gen::{Error, GenerateError, HostError, UpstreamStatus};

    use super::*;

    /// The reference page whose exit-code table must say what the code does.
    const CLI_DOCS: &str = include_str!("../../docs/cli.md");

    /// Declares every failure class once: its name in docs/cli.md's table, the pattern
    /// `class` matches, and a failure of that class. `class`'s match has no catch-all, so
    /// a new variant of `Failure`, `GenerateError` or `HostError` does not compile until
    /// it has a row here, and then the table must name it.
    macro_rules! classes {
        ($($name:literal: $pattern:pat => $sample:expr;)*) => {
            fn class(failure: &Failure) -> &'static str {
                match failure {
                    $($pattern => $name,)*
                }
            }

            fn samples() -> Vec<(&'static str, Failure)> {
                vec![$(($name, $sample)),*]
            }
        };
    }

    fn generate(e: GenerateError) -> Failure {
        Failure::Call(Error::Generate(e))
    }

    fn host(e: HostError) -> Failure {
        Failure::Call(Error::Host(e))
    }

    fn status(code: u16) -> UpstreamStatus {
        UpstreamStatus {
            status: code,
            detail: "detail".into(),
            token: None,
        }
    }

    classes! {
        "usage": Failure::Usage(_) => Failure::usage("bad flag");
        "other": Failure::Other(_) => Failure::Other(anyhow::anyhow!("stdout closed"));
        "out-of-time": Failure::OutOfTime(_) => Failure::OutOfTime("late".into());
        "registry": Failure::Registry(_) => Failure::Registry(OciError::NotFound("gone".into()));
        "invalid-spec": Failure::Call(Error::Generate(GenerateError::InvalidSpec(_)))
            => generate(GenerateError::InvalidSpec("orgSlug".into()));
        "token-source": Failure::Call(Error::Generate(GenerateError::TokenSource(_)))
            => Failure::no_token_source("none");
        "policy-denied": Failure::Call(Error::Generate(GenerateError::PolicyDenied { .. }))
            => generate(GenerateError::PolicyDenied { message: "denied".into(), host_reason: None });
        "unauthorized": Failure::Call(Error::Generate(GenerateError::Unauthorized(_)))
            => generate(GenerateError::Unauthorized(status(401)));
        "rejected": Failure::Call(Error::Generate(GenerateError::Rejected(_)))
            => generate(GenerateError::Rejected(status(404)));
        "rate-limited": Failure::Call(Error::Generate(GenerateError::RateLimited { .. }))
            => generate(GenerateError::RateLimited { retry_after_seconds: Some(1), detail: String::new() });
        "upstream": Failure::Call(Error::Generate(GenerateError::Upstream { .. }))
            => generate(GenerateError::Upstream { status: Some(503), detail: "down".into(), attempts: 4, host_note: None });
        "invalid-token": Failure::Call(Error::Generate(GenerateError::InvalidToken(_)))
            => generate(GenerateError::InvalidToken("no exp".into()));
        "token-source-unavailable": Failure::Call(Error::Host(HostError::TokenSourceUnavailable(_)))
            => host(HostError::TokenSourceUnavailable("slow API server".into()));
        "deadline-exceeded": Failure::Call(Error::Host(HostError::DeadlineExceeded { .. }))
            => host(HostError::DeadlineExceeded { deadline: Duration::from_secs(90) });
        "memory-limit-exceeded": Failure::Call(Error::Host(HostError::MemoryLimitExceeded { .. }))
            => host(HostError::MemoryLimitExceeded { limit_bytes: 64 << 20 });
        "sandbox-limit-exceeded": Failure::Call(Error::Host(HostError::SandboxLimitExceeded(_)))
            => host(HostError::SandboxLimitExceeded("too many tables".into()));
        "trap": Failure::Call(Error::Host(HostError::Trap(_))) => host(HostError::Trap("unreachable".into()));
        "instantiate": Failure::Call(Error::Host(HostError::Instantiate(_)))
            => host(HostError::Instantiate("missing import".into()));
        "invalid-output": Failure::Call(Error::Host(HostError::InvalidOutput(_)))
            => host(HostError::InvalidOutput("no auth".into()));
    }

    /// One row of the exit-code table: the meaning and the classes.
    #[derive(Debug, PartialEq)]
    struct Row {
        meaning: String,
        classes: BTreeSet<String>,
    }

    /// The table under docs/cli.md's "## Exit codes": `| code | meaning | classes |`.
    fn documented() -> BTreeMap<u8, Row> {
        let section = CLI_DOCS
            .split_once("\n## Exit codes\n")
            .expect("docs/cli.md has a section \"## Exit codes\"")
            .1;
        let mut rows = BTreeMap::new();
        for line in section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
        {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [code, meaning, classes] = cells[..] else {
                panic!("docs/cli.md: an exit-code row without three cells: {line}");
            };
            let code: u8 = code
                .parse()
                .unwrap_or_else(|_| panic!("docs/cli.md: {code:?} is not an exit code"));
            let classes = classes
                .split(',')
                .map(|c| c.trim().trim_matches('`').to_string())
                .filter(|c| !c.is_empty())
                .collect();
            let row = Row {
                meaning: meaning.to_string(),
                classes,
            };
            assert!(
                rows.insert(code, row).is_none(),
                "docs/cli.md: exit code {code} twice"
            );
        }
        rows
    }

    /// `EXIT_CODES`, what `--help` prints: code → meaning, continuation lines joined.
    fn help() -> BTreeMap<u8, String> {
        let mut codes: BTreeMap<u8, String> = BTreeMap::new();
        let mut last = None;
        for line in EXIT_CODES.lines().skip(1) {
            let trimmed = line.trim();
            let (head, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
            match head.parse::<u8>() {
                Ok(code) => {
                    codes.insert(code, rest.trim().to_string());
                    last = Some(code);
                }
                // An indented line continues the previous code's meaning.
                Err(_) if line.starts_with("    ") => {
                    let code = last.expect("a continuation line follows a code");
                    let meaning = codes.get_mut(&code).expect("that code's meaning");
                    meaning.push(' ');
                    meaning.push_str(trimmed);
                }
                Err(_) => last = None,
            }
        }
        codes
    }

    #[test]
    fn the_documented_exit_codes_are_the_codes_help_prints() {
        let documented: BTreeMap<u8, String> = documented()
            .into_iter()
            .map(|(code, row)| (code, row.meaning))
            .collect();
        assert_eq!(
            documented,
            help(),
            "docs/cli.md's exit-code table and EXIT_CODES (--help) must list the same codes, \
             with the same meanings"
        );
    }

    #[test]
    fn every_failure_class_exits_with_its_documented_code() {
        let documented = documented();
        let mut in_code: BTreeMap<u8, BTreeSet<String>> = BTreeMap::new();
        for (name, failure) in samples() {
            assert_eq!(class(&failure), name, "the sample of {name} is of another class");
            in_code
                .entry(failure.exit_code())
                .or_default()
                .insert(name.to_string());
        }
        let in_docs: BTreeMap<u8, BTreeSet<String>> = documented
            .into_iter()
            .filter(|(_, row)| !row.classes.is_empty())
            .map(|(code, row)| (code, row.classes))
            .collect();
        assert_eq!(
            in_docs, in_code,
            "docs/cli.md's exit-code table (left) must name each failure class at the code \
             Failure::exit_code gives it (right)"
        );
        assert!(
            !in_code.contains_key(&0),
            "no failure may exit 0: {:?}",
            in_code.get(&0)
        );
    }

    #[test]
    fn messages_are_one_line_without_tokens() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let f = Failure::Usage(anyhow::anyhow!("inner\n{jwt}").context("outer"));
        assert_eq!(f.message(), "outer: inner [redacted]");
        assert_eq!(f.exit_code(), 2);
        assert_eq!(Failure::no_token_source("none").exit_code(), 3);
        assert_eq!(Failure::OutOfTime("late".into()).exit_code(), 9);
    }
}
