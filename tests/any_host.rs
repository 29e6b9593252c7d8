//! One component, any Wasm host: the same inputs give byte-identical outputs
//! (and the same error case) in every host, bare or composed with a plug.
//!
//! | host \ component        | bare generator                      | composed with a plug (wac / wasm-tools compose) |
//! |-------------------------|-------------------------------------|--------------------------------------------------|
//! | `cloudsmith-gen` (ours) | host token source (`--oidc-token-file`) | plug reads `--wasi-env` / `--wasi-dir`        |
//! | `wasmtime` CLI 48       | n/a: nothing in the CLI can supply `token-source` (checked) | `-S http --env` / `--dir`, `--invoke` |
//! | Node.js (jco 1.35)      | `token-source` from JS (`--map`)    | shim's env / preopens (`run.mjs --env` / `--dir`) |
//!
//! Every cell talks to the same stand-in Cloudsmith (testkit) over loopback,
//! and each cell's answer is brought to one form, WIT terms as JSON:
//! `{"ok":[["auth","…"],["expiry","…"]]}` or
//! `{"err":{"case":"unauthorized","value":{"status":401,"detail":"…"}}}`,
//! so "agree byte for byte" is plain equality.
//!
//! The tools come from scripts/tools.sh (run by scripts/test.sh); a missing
//! one fails the test with that hint rather than skipping it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::cloudsmith::{access_token_for, auth_for, StandIn, StandInConfig};
use testkit::process::{assert_no_secret, run, Output};

/// The namespace every cell generates for.
const NAMESPACE: &str = "apps";
/// The service account the manifest names (and the token file's name).
const ACCOUNT: &str = "eso-cloudsmith";
/// The Cloudsmith OIDC service slug in every manifest.
const SERVICE: &str = "eso";
/// Where the file plug looks by default: its template is
/// `/var/run/secrets/tokens/{name}`.
const GUEST_TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The wasmtime CLI's name for the export: WAVE puts the package version
/// after the function name (`ns:pkg/iface.func@version`).
const WASMTIME_INVOKE: &str = "secretgen:generator/generator.generate@0.1.0";
/// Upper bound for one host run (a cold wasmtime compile plus one exchange).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Artifacts: built, composed and transpiled once per test process.
// ---------------------------------------------------------------------------

/// The token-source plugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plug {
    /// `env-token-source`: the token from `OIDC_TOKEN`.
    Env,
    /// `file-token-source`: the token from `/var/run/secrets/tokens/<account>`.
    File,
}

impl Plug {
    const ALL: [Plug; 2] = [Plug::Env, Plug::File];

    fn package(self) -> &'static str {
        match self {
            Plug::Env => "env-token-source",
            Plug::File => "file-token-source",
        }
    }
}

/// The composition tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Composer {
    /// `wac plug --plug <plug> <generator> -o <out>` (recommended).
    Wac,
    /// `wasm-tools compose <generator> -d <plug> -o <out>` (deprecated).
    WasmTools,
}

impl Composer {
    const ALL: [Composer; 2] = [Composer::Wac, Composer::WasmTools];

    fn name(self) -> &'static str {
        match self {
            Composer::Wac => "wac",
            Composer::WasmTools => "wasm-tools",
        }
    }
}

/// The generator composed with one plug by one tool.
#[derive(Debug)]
struct Composed {
    plug: Plug,
    composer: Composer,
    /// The composed component.
    wasm: PathBuf,
    /// Its jco transpilation (below tests/js, see run.mjs).
    js: PathBuf,
}

impl Composed {
    fn label(&self) -> String {
        format!("{}+{}", self.composer.name(), self.plug.package())
    }
}

struct Artifacts {
    generator: PathBuf,
    plugs: Vec<(Plug, PathBuf)>,
    composed: Vec<Composed>,
    /// The bare generator transpiled with `token-source` mapped to JS.
    js_bare: PathBuf,
}

fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    // Preparing runs processes through testkit's blocking helper, which makes
    // its own tokio runtime: do it on a plain thread, so async tests can ask.
    ARTIFACTS.get_or_init(|| {
        std::thread::spawn(prepare)
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn workspace() -> PathBuf {
    testkit::workspace_root()
}

fn js_dir() -> PathBuf {
    workspace().join("tests").join("js")
}

/// Builds the generator and plugs, composes every plug with every tool, and
/// transpiles the bare and composed components with jco.
fn prepare() -> Artifacts {
    let generator = testkit::artifacts::wasm("cloudsmith-access-token");
    // Fixed folders (not temp dirs): a static is never dropped, and leaving
    // the artifacts in place lets a failing cell be rerun by hand.
    let work = workspace().join("target").join("any-host");
    let js_out = js_dir().join("out");
    for dir in [&work, &js_out] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
    }

    let mut plugs = Vec::new();
    let mut composed = Vec::new();
    for plug in Plug::ALL {
        // `wasm-tools compose -d` names the instance after the file: it must
        // be kebab-case, so copy cargo's snake_case artifact.
        let plug_wasm = work.join(format!("{}.wasm", plug.package()));
        std::fs::copy(testkit::artifacts::wasm(plug.package()), &plug_wasm).unwrap();
        for composer in Composer::ALL {
            let wasm = work.join(format!("{}+{}.wasm", composer.name(), plug.package()));
            let mut cmd = std::process::Command::new(match composer {
                Composer::Wac => testkit::tools::wac(),
                Composer::WasmTools => testkit::tools::wasm_tools(),
            });
            match composer {
                Composer::Wac => cmd.arg("plug").arg("--plug").arg(&plug_wasm).arg(&generator),
                Composer::WasmTools => cmd
                    .args(["compose", "--quiet"])
                    .arg(&generator)
                    .arg("-d")
                    .arg(&plug_wasm),
            };
            cmd.arg("-o").arg(&wasm);
            expect_success(&format!("{} composing {}", composer.name(), plug.package()), cmd);
            let js = js_out.join(format!("{}-{}", composer.name(), plug.package()));
            transpile(&wasm, &js, false);
            composed.push(Composed {
                plug,
                composer,
                wasm,
                js,
            });
        }
        plugs.push((plug, plug_wasm));
    }
    let js_bare = js_out.join("bare");
    transpile(&generator, &js_bare, true);
    Artifacts {
        generator,
        plugs,
        composed,
        js_bare,
    }
}

/// `jco transpile` into `out` (named `generator.js`); for the bare generator,
/// `token-source` maps to tests/js/token-source.mjs, copied beside it.
fn transpile(wasm: &Path, out: &Path, map_token_source: bool) {
    let mut cmd = std::process::Command::new(testkit::tools::node());
    cmd.arg(jco())
        .arg("transpile")
        .arg(wasm)
        .arg("-o")
        .arg(out)
        .args(["--name", "generator", "--quiet"]);
    if map_token_source {
        cmd.args(["--map", "secretgen:generator/token-source=./token-source.mjs"]);
    }
    expect_success(&format!("jco transpile {}", wasm.display()), cmd);
    if map_token_source {
        std::fs::copy(js_dir().join("token-source.mjs"), out.join("token-source.mjs")).unwrap();
    }
}

/// jco's entry point, installed by `npm ci` in tests/js.
fn jco() -> PathBuf {
    let path = js_dir().join("node_modules/@bytecodealliance/jco/dist/jco.js");
    assert!(
        path.is_file(),
        "{} is missing: run `bash scripts/test.sh` (it runs `npm ci` in tests/js)",
        path.display()
    );
    path
}

fn expect_success(what: &str, cmd: std::process::Command) -> Output {
    testkit::process::expect_success(what, cmd, RUN_TIMEOUT)
}

// ---------------------------------------------------------------------------
// The cells.
// ---------------------------------------------------------------------------

/// One run's inputs: a stand-in, a manifest, and a trusted OIDC token for
/// the account, staged as a file and as a variable.
struct Inputs {
    stand_in: StandIn,
    org: String,
    manifest_file: PathBuf,
    manifest: String,
    oidc_token: String,
    /// A host folder holding the token as `<ACCOUNT>`, for `--dir`.
    token_dir: PathBuf,
    _temp: tempfile::TempDir,
}

const SUBJECT: &str = "system:serviceaccount:apps:eso-cloudsmith";

impl Inputs {
    async fn new(org: &str) -> Inputs {
        let stand_in = StandIn::start(StandInConfig::default()).await.unwrap();
        let temp = tempfile::tempdir().unwrap();
        // A compact, spec-only manifest: what wasmtime's --invoke must quote.
        let manifest = json!({
            "spec": {
                "apiUrl": stand_in.url(),
                "orgSlug": org,
                "serviceSlug": SERVICE,
                "serviceAccountRef": {"name": ACCOUNT},
            }
        })
        .to_string();
        let manifest_file = temp.path().join("generator.json");
        std::fs::write(&manifest_file, &manifest).unwrap();
        let oidc_token = testkit::oidc::token(SUBJECT, &[&stand_in.origin()]);
        let token_dir = temp.path().join("tokens");
        std::fs::create_dir(&token_dir).unwrap();
        // The kubelet writes no newline; a hand-made file has one: plugs trim.
        std::fs::write(token_dir.join(ACCOUNT), format!("{oidc_token}\n")).unwrap();
        Inputs {
            stand_in,
            org: org.into(),
            manifest_file,
            manifest,
            oidc_token,
            token_dir,
            _temp: temp,
        }
    }

    /// What every cell must answer for an organisation that succeeds.
    fn expected_ok(&self) -> Value {
        let access = access_token_for(SUBJECT, &self.org, SERVICE, StandInConfig::default().token_exp);
        json!({"ok": [["auth", auth_for(&access)], ["expiry", StandInConfig::default().token_exp.to_string()]]})
    }

    /// `--dir` value mapping the token folder where the file plug looks.
    fn dir_mapping(&self) -> String {
        format!("{}::{GUEST_TOKEN_DIR}", self.token_dir.display())
    }
}

/// Where a cell's token comes from.
#[derive(Clone, Copy, Debug)]
enum Variant<'a> {
    /// The bare generator; the host supplies `token-source`.
    Bare,
    /// A composed component; the plug reads what the host grants it.
    Composed(&'a Composed),
}

impl Variant<'_> {
    fn label(&self) -> String {
        match self {
            Variant::Bare => "bare".into(),
            Variant::Composed(c) => c.label(),
        }
    }
}

