#!/usr/bin/env bash
# Gossip convergence (SPEC §9: "100 nodes converge on a new record in
# ≤ 2 s") and what gossip costs. Starts NODES labmand processes on loopback
# (trust "private", every id trusted; each node bootstraps to 1 or 2 others:
# a ring plus chords), waits until the mesh is formed and steady, then
#   1. idle: mesh bytes per node per second over IDLE_S seconds
#      (labman_mesh_peer_bytes_total summed per node) and the nodes' CPU
#   2. ROUNDS rounds: a random node reloads with a new [node] name, which
#      republishes its `peer` record; every other node's /admin/v1/peers is
#      polled every POLL_MS until it shows the new name. Convergence = the
#      last node's arrival, from the signal; bytes/node/s over the rounds.
# The driver is bench/gossip_probe.py (Python stdlib). Prints a table and one
# JSON line; exits 1 when a round takes longer than TARGET_MS (every round
# must converge in time) unless BENCH_NO_FAIL=1. GOSSIP_INTERVAL_MS unset
# keeps labmand's default (1000). Every labmand is stopped on exit.
#   BUILD=build NODES=100 ROUNDS=5 bench/gossip.sh
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
NODES=${NODES:-100}
ROUNDS=${ROUNDS:-5}
IDLE_S=${IDLE_S:-10}
POLL_MS=${POLL_MS:-25}
ROUND_TIMEOUT_S=${ROUND_TIMEOUT_S:-10}
FORM_TIMEOUT_S=${FORM_TIMEOUT_S:-120}
TARGET_MS=${TARGET_MS:-2000}
GOSSIP_INTERVAL_MS=${GOSSIP_INTERVAL_MS:-0}
SEED=${SEED:-}
BENCH_NO_FAIL=${BENCH_NO_FAIL:-0}
PYTHON=${PYTHON:-/usr/bin/python3}

die() { echo "gossip.sh: $*" >&2; exit 1; }
note() { echo "gossip.sh: $*" >&2; }

W="$BUILD/bench/gossip"
rm -rf "$W"
mkdir -p "$W"
W=$(cd "$W" && pwd)

if ! make --no-print-directory -s BUILD="$BUILD" "$BUILD/labmand" "$BUILD/labman" \
    >"$W/make.log" 2>&1; then
    cat "$W/make.log" >&2
    die "labmand does not build"
fi
# Each node holds up to ~2 x max_peers connections.
ulimit -n 16384 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

probe=
cleanup() { # the driver stops its nodes itself; this is for when it was killed
    local p
    if [ -n "$probe" ]; then
        kill "$probe" 2>/dev/null || true
        wait "$probe" 2>/dev/null || true
    fi
    [ -f "$W/pids" ] || return 0
    local left=0
    while read -r p; do
        if grep -qs labmand "/proc/$p/cmdline"; then
            kill "$p" 2>/dev/null || true
            left=1
        fi
    done <"$W/pids"
    [ "$left" = 1 ] || return 0
    sleep 2
    while read -r p; do
        if grep -qs labmand "/proc/$p/cmdline"; then kill -9 "$p" 2>/dev/null || true; fi
    done <"$W/pids"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

args=(--labmand "$BUILD/labmand" --labman "$BUILD/labman" --workdir "$W" --nodes "$NODES"
    --rounds "$ROUNDS" --idle-s "$IDLE_S" --poll-ms "$POLL_MS"
    --round-timeout-s "$ROUND_TIMEOUT_S" --form-timeout-s "$FORM_TIMEOUT_S"
    --target-ms "$TARGET_MS" --gossip-interval-ms "$GOSSIP_INTERVAL_MS")
[ -n "$SEED" ] && args+=(--seed "$SEED")

rc=0
"$PYTHON" bench/gossip_probe.py "${args[@]}" &
probe=$!
wait "$probe" || rc=$?
probe=
case $rc in
0) ;;
10)
    if [ "$BENCH_NO_FAIL" = 1 ]; then
        note "the convergence target was missed (BENCH_NO_FAIL=1: exit 0)"
    else
        die "the convergence target was missed"
    fi
    ;;
*) die "the benchmark did not run to the end (status $rc; node logs in $W)" ;;
esac
