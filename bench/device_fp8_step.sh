#!/usr/bin/env bash
# bench/device_fp8_step.sh — the fp8 decode step's two candidates of 2026-12-06 (issue 18, issue 14),
# A/B in one GPU call within PIE_DEADLINE_S (default 560):
#   PIE_FP8_FLAT_GROUPS=1  SwiGLU's and the standalone quantization's 1×128-group codes from the flat
#                          kernel (ops/cuda/fp8_group_quant.cuh) instead of a CTA per row;
#   PIE_DECODE_PERSISTENT=1 the fp8 cache's decode attention as a persistent grid whose ring runs
#                          across (sequence, KV head) pairs (decode_mma_persistent_kernel).
# Why: the 22:17 UTC trace of the fp8 step at batch 512 (bench/device_step_profile.sh, H100) had
# SwiGLU at 21.9 µs a layer for 31.7 MB (the bf16 SwiGLU, a flat kernel: 12.8 µs for 37.7 MB) and
# decode attention at 89 µs a layer, 25% of the step.
# Steps, most wanted first: the bit-identity tests of both (Fp8Kernels.*, and the decode binary's
# DecodeAttentionPersistent.*); `pie bench` Qwen3-8B fp8 weights + fp8 cache 2048 × (128, 128) in
# the order base, flat, flat+persistent, base, flat+persistent, with bf16 once; per-channel
# weights (`--quantization fp8`) base and persistent; the engine's fp8
# tests under both switches; a kernel trace of the step at batch 512 with both; the producers'
# the fp8 cache's prefill through v3 (`pf`: its tests, per-channel 2048 × (128, 128) and
# 256 × (512, 256) with PIE_FP8_KV_PREFILL_STAGED 0/1 and bf16 once each, and both 2048 runs traced whole, split into steps
# with prompt tokens and decode-only steps); `short`: bench_prefill --short (v3's tile and persistent
# grids on many short prompts); Qwen3-30B-A3B 1024 × (128, 128) and batch 1 (issue 20); the producers' and the decode kernel's
# benches; 256 × (512, 256) base, flat+persistent and bf16; `rows`: the issue rows of Qwen3-8B (batch 1,
# 2048 × (128, 128), 256 × (512, 256), ShareGPT-like 1000) in bf16 and per-channel fp8 + fp8 cache;
# `trace4k`: 128 × (4096, 16) bf16 traced whole, split into steps with and without prompt tokens;
# `hf`: HF transformers at 256 × (512, 256) in static batches of 256; `kern`: bench_prefill (bundle root)
# with the SDPA peer, and pie_bench_cuda_decode's engine-path rows (issue 14's tables); `b1trace`:
# kernel traces of batch 1 (Qwen3-8B bf16 and per-channel fp8, Qwen3-30B-A3B), profiled per op;
# `w8a16`: the weight-only batch-1 fp8 GEMV (its tests, the GEMV chain bench, per-channel fp8 batch 1
# base / W8A16 / W8A16 with the norm fused / the quantized GEMV with the norm fused, W8_ROUNDS
# times, and a trace of W8A16 with the norm); `fp8all`: pie_gpu_test_fp8_gemv and pie_gpu_test_fp8
# whole, on the build's defaults; `w8rows`: the weight-only GEMV for 2-4 rows (its tests, the fp8
# engine tests under PIE_FP8_GEMV_W8A16_ROWS=4, the rows bench against cuBLASLt per projection,
# and batches of 2 and 4 with per-channel and
# 128x128-block fp8 weights, cuBLASLt (=1) against it (=4)); `flat`: the batch-1 GEMV's flat grids
# (variants 13-16: their tests, the per-projection and chain bench against variant 10, per-channel
# fp8 batch 1 under each, FLAT_ROUNDS times, and the engine's fp8 variant tests); `gflat`: the bf16
# GEMV's flat walk (PIE_GEMV_FLAT: its Gemv tests, bf16 batch 1 off/on/on with PIE_FUSED_SWIGLU, fp8 batch 1 with it and
# fp8 variant GFLAT_FP8, Qwen3-30B-A3B off/on, and traces of both); `flat14`: variant 14 as the
# default (the GEMV tests, the fp8 engine and kernel tests, fp8 batch 1 against variant 10 twice,
# bf16 and Qwen3-30B-A3B batch 1 with PIE_GEMV_FLAT 0/1/2, and the bf16 walk's test); `rows4`: the
# rows GEMV as the default (the fp8 engine and kernel tests, fp8 batch 1, batches 2 and 4); `rflat`:
# the rows GEMV on the flat walk (its tests, the rows bench, per-channel batches 2 and 4 under each
# PIE_FP8_ROWS_FLAT mode in RFLAT_MODES); `normw`: the norm GEMVs' weight before the wait (the fp8
# GEMV and bf16 GEMV tests, then batch 1 of bf16, per-channel fp8 and Qwen3-30B-A3B alternating
# with $PIE_BASE_BENCH, the build before it); `mflat`: Qwen3-30B-A3B batch 1 traced with
# PIE_GEMV_FLAT 0 and 1; `rnorm`: the norm inside the 2–4-row GEMV (the fp8 engine and kernel
# tests, decode at batches 2 and 4, per channel and 128 × 128 blocks, PIE_FP8_ROWS_NORM 0 and 1);
# `gflat3`: the bf16 flat walk at K ≤ 2,048 only (PIE_GEMV_FLAT=3: its test, Qwen3-30B-A3B batch 1
# against 0 and 1, FLAT_ROUNDS times, and Qwen3-8B, which it leaves as it was); `defaults24`: the
# twenty-fourth session's defaults once (the flat walk's test, batch 1 of Qwen3-30B-A3B with and
# without the walk, of Qwen3-8B bf16 and fp8, fp8 decode at batches 2 and 4); `split1`: batch-1 decode
# attention as one split per part (PIE_DECODE_SMALL_SPLIT_TOKENS=512 against the default 64, and 256 between
# them: SPLIT1_TOKENS; the runner and fused-ops GPU tests under 512, then batch 1 of Qwen3-8B bf16 and
# Qwen3-30B-A3B, SPLIT1_ROUNDS times, and per-channel fp8 once at 64 and 512).
# `nano1k`: 2048 × (128, 128) at 512 and 1024 sequences (vLLM's default on 70+ GiB cards), at 1024 with
# --nano-batches 2 (and PIE_NANO_STAGGER=3 PIE_NANO_GEMM_SMS=$NANO_SMS), at 1024 with 16,384 tokens a step,
# per-channel fp8 with the fp8 cache at 512 and 1024,
# and the overlapped run traced whole; `nano2`: the nano-batch GPU tests, then 2048 × (128, 128) at the
# build's batch defaults (vLLM's, no --max-num-seqs) whole, split, split with PIE_NANO_PIPELINE=1 (and
# PIE_NANO_GEMM_SMS=$PIPE_SMS), fp8 whole and pipelined, batch 1 at the defaults, and the pipeline traced
# (bench/trace_overlap.py).
# Usage, in the repository root of the GPU machine:
#   PIE_PREBUILT=.device/bundle.txz OUT=dir bash bench/device_fp8_step.sh
set -u
OUT=${OUT:-/tmp/pie_fp8_step_out}
export SUM=$OUT/summary.txt LOGDIR=$OUT/logs RUN_TAIL=8
DEADLINE=${PIE_DEADLINE_S:-560}
mkdir -p "$LOGDIR"
source "$(dirname "$0")/device_lib.sh"
device_start
steps=" ${PIE_STEPS:-test t2048 pc engine trace moe bench t256} "
T=$BUILD/tests/gpu/pie_gpu_test_fp8
D=$BUILD/tests/cuda/pie_cuda_test_attention_decode_merge  # or the persistent tests alone (built by hand with
[ -x "$D" ] || D=$BUILD/tests/cuda/pie_cuda_test_decode_persistent  # -DPIE_DECODE_TEST_PERSISTENT_ONLY)
if [[ $steps == *" test "* ]]; then
  [ -x "$T" ] && { run test_fp8 150 "$T" --gtest_color=no --gtest_filter='Fp8Kernels.*'; gtest_summary test_fp8 20; }
  [ -x "$D" ] && { run test_decode 150 "$D" --gtest_color=no; gtest_summary test_decode 20; }
