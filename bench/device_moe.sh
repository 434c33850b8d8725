#!/usr/bin/env bash
# bench/device_moe.sh — issue 20 (Qwen3-MoE on the GPU) in one call: the MoE kernel tests
# (ops/cuda/moe.cuh against the CPU op), the GPU engine against HF transformers bf16 on a small
# Qwen3MoeForCausalLM that transformers builds here (with transformers' own noise floor printed
# by make_hf_reference.py) and its routing layer by layer against transformers' (the opt-in
# MoeRoutingDisagreesOnlyAtNearTies), then `pie bench` at the Qwen3-30B-A3B shape with dummy weights
# (batch-1 latency 128/128 and 1024 × (128, 128), one engine, with its roofline and the eager
# per-op profile at batch 1024 and 1), a kernel trace of the replayed batch-1 decode graphs
# (bench/cuda/kernel_trace.cpp → bench/nsys_decode_profile.py), and HF transformers' batch-1
# latency on the same shape.
#
# Usage, in the repository root of the GPU machine:  OUT=/some/dir bash bench/device_moe.sh
# PIE_BIN_DIR: prebuilt pie_bench, pie_cuda_test_moe, pie_gpu_test_hf and
# libpie_kernel_trace.so (built off the device to save its time); without it, or when they do
# not run there, everything is built here first. PIE_DEADLINE_S bounds the whole run (a stage
# that would start too late is skipped, the one running is cut). The last lines printed are
# the summary. PIE_STAGES picks stages (default test,hf,bench,trace,hfbench).
set -u
STAGES=${PIE_STAGES:-test,hf,bench,trace,hfbench}
has() { [[ ",$STAGES," == *",$1,"* ]]; }
OUT=${OUT:-/tmp/pie_device_out}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-30B-A3B}
BUILD=${PIE_BUILD_DIR:-/tmp/build-moe}
DEADLINE=${PIE_DEADLINE_S:-100000}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
LOGDIR=$OUT RUN_TAIL=12 RUN_MIN_LEFT=15
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
export PYTHONUNBUFFERED=1
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
say "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader 2>&1 | head -1)"

# transformers builds its reference on the GPU while the kernel tests (or the build) run.
HFREF=
if has hf; then
  run hf_reference 90 python3 tests/gpu/make_hf_reference.py --out /tmp/pie_hfref_moe --only-moe --tries 2 &
  HFREF=$!
fi
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
BIN=${PIE_BIN_DIR:-}
if [ -n "$BIN" ] && "$BIN/pie_cuda_test_moe" --gtest_list_tests > "$OUT/prebuilt.log" 2>&1 &&
   "$BIN/pie_gpu_test_hf" --gtest_list_tests >> "$OUT/prebuilt.log" 2>&1 && "$BIN/pie_bench" --help >> "$OUT/prebuilt.log" 2>&1; then
  BENCH=$BIN/pie_bench TEST_MOE=$BIN/pie_cuda_test_moe TEST_HF=$BIN/pie_gpu_test_hf TRACER=$BIN/libpie_kernel_trace.so
  say "prebuilt binaries from $BIN"
else
  [ -n "$BIN" ] && { say "prebuilt binaries do not load here: building"; tail -3 "$OUT/prebuilt.log" | tee -a "$SUM"; }
  run configure 60 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DPIE_BUILD_BENCH=ON -DPIE_BUILD_CUDA_BENCH=ON -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_TESTS=ON
  run build 200 cmake --build "$BUILD" -j "$(nproc)" --target pie_bench pie_cuda_test_moe pie_gpu_test_hf pie_kernel_trace \
    || grep -E "error" "$OUT/build.log" | head -20 | tee -a "$SUM"
  BENCH=$BUILD/examples/pie/pie_bench TEST_MOE=$BUILD/tests/cuda/pie_cuda_test_moe
  TEST_HF=$BUILD/tests/gpu/pie_gpu_test_hf TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
fi

if has test; then
  run kernel_test_moe 60 "$TEST_MOE" --gtest_color=no
  grep -E "OK \]|FAILED  \]|Failure|Expected|Which is|error" "$OUT/kernel_test_moe.log" | head -24 | tee -a "$SUM"
fi
if has hf; then
  wait $HFREF
  grep -E "^\[hf noise|layers, margins" "$OUT/hf_reference.log" | tee -a "$SUM"
  PIE_GPU_HF_DIR=/tmp/pie_hfref_moe run gpu_test_hf_moe 60 "$TEST_HF" --gtest_color=no
  grep -E "^\[gpu vs|OK \]|FAILED  \]|Failure|Expected|Which is" "$OUT/gpu_test_hf_moe.log" | head -20 | tee -a "$SUM"
  # Layer-by-layer routing against transformers' (opt-in diagnostic of the open accuracy gap).
  PIE_GPU_MOE_ROUTING=1 PIE_GPU_HF_DIR=/tmp/pie_hfref_moe run moe_routing 60 "$TEST_HF" --gtest_color=no \
    --gtest_filter='*MoeRouting*'
  grep -E "^\[moe routing|OK \]|FAILED  \]|Failure|Expected|Which is" "$OUT/moe_routing.log" | head -24 | tee -a "$SUM"
fi

has bench && run pie_bench_moe 130 "$BENCH" "$MODEL" --load-format dummy --mode both \
  --input-len 128 --output-len 128 --num-prompts 1024 --max-num-seqs 1024 --num-iters 2 --num-iters-warmup 1 \
  --profile --output-json "$OUT/pie_bench_moe.json"
grep -E "^(ceilings|engine|latency|throughput|roofline|decode at|profile|pie: memory|pie: captured)" \
  "$OUT/pie_bench_moe.log" | tee -a "$SUM"

# The batch-1 decode graphs as the GPU replays them (PDL overlap, no event per op).
if has trace && [ -f "$TRACER" ]; then
  run trace_b1 60 env CUDA_INJECTION64_PATH="$(realpath "$TRACER")" PIE_KERNEL_TRACE=/tmp/trace_b1.csv \
    "$BENCH" "$MODEL" --load-format dummy --mode latency --input-len 128 --output-len 64 --num-prompts 1 \
    --max-num-seqs 1 --num-iters 1 --num-iters-warmup 0
  copy=$(python3 -c "import json;print(json.load(open('$OUT/pie_bench_moe.json'))['copy_tbps'])" 2>/dev/null || echo 4.2)
  python3 bench/nsys_decode_profile.py /tmp/trace_b1.csv --batch 1 --hidden 2048 --q-size 4096 --kv-size 512 \
    --vocab 151936 --layers 48 --experts 128 --moe-intermediate 768 --top-k 8 --copy-tbps "$copy" \
    > "$OUT/profile_b1.txt" 2>&1
  cat "$OUT/profile_b1.txt" | tee -a "$SUM"
  gzip -c /tmp/trace_b1.csv > "$OUT/trace_b1.csv.gz" 2>/dev/null
fi

has hfbench && run hf_compare 70 python3 bench/compare_hf.py "$MODEL" latency:128:128 --output-json "$OUT/hf.jsonl"
has hfbench && grep '^{' "$OUT/hf_compare.log" | tee -a "$SUM"
say "done"
