#!/usr/bin/env bash
# shellcheck disable=SC2154 # lpid_*, lport_*, v_* are set through printf -v
# The gateway against nginx (SPEC §9). In one run, against the same
# labman-devllm (--flavor openai), three targets: devllm directly, nginx as a
# reverse proxy (one worker, keep-alive upstream, bench/nginx.conf.in) and
# labmand's gateway. The proxy under test runs on core PROXY_CORE; devllm and
# the load generator (bench/loadgen.c) on LOAD_CORE. Runs are interleaved
# (direct, nginx, labmand, then again) so that the machine's drift hits every
# target alike; each figure: warm-up, then RUNS runs, median [min..max].
#   1. req/s, 64 keep-alive connections, small non-streaming chat completions
#   2. latency at 1 connection (LAT_REQS sequential requests): p50, p99 and
#      what the proxy adds over direct (paired per run)
#   3. proxy CPU µs per request (utime+stime of the nginx worker / labmand)
#   4. RSS idle, peak RSS under the 64-connection load, and bytes per idle
#      keep-alive connection: IDLE_STEPS steps of IDLE_CONNS more connections
#      on freshly started proxies (4 x 1000 stays under labmand's default
#      limit of 4096 connections)
#   5. STREAMS SSE streams at SSE_TPS tokens/s (devllm restarted with
#      --tokens-per-sec): proxy CPU share, worst event delay, added TTFT p99
# Prints a table and one JSON line; exits 1 when a target is missed (unless
# BENCH_NO_FAIL=1). LABMAND=auto (default) skips labmand with a note when it
# does not build or does not answer POST /v1/chat/completions; LABMAND=0 skips
# it; LABMAND=1 makes that an error. labmand logs at LABMAND_LOG_LEVEL (default
# info, its default; stderr to a file); its CPU per request at log_level warn
# is measured too (LABMAND_WARN=0 skips that). PROFILE=1 adds a perf profile
# of the nginx worker and labmand under the 64-connection load.
#   BUILD=build RUNS=5 bench/gateway.sh
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
RUNS=${RUNS:-5}
REQS=${REQS:-40000}
WARM_REQS=${WARM_REQS:-5000}
LAT_REQS=${LAT_REQS:-5000}
IDLE_CONNS=${IDLE_CONNS:-1000}
IDLE_STEPS=${IDLE_STEPS:-4}
STREAMS=${STREAMS:-512}
SSE_TPS=${SSE_TPS:-25}
SSE_TOKENS=${SSE_TOKENS:-250}
SSE_SETTLE=${SSE_SETTLE:-1}
SSE_SECS=${SSE_SECS:-7}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
LABMAND=${LABMAND:-auto}
LABMAND_LOG_LEVEL=${LABMAND_LOG_LEVEL:-info}
LABMAND_WARN=${LABMAND_WARN:-1}
BENCH_NO_FAIL=${BENCH_NO_FAIL:-0}
NGINX=${NGINX:-/usr/sbin/nginx}

die() { echo "gateway.sh: $*" >&2; exit 1; }
note() { echo "gateway.sh: $*" >&2; }

[ -x "$NGINX" ] || die "nginx is not installed ($NGINX; scripts/deps.sh)"
command -v taskset >/dev/null || die "taskset is not installed"
command -v curl >/dev/null || die "curl is not installed"

W="$BUILD/bench/gateway"
rm -rf "$W"
mkdir -p "$W/nginx" "$W/res"
W=$(cd "$W" && pwd)
R="$W/res"

if ! make --no-print-directory -s BUILD="$BUILD" "$BUILD/labman-devllm" >"$W/make.log" 2>&1; then
    [ -x "$BUILD/labman-devllm" ] || { cat "$W/make.log" >&2; die "labman-devllm does not build"; }
    note "labman-devllm does not build now (see $W/make.log): using the existing binary"
