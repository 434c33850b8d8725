#!/usr/bin/env bash
# bench/device_fp8_cutlass.sh — the block-scaled fp8 GEMM on CUTLASS's SM90 blockwise kernel
# (issue 18; fp8_gemm_cutlass.cuh) in one call: the kernel against cuBLASLt on the decode shapes
# (pie_bench_cuda_fp8_cutlass, correctness first), the fp8 GPU tests (the new CUTLASS-vs-cuBLASLt-vs-
# CPU test, the GEMM tests and the engine's block-scaled checks, now on CUTLASS), then pie bench
# Qwen3-8B fp8 (128×128 blocks) with the fp8 KV cache, 2048 × (128, 128) and 256 × (512, 256),
# PIE_FP8_GEMM=cublaslt against cutlass (alternating), and bf16 of the same workloads; "small":
# the decode batches the CUTLASS path takes (64 and 128 sequences, 128 × (128, 128) twice each).
# PIE_STEPS (default "bench test t2048 t256") picks the parts, e.g. PIE_STEPS="test small".
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_fp8_cutlass.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT/logs RUN_TAIL=8
DEADLINE=${PIE_DEADLINE_S:-570}
mkdir -p $LOGDIR
source "$(dirname "$0")/device_lib.sh"
device_start
steps=" ${PIE_STEPS:-bench test t2048 t256} "
B=$BUILD/bench/cuda/pie_bench_cuda_fp8_cutlass
if [ -x "$B" ] && [[ $steps == *" bench "* ]]; then
  run fp8c 120 "$B"
  grep -vE "^\s*$" "$LOGDIR/fp8c.log" | tee -a "$SUM" > /dev/null
fi
T=$BUILD/tests/gpu/pie_gpu_test_fp8
if [ -x "$T" ] && [[ $steps == *" test "* ]]; then
  run test_fp8 200 "$T" --gtest_color=no \
    "--gtest_filter=${PIE_FP8_FILTER:-Fp8Kernels.*:Fp8Engine.PublishedCheckpoint*:Fp8Engine.DummyFp8*:Fp8Engine.Fp8WeightsWith*:Fp8Engine.CodesOnly*}"
  gtest_summary test_fp8 30
  grep -E "^\[fp8 (cutlass|gemm vs cpu)\]" "$LOGDIR/test_fp8.log" | tee -a "$SUM"
fi
BENCH=$BUILD/examples/pie/pie_bench
FP8=/tmp/qwen3-8b-fp8; fp8_config $MODEL8B $FP8
tput() {  # TAG GEMM MODEL PROMPTS IN OUT SEQS [args...]
  local tag=$1 g=$2 m=$3 n=$4 i=$5 o=$6 s=$7; shift 7
  run "tput_$tag" 120 env PIE_FP8_GEMM=$g "$BENCH" $m --load-format dummy --mode throughput --input-len $i \
    --output-len $o --num-prompts $n --max-num-seqs $s "$@"
  grep -E "^(throughput|roofline|decode at)" "$LOGDIR/tput_$tag.log" | sed "s/^/[$tag] /" | tee -a "$SUM"
}
if [[ $steps == *" t2048 "* ]]; then
  for r in 1 2; do
    tput "w8kv8_2048_lt$r" cublaslt $FP8 2048 128 128 512 --kv-cache-dtype fp8
    tput "w8kv8_2048_cut$r" cutlass $FP8 2048 128 128 512 --kv-cache-dtype fp8
  done
  tput bf16_2048 cublaslt $MODEL8B 2048 128 128 512
fi
if [[ $steps == *" t256 "* ]]; then
  tput w8kv8_256_lt cublaslt $FP8 256 512 256 256 --kv-cache-dtype fp8
  tput w8kv8_256_cut cutlass $FP8 256 512 256 256 --kv-cache-dtype fp8
  tput bf16_256 cublaslt $MODEL8B 256 512 256 256
fi
if [[ $steps == *" small "* ]]; then
  for seqs in 64 128; do
    for r in 1 2; do
      tput "w8kv8_b${seqs}_lt$r" cublaslt $FP8 $((2 * seqs)) 128 128 $seqs --kv-cache-dtype fp8
      tput "w8kv8_b${seqs}_cut$r" cutlass $FP8 $((2 * seqs)) 128 128 $seqs --kv-cache-dtype fp8
    done
  done
fi
say done
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
