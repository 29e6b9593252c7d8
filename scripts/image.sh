#!/usr/bin/env bash
# Builds the cloudsmith-gen container image as an OCI image layout.
#
#   bash scripts/image.sh [--binary FILE] [--profile NAME] DIR
#
# Replaces DIR with an OCI layout holding one image manifest, tagged
# (`org.opencontainers.image.ref.name`) with host-example's crate version, and
# prints the manifest digest (sha256:...) as its only stdout line.
#
# The image: one static musl binary, /cloudsmith-gen, the entrypoint, run as
# 65532:65532; no shell, no libc, no /etc/passwd (the binary never looks a user
# up), Debian's CA bundle (the kube client needs system roots; Cloudsmith calls use
# the embedded webpki-roots).
# musl rather than static glibc: musl's resolver reads /etc/hosts and
# /etc/resolv.conf itself. A static glibc's getaddrinfo would dlopen NSS modules
# (the linker warns it needs the shared libraries at run time); measured here, a
# std::net lookup of a --add-host name resolved in this scratch image with both,
# glibc falling back to its built-in files/dns, which depends on glibc internals.
# The container tests resolve Cloudsmith's host name given with --add-host.
#
# Built with Debian's buildah (FROM scratch, vfs storage, chroot isolation: no
# daemon, works as root here). `--timestamp` fixes every date in the image, so one
# binary always gives one digest. Without --binary the binary is built here with
# `--no-default-features` (no demo stand-in, no test key) for
# x86_64-unknown-linux-musl, with the checkout and cargo home remapped out of it;
# SOURCE_DATE_EPOCH is the commit's time.
#
# Needs root (buildah's vfs storage and chroot isolation), buildah, musl-tools.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${CLOUDSMITH_GEN_STATIC:-}"
profile=release
dir=
while (($#)); do
  case "$1" in
    --binary) binary="${2:?error: --binary needs a FILE}"; shift 2 ;;
    --profile) profile="${2:?error: --profile needs a NAME}"; shift 2 ;;
    -*) echo "error: unknown option $1 (usage: scripts/image.sh [--binary FILE] [--profile NAME] DIR)" >&2; exit 2 ;;
    *) [[ -z $dir ]] || { echo "error: one DIR only (got $dir and $1)" >&2; exit 2; }; dir="$1"; shift ;;
  esac
done
[[ -n $dir ]] || { echo "error: missing DIR (usage: scripts/image.sh [--binary FILE] [--profile NAME] DIR)" >&2; exit 2; }
command -v buildah >/dev/null || { echo "error: buildah not found (apt-get install buildah)" >&2; exit 1; }

target=x86_64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' host-example/Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# No public address is recorded in the repository: the origin remote, or IMAGE_SOURCE.
source_url="${IMAGE_SOURCE:-$(git config --get remote.origin.url 2>/dev/null || echo unknown)}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

if [[ -z $binary ]]; then
  rustup target add "$target" >/dev/null
  command -v musl-gcc >/dev/null || { echo "error: musl-gcc not found (apt-get install musl-tools): ring's C code needs it" >&2; exit 1; }
  # Target-only flags: proc-macros, build scripts and the nested wasm build keep theirs.
  export CC_x86_64_unknown_linux_musl=musl-gcc
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="--remap-path-prefix=$PWD=/src --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
  cargo build --locked -q -p cloudsmith-gen --bin cloudsmith-gen --no-default-features \
    --target "$target" --profile "$profile" >&2
  out=$profile
  [[ $profile != dev ]] || out=debug
  binary="target/$target/$out/cloudsmith-gen"
fi
[[ -f $binary ]] || { echo "error: binary $binary not found" >&2; exit 1; }

storage=$(mktemp -d)
trap 'buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs rm -a >/dev/null 2>&1 || true; rm -rf "$storage"' EXIT
b=(buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs)

ctr=$("${b[@]}" from --isolation chroot scratch)
# A fixed mode and owner, whatever the file had on disk.
install -m 0555 "$binary" "$storage/cloudsmith-gen"
"${b[@]}" copy --chown 0:0 "$ctr" "$storage/cloudsmith-gen" /cloudsmith-gen >/dev/null
# The kube client (rustls-tls) refuses to start without system roots, even when the
# kubeconfig names its CA: Debian's bundle, at the path rustls-native-certs probes.
install -m 0444 /etc/ssl/certs/ca-certificates.crt "$storage/ca-certificates.crt"
"${b[@]}" copy --chown 0:0 "$ctr" "$storage/ca-certificates.crt" /etc/ssl/certs/ca-certificates.crt >/dev/null
"${b[@]}" config \
  --entrypoint '["/cloudsmith-gen"]' --cmd '' \
  --user 65532:65532 \
  --os linux --arch amd64 \
  --label "org.opencontainers.image.source=$source_url" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$ctr"
"${b[@]}" commit -q --timestamp "$SOURCE_DATE_EPOCH" --format oci "$ctr" cloudsmith-gen:"$version" >/dev/null

rm -rf "$dir"
"${b[@]}" push -q cloudsmith-gen:"$version" "oci:$dir:$version" >&2
digest=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["manifests"]; assert len(m)==1; print(m[0]["digest"])' "$dir/index.json")
echo "$digest"
