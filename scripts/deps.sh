#!/usr/bin/env bash
# Installs every build and test dependency of labman from Debian packages.
# Idempotent: calls apt-get only when something is missing. Uses sudo when
# not root. Run by `make run`, `make check` and `make bench`.
set -euo pipefail

# Build: compiler, libraries of SPEC §2. Tests: cmocka, pytest, clang for the
# fuzz targets. Benchmarks: nginx (baseline proxy), wrk (load), util-linux
# (taskset). Tools the tests call: curl, iproute2, openssl; python3-cryptography
# makes the mesh tests' node keys. The yamux interop test builds its reference
# peer from Debian's hashicorp/yamux with Go.
PKGS=(
    build-essential pkg-config clang
    libevent-dev libcurl4-openssl-dev libssl-dev libsodium-dev libjansson-dev
    libsqlite3-dev libsystemd-dev libcmocka-dev libhttp-parser-dev
    python3 python3-pytest python3-cryptography
    golang-go golang-github-hashicorp-yamux-dev
    curl openssl iproute2 util-linux procps
    nginx-light wrk prometheus
)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

# Node.js runs the OpenAI SDK conformance tests. A machine may already have
# it from elsewhere (with its own npm): only ask Debian when it is absent.
if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
fi

# The SDK conformance suite's npm packages, exactly as package-lock.json pins
# them. npm ci writes node_modules/.package-lock.json last, so a missing or
# older copy means node_modules is absent, stale or half-installed.
install_npm_packages() {
    local dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/conformance/openai"
    [ -f "$dir/package-lock.json" ] || return 0
    if [ ! -f "$dir/node_modules/.package-lock.json" ] ||
        [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        echo "deps: npm ci in tests/conformance/openai" >&2
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}

if [ ${#missing[@]} -eq 0 ]; then
    install_npm_packages
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
# The tests need only promtool from the prometheus package; a Prometheus
# server we just installed is not started on the developer's machine.
if printf '%s\n' "${missing[@]}" | grep -qx prometheus && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
install_npm_packages
