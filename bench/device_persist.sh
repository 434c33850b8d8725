#!/usr/bin/env bash
# bench/device_persist.sh — issue 15, the persistent batch-1 decode-layer kernels
# (docs/gpu_engine.md "Next: a persistent decode-layer kernel for batch 1"): the one-layer
# prototype (bench/cuda/persist_layer.cuh: o_proj | add + norm + gate_up) and the decoder layer
# without attention (bench/cuda/persist_decoder.cuh: o_proj | gate_up + SwiGLU | down | qkv |
# q/k norm + RoPE + K/V write, 4 grid barriers), on one GPU in one call within PIE_DEADLINE_S
# (default 220 s):
#   1. build pie_bench_cuda_persist and pie_cuda_test_gemm only (-DPIE_BUILD_CUDA_BENCH=ON
#      -DCMAKE_CUDA_ARCHITECTURES=90a; the test TU gets its PersistLayer tests with that option;
#      bench/ needs Google Benchmark at configure time, so where the machine lacks it the tests are
#      configured alone and the bench compiled with nvcc), unless PIE_PERSIST_BIN and
#      PIE_PERSIST_TEST_BIN name prebuilt binaries;
#   2. correctness: pie_cuda_test_gemm PersistLayer.* (and the fused norm GEMV's Gemv tests), then
#      the bench's --check-only, the same checks: every persistent variant byte for byte against
#      the kernel chains (prototype: gemv -> add_rms_norm_gemv -> silu_and_mul; layer: the
#      engine's default 7 kernels and the 5 of its fusion switches) on the resident grid and on 7
#      CTAs, twice each (the counter's reuse), Qwen3-8B shapes and small ones with K tails; the
#      chains against CPU references; non-zero exit on any difference;
#   3. the bench, whatever the check said (it re-checks and times only the chains and the variants
#      that matched them, so a failing variant cannot hide the others' rows): CUDA graphs of 8
#      layers, each on its own weight copy (far above L2): the prototype's rows (us per pair) and
#      the layer's (us per layer), MB, GB/s, % of the D2D copy measured in the same process,
#      chain - persistent per layer and per boundary against the >= 2 us rule;
#   4. compute-sanitizer racecheck, synccheck and memcheck on the small shapes, 8 CTAs (if time is left).
#   OUT=dir [PIE_BUILD_DIR=build] [PIE_PERSIST_BIN=bench] [PIE_PERSIST_TEST_BIN=test] bash bench/device_persist.sh
set -u
OUT=${OUT:-/tmp/pie_persist_out}
BUILD=${PIE_BUILD_DIR:-.device/build-persist}
DEADLINE=${PIE_DEADLINE_S:-220}
LOGS="$OUT/logs"; mkdir -p "$LOGS" "$BUILD"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=15 RUN_MIN_LEFT=8
source bench/device_lib.sh  # say, run (NAME LIMIT_S CMD...), gpu_line; run from the repository root
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
say "device: $(gpu_line)"

BIN=${PIE_PERSIST_BIN:-}
TEST=${PIE_PERSIST_TEST_BIN:-}
CFG=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DPIE_BUILD_CUDA_BENCH=ON -DPIE_BUILD_EXAMPLES=OFF
     -DPIE_MOE_CUTLASS=OFF)
if [ -z "$BIN" ] || [ -z "$TEST" ]; then
  if run configure 60 cmake -S . -B "$BUILD" "${CFG[@]}" -DPIE_BUILD_TESTS=ON; then
    [ -z "$BIN" ] && run build_bench 120 cmake --build "$BUILD" -j "$(nproc)" --target pie_bench_cuda_persist &&
      BIN=$BUILD/bench/cuda/pie_bench_cuda_persist
  else  # bench/ needs Google Benchmark at configure time: without it, the tests alone
    say "configure with the benches failed: tests only, and the bench compiled by nvcc alone"
    run configure_tests 60 cmake -S . -B "$BUILD" "${CFG[@]}" -DPIE_BUILD_TESTS=ON -DPIE_BUILD_BENCH=OFF
  fi
  if [ -z "$TEST" ] && [ -f "$BUILD/CMakeCache.txt" ]; then
    run build_test 150 cmake --build "$BUILD" -j "$(nproc)" --target pie_cuda_test_gemm &&
      TEST=$BUILD/tests/cuda/pie_cuda_test_gemm
  fi
  if [ -z "$BIN" ]; then  # the bench needs only the CUDA toolkit and pie's headers
    run nvcc 120 nvcc -O3 -DNDEBUG -std=c++20 --expt-relaxed-constexpr -lineinfo \
      --generate-code=arch=compute_90a,code=[compute_90a,sm_90a] -DPIE_WITH_CUDA=1 -Iinclude \
      bench/cuda/bench_persist.cu -o "$BUILD/pie_bench_cuda_persist_nvcc" && BIN=$BUILD/pie_bench_cuda_persist_nvcc
  fi
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  say "no bench binary: stopping"
  exit 1
fi

rc_all=0
if [ -n "$TEST" ] && [ -x "$TEST" ]; then  # the same check as a GPU test, beside the fused norm's
  run test 120 "$TEST" --gtest_color=no --gtest_filter='PersistLayer.*:Gemv.*AddRmsNorm*' || rc_all=1
  grep -E "OK \]|FAILED  \]|Failure|MISMATCH|PASSED" "$LOGS/test.log" | head -20 | tee -a "$SUM"
else
  say "test: no pie_cuda_test_gemm with PIE_PERSIST_PROTOTYPE (the bench's --check-only runs the same checks)"
fi
rc_check=0
run check 60 "$BIN" --check-only || rc_check=1
grep -E "^(device|launch mode|resident grid|check|  |correctness)" "$LOGS/check.log" | tee -a "$SUM"
# Timings of outputs that are right only: the bench re-checks and skips what differs (its exit
# status is then 1), so it runs even when the check failed.
run bench 90 "$BIN" --layers 8 --reps 10 || rc_all=1
grep -E "^(correctness|not timed)" "$LOGS/bench.log" | tee -a "$SUM"
sed -n '/^ceilings/,$p' "$LOGS/bench.log" | tee -a "$SUM"
if command -v compute-sanitizer > /dev/null; then
  for tool in racecheck synccheck memcheck; do
    run "sanitizer_$tool" 45 compute-sanitizer --tool "$tool" "$BIN" --check-only --small-only --grid 8
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|correctness|Error|hazard" "$LOGS/sanitizer_$tool.log" | head -8 |
      sed "s/^/[$tool] /" | tee -a "$SUM"
  done
else
  say "compute-sanitizer: not on this machine"
fi
[ "$rc_check" -ne 0 ] && rc_all=1
say "done (rc $rc_all)"
exit $rc_all
