#!/usr/bin/env bash
# bench/device_wide_ctas.sh — decode attention's wide CTAs at batch 1 (8 or 16 warps: a 64-token
# split is one stage; PIE_DECODE_WIDE_CTAS), one call: their kernel tests (and group parts' and the
# RoPE inside's), then batch-1 ITL of Qwen3-30B-A3B and Qwen3-8B with 4 (the default), 8 and 16
# warps, alternating, PIE_WIDE_ROUNDS times (2).
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_wide_ctas.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT RUN_TAIL=8
source "$(dirname "$0")/device_lib.sh"
device_start
if [ -x "$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge" ]; then
  run test_merge 120 "$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge" --gtest_color=no \
    "--gtest_filter=${PIE_MERGE_FILTER:-DecodeAttentionWideCtas.*:DecodeAttentionGroupParts.*:*Rope*}"
  gtest_summary test_merge
fi
export ITL_UNSET="PIE_DECODE_WIDE_CTAS"
r() { itl "$@"; }  # TAG MODEL ENV... (KEY=VALUE, or nothing: the build's defaults)
for i in $(seq 1 ${PIE_WIDE_ROUNDS:-2}); do
  for m in $MOE $MODEL8B; do
    for w in 0 8 16; do r "$(basename $m) wide$w" $m PIE_DECODE_WIDE_CTAS=$w; done
  done
done
say done
