#!/usr/bin/env bash
# bench/device_attn_mma.sh — issue 14, the tensor-core decode kernel in one GPU call:
#   1. decode_ab.sh run DIR tests bench: test_decode (the CPU reference over every grid) and the
#      decode benchmarks, with the baseline kernel compiled into the same binary;
#   2. compute-sanitizer on a thinned grid ($PIE_MEMCHECK_FILTER / $PIE_RACECHECK_FILTER);
#   3. `pie bench` 256 x (512 in, 256 out), Qwen3-8B shape, dummy weights, bf16 and fp8 KV;
#   4. the GPU tests' transformers checkpoints and pie_gpu_test_hf (fp8 vs bf16 KV agreement).
# Binaries are built on another x86-64 machine with CUDA 13 and carried: DIR from
# `bench/cuda/decode_ab.sh build DIR REV`, $PIE_PREBUILT (default .device/bin) holding pie_bench
# and pie_gpu_test_hf; a stage whose binary is missing is skipped. $PIE_MODEL_DIR holds Qwen3-8B's
# config.json (default .device/Qwen3-8B). PIE_DEADLINE_S bounds the whole run.
# Usage, in the repository root of the GPU machine: OUT=DIR bash bench/device_attn_mma.sh DIR
set -u
dir=$1
OUT=${OUT:-/tmp/pie_attn_out}
MODEL=${PIE_MODEL_DIR:-.device/Qwen3-8B}
PRE=${PIE_PREBUILT:-.device/bin}
DEADLINE=${PIE_DEADLINE_S:-100000}
export OUT PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=$PWD/$PRE:$PWD/$dir:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
say() { echo "== $(date -u +%H:%M:%S) +${SECONDS}s $*" | tee -a "$SUM"; }
left() { echo $((DEADLINE - SECONDS - 5)); }

say "decode tests and benchmarks"
bash bench/cuda/decode_ab.sh run "$dir" tests bench >> "$SUM" 2>&1
say "sanitizers"
bash bench/cuda/decode_ab.sh run "$dir" sanitize >> "$SUM" 2>&1
for kv in auto fp8; do
  [ -x "$PRE/pie_bench" ] && [ "$(left)" -gt 40 ] || { say "pie bench $kv: skipped"; continue; }
  timeout 90 "$PRE/pie_bench" "$MODEL" --load-format dummy --mode throughput --num-prompts 256 --input-len 512 \
    --output-len 256 --max-num-seqs 256 --kv-cache-dtype "$kv" > "$OUT/e2e_$kv.log" 2>&1
  say "pie bench 256x(512,256) kv $kv: rc=$?"
  grep -E "^(engine|throughput|roofline|pie: memory)" "$OUT/e2e_$kv.log" | tee -a "$SUM"
done
if [ -x "$PRE/pie_gpu_test_hf" ] && [ "$(left)" -gt 60 ]; then
  timeout "$(( $(left) - 30 ))" python3 tests/gpu/make_hf_reference.py --out /tmp/pie_hfref \
    --config-8b "$MODEL/config.json" --layers-8b 8 > "$OUT/hf.log" 2>&1
  say "hf reference: rc=$?"
  PIE_GPU_HF_DIR=/tmp/pie_hfref timeout "$(( $(left) > 20 ? $(left) : 20 ))" "$PRE/pie_gpu_test_hf" --gtest_color=no \
    >> "$OUT/hf.log" 2>&1
  say "pie_gpu_test_hf: rc=$?"
  grep -E "^\[(gpu vs transformers|fp8 kv vs bf16 kv)\] .*:|OK \]|FAILED  \]|Failure" "$OUT/hf.log" | tee -a "$SUM"
else
  say "hf: skipped"
fi
say "done"
echo "---- decode (share of the copy bandwidth measured in the same process)"
grep -E "^ceilings|^occupancy|PASSED|FAILED|SUMMARY" "$SUM"
awk '/^kernel /{p=1} p' "$OUT/bench.log"
