#!/usr/bin/env bash
# bench/device_moe_gemm.sh — issue 20's CUTLASS grouped expert GEMMs (ops/cuda/moe_cutlass.cuh,
# -DPIE_MOE_CUTLASS=ON) in one call, within PIE_DEADLINE_S (default 180):
#   1. binaries: prebuilt ones from $PIE_BIN_DIR (default .device/moe-bin: pie_cuda_test_moe_cutlass,
#      pie_bench_cuda_moe, pie_bench, built off the device with the option ON), else built here
#      with CUTLASS's headers from $PIE_CUTLASS_DIR (default .device/cutlass/include; both
#      git-ignored, carried with the call; `PIE_MOE_CUTLASS=ON bash .ci/deps.sh` unpacks the
#      headers into $HOME/.cache/pie-deps/cutlass-4.2.0.0/include);
#   2. the path's tests against the CPU op and the mma path (ragged groups, graph replay);
#   3. the kernel bench at Qwen3-30B-A3B's shape, 1024 tokens = 8192 grouped rows: mma vs CUTLASS,
#      µs, % of the copy ceiling and of the GEMM ceiling measured in the same run;
#   4. `pie bench` Qwen3-30B-A3B dummy 1024 × (128, 128) with PIE_MOE_GEMM unset (the CUTLASS path,
#      the default since the seventh session), then =mma (the mma.sync kernel, the same-call peer):
#      same binary, same call, each with the eager per-op profile of a batch-1024 decode step.
# Usage, in the repository root of the GPU machine:  OUT=/some/dir bash bench/device_moe_gemm.sh
# The last lines printed are the summary ($OUT/summary.txt).
set -u
OUT=${OUT:-/tmp/pie_moe_gemm_out}
BUILD=${PIE_BUILD_DIR:-/tmp/build-moe-cutlass}
BIN=${PIE_BIN_DIR:-.device/moe-bin}
CUTLASS=${PIE_CUTLASS_DIR:-.device/cutlass/include}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-30B-A3B}
DEADLINE=${PIE_DEADLINE_S:-180}
mkdir -p "$OUT"
SUM="$OUT/summary.txt" LOGDIR=$OUT RUN_TAIL=12 RUN_MIN_LEFT=10
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
say "device: $(gpu_line)"

if "$BIN/pie_cuda_test_moe_cutlass" --gtest_list_tests > "$OUT/prebuilt.log" 2>&1 &&
   "$BIN/pie_bench" --help >> "$OUT/prebuilt.log" 2>&1 && [ -x "$BIN/pie_bench_cuda_moe" ]; then
  TEST=$BIN/pie_cuda_test_moe_cutlass KBENCH=$BIN/pie_bench_cuda_moe BENCH=$BIN/pie_bench
  say "prebuilt binaries from $BIN"
else
  say "no prebuilt binaries in $BIN that load here: building (CUTLASS headers: $CUTLASS)"
  CUTLASS=$(realpath "$CUTLASS")
  run configure 40 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DPIE_BUILD_BENCH=ON -DPIE_BUILD_CUDA_BENCH=ON -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_TESTS=ON -DPIE_MOE_CUTLASS=ON -DPIE_CUTLASS_DIR="$CUTLASS"
  run build 150 cmake --build "$BUILD" -j "$(nproc)" --target pie_cuda_test_moe_cutlass pie_bench_cuda_moe pie_bench \
    || grep -E "error" "$OUT/build.log" | head -20 | tee -a "$SUM"
  TEST=$BUILD/tests/cuda/pie_cuda_test_moe_cutlass KBENCH=$BUILD/bench/cuda/pie_bench_cuda_moe
  BENCH=$BUILD/examples/pie/pie_bench
fi

run test_moe_cutlass 70 "$TEST" --gtest_color=no
grep -E "OK \]|FAILED  \]|Failure|Expected|Which is|PASSED" "$OUT/test_moe_cutlass.log" | head -20 | tee -a "$SUM"

run kernel_bench 40 "$KBENCH" 1024 256
grep -vE "^\s*$" "$OUT/kernel_bench.log" | head -70 | tee -a "$SUM"

for sw in default mma; do  # default: PIE_MOE_GEMM unset, the CUTLASS path in a build that has it
  [ "$sw" = default ] && unset PIE_MOE_GEMM || export PIE_MOE_GEMM=$sw
  run "bench_30b_$sw" 65 "$BENCH" "$MODEL" --load-format dummy --mode throughput \
    --input-len 128 --output-len 128 --num-prompts 1024 --max-num-seqs 1024 --profile --output-json "$OUT/bench_30b_$sw.json"
  grep -E "^(ceilings|engine|throughput|roofline|decode at|profile|pie: memory)" "$OUT/bench_30b_$sw.log" | sed "s/^/[$sw] /" \
    | tee -a "$SUM"
done
say "done"
echo "==== summary"
cat "$SUM"
