//! The mint port over a fake exchange and a real token cache in a temporary directory:
//! hit, miss, expired and corrupt entries, another process's exchange (that fills the
//! entry, that dies, that outlasts half the deadline), and fills that fail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudsmith_gen::token_source::StaticTokenSource;
use cloudsmith_gen::{
    CallReport, Credentials, Error, GenerateError, GeneratorInfo, HostError, Secret, UpstreamStatus,
};
use cloudsmith_gen_core::flight::Flight;
use cloudsmith_gen_core::token_cache::{now_unix, CacheKey, CachedToken, Lookup, TokenCache};

use super::*;

const MANIFEST: &str =
    r#"{"spec": {"orgSlug": "org", "serviceSlug": "svc", "serviceAccountRef": {"name": "sa"}}}"#;
const IDENTITY: &str = "fake identity";

/// What the fake exchange answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// This access token, expiring this many seconds from now.
    Token(&'static str, u64),
    /// Cloudsmith refuses the credentials (401).
    Refused,
}

/// An exchange that answers as told, records when it ran, and fails as the sandbox would
/// when called past the call's deadline.
#[derive(Clone)]
struct FakeExchange {
    answer: Answer,
    deadline: Instant,
    calls: Arc<Mutex<Vec<Instant>>>,
}

fn credentials(token: &str, exp: u64) -> Credentials {
    CachedToken {
        access_token: Secret::new(token),
        expiry: exp.to_string(),
        exp,
    }
    .credentials()
}

impl Exchange for FakeExchange {
    async fn exchange(&self, _manifest: &str, _namespace: &str, tokens: &CallTokens) -> Traced<Credentials> {
        let now = Instant::now();
        self.calls.lock().unwrap().push(now);
        assert_eq!(
            tokens.source.describe(),
            "a fixed token",
            "the call's own token source"
        );
        let result = match self.answer {
            _ if now >= self.deadline => Err(Error::Host(HostError::DeadlineExceeded {
                deadline: Duration::ZERO,
            })),
            Answer::Token(token, exp_in) => Ok(credentials(token, now_unix() + exp_in)),
            Answer::Refused => Err(Error::Generate(GenerateError::Unauthorized(UpstreamStatus {
                status: 401,
                detail: "OIDC token cannot be authenticated".into(),
                token: None,
            }))),
        };
        Traced {
            result,
            report: CallReport::default(),
        }
    }

    async fn info(&self) -> Result<GeneratorInfo, Error> {
        Err(Error::Host(HostError::Instantiate("not asked".into())))
    }
}

