#!/usr/bin/env bash
# bench/device_load8.sh — load8 as one vector load (common.cuh; LDG.128 for bf16, LDG.64 for fp8,
# instead of four 4-byte / 2-byte loads), A/B in one call: the bundle's pie_bench and
# pie_gpu_test_fp8 (without the change) against load8/examples/pie/pie_bench and
# load8/tests/gpu/pie_gpu_test_fp8 (with it) in the same bundle. The same values by construction;
# the fp8 kernel tests (bit-identity of the producers) and the bf16 engine against the CPU
# reference run on the changed binary. Then Qwen3-8B bf16 --mode both (batch 1 and 2048 x (128,
# 128)) base / load8 / base, and fp8 per channel 2048 x (128, 128) base / load8.
#   PIE_PREBUILT=.device/bundle.txz OUT=dir PIE_DEADLINE_S=200 bash bench/device_load8.sh
set -u
OUT=${OUT:-/tmp/pie_load8_out}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-8B}
DEADLINE=${PIE_DEADLINE_S:-200}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=8 RUN_MIN_LEFT=10
source "$(dirname "$0")/device_lib.sh"
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
say "device: $(gpu_line)"
use_prebuilt || { say "needs PIE_PREBUILT"; exit 1; }
P=$BUILD/examples/pie/pie_bench L=$BUILD/load8/examples/pie/pie_bench
run test_l8 90 "$BUILD/load8/tests/gpu/pie_gpu_test_fp8" --gtest_color=no \
  --gtest_filter='Fp8Kernels.*:Fp8Engine.Bf16EngineAgainstTheSameCpuReferencesIsTheFloor:Fp8Engine.PerChannel*'
grep -E "OK \]|FAILED  \]|Failure|PASSED|^\[fp8 gpu" "$LOGS/test_l8.log" | head -12 | tee -a "$SUM"
both() {  # NAME BIN
  run "bf16_$1" 60 "$2" "$MODEL" --load-format dummy --mode both --input-len 128 --output-len 128 \
    --num-prompts 2048 --max-num-seqs 512 --num-iters 3 --num-iters-warmup 1
  grep -E "^(latency|throughput|roofline|decode at)" "$LOGS/bf16_$1.log" | sed "s/^/[bf16 $1] /" | tee -a "$SUM"
}
fp8() {  # NAME BIN
  run "fp8_$1" 60 "$2" "$MODEL" --load-format dummy --quantization fp8 --mode throughput --input-len 128 \
    --output-len 128 --num-prompts 2048 --max-num-seqs 512
  grep -E "^(throughput|roofline|decode at)" "$LOGS/fp8_$1.log" | sed "s/^/[fp8 $1] /" | tee -a "$SUM"
}
both base "$P"
both load8 "$L"
both base2 "$P"
fp8 base "$P"
fp8 load8 "$L"
say "done"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
