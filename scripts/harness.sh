# shellcheck shell=bash
# Builds the Go harness (harness/: the real Kubernetes, etcd, ESO and Helm binaries as
# go.mod tool directives, and the drivers in harness/cmd/) into target/harness/bin with
# one `go build` of every tool (kubectl only when needed, below) and ./cmd/..., and
# exports what the Rust suites read:
#
#   HARNESS_BIN  target/harness/bin: etcd's `server`, kube-apiserver,
#                kube-controller-manager, helm, control-plane, eso-controller (ESO's main), ...
#   ESO_INSTALL  target/harness/eso-install.yaml: ESO's controller as its Helm chart installs
#                it (ServiceAccount, RBAC, Deployment; no CRDs, admission webhook or cert
#                controller), rendered by `helm template` from the chart in the same module
#   ESO_CRDS     target/harness/eso-crds.yaml: ESO's CRDs (deploy/crds/bundle.yaml of the
#                external-secrets module version harness/go.mod pins)
#   KUBECTL      a kubectl >= 1.27 (its kustomize knows `labels:`): the machine's when it
#                is new enough, else k8s.io/kubernetes/cmd/kubectl at the version
#                harness/go.mod pins (a tool directive built only then)
#
# Meant to be sourced (scripts/test.sh does):
#
#   source scripts/harness.sh
#
# Needs Go (harness/go.mod's `go` line or newer) and the Go module proxy. The first build
# takes minutes (docs/real-clients.md has the figures); Go's build cache makes the next
# one take seconds. Works under `set -euo pipefail`; returns non-zero with a message
# when something cannot be had.

_harness_main() {
    local root bin go_dir eso_dir kubectl minor chart
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    bin="$root/target/harness/bin"

    _harness_say() { printf 'harness.sh: %s\n' "$*" >&2; }

    if ! command -v go >/dev/null; then
        _harness_say "Go is needed to build the harness (harness/go.mod: $(sed -n 's/^go //p' "$root/harness/go.mod") or newer); install it from go.dev/dl or your OS, and re-run"
        return 1
    fi
    go_dir="$root/harness"
    mkdir -p "$bin"

    # kubectl: the machine's when it is 1.27 or newer (Debian's kubernetes-client is 1.20,
    # whose kustomize predates `labels:`: never installed here), else the pinned one
    # (a tool directive of harness/go.mod, built only then).
    kubectl="${KUBECTL:-$(command -v kubectl || true)}"
    minor=""
    if [ -n "$kubectl" ]; then
        minor="$("$kubectl" version --client -o json 2>/dev/null |
            sed -n 's/^ *"minor": *"\([0-9]*\).*/\1/p' | head -n 1)"
    fi
    local packages=() package
    while IFS= read -r package; do
        [ "$package" = k8s.io/kubernetes/cmd/kubectl ] || packages+=("$package")
    done < <(cd "$go_dir" && go list -mod=readonly tool)
    if [ "${#packages[@]}" -eq 0 ]; then
        _harness_say "go list tool found no tool directive in harness/go.mod"
        return 1
    fi
    if [ -z "$minor" ] || [ "$minor" -lt 27 ]; then
        _harness_say "kubectl ${kubectl:-(none)} is missing or older than 1.27: building k8s.io/kubernetes/cmd/kubectl too"
        packages+=(k8s.io/kubernetes/cmd/kubectl)
        kubectl="$bin/kubectl"
    fi

    _harness_say "go build -o target/harness/bin/ <tools> ./cmd/... (minutes the first time, seconds after)"
    # One build: each package compiled once for all the binaries. -mod=readonly: go.mod
    # and go.sum are the pins; a build never rewrites them.
    (cd "$go_dir" && go build -mod=readonly -o "$bin/" "${packages[@]}" ./cmd/...) || {
        _harness_say "go build failed in harness/"
        return 1
    }

    eso_dir="$(cd "$go_dir" && go list -mod=readonly -m -f '{{.Dir}}' github.com/external-secrets/external-secrets)" || {
        _harness_say "cannot find the external-secrets module"
        return 1
    }
    install -m 0644 "$eso_dir/deploy/crds/bundle.yaml" "$root/target/harness/eso-crds.yaml"

    # ESO's controller as its chart installs it, with the chart's switches for what a test
    # cannot have (the admission webhook, the cert controller) and for the CRDs (applied
    # from ESO_CRDS). The chart lists one dependency, the bitwarden-sdk-server subchart,
    # off by default and not in the module: helm refuses to render a chart whose
    # dependency is missing, so a copy without that entry is rendered.
    chart="$(mktemp -d)"
    cp -R "$eso_dir/deploy/charts/external-secrets" "$chart/" && chmod -R u+w "$chart" &&
        sed -i '/^dependencies:/,$d' "$chart/external-secrets/Chart.yaml" &&
        "$bin/helm" template external-secrets "$chart/external-secrets" --namespace external-secrets \
            --set installCRDs=false --set webhook.create=false --set certController.create=false \
            >"$root/target/harness/eso-install.yaml" || {
        rm -rf "$chart"
        _harness_say "helm template of ESO's chart failed"
        return 1
    }
    rm -rf "$chart"

    HARNESS_BIN="$bin"
    ESO_CRDS="$root/target/harness/eso-crds.yaml"
    ESO_INSTALL="$root/target/harness/eso-install.yaml"
    KUBECTL="$kubectl"
    export HARNESS_BIN ESO_CRDS ESO_INSTALL KUBECTL
    _harness_say "HARNESS_BIN: $HARNESS_BIN; ESO_CRDS: $ESO_CRDS; ESO_INSTALL: $ESO_INSTALL; kubectl: $KUBECTL"
}

# Called as a condition so a failure reaches the `return` below instead of ending a
# `set -e` caller before the helper functions are cleaned up.
if _harness_main; then _harness_status=0; else _harness_status=$?; fi
unset -f _harness_main _harness_say
# `return` when sourced (as intended); `exit` if someone runs it as a script.
return "$_harness_status" 2>/dev/null || exit "$_harness_status"
