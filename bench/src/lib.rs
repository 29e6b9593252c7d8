//! Benchmarks for the Cloudsmith access token component: what the plugin
//! costs a host compared with a native client doing the same exchange.
//!
//! The `generate` bench (`benches/generate.rs`, run by `scripts/bench.sh`)
//! measures everything in one process, against the stand-in Cloudsmith on
//! loopback, and prints one table; ratios are only compared within a run.
//! The pieces:
//!
//! - [`native`]: the baseline, the guest crate's pure steps run natively over
//!   the same hyper stack ([`transport`]);
//! - [`embed`]: a minimal wasmtime embedding that records the guest's memory
//!   peak (host-example's API does not report it);
//! - [`load`]: a closed-loop driver for latency percentiles and throughput at
//!   a given concurrency, with the clients' CPU time;
//! - [`standin`]: the stand-in on its own thread (its CPU is not the clients');
//! - [`cli`]: whole CLI processes, wall time and peak RSS via `wait4`;
//! - [`doors`]: the pull-time doors (Docker credential helper, kubelet provider) as
//!   processes, warm and cold token cache, against the official CLI's helper;
//! - [`serve`]: `cloudsmith-gen serve` under keep-alive load against a native server;
//! - [`report`]: the table and the JSON the plot is drawn from.

pub mod cli;
pub mod doors;
pub mod embed;
pub mod load;
pub mod native;
pub mod report;
pub mod serve;
pub mod standin;
pub mod transport;