fi
cc -O2 -Wall -Wextra -o "$BUILD/bench/loadgen" bench/loadgen.c
LG=$(pwd)/$BUILD/bench/loadgen
if [ "$LABMAND" != 0 ]; then
    if ! make --no-print-directory -s BUILD="$BUILD" "$BUILD/labmand" >"$W/make.log" 2>&1; then
        [ "$LABMAND" = 1 ] && { cat "$W/make.log" >&2; die "labmand does not build"; }
        note "labmand does not build (see $W/make.log): measuring direct and nginx only"
        LABMAND=0
    fi
fi
ulimit -n 16384 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        stop "$p"
    done
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # PORT PID LOG
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || { cat "$3" >&2; die "process $2 exited at start"; }
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    cat "$3" >&2
    die "nothing listens on port $1"
}

stop() { # PID: SIGTERM, then SIGKILL after 3 s
    kill "$1" 2>/dev/null || true
    for _ in $(seq 60); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local p keep=()
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

chat_ok() { # PORT -> 0 when a small chat completion answers 200
    local code
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' -H 'Content-Type: application/json' \
        -d '{"model":"llama3.2:1b","messages":[{"role":"user","content":"hi"}],"max_tokens":1}' \
        "http://127.0.0.1:$1/v1/chat/completions" 2>/dev/null) || true
    [ "$code" = 200 ]
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

DPORT=$(free_port)
NPORT=$(free_port)
start_devllm() { # extra devllm options
    taskset -c "$LOAD_CORE" "$BUILD/labman-devllm" --flavor openai --listen "127.0.0.1:$DPORT" \
        --log-level warn "$@" 2>>"$W/devllm.log" &
    dpid=$!
    pids+=("$dpid")
    wait_port "$DPORT" "$dpid" "$W/devllm.log"
}

start_nginx() {
    sed -e "s|@DIR@|$W/nginx|g" -e "s|@PORT@|$NPORT|g" -e "s|@UPSTREAM@|$DPORT|g" \
        bench/nginx.conf.in >"$W/nginx/nginx.conf"
    taskset -c "$PROXY_CORE" "$NGINX" -p "$W/nginx" -e "$W/nginx/error.log" \
        -c "$W/nginx/nginx.conf" 2>>"$W/nginx/stderr.log" &
    npid=$!
    pids+=("$npid")
    wait_port "$NPORT" "$npid" "$W/nginx/stderr.log"
    nworker=
    for _ in $(seq 50); do
        nworker=$(awk '{print $1}' "/proc/$npid/task/$npid/children" 2>/dev/null || true)
        [ -n "$nworker" ] && break
        sleep 0.05
    done
    [ -n "$nworker" ] || die "nginx has no worker process"
}

# start_labmand NAME LOG_LEVEL: sets lpid_NAME, lport_NAME; returns 1 when it
# does not answer chat completions within 10 s.
start_labmand() {
    local name=$1 level=$2 gport aport mport pid
    gport=$(free_port)
    aport=$(free_port)
    mport=$(free_port)
    mkdir -p "$W/$name/data"
    cat >"$W/$name/labman.toml" <<EOF
[node]
name = "bench-$name"
data_dir = "$W/$name/data"
log_level = "$level"

[gateway]
listen = "127.0.0.1:$gport"

[admin]
listen = "127.0.0.1:$aport"

[mesh]
listen = "127.0.0.1:$mport"

[discovery]
scan_local = false

[[endpoints]]
name = "devllm"
url = "http://127.0.0.1:$DPORT"
kind = "openai"
max_concurrent = 1024
EOF
    taskset -c "$PROXY_CORE" "$BUILD/labmand" -c "$W/$name/labman.toml" \
        2>>"$W/$name/labmand.log" >&2 &
    pid=$!
    pids+=("$pid")
    printf -v "lpid_$name" %s "$pid"
    printf -v "lport_$name" %s "$gport"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        chat_ok "$gport" && return 0
        sleep 0.1
    done
    note "labmand ($name) does not answer POST /v1/chat/completions on :$gport; its log:"
    tail -n 15 "$W/$name/labmand.log" >&2 || true
    stop "$pid"
    return 1
}

# Targets: name port pid-to-watch (0 = none)
targets=()
declare -A port watch
add_target() { targets+=("$1"); port[$1]=$2; watch[$1]=$3; }

start_proxies() {
    start_nginx
    if [ "$LABMAND" != 0 ]; then
        if start_labmand labmand "$LABMAND_LOG_LEVEL"; then
            have_labmand=1
        else
            [ "$LABMAND" = 1 ] && die "labmand was asked for (LABMAND=1) but does not serve"
            note "skipping labmand: measuring direct and nginx only"
            LABMAND=0
            have_labmand=0
        fi
    fi
}

rec() { echo "$3" >>"$R/$1.$2"; } # target metric value

# kv KEY <<<"k=v k=v" -> v
kv() { sed -n "s/.*\\b$1=\\([-0-9.]*\\).*/\\1/p"; }

loadgen() { taskset -c "$LOAD_CORE" "$LG" "$@"; }

check_errors() { # target output
    local e
    e=$(kv errors <<<"$2" | awk '{s += $1} END {print s + 0}')
    echo "$e" >>"$R/$1.errors"
    [ "$e" = 0 ] || note "$1: load generator saw $e errors: $2"
}

have_labmand=0
lpid_labmand='' lport_labmand='' lpid_warn='' lport_warn=''
t_begin=$(date +%s)

# ---- phase 1: non-streaming (devllm --tokens-per-sec 0) ----
start_devllm --tokens-per-sec 0
start_proxies
add_target direct "$DPORT" 0
add_target nginx "$NPORT" "$nworker"
if [ "$have_labmand" = 1 ]; then
    add_target labmand "$lport_labmand" "$lpid_labmand"
    if [ "$LABMAND_WARN" = 1 ] && start_labmand warn warn; then
        add_target labmand_warn "$lport_warn" "$lpid_warn"
    fi
fi

for t in "${targets[@]}"; do
    out=$(loadgen rps 127.0.0.1 "${port[$t]}" --conns 64 --requests "$WARM_REQS" --warmup 0 \
        --runs 1)
    check_errors "$t" "$out"
    out=$(loadgen lat 127.0.0.1 "${port[$t]}" --requests 1000 --warmup 0 --runs 1)
    [ "${watch[$t]}" != 0 ] && rec "$t" rss_idle_kb "$(rss_kb "${watch[$t]}")"
done

for _ in $(seq "$RUNS"); do
    for t in "${targets[@]}"; do
        w=()
        [ "${watch[$t]}" != 0 ] && w=(--pid "${watch[$t]}")
        out=$(loadgen rps 127.0.0.1 "${port[$t]}" --conns 64 --requests "$REQS" --warmup 2000 \
            --runs 1 "${w[@]}")
        check_errors "$t" "$out"
        rec "$t" rps "$(kv rps <<<"$out")"
        if [ "${watch[$t]}" != 0 ]; then
            rec "$t" cpu_us "$(kv cpu_us_per_req <<<"$out")"
            rec "$t" rss_peak_kb "$(kv rss_peak_kb <<<"$out")"
        fi
        [ "$t" = labmand_warn ] && continue
        out=$(loadgen lat 127.0.0.1 "${port[$t]}" --requests "$LAT_REQS" --warmup 500 --runs 1)
        check_errors "$t" "$out"
        rec "$t" p50 "$(kv p50_us <<<"$out")"
        rec "$t" p99 "$(kv p99_us <<<"$out")"
    done
    for t in "${targets[@]}"; do
        [ "$t" = direct ] || [ "$t" = labmand_warn ] && continue
        rec "$t" add_p50 $(($(tail -1 "$R/$t.p50") - $(tail -1 "$R/direct.p50")))
        rec "$t" add_p99 $(($(tail -1 "$R/$t.p99") - $(tail -1 "$R/direct.p99")))
    done
    # paired per run: labmand against nginx, and what labmand's access log costs
    if [ "$have_labmand" = 1 ]; then
        rec labmand rps_ratio "$(awk -v a="$(tail -1 "$R/labmand.rps")" \
            -v b="$(tail -1 "$R/nginx.rps")" 'BEGIN {printf "%.3f", a / b}')"
        rec labmand cpu_ratio "$(awk -v a="$(tail -1 "$R/labmand.cpu_us")" \
            -v b="$(tail -1 "$R/nginx.cpu_us")" 'BEGIN {printf "%.3f", a / b}')"
        if [ -s "$R/labmand_warn.cpu_us" ]; then
            rec labmand log_cost_us "$(awk -v a="$(tail -1 "$R/labmand.cpu_us")" \
                -v b="$(tail -1 "$R/labmand_warn.cpu_us")" 'BEGIN {printf "%.2f", a - b}')"
        fi
    fi
done

[ -n "${lpid_warn:-}" ] && stop "$lpid_warn"

# PROFILE=1: where the proxies spend their CPU (perf, one more 64-conn run
# each, outside the measured figures).
if [ "${PROFILE:-0}" = 1 ] && command -v perf >/dev/null; then
    for t in nginx labmand; do
        [ -n "${watch[$t]:-}" ] || continue
        perf record -q -F 2999 -g -p "${watch[$t]}" -o "$W/perf.$t.data" 2>/dev/null &
        ppid=$!
        sleep 0.3
        loadgen rps 127.0.0.1 "${port[$t]}" --conns 64 --requests "$REQS" --warmup 0 \
            --runs 1 >/dev/null
        kill -INT "$ppid"
        wait "$ppid" || true
        perf report -i "$W/perf.$t.data" --stdio --no-children -g none --sort dso,symbol \
            2>/dev/null |
            awk '/^ +[0-9.]+%/ {printf "%8s  %-22s %s\n", $1, $2, $4}' | head -n 25 \
            >"$W/perf.$t.txt" || true
        echo "gateway.sh: top symbols of $t (perf, self time), also in $W/perf.$t.txt:" >&2
        cat "$W/perf.$t.txt" >&2
    done
fi

# ---- phase 1b: memory per idle keep-alive connection, on fresh proxies (a
# heap grown by the load above would hide what connections cost) ----
[ "$have_labmand" = 1 ] && stop "$lpid_labmand"
stop "$npid"
start_proxies
mem_targets=(nginx)
watch[nginx]=$nworker
if [ "$have_labmand" = 1 ]; then
    mem_targets+=(labmand)
    port[labmand]=$lport_labmand
    watch[labmand]=$lpid_labmand
fi
for t in "${mem_targets[@]}"; do
    loadgen lat 127.0.0.1 "${port[$t]}" --requests 1000 --warmup 0 --runs 1 >/dev/null
    out=$(loadgen idle 127.0.0.1 "${port[$t]}" --conns "$IDLE_CONNS" --runs "$IDLE_STEPS" \
        --pid "${watch[$t]}")
    check_errors "$t" "$out"
    kv bytes_per_conn <<<"$out" >>"$R/$t.idle_bytes"
done
t_phase1=$(date +%s)

# ---- phase 2: streaming (devllm restarted with --tokens-per-sec) ----
[ "$have_labmand" = 1 ] && stop "$lpid_labmand"
stop "$npid"
stop "$dpid"
start_devllm --tokens-per-sec "$SSE_TPS" --max-tokens "$SSE_TOKENS"
start_proxies
sse_targets=(direct nginx)
port[nginx]=$NPORT
watch[nginx]=$nworker
if [ "$have_labmand" = 1 ]; then
    sse_targets+=(labmand)
    port[labmand]=$lport_labmand
    watch[labmand]=$lpid_labmand
fi
sse() { # target runs settle seconds
    local w=()
    [ "${watch[$1]}" != 0 ] && w=(--pid "${watch[$1]}")
    loadgen sse 127.0.0.1 "${port[$1]}" --streams "$STREAMS" --max-tokens "$SSE_TOKENS" \
        --tps "$SSE_TPS" --runs "$2" --settle "$3" --seconds "$4" "${w[@]}" "${@:5}"
}
for t in "${sse_targets[@]}"; do
    out=$(sse "$t" 1 0.5 1)
    check_errors "$t" "$out"
done
for _ in $(seq "$RUNS"); do
    for t in "${sse_targets[@]}"; do
        out=$(sse "$t" 1 "$SSE_SETTLE" "$SSE_SECS" --ttft-out "$R/$t.ttft_samples")
        check_errors "$t" "$out"
        rec "$t" sse_eps "$(kv events_per_s <<<"$out")"
        rec "$t" sse_delay "$(kv worst_delay_ms <<<"$out")"
        rec "$t" sse_ttft_p99 "$(kv ttft_p99_us <<<"$out")"
        [ "${watch[$t]}" != 0 ] && rec "$t" sse_cpu "$(kv cpu_pct <<<"$out")"
    done
    for t in "${sse_targets[@]}"; do
        [ "$t" = direct ] && continue
        rec "$t" sse_add_ttft_p99 \
            $(($(tail -1 "$R/$t.sse_ttft_p99") - $(tail -1 "$R/direct.sse_ttft_p99")))
    done
done
# TTFT p99 pooled over all runs (≈ 250 samples a run make a noisy p99)
for t in "${sse_targets[@]}"; do
    sort -n "$R/$t.ttft_samples" | awk '{v[NR]=$1} END {i = int(NR * 0.99) + 1; if (i > NR) i = NR;
                                                       print v[i]}' >"$R/$t.sse_ttft_p99_pooled"
    [ "$t" = direct ] && continue
    echo $(($(cat "$R/$t.sse_ttft_p99_pooled") - $(cat "$R/direct.sse_ttft_p99_pooled"))) \
        >"$R/$t.sse_add_ttft_pooled"
done
t_end=$(date +%s)
cleanup
pids=()

# ---- report ----
# agg TARGET METRIC -> "median min max" (or "" when not measured)
agg() {
    [ -s "$R/$1.$2" ] || return 0
    sort -g "$R/$1.$2" | awk '{v[NR]=$1} END {m = NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2;
                                             print m, v[1], v[NR]}'
}
med() { agg "$1" "$2" | awk '{print $1}'; }
mx() { agg "$1" "$2" | awk '{print $3}'; }
# cell TARGET METRIC SCALE FORMAT -> "median [min..max]"
cell() {
    local a
    a=$(agg "$1" "$2")
    [ -n "$a" ] || { echo "-"; return; }
    awk -v s="$3" -v f="$4" '{printf f " [" f ".." f "]", $1 * s, $2 * s, $3 * s}' <<<"$a"
}
one() { # TARGET METRIC SCALE FORMAT -> median only
    local a
    a=$(med "$1" "$2")
    [ -n "$a" ] || { echo "-"; return; }
    awk -v v="$a" -v s="$3" -v f="$4" 'BEGIN {printf f, v * s}'
}

