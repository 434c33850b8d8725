#!/usr/bin/env bash
# bench/device_attn_switches.sh — which decode latency switch costs what, per batch size (one call).
# Why: on 2026-12-05 (H100) all three switches together took batch-1 ITL down 1.2% (Qwen3-8B) and
# 2.3% (Qwen3-30B-A3B) but 2048 × (128, 128) down 2.9%; this call times each switch alone at
# batch 512 and the three together at batches 16 and 64 (the engine now takes them only on
# decode grids of one wave or less: DecodePlan::small_grid), then the host's cost at batch 256,
# synchronous and asynchronous, as the device's idle gap between steps. With the decode kernel
# test in the bundle, its merge/cluster/early-pages/RoPE grids first. The switches are set to 0
# or 1 on every run, so the rows mean the same with binaries from before and after the default.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT [PIE_SWITCHES_QUICK=1] bash bench/device_attn_switches.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT; source "$(dirname "$0")/device_lib.sh"; use_prebuilt || exit 1
say "device: $(gpu_line)"
# The decode kernel tests' merge, cluster, early-pages and RoPE grids, when the bundle has them.
if [ -x "$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge" ]; then
  timeout 150 "$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge" --gtest_color=no > "$OUT/test_merge.log" 2>&1
  say "test_merge: rc=$?"
  grep -E "FAILED|PASSED|tests ran" "$OUT/test_merge.log" | head -20 | tee -a "$SUM"
fi
B=$BUILD/examples/pie/pie_bench; M8=bench/models/Qwen3-8B; MOE=bench/models/Qwen3-30B-A3B
L="--load-format dummy --input-len 128 --output-len 128 --mode latency --num-iters 5 --num-iters-warmup 1 --max-num-seqs 8"
T="--load-format dummy --input-len 128 --output-len 128 --mode throughput"
r() {  # TAG MODEL EARLY CLUSTER ROPE ARGS... (each switch 0, 1, or - for unset: the build's default)
  local tag=$1 m=$2 e=$3 c=$4 ro=$5 kv; shift 5
  local envs=()
  for kv in "PIE_DECODE_EARLY_PAGES=$e" "PIE_DECODE_CLUSTER_MERGE=$c" "PIE_FUSED_ROPE_ATTN=$ro"; do
    [ "${kv#*=}" = "-" ] || envs+=("$kv")
  done
  env -u PIE_DECODE_EARLY_PAGES -u PIE_DECODE_CLUSTER_MERGE -u PIE_FUSED_ROPE_ATTN "${envs[@]}" timeout 90 "$B" $m "$@" 2>&1 |
    grep -E "^(latency|throughput|decode at batch)" | sed "s/^/[$tag e$e c$c r$ro] /" | tee -a "$SUM"
}
# PIE_SWITCHES_QUICK=1: the rows that decide, for a call of little device time (about 200 s).
if [ "${PIE_SWITCHES_QUICK:-0}" = 1 ]; then
  # The build's defaults (-) against everything off, then each switch alone where the loss was.
  for x in "- - -" "0 0 0" "- - -" "0 0 0"; do r b1_8b $M8 $x $L; done
  for x in "- - -" "0 0 0"; do r b1_moe $MOE $x $L; done
  # Group 8 at batch 1 on the tensor-core kernel (128 registers, 2 warps: it can launch under the
  # qkv GEMV, which the 209-register CUDA-core kernel cannot; the RoPE kernel then runs apart).
  PIE_DECODE_MMA_WIDE=8 r b1_moe_mma8 $MOE - - - $L
  for x in "- - -" "0 0 0" "0 0 1" "1 0 0"; do r b512 $M8 $x $T --num-prompts 2048 --max-num-seqs 512; done
else
  for x in "0 0 0" "0 1 1" "1 1 1" "0 0 0" "0 1 1"; do r b1_8b $M8 $x $L; done
  for x in "0 0 0" "0 1 1" "0 0 0" "0 1 1"; do r b1_moe $MOE $x $L; done
  for x in "0 0 0" "1 1 1" "0 0 0" "1 1 1"; do r b16 $M8 $x $T --num-prompts 64 --max-num-seqs 16; done
  for x in "0 0 0" "1 1 1" "0 0 0" "1 1 1"; do r b64 $M8 $x $T --num-prompts 256 --max-num-seqs 64; done
  for x in "0 0 0" "0 0 1" "1 0 0" "0 1 0" "0 0 0"; do r b512 $M8 $x $T --num-prompts 2048 --max-num-seqs 512; done
fi
# The host's cost at batch 256 (issue 15: < 2% of the step): synchronous, then asynchronous
# scheduling, with the device's idle gap between steps (StepTiming::device_idle_s).
r b256_sync $M8 - - - $T --num-prompts 1024 --max-num-seqs 256
r b256_async $M8 - - - $T --num-prompts 1024 --max-num-seqs 256 --async-scheduling
say done