fi
BENCH=$BUILD/examples/pie/pie_bench
FP8=/tmp/qwen3-8b-fp8; fp8_config "$MODEL8B" "$FP8"
tput() {  # TAG FLAT PERSISTENT MODEL PROMPTS IN OUT SEQS [args...]
  local tag=$1 f=$2 ps=$3 m=$4 n=$5 i=$6 o=$7 s=$8; shift 8
  run "tput_$tag" 100 env PIE_FP8_FLAT_GROUPS=$f PIE_DECODE_PERSISTENT=$ps PIE_FP8_KV_PREFILL_STAGED=${STAGED:-0} \
    "$BENCH" "$m" --load-format dummy \
    --mode throughput --input-len "$i" --output-len "$o" --num-prompts "$n" --max-num-seqs "$s" "$@"
  grep -E "^(throughput|roofline|decode at|batch:)" "$LOGDIR/tput_$tag.log" | sed "s/^/[$tag] /" | tee -a "$SUM"
}
fp8_small_ab() {  # VAR TAG SUFFIX VALUE...: fp8 decode at batches 2 and 4 (per channel, 128 × 128 blocks), VAR at each VALUE
  local var=$1 tag=$2 sfx=$3 B v; shift 3
  for B in 2 4; do
    for v in "$@"; do
      (export "$var=$v"
       tput "$tag${v}_pc_b$B$sfx" 0 0 "$MODEL8B" "$B" 128 128 "$B" --quantization fp8
       tput "$tag${v}_blk_b$B$sfx" 0 0 "$FP8" "$B" 128 128 "$B")
    done
  done
}
gemv_bench() {  # TAG FILTER: pie_bench_cuda_fp8_gemv's rows that match FILTER, into the summary
  local gb=$BUILD/bench/cuda/pie_bench_cuda_fp8_gemv
  [ -x "$gb" ] && run "$1" 150 "$gb" --benchmark_color=false --benchmark_filter="$2" &&
    grep -E "copy" "$LOGDIR/$1.log" | grep -vE "^BM_|^-|Benchmark" | tee -a "$SUM" > /dev/null
}
if [[ $steps == *" t2048 "* ]]; then
  tput base1 0 0 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput flat1 1 0 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput both1 1 1 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput base2 0 0 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput both2 1 1 "$FP8" 2048 128 128 512 --kv-cache-dtype fp8
  tput bf16 0 0 "$MODEL8B" 2048 128 128 512
fi
if [[ $steps == *" pc "* ]]; then  # per-channel weights (`--quantization fp8`: per-token activations, no groups)
  tput pc_base 0 0 "$MODEL8B" 2048 128 128 512 --quantization fp8 --kv-cache-dtype fp8
  tput pc_pers 0 1 "$MODEL8B" 2048 128 128 512 --quantization fp8 --kv-cache-dtype fp8
