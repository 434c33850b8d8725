#!/usr/bin/env bash
# bench/device_down_early.sh — the batch-1 MoE down GEMV (with the un-permute in its last CTAs)
# reading a routing kernel's record and loading its first weights before its wait on gate_up
# (PIE_MOE_DOWN_EARLY), and letting the next layer's qkv GEMV launch at its start
# (PIE_MOE_DOWN_DEPENDENTS=start). One call: the MoE kernel test and the fusion tests (bit for bit),
# batch-1 ITL of Qwen3-30B-A3B for each setting alternating PIE_ROUNDS (3) times, then the decode
# attention timeline of the engine's last decode launch (pie_bench_timeline) for both models.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_down_early.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT RUN_TAIL=8
source "$(dirname "$0")/device_lib.sh"
device_start
T=$BUILD/tests
[ -x "$T/cuda/pie_cuda_test_moe" ] &&
  { run test_moe 200 "$T/cuda/pie_cuda_test_moe" --gtest_color=no --gtest_filter=-MoeDummyWeights.*; gtest_summary test_moe; }
if [ -x "$T/gpu/pie_gpu_test_fused_ops" ]; then
  run test_fused_ops 300 "$T/gpu/pie_gpu_test_fused_ops" --gtest_color=no
  gtest_summary test_fused_ops
  grep -E "^\[fused\].*(route|unpermute)" "$LOGDIR/test_fused_ops.log" | head -12 | tee -a "$SUM"
fi
export ITL_UNSET="PIE_MOE_UNPERMUTE PIE_MOE_DOWN_EARLY PIE_MOE_DOWN_DEPENDENTS"
r() { itl "$@"; }  # TAG MODEL ENV...
if [ -x "$BUILD/examples/pie/pie_bench" ]; then
  for i in $(seq 1 ${PIE_ROUNDS:-3}); do
    r "moe unpermute kernel" $MOE PIE_MOE_UNPERMUTE=kernel
    r "moe unpermute down, late" $MOE PIE_MOE_UNPERMUTE=down PIE_MOE_DOWN_EARLY=0
    r "moe unpermute down, early" $MOE PIE_MOE_UNPERMUTE=down PIE_MOE_DOWN_EARLY=1
    r "moe down early + dependents at start" $MOE PIE_MOE_UNPERMUTE=down PIE_MOE_DOWN_EARLY=1 PIE_MOE_DOWN_DEPENDENTS=start
  done
fi
decode_timelines $MOE $MODEL8B
say done
