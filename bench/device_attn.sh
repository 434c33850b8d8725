#!/usr/bin/env bash
# bench/device_attn.sh — issue 14 in one GPU call: the fp8 KV cache against the bf16 one.
#   1. tests/gpu/make_hf_reference.py builds the transformers checkpoints of the GPU tests, then
#      pie_gpu_test_hf runs both of its tests: pie vs transformers, and the fp8 KV cache vs the
#      bf16 cache (teacher-forced greedy agreement, >= 97% over 128 steps per checkpoint);
#   2. pie_bench_cuda_decode: the decode targets (bf16 and fp8) and the fp8 ring-depth sweep;
#   3. `pie bench` (Qwen3-8B shape, dummy weights) at 256 x (512 in, 256 out) and 128 x (4096, 16),
#      each with --kv-cache-dtype auto (bf16) and fp8.
# Usage, in the repository root of the GPU machine: OUT=DIR bash bench/device_attn.sh
# Binaries built on another x86-64 machine with CUDA 13 may be carried in $PIE_PREBUILT
# (pie_bench, pie_gpu_test_hf, pie_bench_cuda_decode); they are built here when they do not load.
# $PIE_MODEL_DIR holds Qwen3-8B's config.json (default .device/Qwen3-8B, git-ignored).
# PIE_DEADLINE_S bounds the whole run: a stage that would start too late is skipped.
set -u
OUT=${OUT:-/tmp/pie_attn_out}
MODEL=${PIE_MODEL_DIR:-.device/Qwen3-8B}
PRE=${PIE_PREBUILT:-.device/bin}
BUILD=${PIE_BUILD_DIR:-build-gpu-attn}
DEADLINE=${PIE_DEADLINE_S:-100000}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
LOGDIR=$OUT RUN_TAIL=6 RUN_MIN_LEFT=15
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
export PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=$PWD/$PRE:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
say "device: $(nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader 2>&1 | head -1)"

# Each binary: the carried one when it loads here, else built here (only those).
BENCH=$PRE/pie_bench HF=$PRE/pie_gpu_test_hf DEC=$PRE/pie_bench_cuda_decode
targets=()
"$BENCH" --help > "$OUT/prebuilt.log" 2>&1 || { targets+=(pie_bench); BENCH=$BUILD/examples/pie/pie_bench; }
"$HF" --gtest_list_tests >> "$OUT/prebuilt.log" 2>&1 || { targets+=(pie_gpu_test_hf); HF=$BUILD/tests/gpu/pie_gpu_test_hf; }
"$DEC" --benchmark_list_tests >> "$OUT/prebuilt.log" 2>&1 ||
  { targets+=(pie_bench_cuda_decode); DEC=$BUILD/bench/cuda/pie_bench_cuda_decode; }
if [ ${#targets[@]} -gt 0 ]; then
  say "building here: ${targets[*]}"
  run configure 120 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DPIE_BUILD_BENCH=ON -DPIE_BUILD_CUDA_BENCH=ON -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_TESTS=ON
  run build 300 cmake --build "$BUILD" -j "$(nproc)" --target "${targets[@]}"
fi

# 1. fp8 KV accuracy (and pie vs transformers, the same checkpoints)
run hf_reference 150 python3 tests/gpu/make_hf_reference.py --out /tmp/pie_hfref --config-8b "$MODEL/config.json" \
  --layers-8b "${PIE_HF_LAYERS:-8}"
PIE_GPU_HF_DIR=/tmp/pie_hfref run gpu_test_hf 150 "$HF" --gtest_color=no
grep -E "^\[(gpu vs transformers|fp8 kv vs bf16 kv)\] .*:|OK \]|FAILED  \]|Failure" "$OUT/gpu_test_hf.log" | tee -a "$SUM"

# 2. decode kernels
run bench_decode 120 "$DEC" --benchmark_filter="${PIE_DECODE_FILTER:-BM_DecodeAttention|fp8_e4m3|BM_DecodeShape<4, 2>/}"
grep -E "^ceilings|^occupancy" "$OUT/bench_decode.log" | tee -a "$SUM"
awk '/^kernel /{p=1} p' "$OUT/bench_decode.log" > "$OUT/bench_decode_table.txt"

# 3. end to end
for spec in 256:512:256 128:4096:16; do
  IFS=: read -r n in out <<< "$spec"
  for kv in auto fp8; do
    run "pie_${n}x${in}x${out}_$kv" 150 "$BENCH" "$MODEL" --load-format dummy --mode throughput --num-prompts "$n" \
      --input-len "$in" --output-len "$out" --max-num-seqs "$n" --kv-cache-dtype "$kv" \
      --output-json "$OUT/pie_${n}x${in}x${out}_$kv.json"
    grep -E "^(engine|throughput|roofline|pie: memory)" "$OUT/pie_${n}x${in}x${out}_$kv.log" | sed "s/^/[$spec $kv] /" \
      | tee -a "$SUM"
  done
done
say "done"
echo "---- decode (share of the copy bandwidth measured in the same process)"
cat "$OUT/bench_decode_table.txt"