fi
if [[ $steps == *" pf "* ]]; then  # the fp8 cache's prefill through v3 (PIE_FP8_KV_PREFILL_STAGED)
  P=$BUILD/tests/cuda/pie_cuda_test_prefill_fp8_kv
  [ -x "$P" ] && { run test_pf8 120 "$P" --gtest_color=no; gtest_summary test_pf8 30;
    grep -E "^\[prefill fp8" "$LOGDIR/test_pf8.log" | head -4 | tee -a "$SUM"; }
  [ -x "$T" ] && { run engine_pf8 120 "$T" --gtest_color=no --gtest_filter='Fp8Engine.Fp8CachePrefillStaged*';
    gtest_summary engine_pf8 10; grep -E "^\[fp8 kv prefill" "$LOGDIR/engine_pf8.log" | tee -a "$SUM"; }
  for r in 1 2; do
    STAGED=0 tput pc_direct$r 0 0 "$MODEL8B" 2048 128 128 512 --quantization fp8 --kv-cache-dtype fp8
    STAGED=1 tput pc_staged$r 0 0 "$MODEL8B" 2048 128 128 512 --quantization fp8 --kv-cache-dtype fp8
  done
  tput pf_bf16 0 0 "$MODEL8B" 2048 128 128 512
  STAGED=0 tput pc256_direct 0 0 "$MODEL8B" 256 512 256 256 --quantization fp8 --kv-cache-dtype fp8
  STAGED=1 tput pc256_staged 0 0 "$MODEL8B" 256 512 256 256 --quantization fp8 --kv-cache-dtype fp8
  tput pf_bf16_256 0 0 "$MODEL8B" 256 512 256 256
  TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
  for st in 0 1; do  # where the whole 2048 run goes: steps with prompt tokens against decode-only
    [ -f "$TRACER" ] || break
    run "trace_run$st" 90 env CUDA_INJECTION64_PATH="$(realpath "$TRACER")" PIE_KERNEL_TRACE="$LOGDIR/trace_run$st.csv" \
      PIE_FP8_KV_PREFILL_STAGED=$st "$BENCH" "$MODEL8B" --load-format dummy --mode throughput --input-len 128 \
      --output-len 128 --num-prompts 2048 --max-num-seqs 512 --quantization fp8 --kv-cache-dtype fp8
    python3 bench/nsys_decode_profile.py "$LOGDIR/trace_run$st.csv" --run-split > "$LOGDIR/split_run$st.txt" 2>&1
    sed "s/^/[run split staged=$st] /" "$LOGDIR/split_run$st.txt" | head -36 | tee -a "$SUM"
    gzip -f "$LOGDIR/trace_run$st.csv"
  done
fi
if [[ $steps == *" short "* ]]; then  # many short prompts a launch: v3's grids, mma.sync, fp8 both ways
  # bench_prefill is built by `bench/cuda/prefill_ab.sh build DIR` (not CMake); put it in the bundle's root
  [ -x "$BUILD/bench_prefill" ] && run short 60 "$BUILD/bench_prefill" --short &&
    grep -E "^pie short" "$LOGDIR/short.log" | tee -a "$SUM" > /dev/null
fi
if [[ $steps == *" moe "* ]]; then  # issue 20's rows on whatever card came (the defaults)
  tput moe1024 0 0 "$MOE" 1024 128 128 1024
  run moe_b1 100 "$BENCH" "$MOE" --load-format dummy --mode latency --input-len 128 --output-len 128 --num-iters 5
  grep -E "^latency" "$LOGDIR/moe_b1.log" | sed "s/^/[moe b1] /" | tee -a "$SUM"
fi
if [[ $steps == *" rows "* ]]; then  # every issue's engine row on the card that came (defaults; issues 15, 18, 20)
  rows=" ${ROWS:-b1 b1fp8 2048 2048fp8 256 256fp8 sharegpt 4096} "
  [[ $rows == *" b1 "* ]] && itl b1_bf16 "$MODEL8B"
  [[ $rows == *" b1fp8 "* ]] && ITL_ARGS="--quantization fp8" itl b1_fp8pc "$MODEL8B"
  [[ $rows == *" 2048 "* ]] && tput r2048_bf16 0 0 "$MODEL8B" 2048 128 128 512
  [[ $rows == *" 2048fp8 "* ]] && STAGED=1 tput r2048_fp8 0 0 "$MODEL8B" 2048 128 128 512 --quantization fp8 --kv-cache-dtype fp8
  [[ $rows == *" 256 "* ]] && tput r256_bf16 0 0 "$MODEL8B" 256 512 256 256
  [[ $rows == *" 256fp8 "* ]] && STAGED=1 tput r256_fp8 0 0 "$MODEL8B" 256 512 256 256 --quantization fp8 --kv-cache-dtype fp8
  [[ $rows == *" sharegpt "* ]] && tput rsharegpt_bf16 0 0 "$MODEL8B" 1000 256 256 512 --dataset-name sharegpt
  [[ $rows == *" 4096 "* ]] && tput r4096_bf16 0 0 "$MODEL8B" 128 4096 16 128
