#!/usr/bin/env bash
# bench/device_late_dependents.sh — one call: the RoPE and engine tests against their CPU
# references (pie_cuda_test_elementwise, pie_gpu_test_runner), batch-1 ITL of Qwen3-30B-A3B and
# Qwen3-8B with decode attention's dependents launched at its start (default) or after its stages
# (PIE_DECODE_LATE_DEPENDENTS=1), alternating, twice, and the engine's decode CTA timeline
# (pie_bench_timeline) of each model.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_late_dependents.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT RUN_TAIL=8
source "$(dirname "$0")/device_lib.sh"
device_start
for t in tests/cuda/pie_cuda_test_elementwise tests/gpu/pie_gpu_test_runner; do
  [ -x "$BUILD/$t" ] && { run "$(basename $t)" 200 "$BUILD/$t" --gtest_color=no; gtest_summary "$(basename $t)"; }
done
L="--load-format dummy --input-len 128 --output-len 128 --mode latency --num-iters 5 --num-iters-warmup 1 --max-num-seqs 8"
r() {  # TAG MODEL ENV...
  local tag=$1 m=$2; shift 2
  env -u PIE_DECODE_LATE_DEPENDENTS "$@" timeout 150 "$BUILD/examples/pie/pie_bench" "$m" $L 2>&1 |
    grep -E "^latency \(" | sed "s/^/[$tag] /" | tee -a "$SUM"
}
for i in 1 2; do
  for m in $MOE $MODEL8B; do
    r "$(basename $m) late0" $m PIE_DECODE_LATE_DEPENDENTS=0
    r "$(basename $m) late1" $m PIE_DECODE_LATE_DEPENDENTS=1
  done
done
decode_timelines $MOE $MODEL8B
say done
