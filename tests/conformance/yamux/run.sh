#!/usr/bin/env bash
# yamux interop: labman's src/yamux (BUILD/tests/yamux-cpeer) against
# hashicorp/yamux (BUILD/yamux-peer, built here from peer.go), over real TCP
# on 127.0.0.1, both ways round: cpeer as client against the Go server, and
# the Go client against cpeer as server. One line per scenario, then
# "yamux-interop: N passed, N failed"; exit status non-zero on any failure.
#
#   tests/conformance/yamux/run.sh [BUILD]      (make check runs it)
#
# Each scenario is one fresh connection between two fresh processes. Logs of
# failed ones are kept in BUILD/yamux-interop/.
set -uo pipefail

BUILD=${1:-build}
cd "$(dirname "$0")/../../.."
case "$BUILD" in /*) ;; *) BUILD="$PWD/$BUILD" ;; esac

SCENARIOS=(echo64 slow halfclose rst-by-c rst-by-go ping-by-c ping-by-go goaway-by-c goaway-by-go)
TIMEOUT=25
GOSRC=/usr/share/gocode/src/github.com/hashicorp/yamux
CPEER="$BUILD/tests/yamux-cpeer"
GOPEER="$BUILD/yamux-peer"
LOGS="$BUILD/yamux-interop"

passed=0
failed=0

# Nothing is skipped: a missing tool is a failure that says how to fix it.
setup_fail() {
    echo "FAIL setup: $*"
    echo "yamux-interop: 0 passed, 1 failed"
    exit 1
}

command -v go >/dev/null 2>&1 ||
    setup_fail "go not found (scripts/deps.sh installs golang-go)"
[ -f "$GOSRC/session.go" ] ||
    setup_fail "hashicorp/yamux source missing in $GOSRC (scripts/deps.sh installs golang-github-hashicorp-yamux-dev)"
[ -x "$CPEER" ] ||
    setup_fail "$CPEER missing (make BUILD=$BUILD $CPEER)"

# GOPATH mode over Debian's packaged source: offline, no module download.
if [ ! -x "$GOPEER" ] || [ tests/conformance/yamux/peer.go -nt "$GOPEER" ] ||
    [ "$GOSRC/session.go" -nt "$GOPEER" ]; then
    mkdir -p "$BUILD/gocache"
    if ! GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$BUILD/gocache" GOFLAGS= \
        GOPROXY=off go build -o "$GOPEER" tests/conformance/yamux/peer.go; then
        setup_fail "go build of tests/conformance/yamux/peer.go failed"
    fi
fi

rm -rf "$LOGS"
mkdir -p "$LOGS"

# run_one NAME SERVER-CMD... -- CLIENT-CMD... (@PORT@ in it: the server's port)
run_one() {
    local name=$1
    shift
    local srv=() cli=()
    while [ "$1" != "--" ]; do
        srv+=("$1")
        shift
    done
    shift
    cli=("$@")
    local log="$LOGS/${name//[\/ ]/_}"
    local start=$SECONDS port="" line

    exec {portfd}< <(timeout "$TIMEOUT" "${srv[@]}" 2>"$log.server"; echo "exit $?")
    local spid=$!
    # The server prints "port N" once it listens.
    if read -r -t 10 line <&"$portfd" && [[ $line == port\ * ]]; then
        port=${line#port }
    fi
    local out rc=1 srvrc=1
    if [ -n "$port" ]; then
        out=$(timeout "$TIMEOUT" "${cli[@]//@PORT@/$port}" 2>"$log.client")
        rc=$?
    else
        out="FAIL: server did not start: $line"
    fi
    if read -r -t "$TIMEOUT" line <&"$portfd" && [[ $line == exit\ * ]]; then
        srvrc=${line#exit }
    fi
    exec {portfd}<&-
    wait "$spid" 2>/dev/null

    local took=$((SECONDS - start))
    if [ "$rc" -eq 0 ] && [ "$srvrc" -eq 0 ] && [ "$out" = "PASS" ]; then
        echo "PASS $name (${took}s)"
        passed=$((passed + 1))
        rm -f "$log.server" "$log.client"
    else
        echo "FAIL $name: client: ${out:-exit $rc}; server exit $srvrc (logs: $log.*)"
        tail -n 5 "$log.server" "$log.client" 2>/dev/null | sed 's/^/    /'
        failed=$((failed + 1))
    fi
}

for sc in "${SCENARIOS[@]}"; do
    run_one "c-client/go-server $sc" "$GOPEER" -role server -scenario "$sc" -- \
        "$CPEER" client "$sc" @PORT@
done
for sc in "${SCENARIOS[@]}"; do
    run_one "go-client/c-server $sc" "$CPEER" server "$sc" -- \
        "$GOPEER" -role client -scenario "$sc" -addr 127.0.0.1:@PORT@
done

echo "yamux-interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