fi
if [[ $steps == *" nano1k "* ]]; then  # issue 15: 2048 × (128, 128) at vLLM's 1024 sequences (its H100/H200 default), nano-batch overlap at 1024
  nano_tput() { tput "$@"; grep -E "^nano-batch" "$LOGDIR/tput_$1.log" | sed "s/^/[$1] /" | tee -a "$SUM"; }
  nano_tput n512 0 0 "$MODEL8B" 2048 128 128 512
  nano_tput n1024 0 0 "$MODEL8B" 2048 128 128 1024
  nano_tput n1024nano 0 0 "$MODEL8B" 2048 128 128 1024 --nano-batches 2
  (export PIE_NANO_STAGGER=3 PIE_NANO_GEMM_SMS=${NANO_SMS:-108}
   nano_tput n1024nanos 0 0 "$MODEL8B" 2048 128 128 1024 --nano-batches 2)
  nano_tput n1024t16k 0 0 "$MODEL8B" 2048 128 128 1024 --max-num-batched-tokens 16384
  STAGED=1 tput n512fp8 0 0 "$MODEL8B" 2048 128 128 512 --quantization fp8 --kv-cache-dtype fp8
  STAGED=1 tput n1024fp8 0 0 "$MODEL8B" 2048 128 128 1024 --quantization fp8 --kv-cache-dtype fp8
  if [ -f "$BUILD/bench/cuda/libpie_kernel_trace.so" ] && [ -n "${NANO_TRACE:-1}" ]; then  # where the overlapped steps go
    run trace_nano 120 env CUDA_INJECTION64_PATH="$(realpath "$BUILD/bench/cuda/libpie_kernel_trace.so")" \
      PIE_KERNEL_TRACE="$LOGDIR/trace_nano.csv" "$BENCH" "$MODEL8B" --load-format dummy --mode throughput \
      --input-len 128 --output-len 128 --num-prompts 2048 --max-num-seqs 1024 --nano-batches 2
    python3 bench/nsys_decode_profile.py "$LOGDIR/trace_nano.csv" --run-split > "$LOGDIR/split_nano.txt" 2>&1
    sed "s/^/[run split nano1024] /" "$LOGDIR/split_nano.txt" | head -40 | tee -a "$SUM"
    gzip -f "$LOGDIR/trace_nano.csv"
  fi
fi
if [[ $steps == *" nano2 "* ]]; then  # vLLM's batch defaults (no --max-num-seqs) and the nano-batch layer pipeline
  NB=$BUILD/tests/gpu/pie_gpu_test_nano_batches
  [ -x "$NB" ] && { run test_nano 200 "$NB" --gtest_color=no; gtest_summary test_nano 14;
    grep -E "^\[nano batches\]" "$LOGDIR/test_nano.log" | tee -a "$SUM"; }
  dtput() {  # TAG [pie_bench args...]: 2048 × (128, 128) at the build's batch defaults; env from DT_ENV
    local tag=$1; shift
    run "tput_$tag" 100 env PIE_FP8_KV_PREFILL_STAGED=1 ${DT_ENV:-} "$BENCH" "$MODEL8B" --load-format dummy \
      --mode throughput --input-len 128 --output-len 128 --num-prompts 2048 "$@"
    grep -E "^(throughput|roofline|decode at|batch:|nano-batch)" "$LOGDIR/tput_$tag.log" | sed "s/^/[$tag] /" | tee -a "$SUM"
  }
  FP8ARGS="--quantization fp8 --kv-cache-dtype fp8"
  dtput d_bf16
  dtput d_bf16_nano --nano-batches 2
  DT_ENV="PIE_NANO_PIPELINE=1" dtput d_bf16_pipe --nano-batches 2
  DT_ENV="PIE_NANO_PIPELINE=1 PIE_NANO_GEMM_SMS=${PIPE_SMS:-112}" dtput d_bf16_pipesms --nano-batches 2
  dtput d_fp8 $FP8ARGS
  DT_ENV="PIE_NANO_PIPELINE=1" dtput d_fp8_pipe $FP8ARGS --nano-batches 2
  itl b1_bf16_defaults "$MODEL8B"
  if [ -f "$BUILD/bench/cuda/libpie_kernel_trace.so" ]; then  # the pipeline's overlap, by kind of kernel
    run trace_pipe 120 env PIE_NANO_PIPELINE=1 CUDA_INJECTION64_PATH="$(realpath "$BUILD/bench/cuda/libpie_kernel_trace.so")" \
      PIE_KERNEL_TRACE="$LOGDIR/trace_pipe.csv" "$BENCH" "$MODEL8B" --load-format dummy --mode throughput \
      --input-len 128 --output-len 128 --num-prompts 2048 --nano-batches 2
    python3 bench/trace_overlap.py "$LOGDIR/trace_pipe.csv" | sed "s/^/[overlap pipeline] /" | tee -a "$SUM"
    gzip -f "$LOGDIR/trace_pipe.csv"
  fi
fi
if [[ $steps == *" fp8all "* ]]; then  # the fp8 GPU tests on the build's defaults, whole
  [ -x "$BUILD/tests/gpu/pie_gpu_test_fp8_gemv" ] && { run all_gemv 120 "$BUILD/tests/gpu/pie_gpu_test_fp8_gemv" --gtest_color=no;
    gtest_summary all_gemv 12; }
  [ -x "$T" ] && { run all_fp8 280 "$T" --gtest_color=no; gtest_summary all_fp8 24;
    grep -E "^\[fp8 (gpu vs cpu|gemm vs cpu)\]" "$LOGDIR/all_fp8.log" | head -12 | tee -a "$SUM"; }
