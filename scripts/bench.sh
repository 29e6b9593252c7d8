#!/usr/bin/env bash
# Runs every benchmark in one go and draws the plot:
#
#   scripts/bench.sh            # full run (a few minutes after the build)
#   BENCH_QUICK=1 scripts/bench.sh   # a tenth of the counts, for a smoke run
#   BENCH_ONLY=doors,serve scripts/bench.sh   # only these parts (core, cli, doors,
#                                             # serve); their rows replace theirs in
#                                             # bench/results.json, the rest is kept
#
# What it does, each step idempotent:
#   1. adds the wasm32-wasip2 target (rustup does not add it by itself);
#   2. installs GNU time if missing (apt), and the official Cloudsmith CLI (PyPI cloudsmith-cli, pinned) and
#      matplotlib into a venv in .tools/bench-venv, if missing;
#   3. builds cloudsmith-gen in release (the CLI as shipped);
#   4. runs `cargo bench -p benchmarks` (the table goes to stdout and
#      bench/results.json);
#   5. draws bench/latency.png from bench/results.json.
#
# The bench binary uses the `bench` profile with size tuning undone (opt-level
# 3, no LTO): the workspace's release profile is tuned for the component's
# size (opt-level "z", fat LTO, one codegen unit), which would make every
# rebuild of the bench relink wasmtime with fat LTO. Both sides of every
# in-process comparison (native and component) are in this one binary, so
# they share the profile; cloudsmith-gen is measured as shipped (release).
set -euo pipefail
cd "$(dirname "$0")/.."

CLOUDSMITH_CLI_VERSION=1.30.0
MATPLOTLIB_VERSION=3.10.8
venv=.tools/bench-venv

rustup target add wasm32-wasip2 >/dev/null

# GNU time measures each CLI's own peak RSS (see bench/src/cli.rs for why).
if [ ! -x /usr/bin/time ]; then
    apt-get install -y time >/dev/null || { echo "bench.sh: install GNU time (apt-get install time)" >&2; exit 1; }
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/cloudsmith" --version 2>/dev/null | grep -q "CLI Package Version: $CLOUDSMITH_CLI_VERSION"; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "cloudsmith-cli==$CLOUDSMITH_CLI_VERSION"
fi
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION"
fi

cargo build --release --locked -p cloudsmith-gen --bin cloudsmith-gen --bin docker-credential-cloudsmith

export CARGO_PROFILE_BENCH_OPT_LEVEL=3
export CARGO_PROFILE_BENCH_LTO=false
export CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
export CARGO_PROFILE_BENCH_STRIP=false
# Line tables cost no speed and let scripts/profile.sh reuse this very build.
export CARGO_PROFILE_BENCH_DEBUG=line-tables-only
export CLOUDSMITH_GEN="$PWD/target/release/cloudsmith-gen"
export CLOUDSMITH_CLI="$PWD/$venv/bin/cloudsmith"
cargo bench --locked -p benchmarks --bench generate "$@"

"$venv/bin/python" bench/plot.py bench/results.json bench/latency.png
