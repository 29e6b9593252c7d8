#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named as arguments) for a bounded
# time each and prints, per target: executions, executions per second,
# corpus size and new findings. Exits non-zero if any target found a crash.
#
#   FUZZ_SECONDS=60 scripts/fuzz.sh [spec answer jwt generate]
#
# libFuzzer's instrumentation needs nightly-only rustc flags (-Zsanitizer=address
# and friends, which cargo-fuzz passes). With a nightly toolchain installed the
# script uses it; otherwise it runs the default (stable) toolchain with
# RUSTC_BOOTSTRAP=1, which makes stable rustc accept those flags. That is
# meant for bootstrapping rustc itself, but it is the only way where no nightly
# can be installed, and it touches only this fuzz build (its own workspace and
# target directory), never the component's.
# Corpora grow in fuzz/corpus/<target>/ (seeded from fuzz/seeds/<target>/);
# findings land in fuzz/artifacts/<target>/, to be turned into unit tests.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=(spec answer jwt generate); fi

if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    echo "toolchain: $(rustc +nightly --version)" >&2
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    echo "toolchain: $(rustc --version), RUSTC_BOOTSTRAP=1 (no nightly installed)" >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
"${fuzz[@]}" build

count_findings() {
    find "artifacts/$1" -maxdepth 1 -type f \
        \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) 2>/dev/null | wc -l
}

failed=0
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    corpora=("corpus/$t")
    if [ -d "seeds/$t" ]; then corpora+=("seeds/$t"); fi
    dict=()
    if [ -f "$t.dict" ]; then dict=("-dict=$t.dict"); fi
    before=$(count_findings "$t")
    log="$(mktemp)"
    rc=0
    "${fuzz[@]}" run "$t" "${corpora[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    found=$(( $(count_findings "$t") - before ))
    rows+=("$(printf '%-10s %12s %10s %8s %9s' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$found")")
    if [ "$rc" -ne 0 ] || [ "$found" -gt 0 ]; then
        failed=1
        echo "=== $t: exit $rc, $found new finding(s); end of its log:" >&2
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|Reproduce with' "$log" | head -20 >&2 || tail -30 "$log" >&2
    fi
    rm -f "$log"
done

printf '%-10s %12s %10s %8s %9s\n' target executions exec/s corpus findings
printf '%s\n' "${rows[@]}"
exit "$failed"
