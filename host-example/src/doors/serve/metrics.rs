//! `serve`'s metrics: one [`prometheus_client`] registry, rendered in Prometheus' text
//! format (version 0.0.4) for `/metrics`.
//!
//! Label values come only from requests that passed authentication and authorization
//! (namespace, generator) or from a fixed set (case), so an anonymous client cannot grow
//! the series; the table is still capped as a second line of defence.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s text: the format's version, as `serve`
/// has always sent it (the text is UTF-8 either way).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Upper bounds of the exchange latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Distinct (generator, namespace, case) series kept; further ones are counted under
/// `generator="(other)"`.
const MAX_SERIES: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    generator: String,
    namespace: String,
    case: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Case {
    case: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// The reviews' gauges, read from [`super::access::Access`] when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reviews {
    /// Reviews waiting for the API server.
    pub in_flight: usize,
    /// Reviews under way or waited for, by key.
    pub in_progress: usize,
    /// Review answers held for reuse.
    pub cached: usize,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    calls: Family<Call, Counter>,
    /// The series `calls` holds, for the cap (`Family` tells its size only to tests).
    series: Mutex<HashSet<Call>>,
    refused: Family<Case, Counter>,
    latency: Histogram,
    in_flight: Gauge,
    abandoned: Counter,
    reloads: Family<Outcome, Counter>,
    generators: Gauge,
    connections: Gauge,
    connections_refused: Counter,
    accept_errors: Counter,
    reviews_in_flight: Gauge,
    reviews_in_progress: Gauge,
    reviews_cached: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            registry: Registry::default(),
            calls: Family::default(),
            series: Mutex::default(),
            refused: Family::default(),
            latency: Histogram::new(BUCKETS),
            in_flight: Gauge::default(),
            abandoned: Counter::default(),
            reloads: Family::default(),
            generators: Gauge::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            accept_errors: Counter::default(),
            reviews_in_flight: Gauge::default(),
            reviews_in_progress: Gauge::default(),
            reviews_cached: Gauge::default(),
        };
        // Both results are shown from the start, at 0.
        for result in ["ok", "failed"] {
            drop(metrics.reloads.get_or_create(&Outcome { result }));
        }
        let mut registry = Registry::default();
        // Counters get `_total` appended; help texts get a period.
        registry.register(
            "cloudsmith_gen_calls",
            "Generator calls by generator, namespace and result case (ok, or the generate-error case)",
            metrics.calls.clone(),
        );
        registry.register(
            "cloudsmith_gen_refused",
            "Requests refused before a generator ran, by case",
            metrics.refused.clone(),
        );
        registry.register(
            "cloudsmith_gen_exchange_duration_seconds",
            "Time in the sandboxed generator call (token request and Cloudsmith exchange)",
            metrics.latency.clone(),
        );
        registry.register(
            "cloudsmith_gen_calls_in_flight",
            "Generate calls in flight: in review, queued or in the sandbox",
            metrics.in_flight.clone(),
        );
        registry.register(
            "cloudsmith_gen_calls_abandoned",
            "Generate calls whose caller hung up before the answer",
            metrics.abandoned.clone(),
        );
        registry.register(
            "cloudsmith_gen_connections",
            "Connections open now",
            metrics.connections.clone(),
        );
        registry.register(
            "cloudsmith_gen_connections_refused",
            "Connections closed at once: --max-connections were open",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "cloudsmith_gen_accept_errors",
            "Failures to accept a connection (each followed by a pause)",
            metrics.accept_errors.clone(),
        );
        registry.register(
            "cloudsmith_gen_generators",
            "Generators served from the manifests",
            metrics.generators.clone(),
        );
        registry.register(
            "cloudsmith_gen_manifest_reloads",
            "Manifest reloads by result",
            metrics.reloads.clone(),
        );
        registry.register(
            "cloudsmith_gen_reviews_in_flight",
            "TokenReviews and SubjectAccessReviews waiting for the API server",
            metrics.reviews_in_flight.clone(),
        );
        registry.register(
            "cloudsmith_gen_reviews_in_progress",
            "Reviews under way or waited for, by key (single flight)",
            metrics.reviews_in_progress.clone(),
        );
        registry.register(
            "cloudsmith_gen_reviews_cached",
            "Review answers held for reuse",
            metrics.reviews_cached.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// A call for `generator` in `namespace` ended with `case` (`ok` on success).
    pub fn call(&self, generator: &str, namespace: &str, case: &str) {
        let mut key = Call {
            generator: generator.to_string(),
            namespace: namespace.to_string(),
            case: case.to_string(),
        };
        {
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            if series.len() >= MAX_SERIES && !series.contains(&key) {
                key.generator = "(other)".into();
                key.namespace = "(other)".into();
            }
            series.insert(key.clone());
        }
        self.calls.get_or_create(&key).inc();
    }

    /// A request was turned away before reaching a generator (`case` is fixed text).
    pub fn refused(&self, case: &'static str) {
        self.refused.get_or_create(&Case { case }).inc();
    }

    /// One exchange (a sandboxed generator call) took `elapsed`.
    pub fn exchange(&self, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Counts a generate call from its arrival until the guard is dropped: when it is
    /// answered, or when its caller hangs up and hyper drops the call. A guard, never a
    /// pair of calls, so no path can leave the gauge up.
    pub fn arrived(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(self)
    }

    /// A generate call was dropped before its answer: its caller hung up.
    pub fn abandoned(&self) {
        self.abandoned.inc();
    }

    /// The generate calls in flight now (in review, queued or in the sandbox).
    pub fn in_flight_now(&self) -> i64 {
        self.in_flight.get()
    }

    /// Counts an open connection until the guard is dropped.
    pub fn connection(&self) -> Connection<'_> {
        self.connections.inc();
        Connection(self)
    }

    /// A connection was closed at once: the server had `--max-connections` open.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Accepting a connection failed (out of file descriptors, most often).
    pub fn accept_error(&self) {
        self.accept_errors.inc();
    }

    /// A manifest reload succeeded with `generators` generators, or failed.
    pub fn reload(&self, generators: Option<usize>) {
        let result = match generators {
            Some(n) => {
                self.generators.set(n as i64);
                "ok"
            }
            None => "failed",
        };
        self.reloads.get_or_create(&Outcome { result }).inc();
    }

    /// The exposition text ([`CONTENT_TYPE`]), with the reviews' gauges as they are now.
    pub fn render(&self, reviews: Reviews) -> String {
        self.reviews_in_flight.set(reviews.in_flight as i64);
        self.reviews_in_progress.set(reviews.in_progress as i64);
        self.reviews_cached.set(reviews.cached as i64);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// An open connection ([`Metrics::connection`]).
#[must_use = "the connection counts only while the guard lives"]
pub struct Connection<'a>(&'a Metrics);

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// A generate call in flight ([`Metrics::arrived`]).
#[must_use = "the call counts only while the guard lives"]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_parse::{Scrape, Value};

    use super::*;

    /// The exposition, parsed as a scraper parses it.
    fn scrape(metrics: &Metrics, reviews: Reviews) -> Scrape {
        let text = metrics.render(reviews);
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
    }

    /// The value of `name` with `labels`, and its type.
    fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<Value> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| s.value.clone())
    }

    #[test]
    fn every_metric_parses_with_its_type_labels_and_value() {
        let m = Metrics::default();
        m.call("gen", "apps", "ok");
        m.call("gen", "apps", "ok");
        m.call("gen", "apps", "unauthorized");
        m.refused("unauthenticated");
        m.exchange(Duration::from_millis(20));
        m.reload(Some(3));
        m.reload(None);
        let _open = m.connection();
        let in_flight = m.arrived();
        m.abandoned();
        m.connection_refused();
        m.accept_error();
        let scrape = scrape(
            &m,
            Reviews {
                in_flight: 2,
                in_progress: 1,
                cached: 7,
            },
        );
        let gen_ok = [("generator", "gen"), ("namespace", "apps"), ("case", "ok")];
        // (name, labels, the parsed value)
        type Want<'a> = (&'a str, &'a [(&'a str, &'a str)], Value);
        let want: Vec<Want> = vec![
            ("cloudsmith_gen_calls_total", &gen_ok, Value::Counter(2.0)),
            (
                "cloudsmith_gen_calls_total",
                &[("case", "unauthorized")],
                Value::Counter(1.0),
            ),
            (
                "cloudsmith_gen_refused_total",
                &[("case", "unauthenticated")],
                Value::Counter(1.0),
            ),
            ("cloudsmith_gen_calls_in_flight", &[], Value::Gauge(1.0)),
            ("cloudsmith_gen_calls_abandoned_total", &[], Value::Counter(1.0)),
            ("cloudsmith_gen_connections", &[], Value::Gauge(1.0)),
            (
                "cloudsmith_gen_connections_refused_total",
                &[],
                Value::Counter(1.0),
            ),
            ("cloudsmith_gen_accept_errors_total", &[], Value::Counter(1.0)),
            ("cloudsmith_gen_generators", &[], Value::Gauge(3.0)),
            (
                "cloudsmith_gen_manifest_reloads_total",
                &[("result", "ok")],
                Value::Counter(1.0),
            ),
            (
                "cloudsmith_gen_manifest_reloads_total",
                &[("result", "failed")],
                Value::Counter(1.0),
            ),
            ("cloudsmith_gen_reviews_in_flight", &[], Value::Gauge(2.0)),
            ("cloudsmith_gen_reviews_in_progress", &[], Value::Gauge(1.0)),
            ("cloudsmith_gen_reviews_cached", &[], Value::Gauge(7.0)),
        ];
        let wrong: Vec<String> = want
            .into_iter()
            .filter_map(|(name, labels, value)| {
                let got = self::value(&scrape, name, labels);
                (got.as_ref() != Some(&value)).then(|| format!("{name}{labels:?}: {got:?}, want {value:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        // The histogram: cumulative buckets, the one observation in 0.025 and above.
        let Some(Value::Histogram(buckets)) = value(&scrape, "cloudsmith_gen_exchange_duration_seconds", &[])
        else {
            panic!("no histogram in {:?}", scrape.samples)
        };
        let counts: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        assert_eq!(counts[1], (0.01, 0.0));
        assert_eq!(counts[2], (0.025, 1.0));
        assert_eq!(counts.last(), Some(&(f64::INFINITY, 1.0)));
        drop(in_flight);
        let after = scrape_after(&m);
        assert_eq!(
            value(&after, "cloudsmith_gen_calls_in_flight", &[]),
            Some(Value::Gauge(0.0))
        );
    }

    fn scrape_after(m: &Metrics) -> Scrape {
        scrape(m, Reviews::default())
    }

    #[test]
    fn label_values_are_escaped_and_series_capped() {
        let m = Metrics::default();
        m.call("a\"b\\", "apps", "ok");
        assert!(m.render(Reviews::default()).contains(r#"generator="a\"b\\""#));
        for n in 0..MAX_SERIES + 5 {
            m.call(&format!("g{n}"), "apps", "ok");
        }
        let text = m.render(Reviews::default());
        assert!(text
            .contains(r#"cloudsmith_gen_calls_total{generator="(other)",namespace="(other)",case="ok"} 6"#));
    }
}
