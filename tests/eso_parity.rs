//! ESO's own Cloudsmith generator (v0.20.4, `pkg/generator/cloudsmith`) is the
//! reference: it and our component run on the same inputs (the same Cloudsmith stand-in
//! answering 201, a token from the same TokenRequest API), over a table of access
//! tokens Cloudsmith could answer with, and must give byte-identical `auth` and
//! `expiry`, or both refuse. Our component runs through three doors:
//!
//! - `cloudsmith-gen generate --kubeconfig` (its own TokenRequest);
//! - `cloudsmith-gen serve`, called by ESO's own Webhook generator (`harness/cmd/eso-generate`),
//!   so what is compared is what ESO would put in the Secret;
//! - Node.js through jco (the bare component, the token handed in by the test).
//!
//! Each row where our component and ESO's generator do not agree names the difference
//! and ESO's line that causes it; docs/eso-webhook.md#compatibility lists the same rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use testkit::cloudsmith::{StandIn, StandInConfig, PRODUCTION_AUDIENCE};
use testkit::cluster::Cluster;
use testkit::process::Listening;
use testkit::real_eso::{self, Generate, Generated, Objects};

/// The account whose token is exchanged.
const ACCOUNT: &str = "cloudsmith-oidc";
/// The account ESO's Webhook sends as its caller.
const CALLER: &str = "eso-cloudsmith-caller";
const SERVICE_HOST: &str = "cloudsmith-gen.cloudsmith-gen.svc";
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// `{"alg":"RS256","typ":"JWT"}`: a header like Cloudsmith's (its content is never read).
const HEADER: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";
const SIGNATURE: &str = "c2lnbmF0dXJlLW9mLWNsb3Vkc21pdGg";

fn jwt(payload: &[u8]) -> String {
    format!("{HEADER}.{}.{SIGNATURE}", URL_SAFE_NO_PAD.encode(payload))
}

