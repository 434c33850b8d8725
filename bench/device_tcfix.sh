#!/usr/bin/env bash
# bench/device_tcfix.sh — issues 14/15/20: the batch-invariant split for the tensor-core 16-bit
# decode kernel (splits of 512 tokens from position 0 whatever the batch; a CTA runs several of its
# sequence's splits in turn when the cost model wants fewer CTAs; a 6-stage ring on narrow grids),
# opt-in as PIE_DECODE_MMA_WIDE=all until this has run. One GPU call, < 4 min (PIE_DEADLINE_S,
# default 238), each step under its own limit:
#   1. pie_cuda_test_attention_decode: every decode test (the fixed-split CPU-reference grid and
#      the alone-vs-batched bit-identity grid included), then the environment test with `all`;
#   2. pie_gpu_test_runner: every engine test (default kernels), then the preemption bounds at
#      groups 4 and 8 with `all` (>= 62/64 recompute, 64/64 swap);
#   3. pie_bench_cuda_decode BM_DecodeFixedSplit: the cost model's plan on the CUDA-core kernel (the
#      default) against the fixed 512-token split on tensor cores (plain and fused merge), groups 4
#      and 8 (Qwen3-8B and Qwen3-30B-A3B heads), and 256/1024-token splits;
#   4. pie bench (dummy weights), default vs `all`, same binary: Qwen3-8B batch 1 128/128, Qwen3-8B
#      2048 x (128, 128) --max-num-seqs 512, Qwen3-30B-A3B 1024 x (128, 128) --max-num-seqs 1024;
#   5. if time is left, compute-sanitizer memcheck and racecheck on fixed-split cases.
# BINDIR holds pie_cuda_test_attention_decode, pie_gpu_test_runner, pie_bench and
# pie_bench_cuda_decode (built for sm_90a; BM_DecodeFixedSplit alone with
# -DPIE_DECODE_BENCH_FIXED_ONLY keeps it small), each plain or .gz. Qwen3-8B's config in
# PIE_MODEL_DIR (default .device/Qwen3-8B). Outputs: $OUT/summary.txt and $OUT/logs.tar.gz.
#   OUT=dir bash bench/device_tcfix.sh BINDIR   (.device/tcfix/run.sh is a copy: OUT=dir bash .device/tcfix/run.sh)
set -u
D=${1:-.device/tcfix}
OUT=${OUT:-/tmp/tcfix_out}
M8=${PIE_MODEL_DIR:-.device/Qwen3-8B}
mkdir -p "$OUT"
B=/tmp/tcfix_bin
L=/tmp/tcfix_logs
mkdir -p $B $L
SUM="$OUT/summary.txt"
LOGDIR=$L RUN_TAIL=8 RUN_MIN_LEFT=10 DEADLINE=${PIE_DEADLINE_S:-238}
source bench/device_lib.sh  # say, run NAME LIMIT_S CMD...
export LD_LIBRARY_PATH=$PWD/$D:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
finish() { tar -czf "$OUT/logs.tar.gz" -C $L . 2>/dev/null; say "done"; }
trap finish EXIT
say "device: $(gpu_line)"
for f in pie_cuda_test_attention_decode pie_gpu_test_runner pie_bench pie_bench_cuda_decode; do
  if [ -f "$D/$f.gz" ]; then gunzip -c "$D/$f.gz" > "$B/$f"; else cp "$D/$f" "$B/$f"; fi
  chmod +x "$B/$f"
done
ON="PIE_DECODE_MMA_WIDE=all"

# 1. kernels
run decode 110 env -u PIE_DECODE_MMA_WIDE $B/pie_cuda_test_attention_decode --gtest_color=no
grep -E "^\[  (PASSED|FAILED) |tests? ran|^\[decode (wide|fixed split invariance)|FAILED  \]" "$L/decode.log" | head -40 | tee -a "$SUM"
run decode_on 20 env $ON $B/pie_cuda_test_attention_decode --gtest_color=no --gtest_filter='DecodeAttentionWide.*'
grep -E "^\[  (PASSED|FAILED) |^\[decode wide|FAILED  \]" "$L/decode_on.log" | sed 's/^/[all] /' | tee -a "$SUM"

