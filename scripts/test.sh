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

# Real clients: for the credential helper suite (tests/skopeo.rs), Debian's
# skopeo, the CNCF distribution registry and htpasswd (apache2-utils); for the
# container image (host-example/tests/image.rs), buildah, podman with runc,
# and musl-gcc (musl-tools: ring's C code in the static binary). kubectl is not
# among them: Debian's kubernetes-client is kubectl 1.20, whose kustomize predates
# `labels:`; scripts/harness.sh picks the machine's kubectl when it is 1.27 or newer,
# else builds the pinned one.
missing=()
for tool in skopeo:skopeo docker-registry:docker-registry htpasswd:apache2-utils \
    buildah:buildah podman:podman runc:runc musl-gcc:musl-tools; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The real Kubernetes control plane, ESO, Helm and the Go drivers (harness/), built once
# per run (seconds when Go's build cache is warm): HARNESS_BIN, ESO_CRDS, KUBECTL.
# shellcheck source=scripts/harness.sh
source scripts/harness.sh

# The image's static binary, built once (without fat LTO: profile image-test)
# and packaged by every test that needs an image.
rustup target add x86_64-unknown-linux-musl >/dev/null
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --locked -q -p cloudsmith-gen --bin cloudsmith-gen \
  --no-default-features --target x86_64-unknown-linux-musl --profile image-test
export CLOUDSMITH_GEN_STATIC="$PWD/target/x86_64-unknown-linux-musl/image-test/cloudsmith-gen"

# The harness's own Go tests (results cached by go test when nothing changed).
(cd harness && go test -mod=readonly ./...)

cargo test --workspace --locked "$@"
