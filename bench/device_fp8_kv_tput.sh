#!/usr/bin/env bash
# bench/device_fp8_kv_tput.sh — the large-batch fp8 step (issues 14, 18): 2048 × (128, 128) at
# --max-num-seqs 512, Qwen3-8B shape, dummy weights, same call: bf16 weights with the bf16 and the
# fp8 KV cache; fp8 weights (128×128 blocks) with the bf16 and the fp8 cache, each with the fp8
# producers writing everything and only the codes (PIE_FP8_CODES_ONLY); then a kernel trace of the
# batch-512 step of the main ones. First the fp8 tests when the bundle has them.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_fp8_kv_tput.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT/logs RUN_TAIL=8
mkdir -p $LOGDIR
source "$(dirname "$0")/device_lib.sh"
device_start
BENCH=$BUILD/examples/pie/pie_bench
FP8=/tmp/qwen3-8b-fp8; fp8_config $MODEL8B $FP8
T=$BUILD/tests/gpu/pie_gpu_test_fp8
if [ -x "$T" ]; then
  run test_fp8 300 "$T" --gtest_color=no "--gtest_filter=${PIE_FP8_FILTER:-Fp8Kernels.FusedProducers*:Fp8Engine.CodesOnly*:Fp8Engine.Fp8WeightsWith*}"
  gtest_summary test_fp8
  grep -E "^\[fp8 weights\]" "$LOGDIR/test_fp8.log" | tee -a "$SUM"
fi
TRACER=""
for t in "$BUILD/libpie_kernel_trace.so" "$BUILD/bench/cuda/libpie_kernel_trace.so"; do [ -f "$t" ] && TRACER=$t; done
copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
# CONFIG: TAG CODES_ONLY MODEL [pie bench args...]
CONFIGS=("bf16 0 $MODEL8B" "bf16_kv8 0 $MODEL8B --kv-cache-dtype fp8" "w8 0 $FP8" "w8_codes 1 $FP8"
         "w8_kv8 0 $FP8 --kv-cache-dtype fp8" "w8_kv8_codes 1 $FP8 --kv-cache-dtype fp8")
for cfg in "${CONFIGS[@]}" "${CONFIGS[0]}"; do
  set -- $cfg; tag=$1 codes=$2 m=$3; shift 3
  case " ${PIE_TPUT_TAGS:-$tag} " in *" $tag "*) ;; *) continue ;; esac
  run "tput_$tag" 90 env PIE_FP8_CODES_ONLY=$codes "$BENCH" $m --load-format dummy --mode throughput --input-len 128 \
    --output-len 128 --num-prompts 2048 --max-num-seqs 512 "$@"
  grep -E "^(throughput|roofline|decode at)" "$LOGDIR/tput_$tag.log" | sed "s/^/[$tag] /" | tee -a "$SUM"
done
if [ -n "$TRACER" ] && [ "${PIE_TRACE:-1}" = 1 ]; then
  for cfg in "${CONFIGS[@]}"; do
    set -- $cfg; tag=$1 codes=$2 m=$3; shift 3
    case " ${PIE_TRACE_TAGS:-bf16 w8 w8_codes w8_kv8_codes} " in *" $tag "*) ;; *) continue ;; esac
    trace_profile "t512_$tag" 90 512 "b512 $tag" --copy-tbps $copy -- env PIE_FP8_CODES_ONLY=$codes "$BENCH" $m \
      --load-format dummy --mode throughput --input-len 128 --output-len 64 --num-prompts 512 --max-num-seqs 512 "$@"
  done
fi
say done
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
