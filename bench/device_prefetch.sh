#!/usr/bin/env bash
# bench/device_prefetch.sh — the L2 prefetch into a small step's idle stretch (PIE_L2_PREFETCH,
# engine/l2_prefetch.hpp; docs/gpu_engine.md) in one GPU call, within PIE_DEADLINE_S (default 240):
#   1. pie_gpu_test_fused_ops --gtest_filter='FusedOps.L2Prefetch*': logits bit-identical with the
#      prefetch on, the kernel on ranges with tails and inside a captured graph;
#   2. `pie bench` batch 1, 128/128, dummy weights, the switch off and on in the same call:
#      Qwen3-8B bf16 (budgets 16, 30 = the default, 45 MiB), Qwen3-8B fp8 (128×128 blocks, the
#      published FP8 config) and Qwen3-30B-A3B at the default budget;
#   3. when the CUPTI tracer is there, a kernel trace of bf16 batch 1 with the prefetch on
#      (bench/nsys_decode_profile.py), to see o_proj's GEMV time per layer against the off run.
# Usage, in the repository root of the GPU machine: OUT=DIR bash bench/device_prefetch.sh BINDIR
# (BINDIR: pie_bench and pie_gpu_test_fused_ops built for sm_90a, and optionally
# libpie_kernel_trace.so — or a CMake build directory such as device_final.sh's
# .device/build-final; PIE_MODEL_DIR: the Qwen3-8B config directory, default .device/Qwen3-8B).
set -u
dir=${1:-.device/prefetch}
OUT=${OUT:-/tmp/pie_prefetch_out}
MODEL=${PIE_MODEL_DIR:-.device/Qwen3-8B}
MOE=${PIE_MOE_DIR:-bench/models/Qwen3-30B-A3B}
DEADLINE=${PIE_DEADLINE_S:-240}
export OUT PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=$PWD/$dir:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT/logs"
SUM="$OUT/summary.txt" LOGDIR=$OUT/logs RUN_MIN_LEFT=12
. bench/device_lib.sh
BENCH=$dir/pie_bench; [ -x "$BENCH" ] || BENCH=$dir/examples/pie/pie_bench
TEST=$dir/pie_gpu_test_fused_ops; [ -x "$TEST" ] || TEST=$dir/tests/gpu/pie_gpu_test_fused_ops
TRACER=$dir/libpie_kernel_trace.so; [ -f "$TRACER" ] || TRACER=$dir/bench/cuda/libpie_kernel_trace.so

say "$(gpu_line)"
FP8_MODEL=$OUT/logs/Qwen3-8B-FP8
fp8_config "$MODEL" "$FP8_MODEL"

run test_prefetch 60 "$TEST" --gtest_color=no --gtest_filter='FusedOps.L2Prefetch*'
grep -E "OK \]|FAILED  \]|Failure|PASSED|\[fused\]" "$LOGDIR/test_prefetch.log" | head -20 | tee -a "$SUM"

lat() {  # NAME MODEL_DIR [env...]
  local name=$1 m=$2; shift 2
  run "lat_$name" 45 env "$@" "$BENCH" "$m" --load-format dummy --mode latency --input-len 128 \
    --output-len 128 --num-iters 3 --num-iters-warmup 1 --max-num-seqs 8 --output-json "$LOGDIR/lat_$name.json"
  grep -E "^latency" "$LOGDIR/lat_$name.log" | sed "s/^/$name /" | tee -a "$SUM"
}
# Off and on alternate, so that a drift of the card shows as such rather than as a gain.
lat bf16_off "$MODEL"
lat bf16_on30 "$MODEL" PIE_L2_PREFETCH=1
lat bf16_on16 "$MODEL" PIE_L2_PREFETCH=1 PIE_L2_PREFETCH_MB=16
lat bf16_on45 "$MODEL" PIE_L2_PREFETCH=1 PIE_L2_PREFETCH_MB=45
lat bf16_off2 "$MODEL"
lat fp8_off "$FP8_MODEL"
lat fp8_on30 "$FP8_MODEL" PIE_L2_PREFETCH=1
lat moe_off "$MOE"
lat moe_on30 "$MOE" PIE_L2_PREFETCH=1
if [ -f "$TRACER" ]; then
  for sw in 0 1; do
    trace_profile "trace_$sw" 45 1 "trace prefetch=$sw" --copy-tbps 4.2 -- env PIE_L2_PREFETCH=$sw "$BENCH" "$MODEL" \
      --load-format dummy --mode latency --input-len 128 --output-len 128 --num-iters 1 --num-iters-warmup 1 --max-num-seqs 8
  done
fi
say "done"
# The device returns few files: the logs in one archive beside the summary.
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