ok=true
# verdict VAR EXPR: sets VAR to pass/FAIL (n/a without labmand); EXPR is an
# awk condition (an empty figure reads as 0)
verdict() {
    local v=n/a
    if [ "$have_labmand" = 1 ]; then
        if awk "BEGIN {exit !($2)}"; then
            v=pass
        else
            v=FAIL
            ok=false
        fi
    fi
    printf -v "$1" %s "$v"
}

L=labmand
rows=()
row() { rows+=("$(printf '%-46s|%-24s|%-24s|%-24s|%-12s|%s' "$@")"); }

verdict v_rps "$(med $L rps_ratio)+0 >= 1"
verdict v_p50 "$(med $L add_p50)+0 <= 100"
verdict v_p99 "$(med $L add_p99)+0 <= 250"
verdict v_cpu "$(med $L cpu_ratio)+0 <= 1"
verdict v_rss "$(med $L rss_idle_kb)+0 <= 16384"
verdict v_idle "$(med $L idle_bytes)+0 <= 8192"
verdict v_sse_cpu "$(med $L sse_cpu)+0 < 50"
verdict v_sse_delay "$(mx $L sse_delay)+0 <= 50"
verdict v_sse_ttft "$(med $L sse_add_ttft_pooled)+0 <= 1000"
# a target met with errors on the way is not met
if [ "$have_labmand" = 1 ] && [ "$(awk '{s += $1} END {print s + 0}' "$R/$L.errors")" != 0 ]; then
    ok=false
