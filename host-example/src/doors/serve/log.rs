//! `serve`'s log: every `tracing` event of the process (its own, the loader's warnings,
//! kube's and hyper's) as one JSON line on stderr: `ts` (UNIX seconds), `level`, `msg`,
//! `target` for another crate's event, then the event's fields. Every string is made one
//! line and anything shaped like a token is redacted, whoever wrote it.
//!
//! `serve`'s own events carry their fields as one JSON object ([`log`]), since a
//! `tracing` field holds one flat value and a line may hold a list.

use std::fmt;

use serde_json::{json, Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

use cloudsmith_gen::secret::one_line;

/// The target of `serve`'s own events.
const TARGET: &str = "cloudsmith_gen";
/// The field of [`log`] that holds an event's fields as JSON.
const FIELDS: &str = "fields";

/// A message or log field: one line, nothing shaped like a token, bounded.
pub fn one_log_line(text: &str) -> String {
    one_line(text, 1000)
}

/// One event of `serve`'s: `msg` at `level`, with `fields` (a JSON object).
pub fn log(level: &str, msg: &str, fields: Value) {
    let fields = fields.to_string();
    match level {
        "error" => tracing::error!(target: TARGET, fields = %fields, "{msg}"),
        "warn" => tracing::warn!(target: TARGET, fields = %fields, "{msg}"),
        _ => tracing::info!(target: TARGET, fields = %fields, "{msg}"),
    }
}

/// Sends every event of the process at `info` or above to stderr as JSON lines, from
/// now on. Once per process; a second call changes nothing.
pub fn init() {
    let subscriber = tracing_subscriber::registry().with(JsonLines.with_filter(LevelFilter::INFO));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The layer that writes [`line`]s.
struct JsonLines;

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        eprintln!("{}", line(event, now()));
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The JSON line of `event` at `ts`.
fn line(event: &Event<'_>, ts: f64) -> Value {
    let metadata = event.metadata();
    let level = match *metadata.level() {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    };
    let mut fields = Fields(Map::new());
    event.record(&mut fields);
    let mut fields = fields.0;
    let msg = fields.remove("message").unwrap_or_default();
    let mut line = json!({"ts": (ts * 1000.0).round() / 1000.0, "level": level, "msg": msg});
    let Value::Object(out) = &mut line else {
        unreachable!("a JSON object")
    };
    if metadata.target() != TARGET {
        out.insert("target".into(), metadata.target().into());
    }
    let own = match fields.remove(FIELDS) {
        Some(Value::String(text)) => serde_json::from_str(&text).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let own = match own {
        Value::Object(own) => own.into_iter(),
        _ => Map::new().into_iter(),
    };
    for (k, v) in fields.into_iter().chain(own) {
        out.insert(k, clean(v));
    }
    line
}

/// Every string in `value` made one log line.
fn clean(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(one_log_line(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(clean).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, clean(v))).collect()),
        other => other,
    }
}

/// An event's fields as JSON values.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Keeps the lines instead of writing them.
    struct Kept(Arc<Mutex<Vec<Value>>>);

    impl<S: Subscriber> Layer<S> for Kept {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().unwrap().push(line(event, 1_700_000_000.123_45));
        }
    }

    #[test]
    fn own_and_foreign_events_are_json_lines_without_tokens() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let kept = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Kept(kept.clone()));
        tracing::subscriber::with_default(subscriber, || {
            log(
                "warn",
                "call",
                json!({"namespace": "apps", "status": 401, "generators": ["a", "b"], "message": format!("bad\n{jwt}")}),
            );
            // As kube's client writes its events.
            tracing::info!(target: "kube_client::client", uri = %format!("/api?token={jwt}"), "requesting");
        });
        let lines = kept.lock().unwrap().clone();
        assert_eq!(
            lines[0],
            json!({"ts": 1_700_000_000.123, "level": "warn", "msg": "call", "namespace": "apps", "status": 401,
                   "generators": ["a", "b"], "message": "bad [redacted]"})
        );
        assert_eq!(lines[1]["target"], "kube_client::client");
        assert_eq!(lines[1]["msg"], "requesting");
        assert!(!lines[1].to_string().contains(jwt), "{}", lines[1]);
    }
}
