#!/usr/bin/env bash
# bench/device_fp8producers.sh — issue 18: the fused fp8 producers at large batch with their loads
# first (PIE_FP8_PRODUCERS=v2, the default since this ran: fp8_producers_v2.cuh) against the register kernels they
# replace, on one GPU in one call within PIE_DEADLINE_S (default 300). Needs a
# bench/device_bundle.sh bundle (PIE_PREBUILT).
#
# Why: the H100 trace of a batch-512 step (fp8 2048 × (128, 128), per channel, 14.24 ms) charged
# SwiGLU + quantization 31.2 µs a layer, RMSNorm + quantization 8.8 µs a call and the standalone
# quantization 6.4, against ~15, ~6.3 and ~2.1 µs of bytes at the copy rate: their loads are
# 4-byte and serial per vector (docs/kernels.md, "fp8 producers at large batch"). Prediction
# (H100): 31.2 → ~19 µs, 8.8 → ~7.3 µs, 6.4 → ~3.5 µs, the step 14.24 → ~13.6 ms.
#
# Steps: pie_gpu_test_fp8's kernel tests (every path bit for bit against the separate kernels and
# the CPU, at M up to 512); the kernel bench (the three ops, M = 64 / 512 / 2048, % of copy); `pie bench` per
# channel 2048 × (128, 128) with PIE_FP8_PRODUCERS v1, v2, v1 again (the noise); the
# engine's fp8 tests with v2; CUPTI traces at batch 512 of unset and v2 if time is left.
#   tar -xzf .device/bundle.tgz -C /tmp && PIE_PREBUILT=/tmp/pie_bundle OUT=dir bash bench/device_fp8producers.sh
set -u
OUT=${OUT:-/tmp/pie_fp8producers_out}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-8B}
DEADLINE=${PIE_DEADLINE_S:-300}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=10 RUN_MIN_LEFT=10
source "$(dirname "$0")/device_lib.sh"  # say, run, use_prebuilt, trace_profile, gpu_line
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
unset PIE_FP8_PRODUCERS
say "device: $(gpu_line)"
use_prebuilt || { say "needs PIE_PREBUILT (bench/device_bundle.sh)"; exit 1; }
BIN=$BUILD/examples/pie/pie_bench TEST=$BUILD/tests/gpu/pie_gpu_test_fp8

run test_kernels 150 "$TEST" --gtest_color=no --gtest_filter='Fp8Kernels.*'
grep -E "OK \]|FAILED  \]|Failure|Expected|Which is|regs " "$LOGS/test_kernels.log" | head -24 | tee -a "$SUM"
run bench_kernels 90 "$TEST" --gtest_color=no --gtest_also_run_disabled_tests \
  --gtest_filter='Fp8Bench.DISABLED_ProducersAgainstTheCopyBandwidth'
grep -E "^\[fp8 producers\]" "$LOGS/bench_kernels.log" | tee -a "$SUM"

tput() {  # NAME PRODUCERS [ARGS...]
  local name=$1 p=$2; shift 2
  run "$name" 100 env PIE_FP8_PRODUCERS="$p" "$BIN" "$MODEL" --load-format dummy --quantization fp8 "$@" \
    --mode throughput --input-len 128 --output-len 128 --num-prompts 2048 --max-num-seqs 512 \
    --output-json "$OUT/$name.json"
  grep -E "^(throughput|roofline|decode at)" "$LOGS/$name.log" | sed "s/^/[$name] /" | tee -a "$SUM"
}
tput channel_v1 v1
tput channel_v2 v2
tput channel_v1_again v1

run test_engine_v2 120 env PIE_FP8_PRODUCERS=v2 "$TEST" --gtest_color=no --gtest_filter='Fp8Engine.*:-Fp8Engine.GemvVariantsGiveBitIdenticalLogits'
grep -E "OK \]|FAILED  \]|Failure|PASSED|^\[fp8" "$LOGS/test_engine_v2.log" | head -16 | tee -a "$SUM"

TRACER=""
for t in "$BUILD/bench/cuda/libpie_kernel_trace.so" "$BUILD/libpie_kernel_trace.so"; do [ -f "$t" ] && TRACER=$t; done
copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
if [ -n "$TRACER" ]; then
  for p in v1 v2; do
    trace_profile "trace512_$p" 60 512 "trace b512 producers=$p" --copy-tbps $copy -- \
      env PIE_FP8_PRODUCERS=$p "$BIN" "$MODEL" --load-format dummy --quantization fp8 --mode throughput \
      --input-len 128 --output-len 64 --num-prompts 512 --max-num-seqs 512
  done
fi
say "done"
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