/// The hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    /// Our wasmtime embedding, `cloudsmith-gen`.
    CloudsmithGen,
    /// The `wasmtime` CLI.
    WasmtimeCli,
    /// Node.js through jco.
    Jco,
}

impl Host {
    const ALL: [Host; 3] = [Host::CloudsmithGen, Host::WasmtimeCli, Host::Jco];

    fn name(self) -> &'static str {
        match self {
            Host::CloudsmithGen => "cloudsmith-gen",
            Host::WasmtimeCli => "wasmtime CLI",
            Host::Jco => "node+jco",
        }
    }

    /// Whether the host can run the bare generator (supply `token-source`).
    fn runs_bare(self) -> bool {
        self != Host::WasmtimeCli
    }
}

/// Every cell that makes sense: hosts × (bare + each composition).
fn cells(a: &Artifacts) -> Vec<(Host, Variant<'_>)> {
    let mut cells = Vec::new();
    for host in Host::ALL {
        if host.runs_bare() {
            cells.push((host, Variant::Bare));
        }
        for c in &a.composed {
            cells.push((host, Variant::Composed(c)));
        }
    }
    cells
}

/// Runs one cell and brings its answer to the common form.
async fn run_cell(host: Host, variant: Variant<'_>, inputs: &Inputs) -> Value {
    let a = artifacts();
    let label = format!("{} / {}", host.name(), variant.label());
    let out = match host {
        Host::CloudsmithGen => {
            let mut cmd = tokio::process::Command::new(testkit::tools::cloudsmith_gen());
            cmd.arg("generate")
                .arg("--manifest")
                .arg(&inputs.manifest_file)
                .args([
                    "--namespace",
                    NAMESPACE,
                    "--allow-host",
                    &inputs.stand_in.authority(),
                ])
                .args(["--allow-http", "--output", "json", "--cache-dir"])
                .arg(workspace().join("target/any-host/cloudsmith-gen-cache"));
            match variant {
                Variant::Bare => {
                    cmd.arg("--oidc-token-file").arg(inputs.token_dir.join(ACCOUNT));
                }
                Variant::Composed(c) => {
                    cmd.arg("--component").arg(&c.wasm);
                    plug_grants(&mut cmd, c.plug, inputs, "--wasi-env", "--wasi-dir", true);
                }
            }
            run(cmd, None, RUN_TIMEOUT).await
        }
        Host::WasmtimeCli => {
            let Variant::Composed(c) = variant else {
                unreachable!("the wasmtime CLI cannot supply token-source")
            };
            let mut cmd = tokio::process::Command::new(testkit::tools::wasmtime());
            cmd.args(["run", "-S", "http"]);
            plug_grants(&mut cmd, c.plug, inputs, "--env", "--dir", false);
            cmd.arg("--invoke")
                .arg(wasmtime_invoke(&inputs.manifest, NAMESPACE))
                .arg(&c.wasm);
            run(cmd, None, RUN_TIMEOUT).await
        }
        Host::Jco => {
            let mut cmd = tokio::process::Command::new(testkit::tools::node());
            let dir = match variant {
                Variant::Bare => {
                    // token-source.mjs reads the Node.js process's own variable.
                    cmd.env("OIDC_TOKEN", &inputs.oidc_token);
                    &a.js_bare
                }
                Variant::Composed(c) => &c.js,
            };
            cmd.arg(js_dir().join("run.mjs"))
                .arg(dir)
                .arg(&inputs.manifest_file)
                .arg(NAMESPACE);
            if let Variant::Composed(c) = variant {
                plug_grants(&mut cmd, c.plug, inputs, "--env", "--dir", false);
            }
            run(cmd, None, RUN_TIMEOUT).await
        }
    };
    let out = out.unwrap_or_else(|e| panic!("{label}: {e}"));
    // Whatever the host printed, the OIDC token must not be in it.
    assert_no_secret(&[&out.stdout, &out.stderr], &[&inputs.oidc_token]);
    let answer = match host {
        Host::CloudsmithGen => cloudsmith_gen_answer(&out),
        Host::WasmtimeCli => {
            assert!(out.success(), "{label} failed ({:?}):\n{}", out.code, out.stderr);
            wave_answer(&out.stdout)
        }
        Host::Jco => {
            assert!(out.success(), "{label} failed ({:?}):\n{}", out.code, out.stderr);
            Ok(out.stdout_json())
        }
    };
    answer.unwrap_or_else(|e| panic!("{label}: {e}\nstdout:\n{}\nstderr:\n{}", out.stdout, out.stderr))
}

