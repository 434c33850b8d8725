#!/usr/bin/env bash
# bench/device_decode_merge.sh — issue 14, the split merge fused into the decode kernels, in one GPU
# call of at most ~3 minutes (PIE_DEADLINE_S, default 175):
#   1. test_decode: every decode test, with the fused-merge grid (bit-identical to the merge kernel,
#      the CPU reference, counters back at zero after eager launches and graph replays);
#   2. bench_decode's BM_DecodeMerge (merge kernel vs fused merge in the same process, % of the
#      copy bandwidth measured first, tokens_per_split sweep) and the engine's-path rows;
#   3. compute-sanitizer memcheck and racecheck on a thinned fused grid;
#   4. if a pie_bench binary is at $PIE_PIE_BENCH (e.g. device_final.sh's build), batch-1 latency
#      at the Qwen3-8B shape with PIE_DECODE_FUSED_MERGE=0 and =1.
# Binaries are built on another x86-64 machine with CUDA 13 (sm_90a) and carried:
#   here:  bash bench/cuda/decode_ab.sh build .device/merge none   (test_decode, bench_decode, libbenchmark)
#   there: OUT=$OUT bash bench/device_decode_merge.sh .device/merge
set -u
dir=$1
OUT=${OUT:-/tmp/pie_merge_out}
DEADLINE=${PIE_DEADLINE_S:-175}
MODEL=${PIE_MODEL_DIR:-.device/Qwen3-8B}
mkdir -p "$OUT"
SUM="$OUT/summary.txt" LOGDIR=$OUT RUN_TAIL=12 RUN_MIN_LEFT=8
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=$PWD/$dir:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
say "device: $(gpu_line)"

run tests 60 "$dir/test_decode" --gtest_color=no
grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|differs|non-zero" "$OUT/tests.log" | head -30 | tee -a "$SUM"

run bench 50 "$dir/bench_decode" --benchmark_filter='BM_DecodeMerge|BM_DecodeAttention<bf16>'
grep -E "^device|^ceilings" "$OUT/bench.log" | tee -a "$SUM"
awk '/^kernel /{p=1} p' "$OUT/bench.log" | tee -a "$SUM"

# memcheck (10-50x slower): three fused cases, the CUDA-core bf16 and tensor-core fp8 kernels at
# block 16 x head dim 128 x group 4 and the 16-bit tensor-core kernel at block 8 x head dim 64 x
# group 8 (its 2-warp CTA walks 16 virtual rows); racecheck (shared memory) on two.
run memcheck 40 compute-sanitizer --tool memcheck --error-exitcode 9 "$dir/test_decode" --gtest_color=no \
  --gtest_filter='*FusedMerge*Block16_HeadDim128_Group4_CudaCoreBF16:*FusedMerge*Block16_HeadDim128_Group4_TensorCoreFp8:*FusedMerge*Block8_HeadDim64_Group8_TensorCoreF16'
grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log" | tail -4 | tee -a "$SUM"
run racecheck 25 compute-sanitizer --tool racecheck --error-exitcode 9 "$dir/test_decode" --gtest_color=no \
  --gtest_filter='*FusedMerge*Block16_HeadDim128_Group4_CudaCoreBF16:*FusedMerge*Block16_HeadDim128_Group4_TensorCoreFp8'
grep -E "RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED" "$OUT/racecheck.log" | tail -4 | tee -a "$SUM"

PB=${PIE_PIE_BENCH:-}
if [ -n "$PB" ] && [ -x "$PB" ] && [ -f "$MODEL/config.json" ]; then
  for f in 0 1; do
    PIE_DECODE_FUSED_MERGE=$f run "e2e_fused$f" 25 "$PB" "$MODEL" --load-format dummy --mode latency \
      --input-len 1024 --output-len 64 --num-iters 3 --num-iters-warmup 1
    grep -E "^(latency|roofline|decode at)" "$OUT/e2e_fused$f.log" | sed "s/^/fused=$f /" | tee -a "$SUM"
  done
else
  say "e2e: skipped (PIE_PIE_BENCH unset or no model config)"
fi
say "done"
