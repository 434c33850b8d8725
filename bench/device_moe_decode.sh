#!/usr/bin/env bash
# bench/device_moe_decode.sh — the fused decode MoE block (issue 20; PIE_MOE_DECODE=fused: router
# GEMV + routing in one kernel, down GEMV + weighted un-permute in one, the gate_up GEMV's unroll
# by wave count; ops/cuda/moe_decode.cuh) in one GPU call:
#   1. pie_cuda_test_moe: the fused kernels bit-identical to the unfused gemv path and against
#      the CPU op (MoeDecodeFused.*), with the rest of the MoE kernel tests;
#   2. pie_bench_cuda_moe_decode 1 2 8: each stage unfused vs fused, µs and % of copy;
#   3. `pie bench` Qwen3-30B-A3B (dummy weights), batch 1 128/128: unfused, then fused;
#   4. CUPTI kernel traces of batch-1 decode, fused then unfused (bench/nsys_decode_profile.py);
#   5. the fused latency run again, for the noise between two runs, if time is left.
# Usage, in the repository root of the GPU machine: OUT=DIR bash bench/device_moe_decode.sh BINDIR
# BINDIR holds pie_bench (configured with -DPIE_MOE_DECODE_VARIANTS=ON: PIE_MOE_DECODE=fused is
# refused otherwise), pie_cuda_test_moe and pie_bench_cuda_moe_decode (plain or .gz), and
# optionally libpie_kernel_trace.so, this branch's nsys_decode_profile.py and lib/ (shared
# libraries the machine lacks, e.g. libbenchmark). PIE_DEADLINE_S bounds the whole run.
set -u
dir=${1:?usage: device_moe_decode.sh BINDIR}
OUT=${OUT:-/tmp/pie_moe_decode_out}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-30B-A3B}
DEADLINE=${PIE_DEADLINE_S:-235}
export PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=$PWD/$dir/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
LOGDIR=$OUT RUN_TAIL=15
. bench/device_lib.sh
BIN=$(mktemp -d /tmp/moe_decode_bin.XXXX)
for f in pie_bench pie_cuda_test_moe pie_bench_cuda_moe_decode; do
  if [ -f "$dir/$f.gz" ]; then gunzip -c "$dir/$f.gz" > "$BIN/$f"; else cp "$dir/$f" "$BIN/$f"; fi
  chmod +x "$BIN/$f"
done
PROF=bench/nsys_decode_profile.py
[ -f "$dir/nsys_decode_profile.py" ] && PROF=$dir/nsys_decode_profile.py  # knows the fused kernels' names
say "$(gpu_line)"

run test_moe 110 "$BIN/pie_cuda_test_moe" --gtest_color=no
grep -E "OK \]|FAILED  \]|Failure|Expected|Which is|error" "$OUT/test_moe.log" | head -40 | tee -a "$SUM"

run bench_decode 45 "$BIN/pie_bench_cuda_moe_decode" 1 2 8
grep -vE "^$" "$OUT/bench_decode.log" | tee -a "$SUM"

lat() {  # NAME [env...]
  local name=$1; shift
  run "lat_$name" 50 env "$@" "$BIN/pie_bench" "$MODEL" --load-format dummy --mode latency --input-len 128 \
    --output-len 128 --num-iters 3 --num-iters-warmup 1 --max-num-seqs 8 --output-json "$OUT/lat_$name.json"
  grep -E "^(latency|engine|roofline|pie: captured)" "$OUT/lat_$name.log" | sed "s/^/$name /" | tee -a "$SUM"
}
lat unfused PIE_MOE_DECODE=unfused
lat fused PIE_MOE_DECODE=fused

trace() {  # NAME (the PIE_MOE_DECODE value)
  [ -f "$dir/libpie_kernel_trace.so" ] || return 0
  run "trace_$1" 45 env PIE_MOE_DECODE="$1" CUDA_INJECTION64_PATH="$(realpath "$dir/libpie_kernel_trace.so")" \
    PIE_KERNEL_TRACE="$BIN/trace_$1.csv" "$BIN/pie_bench" "$MODEL" --load-format dummy --mode latency \
    --input-len 128 --output-len 64 --num-prompts 1 --max-num-seqs 1 --num-iters 1 --num-iters-warmup 0 || return 0
  copy=$(python3 -c "import json;print(json.load(open('$OUT/lat_unfused.json'))['copy_tbps'])" 2>/dev/null || echo 4.22)
  python3 "$PROF" "$BIN/trace_$1.csv" --batch 1 --hidden 2048 --q-size 4096 --kv-size 512 --vocab 151936 \
    --layers 48 --experts 128 --moe-intermediate 768 --top-k 8 --copy-tbps "$copy" > "$OUT/profile_$1.txt" 2>&1
  sed "s/^/[trace $1] /" "$OUT/profile_$1.txt" | head -30 | tee -a "$SUM"
  gzip -c "$BIN/trace_$1.csv" > "$OUT/trace_$1.csv.gz"
}
trace fused
trace unfused
lat fused2 PIE_MOE_DECODE=fused
rm -rf "$BIN"
say "done"
