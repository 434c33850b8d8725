#!/usr/bin/env bash
# bench/device_l2_ahead.sh — o_proj's GEMV moving the rest of its weights into L2 before its wait
# (PIE_GEMV_L2_AHEAD=1), while the batch-1 decode attention, which lets it launch only after its
# K/V stages, leaves DRAM idle. One call: the GEMV kernel test and the engine's fused-ops test
# (bit for bit), batch-1 ITL of Qwen3-30B-A3B and Qwen3-8B off and on, alternating, PIE_ROUNDS (3)
# times, then a kernel trace of each model with the switch off and on (o_proj's and the
# attention's charged time).
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_l2_ahead.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT RUN_TAIL=8
source "$(dirname "$0")/device_lib.sh"
device_start
T=$BUILD/tests
if [ -x "$T/cuda/pie_cuda_test_gemm" ]; then
  run test_gemm 120 "$T/cuda/pie_cuda_test_gemm" --gtest_color=no --gtest_filter='Gemv.*'
  gtest_summary test_gemm
fi
if [ -x "$T/gpu/pie_gpu_test_fused_ops" ]; then
  run test_fused_ops 300 "$T/gpu/pie_gpu_test_fused_ops" --gtest_color=no "--gtest_filter=${PIE_FUSED_FILTER:-*L2Ahead*}"
  gtest_summary test_fused_ops
fi
export ITL_UNSET="PIE_GEMV_L2_AHEAD"
if [ -x "$BUILD/examples/pie/pie_bench" ]; then
  for i in $(seq 1 ${PIE_ROUNDS:-3}); do
    for m in $MOE $MODEL8B; do
      for sw in 0 1; do itl "$(basename $m) l2_ahead=$sw" $m PIE_GEMV_L2_AHEAD=$sw; done
    done
  done
fi
TRACER=""
for t in "$BUILD/libpie_kernel_trace.so" "$BUILD/bench/cuda/libpie_kernel_trace.so"; do [ -f "$t" ] && TRACER=$t; done
copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
if [ -n "$TRACER" ] && [ "${PIE_TRACE:-1}" = 1 ]; then
  for sw in 0 1; do
    trace_profile "moe_$sw" 90 1 "moe l2_ahead=$sw" --copy-tbps $copy --hidden 2048 --q-size 4096 --kv-size 512 \
      --layers 48 --experts 128 --moe-intermediate 768 --top-k 8 --vocab 151936 -- \
      env PIE_GEMV_L2_AHEAD=$sw "$BUILD/examples/pie/pie_bench" $MOE --load-format dummy --input-len 128 \
      --output-len 128 --mode latency --num-iters 2 --num-iters-warmup 1 --max-num-seqs 8
    trace_profile "8b_$sw" 90 1 "8b l2_ahead=$sw" --copy-tbps $copy -- \
      env PIE_GEMV_L2_AHEAD=$sw "$BUILD/examples/pie/pie_bench" $MODEL8B --load-format dummy --input-len 128 \
      --output-len 128 --mode latency --num-iters 2 --num-iters-warmup 1 --max-num-seqs 8
  done
fi
say done