/// Grants a plug what it reads: the token variable (inherited from this
/// process's environment for the CLIs that can, so it stays off the command
/// line) or the token folder.
fn plug_grants(
    cmd: &mut tokio::process::Command,
    plug: Plug,
    inputs: &Inputs,
    env_flag: &str,
    dir_flag: &str,
    env_needs_value: bool,
) {
    match plug {
        Plug::Env => {
            if env_needs_value {
                cmd.arg(env_flag).arg(format!("OIDC_TOKEN={}", inputs.oidc_token));
            } else {
                cmd.env("OIDC_TOKEN", &inputs.oidc_token)
                    .arg(env_flag)
                    .arg("OIDC_TOKEN");
            }
        }
        Plug::File => {
            cmd.arg(dir_flag).arg(inputs.dir_mapping());
        }
    }
}

// ---------------------------------------------------------------------------
// Bringing each host's answer to the common form.
// ---------------------------------------------------------------------------

/// `cloudsmith-gen --output json` prints ESO's outputs object on success;
/// on failure it prints one line, `error: <cause>`, and an exit code per
/// class. The cause's wording is `cloudsmith_gen::GenerateError`'s `Display`,
/// so the cases these tests provoke are read back from it.
fn cloudsmith_gen_answer(out: &Output) -> Result<Value, String> {
    if out.success() {
        let v: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("stdout is not JSON: {e}"))?;
        let obj = v.as_object().ok_or("stdout is not a JSON object")?;
        let ok: Vec<Value> = obj
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| json!([k, v]))
                    .ok_or("an output is not a string")
            })
            .collect::<Result<_, _>>()?;
        return Ok(json!({ "ok": ok }));
    }
    let line = out.stderr.trim();
    let cause = line
        .strip_prefix("error: ")
        .ok_or("stderr is not one `error:` line")?;
    let status_case = |case: &str, rest: &str| -> Result<Value, String> {
        let (status, detail) = rest.split_once("): ").ok_or("no `(status): detail`")?;
        let status: u16 = status.parse().map_err(|e| format!("status {status}: {e}"))?;
        Ok(json!({"err": {"case": case, "value": {"status": status, "detail": detail}}}))
    };
    match out.code {
        Some(3) => {
            let message = cause
                .strip_prefix("token source failed: ")
                .ok_or("exit 3 without its prefix")?;
            Ok(json!({"err": {"case": "token-source", "value": message}}))
        }
        Some(5) => {
            if let Some(rest) = cause.strip_prefix("Cloudsmith rejected the credentials (") {
                // cloudsmith-gen adds the claims of the token it handed out, which the
                // WIT error does not carry: compare Cloudsmith's part.
                let rest = rest.split_once("; the token's ").map_or(rest, |(rest, _)| rest);
                status_case("unauthorized", rest)
            } else if let Some(rest) = cause.strip_prefix("Cloudsmith rejected the request (") {
                status_case("rejected", rest)
            } else {
                Err("exit 5 without a known prefix".into())
            }
        }
        code => Err(format!("exit {code:?}: not a case these tests expect")),
    }
}