fi
if [[ $steps == *" w8a16 "* ]]; then  # the weight-only batch-1 fp8 GEMV (PIE_FP8_GEMV_W8A16), with the norm fused (PIE_FP8_GEMV_NORM)
  G=$BUILD/tests/gpu/pie_gpu_test_fp8_gemv
  [ -x "$G" ] && { run test_gemv 120 "$G" --gtest_color=no; gtest_summary test_gemv 12;
    grep -E "^\[fp8 gemv w8a16\]" "$LOGDIR/test_gemv.log" | head -6 | tee -a "$SUM"; }
  [ -x "$T" ] && { run engine_w8 150 env PIE_FP8_GEMV_W8A16=1 PIE_FP8_GEMV_NORM=1 "$T" --gtest_color=no \
      --gtest_filter='Fp8Engine.PerChannel*:Fp8Engine.Published*:Fp8Engine.Transformers*:Fp8Engine.DummyFp8*';
    gtest_summary engine_w8 12; grep -E "^\[fp8" "$LOGDIR/engine_w8.log" | head -8 | tee -a "$SUM"; }
  gemv_bench gemvbench 'BM_Fp8GemvChain/10/|BM_Fp8Gemv/(-1|10)/'
  for r in $(seq "${W8_ROUNDS:-2}"); do
    ITL_ARGS="--quantization fp8" itl w8_base$r "$MODEL8B" PIE_FP8_GEMV_W8A16=0
    ITL_ARGS="--quantization fp8" itl w8_on$r "$MODEL8B" PIE_FP8_GEMV_W8A16=1
    ITL_ARGS="--quantization fp8" itl w8_norm$r "$MODEL8B" PIE_FP8_GEMV_W8A16=1 PIE_FP8_GEMV_NORM=1
    ITL_ARGS="--quantization fp8" itl q_norm$r "$MODEL8B" PIE_FP8_GEMV_W8A16=0 PIE_FP8_GEMV_NORM=1
  done
  if [ -f "$BUILD/bench/cuda/libpie_kernel_trace.so" ]; then
    TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
    copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
    trace_profile w8t_norm 60 1 "b1 fp8pc w8a16+norm" --copy-tbps $copy --weight-bytes 1 -- env PIE_FP8_GEMV_W8A16=1 \
      PIE_FP8_GEMV_NORM=1 "$BENCH" "$MODEL8B" --load-format dummy --mode latency --input-len 128 --output-len 128 \
      --num-iters 1 --num-iters-warmup 1 --max-num-seqs 8 --quantization fp8
  fi
fi
if [[ $steps == *" w8rows "* ]]; then  # the weight-only GEMV for 2-4 rows (PIE_FP8_GEMV_W8A16_ROWS) against cuBLASLt
  G=$BUILD/tests/gpu/pie_gpu_test_fp8_gemv
  [ -x "$G" ] && { run rows_gemv 120 "$G" --gtest_color=no; gtest_summary rows_gemv 12; }
  [ -x "$T" ] && { run rows_fp8 200 env PIE_FP8_GEMV_W8A16_ROWS=4 "$T" --gtest_color=no \
      --gtest_filter='Fp8Kernels.GemmAndGemv*:Fp8Engine.PerChannel*:Fp8Engine.DummyFp8*:Fp8Engine.Fp8WeightsWith*';
    gtest_summary rows_fp8 12; }
  gemv_bench rowsbench 'BM_Fp8Rows/./[0-3]/[01]/'
  fp8_small_ab PIE_FP8_GEMV_W8A16_ROWS rows "" 1 4
fi
if [[ $steps == *" flat "* ]]; then  # the batch-1 fp8 GEMV's flat grids (variants 13-16, PIE_FP8_GEMV) against 10
  G=$BUILD/tests/gpu/pie_gpu_test_fp8_gemv
  [ -x "$G" ] && { run flat_gemv 150 "$G" --gtest_color=no; gtest_summary flat_gemv 12; }
  gemv_bench flatbench 'BM_Fp8GemvChain/(10|13|14|15|16)/(3|4)/|BM_Fp8Gemv/(10|13|14|15|16)/(3|4)/'
  for r in $(seq "${FLAT_ROUNDS:-2}"); do
    for v in ${FLAT_VARIANTS:-10 13 14 15 16}; do
      ITL_ARGS="--quantization fp8" itl "flat_v${v}_$r" "$MODEL8B" PIE_FP8_GEMV=$v
    done
  done
  [ -x "$T" ] && { run flat_fp8 200 "$T" --gtest_color=no \
      --gtest_filter='Fp8Engine.GemvVariants*:Fp8Engine.PerChannel*:Fp8Engine.DummyFp8*';
    gtest_summary flat_fp8 12; }
fi
if [[ $steps == *" flat14 "* ]]; then  # variant 14 (c2u4-nw8-flat) as Fp8Gemm's default: the tests, batch-1 rows
  G=$BUILD/tests/gpu/pie_gpu_test_fp8_gemv
  [ -x "$G" ] && { run f14_gemv 90 "$G" --gtest_color=no; gtest_summary f14_gemv 12; }
  [ -x "$T" ] && { run f14_fp8 200 "$T" --gtest_color=no --gtest_filter='Fp8Engine.*:Fp8Kernels.*-Fp8Engine.GemvVariants*';
    gtest_summary f14_fp8 16; grep -E "^\[fp8 (gpu vs cpu|gemm vs cpu)\]" "$LOGDIR/f14_fp8.log" | head -6 | tee -a "$SUM"; }
  for r in 1 2; do
    ITL_ARGS="--quantization fp8" itl "f14_fp8_default$r" "$MODEL8B"
    ITL_ARGS="--quantization fp8" itl "f14_fp8_v10_$r" "$MODEL8B" PIE_FP8_GEMV=10
  done
  itl f14_bf16 "$MODEL8B"
  for r in 1 2; do
    itl "f14_moe$r" "$MOE"
    itl "f14_moe_gflat1_$r" "$MOE" PIE_GEMV_FLAT=1
    itl "f14_moe_gflat2_$r" "$MOE" PIE_GEMV_FLAT=2
  done
  itl f14_bf16_gflat2 "$MODEL8B" PIE_GEMV_FLAT=2
  GT=$BUILD/tests/cuda/pie_cuda_test_gemm
  [ -x "$GT" ] && { run f14_gemm 120 "$GT" --gtest_color=no --gtest_filter='Gemv.Flat*'; gtest_summary f14_gemm 8; }
