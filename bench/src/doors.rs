//! The pull-time doors as processes (issue 10): the Docker credential helper's `get`
//! with a warm and a cold token cache, against the official Cloudsmith CLI's helper
//! (`cloudsmith credential-helper docker`) warm and cold, and the kubelet credential
//! provider per call, warm and cold; `cat` of the token cache entry the warm `get`
//! reads, the floor the warm `get` is held to (within 1.5×); plus the exchange's own
//! round trip, measured with the native client, which the cold-call goal is stated
//! against.
//!
//! The stand-in here issues access tokens with an `exp` hours ahead (the harness's main
//! stand-in uses ESO's fixed past `exp`, which no cache may serve), so that both
//! helpers' caches can hit. "Warm" means the cache holds a valid token for exactly this
//! configuration; "cold" means the token cache directory was removed before the run
//! (outside the timed span). The compiled-component cache stays warm in both cases:
//! it is not a token cache, and a fresh install fills it once.
//!
//! Wall time is taken with [`cli::run_direct`] (spawn to reap), not under GNU time: a
//! warm `get` lasts a few milliseconds, and GNU time's own fork and exec would be a
//! visible share of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use serde_json::json;
use testkit::cloudsmith::{access_token_for, StandInConfig, PRODUCTION_AUDIENCE, REGISTRY};

use crate::cli::{self, median, ProcessRun};
use crate::native::NativeClient;
use crate::report::{human, verdict, Report};
use crate::standin::StandInThread;
use crate::{ORG, SERVICE};

const SUBJECT: &str = "system:serviceaccount:bench:bench";
/// The access tokens' lifetime: long past the run, well beyond both caches' margins.
const TOKEN_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// Sequential exchanges for the round-trip figure.
const ROUND_TRIPS: usize = 200;

/// Where the two CLIs are.
pub struct Binaries {
    /// `cloudsmith-gen` (release as shipped, or whatever `CLOUDSMITH_GEN` names).
    pub cloudsmith_gen: PathBuf,
    /// The lean `docker-credential-cloudsmith`, beside `cloudsmith-gen` as installed.
    pub lean_helper: PathBuf,
    /// The official CLI's `cloudsmith`, when installed.
    pub official: Option<PathBuf>,
}

/// One kind of process run, repeated and checked.
struct Case {
    label: &'static str,
    command: Box<dyn Fn() -> Command>,
    stdin: Vec<u8>,
    /// Done before each run, untimed: emptying a cache for a cold run.
    prepare: Box<dyn Fn() -> anyhow::Result<()>>,
    /// What stdout must contain (the access token), if anything.
    expect: Option<String>,
    /// Whether the run must exit 0.
    must_succeed: bool,
    walls: Vec<Duration>,
    /// Exchanges the stand-in received during this case's timed runs.
    exchanges: usize,
}

impl Case {
    fn run(&mut self, standin: &StandInThread) -> anyhow::Result<ProcessRun> {
        (self.prepare)()?;
        let before = standin.requests();
        let run = cli::run_direct(&mut (self.command)(), &self.stdin)?;
        self.exchanges += standin.requests() - before;
        let answered = self
            .expect
            .as_ref()
            .is_none_or(|token| run.stdout.contains(token.as_str()));
        if (self.must_succeed && !run.success) || !answered {
            bail!(
                "{} failed or answered wrongly (exit ok: {}): {}",
                self.label,
                run.success,
                run.stderr.lines().last().unwrap_or_default()
            );
        }
        Ok(run)
    }

    fn median(&self) -> Duration {
        median(&self.walls)
    }
}

