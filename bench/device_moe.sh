#!/usr/bin/env bash
# bench/device_moe.sh — issue 20 (Qwen3-MoE on the GPU) in one call: build, the MoE kernel tests
# (ops/cuda/moe.cuh against the CPU op), the GPU engine against HF transformers bf16 on a small
# Qwen3MoeForCausalLM that transformers builds here, then `pie bench` at the Qwen3-30B-A3B shape
# with dummy weights (batch-1 latency 128/128 and 1024 × (128, 128), one engine, with its
# roofline and a per-op profile), and HF transformers on the same workloads if time is left.
#
# Usage, in the repository root of the GPU machine:  OUT=/some/dir bash bench/device_moe.sh
# PIE_DEADLINE_S bounds the whole run (a stage that would start too late is skipped, the one
# running is cut). The last lines printed are the summary.
set -u
OUT=${OUT:-/tmp/pie_device_out}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-30B-A3B}
BUILD=${PIE_BUILD_DIR:-/tmp/build-moe}
DEADLINE=${PIE_DEADLINE_S:-100000}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
say() { echo "== $(date -u +%H:%M:%S) +${SECONDS}s $*" | tee -a "$SUM"; }
run() {  # run NAME LIMIT_S CMD...: output to $OUT/NAME.log, exit status to the summary
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS left=$((DEADLINE - SECONDS - 3))
  if [ "$left" -lt 15 ]; then say "$name: skipped (deadline)"; return 124; fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  say "$name: rc=$rc in $((SECONDS - t0)) s"
  [ "$rc" -ne 0 ] && tail -n 12 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$SUM"
  return $rc
}
export PYTHONUNBUFFERED=1
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
say "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader 2>&1 | head -1)"

run configure 60 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DPIE_BUILD_BENCH=OFF -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_TESTS=ON
# transformers builds its reference on the GPU while the CPUs compile (it needs no pie binary).
run hf_reference 120 python3 tests/gpu/make_hf_reference.py --out /tmp/pie_hfref_moe --only-moe --tries 2 &
HFREF=$!
run build 200 cmake --build "$BUILD" -j "$(nproc)" --target pie_bench pie_cuda_test_moe pie_gpu_test_hf \
  || grep -E "error" "$OUT/build.log" | head -20 | tee -a "$SUM"
wait $HFREF
grep -v Warning "$OUT/hf_reference.log" | tail -2 | tee -a "$SUM"

run kernel_test_moe 60 "$BUILD/tests/cuda/pie_cuda_test_moe" --gtest_color=no
grep -E "OK \]|FAILED  \]|Failure|Expected|Which is|error" "$OUT/kernel_test_moe.log" | head -24 | tee -a "$SUM"

PIE_GPU_HF_DIR=/tmp/pie_hfref_moe run gpu_test_hf_moe 60 "$BUILD/tests/gpu/pie_gpu_test_hf" --gtest_color=no
grep -E "^\[gpu vs|OK \]|FAILED  \]|Failure|Expected|Which is" "$OUT/gpu_test_hf_moe.log" | head -20 | tee -a "$SUM"

run pie_bench_moe 150 "$BUILD/examples/pie/pie_bench" "$MODEL" --load-format dummy --mode both \
  --input-len 128 --output-len 128 --num-prompts 1024 --max-num-seqs 1024 --num-iters 3 --num-iters-warmup 1 \
  --profile --output-json "$OUT/pie_bench_moe.json"
grep -E "^(ceilings|engine|latency|throughput|roofline|decode at|profile|pie: memory|pie: captured)" \
  "$OUT/pie_bench_moe.log" | tee -a "$SUM"

run hf_compare 120 python3 bench/compare_hf.py "$MODEL" latency:128:128 throughput:1024:128:128:1024 \
  --output-json "$OUT/hf.jsonl"
grep '^{' "$OUT/hf_compare.log" | tee -a "$SUM"
say "done"
