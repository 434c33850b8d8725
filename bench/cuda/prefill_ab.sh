#!/usr/bin/env bash
# Prefill attention without CMake: builds the prefill test and bench with nvcc (sm_90a) on any
# machine with the CUDA toolkit, then runs them on the GPU machine with the PyTorch SDPA peer.
#   bench/cuda/prefill_ab.sh build DIR        # PIE_NVCC_FLAGS: more nvcc flags (e.g. -DPIE_PREFILL_SM90_HD64=1)
#   bench/cuda/prefill_ab.sh run DIR [tests] [sanitize] [bench]   # on the GPU machine; logs to $OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
cmd=$1 dir=$2; shift 2
if [[ $cmd == build ]]; then
  mkdir -p "$dir"
  flags=(-O3 -std=c++20 --expt-relaxed-constexpr -lineinfo -gencode=arch=compute_90a,code=sm_90a
         -DPIE_WITH_CUDA=1 -Iinclude -Itests/cuda -I/usr/include/eigen3 -Xptxas -warn-spills ${PIE_NVCC_FLAGS:-})
  nvcc "${flags[@]}" -o "$dir/test_prefill" tests/cuda/test_attention_prefill.cu -lgtest -lgtest_main -lpthread &
  nvcc "${flags[@]}" --resource-usage -o "$dir/bench_prefill" bench/cuda/bench_prefill.cu -lbenchmark -lpthread \
    2> "$dir/resources.txt" &
  wait
  strip "$dir/test_prefill" "$dir/bench_prefill"
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
  timeout 90 "$dir/test_prefill" ${PIE_TEST_ARGS:-} > "$OUT/tests.log" 2>&1 || status=1
  grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|rel err" "$OUT/tests.log" | tail -60
fi
if [[ " $stages " == *" sanitize "* ]]; then
  f='Grid/PrefillAttention.MatchesCpu/Block16_HeadDim128_Group4_BF16:Grid/PrefillAttention.MatchesCpu/Block8_HeadDim64_Group8_F16:PrefillAttentionVariant.*'
  timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 "$dir/test_prefill" --gtest_filter="$f" \
    > "$OUT/sanitizer.log" 2>&1 || { status=1; echo "memcheck failed"; }
  grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/sanitizer.log"
fi
if [[ " $stages " == *" bench "* ]]; then
  timeout 45 "$dir/bench_prefill" ${PIE_BENCH_ARGS:-} > "$OUT/bench.log" 2>&1 || { status=1; echo "bench failed"; }
  cat "$OUT/bench.log"
  PYTHONUNBUFFERED=1 timeout 70 python3 bench/prefill_peer.py "$OUT/bench.log" 2>&1 | tee "$OUT/peer.log"
fi
exit $status
