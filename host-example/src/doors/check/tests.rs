//! `check`'s walk over a fake mint port: which steps run, how each ends, and when the
//! exchange is asked for at all.

use base64::Engine as _;

use cloudsmith_gen::{Error, GenerateError, UpstreamStatus};

use super::*;
use crate::mint::fake::FakeMint;

const MANIFEST: &str = r#"{"kind": "CloudsmithAccessToken", "metadata": {"name": "t"},
    "spec": {"orgSlug": "org", "serviceSlug": "svc", "serviceAccountRef": {"name": "puller"}}}"#;
const INTERNAL_API: &str = r#"{"kind": "CloudsmithAccessToken", "metadata": {"name": "t"},
    "spec": {"apiUrl": "https://cloudsmith.internal:8443", "orgSlug": "org", "serviceSlug": "svc",
    "serviceAccountRef": {"name": "puller"}}}"#;
const OTHER_NAMESPACE: &str = r#"{"kind": "CloudsmithAccessToken", "metadata": {"name": "t"},
    "spec": {"orgSlug": "org", "serviceSlug": "svc", "serviceAccountRef": {"name": "puller", "namespace": "kube-system"}}}"#;
const NO_SERVICE: &str = r#"{"kind": "CloudsmithAccessToken", "metadata": {"name": "t"},
    "spec": {"orgSlug": "org", "serviceAccountRef": {"name": "puller"}}}"#;

const CLOUDSMITH: &str = "https://api.cloudsmith.io";

/// A service account token (unsigned: check reads its claims, never verifies it).
fn jwt(aud: &str, expires_in: u64) -> String {
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = serde_json::json!({"iss": "https://k8s.example", "sub": "system:serviceaccount:apps:puller",
        "aud": [aud], "exp": cloudsmith_gen_core::token_cache::now_unix() + expires_in});
    format!("{}.{}.c2ln", b64(serde_json::json!({"alg": "none"})), b64(claims))
}

struct Row {
    name: &'static str,
    /// The manifest as read, or none (it could not be read).
    manifest: Option<&'static str>,
    /// What the token source gives.
    oidc: Result<String, &'static str>,
    /// The exchange's failure, if it fails.
    exchange: Option<fn() -> Failure>,
    tweak: fn(&mut CheckConfig),
    want: Vec<(StepName, Status)>,
    exit: u8,
    exchanges: usize,
}

fn same(_: &mut CheckConfig) {}

fn refused() -> Failure {
    Failure::Call(Error::Generate(GenerateError::Unauthorized(UpstreamStatus {
        status: 401,
        detail: "OIDC token cannot be authenticated".into(),
        token: None,
    })))
}

fn rows() -> Vec<Row> {
    use Status::{Fail, Pass, Skipped, Warn};
    use StepName::{Exchange, Manifest, OutboundPolicy, Registry, TokenSource};
    let good = || Ok(jwt(CLOUDSMITH, 3600));
    let row = |name, oidc: Result<String, &'static str>, want: [Status; 5], exit, exchanges| Row {
        name,
        manifest: Some(MANIFEST),
        oidc,
        exchange: None,
        tweak: same,
        want: [Manifest, TokenSource, OutboundPolicy, Exchange, Registry]
            .into_iter()
            .zip(want)
            .collect(),
        exit,
        exchanges,
    };
    vec![
        row("every step passes", good(), [Pass, Pass, Pass, Pass, Pass], 0, 1),
        Row {
            manifest: None,
            want: vec![(Manifest, Fail)],
            ..row(
                "a manifest that cannot be read ends the report",
                good(),
                [Pass; 5],
                1,
                0,
            )
        },
        row(
            "no token: no exchange",
            Err("token file /t: no such file"),
            [Pass, Fail, Pass, Skipped, Pass],
            1,
            0,
        ),
        // Cloudsmith's answer says more than the token's claims: the exchange still runs.
        row(
            "a token that is no JWT",
            Ok("opaque".into()),
            [Pass, Fail, Pass, Pass, Pass],
            1,
            1,
        ),
        row(
            "a token without the audience",
            Ok(jwt("https://other.example", 3600)),
            [Pass, Fail, Pass, Pass, Pass],
            1,
            1,
        ),
        row(
            "a token that expires within the call's bound",
            Ok(jwt(CLOUDSMITH, 30)),
            [Pass, Warn, Pass, Pass, Pass],
            1,
            1,
        ),
        Row {
            manifest: Some(INTERNAL_API),
            ..row(
                "an API the policy refuses: no exchange",
                Ok(jwt("https://cloudsmith.internal:8443", 3600)),
                [Pass, Pass, Fail, Skipped, Pass],
                1,
                0,
            )
        },
        Row {
            tweak: |c| c.no_exchange = true,
            ..row("--no-exchange", good(), [Pass, Pass, Pass, Skipped, Pass], 0, 0)
        },
        Row {
            exchange: Some(refused),
            ..row(
                "Cloudsmith refuses the token",
                good(),
                [Pass, Pass, Pass, Fail, Pass],
                1,
                1,
            )
        },
        Row {
            manifest: Some(OTHER_NAMESPACE),
            ..row(
                "another namespace's account: no token asked for",
                good(),
                [Pass, Fail, Pass, Skipped, Pass],
                1,
                0,
            )
        },
        Row {
            manifest: Some(NO_SERVICE),
            ..row("no serviceSlug", good(), [Fail, Pass, Pass, Pass, Pass], 1, 1)
        },
        Row {
            tweak: |c| c.registries = vec!["registry.acme.com".into()],
            ..row(
                "a custom registry domain",
                good(),
                [Pass, Pass, Pass, Pass, Warn],
                1,
                1,
            )
        },
        Row {
            tweak: |c| c.docker_config = Some("/nonexistent/config.json".into()),
            ..row(
                "a Docker config that cannot be read",
                good(),
                [Pass, Pass, Pass, Pass, Fail],
                1,
                1,
            )
        },
    ]
}

/// The word JSON names `value` with.
fn json_text(value: impl serde::Serialize) -> String {
    serde_json::to_value(value).unwrap().as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_walk_runs_each_step_it_can_and_exits_0_only_when_all_passed() {
    let mut wrong = Vec::new();
    for row in rows() {
        let mut config = CheckConfig {
            manifest: "m.yaml".into(),
            namespace: "apps".into(),
            tokens: TokenChoice::Env("TOKEN".into()),
            namespaces: NamespacePolicy::TargetOnly,
            runtime: RuntimeConfig::default(),
            registries: Vec::new(),
            docker_config: None,
            no_exchange: false,
            format: ReportFormat::Json,
        };
        (row.tweak)(&mut config);
        let mut mint = FakeMint::new("access", 600);
        mint.oidc = row.oidc.clone().map_err(str::to_string);
        if let Some(failure) = row.exchange {
            mint = mint.failing(move |_| Some(failure()));
        }
        let manifest = row
            .manifest
            .map(str::to_string)
            .ok_or_else(|| Failure::usage("manifest m.yaml: no such file"));
        let reply = handle(manifest, &mint, &config).await.unwrap();
        let report: serde_json::Value = serde_json::from_str(&reply.stdout).unwrap();
        let got: Vec<(String, String)> = report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap().into(),
                    s["status"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = row
            .want
            .iter()
            .map(|(step, status)| (json_text(step), json_text(status)))
            .collect();
        if got != want || reply.exit != row.exit || mint.calls() != row.exchanges {
            wrong.push(format!(
                "{}: steps {got:?} exit {} after {} exchange(s); want {want:?} exit {} after {}",
                row.name,
                reply.exit,
                mint.calls(),
                row.exit,
                row.exchanges
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