fi
if [[ $steps == *" rows4 "* ]]; then  # the rows GEMV as the default (2-4 rows): the fp8 tests, batches 1, 2, 4
  [ -x "$T" ] && { run r4_fp8 200 "$T" --gtest_color=no --gtest_filter='Fp8Engine.*:Fp8Kernels.*-Fp8Engine.GemvVariants*';
    gtest_summary r4_fp8 16; grep -E "^\[fp8 (gpu vs cpu|gemm vs cpu)\]" "$LOGDIR/r4_fp8.log" | head -6 | tee -a "$SUM"; }
  ITL_ARGS="--quantization fp8" itl r4_fp8_b1 "$MODEL8B"
  for B in 2 4; do
    tput "r4_pc_b$B" 0 0 "$MODEL8B" "$B" 128 128 "$B" --quantization fp8
    tput "r4_blk_b$B" 0 0 "$FP8" "$B" 128 128 "$B"
  done
fi
if [[ $steps == *" rflat "* ]]; then  # the multi-row GEMV on the flat walk (PIE_FP8_ROWS_FLAT) against its row groups
  G=$BUILD/tests/gpu/pie_gpu_test_fp8_gemv
  [ -x "$G" ] && { run rf_gemv 90 "$G" --gtest_color=no --gtest_filter='Fp8Gemv.WeightOnlyRows*'; gtest_summary rf_gemv 8; }
  gemv_bench rfbench 'BM_Fp8Rows/./[0-3]/[12]/'
  for B in 2 4; do
    for f in ${RFLAT_MODES:-0 1}; do
      PIE_FP8_ROWS_FLAT=$f tput "rf${f}_pc_b$B" 0 0 "$MODEL8B" "$B" 128 128 "$B" --quantization fp8
    done
  done
fi
if [[ $steps == *" normw "* ]]; then  # the norm's weight before the wait (+ W8A16's halves from registers) against $PIE_BASE_BENCH
  G=$BUILD/tests/gpu/pie_gpu_test_fp8_gemv
  [ -x "$G" ] && { run nw_fp8gemv 150 "$G" --gtest_color=no; gtest_summary nw_fp8gemv 10; }
  GT=$BUILD/tests/cuda/pie_cuda_test_gemm
  [ -x "$GT" ] && { run nw_gemv 150 "$GT" --gtest_color=no --gtest_filter='Gemv.*'; gtest_summary nw_gemv 10; }
  BASE=/tmp/pie_base  # a tarball of pie_base/pie_bench, the build before the change
  [ -n "${PIE_BASE_BENCH:-}" ] && [ -f "$PIE_BASE_BENCH" ] && rm -rf "$BASE" &&
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$PIE_BASE_BENCH" /tmp
  for r in $(seq "${NORMW_ROUNDS:-2}"); do
    for side in base new; do
      b=$BUILD/examples/pie/pie_bench; [ "$side" = base ] && b=$BASE/pie_bench
      [ -x "$b" ] || continue
      ITL_BENCH=$b ITL_ARGS="--quantization fp8" itl "nw_fp8_$side$r" "$MODEL8B"
      ITL_BENCH=$b itl "nw_bf16_$side$r" "$MODEL8B"
      ITL_BENCH=$b itl "nw_moe_$side$r" "$MOE"
    done
  done
fi
if [[ $steps == *" rnorm "* ]]; then  # 2–4 rows' residual add + RMSNorm inside the rows GEMV (PIE_FP8_ROWS_NORM): tests, batches 2 and 4
  [ -x "$T" ] && { run rn_fp8 240 "$T" --gtest_color=no \
    --gtest_filter='Fp8Engine.RowsNorm*:Fp8Engine.PerChannel*:Fp8Engine.DummyFp8*:Fp8Engine.Fp8WeightsWith*:Fp8Kernels.*'
    gtest_summary rn_fp8 12; }
  G=$BUILD/tests/gpu/pie_gpu_test_fp8_gemv
  [ -x "$G" ] && { run rn_gemv 150 "$G" --gtest_color=no; gtest_summary rn_gemv 12; }
  fp8_small_ab PIE_FP8_ROWS_NORM rn "" 0 1
fi
if [[ $steps == *" rnormb "* ]]; then  # the rows norm's decode steps alone (no tests), RNORM_ROUNDS rounds, alternating
  for r in $(seq "${RNORM_ROUNDS:-2}"); do fp8_small_ab PIE_FP8_ROWS_NORM rb ".$r" 0 1; done
