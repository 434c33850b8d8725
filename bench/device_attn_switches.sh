#!/usr/bin/env bash
# bench/device_attn_switches.sh — which decode latency switch costs what, per batch size (one call).
# Why: on 2026-12-05 (H100) all three switches together took batch-1 ITL down 1.2% (Qwen3-8B) and
# 2.3% (Qwen3-30B-A3B) but 2048 × (128, 128) down 2.9%; this call times each switch alone at
# batch 512 and the three together at batches 16 and 64, to set the batch up to which they pay.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_attn_switches.sh
export SUM=$OUT/summary.txt LOGDIR=$OUT; source "$(dirname "$0")/device_lib.sh"; use_prebuilt || exit 1
say "device: $(gpu_line)"
B=$BUILD/examples/pie/pie_bench; M8=bench/models/Qwen3-8B; MOE=bench/models/Qwen3-30B-A3B
L="--load-format dummy --input-len 128 --output-len 128 --mode latency --num-iters 5 --num-iters-warmup 1 --max-num-seqs 8"
T="--load-format dummy --input-len 128 --output-len 128 --mode throughput"
r() {  # TAG MODEL EARLY CLUSTER ROPE ARGS...
  local tag=$1 m=$2 e=$3 c=$4 ro=$5; shift 5
  PIE_DECODE_EARLY_PAGES=$e PIE_DECODE_CLUSTER_MERGE=$c PIE_FUSED_ROPE_ATTN=$ro timeout 90 "$B" $m "$@" 2>&1 |
    grep -E "^(latency|throughput|decode at batch)" | sed "s/^/[$tag e$e c$c r$ro] /" | tee -a "$SUM"
}
for x in "0 0 0" "0 1 1" "1 1 1" "0 0 0" "0 1 1"; do r b1_8b $M8 $x $L; done
for x in "0 0 0" "0 1 1" "0 0 0" "0 1 1"; do r b1_moe $MOE $x $L; done
for x in "0 0 0" "1 1 1" "0 0 0" "1 1 1"; do r b16 $M8 $x $T --num-prompts 64 --max-num-seqs 16; done
for x in "0 0 0" "1 1 1" "0 0 0" "1 1 1"; do r b64 $M8 $x $T --num-prompts 256 --max-num-seqs 64; done
for x in "0 0 0" "0 0 1" "1 0 0" "0 1 0" "0 0 0"; do r b512 $M8 $x $T --num-prompts 2048 --max-num-seqs 512; done
say done
