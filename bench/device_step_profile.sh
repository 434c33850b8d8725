#!/usr/bin/env bash
# bench/device_step_profile.sh — where the fp8 and bf16 decode steps of Qwen3-8B go now, with the
# issue rows of issues 18 and 20 in the same call (one GPU call within PIE_DEADLINE_S, default 540).
#
# Why: the last per-op profile of the fp8 step (2026-12-04, H200) put attention at 3.9 of 13.4 ms
# at batch 512 and the fp8 producers (RMSNorm, SwiGLU with quantization) at 1.7 ms for ~0.5 ms of
# bytes; the kernels have changed since (v2 producers, the fp8 cache's tensor-core decode). The
# next fp8 optimisation is picked from a current trace, not that one.
# Steps: issue rows (Qwen3-30B-A3B 1024 × (128, 128) and batch 1; Qwen3-8B bf16 and fp8 weights
# with the fp8 cache at 2048 × (128, 128)); then kernel traces (CUPTI tracer $TRACER, replayed
# graphs) of 512 × (128, 64) at batch 512 and 64 × (128, 64) at batch 64, fp8 and bf16,
# profiled by bench/nsys_decode_profile.py.
# Usage, in the repository root of the GPU machine:
#   PIE_PREBUILT=.device/bundle.txz TRACER=.device/tracer/libpie_kernel_trace.so OUT=dir \
#     bash bench/device_step_profile.sh
set -u
OUT=${OUT:-/tmp/pie_step_profile_out}
export SUM=$OUT/summary.txt LOGDIR=$OUT/logs RUN_TAIL=8
DEADLINE=${PIE_DEADLINE_S:-540}
mkdir -p "$LOGDIR"
source "$(dirname "$0")/device_lib.sh"
device_start
BENCH=$BUILD/examples/pie/pie_bench
TRACER=${TRACER:-$BUILD/bench/cuda/libpie_kernel_trace.so}
copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
FP8=/tmp/qwen3-8b-fp8; fp8_config "$MODEL8B" "$FP8"
rows=" ${PIE_ROWS:-moe b1 dense fp8 trace} "
tput() {  # TAG MODEL PROMPTS SEQS [args...]
  local tag=$1 m=$2 n=$3 s=$4; shift 4
  run "tput_$tag" 150 "$BENCH" "$m" --load-format dummy --mode throughput --input-len 128 --output-len 128 \
    --num-prompts "$n" --max-num-seqs "$s" "$@"
  grep -E "^(throughput|roofline|decode at)" "$LOGDIR/tput_$tag.log" | sed "s/^/[$tag] /" | tee -a "$SUM"
}
trace() {  # TAG BATCH WEIGHT_BYTES MODEL [args...]
  local tag=$1 b=$2 wb=$3 m=$4; shift 4
  [ -f "$TRACER" ] || { say "no tracer"; return; }
  trace_profile "trace_$tag" 90 "$b" "$tag" --copy-tbps $copy --weight-bytes "$wb" -- "$BENCH" "$m" --load-format dummy \
    --mode throughput --input-len 128 --output-len 64 --num-prompts "$b" --max-num-seqs "$b" "$@"
}
[[ $rows == *" moe "* ]] && tput moe1024 "$MOE" 1024 1024
if [[ $rows == *" b1 "* ]]; then itl "moe b1" "$MOE"; itl "8B b1" "$MODEL8B"; fi
[[ $rows == *" dense "* ]] && tput bf16_2048 "$MODEL8B" 2048 512
[[ $rows == *" fp8 "* ]] && tput w8kv8_2048 "$FP8" 2048 512 --kv-cache-dtype fp8
if [[ $rows == *" trace "* ]]; then
  trace w8kv8_b512 512 1 "$FP8" --kv-cache-dtype fp8
  trace bf16_b512 512 2 "$MODEL8B"
  trace w8kv8_b64 64 1 "$FP8" --kv-cache-dtype fp8
fi
say done
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