fi

row "figure (median [min..max])" direct nginx labmand target result
row "chat req/s, 64 keep-alive conns" "$(cell direct rps 1 %.0f)" "$(cell nginx rps 1 %.0f)" \
    "$(cell $L rps 1 %.0f)" "" ""
row "  req/s labmand / nginx, paired per run" "" "" "$(cell $L rps_ratio 1 %.2f)" ">= 1" "$v_rps"
row "latency p50, 1 conn (us)" "$(cell direct p50 1 %.0f)" "$(cell nginx p50 1 %.0f)" \
    "$(cell $L p50 1 %.0f)" "" ""
row "latency p99, 1 conn (us)" "$(cell direct p99 1 %.0f)" "$(cell nginx p99 1 %.0f)" \
    "$(cell $L p99 1 %.0f)" "" ""
row "added latency p50 over direct (us)" "" "$(cell nginx add_p50 1 %.0f)" \
    "$(cell $L add_p50 1 %.0f)" "<= 100" "$v_p50"
row "added latency p99 over direct (us)" "" "$(cell nginx add_p99 1 %.0f)" \
    "$(cell $L add_p99 1 %.0f)" "<= 250" "$v_p99"
row "proxy CPU per request (us)" "" "$(cell nginx cpu_us 1 %.1f)" "$(cell $L cpu_us 1 %.1f)" \
    "" ""
