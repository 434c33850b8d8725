#!/usr/bin/env bash
# bench/device_fp8quant.sh — issue 18: the fp8 activation quantization from registers in one pass
# (PIE_FP8_QUANT_REGS=1: fp8_quant.cuh's fp8_quant_regs, fp8_producers.cuh's *_regs kernels)
# against the row kernels that write the activation and read it back twice, on one GPU in one
# call within PIE_DEADLINE_S (default 300). Needs a bench/device_bundle.sh bundle (PIE_PREBUILT).
#
# Why: the H200 trace of 2026-12-04 charged the fused producers at batch 512 with 830 µs (73
# RMSNorm + quantization launches, 11.4 µs each) + 905 µs (36 SwiGLU + quantization, 25 µs) + 360 µs
# (36 standalone quantizations of o_proj's input, 10 µs) of a 13.4 ms step, where their bytes
# take about 3.5, 7.5 and 1.5 µs at the copy rate: each CTA walks its row in ~30 dependent L2
# round trips. Prediction (H200): the three fall to ~5, ~9 and ~2.5 µs: −1.3 to −1.5 ms a batch-512
# step, fp8 2048 × (128, 128) +9 to +11% (21,895 → ~24,000 tok/s with 128×128 blocks).
#
# Steps: pie_gpu_test_fp8's kernel tests (both paths bit for bit against the separate kernels
# and the CPU, at Qwen3-8B's widths and a partial last group); then `pie bench` fp8 (128×128
# blocks: bench/models/Qwen3-8B's config with Qwen3-8B-FP8's quantization_config; and per channel:
# --quantization fp8) 2048 × (128, 128), PIE_FP8_QUANT_REGS=0 then 1 then 0 again (the noise); the
# engine's fp8 tests with the switch on; CUPTI traces at batch 512 of both if time is left.
#   tar -xzf .device/bundle.tgz -C /tmp && PIE_PREBUILT=/tmp/pie_bundle OUT=dir bash bench/device_fp8quant.sh
set -u
OUT=${OUT:-/tmp/pie_fp8quant_out}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-8B}
DEADLINE=${PIE_DEADLINE_S:-300}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=10 RUN_MIN_LEFT=10
source "$(dirname "$0")/device_lib.sh"  # say, run, use_prebuilt, fp8_config, trace_profile, gpu_line
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
unset PIE_FP8_QUANT_REGS
say "device: $(gpu_line)"
use_prebuilt || { say "needs PIE_PREBUILT (bench/device_bundle.sh)"; exit 1; }
BIN=$BUILD/examples/pie/pie_bench TEST=$BUILD/tests/gpu/pie_gpu_test_fp8
FP8_MODEL=/tmp/pie_fp8quant_model
fp8_config "$MODEL" "$FP8_MODEL"

run test_kernels 120 "$TEST" --gtest_color=no --gtest_filter='Fp8Kernels.*'
grep -E "OK \]|FAILED  \]|Failure|Expected|Which is|regs " "$LOGS/test_kernels.log" | head -24 | tee -a "$SUM"

tput() {  # NAME REGS MODEL [ARGS...]
  local name=$1 regs=$2 model=$3; shift 3
  run "$name" 100 env PIE_FP8_QUANT_REGS="$regs" "$BIN" "$model" --load-format dummy "$@" --mode throughput \
    --input-len 128 --output-len 128 --num-prompts 2048 --max-num-seqs 512 --output-json "$OUT/$name.json"
  grep -E "^(throughput|roofline|decode at)" "$LOGS/$name.log" | sed "s/^/[$name] /" | tee -a "$SUM"
}
tput block_rows 0 "$FP8_MODEL"
tput block_regs 1 "$FP8_MODEL"
tput channel_rows 0 "$MODEL" --quantization fp8
tput channel_regs 1 "$MODEL" --quantization fp8
tput block_rows2 0 "$FP8_MODEL"

run test_engine_regs 120 env PIE_FP8_QUANT_REGS=1 "$TEST" --gtest_color=no --gtest_filter='Fp8Engine.*'
grep -E "OK \]|FAILED  \]|Failure|PASSED|^\[fp8" "$LOGS/test_engine_regs.log" | head -16 | tee -a "$SUM"

TRACER=""
for t in "$BUILD/bench/cuda/libpie_kernel_trace.so" "$BUILD/libpie_kernel_trace.so"; do [ -f "$t" ] && TRACER=$t; done
copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
if [ -n "$TRACER" ]; then
  for regs in 0 1; do
    trace_profile "trace512_$regs" 60 512 "trace b512 regs=$regs" --copy-tbps $copy -- \
      env PIE_FP8_QUANT_REGS=$regs "$BIN" "$FP8_MODEL" --load-format dummy --mode throughput \
      --input-len 128 --output-len 64 --num-prompts 512 --max-num-seqs 512
  done
fi
say "done"
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