fi
if [[ $steps == *" split1 "* ]]; then  # batch-1 decode attention as one split per part (PIE_DECODE_SMALL_SPLIT_TOKENS=512): no cluster merge
  R=$BUILD/tests/gpu/pie_gpu_test_runner
  [ -x "$R" ] && { run s1_runner 200 env PIE_DECODE_SMALL_SPLIT_TOKENS=512 "$R" --gtest_color=no; gtest_summary s1_runner 12; }
  F=$BUILD/tests/gpu/pie_gpu_test_fused_ops
  [ -x "$F" ] && { run s1_fused 200 env PIE_DECODE_SMALL_SPLIT_TOKENS=512 "$F" --gtest_color=no; gtest_summary s1_fused 12; }
  for r in $(seq "${SPLIT1_ROUNDS:-2}"); do
    for t in ${SPLIT1_TOKENS:-64 512 256}; do
      itl "s1_bf16_t$t.$r" "$MODEL8B" PIE_DECODE_SMALL_SPLIT_TOKENS=$t
      itl "s1_moe_t$t.$r" "$MOE" PIE_DECODE_SMALL_SPLIT_TOKENS=$t
    done
  done
  for t in 64 512; do ITL_ARGS="--quantization fp8" itl "s1_fp8_t$t" "$MODEL8B" PIE_DECODE_SMALL_SPLIT_TOKENS=$t; done
fi
if [[ $steps == *" gflat3 "* ]]; then  # the bf16 flat walk where N or K ≤ 2,048 (PIE_GEMV_FLAT=3, the default): its test, Qwen3-30B-A3B batch 1
  GT=$BUILD/tests/cuda/pie_cuda_test_gemm
  [ -x "$GT" ] && { run g3_test 120 "$GT" --gtest_color=no --gtest_filter='Gemv.FlatWalk*'; gtest_summary g3_test 6; }
  for r in $(seq "${FLAT_ROUNDS:-2}"); do
    for f in 0 1 3; do itl "g3_moe_flat$f.$r" "$MOE" PIE_GEMV_FLAT=$f; done
  done
  itl g3_bf16_flat0 "$MODEL8B" PIE_GEMV_FLAT=0
  itl g3_bf16_flat3 "$MODEL8B" PIE_GEMV_FLAT=3
fi
if [[ $steps == *" defaults24 "* ]]; then  # the twenty-fourth session's defaults: the flat walk's test, batch 1 of each model, fp8 batches 2 and 4
  GT=$BUILD/tests/cuda/pie_cuda_test_gemm
  [ -x "$GT" ] && { run d24_test 120 "$GT" --gtest_color=no --gtest_filter='Gemv.FlatWalk*'; gtest_summary d24_test 6; }
  itl d24_moe "$MOE"
  itl d24_moe_flat0 "$MOE" PIE_GEMV_FLAT=0
  itl d24_moe_again "$MOE"
  itl d24_bf16 "$MODEL8B"
  ITL_ARGS="--quantization fp8" itl d24_fp8 "$MODEL8B"
  for B in 2 4; do tput "d24_pc_b$B" 0 0 "$MODEL8B" "$B" 128 128 "$B" --quantization fp8; done
fi
if [[ $steps == *" mflat "* ]] && [ -f "$BUILD/bench/cuda/libpie_kernel_trace.so" ]; then  # Qwen3-30B-A3B batch 1 traced, PIE_GEMV_FLAT 0 and 1
  TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
  copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
  L1="--load-format dummy --mode latency --input-len 128 --output-len 128 --num-iters 1 --num-iters-warmup 1 --max-num-seqs 8"
  for f in 0 1; do
    trace_profile "mflat_t$f" 90 1 "b1 moe flat $f" --copy-tbps $copy --hidden 2048 --q-size 4096 --kv-size 512 \
      --layers 48 --experts 128 --moe-intermediate 768 --top-k 8 --vocab 151936 -- env PIE_GEMV_FLAT=$f "$BENCH" "$MOE" $L1
  done
fi
if [[ $steps == *" gflat "* ]]; then  # the bf16 GEMV's flat walk (PIE_GEMV_FLAT): its tests, bf16 and fp8 batch 1, a trace
  GT=$BUILD/tests/cuda/pie_cuda_test_gemm
  [ -x "$GT" ] && { run gflat_test 150 "$GT" --gtest_color=no --gtest_filter='Gemv.*'; gtest_summary gflat_test 12; }
  for r in $(seq "${FLAT_ROUNDS:-2}"); do
    itl "gflat_bf16_off$r" "$MODEL8B" PIE_GEMV_FLAT=0
    itl "gflat_bf16_on$r" "$MODEL8B" PIE_GEMV_FLAT=1
    itl "gflat_bf16_swiglu$r" "$MODEL8B" PIE_GEMV_FLAT=1 PIE_FUSED_SWIGLU=1
    itl "gflat_moe_off$r" "$MOE" PIE_GEMV_FLAT=0
    itl "gflat_moe_on$r" "$MOE" PIE_GEMV_FLAT=1
    ITL_ARGS="--quantization fp8" itl "gflat_fp8_v${GFLAT_FP8:-13}_on$r" "$MODEL8B" PIE_GEMV_FLAT=1 PIE_FP8_GEMV=${GFLAT_FP8:-13}
  done
  if [ -f "$BUILD/bench/cuda/libpie_kernel_trace.so" ]; then
    TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
    copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
    L1="--load-format dummy --mode latency --input-len 128 --output-len 128 --num-iters 1 --num-iters-warmup 1 --max-num-seqs 8"
    trace_profile gflat_t_bf16 60 1 "b1 bf16 flat" --copy-tbps $copy -- env PIE_GEMV_FLAT=1 "$BENCH" "$MODEL8B" $L1
    trace_profile gflat_t_fp8 60 1 "b1 fp8pc flat" --copy-tbps $copy --weight-bytes 1 -- env PIE_GEMV_FLAT=1 \
      PIE_FP8_GEMV=${GFLAT_FP8:-13} "$BENCH" "$MODEL8B" $L1 --quantization fp8
  fi
