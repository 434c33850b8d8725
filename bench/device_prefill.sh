#!/usr/bin/env bash
# bench/device_prefill.sh — issue 14 item 1, the Hopper prefill kernel v3 in one GPU call:
#   1. test_prefill (every grid against the CPU reference) on v2 (the default), on v3
#      (PIE_PREFILL_SM90=3: one TMA box per page), on v3's persistent grid (3p), on 2-CTA
#      clusters with K/V multicast (3c) and, thinned, on v3 with one box per half (3h);
#   2. compute-sanitizer memcheck (v3, v3p, v3c) and racecheck (v3) on thinned grids;
#   3. bench_prefill (v2, v3, v3p, v3c, v3 with one box per half, v2 without ping-pong, mma.sync,
#      one process)
#      and bench/prefill_peer.py (PyTorch SDPA cuDNN and flash, and the bf16 GEMM peak, same call);
#   4. one table last: shape, v2, v3, cuDNN, flash, ratios, % of the GEMM peak.
# Every step runs under its own timeout: a wrong barrier count hangs the GPU kernel, and the
# timeout kills the process (and its context) so the next step still runs.
# Binaries: `bench/cuda/prefill_ab.sh build DIR` on a machine with CUDA 13 (sm_90a), DIR carried;
# if DIR has no test_prefill and nvcc is here, this script builds them first.
# Usage, in the repository root of the GPU machine: OUT=DIR bash bench/device_prefill.sh DIR
set -u
dir=${1:-.device/prefill}
OUT=${OUT:-/tmp/pie_prefill_out}
DEADLINE=${PIE_DEADLINE_S:-560}
export OUT PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=$PWD/$dir:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
LOGDIR=$OUT
. bench/device_lib.sh

say "$(gpu_line)"
if [ ! -x "$dir/test_prefill" ]; then
  run build 420 bash bench/cuda/prefill_ab.sh build "$dir" || say "build failed"
fi
# The Hopper kernels' ptxas lines (registers at the entry cap, spills) from the build.
awk '/Compiling entry function/{f=($0 ~ /sm90/)} f && /Compiling|spill|Used/' "$dir/resources.txt" 2>/dev/null \
  > "$OUT/resources.txt"

T=$dir/test_prefill
run tests_v2 100 env PIE_PREFILL_SM90=2 "$T" --gtest_color=no
run tests_v3 100 env PIE_PREFILL_SM90=3 "$T" --gtest_color=no
v3rc=$?
run tests_v3p 100 env PIE_PREFILL_SM90=3p "$T" --gtest_color=no
v3prc=$?
run tests_v3c 100 env PIE_PREFILL_SM90=3c "$T" --gtest_color=no
v3crc=$?
# A kernel that hangs (rc 124) or crashes would take the bench with it: leave it out there.
bench_args="" v3ok=1
case $v3rc in 0|1) ;; *) bench_args=--no-v3 v3ok=0; say "v3 rc=$v3rc: bench without v3, v3 sanitizers skipped" ;; esac
case $v3prc in 0|1) ;; *) bench_args="$bench_args --no-v3p"; say "v3p rc=$v3prc: bench without v3p" ;; esac
case $v3crc in 0|1) ;; *) bench_args="$bench_args --no-v3c"; say "v3c rc=$v3crc: bench without v3c" ;; esac
run bench 120 "$dir/bench_prefill" $bench_args
run peer 150 python3 bench/prefill_peer.py "$OUT/bench.log"
if [ $v3ok = 1 ]; then
  run tests_v3_halves 60 env PIE_PREFILL_SM90=3h "$T" --gtest_color=no --gtest_filter='*HeadDim128*:PrefillAttentionV3.*'
  thin='Grid/PrefillAttention.MatchesCpu/Block16_HeadDim128_Group4_BF16:Grid/PrefillAttention.MatchesCpu/Block8_HeadDim64_Group8_F16:Grid/PrefillAttention.MatchesCpu/Block8_HeadDim128_Group1_BF16:PrefillAttentionVariant.*'
  run memcheck_v3 120 env PIE_PREFILL_SM90=3 compute-sanitizer --tool memcheck --error-exitcode 9 "$T" \
    --gtest_filter="$thin"
  run racecheck_v3 120 env PIE_PREFILL_SM90=3 compute-sanitizer --tool racecheck --error-exitcode 9 "$T" \
    --gtest_filter='Grid/PrefillAttention.MatchesCpu/Block16_HeadDim128_Group4_BF16:Grid/PrefillAttention.MatchesCpu/Block8_HeadDim64_Group8_F16'
  case $v3prc in 0|1)
    run memcheck_v3p 90 env PIE_PREFILL_SM90=3p compute-sanitizer --tool memcheck --error-exitcode 9 "$T" \
      --gtest_filter='Grid/PrefillAttention.MatchesCpu/Block16_HeadDim128_Group4_BF16:PrefillAttentionV3.*' ;;
  esac
  case $v3crc in 0|1)
    run memcheck_v3c 90 env PIE_PREFILL_SM90=3c compute-sanitizer --tool memcheck --error-exitcode 9 "$T" \
      --gtest_filter='Grid/PrefillAttention.MatchesCpu/Block16_HeadDim128_Group4_BF16:PrefillAttentionV3.*' ;;
  esac
fi
say "done"

echo "---- tests (rel err per case: grep 'rel err' $OUT/tests_*.log)"
for t in tests_v2 tests_v3 tests_v3p tests_v3c tests_v3_halves; do
  echo "$t: $(grep -E '^\[  (PASSED|FAILED)  \]' "$OUT/$t.log" 2>/dev/null | tr '\n' ' ')"
  grep -E '^\[  FAILED  \]|prefill v3 box|refused' "$OUT/$t.log" 2>/dev/null | head -20
done
for t in memcheck_v3 racecheck_v3 memcheck_v3p memcheck_v3c; do
  echo "$t: $(grep -hE "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$t.log" 2>/dev/null | tr '\n' ' ')"
done
echo "---- resources (registers, spills, shared memory)"
cat "$OUT/resources.txt"
echo "---- bench"
grep -E "^device|^pie " "$OUT/bench.log" 2>/dev/null
echo "---- prefill, TFLOP/s, same call (v3 = one box per page, split K/V rings, 3 stages at hd128)"
awk '/^bf16 GEMM/{p=1} p' "$OUT/peer.log" 2>/dev/null
