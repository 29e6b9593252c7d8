//! `cloudsmith-gen check` as a process against the stand-in Cloudsmith: every step's
//! pass and each failure case, with the fix and the documentation's troubleshooting
//! item it names, in text and JSON; no token in any output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use testkit::cloudsmith::{StandIn, StandInConfig, PRODUCTION_AUDIENCE};

const BIN: &str = env!("CARGO_BIN_EXE_cloudsmith-gen");
const SUBJECT: &str = "system:serviceaccount:apps:puller";

struct World {
    stand_in: StandIn,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let stand_in = common::stand_in_trusting_apps().await;
        World {
            stand_in,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The documentation's manifest at the stand-in, for `org`, with the API as ESO's CRD
    /// names it (`apiUrl`: `apiHost` is a WARN of its own, tests/api_host.rs).
    fn manifest(&self, org: &str) -> PathBuf {
        let text = testkit::cloudsmith::documented_manifest(&self.stand_in.url())
            .replace("my-organization", org)
            .replace("  apiHost:", "  apiUrl:");
        let path = self.dir.path().join(format!("{org}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `check` with a token (in a variable) for `subject` and `audiences`.
    fn check(&self, manifest: &Path, subject: &str, audiences: &[&str], extra: &[&str]) -> (Output, String) {
        let token = testkit::oidc::token(subject, audiences);
        let authority = self.stand_in.authority();
        let mut args = vec![
            "check",
            "--manifest",
            manifest.to_str().unwrap(),
            "--oidc-token-env",
            "CHECK_TOKEN",
        ];
        args.extend(extra);
        if !extra.contains(&"--no-policy") {
            args.extend(["--allow-http", "--allow-host", &authority]);
        }
        let args: Vec<&str> = args.into_iter().filter(|a| *a != "--no-policy").collect();
        let mut command = Command::new(BIN);
        command.args(&args).env("CHECK_TOKEN", &token);
        let (out, all) = run(command, &self.dir.path().join("cache"));
        for part in token.split('.') {
            assert!(!all.contains(part), "a part of the token in: {all}");
        }
        (out, all)
    }
}

/// Runs `command` with `cache` as its compile cache and no stdin; returns its output
/// and both streams as one text.
fn run(mut command: Command, cache: &Path) -> (Output, String) {
    let out = command
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .output()
        .expect("cloudsmith-gen runs");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, all)
}

/// The report on stdout of a run that must pass (exit 0).
fn passed(out: &Output) -> String {
    let text = stdout(out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of step `label` (`ok`, `WARN`, `FAIL`, `skip` then the label).
fn line<'a>(text: &'a str, label: &str) -> &'a str {
    find_line(text, label).unwrap_or_else(|| panic!("no {label} step in:\n{text}"))
}

/// [`line`], or `None` when there is no such step.
fn find_line<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines().find(|l| {
        let rest = l.split_once(' ').map_or("", |(_, rest)| rest.trim_start());
        rest.strip_prefix(label)
            .is_some_and(|r| r.is_empty() || r.starts_with(':'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_passes_and_the_token_step_names_what_to_trust() {
    let w = World::new().await;
    let docker = w.dir.path().join("config.json");
    std::fs::write(
        &docker,
        r#"{"credHelpers": {"docker.cloudsmith.io": "cloudsmith"}}"#,
    )
    .unwrap();
    let manifest = w.manifest("my-organization");
    let (out, _) = w.check(
        &manifest,
        SUBJECT,
        &[PRODUCTION_AUDIENCE],
        &[
            "--registry",
            "docker.cloudsmith.io",
            "--docker-config",
            docker.to_str().unwrap(),
        ],
    );
    let text = passed(&out);
    for label in [
        "manifest",
        "token source",
        "outbound policy",
        "exchange",
        "registry",
    ] {
        assert!(line(&text, label).starts_with("ok "), "{label}: {text}");
    }
    let token = line(&text, "token source");
    assert!(
        token.contains(&format!("iss={}", testkit::oidc::ISSUER)),
        "{token}"
    );
    assert!(token.contains(&format!("sub={SUBJECT}")), "{token}");
    assert!(
        line(&text, "manifest").contains("CloudsmithAccessToken/my-cloudsmith-token"),
        "{text}"
    );

    let (out, _) = w.check(&manifest, SUBJECT, &[PRODUCTION_AUDIENCE], &["--output", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["ok"], Value::Bool(true), "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "manifest",
            "token-source",
            "outbound-policy",
            "exchange",
            "registry"
        ]
    );
}

/// A failure case: name, manifest, token subject and audiences, extra flags, the step
/// that must fail (or warn), and what its lines must say.
type Case<'a> = (
    &'a str,
    PathBuf,
    &'a str,
    Vec<&'a str>,
    Vec<&'a str>,
    &'a str,
    &'a [&'a str],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_names_its_fix_and_item() {
    let w = World::new().await;
    let ok = w.manifest("my-organization");
    let cases: Vec<Case> = vec![
        (
            "untrusted subject",
            ok.clone(),
            "system:serviceaccount:default:default",
            vec![PRODUCTION_AUDIENCE],
            vec![],
            "exchange",
            &[
                "Token Exchange Fails",
                "sub=system:serviceaccount:default:default",
            ],
        ),
        (
            "missing audience",
            ok.clone(),
            SUBJECT,
            vec!["https://elsewhere.example"],
            vec!["--no-exchange"],
            "token source",
            &["Invalid Audience", PRODUCTION_AUDIENCE],
        ),
        (
            "403",
            w.manifest("fail-403"),
            SUBJECT,
            vec![PRODUCTION_AUDIENCE],
            vec![],
            "exchange",
            &["Permissions"],
        ),
        (
            "404 org",
            w.manifest("fail-404"),
            SUBJECT,
            vec![PRODUCTION_AUDIENCE],
            vec![],
            "exchange",
            &["fail-404"],
        ),
        (
            "422",
            w.manifest("fail-422"),
            SUBJECT,
            vec![PRODUCTION_AUDIENCE],
            vec![],
            "exchange",
            &["spec.orgSlug (fail-422)"],
        ),
        (
            "policy",
            ok.clone(),
            SUBJECT,
            vec![PRODUCTION_AUDIENCE],
            vec!["--no-policy"],
            "outbound policy",
            &["--allow-host"],
        ),
        (
            "registry",
            ok.clone(),
            SUBJECT,
            vec![PRODUCTION_AUDIENCE],
            vec!["--no-exchange", "--registry", "registry.acme.example"],
            "registry",
            &["Registry Domain Issues"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, manifest, subject, audiences, extra, step, needles) in cases {
        let (out, all) = w.check(&manifest, subject, &audiences, &extra);
        let text = stdout(&out);
        let found = line(&text, step);
        let after: String = text
            .lines()
            .skip_while(|l| *l != found)
            .take(3)
            .collect::<Vec<_>>()
            .join("\n");
        let bad = out.status.code() != Some(1)
            || !(found.starts_with("FAIL") || found.starts_with("WARN"))
            || needles.iter().any(|n| !after.contains(n));
        if bad {
            failures.push(format!("{name}: exit {:?}\n{all}", out.status.code()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_and_unreadable_inputs() {
    let w = World::new().await;
    // A port nothing listens on: the network item.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let text = testkit::cloudsmith::documented_manifest(&format!("http://127.0.0.1:{port}"))
        .replace("  apiHost:", "  apiUrl:");
    let manifest = w.dir.path().join("closed.yaml");
    std::fs::write(&manifest, text).unwrap();
    let jwt = testkit::oidc::token(SUBJECT, &[PRODUCTION_AUDIENCE]);
    let ok = w.manifest("my-organization");
    let ok = ok.to_str().unwrap();
    let closed_host = format!("127.0.0.1:{port}");
    let authority = w.stand_in.authority();
    let policy = ["--allow-http", "--allow-host", authority.as_str()];
    // A Docker config that Docker itself would refuse: the registry step names the file
    // and the entry, never the entry's value.
    let secret = "c2VjcmV0LXZhbHVl-not-base64!";
    let docker = w.dir.path().join("bad-config.json");
    let docker = docker.to_str().unwrap();
    // A token that is not a JWT, and a token variable that is not set.
    let bad_token = |name, token, needle| {
        let args = vec!["--manifest", ok, "--no-exchange"];
        InputCase::new(name, args, token, 1, ("token source", "FAIL"), &[needle])
    };
    let bad_docker = |name, text: String, needle| {
        let args = [
            &["--manifest", ok, "--no-exchange", "--docker-config", docker][..],
            &policy,
        ]
        .concat();
        let needles = ["bad-config.json", needle];
        InputCase {
            docker: Some(text),
            ..InputCase::new(name, args, Some(&jwt), 1, ("registry", "FAIL"), &needles)
        }
    };
    let closed_args = vec![
        "--manifest",
        manifest.to_str().unwrap(),
        "--allow-http",
        "--allow-host",
        &closed_host,
        "--connect-timeout",
        "2",
        "--timeout",
        "10",
    ];
    let cases = [
        // A port nothing listens on: the network item.
        InputCase::new(
            "closed port",
            closed_args,
            Some(&jwt),
            1,
            ("exchange", "FAIL"),
            &["Network Issues"],
        ),
        // No manifest: the manifest step fails, nothing else runs.
        InputCase::new(
            "no manifest",
            vec!["--manifest", "/nonexistent.yaml"],
            None,
            1,
            ("manifest", "FAIL"),
            &["/nonexistent.yaml"],
        ),
        bad_token("token not a JWT", Some("not-a-jwt"), "not a JWT"),
        bad_token("token variable not set", None, "T"),
        bad_docker(
            "Docker auth not base64",
            format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{secret}"}}}}}}"#),
            "auths[\"ghcr.io\"]",
        ),
        bad_docker(
            "Docker credHelpers entry not a string",
            r#"{"credHelpers": {"docker.cloudsmith.io": 7}}"#.to_string(),
            "credHelpers",
        ),
        bad_docker(
            "Docker config not an object",
            "[1, 2]".to_string(),
            "not a JSON object",
        ),
        // --no-exchange with everything else right passes.
        InputCase::new(
            "--no-exchange",
            [&["--manifest", ok, "--no-exchange"][..], &policy].concat(),
            Some(&jwt),
            0,
            ("exchange", "skip"),
            &[],
        ),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let mut command = Command::new(BIN);
        command
            .arg("check")
            .args(&case.args)
            .args(["--oidc-token-env", "T"])
            .env_remove("T");
        if let Some(token) = &case.token {
            command.env("T", token);
        }
        if let Some(text) = &case.docker {
            std::fs::write(docker, text).unwrap();
        }
        let (out, all) = run(command, &w.dir.path().join("cache"));
        let report = stdout(&out);
        let (step, mark) = case.step;
        let mut wrong = Vec::new();
        if out.status.code() != Some(case.code) {
            wrong.push(format!("exit {:?}, not {}", out.status.code(), case.code));
        }
        if !find_line(&report, step).is_some_and(|l| l.starts_with(mark)) {
            wrong.push(format!("no {mark} {step} step"));
        }
        wrong.extend(
            case.needles
                .iter()
                .filter(|n| !report.contains(*n))
                .map(|n| format!("{n:?} not in the report")),
        );
        // Neither the token's parts nor the Docker entry's value, in any output.
        if all.contains(secret) || jwt.split('.').any(|part| all.contains(part)) {
            wrong.push("a secret in the output".to_string());
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n{all}", case.name, wrong.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// A `check` run that must exit `code` with `step` marked (FAIL, skip) and `needles` in
/// its report: `args` after `check`, then `--oidc-token-env T` with `token` as `T`
/// (unset: `None`), and `docker`, when given, written where the args' `--docker-config`
/// points.
struct InputCase<'a> {
    name: &'static str,
    args: Vec<&'a str>,
    token: Option<String>,
    docker: Option<String>,
    code: i32,
    step: (&'static str, &'static str),
    needles: Vec<&'a str>,
}

impl<'a> InputCase<'a> {
    /// A case with no Docker config of its own.
    fn new(
        name: &'static str,
        args: Vec<&'a str>,
        token: Option<&str>,
        code: i32,
        step: (&'static str, &'static str),
        needles: &[&'a str],
    ) -> InputCase<'a> {
        InputCase {
            name,
            args,
            token: token.map(str::to_string),
            docker: None,
            code,
            step,
            needles: needles.to_vec(),
        }
    }
}

/// `check` against a real cluster: the token step shows the `iss` and `sub` of the token
/// the API server minted, the values the seed's troubleshooting pipeline
/// (`kubectl create token … | cut -d . -f 2 | base64 -d | jq .iss`) finds, decoded here
/// from a token `kubectl create token` got for the same account. A Cloudsmith that
/// trusts the issuer and subject passes the exchange; one that trusts another subject
/// fails it, naming the issuer and subject to trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_clusters_token_names_the_issuer_and_subject_to_trust() {
    let cluster = testkit::cluster::Cluster::shared();
    let kubeconfig = cluster.deployed_service().to_path_buf();
    let ns = cluster.namespace("check");
    cluster.opt_in(&ns, true);
    // The seed's pipeline, by hand.
    let reference = cluster.token(&ns, "cloudsmith-oidc", &[]);
    let payload = testkit::cloudsmith::jwt_payload(&reference).unwrap();
    let (iss, sub) = (
        payload["iss"].as_str().unwrap().to_string(),
        payload["sub"].as_str().unwrap().to_string(),
    );
    assert_eq!(sub, format!("system:serviceaccount:{ns}:cloudsmith-oidc"));

    let dir = tempfile::tempdir().unwrap();
    let run = |stand_in: &StandIn| {
        let generator =
            std::fs::read_to_string(testkit::workspace_root().join("deploy/serve/generators.yaml"))
                .unwrap()
                .replace(
                    "apiUrl: \"https://api.cloudsmith.io\"",
                    &format!("apiUrl: \"{}\"", stand_in.url()),
                );
        let manifest = dir.path().join(format!("{}.yaml", stand_in.port()));
        std::fs::write(&manifest, generator).unwrap();
        let mut command = Command::new(BIN);
        command
            .args([
                "check",
                "--manifest",
                manifest.to_str().unwrap(),
                "--namespace",
                &ns,
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--allow-http", "--allow-host", &stand_in.authority()]);
        let (out, all) = run(command, &dir.path().join("cache"));
        // No token in any output: the one minted for this run reached Cloudsmith.
        let sent: Vec<String> = stand_in
            .requests()
            .iter()
            .filter_map(|r| Some(r.json()?["oidc_token"].as_str()?.to_string()))
            .collect();
        assert!(!sent.is_empty(), "nothing reached Cloudsmith: {all}");
        let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
        assert_eq!(testkit::process::find_secret(&[&all], &sent), None);
        out
    };

    let trusting = StandIn::start(StandInConfig::trusting(cluster, &sub))
        .await
        .unwrap();
    let out = run(&trusting);
    let text = passed(&out);
    let token = line(&text, "token source");
    assert!(token.starts_with("ok "), "{token}");
    assert!(token.contains(&format!("iss={iss},")), "{token}");
    assert!(token.contains(&format!("sub={sub},")), "{token}");
    assert!(token.contains("source=Kubernetes TokenRequest"), "{token}");
    assert!(line(&text, "exchange").starts_with("ok "), "{text}");
    // The token check minted is the one Cloudsmith verified: same issuer and subject.
    let sent = trusting.requests()[0].json().unwrap()["oidc_token"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = testkit::cloudsmith::jwt_payload(&sent).unwrap();
    assert_eq!(
        (sent["iss"].as_str(), sent["sub"].as_str()),
        (Some(iss.as_str()), Some(sub.as_str()))
    );

    let other = StandIn::start(StandInConfig::trusting(
        cluster,
        &format!("system:serviceaccount:{ns}:someone-else"),
    ))
    .await
    .unwrap();
    let out = run(&other);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let exchange = text
        .lines()
        .skip_while(|l| !l.contains("exchange"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(exchange.starts_with("FAIL exchange"), "{text}");
    for needle in [
        "Token Exchange Fails",
        &format!("trust issuer {iss} and subject {sub}"),
    ] {
        assert!(exchange.contains(needle), "{needle:?} not in {exchange}");
    }
    assert!(
        other.rejections()[0].contains("not trusted"),
        "{:?}",
        other.rejections()
    );
}
