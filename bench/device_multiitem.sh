#!/usr/bin/env bash
# bench/device_multiitem.sh — issue 14, multi-item decode CTAs (docs/kernels.md "Multi-item decode
# CTAs"), on one GPU in one call from a bundle built with -DPIE_DECODE_MULTI_ITEM=ON holding
# tests/cuda/pie_cuda_test_attention_decode, bench/cuda/pie_bench_cuda_decode and
# examples/pie/pie_bench:
#   1. the decode test's multi-item cases (bit for bit against the one-item kernel, and against
#      the CPU reference), then racecheck and memcheck on the helper-chosen thin grid;
#   2. BM_DecodeMultiItem: one-item and multi-item CTAs in one process (% of the D2D copy);
#   3. pie bench Qwen3-8B 2048 x (128, 128) and batch 1 with PIE_DECODE_MULTI_ITEM=0, 1, 0.
#   PIE_PREBUILT=.device/bundle.txz OUT=dir PIE_DEADLINE_S=400 bash bench/device_multiitem.sh
set -u
OUT=${OUT:-/tmp/pie_multiitem_out}
DEADLINE=${PIE_DEADLINE_S:-400}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-8B}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=8 RUN_MIN_LEFT=10
source "$(dirname "$0")/device_lib.sh"
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
say "device: $(gpu_line)"
use_prebuilt || { say "needs PIE_PREBUILT"; exit 1; }
T=$BUILD/tests/cuda/pie_cuda_test_attention_decode
run test_mi 150 "$T" --gtest_color=no --gtest_filter='*MultiItem*'
grep -E "FAILED  \]|Failure|PASSED|tests ran" "$LOGS/test_mi.log" | head -20 | tee -a "$SUM"
grep -c "OK \]" "$LOGS/test_mi.log" | sed 's/^/multi-item tests OK: /' | tee -a "$SUM"
run bench 120 "$BUILD/bench/cuda/pie_bench_cuda_decode" --benchmark_filter=BM_DecodeMultiItem
grep -vE "^\s*$|^-+$|Running|Run on|CPU Caches|L[123] |Load Average|^\*\*\*" "$LOGS/bench.log" | tee -a "$SUM"
tp() {  # NAME VALUE
  run "tp_$1" 60 env PIE_DECODE_MULTI_ITEM=$2 "$BUILD/examples/pie/pie_bench" "$MODEL" --load-format dummy --mode both \
    --input-len 128 --output-len 128 --num-prompts 2048 --max-num-seqs 512 --num-iters 3 --num-iters-warmup 1
  grep -E "^(latency|throughput|roofline|decode at)" "$LOGS/tp_$1.log" | sed "s/^/[$1] /" | tee -a "$SUM"
}
tp off0 0
tp on1 1
tp off2 0
F='*MultiItem*Block16_HeadDim128_Group4_BF16*:*MultiItemMore*'
if command -v compute-sanitizer > /dev/null; then
  for tool in racecheck memcheck; do
    run "san_$tool" 60 compute-sanitizer --tool $tool "$T" --gtest_color=no --gtest_filter="$F"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$LOGS/san_$tool.log" | head -4 | sed "s/^/[$tool] /" | tee -a "$SUM"
  done
fi
say "done"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
