//! `docker-credential-cloudsmith`: the Docker credential helper's warm path, as a binary
//! that links no wasmtime.
//!
//! Every image pull runs the helper once per registry, and nearly every run is a cache
//! hit. `cloudsmith-gen` answers a hit too, but it is a 25 MB PIE whose start alone
//! (relocating its image) costs twice what `cat` of the cache entry costs. This binary
//! links only `host-core`, so it starts like `cat`:
//! - `get` for a registry that is not ours: the protocol's "not found", at once;
//! - `get` with a usable token in the cache: the answer, from the one file read;
//! - anything else (a miss, an error to report, another action): it hands the call to
//!   `cloudsmith-gen` beside it, which it execs in its place, as
//!   `docker-credential-cloudsmith` (so that binary speaks the helper protocol) with
//!   the same arguments and the same stdin.
//!
//! Both read the environment, key the cache, write the answer and report a failure
//! through [`cloudsmith_gen_core::docker`], so they cannot disagree.

use std::ffi::OsString;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use cloudsmith_gen_core::docker::{self, HelperCall, HelperEnv, HELPER_NAME, MAX_INPUT_BYTES};
use cloudsmith_gen_core::token_cache::{CacheKey, Lookup, TokenCache};

/// The full host, expected in this binary's directory.
const FULL: &str = "cloudsmith-gen";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.len() != 1 || args[0] != "get" {
        return hand_off(&args, None);
    }
    // One more byte than allowed, so the full helper sees an oversized input as such.
    let mut input = Vec::new();
    if std::io::stdin()
        .lock()
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut input)
        .is_err()
    {
        return hand_off(&args, Some(&input));
    }
    match docker::warm_get(&input, &HelperEnv::from_process(), cached) {
        Some(reply) => {
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{}", reply.stdout).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::from(reply.exit),
                Err(e) => fail(&format!("writing to stdout: {e}")),
            }
        }
        None => hand_off(&args, Some(&input)),
    }
}

/// The cached token for `call`, as `cloudsmith-gen`'s mint port keys it.
fn cached(call: &HelperCall) -> Option<cloudsmith_gen_core::token_cache::CachedToken> {
    let cache = TokenCache::configured(true, None)?;
    let key = CacheKey::for_call(&call.manifest, &call.tokens.identity()?, false)?;
    match cache.get(&key) {
        Lookup::Hit(token) => Some(token),
        Lookup::Miss | Lookup::Unusable(_) => None,
    }
}

/// Execs `cloudsmith-gen` as the helper, with `args`, and with `input` as its stdin when
/// this process has read its own (else the same stdin). Returns only on failure.
fn hand_off(args: &[OsString], input: Option<&[u8]>) -> ExitCode {
    let full = match full_host() {
        Some(path) => path,
        None => {
            return fail(&format!(
                "{FULL} not found beside this {HELPER_NAME}: it answers every call but a cache hit; \
                 install both in one directory (cloudsmith-gen install docker-credential-helper)"
            ))
        }
    };
    let mut command = Command::new(&full);
    command.arg0(HELPER_NAME).args(args);
    if let Some(input) = input {
        // A file, not a pipe: a pipe this process fills before exec must not block.
        let stdin = tempfile::tempfile().and_then(|mut file| {
            file.write_all(input)?;
            file.rewind()?;
            Ok(file)
        });
        match stdin {
            Ok(file) => command.stdin(Stdio::from(file)),
            Err(e) => return fail(&format!("passing stdin to {}: {e}", full.display())),
        };
    }
    let e = command.exec();
    fail(&format!("running {}: {e}", full.display()))
}

/// `cloudsmith-gen` in the directory of this binary (its real path, so a symlink on PATH
/// to an installed pair works).
fn full_host() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(FULL);
    path.is_file().then_some(path)
}

/// Fails as `cloudsmith-gen` fails as the helper: the reason on stdout, where Docker's
/// helper client reads it, and `error:` on stderr ([`docker::report_failure`]).
fn fail(message: &str) -> ExitCode {
    docker::report_failure(
        &cloudsmith_gen_core::secret::one_line(message, 300),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(1)
}
