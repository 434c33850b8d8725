#!/usr/bin/env bash
# bench/device_structured.sh — issue 16's speed target on one GPU: `pie serve --device cuda` at the
# Qwen3-8B shape (--load-format dummy, the real tokenizer), 64 concurrent chat requests each with
# a different 10-30-field JSON schema against the same requests unconstrained, and the extra
# latency of a first request's grammar compilation (bench/structured_bench.py). First the CUDA
# token-bitmask kernel against the CPU's (pie_cuda_test_token_bitmask).
#
# Usage, in the repository root of the GPU machine:
#   OUT=/some/dir bash bench/device_structured.sh
# Needs, git-ignored: the CUDA-built `pie` and `pie_cuda_test_token_bitmask` in $PIE_SERVE_BIN_DIR
# (default .device/gsrv, with the shared libraries the machine lacks next to them), and the
# model's config/tokenizer json files in $PIE_MODEL_DIR (default .device/Qwen3-8B).
set -u
OUT=${OUT:-/tmp/pie_structured_out}
BIN_DIR=${PIE_SERVE_BIN_DIR:-.device/gsrv}
MODEL=${PIE_MODEL_DIR:-.device/Qwen3-8B}
PORT=${PIE_PORT:-8123}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
source "$(dirname "$0")/device_lib.sh"  # gpu_line, wait_ready, stop_server
echo "== $(date -u +%FT%TZ) device: $(gpu_line)"
PIE_LD="$BIN_DIR:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
LD_LIBRARY_PATH="$PIE_LD" "$BIN_DIR/pie_cuda_test_token_bitmask" 2>&1 | tail -3 | tee "$OUT/kernel_test.log"
# A first compile's cost alone, by XGrammar thread count (bench/structured/compile_bench.cpp; a
# file of never-seen 30-field schemas in $PIE_SCHEMAS), when that binary is there.
if [ -x "$BIN_DIR/structured_compile_bench" ] && [ -f "${PIE_SCHEMAS:-.device/schemas.jsonl}" ]; then
  LD_LIBRARY_PATH="$PIE_LD" "$BIN_DIR/structured_compile_bench" "$MODEL/tokenizer.json" "${PIE_SCHEMAS:-.device/schemas.jsonl}" \
    151936 151645,151643 "${PIE_COMPILE_THREADS:-8,16}" 2>&1 | tee "$OUT/compile_bench.log" | grep median
fi

t0=$SECONDS
LD_LIBRARY_PATH="$PIE_LD" "$BIN_DIR/pie" serve "$MODEL" --device cuda --dtype bfloat16 --load-format dummy \
  --host 127.0.0.1 --port "$PORT" --max-model-len 2048 --max-num-seqs 64 --gpu-memory-utilization 0.90 \
  --disable-log-requests > "$OUT/server.log" 2>&1 &
SERVER=$!
ready=0
wait_ready "$SERVER" "$PORT" && ready=1
echo "== server ready=$ready after $((SECONDS - t0)) s"
grep -E "^pie: (memory|captured)|ready|error|failed" "$OUT/server.log" | head -6
if [ "$ready" = 1 ]; then
  timeout "${PIE_CLIENT_TIMEOUT_S:-150}" python3 bench/structured_bench.py --port "$PORT" --concurrency 64 \
    --max-tokens "${PIE_MAX_TOKENS:-192}" --fresh "${PIE_FRESH:-3}" 2>&1 | tee "$OUT/client.log"
  echo "== client rc=${PIPESTATUS[0]} after $((SECONDS - t0)) s"
fi
stop_server "$SERVER"
tail -3 "$OUT/server.log"
