//! Reloading what `serve` reads from files: the manifests and the TLS certificate, checked
//! every `--reload-interval` and swapped in only when the new set is valid as a whole.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::catalog::Reload;
use super::log::{log, one_log_line};
use super::pipeline::Server;
use super::tls::Tls;

/// Checks the manifests (and the TLS files) every `interval` and swaps in a changed,
/// valid set.
pub async fn reload_loop<M, R>(server: Arc<Server<M, R>>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match server.catalog.reload() {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Loaded(names)) => {
                server.metrics.reload(Some(names.len()));
                log("info", "manifests reloaded", json!({"generators": names}));
            }
            Err(e) => {
                server.metrics.reload(None);
                log(
                    "error",
                    "manifests not reloaded: keeping the previous generators",
                    json!({"error": one_log_line(&format!("{e:#}"))}),
                );
            }
        }
        match server.tls.as_ref().map(Tls::reload) {
            Some(Ok(true)) => log("info", "TLS certificate reloaded", json!({})),
            Some(Err(e)) => log(
                "error",
                "TLS certificate not reloaded: keeping the previous one",
                json!({"error": one_log_line(&format!("{e:#}"))}),
            ),
            _ => {}
        }
    }
}
