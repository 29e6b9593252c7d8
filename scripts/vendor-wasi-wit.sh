#!/usr/bin/env bash
# Re-vendors WASI's WIT into wit/deps/ in its source form: one folder per
# package, files exactly as WebAssembly/WASI publishes them at a release tag.
#
#   scripts/vendor-wasi-wit.sh /path/to/WebAssembly/WASI [tag]
#
# Source form matters: in it `wasi:cli/imports` reaches the `@unstable`
# timezone interface through `include wasi:clocks/imports`, which every
# wit-parser we use (wit-bindgen 0.62, wasmtime 48, cargo-component 0.21's
# 0.227) accepts. The flattened form that `wkg` writes imports timezone
# directly from the cli world, which cargo-component's parser rejects.
# Nothing here is edited by hand: re-run this script to change versions.
set -euo pipefail

repo="${1:?usage: $0 WASI-CHECKOUT [tag]}"
tag="${2:-v0.2.12}"
cd "$(dirname "$0")/.."

commit="$(git -C "$repo" rev-parse "$tag^{commit}")"
rm -rf wit/deps
for pkg in io clocks random cli filesystem sockets http; do
    mkdir -p "wit/deps/$pkg"
    git -C "$repo" ls-tree --name-only "$commit" "proposals/$pkg/wit/" |
        grep '\.wit$' |
        while read -r path; do
            git -C "$repo" show "$commit:$path" >"wit/deps/$pkg/$(basename "$path")"
        done
done
printf 'WebAssembly/WASI %s (%s), proposals/<pkg>/wit/*.wit\n' "$tag" "$commit" >wit/deps.source
echo "vendored WASI $tag ($commit) into wit/deps"
