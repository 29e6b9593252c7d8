//! The results of one run: printed as a table, saved as JSON for the plot
//! (`bench/plot.py`) and for BENCHMARKS.md.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::load::LoadRun;

/// Everything measured in one run, in the order it is printed.
#[derive(Debug, Default)]
pub struct Report {
    /// `(section, name, value, goal verdict)` rows.
    rows: Vec<(String, String, String, String)>,
    /// Latency and throughput per runner and concurrency, for the plot.
    load: Vec<Value>,
    /// The machine and toolchain the run was on.
    machine: Vec<(String, String)>,
}

impl Report {
    /// Records a fact about the machine (CPU, cores, memory, rustc).
    pub fn machine(&mut self, key: &str, value: impl Into<String>) {
        self.machine.push((key.into(), value.into()));
    }

    /// Records one figure; `goal` is the verdict text (empty when there is no goal).
    pub fn row(&mut self, section: &str, name: &str, value: impl Into<String>, goal: impl Into<String>) {
        self.rows
            .push((section.into(), name.into(), value.into(), goal.into()));
    }

    /// Records a load run of `runner` for the plot and the table.
    pub fn load(&mut self, runner: &str, run: &LoadRun) {
        self.load.push(json!({
            "runner": runner,
            "concurrency": run.concurrency,
            "calls": run.latencies.len(),
            "p50_us": micros(run.quantile(0.5)),
            "p90_us": micros(run.quantile(0.9)),
            "p99_us": micros(run.quantile(0.99)),
            "throughput_per_s": run.throughput(),
            "client_cpu_us_per_call": micros(run.cpu_per_call()),
        }));
    }

    /// The table, as printed.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (key, value) in &self.machine {
            let _ = writeln!(out, "{key:>14}: {value}");
        }
        let mut section = "";
        for (sect, name, value, goal) in &self.rows {
            if sect != section {
                let _ = writeln!(out, "\n== {sect} ==");
                section = sect;
            }
            let _ = writeln!(out, "  {name:<58} {value:>16}  {goal}");
        }
        out
    }

    /// The whole run as JSON.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|(s, n, v, g)| json!({"section": s, "name": n, "value": v, "goal": g}))
            .collect();
        let machine: serde_json::Map<String, Value> = self
            .machine
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({"machine": machine, "rows": rows, "load": self.load})
    }
}

/// A duration in microseconds, as a float.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A duration for the table: µs below 10 ms, else ms.
pub fn human(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.1} µs", micros(d))
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

/// `met`/`MISSED` with the goal, for the verdict column.
pub fn verdict(met: bool, goal: &str) -> String {
    format!("{} (goal {goal})", if met { "met" } else { "MISSED" })
}