/// What is in and around the cache when the call starts.
#[derive(Clone, Copy, Debug)]
enum Before {
    Empty,
    /// An entry with this token, expiring this many seconds from now.
    Entry(&'static str, u64),
    /// An entry file that is not JSON.
    Corrupt,
    /// Another process is exchanging (holds the lock) and stores this token.
    AnotherFills(&'static str),
    /// Another process is exchanging and dies before it stores anything.
    AnotherDies,
    /// Another process is exchanging for longer than this call may wait.
    AnotherOutlasts,
    /// The cache directory is a file: nothing can be read, locked or stored.
    Unwritable,
}

/// How the call names its token source's identity.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Keyed {
    /// An identity the cache keys on.
    Yes,
    /// No identity: the call cannot be cached.
    NoIdentity,
    /// The host does not see every token (a component file): not cached.
    HostBlind,
}

/// What the cache holds for the call's key afterwards.
#[derive(Clone, Copy, Debug, PartialEq)]
enum After {
    Hit(&'static str),
    Miss,
    Unusable,
}

struct Row {
    name: &'static str,
    before: Before,
    keyed: Keyed,
    answer: Answer,
    /// The call's deadline, from its start.
    deadline: Duration,
    /// Exchanges run.
    exchanges: usize,
    /// The access token answered, or the failure's exit code.
    result: Result<&'static str, u8>,
    after: After,
    /// The exchange ran no earlier than this after the call's start.
    not_before: Duration,
}

const HOUR: u64 = 3600;
const LONG: Duration = Duration::from_secs(60);

fn rows() -> Vec<Row> {
    let row = |name, before, answer, exchanges, result, after| Row {
        name,
        before,
        keyed: Keyed::Yes,
        answer,
        deadline: LONG,
        exchanges,
        result,
        after,
        not_before: Duration::ZERO,
    };
    let fresh = Answer::Token("fresh", HOUR);
    vec![
        row(
            "hit",
            Before::Entry("cached", HOUR),
            fresh,
            0,
            Ok("cached"),
            After::Hit("cached"),
        ),
        row("miss", Before::Empty, fresh, 1, Ok("fresh"), After::Hit("fresh")),
        // Within the margin (300 s) of its exp: as good as expired.
        row(
            "expired",
            Before::Entry("old", 100),
            fresh,
            1,
            Ok("fresh"),
            After::Hit("fresh"),
        ),
        row(
            "corrupt",
            Before::Corrupt,
            fresh,
            1,
            Ok("fresh"),
            After::Hit("fresh"),
        ),
        row(
            "another process fills the entry while this one waits",
            Before::AnotherFills("theirs"),
            fresh,
            0,
            Ok("theirs"),
            After::Hit("theirs"),
        ),
        row(
            "the leader dies: the waiter takes the lock and exchanges",
            Before::AnotherDies,
            fresh,
            1,
            Ok("fresh"),
            After::Hit("fresh"),
        ),
        // Waiting the whole deadline would leave the call no time for its own exchange
        // (the fake fails past the deadline, as the sandbox does).
        Row {
            deadline: Duration::from_secs(2),
            not_before: Duration::from_secs(1),
            ..row(
                "the waiter gives up at half the deadline and exchanges alone",
                Before::AnotherOutlasts,
                fresh,
                1,
                Ok("fresh"),
                After::Hit("fresh"),
            )
        },
        row(
            "a fill that fails stores nothing",
            Before::Empty,
            Answer::Refused,
            1,
            Err(5),
            After::Miss,
        ),
        row(
            "a failed fill leaves the old entry as it was",
            Before::Entry("old", 100),
            Answer::Refused,
            1,
            Err(5),
            After::Unusable,
        ),
        row(
            "a cache that cannot be written costs an exchange, not the call",
            Before::Unwritable,
            fresh,
            1,
            Ok("fresh"),
            After::Unusable,
        ),
        Row {
            keyed: Keyed::NoIdentity,
            ..row(
                "no identity: not cached",
                Before::Entry("cached", HOUR),
                fresh,
                1,
                Ok("fresh"),
                After::Hit("cached"),
            )
        },
        Row {
            keyed: Keyed::HostBlind,
            ..row(
                "a token the host does not see: not cached",
                Before::Entry("cached", HOUR),
                fresh,
                1,
                Ok("fresh"),
                After::Hit("cached"),
            )
        },
        // Another generator's outputs (not token:<access token>) are answered, not cached.
        row(
            "a fill without an access token",
            Before::Empty,
            Answer::Token("", HOUR),
            1,
            Ok(""),
            After::Miss,
        ),
    ]
}

fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Sets the cache up as `before` says; a thread standing for another process, if any.
fn arrange(before: Before, cache: &TokenCache, key: &CacheKey) -> Option<std::thread::JoinHandle<()>> {
    let token = |t: &'static str, exp_in: u64| CachedToken {
        access_token: Secret::new(t),
        expiry: (now_unix() + exp_in).to_string(),
        exp: now_unix() + exp_in,
    };
    let hold = || match cache.lock(key, Instant::now()) {
        Flight::Leader(lock) => lock,
        other => panic!("the other process's lock: {other:?}"),
    };
    // Long enough that the call finds the lock taken, short enough for a quick test.
    let pause = Duration::from_millis(200);
    match before {
        Before::Empty => None,
        Before::Entry(t, exp_in) => {
            cache.put(key, &token(t, exp_in)).unwrap();
            None
        }
        Before::Corrupt => {
            std::fs::create_dir_all(cache.dir()).unwrap();
            write_private(&cache.entry_path(key), "{not json");
            None
        }
        Before::AnotherFills(t) => {
            let (lock, cache, key, token) = (hold(), cache.clone(), key.clone(), token(t, HOUR));
            Some(std::thread::spawn(move || {
                std::thread::sleep(pause);
                cache.put(&key, &token).unwrap();
                drop(lock);
            }))
        }
        Before::AnotherDies => {
            let lock = hold();
            Some(std::thread::spawn(move || {
                std::thread::sleep(pause);
                drop(lock);
            }))
        }
        Before::AnotherOutlasts => {
            let lock = hold();
            Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(3));
                drop(lock);
            }))
        }
        Before::Unwritable => {
            std::fs::write(cache.dir(), "a file").unwrap();
            None
        }
    }
}

