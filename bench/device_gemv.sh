#!/usr/bin/env bash
# bench/device_gemv.sh — the batch-1 fp8 GEMV variants (issues 18 and 15) in one GPU call:
#   1. pie_gpu_test_fp8_gemv: every variant, and the prequantized entry, bit-identical to the
#      legacy kernel (and the legacy kernel within the CPU reference's tolerance);
#   2. pie_gpu_test_fp8 (kernels, and the engine's logits bit-identical under every
#      PIE_FP8_GEMV / PIE_FP8_GEMV_PRE setting), again with PIE_FP8_QUANT_BATCHED=1;
#   2b. pie_cuda_test_gemm's Gemv.* (the bf16 fused norm + GEMV in 4- and 16-warp CTAs);
#   3. pie_bench_cuda_fp8_gemv: each variant alone at the four Qwen3-8B shapes and chained as in
#      a step, against the copy bandwidth of the same process and the bf16 GEMV;
#   4. `pie bench` batch 1, 128/128, at the Qwen3-8B shape (dummy weights, config .device/Qwen3-8B
#      or $PIE_MODEL_DIR): bf16, fp8 with the legacy GEMV, and fp8 with the variants whose chain
#      row was fastest in step 3 for each source of x (quantized in the GEMV; prequantized by the
#      producers, their quantization row batched; the norm in the GEMV's prologue, SwiGLU
#      prequantizing down's x), c2u4-nw16 with the norm, and c2u4 (variant 1);
#      and bf16 with its fused norm in 16-warp CTAs (PIE_GEMV_NORM_WARPS=16);
#   5. a CUPTI kernel trace of the fastest norm setting's decode steps (bench/nsys_decode_profile.py).
# Usage, in the repository root of the GPU machine: OUT=DIR bash bench/device_gemv.sh BINDIR
# (BINDIR: the four binaries, libbenchmark if the machine lacks it, and optionally the CUPTI
# tracer libpie_kernel_trace.so and this branch's nsys_decode_profile.py).
set -u
dir=${1:-.device/gemv}
OUT=${OUT:-/tmp/pie_gemv_out}
MODEL=${PIE_MODEL_DIR:-.device/Qwen3-8B}
DEADLINE=${PIE_DEADLINE_S:-280}
export OUT PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=$PWD/$dir:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
LOGDIR=$OUT
. bench/device_lib.sh

say "$(gpu_line)"
FP8_MODEL=$OUT/Qwen3-8B-FP8
fp8_config "$MODEL" "$FP8_MODEL"

run test_gemv 40 "$dir/pie_gpu_test_fp8_gemv" --gtest_color=no
grep -E "OK \]|FAILED  \]|Failure|differ|rel err" "$OUT/test_gemv.log" | head -30 | tee -a "$SUM"
run test_fp8 120 "$dir/pie_gpu_test_fp8" --gtest_color=no \
  --gtest_filter='Fp8Kernels.*:Fp8Engine.GemvVariants*:Fp8Engine.Dummy*'
grep -E "OK \]|FAILED  \]|Failure|differ" "$OUT/test_fp8.log" | head -30 | tee -a "$SUM"
# The quantization row loading 8 groups per warp at once (PIE_FP8_QUANT_BATCHED): same codes.
run test_fp8_batched 90 env PIE_FP8_QUANT_BATCHED=1 "$dir/pie_gpu_test_fp8" --gtest_color=no \
  --gtest_filter='Fp8Kernels.Quantization*:Fp8Kernels.FusedProducers*:Fp8Engine.GemvVariants*'
grep -E "OK \]|FAILED  \]|Failure|differ" "$OUT/test_fp8_batched.log" | head -30 | tee -a "$SUM"
# The bf16 fused norm + GEMV with 16 warps per CTA (PIE_GEMV_NORM_WARPS): bit-identical too.
if [ -x "$dir/pie_cuda_test_gemm" ]; then
  run test_gemm 60 "$dir/pie_cuda_test_gemm" --gtest_color=no --gtest_filter='Gemv.*'
  grep -E "OK \]|FAILED  \]|Failure" "$OUT/test_gemm.log" | head -20 | tee -a "$SUM"
fi
run bench_gemv 90 "$dir/pie_bench_cuda_fp8_gemv"
grep -E "^ceilings|^kernel|^(qkv|o|gate_up|down|chain) " "$OUT/bench_gemv.log" | tee -a "$SUM"

