#!/usr/bin/env bash
# Checks that the image is reproducible: two clean builds of the current commit,
# in two different directories with their own target dirs, must give the same
# static binary and the same image digest (scripts/image.sh, release profile).
# Two full release builds: far too slow for CI (about 18 min each here); run by hand.
# `--profile image-test` (the test command's cheaper profile) checks the same
# pipeline in about half the time.
#
#   bash scripts/reproduce.sh [--profile NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
case "${1:-}" in
  --profile) profile="${2:?error: --profile needs a NAME}" ;;
  "") ;;
  *) echo "error: unknown argument $1 (usage: scripts/reproduce.sh [--profile NAME])" >&2; exit 2 ;;
esac
[[ -z $(git status --porcelain --untracked-files=no) ]] || { echo "error: uncommitted changes: commit them first (the check builds HEAD)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for n in 1 2; do
  git clone -q --no-hardlinks . "$work/checkout-$n"
  digest[$n]=$(bash "$work/checkout-$n/scripts/image.sh" --profile "$profile" "$work/image-$n")
  sum[$n]=$(sha256sum "$work/checkout-$n/target/x86_64-unknown-linux-musl/$profile/cloudsmith-gen" | cut -d' ' -f1)
  echo "build $n: binary sha256:${sum[$n]} image ${digest[$n]}" >&2
done
[[ ${sum[1]} == "${sum[2]}" ]] || { echo "error: the two binaries differ" >&2; exit 1; }
[[ ${digest[1]} == "${digest[2]}" ]] || { echo "error: the two image digests differ" >&2; exit 1; }
echo "reproducible: ${digest[1]}"
