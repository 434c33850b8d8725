#!/usr/bin/env bash
# bench/device_gemm_algos.sh — cuBLASLt's first heuristic algorithm against the best of its
# candidates on the engine's linear shapes (bf16 and fp8 block-scaled; issues 15 and 18), then
# the open issues' engine rows on the same card: Qwen3-30B-A3B 1024 × (128, 128) and batch 1
# (issue 20), Qwen3-8B batch 1 and 2048 × (128, 128) in bf16 and fp8 weights with the fp8 cache
# (issues 15, 18). PIE_DEADLINE_S (570) bounds the call; PIE_ROWS="moe b1 dense fp8" picks rows.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_gemm_algos.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT/logs RUN_TAIL=8
DEADLINE=${PIE_DEADLINE_S:-570}
mkdir -p $LOGDIR
source "$(dirname "$0")/device_lib.sh"
device_start
ALG=$BUILD/bench/cuda/pie_bench_cuda_gemm_algos
if [ -x "$ALG" ] && [ "${PIE_ALGOS:-1}" = 1 ]; then
  run algos 200 "$ALG" ${PIE_ALGOS_ARGS:-}
  grep -vE "^\s*$" "$LOGDIR/algos.log" | tee -a "$SUM" > /dev/null
fi
# The fp8 cache's decode attention: CTA shapes at short and long contexts, then Nsight Compute's
# view of the default kernel at b512 ctx140 (occupancy, warp stalls, memory throughput).
DEC8=$BUILD/bench/cuda/pie_bench_cuda_decode_fp8
if [ -x "$DEC8" ] && [ "${PIE_DEC8:-1}" = 1 ]; then
  run dec8 150 "$DEC8" --benchmark_color=false
  grep -E "copy|occupancy|decode fp8kv" "$LOGDIR/dec8.log" | grep -vE "^BM_" | tee -a "$SUM" > /dev/null
  if command -v ncu > /dev/null; then
    run ncu_dec8 120 ncu --clock-control none -k regex:decode_mma --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
      --section MemoryWorkloadAnalysis --section SchedulerStats "$DEC8" \
      '--benchmark_filter=BM_DecodeAttention<fp8_e4m3>/512/140/16'
    grep -vE "^==PROF==|^BM_|^-----|^Run on|^CPU|^Load|^\*\*\*" "$LOGDIR/ncu_dec8.log" | grep -E "[0-9]" | head -80 >> "$SUM"
  fi
fi
BENCH=$BUILD/examples/pie/pie_bench
FP8=/tmp/qwen3-8b-fp8; fp8_config $MODEL8B $FP8
rows=" ${PIE_ROWS:-moe b1 dense fp8} "
tput() {  # TAG MODEL PROMPTS SEQS [args...]
  local tag=$1 m=$2 n=$3 s=$4; shift 4
  run "tput_$tag" 150 "$BENCH" $m --load-format dummy --mode throughput --input-len 128 --output-len 128 \
    --num-prompts $n --max-num-seqs $s "$@"
  grep -E "^(throughput|roofline|decode at)" "$LOGDIR/tput_$tag.log" | sed "s/^/[$tag] /" | tee -a "$SUM"
}
[[ $rows == *" moe "* ]] && tput moe1024 $MOE 1024 1024
if [[ $rows == *" b1 "* ]]; then itl "moe b1" $MOE; itl "8B b1" $MODEL8B; fi
[[ $rows == *" dense "* ]] && tput bf16_2048 $MODEL8B 2048 512
[[ $rows == *" fp8 "* ]] && tput w8kv8_2048 $FP8 2048 512 --kv-cache-dtype fp8
say done
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