async fn run(row: &Row) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::new(dir.path().join("tokens"));
    let key = CacheKey::for_call(MANIFEST, IDENTITY, false).unwrap();
    let other = arrange(row.before, &cache, &key);
    let started = Instant::now();
    let exchange = FakeExchange {
        answer: row.answer,
        deadline: started + row.deadline,
        calls: Arc::default(),
    };
    let minter = Minter::over(
        Ready(exchange.clone()),
        Settings {
            cache: Some(cache.clone()),
            host_sees_tokens: row.keyed != Keyed::HostBlind,
            deadline: LONG,
            verbose: false,
        },
    );
    let request = MintRequest {
        manifest: MANIFEST.into(),
        namespace: "apps".into(),
        tokens: TokenChoice::Given {
            source: Arc::new(StaticTokenSource::new(Secret::new("oidc"))),
            identity: (row.keyed != Keyed::NoIdentity).then(|| IDENTITY.into()),
        },
        namespaces: NamespacePolicy::TargetOnly,
        deadline: Some(started + row.deadline),
    };
    let result = minter.mint(request).await;
    if let Some(other) = other {
        other.join().unwrap();
    }
    let calls = exchange.calls.lock().unwrap().clone();
    let result = result
        .map(|m| {
            m.token
                .map(|t| t.access_token.expose().to_string())
                .unwrap_or_default()
        })
        .map_err(|f| f.exit_code());
    let after = match cache.get(&key) {
        Lookup::Hit(t) => format!("Hit({:?})", t.access_token.expose()),
        Lookup::Miss => "Miss".into(),
        Lookup::Unusable(_) => "Unusable".into(),
    };
    let want_after = match row.after {
        After::Hit(t) => format!("Hit({t:?})"),
        other => format!("{other:?}"),
    };
    let early = calls.iter().any(|at| *at < started + row.not_before);
    let want = row.result.map(str::to_string);
    if calls.len() != row.exchanges || result != want || after != want_after || early {
        return Err(format!(
            "{}: exchanges {} (want {}), result {result:?} (want {want:?}), cache {after} (want {want_after}){}",
            row.name,
            calls.len(),
            row.exchanges,
            if early { ", exchanged before waiting its half of the deadline" } else { "" }
        ));
    }
    Ok(())
}

#[tokio::test]
async fn the_cache_single_flight_and_fill_follow_their_rules() {
    let mut wrong = Vec::new();
    for row in rows() {
        if let Err(e) = run(&row).await {
            wrong.push(e);
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_waiter_waits_half_the_time_left() {
    let now = Instant::now();
    // (time left, the wait), in nanoseconds.
    for (left, wait) in [
        (10_000_000_000, 5_000_000_000),
        (1_000_000, 500_000),
        (1, 0),
        (0, 0),
    ] {
        let until = wait_until(now, now + Duration::from_nanos(left));
        assert_eq!(until - now, Duration::from_nanos(wait), "{left} ns left");
    }
    // A deadline already past: no wait at all.
    assert_eq!(
        wait_until(now + Duration::from_secs(1), now),
        now + Duration::from_secs(1)
    );
}

#[tokio::test]
async fn the_exchange_is_loaded_once_and_only_on_a_miss() {
    /// Counts its loads.
    struct Counting(Arc<Mutex<usize>>, FakeExchange);
    impl Load for Counting {
        type Exchange = FakeExchange;
        async fn load(&self) -> Result<FakeExchange, Failure> {
            *self.0.lock().unwrap() += 1;
            Ok(self.1.clone())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::new(dir.path());
    let loads = Arc::new(Mutex::new(0));
    let exchange = FakeExchange {
        answer: Answer::Token("fresh", HOUR),
        deadline: Instant::now() + LONG,
        calls: Arc::default(),
    };
    let minter = Minter::over(
        Counting(loads.clone(), exchange),
        Settings {
            cache: Some(cache),
            host_sees_tokens: true,
            deadline: LONG,
            verbose: false,
        },
    );
    let request = || MintRequest {
        manifest: MANIFEST.into(),
        namespace: "apps".into(),
        tokens: TokenChoice::Given {
            source: Arc::new(StaticTokenSource::new(Secret::new("oidc"))),
            identity: Some(IDENTITY.into()),
        },
        namespaces: NamespacePolicy::TargetOnly,
        deadline: None,
    };
    // The warm path: no load for a cache that cannot answer.
    assert!(minter.cached(&request()).is_none());
    assert_eq!(*loads.lock().unwrap(), 0);
    minter.mint(request()).await.unwrap();
    minter.mint(request()).await.unwrap();
    assert!(minter.cached(&request()).is_some());
    assert_eq!(*loads.lock().unwrap(), 1);
}
