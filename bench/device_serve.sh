#!/usr/bin/env bash
# bench/device_serve.sh — issue 7 item 10 on one GPU: `pie serve --device cuda` at the Qwen3-8B
# shape with --load-format dummy and the real tokenizer, measured over the HTTP API by
# bench/serving_client.py at concurrency 1, 16, 64, 256 (128 prompt tokens, 128 output tokens).
#
# Usage, in the repository root of the GPU machine:
#   OUT=/some/dir bash bench/device_serve.sh
# Needs: the `pie` binary built with CUDA in $PIE_SERVE_BIN_DIR (default .device/gsrv, with the
# shared libraries the machine lacks next to it, e.g. libcpp-httplib.so*), and the model's
# config and tokenizer in $PIE_MODEL_DIR (default .device/Qwen3-8B: copy
# ../shared/models/Qwen3-8B/*.json there). Both folders are git-ignored, never committed.
# Writes to $OUT: server.log (pie's stdout/stderr, with the memory plan and the `pie: roofline:`
# line), client.log, serving.json, metrics.txt; the last lines printed are the results.
set -u
OUT=${OUT:-/tmp/pie_serve_out}
BIN_DIR=${PIE_SERVE_BIN_DIR:-.device/gsrv}
MODEL=${PIE_MODEL_DIR:-.device/Qwen3-8B}
PORT=${PIE_PORT:-8123}
LEVELS=${PIE_LEVELS:-1,16,64,256}
CLIENT_TIMEOUT=${PIE_CLIENT_TIMEOUT_S:-200}  # PIE_CLIENT_EXTRA: more serving_client.py flags (e.g. --waves 4)
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
source "$(dirname "$0")/device_lib.sh"  # gpu_line, wait_ready, stop_server
echo "== $(date -u +%FT%TZ) device: $(gpu_line)"
# Only pie gets the carried libraries (python3 keeps the machine's own).
PIE_LD="$BIN_DIR:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
if ! LD_LIBRARY_PATH="$PIE_LD" "$BIN_DIR/pie" serve --help > /dev/null 2>"$OUT/server.log"; then
  echo "pie does not start here:"; LD_LIBRARY_PATH="$PIE_LD" ldd "$BIN_DIR/pie" | grep "not found"; cat "$OUT/server.log"; exit 1
fi

t0=$SECONDS
LD_LIBRARY_PATH="$PIE_LD" "$BIN_DIR/pie" serve "$MODEL" --device cuda --dtype bfloat16 --load-format dummy --host 127.0.0.1 --port "$PORT" \
  --max-model-len 2048 --max-num-seqs 256 --gpu-memory-utilization 0.90 --swap-space 4 \
  --disable-log-requests ${PIE_SERVE_EXTRA:-} > "$OUT/server.log" 2>&1 &
SERVER=$!
ready=0
wait_ready "$SERVER" "$PORT" && ready=1
echo "== server ready=$ready after $((SECONDS - t0)) s"
grep -E "^pie: (memory|roofline|captured)|ready|error|failed" "$OUT/server.log" | head -8
if [ "$ready" = 1 ]; then
  timeout "$CLIENT_TIMEOUT" python3 bench/serving_client.py --base-url "http://127.0.0.1:$PORT" \
    --concurrency "$LEVELS" --input-len 128 --output-len 128 --config "$MODEL/config.json" \
    --server-log "$OUT/server.log" --output-json "$OUT/serving.json" ${PIE_CLIENT_EXTRA:-} > "$OUT/client.log" 2>&1
  echo "== client rc=$? after $((SECONDS - t0)) s"
  # Device sampling vs the host sampler on copied-back logits (logprobs force the latter): the
  # same greedy prompt must give the same text both ways. The prompt is sent once first so both
  # compared requests take the same path (48 of its 64 tokens from the prefix cache): a fresh
  # prefill and a cached one differ in bf16 rounding, which can flip a near-tie of dummy logits.
  python3 - "$PORT" <<'PY' 2>&1 | tee -a "$OUT/client.log"
import json, sys, urllib.request
port = sys.argv[1]
def ask(extra):
    body = {"model": json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models"))["data"][0]["id"],
            "prompt": list(range(3000, 3064)), "max_tokens": 24, "temperature": 0, "ignore_eos": True, **extra}
    r = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(r, timeout=60))["choices"][0]
ask({})
a, b = ask({}), ask({"logprobs": 1})
print("sampling check: device greedy == host greedy (logprobs path):", a["text"] == b["text"],
      "| tokens with logprobs:", len(b["logprobs"]["tokens"]))
PY
  python3 -c "import urllib.request; open('$OUT/metrics.txt','wb').write(urllib.request.urlopen('http://127.0.0.1:$PORT/metrics', timeout=5).read())" || true
fi
stop_server "$SERVER"
echo "== server exit rc=$?"
tail -5 "$OUT/server.log"
cat "$OUT/client.log" 2>/dev/null
