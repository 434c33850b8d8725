#!/usr/bin/env bash
# bench/device_hd64.sh — issue 14 item 1, Hopper prefill at head dim 64, in one GPU call: v3's
# shapes (attention_prefill_sm90_v3.cuh, Shape) against v3 as the engine runs it today.
#   1. test_prefill against the CPU reference: the default (v3, every test), PIE_PREFILL_SM90=3e
#      (exp2 partly on the FMA pipe; every test: it applies at head dim 64 and 128), =3w (3
#      consumer warpgroups, 192-row tiles) and =3we (both) on the head-dim-64 tests (the shape's
#      only head dim; the others run the default there);
#   2. bench_prefill --shapes (v3, 3w, 3e, 3we at hd 64; v3, 3e at hd 128; causal 2K and 8K,
#      32 q / 8 KV heads, bs 16, and hd 64 8K at bs 8; the exp2 emulation's other shares, periods
#      3 and 8, at hd 64 8K; two passes, one process) and
#      prefill_peer.py (PyTorch SDPA cuDNN and flash on the same shapes, the bf16 GEMM peak, same
#      call);
#   3. compute-sanitizer memcheck (3w, 3e, 3we) and racecheck (3w, 3we) on thinned grids.
# A shape whose tests hang or crash (rc > 1) is left out of the sanitizers; the bench runs every
# shape in one process, so a hang there costs the bench step (its timeout), not the call.
# Binaries: `bench/cuda/prefill_ab.sh build DIR` (nvcc, sm_90a), DIR carried.
# Usage, in the repository root of the GPU machine: OUT=DIR bash bench/device_hd64.sh DIR
set -u
dir=${1:-.device/hd64}
OUT=${OUT:-/tmp/pie_hd64_out}
DEADLINE=${PIE_DEADLINE_S:-230}
export OUT PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=$PWD/$dir:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
LOGDIR=$OUT
. bench/device_lib.sh
# The peer script of this branch when the checkout is older than it (it prints the shapes table).
peer=bench/prefill_peer.py
[ -f "$dir/prefill_peer.py" ] && peer=$dir/prefill_peer.py

say "$(gpu_line)"
awk '/Compiling entry function/{f=($0 ~ /v314prefill_kernel/)} f && /Compiling|spill|Used/' "$dir/resources.txt" \
  2>/dev/null > "$OUT/resources.txt"

T=$dir/test_prefill
hd64='*HeadDim64*:PrefillAttentionV3.*:PrefillAttentionVariant.SoftCap5Block8'
run tests_v3 100 "$T" --gtest_color=no
run tests_v3e 100 env PIE_PREFILL_SM90=3e "$T" --gtest_color=no
erc=$?
run tests_v3w 80 env PIE_PREFILL_SM90=3w "$T" --gtest_color=no --gtest_filter="$hd64"
wrc=$?
run tests_v3we 80 env PIE_PREFILL_SM90=3we "$T" --gtest_color=no --gtest_filter="$hd64"
werc=$?
run bench 60 "$dir/bench_prefill" --shapes
run peer 90 python3 "$peer" "$OUT/bench.log"
thin='Grid/PrefillAttention.MatchesCpu/Block8_HeadDim64_Group8_F16:Grid/PrefillAttention.MatchesCpu/Block16_HeadDim64_Group4_BF16:Grid/PrefillAttention.MatchesCpu/Block16_HeadDim64_Group1_BF16'
for s in 3w 3e 3we; do
  case $s in 3w) rc=$wrc ;; 3e) rc=$erc ;; *) rc=$werc ;; esac
  case $rc in 0|1) ;; *) say "v$s rc=$rc: its sanitizers skipped"; continue ;; esac
  run memcheck_v$s 45 env PIE_PREFILL_SM90=$s compute-sanitizer --tool memcheck --error-exitcode 9 "$T" \
    --gtest_filter="$thin"
  [ $s = 3e ] && continue
  run racecheck_v$s 60 env PIE_PREFILL_SM90=$s compute-sanitizer --tool racecheck --error-exitcode 9 "$T" \
    --gtest_filter='Grid/PrefillAttention.MatchesCpu/Block16_HeadDim64_Group4_BF16'
done
say "done"

echo "---- tests (rel err per case: grep 'rel err' $OUT/tests_*.log)"
for t in tests_v3 tests_v3e tests_v3w tests_v3we; do
  echo "$t: $(grep -E '^\[  (PASSED|FAILED)  \]' "$OUT/$t.log" 2>/dev/null | tr '\n' ' ')"
  grep -E '^\[  FAILED  \]|prefill v3 shape|refused' "$OUT/$t.log" 2>/dev/null | head -20
done
for t in memcheck_v3w racecheck_v3w memcheck_v3e memcheck_v3we racecheck_v3we; do
  echo "$t: $(grep -hE "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$t.log" 2>/dev/null | tr '\n' ' ')"
done
echo "---- resources (v3 kernels: registers, spills)"
grep -E "Compiling|spill|Used" "$OUT/resources.txt" | sed -E 's/.*prefill_kernelILi([0-9]+)E[^N]*N[^E]*E(.*)EEEvNS2.*/hd\1 \2/' | head -80
echo "---- bench"
grep -E "^device|^pie " "$OUT/bench.log" 2>/dev/null
echo "---- prefill, TFLOP/s, same call (each shape's two passes; best = the best figure of any shape)"
cat "$OUT/peer.log" 2>/dev/null