/// `wasmtime run --invoke` prints the result as WAVE.
fn wave_answer(stdout: &str) -> Result<Value, String> {
    testkit::wave::parse(stdout.trim()).and_then(testkit::wave::outputs_as_text)
}

/// The `--invoke` argument: a WAVE function call with string arguments.
fn wasmtime_invoke(manifest: &str, namespace: &str) -> String {
    format!(
        "{WASMTIME_INVOKE}({}, {})",
        testkit::wave::string(manifest),
        testkit::wave::string(namespace)
    )
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

/// The plugs export `token-source`; composing them (with either tool) leaves
/// a component that imports only standard WASI and still exports the
/// generator, so any WASI 0.2 host with wasi:http can run it.
#[test]
fn composed_components_import_only_wasi() {
    let a = artifacts();
    let wit = |wasm: &Path| {
        let mut cmd = std::process::Command::new(testkit::tools::wasm_tools());
        cmd.args(["component", "wit"]).arg(wasm);
        expect_success("wasm-tools component wit", cmd).stdout
    };
    let lines = |wit: &str, kind: &str| -> Vec<String> {
        wit.lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix(kind))
            .map(|l| l.trim_end_matches(';').to_string())
            .collect()
    };

    let generator = wit(&a.generator);
    assert!(lines(&generator, "import ").contains(&"secretgen:generator/token-source@0.1.0".into()));

    for (plug, wasm) in &a.plugs {
        let wit = wit(wasm);
        assert_eq!(
            lines(&wit, "export "),
            ["secretgen:generator/token-source@0.1.0"],
            "{plug:?}"
        );
    }

    for c in &a.composed {
        let wit = wit(&c.wasm);
        let imports = lines(&wit, "import ");
        assert!(
            !wit.contains("import secretgen:"),
            "{}: still imports secretgen:\n{wit}",
            c.label()
        );
        assert!(
            imports.iter().all(|i| i.starts_with("wasi:")),
            "{}: non-WASI import in {imports:?}",
            c.label()
        );
        assert_eq!(
            lines(&wit, "export "),
            ["secretgen:generator/generator@0.1.0"],
            "{}",
            c.label()
        );
        // Least privilege shows in the imports: only the file plug asks for
        // a filesystem.
        let has_fs = imports.iter().any(|i| i.starts_with("wasi:filesystem/"));
        assert_eq!(has_fs, c.plug == Plug::File, "{}: {imports:?}", c.label());
        assert!(imports
            .iter()
            .any(|i| i.starts_with("wasi:http/outgoing-handler@")));

        let mut validate = std::process::Command::new(testkit::tools::wasm_tools());
        validate.arg("validate").arg(&c.wasm);
        expect_success(&format!("wasm-tools validate {}", c.label()), validate);
    }
}

