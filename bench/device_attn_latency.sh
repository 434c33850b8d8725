#!/usr/bin/env bash
# bench/device_attn_latency.sh — batch-1 decode attention as latency (issues 14, 15, 20), in one GPU
# call within PIE_DEADLINE_S (default 540).
#
# Why: at batch 1 the last kernel traces charge decode attention + its split merge 8.6 µs a layer
# (Qwen3-8B, context ~192, H100) and 11.7 µs (Qwen3-30B-A3B, group 8), for K/V bytes that HBM
# moves in 0.2 µs. Two opt-in switches (ops/cuda/attention_decode_plan.hpp) attack the latency:
#   PIE_DECODE_EARLY_PAGES=1   the bulk copies of pages of earlier steps issued before the
#                              kernel's griddepcontrol.wait (under the RoPE kernel's tail)
#   PIE_DECODE_CLUSTER_MERGE=1 2–8 splits of a (sequence, KV head) as one thread-block cluster,
#                              merged in distributed shared memory: no merge kernel
#   PIE_FUSED_ROPE_ATTN=1      q/k norm + RoPE and the KV write inside the decode kernel (with
#                              -DPIE_DECODE_LATENCY=ON): no RoPE kernel at decode-only steps
# Steps: the decode merge tests (fused, cluster, early pages: bit-identical to the merge kernel),
# the engine's bit-identity tests with the switches, the runner against the CPU reference with
# both on; BM_DecodeMerge's cluster rows; `pie bench` batch 1 (Qwen3-8B, then Qwen3-30B-A3B) off,
# each switch, both, off again; kernel traces of batch 1 off / both; 2048 × (128, 128) off / both.
# Steps whose binary the bundle lacks are skipped (a call carries at most ~45 MB of bundle: the
# kernel binaries in one call, the engine's in another).
# Usage, in the repository root of the GPU machine, with a bundle of bench/device_bundle.sh:
#   PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_attn_latency.sh
set -u
OUT=${OUT:-/tmp/pie_attn_latency_out}
DEADLINE=${PIE_DEADLINE_S:-540}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=8 RUN_MIN_LEFT=15
source "$(dirname "$0")/device_lib.sh"  # say, run, use_prebuilt, gpu_line
gt() { grep -E "^\[fused|OK \]|FAILED  \]|Failure|Expected|Which is|PASSED|^\[gpu vs" "$LOGS/$1.log" | head -${2:-30} | tee -a "$SUM"; }
bench_lines() { grep -E "^(ceilings|latency|throughput|roofline|decode at batch (1|512):)" "$LOGS/$1.log" | sed "s/^/[$1] /" | tee -a "$SUM"; }
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
unset PIE_DECODE_EARLY_PAGES PIE_DECODE_CLUSTER_MERGE PIE_FUSED_ROPE_ATTN
say "device: $(gpu_line)"
use_prebuilt || { say "needs PIE_PREBUILT (bench/device_bundle.sh)"; exit 1; }

has() { [ -x "$BUILD/$1" ] || [ -f "$BUILD/$1" ]; }
if has tests/cuda/pie_cuda_test_attention_decode_merge; then
  run test_merge 150 "$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge" --gtest_color=no; gt test_merge 12
fi
if has bench/cuda/pie_bench_cuda_decode; then
  run bench_decode 90 "$BUILD/bench/cuda/pie_bench_cuda_decode" --benchmark_filter='BM_DecodeMerge'
  grep -E "cluster|2-kernel|ceilings|device" "$LOGS/bench_decode.log" > "$OUT/bench_decode_rows.txt"
  grep -E "b1 ctx192|ceil" "$OUT/bench_decode_rows.txt" | head -12 | tee -a "$SUM"
fi
if has tests/gpu/pie_gpu_test_fused_ops; then
  run test_fused_ops 150 "$BUILD/tests/gpu/pie_gpu_test_fused_ops" --gtest_color=no --gtest_filter='FusedOps.Decode*:FusedOps.Rope*'
  gt test_fused_ops 20
fi
if has tests/gpu/pie_gpu_test_runner; then
  PIE_DECODE_EARLY_PAGES=1 PIE_DECODE_CLUSTER_MERGE=1 run test_runner 90 "$BUILD/tests/gpu/pie_gpu_test_runner" \
    --gtest_color=no --gtest_filter='GpuRunner.MatchesCpuReferenceOverChunkedPrefillAndDecode:GpuRunner.GraphReplayMatchesEager'
  gt test_runner 8
fi
has examples/pie/pie_bench || { say "no pie_bench in this bundle: done"; tar -czf "$OUT/logs.tgz" -C "$OUT" logs; exit 0; }

M8=bench/models/Qwen3-8B MOE=bench/models/Qwen3-30B-A3B
B1=(--load-format dummy --input-len 128 --output-len 128 --mode latency --num-iters 3 --num-iters-warmup 1 --max-num-seqs 8)
b1() {  # NAME MODEL EARLY CLUSTER [ROPE]
  PIE_DECODE_EARLY_PAGES=$3 PIE_DECODE_CLUSTER_MERGE=$4 PIE_FUSED_ROPE_ATTN=${5:-0} run "$1" 50 \
    "$BUILD/examples/pie/pie_bench" "$2" "${B1[@]}"
  bench_lines "$1"
}
b1 b1_8b_off $M8 0 0
b1 b1_8b_early $M8 1 0
b1 b1_8b_cluster $M8 0 1
b1 b1_8b_both $M8 1 1
b1 b1_8b_rope $M8 1 1 1
b1 b1_8b_off2 $M8 0 0
b1 b1_moe_off $MOE 0 0
b1 b1_moe_both $MOE 1 1
b1 b1_moe_rope $MOE 1 1 1
TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
if [ -f "$TRACER" ]; then
  for sw in 0 1; do
    PIE_DECODE_EARLY_PAGES=$sw PIE_DECODE_CLUSTER_MERGE=$sw PIE_FUSED_ROPE_ATTN=$sw trace_profile "trace_b1_$sw" 45 1 "trace b1 8B $sw" -- \
      "$BUILD/examples/pie/pie_bench" $M8 --load-format dummy --input-len 128 --output-len 128 --mode latency \
      --num-iters 1 --num-iters-warmup 1 --max-num-seqs 8
  done
fi
THR=(--load-format dummy --input-len 128 --output-len 128 --mode throughput --num-prompts 2048 --max-num-seqs 512 --num-iters 2 --num-iters-warmup 1)
run thr_8b_off 60 "$BUILD/examples/pie/pie_bench" $M8 "${THR[@]}"; bench_lines thr_8b_off
PIE_DECODE_EARLY_PAGES=1 PIE_DECODE_CLUSTER_MERGE=1 PIE_FUSED_ROPE_ATTN=1 run thr_8b_both 60 "$BUILD/examples/pie/pie_bench" $M8 "${THR[@]}"
bench_lines thr_8b_both
say "done"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
