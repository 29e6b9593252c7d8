//! Prometheus metrics in the text exposition format, kept by hand: a few counters and
//! one histogram do not need a metrics crate.
//!
//! Label values come only from requests that passed authentication and authorization
//! (namespace, generator) or from a fixed set (case), so an anonymous client cannot grow
//! the series; the table is still capped as a second line of defence.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the exchange latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Distinct (generator, namespace, case) series kept; further ones are counted under
/// `generator="(other)"`.
const MAX_SERIES: usize = 10_000;

/// The server's metrics.
#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<(String, String, String), u64>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    latency: Mutex<Histogram>,
    in_flight: AtomicI64,
    abandoned: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    generators: AtomicI64,
    connections: AtomicI64,
    connections_refused: AtomicU64,
    accept_errors: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// A call for `generator` in `namespace` ended with `case` (`ok` on success).
    pub fn call(&self, generator: &str, namespace: &str, case: &str) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let key = (generator.to_string(), namespace.to_string(), case.to_string());
        let key = if calls.len() >= MAX_SERIES && !calls.contains_key(&key) {
            ("(other)".to_string(), "(other)".to_string(), case.to_string())
        } else {
            key
        };
        *calls.entry(key).or_default() += 1;
    }

    /// A request was turned away before reaching a generator (`case` is fixed text).
    pub fn refused(&self, case: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(case)
            .or_default() += 1;
    }

    /// One exchange (a sandboxed generator call) took `elapsed`.
    pub fn exchange(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for (bound, count) in BUCKETS.iter().zip(h.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Counts a generate call from its arrival until the guard is dropped: when it is
    /// answered, or when its caller hangs up and hyper drops the call. A guard, never a
    /// pair of calls, so no path can leave the gauge up.
    pub fn arrived(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// A generate call was dropped before its answer: its caller hung up.
    pub fn abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// The generate calls in flight now (in review, queued or in the sandbox).
    pub fn in_flight_now(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts an open connection until the guard is dropped.
    pub fn connection(&self) -> Connection<'_> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        Connection(self)
    }

    /// A connection was closed at once: the server had `--max-connections` open.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Accepting a connection failed (out of file descriptors, most often).
    pub fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A manifest reload succeeded with `generators` generators, or failed.
    pub fn reload(&self, generators: Option<usize>) {
        match generators {
            Some(n) => {
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.generators.store(n as i64, Ordering::Relaxed);
            }
            None => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP cloudsmith_gen_calls_total Generator calls by generator, namespace and result case (ok, or the generate-error case).\n");
        out.push_str("# TYPE cloudsmith_gen_calls_total counter\n");
        for ((generator, namespace, case), n) in self.calls.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "cloudsmith_gen_calls_total{{generator=\"{}\",namespace=\"{}\",case=\"{}\"}} {n}",
                escape(generator),
                escape(namespace),
                escape(case)
            );
        }
        out.push_str(
            "# HELP cloudsmith_gen_refused_total Requests refused before a generator ran, by case.\n",
        );
        out.push_str("# TYPE cloudsmith_gen_refused_total counter\n");
        for (case, n) in self.refused.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "cloudsmith_gen_refused_total{{case=\"{case}\"}} {n}");
        }
        let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP cloudsmith_gen_exchange_duration_seconds Time in the sandboxed generator call (token request and Cloudsmith exchange).\n");
        out.push_str("# TYPE cloudsmith_gen_exchange_duration_seconds histogram\n");
        for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
            let _ = writeln!(
                out,
                "cloudsmith_gen_exchange_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "cloudsmith_gen_exchange_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "cloudsmith_gen_exchange_duration_seconds_sum {}", h.sum);
        let _ = writeln!(out, "cloudsmith_gen_exchange_duration_seconds_count {}", h.count);
        drop(h);
        out.push_str("# HELP cloudsmith_gen_calls_in_flight Generate calls in flight: in review, queued or in the sandbox.\n");
        out.push_str("# TYPE cloudsmith_gen_calls_in_flight gauge\n");
        let _ = writeln!(out, "cloudsmith_gen_calls_in_flight {}", self.in_flight_now());
        out.push_str("# HELP cloudsmith_gen_calls_abandoned_total Generate calls whose caller hung up before the answer.\n");
        out.push_str("# TYPE cloudsmith_gen_calls_abandoned_total counter\n");
        let _ = writeln!(
            out,
            "cloudsmith_gen_calls_abandoned_total {}",
            self.abandoned.load(Ordering::Relaxed)
        );
        out.push_str("# HELP cloudsmith_gen_connections Connections open now.\n");
        out.push_str("# TYPE cloudsmith_gen_connections gauge\n");
        let _ = writeln!(
            out,
            "cloudsmith_gen_connections {}",
            self.connections.load(Ordering::Relaxed)
        );
        out.push_str("# HELP cloudsmith_gen_connections_refused_total Connections closed at once: --max-connections were open.\n");
        out.push_str("# TYPE cloudsmith_gen_connections_refused_total counter\n");
        let _ = writeln!(
            out,
            "cloudsmith_gen_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        out.push_str("# HELP cloudsmith_gen_accept_errors_total Failures to accept a connection (each followed by a pause).\n");
        out.push_str("# TYPE cloudsmith_gen_accept_errors_total counter\n");
        let _ = writeln!(
            out,
            "cloudsmith_gen_accept_errors_total {}",
            self.accept_errors.load(Ordering::Relaxed)
        );
        out.push_str("# HELP cloudsmith_gen_generators Generators served from the manifests.\n");
        out.push_str("# TYPE cloudsmith_gen_generators gauge\n");
        let _ = writeln!(
            out,
            "cloudsmith_gen_generators {}",
            self.generators.load(Ordering::Relaxed)
        );
        out.push_str("# HELP cloudsmith_gen_manifest_reloads_total Manifest reloads by result.\n");
        out.push_str("# TYPE cloudsmith_gen_manifest_reloads_total counter\n");
        let _ = writeln!(
            out,
            "cloudsmith_gen_manifest_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "cloudsmith_gen_manifest_reloads_total{{result=\"failed\"}} {}",
            self.reloads_failed.load(Ordering::Relaxed)
        );
        out
    }
}

/// Escapes a label value as the exposition format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// An open connection ([`Metrics::connection`]).
#[must_use = "the connection counts only while the guard lives"]
pub struct Connection<'a>(&'a Metrics);

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A generate call in flight ([`Metrics::arrived`]).
#[must_use = "the call counts only while the guard lives"]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.call("gen", "apps", "ok");
        m.call("gen", "apps", "ok");
        m.call("gen", "apps", "unauthorized");
        m.refused("unauthenticated");
        m.exchange(Duration::from_millis(20));
        let text = m.render();
        assert!(
            text.contains("cloudsmith_gen_calls_total{generator=\"gen\",namespace=\"apps\",case=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("case=\"unauthorized\"} 1\n"));
        assert!(text.contains("cloudsmith_gen_refused_total{case=\"unauthenticated\"} 1\n"));
        assert!(text.contains("_bucket{le=\"0.01\"} 0\n") && text.contains("_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("_bucket{le=\"+Inf\"} 1\n"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