/// The table: every host, bare and composed, gives the exact expected
/// outputs for the same manifest and token, hence the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_gives_the_same_outputs() {
    let a = artifacts();
    let inputs = Inputs::new("acme").await;
    let expected = inputs.expected_ok();
    let mut answers = Vec::new();
    for (host, variant) in cells(a) {
        let answer = run_cell(host, variant, &inputs).await;
        answers.push((format!("{} / {}", host.name(), variant.label()), answer));
    }
    let table: String = answers
        .iter()
        .map(|(cell, answer)| format!("  {cell}: {answer}\n"))
        .collect();
    // Shown with --nocapture: the table docs/embedding.md describes.
    println!("every cell:\n{table}");
    for (cell, answer) in &answers {
        assert_eq!(answer, &expected, "{cell} disagrees; all cells:\n{table}");
    }
    // One exchange per cell: no host retried or skipped the call.
    assert_eq!(
        inputs.stand_in.requests_for("acme").len(),
        answers.len(),
        "{table}"
    );
}

/// A 401 from Cloudsmith reaches every host as the same `unauthorized` case
/// carrying Cloudsmith's own `detail`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_reaches_every_host_intact() {
    let a = artifacts();
    let inputs = Inputs::new("fail-401").await;
    let expected = json!({"err": {"case": "unauthorized", "value": {
        "status": 401,
        "detail": "OIDC token cannot be authenticated",
    }}});
    // One cell per host: bare where the host can, else the wac+env composition.
    let composed = a
        .composed
        .iter()
        .find(|c| c.composer == Composer::Wac && c.plug == Plug::Env)
        .unwrap();
    for host in Host::ALL {
        let variant = if host.runs_bare() {
            Variant::Bare
        } else {
            Variant::Composed(composed)
        };
        let answer = run_cell(host, variant, &inputs).await;
        assert_eq!(answer, expected, "{} / {}", host.name(), variant.label());
    }
}

/// A plug's own failure (no token file granted) crosses every host as the
/// same `token-source` case with the plug's one-line message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plug_errors_cross_every_host_intact() {
    let a = artifacts();
    let inputs = Inputs::new("acme").await;
    let composed = a
        .composed
        .iter()
        .find(|c| c.composer == Composer::Wac && c.plug == Plug::File)
        .unwrap();
    let expected = json!({"err": {"case": "token-source", "value": format!(
        "cannot read service account token file {GUEST_TOKEN_DIR}/{ACCOUNT}: no such file (is its directory preopened?)"
    )}});
    // The same cells as the table, but with an empty folder granted.
    let empty = tempfile::tempdir().unwrap();
    let inputs = Inputs {
        token_dir: empty.path().to_path_buf(),
        ..inputs
    };
    for host in Host::ALL {
        let answer = run_cell(host, Variant::Composed(composed), &inputs).await;
        assert_eq!(answer, expected, "{}", host.name());
    }
    assert!(
        inputs.stand_in.requests().is_empty(),
        "no exchange without a token"
    );
}

/// Why the wasmtime CLI has no bare cell: it refuses to instantiate the bare
/// generator, naming the import only a host or a plug can supply.
#[test]
fn wasmtime_cli_needs_a_plug_for_token_source() {
    let a = artifacts();
    let mut cmd = std::process::Command::new(testkit::tools::wasmtime());
    cmd.args(["run", "-S", "http", "--invoke", "info()"])
        .arg(&a.generator);
    let out = testkit::process::run_blocking(cmd, None, RUN_TIMEOUT).unwrap();
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("component imports instance `secretgen:generator/token-source@0.1.0`"),
        "{}",
        out.stderr
    );
}

#[test]
fn wave_round_trips_what_wasmtime_prints() {
    assert_eq!(
        testkit::wave::parse(r#"err(unauthorized({status: 401, detail: "a \"b\"\n\u{e9}"}))"#).unwrap(),
        json!({"err": {"case": "unauthorized", "value": {"status": 401, "detail": "a \"b\"\né"}}})
    );
    assert_eq!(
        wave_answer(r#"ok([("auth", [104, 105]), ("expiry", [49])])"#).unwrap(),
        json!({"ok": [["auth", "hi"], ["expiry", "1"]]})
    );
    assert_eq!(
        testkit::wave::parse("err(rate-limited({retry-after-seconds: none, detail: \"x\"}))").unwrap(),
        json!({"err": {"case": "rate-limited", "value": {"retry-after-seconds": null, "detail": "x"}}})
    );
    assert_eq!(testkit::wave::string("a\"\\\n"), r#""a\"\\\n""#);
}