fn jwt_exp(literal: &str) -> String {
    jwt(format!(r#"{{"sub":"cloudsmith-service","exp":{literal}}}"#).as_bytes())
}

/// What Cloudsmith answers in one row.
#[derive(Clone, Debug)]
enum Answer {
    /// `201 {"token": "<this>"}`.
    Token(String),
    /// `201` with this body.
    Body(String),
}

/// Whether our component agrees with ESO's generator on a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parity {
    /// Identical `auth` and `expiry`, or both refuse.
    Same,
    /// ESO's generator answers; ours refuses (on purpose: the reason is documented).
    OursRefuses(&'static str),
    /// ESO's generator refuses; ours answers (on purpose: the reason is documented).
    EsoRefuses(&'static str),
}

struct Row {
    name: &'static str,
    answer: Answer,
    parity: Parity,
}

fn row(name: &'static str, answer: Answer, parity: Parity) -> Row {
    Row { name, answer, parity }
}

/// The table. Names are the generators' names (Kubernetes names).
fn table() -> Vec<Row> {
    use Answer::{Body, Token};
    use Parity::{EsoRefuses, OursRefuses, Same};
    let exp = |literal: &str| Token(jwt_exp(literal));
    let payload = |bytes: &[u8]| Token(jwt(bytes));
    let good = jwt_exp("1700000000");
    // The payload's segment in other encodings: padded, non-canonical last bits, a
    // line break inside, standard base64.
    let ten = br#"{"exp":12}"#; // 10 bytes: 14 characters, the last one holding 2 bits
    let padded = format!("{HEADER}.{}.{SIGNATURE}", URL_SAFE.encode(ten));
    let canonical = URL_SAFE_NO_PAD.encode(ten);
    let mut loose = canonical.clone().into_bytes();
    *loose.last_mut().unwrap() += 1; // 'Q' → 'R': a non-zero bit after the data
    let loose = format!("{HEADER}.{}.{SIGNATURE}", String::from_utf8(loose).unwrap());
    let wrapped = {
        let segment = URL_SAFE_NO_PAD.encode(br#"{"sub":"cloudsmith-service","exp":1700000000}"#);
        format!("{HEADER}.{}\n{}.{SIGNATURE}", &segment[..20], &segment[20..])
    };
    // A payload whose base64url has '-' or '_': its standard form has '+' or '/'.
    let odd = br#"{"exp":1700000000,"n":"~~~?"}"#;
    let standard = format!(
        "{HEADER}.{}.{SIGNATURE}",
        STANDARD.encode(odd).trim_end_matches('=')
    );
    assert!(standard.contains('+') || standard.contains('/'), "{standard}");
    let deep = format!(
        r#"{{"x":{}1{},"exp":1700000000}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    vec![
        row("int", exp("1700000000"), Same),
        row("float", exp("1700000000.5"), Same),
        row("exponent", exp("1.7e9"), Same),
        row("exponent-upper", exp("1.7000000005E+9"), Same),
        row("float-nearest", exp("1719135030.7809121"), Same),
        row("tie", exp("1700000000.00390625"), Same),
        row("tie-2", exp("990071992554740.19340"), Same),
        row("big-int", exp("17000000001234567890"), Same),
        row("beyond-2-53", exp("9007199254740993"), Same),
        row("tiny", exp("1.5e-7"), Same),
        row("largest-ours", exp("1e30"), Same),
        row("over-ours", exp("1e31"), OursRefuses("exp above 1e30")),
        row(
            "largest-float64",
            exp("1.7976931348623157e308"),
            OursRefuses("exp above 1e30"),
        ),
        row("overflow", exp("1e400"), Same),
        row("zero", exp("0"), OursRefuses("exp not positive")),
        row("negative", exp("-5"), OursRefuses("exp not positive")),
        row("negative-zero", exp("-0"), OursRefuses("exp not positive")),
        row("missing-exp", payload(br#"{"sub":"cloudsmith-service"}"#), Same),
        row("null-exp", payload(br#"{"exp":null}"#), Same),
        row("string-exp", payload(br#"{"exp":"1700000000"}"#), Same),
        row("bool-exp", payload(br#"{"exp":true}"#), Same),
        row("list-exp", payload(br#"{"exp":[1700000000]}"#), Same),
        row("payload-list", payload(b"[1700000000]"), Same),
        row("payload-null", payload(b"null"), Same),
        row("duplicate-exp", payload(br#"{"exp":1,"exp":1700000000}"#), Same),
        row(
            "other-claim-overflow",
            payload(br#"{"iat":1e400,"exp":1700000000}"#),
            EsoRefuses("a number beyond float64 in a claim not read"),
        ),
        row(
            "other-claim-bad-utf8",
            payload(b"{\"sub\":\"\xff\",\"exp\":1700000000}"),
            Same,
        ),
        row(
            "lone-surrogate",
            payload(br#"{"sub":"\ud800","exp":1700000000}"#),
            Same,
        ),
        row("deep-claim", payload(deep.as_bytes()), Same),
        row("padded", Token(padded), EsoRefuses("padded base64url payload")),
        row("trailing-bits", Token(loose), Same),
        row("line-break", Token(wrapped), Same),
        row("standard-base64", Token(standard), Same),
        row("not-jwt", Token("not-a-jwt".into()), Same),
        row("two-parts", Token(format!("{HEADER}.e30")), Same),
        row("four-parts", Token(format!("{good}.x")), Same),
        row("empty-payload", Token(format!("{HEADER}..{SIGNATURE}")), Same),
        row("token-key-case", Body(format!(r#"{{"Token":"{good}"}}"#)), Same),
        row(
            "duplicate-token",
            Body(format!(r#"{{"token":"x","token":"{good}"}}"#)),
            Same,
        ),
        row("token-null", Body(r#"{"token":null}"#.into()), Same),
        row("token-number", Body(r#"{"token":5}"#.into()), Same),
        row(
            "extra-fields",
            Body(format!(r#"{{"token":"{good}","expires_in":3600}}"#)),
            Same,
        ),
    ]
}

/// One door's result, as bytes: the outputs, or a refusal with its message.
#[derive(Clone, PartialEq, Eq)]
enum Outcome {
    Data(BTreeMap<String, Vec<u8>>),
    Refused(String),
}

impl std::fmt::Debug for Outcome {
    // The values as text, `auth` cut short: a row's line stays readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Refused(m) => write!(f, "refused: {m}"),
            Outcome::Data(d) => {
                let text = |k: &str| {
                    d.get(k)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let auth = text("auth");
                write!(
                    f,
                    "expiry {:?}, auth {}…{} ({} bytes)",
                    text("expiry"),
                    auth.get(..12).unwrap_or(&auth),
                    auth.get(auth.len().saturating_sub(12)..).unwrap_or(""),
                    auth.len()
                )
            }
        }
    }
}

impl Outcome {
    fn refused(&self) -> bool {
        matches!(self, Outcome::Refused(_))
    }
}

impl From<Generated> for Outcome {
    fn from(g: Generated) -> Outcome {
        match g {
            Generated::Data(d) => Outcome::Data(d),
            Generated::Error { message, .. } => Outcome::Refused(message),
        }
    }
}

/// A Cloudsmith stand-in per row, each trusting the cluster's tokens for the namespace's
/// `cloudsmith-oidc` (an OIDC relying party of its issuer) and issuing the row's answer.
struct Rows {
    rows: Vec<(Row, StandIn)>,
}

async fn start_rows(kube: &Kube) -> Rows {
    let mut rows = Vec::new();
    for r in table() {
        let mut config = StandInConfig::trusting(kube.cluster, &kube.subject());
        match &r.answer {
            Answer::Token(t) => config.issued_token = Some(t.clone()),
            Answer::Body(b) => config.issued_body = Some(b.clone()),
        }
        let stand_in = StandIn::start(config).await.expect("Cloudsmith stand-in");
        rows.push((r, stand_in));
    }
    Rows { rows }
}

/// The generator document of a row: ESO's `CloudsmithAccessToken`, with `apiUrl` as
/// ESO's CRD names it (the seed's `apiHost` is not in v0.20.4's schema).
fn generator(name: &str, stand_in: &StandIn, namespace: &str) -> Value {
    json!({
        "apiVersion": real_eso::GENERATORS_API,
        "kind": "CloudsmithAccessToken",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "apiUrl": stand_in.url(),
            "orgSlug": "my-organization",
            "serviceSlug": "my-oidc-service",
            "serviceAccountRef": {"name": ACCOUNT, "audiences": [PRODUCTION_AUDIENCE]},
        }
    })
}

/// The real control plane every door mints its tokens from: a namespace of its own,
/// opted in as deploy/eso/apps.yaml shows (`cloudsmith-oidc`, and serve's RoleBinding to
/// mint its tokens), and ESO installed with its chart's identity.
struct Kube {
    cluster: &'static Cluster,
    namespace: String,
    /// ESO's service account (its chart's RBAC may create any account's tokens).
    eso: PathBuf,
}

impl Kube {
    fn start() -> Kube {
        let cluster = Cluster::shared();
        let eso = real_eso::install(cluster);
        let namespace = cluster.namespace("eso-parity");
        cluster.opt_in(&namespace, true);
        Kube {
            cluster,
            namespace,
            eso,
        }
    }

    /// A token from the TokenRequest API for `account` of the namespace.
    fn token(&self, account: &str, audiences: &[&str]) -> String {
        self.cluster.token(&self.namespace, account, audiences)
    }

    /// The subject Cloudsmith's OIDC service trusts.
    fn subject(&self) -> String {
        format!("system:serviceaccount:{}:{ACCOUNT}", self.namespace)
    }
}

/// ESO's Cloudsmith generator on one row: its object read from the API server, its
/// token from the TokenRequest API as ESO's service account (ESO's generator builds that
/// client from KUBECONFIG itself, pkg/esutils/utils.go, FetchServiceAccountToken).
async fn eso_cloudsmith(name: &str, kube: &Kube) -> Outcome {
    let run = Generate::new(
        &kube.namespace,
        "CloudsmithAccessToken",
        name,
        Objects::Cluster(kube.eso.clone()),
    );
    real_eso::generate(&run).await.into()
}

/// `cloudsmith-gen generate` on one row, minting with the same identity as ESO.
async fn ours_generate(name: &str, stand_in: &StandIn, kube: &Kube, dir: &Path) -> Outcome {
    let manifest = dir.join(format!("{name}.generate.json"));
    std::fs::write(&manifest, generator(name, stand_in, &kube.namespace).to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(testkit::tools::cloudsmith_gen());
    cmd.arg("generate")
        .arg("--manifest")
        .arg(&manifest)
        .args(["--namespace", &kube.namespace, "--kubeconfig"])
        .arg(&kube.eso)
        .args([
            "--allow-host",
            &stand_in.authority(),
            "--allow-http",
            "--output",
            "json",
        ])
        .arg("--cache-dir")
        .arg(cache_dir());
    let out = testkit::process::run(cmd, None, RUN_TIMEOUT).await.unwrap();
    if out.success() {
        let v: BTreeMap<String, String> = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: generate printed no JSON map ({e}): {}", out.stdout));
        Outcome::Data(v.into_iter().map(|(k, v)| (k, v.into_bytes())).collect())
    } else {
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.trim().lines().count() == 1,
            "{name}: not one error line: {}",
            out.stderr
        );
        Outcome::Refused(out.stderr.trim().to_string())
    }
}

/// The bare component in Node.js through jco, handed a token from the TokenRequest API.
async fn ours_jco(name: &str, stand_in: &StandIn, kube: &Kube, dir: &Path) -> Outcome {
    let manifest = dir.join(format!("{name}.jco.json"));
    std::fs::write(&manifest, generator(name, stand_in, &kube.namespace).to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(testkit::tools::node());
    cmd.env("OIDC_TOKEN", kube.token(ACCOUNT, &[PRODUCTION_AUDIENCE]))
        .arg(js_dir().join("run.mjs"))
        .arg(jco_bare())
        .arg(&manifest)
        .arg(&kube.namespace);
    let out = testkit::process::run(cmd, None, RUN_TIMEOUT).await.unwrap();
    assert!(
        out.success(),
        "{name}: node+jco failed ({:?}): {}",
        out.code,
        out.stderr
    );
    let v = out.stdout_json();
    match (&v["ok"], &v["err"]) {
        (Value::Array(pairs), _) => Outcome::Data(
            pairs
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap().to_string(),
                        p[1].as_str().unwrap().as_bytes().to_vec(),
                    )
                })
                .collect(),
        ),
        (_, err) if !err.is_null() => Outcome::Refused(err.to_string()),
        _ => panic!("{name}: jco printed neither ok nor err: {v}"),
    }
}

fn cache_dir() -> PathBuf {
    testkit::workspace_root().join("target/eso-parity/cloudsmith-gen-cache")
}

fn js_dir() -> PathBuf {
    testkit::workspace_root().join("tests/js")
}

/// The bare component transpiled by jco, `token-source` mapped to tests/js/token-source.mjs
/// (as tests/any_host.rs does), once per process.
fn jco_bare() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::thread::spawn(|| {
            let wasm = testkit::artifacts::wasm("cloudsmith-access-token");
            let out = js_dir().join("out").join("eso-parity-bare");
            let _ = std::fs::remove_dir_all(&out);
            let jco = js_dir().join("node_modules/@bytecodealliance/jco/dist/jco.js");
            assert!(
                jco.is_file(),
                "{} is missing: run `bash scripts/test.sh` (it runs `npm ci` in tests/js)",
                jco.display()
            );
            let mut cmd = Command::new(testkit::tools::node());
            cmd.arg(jco)
                .arg("transpile")
                .arg(&wasm)
                .arg("-o")
                .arg(&out)
                .args(["--name", "generator", "--quiet"])
                .args(["--map", "secretgen:generator/token-source=./token-source.mjs"]);
            testkit::process::expect_success("jco transpile", cmd, RUN_TIMEOUT);
            std::fs::copy(js_dir().join("token-source.mjs"), out.join("token-source.mjs")).unwrap();
            out
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
    .clone()
}

/// `cloudsmith-gen serve` for every row at once, as deploy/serve runs it (its
/// ServiceAccount's identity), on port 8443 of a loopback address of its own; killed on
/// drop.
struct Serve {
    server: Listening,
    ca: testkit::tls::TestCa,
}

impl Serve {
    fn start(rows: &Rows, kube: &Kube, dir: &Path) -> Serve {
        let manifest = dir.join("serve-generators.yaml");
        let docs: Vec<String> = rows
            .rows
            .iter()
            .map(|(r, s)| generator(r.name, s, &kube.namespace).to_string())
            .collect();
        std::fs::write(&manifest, docs.join("\n---\n")).unwrap();
        let ca = testkit::tls::TestCa::for_names(&[SERVICE_HOST]);
        let (cert, key) = ca.write_server_pem(dir).unwrap();
        let mut args: Vec<String> = vec!["serve".into(), "--tls-cert".into(), cert.display().to_string()];
        args.extend(["--tls-key".into(), key.display().to_string()]);
        args.extend(["--manifest".into(), manifest.display().to_string()]);
        args.extend([
            "--kubeconfig".into(),
            kube.cluster.deployed_service().display().to_string(),
        ]);
        args.extend([
            "--allow-http".into(),
            "--cache-dir".into(),
            cache_dir().display().to_string(),
        ]);
        for (_, s) in &rows.rows {
            args.extend(["--allow-host".into(), s.authority()]);
        }
        let server = Listening::start_on_own_loopback(|ip| {
            let mut command = Command::new(testkit::tools::cloudsmith_gen());
            command.args(&args).arg("--listen").arg(format!("{ip}:8443"));
            command
        });
        Serve { server, ca }
    }
}

/// What ESO's Webhook generator needs in the namespace to ask serve for every row: a
/// Webhook per row (deploy/eso/apps.yaml's, with the row's name in the URL), the
/// caller's token Secret (filled by the token controller) and serve's CA.
fn webhook_objects(rows: &Rows, kube: &Kube, serve: &Serve) -> Vec<Value> {
    let ns = &kube.namespace;
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": CALLER, "namespace": ns}}),
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
            "metadata": {"name": "caller-token", "namespace": ns,
                         "labels": {"external-secrets.io/type": "webhook"},
                         "annotations": {"kubernetes.io/service-account.name": CALLER}},
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cloudsmith-gen-ca", "namespace": ns},
            "data": {"ca.crt": serve.ca.ca_pem()},
        }),
    ];
    for (row, stand_in) in &rows.rows {
        objects.push(generator(row.name, stand_in, ns));
        objects.push(json!({
            "apiVersion": real_eso::GENERATORS_API, "kind": "Webhook",
            "metadata": {"name": format!("{}-webhook", row.name), "namespace": ns},
            "spec": {
                "url": format!("https://{SERVICE_HOST}:8443/v1/namespaces/{ns}/generators/{}", row.name),
                "method": "POST",
                "headers": {"Content-Type": "application/json", "Authorization": "Bearer {{ .caller.token }}"},
                "timeout": "30s",
                "result": {"jsonPath": "$"},
                "secrets": [{"name": "caller", "secretRef": {"name": "caller-token", "key": "token"}}],
                "caProvider": {"type": "ConfigMap", "name": "cloudsmith-gen-ca", "key": "ca.crt"},
            }
        }));
    }
    objects
}

/// ESO's Webhook generator asking `serve` for row `name`: what ESO would write to the Secret.
async fn ours_serve(name: &str, serve: &Serve, kube: &Kube) -> Outcome {
    let mut run = Generate::new(
        &kube.namespace,
        "Webhook",
        &format!("{name}-webhook"),
        Objects::Cluster(kube.eso.clone()),
    );
    run.resolve = vec![(SERVICE_HOST.into(), serve.server.addr().ip())];
    real_eso::generate(&run).await.into()
}

/// Every row through ESO's Cloudsmith generator and our three doors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_component_gives_what_esos_cloudsmith_generator_gives() {
    let dir = tempfile::tempdir().unwrap();
    let kube = Kube::start();
    let rows = start_rows(&kube).await;
    let serve = Serve::start(&rows, &kube, dir.path());
    // Through the API server's validation: each generator must fit ESO's CRD schema.
    let objects = webhook_objects(&rows, &kube, &serve);
    kube.cluster
        .apply(&json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string());
    let mut failures = Vec::new();
    for (row, stand_in) in &rows.rows {
        let name = row.name;
        let eso = eso_cloudsmith(name, &kube).await;
        let generate = ours_generate(name, stand_in, &kube, dir.path()).await;
        let served = ours_serve(name, &serve, &kube).await;
        let jco = ours_jco(name, stand_in, &kube, dir.path()).await;
        // The three doors of our component agree with one another, byte for byte.
        for (door, got) in [("serve+ESO Webhook", &served), ("jco", &jco)] {
            let same = match (&generate, got) {
                (Outcome::Data(a), Outcome::Data(b)) => a == b,
                (a, b) => a.refused() && b.refused(),
            };
            if !same {
                failures.push(format!("{name}: generate {generate:?} but {door} {got:?}"));
            }
        }
        let agrees = match (&eso, &generate) {
            (Outcome::Data(a), Outcome::Data(b)) => a == b,
            (a, b) => a.refused() && b.refused(),
        };
        let expected = match row.parity {
            Parity::Same => agrees,
            Parity::OursRefuses(_) => matches!(eso, Outcome::Data(_)) && generate.refused(),
            Parity::EsoRefuses(_) => eso.refused() && matches!(generate, Outcome::Data(_)),
        };
        if !expected {
            failures.push(format!(
                "{name} ({:?}): ESO's generator {eso:?}, ours {generate:?}",
                row.parity
            ));
        }
        eprintln!("{name}: ESO {eso:?} | ours {generate:?}");
        // ESO's own answers, checked against values computed here, so a broken
        // driver cannot pass for agreement.
        let want = |expiry: &str| {
            let Answer::Token(token) = &row.answer else {
                unreachable!()
            };
            Outcome::Data(
                [
                    (
                        "auth".to_string(),
                        testkit::cloudsmith::auth_for(token).into_bytes(),
                    ),
                    ("expiry".to_string(), expiry.as_bytes().to_vec()),
                ]
                .into(),
            )
        };
        match name {
            "int" => assert_eq!(eso, want("1700000000"), "ESO's generator"),
            // strconv.FormatFloat rounds an exact tie to even (strconv/ftoaryu.go).
            "tie" => assert_eq!(eso, want("1700000000.0039062"), "ESO's generator"),
            "not-jwt" => assert_eq!(
                eso,
                Outcome::Refused("error getting claims: invalid token format".into())
            ),
            _ => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nserve:\n{}",
        failures.join("\n"),
        serve.server.logs()
    );
    for (_, stand_in) in &rows.rows {
        assert!(stand_in.rejections().is_empty(), "{:?}", stand_in.rejections());
    }
}