fi
if [[ $steps == *" b1trace "* ]] && [ -f "$BUILD/bench/cuda/libpie_kernel_trace.so" ]; then  # where batch 1 goes (issues 15, 18, 20)
  TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
  copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
  L1="--load-format dummy --mode latency --input-len 128 --output-len 128 --num-iters 1 --num-iters-warmup 1 --max-num-seqs 8"
  trace_profile b1t_bf16 60 1 "b1 8B bf16" --copy-tbps $copy -- "$BENCH" "$MODEL8B" $L1
  trace_profile b1t_fp8 60 1 "b1 8B fp8pc" --copy-tbps $copy --weight-bytes 1 -- "$BENCH" "$MODEL8B" $L1 --quantization fp8
  trace_profile b1t_moe 90 1 "b1 moe" --copy-tbps $copy --hidden 2048 --q-size 4096 --kv-size 512 --layers 48 \
    --experts 128 --moe-intermediate 768 --top-k 8 --vocab 151936 -- "$BENCH" "$MOE" $L1
fi
if [[ $steps == *" trace4k "* ]] && [ -f "$BUILD/bench/cuda/libpie_kernel_trace.so" ]; then  # issue 14's end-to-end row, traced whole
  run trace_4k 120 env CUDA_INJECTION64_PATH="$(realpath "$BUILD/bench/cuda/libpie_kernel_trace.so")" \
    PIE_KERNEL_TRACE="$LOGDIR/trace_4k.csv" "$BENCH" "$MODEL8B" --load-format dummy --mode throughput \
    --input-len 4096 --output-len 16 --num-prompts 128 --max-num-seqs 128
  python3 bench/nsys_decode_profile.py "$LOGDIR/trace_4k.csv" --run-split > "$LOGDIR/split_4k.txt" 2>&1
  sed "s/^/[run split 4096x16] /" "$LOGDIR/split_4k.txt" | head -40 | tee -a "$SUM"
  gzip -f "$LOGDIR/trace_4k.csv"
fi
if [[ $steps == *" kern "* ]]; then  # issue 14's kernel rows: prefill v3 against SDPA (cuDNN, flash), decode shapes
  if [ -x "$BUILD/bench_prefill" ]; then
    run pfbench 150 "$BUILD/bench_prefill" && run pfpeer 150 python3 bench/prefill_peer.py "$LOGDIR/pfbench.log"
    awk '/^bf16 GEMM/{p=1} p' "$LOGDIR/pfpeer.log" | tee -a "$SUM" > /dev/null
  fi
  DBF=$BUILD/bench/cuda/pie_bench_cuda_decode
  [ -x "$DBF" ] && run decbench 150 "$DBF" --benchmark_color=false --benchmark_filter='BM_DecodeAttention' &&
    grep -E "copy|decode" "$LOGDIR/decbench.log" | tee -a "$SUM" > /dev/null
fi
if [[ $steps == *" hf "* ]]; then  # issue 15's peer: HF transformers generate, static batches of 256 (same card)
  run hf256 170 python3 bench/compare_hf.py "$MODEL8B" throughput:256:512:256:256 --output-json "$OUT/hf.jsonl"
  grep -E "^\{" "$LOGDIR/hf256.log" | sed "s/^/[hf 256] /" | tee -a "$SUM"
fi
if [[ $steps == *" engine "* ]] && [ -x "$T" ]; then
  run engine_fp8 120 env PIE_FP8_FLAT_GROUPS=1 PIE_DECODE_PERSISTENT=1 "$T" --gtest_color=no --gtest_filter='Fp8Engine.*'
  gtest_summary engine_fp8 20
fi
TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
if [[ $steps == *" trace "* ]] && [ -f "$TRACER" ]; then
  copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac
  trace_profile trace_both 80 512 "both b512" --copy-tbps $copy --weight-bytes 1 -- env PIE_FP8_FLAT_GROUPS=1 \
    PIE_DECODE_PERSISTENT=1 "$BENCH" "$FP8" --load-format dummy --mode throughput --input-len 128 --output-len 64 \
    --num-prompts 512 --max-num-seqs 512 --kv-cache-dtype fp8
fi
if [[ $steps == *" bench "* ]]; then
  [ -x "$T" ] && run prod 90 "$T" --gtest_color=no --gtest_also_run_disabled_tests \
    --gtest_filter='Fp8Bench.DISABLED_ProducersAgainstTheCopyBandwidth' &&
    grep -E "^\[fp8 producers\]" "$LOGDIR/prod.log" | tee -a "$SUM" > /dev/null
  DB=$BUILD/bench/cuda/pie_bench_cuda_decode_fp8
  [ -x "$DB" ] && run dec 120 "$DB" --benchmark_color=false --benchmark_filter='BM_DecodePersistent' &&
    grep -E "copy|persistent|one-item" "$LOGDIR/dec.log" | tee -a "$SUM" > /dev/null
fi
if [[ $steps == *" t256 "* ]]; then
  tput base256 0 0 "$FP8" 256 512 256 256 --kv-cache-dtype fp8
  tput both256 1 1 "$FP8" 256 512 256 256 --kv-cache-dtype fp8
  tput bf16_256 0 0 "$MODEL8B" 256 512 256 256
fi
say done
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
