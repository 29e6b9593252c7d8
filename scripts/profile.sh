#!/usr/bin/env bash
# Profiles one runner of the benchmark with `perf` and draws a flame graph:
#
#   scripts/profile.sh OUT.svg                   # the component through host-example, c=1
#   BENCH_PROFILE_CONCURRENCY=64 scripts/profile.sh OUT.svg
#   BENCH_PROFILE_RUNNER=native scripts/profile.sh OUT.svg   # or minimal
#
# It builds the bench binary as scripts/bench.sh does (bench profile, opt-level
# 3, no LTO) plus line tables, so that perf's DWARF unwinding names every
# frame, runs `BENCH_ONLY=profile` (one runner in a closed loop, 20000 calls
# by default: BENCH_PROFILE_CALLS) under `perf record --call-graph dwarf`, and
# folds the stacks with inferno (`cargo install inferno`, done here if
# missing). The folded stacks are kept next to the SVG (OUT.folded), so two
# profiles can be compared with inferno-diff-folded. perf comes from apt
# (linux-perf, or linux-tools for the running kernel).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: scripts/profile.sh OUT.svg}
command -v perf >/dev/null || apt-get install -y linux-perf >/dev/null
command -v inferno-flamegraph >/dev/null || cargo install --locked inferno

rustup target add wasm32-wasip2 >/dev/null
export CARGO_PROFILE_BENCH_OPT_LEVEL=3
export CARGO_PROFILE_BENCH_LTO=false
export CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
export CARGO_PROFILE_BENCH_STRIP=false
export CARGO_PROFILE_BENCH_DEBUG=line-tables-only
bench=$(cargo bench --locked -p benchmarks --bench generate --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "profile.sh: the bench binary was not built" >&2; exit 1; }

data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
BENCH_ONLY=profile perf record --quiet -F 1999 --call-graph dwarf,32768 -o "$data/perf.data" -- "$bench" --bench
perf script --no-inline -i "$data/perf.data" 2>/dev/null | inferno-collapse-perf > "${out%.svg}.folded"
title="${BENCH_PROFILE_RUNNER:-host}, concurrency ${BENCH_PROFILE_CONCURRENCY:-1}"
inferno-flamegraph --minwidth 0.2 --title "$title" < "${out%.svg}.folded" > "$out"
echo "profile.sh: wrote $out and ${out%.svg}.folded"
