#!/usr/bin/env bash
# Installs every build and test dependency of labman from Debian packages.
# Idempotent: calls apt-get only when something is missing. Uses sudo when
# not root. Run by `make run`, `make check` and `make bench`.
set -euo pipefail

# Build: compiler, libraries of SPEC §2. Tests: cmocka, pytest, clang for the
# fuzz targets. Benchmarks: nginx (baseline proxy), wrk (load), util-linux
# (taskset). Tools the tests call: curl, iproute2, openssl.
PKGS=(
    build-essential pkg-config clang
    libevent-dev libcurl4-openssl-dev libssl-dev libsodium-dev libjansson-dev
    libsqlite3-dev libsystemd-dev libcmocka-dev
    python3 python3-pytest
    curl openssl iproute2 util-linux procps
    nginx-light wrk
)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
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
