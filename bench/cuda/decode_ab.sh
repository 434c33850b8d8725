#!/usr/bin/env bash
# Same-call A/B of decode attention without CMake: builds the decode test and bench with nvcc
# on any machine with the CUDA toolkit (sm_90a), the bench with a baseline kernel taken from a
# git revision; then runs them on the GPU machine.
#   bench/cuda/decode_ab.sh build DIR [REV]   # REV: baseline revision (default HEAD; none: no baseline)
#   bench/cuda/decode_ab.sh run DIR [tests] [sanitize] [bench]   # on the GPU machine; logs to $OUT
# DIR holds the stripped binaries and libbenchmark (carry it to the GPU machine).
set -uo pipefail
cd "$(dirname "$0")/../.."
cmd=$1 dir=$2; shift 2
if [[ $cmd == build ]]; then
  rev=${1:-HEAD}
  mkdir -p "$dir"
  baseline=()
  if [[ $rev != none ]]; then
    git show "$rev:include/pie/ops/cuda/attention_decode.cuh" |
      sed 's/^namespace pie::ops::cuda {/namespace pie::ops::cuda::v0 {/' > "$dir/decode_v0.cuh"
    baseline=(-DPIE_DECODE_BASELINE="\"$PWD/$dir/decode_v0.cuh\"")
  fi
  flags=(-O3 -std=c++20 --expt-relaxed-constexpr -lineinfo -gencode=arch=compute_90a,code=sm_90a
         -DPIE_WITH_CUDA=1 -Iinclude -Itests/cuda -I/usr/include/eigen3 -Xptxas -warn-spills)
  nvcc "${flags[@]}" -o "$dir/test_decode" tests/cuda/test_attention_decode.cu -lgtest -lgtest_main -lpthread &
  nvcc "${flags[@]}" --resource-usage "${baseline[@]}" -o "$dir/bench_decode" \
    bench/cuda/bench_decode.cu -lbenchmark -lpthread 2> "$dir/resources.txt" &
  wait
  strip "$dir/test_decode" "$dir/bench_decode"
  lib=$(ldconfig -p | awk '/libbenchmark.so.1/{print $NF; exit}')
  [[ -n $lib ]] && cp -L "$lib" "$dir/$(basename "$lib")"
  ls -la "$dir"
  exit 0
fi
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/$dir:${LD_LIBRARY_PATH:-}
stages=${*:-tests bench}
status=0
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv > "$OUT/env.txt" 2>&1
if [[ " $stages " == *" tests "* ]]; then
  "$dir/test_decode" > "$OUT/tests.log" 2>&1 || status=1
  grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|rel err" "$OUT/tests.log" | tail -40
fi
if [[ " $stages " == *" sanitize "* ]]; then
  # PIE_MEMCHECK_FILTER / PIE_RACECHECK_FILTER thin the grids to fit a call.
  f=${PIE_MEMCHECK_FILTER:-'*Block8_HeadDim64*:*Block16_HeadDim128*:DecodeAttentionBatch*:DecodeAttentionFp8*:DecodeAttentionVariant*'}
  timeout "${PIE_MEMCHECK_S:-200}" compute-sanitizer --tool memcheck --error-exitcode 9 "$dir/test_decode" \
    --gtest_filter="$f" > "$OUT/sanitizer.log" 2>&1 || { status=1; echo "memcheck failed"; }
  timeout "${PIE_RACECHECK_S:-120}" compute-sanitizer --tool racecheck --error-exitcode 9 "$dir/test_decode" \
    --gtest_filter="${PIE_RACECHECK_FILTER:-*Block16_HeadDim128_Group4_BF16*:*Fp8*}" >> "$OUT/sanitizer.log" 2>&1 ||
    { status=1; echo "racecheck failed"; }
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$OUT/sanitizer.log"
fi
if [[ " $stages " == *" bench "* ]]; then
  timeout 200 "$dir/bench_decode" ${PIE_BENCH_ARGS:-} > "$OUT/bench.log" 2>&1 || { status=1; echo "bench failed"; }
  grep -E "^device|^ceilings|^occupancy" "$OUT/bench.log"
  awk '/^kernel /{p=1} p' "$OUT/bench.log"
fi
exit $status