# Fastest chain rows per mode of x: variant ids in fp8_gemv_variant_name's order.
ids="legacy:0 c2u4:1 c2u4-late-release:2 c1u8:3 c4u2:4 c2u2-lean:5 c1u4-lean:6 c2u4-nw8:7 c2u4-nw16:8 c1u8-nw16:9 c2u4-nw8-persist:10 c4u2-persist:11 c2u4-persist:12"
best() {  # $1 = "" (quantize in the GEMV), pre, norm
  awk -v mode="$1" '/^chain 8 layers/ { m = ($5 == "pre" || $5 == "norm") ? $5 : "";
                      if (m == mode && $4 != "legacy" && (best == "" || $(NF-5) < t)) { best = $4; t = $(NF-5) } }
                    END { print best }' "$OUT/bench_gemv.log"
}
id_of() { for kv in $ids; do [ "${kv%%:*}" = "$1" ] && echo "${kv##*:}"; done; }
v_in=$(id_of "$(best "")"); v_pre=$(id_of "$(best pre)"); v_norm=$(id_of "$(best norm)")
say "fastest chain variants: quantizing ${v_in:-none}, prequantized ${v_pre:-none}, norm ${v_norm:-none}"

BIN=$dir/pie_bench
lat() {  # NAME MODEL_DIR [env...]
  local name=$1 m=$2; shift 2
  run "lat_$name" 45 env "$@" "$BIN" "$m" --load-format dummy --mode latency --input-len 128 --output-len 128 \
    --num-iters 3 --num-iters-warmup 1 --max-num-seqs 8 --output-json "$OUT/lat_$name.json"
  grep -E "^(latency|engine)" "$OUT/lat_$name.log" | sed "s/^/$name /" | tee -a "$SUM"
}
lat bf16 "$MODEL"
lat fp8_legacy "$FP8_MODEL"
[ -n "$v_in" ] && lat "fp8_v$v_in" "$FP8_MODEL" PIE_FP8_GEMV="$v_in"
[ -n "$v_pre" ] && lat "fp8_v${v_pre}_pre" "$FP8_MODEL" PIE_FP8_GEMV="$v_pre" PIE_FP8_GEMV_PRE=1 PIE_FP8_QUANT_BATCHED=1
[ -n "$v_norm" ] && lat "fp8_v${v_norm}_norm_pre" "$FP8_MODEL" PIE_FP8_GEMV="$v_norm" PIE_FP8_GEMV_NORM=1 \
  PIE_FP8_GEMV_PRE=1 PIE_FP8_QUANT_BATCHED=1
[ "$v_norm" != 8 ] && lat fp8_v8_norm_pre "$FP8_MODEL" PIE_FP8_GEMV=8 PIE_FP8_GEMV_NORM=1 PIE_FP8_GEMV_PRE=1 \
  PIE_FP8_QUANT_BATCHED=1
[ "$v_in" != 1 ] && lat fp8_v1 "$FP8_MODEL" PIE_FP8_GEMV=1
lat bf16_norm_nw16 "$MODEL" PIE_GEMV_NORM_WARPS=16
# Where the step's time goes with the fastest setting (CUPTI kernel trace of graph-replayed steps).
if [ -f "$dir/libpie_kernel_trace.so" ] && [ -n "$v_norm" ]; then
  run trace 60 env PIE_FP8_GEMV="$v_norm" PIE_FP8_GEMV_NORM=1 PIE_FP8_GEMV_PRE=1 PIE_FP8_QUANT_BATCHED=1 \
    CUDA_INJECTION64_PATH="$(realpath "$dir/libpie_kernel_trace.so")" PIE_KERNEL_TRACE="$OUT/trace.csv" "$BIN" \
    "$FP8_MODEL" --load-format dummy --mode latency --input-len 128 --output-len 128 --num-iters 1 \
    --num-iters-warmup 1 --max-num-seqs 8
  prof=bench/nsys_decode_profile.py
  [ -f "$dir/nsys_decode_profile.py" ] && prof=$dir/nsys_decode_profile.py  # this branch's (fp8 kernel names)
  python3 "$prof" "$OUT/trace.csv" --batch 1 --weight-bytes 1 --copy-tbps 4.2 \
    > "$OUT/profile.txt" 2>&1
  sed "s/^/[trace v$v_norm norm pre] /" "$OUT/profile.txt" | head -40 | tee -a "$SUM"
  gzip -f "$OUT/trace.csv"
fi
say "done"
# Few files come back from the device: everything but the summary and the bench log in one tarball.
(cd "$OUT" && tar czf logs.tgz --exclude=logs.tgz --exclude=summary.txt --exclude=bench_gemv.log ./* \
  && find . -mindepth 1 -maxdepth 1 ! -name logs.tgz ! -name summary.txt ! -name bench_gemv.log -exec rm -rf {} +)