row "  CPU labmand / nginx, paired per run" "" "" "$(cell $L cpu_ratio 1 %.2f)" "<= 1" "$v_cpu"
if [ -s "$R/labmand_warn.cpu_us" ]; then
    row "  labmand at log_level=warn (us)" "" "" "$(cell labmand_warn cpu_us 1 %.1f)" "" ""
    row "  access log cost at info (us/req, paired)" "" "" "$(cell $L log_cost_us 1 %.1f)" "" ""
fi
row "RSS idle after warm-up (MiB)" "" "$(one nginx rss_idle_kb 0.0009765625 %.1f)" \
    "$(one $L rss_idle_kb 0.0009765625 %.1f)" "<= 16" "$v_rss"
row "RSS peak, 64-conn load (MiB)" "" "$(cell nginx rss_peak_kb 0.0009765625 %.1f)" \
    "$(cell $L rss_peak_kb 0.0009765625 %.1f)" "" ""
row "per idle keep-alive conn (KiB)" "" "$(cell nginx idle_bytes 0.0009765625 %.2f)" \
    "$(cell $L idle_bytes 0.0009765625 %.2f)" "<= 8" "$v_idle"
row "SSE $STREAMS x $SSE_TPS tok/s: proxy CPU (% core)" "" "$(cell nginx sse_cpu 1 %.1f)" \
    "$(cell $L sse_cpu 1 %.1f)" "< 50" "$v_sse_cpu"
