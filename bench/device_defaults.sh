#!/usr/bin/env bash
# bench/device_defaults.sh — two default-path changes of 2026-12-05 checked in one GPU call, in
# order of what a default change must show first (each step under its own timeout, the whole
# within PIE_DEADLINE_S, default 300):
#   1. the Hopper prefill v3 as the engine's prefill: the kernel grid through the default dispatch,
#      then the engine (pie_gpu_test_runner: CPU reference, graphs, batch invariance, preemption);
#   2. 16-bit decode on the tensor-core kernel at groups 4 and 8 (PIE_DECODE_MMA_WIDE; ran
#      2026-12-05 as one-split launches only; since the seventh session the variable selects the
#      batch-invariant fixed split of bench/device_tcfix.sh, which measures that one): the decode
#      grid with PIE_DECODE_MMA_WIDE=all, and the engine's preemption checks at groups 4 and 8;
#   3. `pie bench` (dummy weights): Qwen3-8B 128 x (4096, 16) on v3 (issue 14's end-to-end prefill
#      target, 0.65 of the roofline on v2), Qwen3-30B-A3B 1024 x (128, 128) with
#      PIE_DECODE_MMA_WIDE=0 and =8, and Qwen3-8B 2048 x (128, 128) with =0 and =4 (same binary,
#      same call: each pair is its own peer).
# Binaries (built off the device for sm_90a): BINDIR/{pie_bench, pie_gpu_test_runner,
# pie_cuda_test_attention_decode, pie_cuda_test_attention_prefill}. Qwen3-8B's config in
# PIE_MODEL_DIR (default .device/Qwen3-8B).
#   OUT=dir bash bench/device_defaults.sh BINDIR
set -u
dir=${1:-.device/lead}
OUT=${OUT:-/tmp/pie_defaults_out}
MODEL8B=${PIE_MODEL_DIR:-.device/Qwen3-8B}
DEADLINE=${PIE_DEADLINE_S:-300}
mkdir -p "$OUT"
SUM="$OUT/summary.txt" LOGDIR=$OUT RUN_TAIL=10 RUN_MIN_LEFT=8
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
export LD_LIBRARY_PATH=$PWD/$dir:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gt() { grep -E "^\[(decode wide|batch invariance|gpu vs cpu|prefill v3)|OK \]|FAILED  \]|Failure|Which is|PASSED" \
         "$OUT/$1.log" | head -${2:-30} | tee -a "$SUM"; }
say "device: $(gpu_line)"

run prefill_default 60 "$dir/pie_cuda_test_attention_prefill" --gtest_color=no; gt prefill_default 6
run runner 120 "$dir/pie_gpu_test_runner" --gtest_color=no; gt runner 30
run decode_wide 60 env PIE_DECODE_MMA_WIDE=all "$dir/pie_cuda_test_attention_decode" --gtest_color=no
gt decode_wide 8
run runner_wide 80 env PIE_DECODE_MMA_WIDE=all "$dir/pie_gpu_test_runner" --gtest_color=no \
  --gtest_filter='GpuEngine.DefaultKernels*'
gt runner_wide 12

B=$dir/pie_bench
bench() {  # NAME LIMIT ENV... -- ARGS...
  local name=$1 limit=$2; shift 2
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  run "$name" "$limit" env "${envs[@]}" "$B" "$@" --load-format dummy --output-json "$OUT/$name.json"
  grep -E "^(ceilings|latency|throughput|roofline|decode at)" "$OUT/$name.log" | sed "s/^/[$name] /" | tee -a "$SUM"
}
bench prefill_8b_4096x16 60 PIE_DECODE_MMA_WIDE=0 -- "$MODEL8B" --mode throughput --input-len 4096 --output-len 16 \
  --num-prompts 128 --max-num-seqs 128
for w in 0 8; do
  bench "moe_1024_wide$w" 50 PIE_DECODE_MMA_WIDE=$w -- bench/models/Qwen3-30B-A3B --mode throughput --input-len 128 \
    --output-len 128 --num-prompts 1024 --max-num-seqs 1024
done
for w in 0 4; do
  bench "dense_2048_wide$w" 50 PIE_DECODE_MMA_WIDE=$w -- "$MODEL8B" --mode throughput --input-len 128 \
    --output-len 128 --num-prompts 2048 --max-num-seqs 512
done
say "done"
