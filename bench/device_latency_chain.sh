#!/usr/bin/env bash
# bench/device_latency_chain.sh — batch-1 decode attention's latency, one call: the decode kernel
# tests (pie_cuda_test_attention_decode_merge), the fusion tests (the MoE norm in the router, group
# parts), where a decode CTA spends its time alone (pie_bench_cuda_decode_timeline) and inside the
# engine's step (pie_bench_timeline: the last layer's launch of the last decode step), then batch-1
# ITL of Qwen3-30B-A3B and Qwen3-8B with this build's pie_bench against the bundle's earlier
# builds bin/pie_bench_old and bin/pie_bench_mid (the same switches: group parts and the MoE norm
# on), alternating, twice.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_latency_chain.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT RUN_TAIL=8
source "$(dirname "$0")/device_lib.sh"
device_start
if [ -x "$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge" ]; then
  run test_merge 200 "$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge" --gtest_color=no; gtest_summary test_merge
fi
if [ -x "$BUILD/tests/gpu/pie_gpu_test_fused_ops" ]; then
  run test_fused_ops 200 "$BUILD/tests/gpu/pie_gpu_test_fused_ops" --gtest_color=no \
    "--gtest_filter=${PIE_FUSED_FILTER:-FusedOps.MoeNorm*:FusedOps.GroupParts*}"
  grep -E "^\[fused\]" "$LOGDIR/test_fused_ops.log" | tee -a "$SUM"; gtest_summary test_fused_ops 12
fi
if [ -x "$BUILD/bench/cuda/pie_bench_cuda_decode_timeline" ]; then
  run timeline 120 "$BUILD/bench/cuda/pie_bench_cuda_decode_timeline"; cat "$LOGDIR/timeline.log" >> "$SUM"
fi
L="--load-format dummy --input-len 128 --output-len 128 --mode latency --num-iters 5 --num-iters-warmup 1 --max-num-seqs 8"
r() {  # TAG BINARY MODEL ENV...
  local tag=$1 bin=$2 m=$3; shift 3
  env -u PIE_FUSED_MOE_NORM -u PIE_DECODE_SPLIT_GROUP -u PIE_DECODE_SPLIT_GROUP4 "$@" timeout 150 "$bin" "$m" $L 2>&1 |
    grep -E "^latency" | sed "s/^/[$tag] /" | tee -a "$SUM"
}
# bin/pie_bench_old, bin/pie_bench_mid (when the bundle has them) and this build's, the same switches
# (group parts, the MoE norm), alternating.
P="PIE_DECODE_SPLIT_GROUP=1 PIE_DECODE_SPLIT_GROUP4=1 PIE_FUSED_MOE_NORM=1"
for i in 1 2; do
  for m in $MOE $MODEL8B; do
    for v in old mid new; do
      bin=$BUILD/bin/pie_bench_$v
      [ $v = new ] && bin=$BUILD/examples/pie/pie_bench
      [ -x "$bin" ] && r "$(basename $m)_$v" "$bin" $m $P
    done
  done
done
if [ -x "$BUILD/examples/pie/pie_bench_timeline" ]; then
  for m in $MOE $MODEL8B; do
    env PIE_FUSED_MOE_NORM=1 timeout 150 "$BUILD/examples/pie/pie_bench_timeline" $m --load-format dummy --input-len 128 \
      --output-len 128 --mode latency --num-iters 2 --num-iters-warmup 1 --max-num-seqs 8 2>&1 |
      grep -E "^latency" | sed "s|^|[timeline $(basename $m)] |" | tee -a "$SUM"
  done
fi
say done
