#!/usr/bin/env bash
# bench/device_structured.sh — issue 16's speed targets on one GPU: `pie serve --device cuda` at the
# Qwen3-8B shape (--load-format dummy, the real tokenizer), 64 concurrent chat requests each with
# a different 10-30-field JSON schema against the same requests unconstrained, and the extra
# latency of a first request's grammar compilation (bench/structured_bench.py), decomposed by the
# server's own trace (PIE_TRACE_STRUCTURED=1, summed up by bench/structured_trace.py). First the
# CUDA token-bitmask kernel against the CPU's (pie_cuda_test_token_bitmask), and the compile alone
# (structured_compile_bench) without and with the prewarmed strings.
#
# Two servers: the default one (strings of maxLength 1..16 prewarmed in the background; the client
# starts once the server says the prewarm is done), then — unless PIE_COMPARE_NO_PREWARM=0 — one
# with --structured-prewarm-max-length 0 for the same latency measurement (the same-call peer).
#
# Usage, in the repository root of the GPU machine:
#   OUT=/some/dir bash bench/device_structured.sh
# Needs, git-ignored: the CUDA-built `pie`, `pie_cuda_test_token_bitmask` and
# `structured_compile_bench` in $PIE_SERVE_BIN_DIR (default .device/gsrv, with the shared libraries
# the machine lacks next to them), and the model's config/tokenizer json files in $PIE_MODEL_DIR
# (default .device/Qwen3-8B). To prepare $PIE_SERVE_BIN_DIR on a build machine: in a CUDA build
# (-DCMAKE_CUDA_ARCHITECTURES=90a) build the targets pie_cli, pie_cuda_test_token_bitmask and
# structured_compile_bench, and copy the three programs there with the shared libraries they
# need that the GPU machine lacks (ldd).
#
# Dry run on a machine without a GPU (checks this script, not the GPU): PIE_CPU_DRY_RUN=1 runs the
# same steps with a CPU-built `pie` (`--device cpu`, no bf16/memory flags, no kernel test), e.g.
# with a tiny Qwen3 config at vocab_size 151936 beside the Qwen3 tokenizer as the model.
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
DEVICE_ARGS="--device cuda --dtype bfloat16 --gpu-memory-utilization 0.90"
if [ "${PIE_CPU_DRY_RUN:-0}" = 1 ]; then
  DEVICE_ARGS="--device cpu"
  echo "== dry run on the CPU: no kernel test, CPU timings"
else
  LD_LIBRARY_PATH="$PIE_LD" "$BIN_DIR/pie_cuda_test_token_bitmask" 2>&1 | tail -3 | tee "$OUT/kernel_test.log"
fi

# The compile alone, 10 never-seen 30-field schemas, the first 5 of them the client's latency probes
# (wide_schema(10000 + k, 30)), by XGrammar thread count, without and with the prewarm (each
# compiler fresh; its schemas in order, so a later one may reuse an earlier one's strings).
SCHEMAS="$OUT/schemas.jsonl"
python3 -c "
import json, sys
sys.path.insert(0, 'tests/server')
import schema_gen
for k in range(10): print(json.dumps(schema_gen.wide_schema(10000 + k, 30)))" > "$SCHEMAS"
if [ -x "$BIN_DIR/structured_compile_bench" ]; then
  for pw in 0 16; do
    LD_LIBRARY_PATH="$PIE_LD" "$BIN_DIR/structured_compile_bench" "$MODEL/tokenizer.json" "$SCHEMAS" \
      151936 151645,151643 "${PIE_COMPILE_THREADS:-1,16}" "$pw" 2>&1 | tee "$OUT/compile_bench_prewarm$pw.log" \
      | grep -E "median|prewarm of"
  done
fi

# serve NAME EXTRA_ARGS CLIENT_ARGS: one server, the client, the trace's decomposition.
serve() {
  local name=$1 extra=$2 client=$3 t0=$SECONDS
  PIE_TRACE_STRUCTURED=1 LD_LIBRARY_PATH="$PIE_LD" "$BIN_DIR/pie" serve "$MODEL" $DEVICE_ARGS \
    --load-format dummy --host 127.0.0.1 --port "$PORT" --max-model-len 2048 --max-num-seqs 64 \
    --disable-log-requests $extra > "$OUT/server_$name.log" 2>&1 &
  local server=$! ready=0
  wait_ready "$server" "$PORT" && ready=1
  echo "== [$name] server ready=$ready after $((SECONDS - t0)) s"
  grep -E "^pie: (memory|captured)|ready|error|failed" "$OUT/server_$name.log" | head -6
  if [ "$ready" = 1 ]; then
    if [[ "$extra" != *"prewarm-max-length 0"* ]]; then  # the prewarm runs in the background: let it end
      for _ in $(seq 1 120); do grep -q "prewarmed" "$OUT/server_$name.log" && break; sleep 0.5; done
      grep "prewarmed" "$OUT/server_$name.log" || echo "== [$name] prewarm not done after 60 s"
    fi
    timeout "${PIE_CLIENT_TIMEOUT_S:-150}" python3 bench/structured_bench.py --port "$PORT" --concurrency 64 \
      --max-tokens "${PIE_MAX_TOKENS:-192}" --fresh "${PIE_FRESH:-5}" $client 2>&1 | tee "$OUT/client_$name.log"
    echo "== [$name] client rc=${PIPESTATUS[0]} after $((SECONDS - t0)) s"
  fi
  stop_server "$server"
  python3 bench/structured_trace.py "$OUT/server_$name.log" " [$name]" "${PIE_FRESH:-5}"
  tail -2 "$OUT/server_$name.log"
}

serve prewarm "" ""
if [ "${PIE_COMPARE_NO_PREWARM:-1}" = 1 ]; then
  serve no_prewarm "--structured-prewarm-max-length 0" "--latency-only"
fi
for name in prewarm no_prewarm; do
  [ -f "$OUT/client_$name.log" ] || continue
  python3 - "$OUT/client_$name.log" "$name" <<'PY'
import json, sys
last = [l for l in open(sys.argv[1]) if l.startswith("{") and "compile_extra_ms_median" in l]
if last:
    s = json.loads(last[-1]); m = s["compile_extra_ms_median"]
    print(f"TARGET [{sys.argv[2]}] first-request extra latency: median {m} ms, max {s['compile_extra_ms_max']} ms "
          f"(target <= 50: {'met' if m <= 50 else 'MISSED'}); cached {s['cached_extra_ms_median']} ms"
          + (f"; throughput ratio {s['ratio']} (target >= 0.90: {'met' if s['ratio'] >= 0.90 else 'MISSED'})" if "ratio" in s else ""))
PY
done
