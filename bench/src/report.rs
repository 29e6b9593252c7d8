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
    /// The same for the `serve` runs, kept apart: another workload than the plot's.
    serve_load: Vec<Value>,
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
        self.load.push(load_point(runner, run));
    }

    /// Records a load run of a server (`serve` or its native baseline).
    pub fn serve_load(&mut self, runner: &str, run: &LoadRun) {
        self.serve_load.push(load_point(runner, run));
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
        json!({"machine": machine, "rows": rows, "load": self.load, "serve_load": self.serve_load})
    }

    /// This run's JSON laid over `previous` (the results file of an earlier run), for a
    /// run of only some sections (`BENCH_ONLY`): rows of the sections measured now
    /// replace theirs, this run's `serve_load` replaces the previous one if measured,
    /// and everything else (the plot's `load`, other sections' rows, the machine of
    /// the run that measured them) is kept. This run's machine and date go under
    /// `partial_runs`, so every row can be traced to the run that produced it.
    pub fn merged_over(&self, mut previous: Value, only: &str) -> Value {
        let ours = self.to_json();
        let sections: Vec<&str> = self.rows.iter().map(|(s, ..)| s.as_str()).collect();
        let mut rows: Vec<Value> = previous["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| !sections.contains(&r["section"].as_str().unwrap_or_default()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        rows.extend(ours["rows"].as_array().cloned().unwrap_or_default());
        previous["rows"] = Value::Array(rows);
        if !self.serve_load.is_empty() {
            previous["serve_load"] = ours["serve_load"].clone();
        }
        if !previous["partial_runs"].is_array() {
            previous["partial_runs"] = json!([]);
        }
        if let Some(runs) = previous["partial_runs"].as_array_mut() {
            runs.push(json!({"only": only, "machine": ours["machine"], "sections": sections_of(&sections)}));
        }
        previous
    }
}

/// The distinct section names, in order.
fn sections_of(sections: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in sections {
        if !out.iter().any(|o| o == s) {
            out.push((*s).to_string());
        }
    }
    out
}

/// One load run as a JSON point.
fn load_point(runner: &str, run: &LoadRun) -> Value {
    json!({
            "runner": runner,
            "concurrency": run.concurrency,
            "calls": run.latencies.len(),
            "p50_us": micros(run.quantile(0.5)),
            "p90_us": micros(run.quantile(0.9)),
            "p99_us": micros(run.quantile(0.99)),
            "throughput_per_s": run.throughput(),
            "client_cpu_us_per_call": micros(run.cpu_per_call()),
    })
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
