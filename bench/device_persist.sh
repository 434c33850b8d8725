#!/usr/bin/env bash
# bench/device_persist.sh — issue 15, the persistent batch-1 decode-layer prototype
# (bench/cuda/persist_layer.cuh, docs/gpu_engine.md "Next: a persistent decode-layer kernel for
# batch 1"), on one GPU in one call within PIE_DEADLINE_S (default 220 s):
#   1. build pie_bench_cuda_persist only (-DPIE_BUILD_CUDA_BENCH=ON -DCMAKE_CUDA_ARCHITECTURES=90a;
#      bench/ needs Google Benchmark at configure time, so where the machine lacks it the same
#      source is compiled with nvcc alone), unless PIE_PERSIST_BIN names a prebuilt binary;
#   2. correctness (--check-only): every persistent variant byte for byte against the kernel chain
#      (gemv -> add_rms_norm_gemv -> silu_and_mul) on the resident grid and on 7 CTAs, twice each
#      (the counter's reuse), Qwen3-8B shape and a small one with K tails; the chain against a CPU
#      reference; non-zero exit on any difference;
#   3. the bench: CUDA graphs of 8 layer pairs (each on its own 235 MB weight copy, far above L2),
#      chain vs persistent (early issue, barrier only, + SwiGLU): us per pair, MB, GB/s, % of the
#      D2D copy measured in the same process, chain - persistent against the >= 2 us rule;
#   4. compute-sanitizer racecheck, synccheck and memcheck on the small shape, 8 CTAs (if time is left).
#   OUT=dir [PIE_BUILD_DIR=build] [PIE_PERSIST_BIN=binary] bash bench/device_persist.sh
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
if [ -z "$BIN" ]; then
  if run configure 60 cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
       -DPIE_BUILD_CUDA_BENCH=ON -DPIE_BUILD_TESTS=OFF -DPIE_BUILD_EXAMPLES=OFF -DPIE_MOE_CUTLASS=OFF &&
     run build 120 cmake --build "$BUILD" -j "$(nproc)" --target pie_bench_cuda_persist; then
    BIN=$BUILD/bench/cuda/pie_bench_cuda_persist
  else  # no Google Benchmark here: the bench needs only the CUDA toolkit and pie's headers
    say "cmake build failed: compiling bench/cuda/bench_persist.cu with nvcc alone"
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
run check 90 "$BIN" --check-only || rc_all=1
grep -E "^(device|launch mode|resident grid|check|  |correctness)" "$LOGS/check.log" | tee -a "$SUM"
if [ "$rc_all" -eq 0 ]; then
  run bench 90 "$BIN" --layers 8 --reps 10 || rc_all=1
  sed -n '/^ceilings/,$p' "$LOGS/bench.log" | tee -a "$SUM"
fi
if command -v compute-sanitizer > /dev/null; then
  for tool in racecheck synccheck memcheck; do
    run "sanitizer_$tool" 45 compute-sanitizer --tool "$tool" "$BIN" --check-only --small-only --grid 8
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|correctness|Error|hazard" "$LOGS/sanitizer_$tool.log" | head -8 |
      sed "s/^/[$tool] /" | tee -a "$SUM"
  done
else
  say "compute-sanitizer: not on this machine"
fi
say "done (rc $rc_all)"
exit $rc_all