row "SSE worst event delay (ms; target: max)" "$(cell direct sse_delay 1 %.1f)" \
    "$(cell nginx sse_delay 1 %.1f)" "$(cell $L sse_delay 1 %.1f)" "<= 50" "$v_sse_delay"
row "SSE TTFT p99, per run (ms)" "$(cell direct sse_ttft_p99 0.001 %.2f)" \
    "$(cell nginx sse_ttft_p99 0.001 %.2f)" "$(cell $L sse_ttft_p99 0.001 %.2f)" "" ""
row "SSE added TTFT p99, per run paired (ms)" "" "$(cell nginx sse_add_ttft_p99 0.001 %.2f)" \
    "$(cell $L sse_add_ttft_p99 0.001 %.2f)" "" ""
row "SSE TTFT p99, all runs pooled (ms)" "$(one direct sse_ttft_p99_pooled 0.001 %.2f)" \
    "$(one nginx sse_ttft_p99_pooled 0.001 %.2f)" "$(one $L sse_ttft_p99_pooled 0.001 %.2f)" "" ""
row "SSE added TTFT p99, pooled (ms)" "" "$(one nginx sse_add_ttft_pooled 0.001 %.2f)" \
    "$(one $L sse_add_ttft_pooled 0.001 %.2f)" "<= 1" "$v_sse_ttft"
