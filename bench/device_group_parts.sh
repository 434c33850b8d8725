#!/usr/bin/env bash
# bench/device_group_parts.sh — decode attention at GQA group 8 with two CTAs per KV head
# (DecodePlan::group_parts, PIE_DECODE_SPLIT_GROUP), one call: its kernel tests, its kernel rows
# against one CTA per KV head, Qwen3-30B-A3B's batch-1 ITL with and without it (and with the
# tensor-core kernel, PIE_DECODE_MMA_WIDE=8), a per-op trace of that step, then the engine's GPU
# tests on the build's defaults (every switch unset).
# Why: on the H100 (2026-12-06) Qwen3-30B-A3B's batch-1 attention took 18.6 µs a layer (22% of the
# step) against Qwen3-8B's 13.0 at group 4: the group-8 kernel holds 209 registers, so under
# programmatic dependent launch it cannot start beside the qkv GEMV's CTAs, and each CTA does
# twice the arithmetic of a group-4 one. With a bundle from before group parts the rows with the
# switch simply repeat the default (the old code ignores it), and the parts rows are absent.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT [PIE_PARTS_QUICK=1] bash bench/device_group_parts.sh
# (PIE_PARTS_QUICK=1: the tests and the batch-1 rows only, for a call of little device time.)
export SUM=$OUT/summary.txt LOGDIR=$OUT RUN_TAIL=6
source "$(dirname "$0")/device_lib.sh"
use_prebuilt || exit 1
export PYTHONUNBUFFERED=1
say "device: $(gpu_line)"
gt() { grep -E "OK \]|FAILED  \]|Failure|Expected|Which is|PASSED|SKIPPED|tests ran" "$LOGDIR/$1.log" | grep -v "^\[       OK" | head -${2:-20} | tee -a "$SUM"; }
MODEL8B=bench/models/Qwen3-8B MOE=bench/models/Qwen3-30B-A3B
if [ -x "$BUILD/tests/gpu/pie_gpu_test_hf" ]; then  # the transformers checkpoints, in the background
  run hf_reference 200 python3 tests/gpu/make_hf_reference.py --out /tmp/hfref --config-8b "$MODEL8B/config.json" \
    --moe --tries 2 &
  HFREF=$!
fi

# 1. The decode kernel tests (merge, cluster, early pages, RoPE inside, group parts), and the
# engine's fusion test (group parts: the RoPE inside bit-identical, logits close to one CTA).
if [ -x "$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge" ]; then
  run test_merge 150 "$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge" --gtest_color=no; gt test_merge
fi
if [ -x "$BUILD/tests/gpu/pie_gpu_test_fused_ops" ]; then
  # Quick: the decode attention's fusion tests alone (group parts, cluster/early pages, RoPE inside).
  F=$([ "${PIE_PARTS_QUICK:-0}" = 1 ] && echo "--gtest_filter=FusedOps.GroupParts*:FusedOps.Decode*:FusedOps.Rope*")
  run test_fused_ops 150 "$BUILD/tests/gpu/pie_gpu_test_fused_ops" --gtest_color=no $F
  grep -E "^\[fused\].*(split_group|against)" "$LOGDIR/test_fused_ops.log" | tee -a "$SUM"; gt test_fused_ops 12
fi
# 2. Kernel rows: batch 1 and 4 at group 8 (4 KV heads), one CTA per KV head (kinds 0: merge kernel,
# 3: cluster + early pages) against two (5: cluster + early pages + parts, 6: merge kernel + parts).
if [ -x "$BUILD/bench/cuda/pie_bench_cuda_decode" ]; then
  run bench_parts 120 "$BUILD/bench/cuda/pie_bench_cuda_decode" \
    '--benchmark_filter=BM_DecodeMerge<bf16>/[14]/(192|512|2048)/0/[0356]/[48]/'
  grep -E "^BM_DecodeMerge" "$LOGDIR/bench_parts.log" | sed 's/manual_time\/iterations:1//' | tee -a "$SUM"
fi
# 3. Batch-1 ITL (128 in / 128 out): default, the switch off, the tensor-core kernel; twice.
L="--load-format dummy --input-len 128 --output-len 128 --mode latency --num-iters 5 --num-iters-warmup 1 --max-num-seqs 8"
r() {  # TAG MODEL ENV... (KEY=VALUE, or nothing: the build's defaults)
  local tag=$1 m=$2; shift 2
  env -u PIE_DECODE_SPLIT_GROUP -u PIE_DECODE_SPLIT_GROUP4 -u PIE_DECODE_MMA_WIDE "$@" timeout 120 "$BUILD/examples/pie/pie_bench" "$m" $L 2>&1 |
    grep -E "^latency" | sed "s/^/[$tag] /" | tee -a "$SUM"
}
for rep in 1 2; do  # the switch set either way: the rows mean the same whatever the build's default
  r b1_moe_parts1 $MOE PIE_DECODE_SPLIT_GROUP=1
  r b1_moe_parts0 $MOE PIE_DECODE_SPLIT_GROUP=0
done
QUICK=${PIE_PARTS_QUICK:-0}
[ "$QUICK" = 1 ] || r b1_moe_mma8 $MOE PIE_DECODE_MMA_WIDE=8
for rep in $([ "$QUICK" = 1 ] && echo 1 || echo 1 2); do  # group 4 in two parts: opt-in
  r b1_8b_default $MODEL8B
  r b1_8b_parts4 $MODEL8B PIE_DECODE_SPLIT_GROUP4=1
done
[ "$QUICK" = 1 ] && { say done; exit 0; }
# 4. The per-op trace of the batch-1 MoE step with group parts (attention's share of it).
TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
if [ -f "$TRACER" ]; then
  # The profiler's shapes of Qwen3-30B-A3B (its defaults are Qwen3-8B's).
  PIE_DECODE_SPLIT_GROUP=1 trace_profile moe_b1 150 1 moe_b1 --hidden 2048 --q-size 4096 --kv-size 512 --layers 48 \
    --experts 128 --moe-intermediate 768 --top-k 8 --vocab 151936 -- "$BUILD/examples/pie/pie_bench" "$MOE" $L
fi
# 5. The engine's GPU tests on the build's defaults (the latency paths on small grids: group parts
# for group-8 checkpoints at small batches).
for t in runner async_scheduling; do
  [ -x "$BUILD/tests/gpu/pie_gpu_test_$t" ] || continue
  run "test_$t" 120 "$BUILD/tests/gpu/pie_gpu_test_$t" --gtest_color=no; gt "test_$t" 12
done
if [ -n "${HFREF:-}" ]; then
  wait "$HFREF"
  PIE_GPU_HF_DIR=/tmp/hfref run test_hf 120 "$BUILD/tests/gpu/pie_gpu_test_hf" --gtest_color=no; gt test_hf 12
fi
say done
