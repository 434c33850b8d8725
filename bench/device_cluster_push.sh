#!/usr/bin/env bash
# bench/device_cluster_push.sh — the pushing cluster merge (PIE_DECODE_CLUSTER_PUSH=1: every CTA
# writes its partials into split 0's shared memory, split 0 merges alone). One call: the decode
# kernel test with the push on for every cluster-merged launch of its harness (bit for bit against
# the merge kernel), the engine's tests with it (when in the bundle), then batch-1 ITL of
# Qwen3-30B-A3B and Qwen3-8B with the push off and on, alternating, PIE_ROUNDS (3) times.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_cluster_push.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT RUN_TAIL=8
source "$(dirname "$0")/device_lib.sh"
device_start
T=$BUILD/tests
if [ -x "$T/cuda/pie_cuda_test_attention_decode_merge" ]; then
  run test_merge_push 300 env PIE_DECODE_CLUSTER_PUSH=1 "$T/cuda/pie_cuda_test_attention_decode_merge" --gtest_color=no \
    "--gtest_filter=${PIE_MERGE_FILTER:-*}"
  gtest_summary test_merge_push
fi
for t in fused_ops runner; do
  [ -x "$T/gpu/pie_gpu_test_$t" ] || continue
  run "test_${t}_push" 300 env PIE_DECODE_CLUSTER_PUSH=1 "$T/gpu/pie_gpu_test_$t" --gtest_color=no
  gtest_summary "test_${t}_push"
done
export ITL_UNSET="PIE_DECODE_CLUSTER_PUSH"
r() { itl "$@"; }  # TAG MODEL ENV...
if [ -x "$BUILD/examples/pie/pie_bench" ]; then
  for i in $(seq 1 ${PIE_ROUNDS:-3}); do
    for m in $MOE $MODEL8B; do
      for push in 0 1; do r "$(basename $m) push=$push" $m PIE_DECODE_CLUSTER_PUSH=$push; done
    done
  done
fi
say done