row "SSE events/s received" "$(cell direct sse_eps 1 %.0f)" "$(cell nginx sse_eps 1 %.0f)" \
    "$(cell $L sse_eps 1 %.0f)" "" ""
errs() { [ -s "$R/$1.errors" ] && awk '{s += $1} END {print s + 0}' "$R/$1.errors" || echo -; }
row "load generator errors" "$(errs direct)" "$(errs nginx)" "$(errs $L)" "0" ""

echo
echo "gateway.sh: $RUNS runs, proxy on core $PROXY_CORE, devllm + load on core $LOAD_CORE," \
    "$(date -u +%Y-%m-%dT%H:%MZ), $((t_phase1 - t_begin)) s + $((t_end - t_phase1)) s"
for r in "${rows[@]}"; do
    IFS='|' read -r a b c d e f <<<"$r"
    printf '%-46s %-22s %-22s %-22s %-9s %s\n' "$a" "$b" "$c" "$d" "$e" "$f"
done
[ "$have_labmand" = 1 ] ||
    echo "labmand: not measured (LABMAND=$LABMAND; it does not build or serve chat completions yet)"

# ---- JSON ----
jstat() { # TARGET METRIC -> {"median":..,"min":..,"max":..} or null
    local a
    a=$(agg "$1" "$2")
    [ -n "$a" ] || { printf null; return; }
    awk '{printf "{\"median\":%s,\"min\":%s,\"max\":%s}", $1, $2, $3}' <<<"$a"
}
json="{\"bench\":\"gateway\",\"runs\":$RUNS,\"date\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\""
json+=",\"streams\":$STREAMS,\"sse_tps\":$SSE_TPS,\"labmand_log_level\":\"$LABMAND_LOG_LEVEL\""
for t in direct nginx labmand labmand_warn; do
    json+=",\"$t\":{"
    first=1
    for m in rps rps_ratio p50 p99 add_p50 add_p99 cpu_us cpu_ratio log_cost_us rss_idle_kb \
        rss_peak_kb idle_bytes sse_cpu \
        sse_delay sse_ttft_p99 sse_add_ttft_p99 sse_ttft_p99_pooled sse_add_ttft_pooled sse_eps \
        errors; do
        [ "$first" = 1 ] || json+=","
        first=0
        json+="\"$m\":$(jstat "$t" "$m")"
    done
    json+="}"
done
json+=",\"labmand_measured\":$([ "$have_labmand" = 1 ] && echo true || echo false)"
json+=",\"targets_met\":$([ "$have_labmand" = 1 ] && echo "$ok" || echo null)}"
echo "$json"

if ! $ok; then
    if [ "$BENCH_NO_FAIL" = 1 ]; then
        note "a target was missed (BENCH_NO_FAIL=1: exit 0)"
    else
        die "a target was missed"
    fi
fi
