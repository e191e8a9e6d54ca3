#!/usr/bin/env bash
# Runs every test suite against the binaries in build dir $1 and ends with
# one summary line, "check: N passed, N failed". Each suite prints its own
# runner's summary as well. Exit status is non-zero when anything failed or
# when a suite ran no test at all.
set -uo pipefail

BUILD=${1:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
cd "$(dirname "$0")/.."

passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

suite() {
    # suite NAME REGEX-FOR-PASSED REGEX-FOR-FAILED -- command...
    local name=$1 pre=$2 fre=$3
    shift 4
    echo "== $name"
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local p f
    p=$(grep -Eo "$pre" "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
    f=$(grep -Eo "$fre" "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
    fi
    if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
        echo "$name: ran no test" >&2
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
}

unit_all() {
    local rc=0
    for t in "$BUILD"/tests/*_test; do
        [ -x "$t" ] || continue
        "$t" || rc=1
    done
    return $rc
}

fuzz_replay() {
    local rc=0
    for f in "$BUILD"/fuzz/*-replay; do
        [ -x "$f" ] || continue
        local n
        n=$(basename "$f" -replay)
        "$f" "tests/fuzz/corpus/$n" || rc=1
    done
    return $rc
}

# The official openai SDK against labmand's gateway (tests/conformance/openai).
openai_sdk() {
    (cd tests/conformance/openai &&
        LABMAN_BUILD="$BUILD" node --test --test-reporter=tap --test-timeout=60000)
}

suite unit '\[  PASSED  \] [0-9]+' '\[  FAILED  \] [0-9]+' -- unit_all
suite toml-test 'toml-test: [0-9]+ passed' '[0-9]+ failed$' -- \
    "$PYTHON" tests/conformance/toml/run.py "$BUILD/toml-decoder"
# src/yamux against hashicorp/yamux over TCP, both ways round.
suite yamux-interop 'yamux-interop: [0-9]+ passed' '[0-9]+ failed$' -- \
    tests/conformance/yamux/run.sh "$BUILD"
suite fuzz-replay 'replay: [0-9]+ inputs ok' 'no-such-line' -- fuzz_replay
suite integ '[0-9]+ passed' '[0-9]+ (failed|error)' -- \
    env LABMAN_BUILD="$BUILD" "$PYTHON" -m pytest -q -p no:cacheprovider tests/integ
suite openai-sdk '^# pass [0-9]+' '^# fail [0-9]+' -- openai_sdk

echo "check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
