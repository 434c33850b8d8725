#!/usr/bin/env bash
# bench/device_fp8_step.sh — the fp8 decode step's two candidates of 2026-12-06 (issue 18, issue 14),
# A/B in one GPU call within PIE_DEADLINE_S (default 560):
#   PIE_FP8_FLAT_GROUPS=1  SwiGLU's and the standalone quantization's 1×128-group codes from the flat
#                          kernel (ops/cuda/fp8_group_quant.cuh) instead of a CTA per row;
#   PIE_DECODE_PERSISTENT=1 the fp8 cache's decode attention as a persistent grid whose ring runs
#                          across (sequence, KV head) pairs (decode_mma_persistent_kernel).
# Why: the 22:17 UTC trace of the fp8 step at batch 512 (bench/device_step_profile.sh, H100) had
# SwiGLU at 21.9 µs a layer for 31.7 MB (the bf16 SwiGLU, a flat kernel: 12.8 µs for 37.7 MB) and
# decode attention at 89 µs a layer, 25% of the step.
# Steps, most wanted first: the bit-identity tests of both (Fp8Kernels.*, and the decode binary's
# DecodeAttentionPersistent.*); `pie bench` Qwen3-8B fp8 weights + fp8 cache 2048 × (128, 128) in
# the order base, flat, flat+persistent, base, flat+persistent, with bf16 once; the engine's fp8
# tests under both switches; a kernel trace of the step at batch 512 with both; the producers'
# and the decode kernel's benches; 256 × (512, 256) base and flat+persistent.
# Usage, in the repository root of the GPU machine:
#   PIE_PREBUILT=.device/bundle.txz OUT=dir bash bench/device_fp8_step.sh
set -u
OUT=${OUT:-/tmp/pie_fp8_step_out}
export SUM=$OUT/summary.txt LOGDIR=$OUT/logs RUN_TAIL=8
DEADLINE=${PIE_DEADLINE_S:-560}
mkdir -p "$LOGDIR"
source "$(dirname "$0")/device_lib.sh"
device_start
steps=" ${PIE_STEPS:-test bench t2048 t256 engine trace} "
T=$BUILD/tests/gpu/pie_gpu_test_fp8
D=$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge  # or the persistent tests alone (built by hand with
[ -x "$D" ] || D=$BUILD/tests/cuda/pie_cuda_test_decode_persistent  # -DPIE_DECODE_TEST_PERSISTENT_ONLY)
if [[ $steps == *" test "* ]]; then
  [ -x "$T" ] && { run test_fp8 150 "$T" --gtest_color=no --gtest_filter='Fp8Kernels.*'; gtest_summary test_fp8 20; }
  [ -x "$D" ] && { run test_decode 150 "$D" --gtest_color=no; gtest_summary test_decode 20; }
fi
BENCH=$BUILD/examples/pie/pie_bench
FP8=/tmp/qwen3-8b-fp8; fp8_config "$MODEL8B" "$FP8"
tput() {  # TAG FLAT PERSISTENT MODEL PROMPTS IN OUT SEQS [args...]
  local tag=$1 f=$2 ps=$3 m=$4 n=$5 i=$6 o=$7 s=$8; shift 8
  run "tput_$tag" 100 env PIE_FP8_FLAT_GROUPS=$f PIE_DECODE_PERSISTENT=$ps "$BENCH" "$m" --load-format dummy \
    --mode throughput --input-len "$i" --output-len "$o" --num-prompts "$n" --max-num-seqs "$s" "$@"
  grep -E "^(throughput|roofline|decode at)" "$LOGDIR/tput_$tag.log" | sed "s/^/[$tag] /" | tee -a "$SUM"
}
if [[ $steps == *" t2048 "* ]]; then
  tput base1 0 0 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput flat1 1 0 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput both1 1 1 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput base2 0 0 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput both2 1 1 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput bf16 0 0 "$MODEL8B" 2048 128 128 512
fi
if [[ $steps == *" engine "* ]] && [ -x "$T" ]; then
  run engine_fp8 120 env PIE_FP8_FLAT_GROUPS=1 PIE_DECODE_PERSISTENT=1 "$T" --gtest_color=no --gtest_filter='Fp8Engine.*'
  gtest_summary engine_fp8 20
fi
TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
if [[ $steps == *" trace "* ]] && [ -f "$TRACER" ]; then
  copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
  trace_profile trace_both 80 512 "both b512" --copy-tbps $copy --weight-bytes 1 -- env PIE_FP8_FLAT_GROUPS=1 \
    PIE_DECODE_PERSISTENT=1 "$BENCH" "$FP8" --load-format dummy --mode throughput --input-len 128 --output-len 64 \
    --num-prompts 512 --max-num-seqs 512 --kv-cache-dtype fp8
fi
if [[ $steps == *" bench "* ]]; then
  [ -x "$T" ] && run prod 90 "$T" --gtest_color=no --gtest_also_run_disabled_tests \
    --gtest_filter='Fp8Bench.DISABLED_ProducersAgainstTheCopyBandwidth' &&
    grep -E "^\[fp8 producers\]" "$LOGDIR/prod.log" | tee -a "$SUM" > /dev/null
  DB=$BUILD/bench/cuda/pie_bench_cuda_decode_fp8
  [ -x "$DB" ] && run dec 120 "$DB" --benchmark_color=false --benchmark_filter='BM_DecodePersistent' &&
    grep -E "copy|persistent|one-item" "$LOGDIR/dec.log" | tee -a "$SUM" > /dev/null
fi
if [[ $steps == *" t256 "* ]]; then
  tput base256 0 0 "$FP8" 256 512 256 256 --kv-cache-dtype fp8
  tput both256 1 1 "$FP8" 256 512 256 256 --kv-cache-dtype fp8
fi
say done
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
