#!/usr/bin/env bash
# bench/device_route_wide.sh — the batch-1 MoE chain without its two small kernels (the routing
# inside the gate_up GEMV, PIE_MOE_ROUTE=gate_up; the un-permute in the down GEMV's last CTAs,
# PIE_MOE_UNPERMUTE=down) and the wide decode CTAs as the latency builds' default
# (PIE_DECODE_WIDE_CTAS=16). Part 1, tests: the MoE kernel test (the new kernels against the old
# ones bit for bit), the fusion tests (the engine's logits, bit for bit), and the engine's GPU
# tests with 16-warp CTAs. Part 2, batch-1 ITL of Qwen3-30B-A3B: routing kernel + un-permute kernel,
# each change alone and both, alternating, PIE_ROUNDS (2) times. PIE_PART=tests|hf|bench|all (all;
# hf: transformers' references and the GPU against them).
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_route_wide.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT RUN_TAIL=8
source "$(dirname "$0")/device_lib.sh"
device_start
T=$BUILD/tests
PART=${PIE_PART:-all}
if [ "$PART" = all ] || [ "$PART" = tests ]; then
  [ -x "$T/cuda/pie_cuda_test_moe" ] && { run test_moe 200 "$T/cuda/pie_cuda_test_moe" --gtest_color=no; gtest_summary test_moe; }
  for t in fused_ops runner; do
    [ -x "$T/gpu/pie_gpu_test_$t" ] || continue
    run "test_${t}_wide16" 300 env PIE_DECODE_WIDE_CTAS=16 "$T/gpu/pie_gpu_test_$t" --gtest_color=no
    gtest_summary "test_${t}_wide16"
    grep -E "^\[fused\].*(route|unpermute)" "$LOGDIR/test_${t}_wide16.log" | head -12 | tee -a "$SUM"
  done
fi
# transformers' references (the small Qwen3, the 8B widths, the small Qwen3-MoE), then the GPU
# against them with 16-warp CTAs and the two MoE changes on.
if { [ "$PART" = all ] || [ "$PART" = hf ]; } && [ -x "$T/gpu/pie_gpu_test_hf" ]; then
  run hf_reference 240 python3 tests/gpu/make_hf_reference.py --out /tmp/pie_hfref --config-8b "$MODEL8B/config.json" --moe
  grep -v Warning "$LOGDIR/hf_reference.log" | tail -4 | tee -a "$SUM"
  run test_hf_wide16 200 env PIE_GPU_HF_DIR=/tmp/pie_hfref PIE_DECODE_WIDE_CTAS=16 PIE_MOE_ROUTE=gate_up \
    PIE_MOE_UNPERMUTE=down "$T/gpu/pie_gpu_test_hf" --gtest_color=no
  gtest_summary test_hf_wide16
  grep -E "agreement" "$LOGDIR/test_hf_wide16.log" | head -12 | tee -a "$SUM"
fi
export ITL_UNSET="PIE_DECODE_WIDE_CTAS PIE_MOE_ROUTE PIE_MOE_UNPERMUTE"
r() { itl "$@"; }  # TAG MODEL ENV...
if { [ "$PART" = all ] || [ "$PART" = bench ]; } && [ -x "$BUILD/examples/pie/pie_bench" ]; then
  for i in $(seq 1 ${PIE_ROUNDS:-2}); do
    r "moe route=cta unpermute=kernel" $MOE PIE_MOE_ROUTE=cta PIE_MOE_UNPERMUTE=kernel
    r "moe route=gate_up unpermute=kernel" $MOE PIE_MOE_ROUTE=gate_up PIE_MOE_UNPERMUTE=kernel
    r "moe route=cta unpermute=down" $MOE PIE_MOE_ROUTE=cta PIE_MOE_UNPERMUTE=down
    r "moe route=gate_up unpermute=down" $MOE PIE_MOE_ROUTE=gate_up PIE_MOE_UNPERMUTE=down
  done
fi
say done
