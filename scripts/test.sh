#!/usr/bin/env bash
# Runs every test: the component's unit tests, the host, the end-to-end suites
# over loopback HTTP/HTTPS, composition, and the other Wasm hosts (wasmtime
# CLI, Node.js through jco). Installs what a fresh machine lacks first: the
# wasm32-wasip2 target and the pinned tools (scripts/tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# rustup does not add targets listed anywhere to an installed toolchain:
# add it here (a no-op when present).
rustup target add wasm32-wasip2 >/dev/null

# shellcheck source=scripts/tools.sh
source scripts/tools.sh

cargo test --workspace --locked "$@"
