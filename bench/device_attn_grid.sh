#!/usr/bin/env bash
# bench/device_attn_grid.sh — decode attention on the wide grids of issue 20 (Qwen3-30B-A3B,
# GQA group 8, 1024 × (128, 128): 266 µs a layer in the engine's step, ~28–36% of copy, while the
# kernel bench once measured the same kernel at ~83% of copy at b512 ctx140). One call:
#   1. BM_DecodeGrid: the CUDA-core kernel (cost model's plan) and the tensor-core kernel (fixed
#      512-token split) at b1024 ctx{192, 140}, b512 ctx140 (group 8) and b512 ctx192 (group 4),
#      pages packed (spread 1) or scattered over an 8× pool (spread 8, as in the engine); then
#      BM_DecodeGridShape: the tensor-core kernel's warps × stages, and the pages moved alone;
#   2. pie bench, Qwen3-30B-A3B 1024 × (128, 128): the default (group 8 on the tensor-core
#      kernel on wide grids) against PIE_DECODE_MMA_WIDE=0 (the CUDA-core kernel) and 8 (the
#      tensor-core kernel on every grid); Qwen3-8B 2048 × (128, 128) default against 4; batch-1
#      ITL of Qwen3-30B-A3B default against 0 (narrow grids: the same plans);
#   3. a kernel trace of the batch-1024 step, default and 0 (the decode kernels' names and grids);
#   4. the decode kernel tests of the default's choice, and the runner's preemption checks.
# PIE_DEADLINE_S (570) bounds the whole call.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_attn_grid.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT/logs RUN_TAIL=8
DEADLINE=${PIE_DEADLINE_S:-570}
mkdir -p $LOGDIR
source "$(dirname "$0")/device_lib.sh"
device_start
DEC=$BUILD/bench/cuda/pie_bench_cuda_decode
[ -x "$DEC" ] || DEC=$BUILD/bench/cuda/pie_bench_cuda_decode_small  # its -DPIE_DECODE_BENCH_FIXED_ONLY target
BENCH=$BUILD/examples/pie/pie_bench
if [ -x "$DEC" ] && [ "${PIE_GRID:-1}" = 1 ]; then
  run grid 200 "$DEC" --benchmark_filter='BM_DecodeGrid' --benchmark_color=false
  grep -E "copy|grid (cc|tc)|shape (tc|loadonly)" "$LOGDIR/grid.log" | grep -vE "^BM_" | tee -a "$SUM"
fi
# CONFIG: TAG MMA_WIDE MODEL NUM_PROMPTS MAX_NUM_SEQS (MMA_WIDE "-": unset, the build's default)
CONFIGS=("moe_def - $MOE 1024 1024" "moe_cc 0 $MOE 1024 1024" "moe_g8all 8 $MOE 1024 1024"
         "dense_def - $MODEL8B 2048 512" "dense_g4 4 $MODEL8B 2048 512")
mma_env() { if [ "$1" = - ]; then echo "-u PIE_DECODE_MMA_WIDE"; else echo "PIE_DECODE_MMA_WIDE=$1"; fi; }
for cfg in "${CONFIGS[@]}"; do
  [ -x "$BENCH" ] || break
  set -- $cfg
  case " ${PIE_TPUT_TAGS:-$1} " in *" $1 "*) ;; *) continue ;; esac
  run "tput_$1" 120 env $(mma_env $2) "$BENCH" $3 --load-format dummy --mode throughput --input-len 128 \
    --output-len 128 --num-prompts $4 --max-num-seqs $5
  grep -E "^(throughput|roofline|decode at)" "$LOGDIR/tput_$1.log" | sed "s/^/[$1] /" | tee -a "$SUM"
done
T=$BUILD/tests
DT=$T/cuda/pie_cuda_test_attention_decode
[ -x "$DT" ] || DT=$T/cuda/pie_cuda_test_attention_decode_merge  # the merge tests and DecodeAttentionWide
if [ -x "$DT" ]; then
  run test_decode 150 "$DT" --gtest_color=no '--gtest_filter=DecodeAttentionWide.*:*FixedSplit*'
  gtest_summary test_decode
  grep -E "^\[decode wide" "$LOGDIR/test_decode.log" | tee -a "$SUM"
fi
if [ -x "$T/cuda/pie_cuda_test_moe" ]; then
  run test_moe 150 "$T/cuda/pie_cuda_test_moe" --gtest_color=no
  gtest_summary test_moe
fi
if [ -x "$T/gpu/pie_gpu_test_runner" ]; then
  run test_runner 200 "$T/gpu/pie_gpu_test_runner" --gtest_color=no '--gtest_filter=*Preemption*'
  gtest_summary test_runner
  grep -E "^\[batch invariance\]|same" "$LOGDIR/test_runner.log" | head -12 | tee -a "$SUM"
fi
# Batch 1: the same plans with and without the wide-grid default (narrow grids keep the cost model).
export ITL_UNSET="PIE_DECODE_MMA_WIDE"
for i in 1 2; do
  [ -x "$BENCH" ] && [ "${PIE_ITL:-1}" = 1 ] || break
  for sw in def 0; do
    if [ $sw = def ]; then itl "moe b1 mma=default" $MOE; else itl "moe b1 mma=0" $MOE PIE_DECODE_MMA_WIDE=0; fi
  done
done
TRACER=""
for t in "$BUILD/libpie_kernel_trace.so" "$BUILD/bench/cuda/libpie_kernel_trace.so"; do [ -f "$t" ] && TRACER=$t; done
copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
if [ -n "$TRACER" ] && [ -x "$BENCH" ] && [ "${PIE_TRACE:-1}" = 1 ]; then
  for cfg in "def -" "cc 0"; do
    set -- $cfg
    case " ${PIE_TRACE_TAGS:-def cc} " in *" $1 "*) ;; *) continue ;; esac
    trace_profile "t1024_$1" 100 1024 "b1024 $1" --copy-tbps $copy --hidden 2048 --q-size 4096 --kv-size 512 \
      --layers 48 --experts 128 --moe-intermediate 768 --top-k 8 --vocab 151936 -- \
      env $(mma_env $2) "$BENCH" $MOE --load-format dummy --mode throughput --input-len 128 --output-len 128 \
      --num-prompts 1024 --max-num-seqs 1024
    # The decode kernels the step ran, with their grids (GrdX) and counts.
    zcat "$LOGDIR/t1024_$1.csv.gz" | awk -F, 'NR > 1 && $4 ~ /decode/ {print $3 " " substr($4, 1, 120)}' | sort | uniq -c |
      sort -rn | head -4 | sed "s/^/[kernels $1] /" | tee -a "$SUM"
  done
fi
say done
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