/// Measures every pull-time case `runs` times, interleaved, and records the rows.
pub fn measure(binaries: &Binaries, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let exp = now + TOKEN_LIFETIME.as_secs();
    let standin = StandInThread::start_with(StandInConfig {
        token_exp: exp,
        ..Default::default()
    })?;
    let oidc_token = testkit::oidc::token(SUBJECT, &[PRODUCTION_AUDIENCE]);
    let access_token = access_token_for(SUBJECT, ORG, SERVICE, exp);
    let work = std::env::temp_dir().join(format!("cloudsmith-bench-doors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = measure_in(
        binaries,
        runs,
        &standin,
        &oidc_token,
        &access_token,
        &work,
        report,
    );
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn measure_in(
    binaries: &Binaries,
    runs: usize,
    standin: &StandInThread,
    oidc_token: &str,
    access_token: &str,
    work: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let round_trip = round_trip(standin, oidc_token)?;
    let lean = &binaries.lean_helper;
    let mut cases = vec![
        ours_helper(
            lean,
            standin,
            oidc_token,
            work,
            "get, warm",
            Some(access_token),
            false,
        )?,
        ours_helper(
            lean,
            standin,
            oidc_token,
            work,
            "get, cold",
            Some(access_token),
            true,
        )?,
        ours_helper(lean, standin, oidc_token, work, "version", None, false)?,
        kubelet(binaries, standin, oidc_token, access_token, work, false)?,
        kubelet(binaries, standin, oidc_token, access_token, work, true)?,
        // The helper as it was before the lean binary: cloudsmith-gen by that name.
        ours_helper(
            &binaries.cloudsmith_gen,
            standin,
            oidc_token,
            work,
            "get, warm",
            Some(access_token),
            false,
        )?,
    ];
    let official_at = cases.len();
    if let Some(bin) = &binaries.official {
        cases.push(official_helper(
            bin,
            standin,
            oidc_token,
            access_token,
            work,
            false,
        ));
        cases.push(official_helper(
            bin,
            standin,
            oidc_token,
            access_token,
            work,
            true,
        ));
    }
    // Warm-up: fills every cache (the compiled component, both token caches) and the
    // page cache, and shows where the official CLI keeps its token cache.
    for case in &mut cases {
        case.run(standin)?;
    }
    if binaries.official.is_some() {
        ensure!(
            !official_cache_dirs(&work.join("official-home")).is_empty(),
            "the official CLI wrote no oidc_token_cache directory: its warm runs would not be warm"
        );
    }
    // `cat` of the entry the warm `get` just read: the floor for answering from a
    // file, the other warm goal's reference. Found now, as the warm-up wrote it.
    let mut cat = cat_entry(&work.join("ours-warm"), access_token)?;
    cat.run(standin)?;
    cases.push(cat);
    for case in &mut cases {
        case.exchanges = 0;
    }
    // Interleaved, so drift and other load on the machine fall on every case alike.
    for _ in 0..runs {
        for case in &mut cases {
            let run = case.run(standin)?;
            case.walls.push(run.wall);
        }
    }
    record(report, &cases, official_at, round_trip, runs);
    Ok(())
}

fn record(report: &mut Report, cases: &[Case], official_at: usize, round_trip: Duration, runs: usize) {
    let section = format!("pull-time doors (processes, median of {runs}, interleaved)");
    report.row(
        &section,
        "exchange round trip to the stand-in (native client, median)",
        human(round_trip),
        "",
    );
    for case in cases {
        report.row(
            &section,
            &format!("{}: wall", case.label),
            human(case.median()),
            "",
        );
        report.row(
            &section,
            &format!("{}: exchanges made in the timed runs", case.label),
            case.exchanges.to_string(),
            "",
        );
    }
    let cold_budget = Duration::from_millis(20) + round_trip;
    for i in [1, 4] {
        let cold = cases[i].median();
        report.row(
            &section,
            &format!("{}: goal ≤ 20 ms + round trip", cases[i].label),
            format!("{} ≤ {}", human(cold), human(cold_budget)),
            verdict(cold <= cold_budget, "≤ 20 ms + round trip"),
        );
    }
    let ratio = |a: &Case, b: &Case| a.median().as_secs_f64() / b.median().as_secs_f64();
    let cat = cases.last().expect("the cat case is last");
    let over_cat = ratio(&cases[0], cat);
    report.row(
        &section,
        "warm get / cat of its cache entry",
        format!("{over_cat:.2}×"),
        verdict(over_cat <= 1.5, "≤ 1.5×"),
    );
    report.row(
        &section,
        "cloudsmith-gen as the helper, warm get / cat (before the lean binary)",
        format!("{:.2}×", ratio(&cases[5], cat)),
        "",
    );
    if cases.len() > official_at + 2 {
        let warm = ratio(&cases[official_at], &cases[0]);
        report.row(
            &section,
            "official warm get / our warm get",
            format!("{warm:.0}×"),
            verdict(warm >= 200.0, "≥ 200× faster"),
        );
        let cold = ratio(&cases[official_at + 1], &cases[1]);
        report.row(
            &section,
            "official cold get / our cold get",
            format!("{cold:.0}×"),
            "",
        );
    }
}

/// Median of [`ROUND_TRIPS`] sequential exchanges by the native client (fresh
/// connection each, as every process makes one).
fn round_trip(standin: &StandInThread, oidc_token: &str) -> anyhow::Result<Duration> {
    let manifest = crate::manifest("bench", &standin.url, "bench", None);
    let client = NativeClient::new(&manifest, "bench", oidc_token);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        client.generate().await?;
        let mut times = Vec::with_capacity(ROUND_TRIPS);
        for _ in 0..ROUND_TRIPS {
            let started = Instant::now();
            client.generate().await?;
            times.push(started.elapsed());
        }
        Ok(median(&times))
    })
}

