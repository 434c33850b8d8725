#!/usr/bin/env bash
# One call on the GPU machine: configure + build the CUDA tests and benches, run the tests,
# compute-sanitizer memcheck/racecheck on the kernel tests, then the kernel benchmarks.
# Logs go to $OUT (or ./device_out): env.txt build.log tests.log sanitizer.log bench.log
# bench.json resources.txt. Stages: all (default) or any of: build tests sanitize bench.
#   usage: bench/device_run.sh [stages...]   e.g. bench/device_run.sh build tests bench
# Narrower calls: PIE_TESTS="attention_decode" (tests to build/run), PIE_BENCH_ARGS (passed to
# the kernel bench, e.g. --benchmark_filter=Gemm), PIE_DECODE_BENCH_ARGS (the decode bench's;
# bench/cuda/decode_ab.sh builds it with a baseline kernel, without CMake), PIE_BENCH_REPEAT=2 (run the bench twice: the
# spread between the two runs is the noise floor of any comparison).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
BUILD=${PIE_DEVICE_BUILD:-build-device}
JOBS=${JOBS:-16}
STAGES=${*:-all}
want() { [[ " $STAGES " == *" all "* || " $STAGES " == *" $1 "* ]]; }
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
TESTS=${PIE_TESTS:-attention_decode attention_prefill elementwise sampling gemm}
status=0

{
  date -u; nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
  nvcc --version | tail -2; cmake --version | head -1
  git rev-parse --short HEAD 2>/dev/null || echo "commit: uncommitted"
  git status --short 2>/dev/null | head -50
} > "$OUT/env.txt" 2>&1

if want build; then
  stamp build | tee "$OUT/build.log"
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPIE_BUILD_CUDA_BENCH=ON -DPIE_BUILD_EXAMPLES=OFF \
        -DCMAKE_CUDA_ARCHITECTURES=90a >> "$OUT/build.log" 2>&1 || { echo "configure failed"; tail -30 "$OUT/build.log"; exit 1; }
  targets=""
  for t in $TESTS; do targets="$targets pie_cuda_test_$t"; done
  cmake --build "$BUILD" -j"$JOBS" --target $targets pie_bench_cuda_kernels pie_bench_cuda_decode >> "$OUT/build.log" 2>&1 \
    || { echo "build failed"; grep -E "error" "$OUT/build.log" | head -40; exit 1; }
  stamp "build done" | tee -a "$OUT/build.log"
  if command -v cuobjdump >/dev/null; then
    for b in "$BUILD"/tests/cuda/pie_cuda_test_* "$BUILD"/bench/cuda/pie_bench_cuda_kernels "$BUILD"/bench/cuda/pie_bench_cuda_decode; do
      echo "## $b"; cuobjdump --dump-resource-usage "$b" 2>&1 | grep -E "Function|REG" | paste - - | \
        sed -E 's/Function ([^:]*):.*REG:([0-9]+) STACK:([0-9]+) SHARED:([0-9]+) LOCAL:([0-9]+).*/REG \2 STACK \3 SHARED \4 LOCAL \5  \1/' | sort -u
    done > "$OUT/resources.txt" 2>&1
  fi
fi

if want tests; then
  stamp tests | tee "$OUT/tests.log"
  for t in $TESTS; do
    stamp "$t" >> "$OUT/tests.log"
    timeout 300 "$BUILD/tests/cuda/pie_cuda_test_$t" >> "$OUT/tests.log" 2>&1 || { status=1; echo "FAILED: $t" | tee -a "$OUT/tests.log"; }
  done
  grep -E "^\[  (PASSED|FAILED) |FAILED:|^\[  FAILED  \]" "$OUT/tests.log"
fi

if want sanitize; then
  CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  stamp "sanitize ($CS)" | tee "$OUT/sanitizer.log"
  # memcheck: every kernel test, the 10^5-row chi-square and the 36-case grids thinned to keep
  # the call short; racecheck: the shared-memory kernels (prefill, decode merge, sampling).
  run_cs() {
    local tool=$1 bin=$2 filter=$3
    [[ " $TESTS " == *" ${bin#pie_cuda_test_} "* ]] || return 0  # not built in this call
    stamp "$tool $bin $filter" >> "$OUT/sanitizer.log"
    timeout 240 "$CS" --tool "$tool" --error-exitcode 9 "$BUILD/tests/cuda/$bin" --gtest_filter="$filter" \
      >> "$OUT/sanitizer.log" 2>&1 || { status=1; echo "SANITIZER FAILED: $tool $bin" | tee -a "$OUT/sanitizer.log"; }
  }
  run_cs memcheck pie_cuda_test_attention_decode '*Block8_HeadDim64*:*Block16_HeadDim128*:*Block32*Group8*:DecodeAttentionBatch*:DecodeAttentionFp8*:DecodeAttentionVariant*'
  run_cs memcheck pie_cuda_test_attention_prefill '*Block8_HeadDim64*:*Block16_HeadDim128*:*Block32*Group8*:PrefillAttentionShape*:PrefillAttentionFp8*:PrefillAttentionVariant*'
  run_cs memcheck pie_cuda_test_elementwise '*'
  run_cs memcheck pie_cuda_test_sampling '-*ChiSquare*'
  run_cs memcheck pie_cuda_test_gemm '*'
  run_cs racecheck pie_cuda_test_attention_prefill '*Block16_HeadDim128_Group4_BF16*:*HeadDim256*:*Fp8*'
  run_cs racecheck pie_cuda_test_attention_decode '*Block16_HeadDim128_Group4_BF16*:*Fp8*:*ForLongerContexts*'
  run_cs racecheck pie_cuda_test_sampling '-*ChiSquare*'
  run_cs racecheck pie_cuda_test_elementwise '*RmsNorm*'
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|SANITIZER FAILED" "$OUT/sanitizer.log"
fi

if want bench; then
  stamp bench | tee "$OUT/bench.log"
  for rep in $(seq "${PIE_BENCH_REPEAT:-1}"); do
    stamp "bench run $rep" >> "$OUT/bench.log"
    timeout 300 "$BUILD/bench/cuda/pie_bench_cuda_kernels" --benchmark_out="$OUT/bench.json" \
      --benchmark_out_format=json ${PIE_BENCH_ARGS:-} >> "$OUT/bench.log" 2>&1 || { status=1; echo "bench failed"; }
    # Decode attention (BM_DecodeAttention, BM_DecodeShape): its own binary and ceiling.
    timeout 200 "$BUILD/bench/cuda/pie_bench_cuda_decode" --benchmark_out="$OUT/bench_decode.json" \
      --benchmark_out_format=json ${PIE_DECODE_BENCH_ARGS:-} >> "$OUT/bench.log" 2>&1 || { status=1; echo "decode bench failed"; }
  done
  awk '/^kernel /{p=1} /^== /{p=0} p' "$OUT/bench.log"
  grep -E "^ceilings|^device" "$OUT/bench.log"
fi
stamp "done, status $status"
exit $status
