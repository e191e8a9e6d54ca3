#!/usr/bin/env bash
# labman-devllm must never be the bottleneck of our benchmarks. This measures
# it alone: devllm pinned to core 1, the load (wrk, sseload) pinned to core 0.
#   1. small non-streaming chat completions, wrk keep-alive, 64 connections
#   2. SSE events/s over 512 concurrent streams at 100 tokens/s each
# Each figure: warm-up, then RUNS runs; prints a table (median, min, max) and
# one JSON line; exits 1 when a target is missed.
#   BUILD=build RUNS=5 SECS=2 bench/devllm.sh
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
RUNS=${RUNS:-5}
SECS=${SECS:-2}
RPS_TARGET=${RPS_TARGET:-30000}
EPS_TARGET=${EPS_TARGET:-30000}
STREAMS=${STREAMS:-512}
DEVCORE=${DEVCORE:-1}
LOADCORE=${LOADCORE:-0}

command -v wrk >/dev/null || { echo "devllm.sh: wrk is not installed (scripts/deps.sh)" >&2; exit 1; }
make --no-print-directory -s BUILD="$BUILD" "$BUILD/labman-devllm"
mkdir -p "$BUILD/bench"
cc -O2 -Wall -Wextra -o "$BUILD/bench/sseload" bench/sseload.c
ulimit -n 8192 2>/dev/null || true

tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_devllm() {
    port=$(free_port)
    taskset -c "$DEVCORE" "$BUILD/labman-devllm" --listen "127.0.0.1:$port" --log-level warn "$@" \
        2>"$tmp/devllm.log" &
    pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "devllm.sh: devllm did not start" >&2
    cat "$tmp/devllm.log" >&2
    exit 1
}

stop_devllm() {
    kill "$pid"
    wait "$pid" || true
    pid=
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# median min max of numbers on stdin
stats() { sort -g | awk '{v[NR]=$1} END {m = NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2;
                                         printf "%.0f %.0f %.0f\n", m, v[1], v[NR]}'; }

cat >"$tmp/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"llama3.2:1b","messages":[{"role":"user","content":"hello there"}],"max_tokens":8}'
wrk.headers["Content-Type"] = "application/json"
EOF

# 1. non-streaming requests/s, and devllm CPU per request
start_devllm
url="http://127.0.0.1:$port/v1/chat/completions"
taskset -c "$LOADCORE" wrk -t1 -c64 -d1s -s "$tmp/post.lua" "$url" >/dev/null
hz=$(getconf CLK_TCK)
: >"$tmp/rps"
: >"$tmp/us"
for _ in $(seq "$RUNS"); do
    t0=$(cpu_ticks "$pid")
    out=$(taskset -c "$LOADCORE" wrk -t1 -c64 -d"${SECS}s" -s "$tmp/post.lua" "$url")
    t1=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    [ -n "$errs" ] && { echo "devllm.sh: wrk saw errors: $errs" >&2; exit 1; }
    echo "$rps" >>"$tmp/rps"
    awk -v t="$((t1 - t0))" -v hz="$hz" -v n="$n" 'BEGIN {printf "%.2f\n", t / hz * 1e6 / n}' >>"$tmp/us"
done
stop_devllm
read -r rps_med rps_min rps_max < <(stats <"$tmp/rps")
us_med=$(sort -g "$tmp/us" | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
us_min=$(sort -g "$tmp/us" | head -1)
us_max=$(sort -g "$tmp/us" | tail -1)

# 2. SSE events/s over many streams
start_devllm --tokens-per-sec 100 --max-tokens 50
taskset -c "$LOADCORE" "$BUILD/bench/sseload" 127.0.0.1 "$port" "$STREAMS" 1 50 >/dev/null
: >"$tmp/eps"
: >"$tmp/gap"
for _ in $(seq "$RUNS"); do
    out=$(taskset -c "$LOADCORE" "$BUILD/bench/sseload" 127.0.0.1 "$port" "$STREAMS" "$SECS" 50)
    sed -n 's/.*events_per_s=\([0-9.]*\).*/\1/p' <<<"$out" >>"$tmp/eps"
    sed -n 's/.*max_gap_ms=\([0-9.]*\).*/\1/p' <<<"$out" >>"$tmp/gap"
    if ! grep -q 'errors=0' <<<"$out"; then echo "devllm.sh: sseload: $out" >&2; exit 1; fi
done
stop_devllm
read -r eps_med eps_min eps_max < <(stats <"$tmp/eps")
gap_max=$(sort -g "$tmp/gap" | tail -1)

printf '%-44s %10s %10s %10s %10s\n' "labman-devllm (one core)" median min max target
printf '%-44s %10s %10s %10s %10s\n' "chat req/s, 64 conns, keep-alive" "$rps_med" "$rps_min" \
    "$rps_max" ">= $RPS_TARGET"
printf '%-44s %10s %10s %10s %10s\n' "devllm CPU us/request" "$us_med" "$us_min" "$us_max" "-"
printf '%-44s %10s %10s %10s %10s\n' "SSE events/s, $STREAMS streams x 100 tok/s" "$eps_med" \
    "$eps_min" "$eps_max" ">= $EPS_TARGET"
printf '%-44s %10s %10s %10s %10s\n' "SSE max gap between events (ms)" "" "" "$gap_max" "-"

ok=true
awk -v a="$rps_med" -v t="$RPS_TARGET" 'BEGIN {exit !(a >= t)}' || ok=false
awk -v a="$eps_med" -v t="$EPS_TARGET" 'BEGIN {exit !(a >= t)}' || ok=false
printf '{"bench":"devllm","runs":%d,"chat_rps":{"median":%s,"min":%s,"max":%s},' \
    "$RUNS" "$rps_med" "$rps_min" "$rps_max"
printf '"cpu_us_per_request":{"median":%s,"min":%s,"max":%s},' "$us_med" "$us_min" "$us_max"
printf '"sse_events_per_s":{"median":%s,"min":%s,"max":%s},"sse_max_gap_ms":%s,' \
    "$eps_med" "$eps_min" "$eps_max" "$gap_max"
printf '"targets_met":%s}\n' "$ok"
$ok || { echo "devllm.sh: a target was missed" >&2; exit 1; }