/// A command with no `CLOUDSMITH_*`, proxy or cache setting from the bench's own
/// environment, and `HOME` and the XDG directories in `home`.
fn clean_command(program: &Path, home: &Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CLOUDSMITH_")
            || name.to_ascii_lowercase().ends_with("_proxy")
            || name == "RUST_LOG"
        {
            command.env_remove(name.as_ref());
        }
    }
    command
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_CONFIG_HOME", home.join(".config"));
    command
}

/// `docker-credential-cloudsmith <action>`, a symlink to `target` (the lean helper, as
/// installed, or `cloudsmith-gen` itself), configured like the official CLI:
/// environment variables only.
fn ours_helper(
    target: &Path,
    standin: &StandInThread,
    oidc_token: &str,
    work: &Path,
    action: &'static str,
    expect: Option<&str>,
    cold: bool,
) -> anyhow::Result<Case> {
    let full = target.file_name().is_some_and(|n| n == "cloudsmith-gen");
    let bin_dir = work.join(if full { "bin-full" } else { "bin" });
    std::fs::create_dir_all(&bin_dir)?;
    let link = bin_dir.join("docker-credential-cloudsmith");
    if !link.exists() {
        std::os::unix::fs::symlink(target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    // Warm and cold share nothing: each has its own home, so a cold run never empties
    // the warm case's cache.
    let home = work.join(format!(
        "ours-{}{}",
        if cold { "cold" } else { "warm" },
        if full { "-full" } else { "" }
    ));
    let tokens = home.join(".cache/cloudsmith-gen/tokens");
    let (url, token) = (standin.url.clone(), oidc_token.to_string());
    let verb = action.split(',').next().unwrap_or(action).to_string();
    let command = move || {
        let mut command = clean_command(&link, &home);
        command
            .arg(&verb)
            .env("CLOUDSMITH_API_HOST", &url)
            .env("CLOUDSMITH_ORG", ORG)
            .env("CLOUDSMITH_SERVICE_SLUG", SERVICE)
            .env("CLOUDSMITH_OIDC_TOKEN", &token);
        command
    };
    Ok(Case {
        label: match (action, full) {
            ("get, warm", false) => "docker-credential-cloudsmith get, warm token cache",
            ("get, warm", true) => "cloudsmith-gen as the helper (no lean binary), warm get",
            ("get, cold", _) => "docker-credential-cloudsmith get, cold token cache",
            _ => "docker-credential-cloudsmith version (handed to cloudsmith-gen)",
        },
        command: Box::new(command),
        stdin: REGISTRY.as_bytes().to_vec(),
        prepare: empty_when(cold, vec![tokens]),
        expect: expect.map(str::to_string),
        must_succeed: true,
        walls: Vec::new(),
        exchanges: 0,
    })
}

/// `cat` of the one token cache entry under `home` (the warm helper's), with the
/// helper's environment and stdin: the same process start, one file read and one write,
/// and nothing else.
fn cat_entry(home: &Path, access_token: &str) -> anyhow::Result<Case> {
    let tokens = home.join(".cache/cloudsmith-gen/tokens");
    let entries: Vec<PathBuf> = std::fs::read_dir(&tokens)
        .with_context(|| format!("reading {}", tokens.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    let [entry] = entries.as_slice() else {
        bail!(
            "{} holds {} entries, not the warm get's one",
            tokens.display(),
            entries.len()
        );
    };
    let (entry, home) = (entry.clone(), home.to_path_buf());
    Ok(Case {
        label: "cat of the warm get's token cache entry",
        command: Box::new(move || {
            let mut command = clean_command(Path::new("cat"), &home);
            command.arg(&entry);
            command
        }),
        stdin: REGISTRY.as_bytes().to_vec(),
        prepare: Box::new(|| Ok(())),
        expect: Some(access_token.to_string()),
        must_succeed: true,
        walls: Vec::new(),
        exchanges: 0,
    })
}

/// `cloudsmith-gen kubelet-credential-provider` with a KEP-4412 request (the pod's
/// service account token on stdin).
fn kubelet(
    binaries: &Binaries,
    standin: &StandInThread,
    oidc_token: &str,
    access_token: &str,
    work: &Path,
    cold: bool,
) -> anyhow::Result<Case> {
    let dir = work.join(format!("kubelet-{}", if cold { "cold" } else { "warm" }));
    std::fs::create_dir_all(&dir)?;
    let manifest = dir.join("generator.json");
    std::fs::write(
        &manifest,
        json!({"apiHost": standin.url, "orgSlug": ORG, "serviceSlug": SERVICE}).to_string(),
    )?;
    let tokens = dir.join("tokens");
    let compiled = work.join("compiled");
    let allow = format!("127.0.0.1:{}", standin.port);
    let (bin, home) = (binaries.cloudsmith_gen.clone(), dir.join("home"));
    let token_dir = tokens.clone();
    let command = move || {
        let mut command = clean_command(&bin, &home);
        command
            .arg("kubelet-credential-provider")
            .arg("--manifest")
            .arg(&manifest)
            .arg("--token-cache-dir")
            .arg(&token_dir)
            .args(["--allow-host", &allow, "--allow-http", "--cache-dir"])
            .arg(&compiled);
        command
    };
    let request = json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": format!("{REGISTRY}/{ORG}/bench/app:1.0"),
        "serviceAccountToken": oidc_token,
        "serviceAccountAnnotations": {},
    });
    Ok(Case {
        label: if cold {
            "kubelet-credential-provider, cold token cache"
        } else {
            "kubelet-credential-provider, warm token cache"
        },
        command: Box::new(command),
        stdin: request.to_string().into_bytes(),
        prepare: empty_when(cold, vec![tokens]),
        expect: Some(access_token.to_string()),
        must_succeed: true,
        walls: Vec::new(),
        exchanges: 0,
    })
}

/// `cloudsmith credential-helper docker` (the official CLI) at `bin`, with `home` as its
/// home, configured for the API at `api_url` and `oidc_token` through its documented
/// variables, and nothing of this process's Cloudsmith or proxy settings.
pub fn official_helper_command(bin: &Path, home: &Path, api_url: &str, oidc_token: &str) -> Command {
    let mut command = clean_command(bin, home);
    command
        .args(["credential-helper", "docker"])
        .env("CLOUDSMITH_API_HOST", api_url)
        .env("CLOUDSMITH_ORG", ORG)
        .env("CLOUDSMITH_SERVICE_SLUG", SERVICE)
        .env("CLOUDSMITH_OIDC_TOKEN", oidc_token)
        // Only the generic (environment variable) OIDC source: the cloud
        // detectors would probe metadata endpoints off this machine.
        .env("CLOUDSMITH_OIDC_DETECTOR_ORDER", "generic")
        // No keyring, no update check, no telemetry: nothing but the exchange.
        .env("CLOUDSMITH_NO_KEYRING", "1")
        .env("CLOUDSMITH_NO_UPDATE_CHECK", "1")
        .env("DO_NOT_TRACK", "1");
    command
}

/// `cloudsmith credential-helper docker` (the official CLI), configured for the stand-in
/// through its documented variables; its warm cache is its disk OIDC token cache
/// (`<app dir>/oidc_token_cache`; the keyring is off, as there is none on a server).
fn official_helper(
    bin: &Path,
    standin: &StandInThread,
    oidc_token: &str,
    access_token: &str,
    work: &Path,
    cold: bool,
) -> Case {
    let home = work.join("official-home");
    let (bin, url, token) = (bin.to_path_buf(), standin.url.clone(), oidc_token.to_string());
    let cache_home = home.clone();
    let command = move || official_helper_command(&bin, &home, &url, &token);
    // Warm and cold share one home (the CLI's cache path is fixed by host, org and
    // service): the cold case runs last in each round, and its exchange refills the
    // cache that the next round's warm run reuses.
    let prepare: Box<dyn Fn() -> anyhow::Result<()>> = if cold {
        Box::new(move || {
            for dir in official_cache_dirs(&cache_home) {
                std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
            }
            Ok(())
        })
    } else {
        Box::new(|| Ok(()))
    };
    Case {
        label: if cold {
            "cloudsmith credential-helper docker (official), cold token cache"
        } else {
            "cloudsmith credential-helper docker (official), warm token cache"
        },
        command: Box::new(command),
        stdin: REGISTRY.as_bytes().to_vec(),
        prepare,
        expect: Some(access_token.to_string()),
        must_succeed: true,
        walls: Vec::new(),
        exchanges: 0,
    }
}

/// Every `oidc_token_cache` directory under `home` (its app dir depends on click's
/// platform rules, so it is found rather than assumed).
fn official_cache_dirs(home: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![home.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if entry.file_name() == "oidc_token_cache" {
                    found.push(path);
                } else {
                    stack.push(path);
                }
            }
        }
    }
    found
}

/// A `prepare` step that removes `dirs` (a cold run) or does nothing (a warm run).
fn empty_when(cold: bool, dirs: Vec<PathBuf>) -> Box<dyn Fn() -> anyhow::Result<()>> {
    if !cold {
        return Box::new(|| Ok(()));
    }
    Box::new(move || {
        for dir in &dirs {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("emptying {}", dir.display())),
            }
        }
        Ok(())
    })
}
