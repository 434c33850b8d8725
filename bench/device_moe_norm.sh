#!/usr/bin/env bash
# bench/device_moe_norm.sh — the MoE router with the layer's norm in its GEMV (PIE_FUSED_MOE_NORM)
# and the decode CTA timeline, one call: the fusion tests (bit-identity on the MoE fixtures, group
# parts), where a batch-1 decode CTA spends its time (pie_bench_cuda_decode_timeline), then
# batch-1 ITL of Qwen3-30B-A3B with the switch off and on (alternating, twice) and of Qwen3-8B at
# the build's defaults, with a CUPTI trace of the MoE step with the switch on.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_moe_norm.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT RUN_TAIL=8
source "$(dirname "$0")/device_lib.sh"
device_start
if [ -x "$BUILD/tests/gpu/pie_gpu_test_fused_ops" ]; then
  run test_fused_ops 200 "$BUILD/tests/gpu/pie_gpu_test_fused_ops" --gtest_color=no \
    "--gtest_filter=${PIE_FUSED_FILTER:-FusedOps.MoeNorm*:FusedOps.GroupParts*}"
  grep -E "^\[fused\]" "$LOGDIR/test_fused_ops.log" | tee -a "$SUM"; gtest_summary test_fused_ops 12
fi
if [ -x "$BUILD/bench/cuda/pie_bench_cuda_decode_timeline" ]; then
  run timeline 120 "$BUILD/bench/cuda/pie_bench_cuda_decode_timeline"
  cat "$LOGDIR/timeline.log" | tee -a "$SUM"
fi
export ITL_UNSET="PIE_FUSED_MOE_NORM"
r() { itl "$@"; }  # TAG MODEL ENV... (KEY=VALUE, or nothing: the build's defaults)
for i in 1 2; do
  r moe_norm0 $MOE PIE_FUSED_MOE_NORM=0
  r moe_norm1 $MOE PIE_FUSED_MOE_NORM=1
done
r 8b_default $MODEL8B
TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
if [ -f "$TRACER" ] && [ "${PIE_MOE_NORM_TRACE:-1}" = 1 ]; then
  trace_profile moe_norm1 120 1 moe_norm1 --hidden 2048 --q-size 4096 --kv-size 512 --layers 48 --experts 128 \
    --moe-intermediate 768 --top-k 8 --vocab 151936 -- \
    env PIE_FUSED_MOE_NORM=1 "$BUILD/examples/pie/pie_bench" $MOE --load-format dummy --input-len 128 \
    --output-len 128 --mode latency --num-iters 2 --num-iters-warmup 1 --max-num-seqs 8
fi
say done
