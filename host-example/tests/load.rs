//! Load and soak: many concurrent calls through one `Generator`, a mix of
//! successes and failures, each checked against its own request.
//!
//! Every call names its own service account (`sa-<i>`), so its OIDC token has
//! its own subject (`system:serviceaccount:load:sa-<i>`), and the stand-in's
//! access token carries that subject in its `sub`. A result that came back to
//! the wrong caller, or not at all, fails the test.
//!
//! The default run makes 2,000 calls at concurrency 64. The soak is the same
//! test with more calls; it prints the process's resident memory at 10 %, 50 %
//! and 100 % of the calls and fails if it grows too much in the second half:
//!
//! ```text
//! SOAK_CALLS=10000 cargo test --release -p cloudsmith-gen --test load -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use cloudsmith_gen::{
    cache, sandbox, Authority, EngineOptions, Error, GenerateError, Generator, GeneratorOptions,
    OutboundPolicy, PresentedToken, Secret, TokenRequest, TokenSource, TokenSourceError, UpstreamStatus,
};
use testkit::cloudsmith::{access_token_for, auth_for, jwt_payload, StandIn, StandInConfig};

const CONCURRENCY: usize = 64;
const DEFAULT_CALLS: usize = 2_000;
const NAMESPACE: &str = "load";
const SERVICE: &str = "eso";
const EXP: u64 = 1_700_000_000;
/// Allowed RSS growth between 50 % and 100 % of the calls. The stand-in runs
/// in this process, so it keeps no history here (only counts). A leak of
/// even 4 KiB a call over a 10,000-call soak would exceed it.
const MAX_GROWTH_BYTES: u64 = 16 * 1024 * 1024;

/// What each kind of call must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Succeeds at once.
    Ok,
    /// 401: unauthorized.
    Fail401,
    /// 404: rejected.
    Fail404,
    /// 422: rejected.
    Fail422,
    /// 503 twice, then success (retries absorb it).
    Burst503,
    /// 500 on every attempt: upstream failure after 4 attempts.
    Fail500,
}

impl Kind {
    /// Half the calls succeed at once; the rest spread over the failures.
    fn of(i: usize) -> Kind {
        match i % 10 {
            0..=4 => Kind::Ok,
            5 => Kind::Fail401,
            6 => Kind::Fail404,
            7 => Kind::Burst503,
            8 => Kind::Fail422,
            _ => Kind::Fail500,
        }
    }

    fn org(self) -> &'static str {
        match self {
            Kind::Ok => "acme",
            Kind::Fail401 => "fail-401",
            Kind::Fail404 => "fail-404",
            Kind::Fail422 => "fail-422",
            Kind::Burst503 => "burst-503",
            Kind::Fail500 => "fail-500",
        }
    }

    /// Requests the stand-in sees for one call of this kind.
    fn requests(self) -> usize {
        match self {
            Kind::Burst503 => 3,
            Kind::Fail500 => 4,
            _ => 1,
        }
    }
}

/// Mints a token for whichever service account the call names, so every call
/// has its own subject.
struct Minting;

// Written out rather than with `#[async_trait]`: the trait's desugared form.
impl TokenSource for Minting {
    fn token<'a, 'b, 'c>(
        &'a self,
        request: &'b TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Secret, TokenSourceError>> + Send + 'c>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        let subject = format!(
            "system:serviceaccount:{}:{}",
            request.namespace, request.service_account
        );
        let audiences: Vec<&str> = request.audiences.iter().map(String::as_str).collect();
        let token = testkit::oidc::token(&subject, &audiences);
        Box::pin(async move { Ok(Secret::new(token)) })
    }

    fn describe(&self) -> String {
        "a token per service account (test)".into()
    }
}

fn subject(i: usize) -> String {
    format!("system:serviceaccount:{NAMESPACE}:sa-{i}")
}

fn manifest(api: &str, i: usize) -> String {
    serde_json::json!({"spec": {
        "apiUrl": api,
        "orgSlug": Kind::of(i).org(),
        "serviceSlug": SERVICE,
        "serviceAccountRef": {"name": format!("sa-{i}")},
    }})
    .to_string()
}