# 2. engine: everything on the default kernels, then the preemption bounds at groups 4 and 8 with `all`
run runner 60 env -u PIE_DECODE_MMA_WIDE $B/pie_gpu_test_runner --gtest_color=no
grep -E "^\[batch invariance|OK \]|FAILED  \]|Failure|Which is|Expected|PASSED" "$L/runner.log" | head -30 | tee -a "$SUM"
run runner_on 40 env $ON $B/pie_gpu_test_runner --gtest_color=no --gtest_filter='GpuEngine.DefaultKernels*'
grep -E "^\[batch invariance|OK \]|FAILED  \]|Failure|Which is|Expected|PASSED" "$L/runner_on.log" | sed 's/^/[all] /' | head -30 | tee -a "$SUM"

# 3. kernel bench, old vs new in one binary
run bench_decode 45 $B/pie_bench_cuda_decode --benchmark_filter='BM_DecodeFixedSplit'
grep -E "^(device|ceilings)" "$L/bench_decode.log" | tee -a "$SUM"
grep -E "^BM_DecodeFixedSplit" "$L/bench_decode.log" | tee -a "$SUM"
awk '/^kernel /{p=1} p' "$L/bench_decode.log" | tee -a "$SUM"

# 4. pie bench, default vs `all`, same binary
pb() {  # NAME LIMIT MODE(def|all) MODEL ARGS...
  local name=$1 limit=$2 mode=$3 model=$4; shift 4
  if [ "$mode" = all ]; then
    run "$name" "$limit" env $ON $B/pie_bench "$model" --load-format dummy "$@" --output-json "$L/$name.json"
  else
    run "$name" "$limit" env -u PIE_DECODE_MMA_WIDE $B/pie_bench "$model" --load-format dummy "$@" --output-json "$L/$name.json"
  fi
  grep -E "^(latency|throughput|roofline|decode at)" "$L/$name.log" | sed "s/^/[$name] /" | tee -a "$SUM"
}
for m in def all; do
  pb "b1_128_$m" 25 $m "$M8" --mode latency --input-len 128 --output-len 128 --num-iters 3 --num-iters-warmup 1 --max-num-seqs 8
done
for m in def all; do
  pb "dense_2048_$m" 40 $m "$M8" --mode throughput --input-len 128 --output-len 128 --num-prompts 2048 --max-num-seqs 512
done
for m in def all; do
  pb "moe_1024_$m" 45 $m bench/models/Qwen3-30B-A3B --mode throughput --input-len 128 --output-len 128 \
    --num-prompts 1024 --max-num-seqs 1024
done

# 5. sanitizers on fixed-split cases (the split loop's barrier parities and proxy fence)
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
F='Grid/DecodeAttentionFixedSplitGrid.MatchesCpu/Block16_HeadDim128_Group4_BF16:Grid/DecodeAttentionFixedSplitGrid.MatchesCpu/Block8_HeadDim64_Group8_F16'
run memcheck 30 $CS --tool memcheck $B/pie_cuda_test_attention_decode --gtest_color=no --gtest_filter="$F"
grep -E "ERROR SUMMARY|PASSED|FAILED" "$L/memcheck.log" | tail -3 | sed 's/^/[memcheck] /' | tee -a "$SUM"
run racecheck 30 $CS --tool racecheck $B/pie_cuda_test_attention_decode --gtest_color=no \
  --gtest_filter='Grid/DecodeAttentionFixedSplitGrid.MatchesCpu/Block16_HeadDim128_Group4_BF16'
grep -E "RACECHECK SUMMARY|PASSED|FAILED" "$L/racecheck.log" | tail -3 | sed 's/^/[racecheck] /' | tee -a "$SUM"
