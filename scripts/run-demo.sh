#!/usr/bin/env bash
# `make run`: starts labman-devllm (as an Ollama runtime) and labmand with
# examples/demo.toml in the foreground. Ctrl-C stops both.
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/.."

DEVLLM_ADDR=127.0.0.1:11500
ADMIN=127.0.0.1:8145
GATEWAY=127.0.0.1:31145
mkdir -p build/demo/data
chmod 700 build/demo/data

pids=()
cleanup() {
    trap - INT TERM EXIT
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    echo "demo: stopped"
}
trap cleanup INT TERM EXIT

"$BUILD/labman-devllm" --flavor ollama --listen "$DEVLLM_ADDR" \
    --models llama3.2:1b,qwen2.5:0.5b --tokens-per-sec 50 &
pids+=($!)
"$BUILD/labmand" -c examples/demo.toml &
pids+=($!)

# Wait for both to answer before telling the user what to paste.
for _ in $(seq 1 100); do
    # /readyz: the runtime has been checked, so the gateway knows its models.
    if curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1 &&
        curl -fsS "http://$DEVLLM_ADDR/api/version" >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done

"$BUILD/labman" status -c examples/demo.toml || true
cat <<TXT

labman demo is running (Ctrl-C stops it).
  node status:   $BUILD/labman status -c examples/demo.toml
  metrics:       curl -s http://$ADMIN/metrics
  requests now:  $BUILD/labman requests -c examples/demo.toml
  a completion through the gateway (OpenAI API on $GATEWAY):
    curl -s http://$GATEWAY/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model":"llama3.2:1b","messages":[{"role":"user","content":"Hello there"}]}'
  the same, streamed:
    curl -sN http://$GATEWAY/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model":"llama3.2:1b","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
  models:        curl -s http://$GATEWAY/v1/models
  OpenAI SDKs:   base_url http://$GATEWAY/v1, any api_key
TXT
wait -n "${pids[@]}" || true