/// Checks call `i`'s own result; returns what was wrong.
fn check(i: usize, result: &Result<cloudsmith_gen::Credentials, Error>) -> Result<(), String> {
    let kind = Kind::of(i);
    let status = |status: u16, detail: &str| UpstreamStatus {
        status,
        detail: detail.to_string(),
        token: None,
    };
    match (kind, result) {
        (Kind::Ok | Kind::Burst503, Ok(credentials)) => {
            let expected = auth_for(&access_token_for(&subject(i), kind.org(), SERVICE, EXP));
            if credentials.auth().expose() != expected {
                return Err(format!("call {i}: auth is not its own"));
            }
            // And the same through the token itself: auth -> token -> JWT sub.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials.auth().expose())
                .map_err(|e| format!("call {i}: auth is not base64: {e}"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| format!("call {i}: auth is not UTF-8"))?;
            let token = decoded
                .strip_prefix("token:")
                .ok_or(format!("call {i}: auth lacks the token: prefix"))?;
            let sub = jwt_payload(token).and_then(|p| p["sub"].as_str().map(String::from));
            if sub.as_deref() != Some(subject(i).as_str()) {
                return Err(format!("call {i}: access token sub {sub:?}"));
            }
            if credentials.expiry() != EXP.to_string() {
                return Err(format!("call {i}: expiry {}", credentials.expiry()));
            }
            Ok(())
        }
        (Kind::Fail401, Err(Error::Generate(GenerateError::Unauthorized(s))))
            if (s.status, s.detail.as_str()) == (401, "OIDC token cannot be authenticated")
                && matches!(&s.token, Some(PresentedToken::Claims { sub: Some(sub), .. }) if *sub == subject(i)) =>
        {
            Ok(())
        }
        (Kind::Fail404, Err(Error::Generate(GenerateError::Rejected(s))))
            if *s == status(404, "Not found.") =>
        {
            Ok(())
        }
        (Kind::Fail422, Err(Error::Generate(GenerateError::Rejected(s))))
            if *s == status(422, "The JWT cannot be created") =>
        {
            Ok(())
        }
        (
            Kind::Fail500,
            Err(Error::Generate(GenerateError::Upstream {
                status: Some(500),
                attempts: 4,
                detail,
                ..
            })),
        ) if detail == "A server error occurred." => Ok(()),
        (kind, other) => Err(format!("call {i} ({kind:?}): unexpected {other:?}")),
    }
}

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_each_get_their_own_result_and_memory_stays_flat() {
    let calls: usize = match std::env::var("SOAK_CALLS") {
        Ok(v) => v.parse().expect("SOAK_CALLS is a number of calls"),
        Err(_) => DEFAULT_CALLS,
    };
    assert!(calls >= 10, "SOAK_CALLS must be at least 10");

    // The stand-in's history would grow with every call inside this process,
    // which is what the soak measures: keep counts only.
    let stand_in = StandIn::start(StandInConfig {
        keep_history: false,
        ..StandInConfig::default()
    })
    .await
    .expect("stand-in");
    let engine = sandbox::engine(&EngineOptions {
        pooling: true,
        max_concurrent_calls: CONCURRENCY as u32,
        ..Default::default()
    })
    .expect("engine");
    let component = cache::compile(&engine, cloudsmith_gen::COMPONENT).expect("compile the generator");
    let policy = OutboundPolicy::default()
        .allow_only([stand_in.authority().parse::<Authority>().expect("authority")])
        .allow_http(true);
    let generator = Generator::new(
        &engine,
        &component,
        Arc::new(Minting),
        GeneratorOptions {
            policy,
            max_concurrent_calls: CONCURRENCY,
            ..Default::default()
        },
    )
    .expect("generator");
    let api = stand_in.url();

    // Three phases: to 10 %, to 50 %, to 100 % of the calls; RSS after each.
    let marks = [calls / 10, calls / 2, calls];
    let mut done = 0;
    let mut figures = Vec::new();
    let mut failures = Vec::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    for mark in marks {
        // A bounded window of calls in flight (twice the generator's slots):
        // spawning a whole phase at once would hold every pending call's
        // future and manifest at the same time, so the heap's peak (and the
        // RSS that keeps it) would grow with the number of calls. That, not
        // the generator, was the 1.2 KiB a call the soak used to report.
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = done;
        let mut seen = 0;
        loop {
            while next < mark && tasks.len() < 2 * CONCURRENCY {
                let generator = generator.clone();
                let manifest = manifest(&api, next);
                let i = next;
                tasks.spawn(async move { (i, generator.generate(&manifest, NAMESPACE).await) });
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (i, result) = joined.expect("a call task panicked");
            seen += 1;
            let outcome = match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => kind_name(e),
            };
            *outcomes.entry(outcome).or_default() += 1;
            if let Err(why) = check(i, &result) {
                failures.push(why);
            }
        }
        assert_eq!(seen, mark - done, "every call of the phase came back");
        done = mark;
        figures.push((mark, rss_bytes(), started.elapsed()));
    }

    assert!(
        failures.is_empty(),
        "{} wrong results, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // No call lost: the stand-in saw exactly the requests the calls imply.
    let expected_requests: usize = (0..calls).map(|i| Kind::of(i).requests()).sum();
    assert_eq!(
        stand_in.request_count(),
        expected_requests,
        "requests the stand-in received"
    );
    for kind in [
        Kind::Ok,
        Kind::Fail401,
        Kind::Fail404,
        Kind::Fail422,
        Kind::Burst503,
        Kind::Fail500,
    ] {
        let count = (0..calls).filter(|i| Kind::of(*i) == kind).count();
        assert_eq!(
            stand_in.request_count_for(kind.org()),
            count * kind.requests(),
            "requests for {}",
            kind.org()
        );
    }

    println!("load: {calls} calls, concurrency {CONCURRENCY}, outcomes {outcomes:?}");
    for (mark, rss, elapsed) in &figures {
        println!(
            "load: after {mark:>6} calls ({:>5.1}s): RSS {:>7.1} MiB",
            elapsed.as_secs_f64(),
            mib(*rss)
        );
    }
    let (_, rss_half, _) = figures[1];
    let (_, rss_end, elapsed) = figures[2];
    let growth = rss_end.saturating_sub(rss_half);
    println!(
        "load: RSS growth 50%->100%: {:.2} MiB ({:.0} bytes a call); {:.0} calls/s",
        mib(growth),
        growth as f64 / (calls - calls / 2) as f64,
        calls as f64 / elapsed.as_secs_f64()
    );
    assert!(
        growth < MAX_GROWTH_BYTES,
        "RSS grew {:.1} MiB between 50% and 100% of {calls} calls",
        mib(growth)
    );
}

fn kind_name(e: &Error) -> String {
    match e {
        Error::Generate(GenerateError::Unauthorized(s)) => format!("unauthorized {}", s.status),
        Error::Generate(GenerateError::Rejected(s)) => format!("rejected {}", s.status),
        Error::Generate(GenerateError::Upstream { status, .. }) => format!("upstream {status:?}"),
        Error::Generate(other) => format!("generate: {other}"),
        Error::Host(h) => format!("host: {h}"),
    }
}
