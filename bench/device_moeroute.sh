#!/usr/bin/env bash
# bench/device_moeroute.sh — issue 20, the batch-1 MoE block's four opt-in switches, on one GPU
# in one call within PIE_DEADLINE_S (default 420 s):
#   PIE_MOE_ROUTE=cta    moe_route in one CTA at n ≤ 8, counts in shared memory, no global
#                        atomics / threadfence / ticket (ops/cuda/moe_routing.cuh)
#   PIE_MOE_DECODE=waves the five-launch block with the gate_up GEMV's chunks by wave count
#   PIE_MOE_DOWN=waves   the down GEMV's columns per warp by wave count at n ≤ 2 (4 at batch 1:
#                        one wave of 1024 CTAs instead of two of 2048)
#   PIE_MOE_GEMV=ahead   at n ≤ 2 the grouped GEMVs load their row chunks with the weights
# Steps: build from source (≤ 240 s, in the git-ignored $PIE_BUILD_DIR; a warm machine's earlier
# build is reused), then
#   1. pie_cuda_test_moe: the one-CTA routing against the atomic kernel bit for bit (n 1..8,
#      E 8/64/128/256, k 1..8, counters zero), each switch and all four against the default
#      block bit for bit from a graph replay (MoeDecodeSwitches), and the rest of the MoE tests;
#   2. pie_bench_cuda_moe_decode 1 2 8: routing alone atomic vs one CTA, the GEMV variants
#      (each checked bit for bit against the default first), the blocks (µs, % of copy);
#      skipped when the machine has no Google Benchmark for the bench directory and BINDIR
#      (below) has no prebuilt bench;
#   3. `pie bench` Qwen3-30B-A3B (dummy weights) batch 1, 128/128: default, all four, then each
#      alone (cta, waves, down, ahead), then default again (the noise between two runs of one
#      setting), same call;
#   4. if time is left, CUPTI kernel traces of batch-1 decode, default then all four
#      (bench/nsys_decode_profile.py: µs per kernel per layer).
# Usage, in the repository root of the GPU machine:
#   OUT=DIR bash bench/device_moeroute.sh [BINDIR]
# PIE_PREBUILT=DIR (a bench/device_bundle.sh bundle): no configure or build; its binaries.
# BINDIR (optional): a prebuilt pie_bench_cuda_moe_decode (plain or .gz), lib/ (its
# libbenchmark) and libpie_kernel_trace.so, used only when the bench directory cannot be built
# here.
set -u
BINDIR=${1:-}
OUT=${OUT:-/tmp/pie_moeroute_out}
BUILD=${PIE_BUILD_DIR:-.device/build-moeroute}  # git-ignored
DEADLINE=${PIE_DEADLINE_S:-420}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-30B-A3B}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=12 RUN_MIN_LEFT=10
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
[ -n "$BINDIR" ] && export LD_LIBRARY_PATH=$PWD/$BINDIR/lib:$LD_LIBRARY_PATH
unset PIE_MOE_ROUTE PIE_MOE_DECODE PIE_MOE_DOWN PIE_MOE_GEMV
say "device: $(gpu_line)"
say "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

if ! use_prebuilt; then  # else $PIE_PREBUILT (bench/device_bundle.sh, built with every opt-in option) holds every binary
  KBENCH_TARGET=pie_bench_cuda_moe_decode
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    # PIE_MOE_DECODE_VARIANTS: the switches this script times are compiled into pie_bench only then.
    CONF=(cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DPIE_MOE_CUTLASS=OFF
      -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_TESTS=ON -DPIE_MOE_DECODE_VARIANTS=ON)
    if ! run configure 60 "${CONF[@]}" -DPIE_BUILD_BENCH=ON -DPIE_BUILD_CUDA_BENCH=ON; then
      rm -rf "$BUILD"  # no Google Benchmark here: the tests and pie_bench only
      run configure_nobench 60 "${CONF[@]}" -DPIE_BUILD_BENCH=OFF
      KBENCH_TARGET=""
    fi
  elif ! grep -q "PIE_BUILD_CUDA_BENCH:BOOL=ON" "$BUILD/CMakeCache.txt"; then
    KBENCH_TARGET=""
  fi
  grep -q "PIE_MOE_DECODE_VARIANTS:BOOL=ON" "$BUILD/CMakeCache.txt" ||  # a build dir of an earlier call
    run reconfigure 60 cmake -S . -B "$BUILD" -DPIE_MOE_DECODE_VARIANTS=ON
  run build 240 cmake --build "$BUILD" -j "$(nproc)" --target pie_cuda_test_moe pie_bench $KBENCH_TARGET \
    || grep -E "error" "$LOGS/build.log" | head -20 | tee -a "$SUM"
  if [ -n "$KBENCH_TARGET" ]; then  # the CUPTI tracer exists only where CMake found CUPTI: its own step
    run build_tracer 30 cmake --build "$BUILD" -j "$(nproc)" --target pie_kernel_trace
  fi
fi
KBENCH=$BUILD/bench/cuda/pie_bench_cuda_moe_decode
if [ ! -x "$KBENCH" ] && [ -n "$BINDIR" ]; then
  KBENCH=$(mktemp -d /tmp/moeroute_bin.XXXX)/pie_bench_cuda_moe_decode
  if [ -f "$BINDIR/pie_bench_cuda_moe_decode.gz" ]; then gunzip -c "$BINDIR/pie_bench_cuda_moe_decode.gz" > "$KBENCH"
  else cp "$BINDIR/pie_bench_cuda_moe_decode" "$KBENCH" 2>/dev/null; fi
  chmod +x "$KBENCH" 2>/dev/null
  say "kernel bench: prebuilt from $BINDIR ($(cat "$BINDIR/BUILT_FROM.txt" 2>/dev/null || echo 'commit unknown'))"
fi

run test_moe 120 "$BUILD/tests/cuda/pie_cuda_test_moe" --gtest_color=no
grep -E "OK \]|FAILED  \]|Failure|Expected|Which is|PASSED" "$LOGS/test_moe.log" 2>/dev/null | head -40 | tee -a "$SUM"

if [ -x "$KBENCH" ]; then
  run bench_decode 60 "$KBENCH" 1 2 8
  grep -vE "^\s*$" "$LOGS/bench_decode.log" 2>/dev/null | tee -a "$SUM"
else
  say "kernel bench: not built (no Google Benchmark here, no BINDIR)"
fi

lat() {  # NAME [VAR=value...]
  local name=$1; shift
  run "lat_$name" 60 env "$@" "$BUILD/examples/pie/pie_bench" "$MODEL" --load-format dummy --mode latency \
    --input-len 128 --output-len 128 --num-iters 3 --num-iters-warmup 1 --max-num-seqs 8 \
    --output-json "$OUT/lat_$name.json"
  grep -E "^(latency|engine|roofline|pie: captured)" "$LOGS/lat_$name.log" 2>/dev/null | sed "s/^/[$name] /" | tee -a "$SUM"
}
# Since the tenth session a build with the variants takes all four when they are unset, so the
# base block is named explicitly (each single-switch row sets the other three to base).
ALL=(PIE_MOE_ROUTE=cta PIE_MOE_DECODE=waves PIE_MOE_DOWN=waves PIE_MOE_GEMV=ahead)
BASE=(PIE_MOE_ROUTE=atomic PIE_MOE_DECODE=unfused PIE_MOE_DOWN=base PIE_MOE_GEMV=base)
lat default "${BASE[@]}"
lat all "${ALL[@]}"
lat cta "${BASE[@]}" PIE_MOE_ROUTE=cta
lat waves "${BASE[@]}" PIE_MOE_DECODE=waves
lat down "${BASE[@]}" PIE_MOE_DOWN=waves
lat ahead "${BASE[@]}" PIE_MOE_GEMV=ahead
lat default2 "${BASE[@]}"
TRACER=$BUILD/bench/cuda/libpie_kernel_trace.so
[ ! -f "$TRACER" ] && [ -n "$BINDIR" ] && TRACER=$BINDIR/libpie_kernel_trace.so
trace() {  # NAME [VAR=value...]
  local name=$1; shift
  [ -f "$TRACER" ] || { say "trace: no CUPTI tracer"; return 0; }
  run "trace_$name" 45 env "$@" CUDA_INJECTION64_PATH="$(realpath "$TRACER")" PIE_KERNEL_TRACE="/tmp/trace_$name.csv" \
    "$BUILD/examples/pie/pie_bench" "$MODEL" --load-format dummy --mode latency --input-len 128 --output-len 64 \
    --num-prompts 1 --max-num-seqs 1 --num-iters 1 --num-iters-warmup 0 || return 0
  local copy
  copy=$(python3 -c "import json;print(json.load(open('$OUT/lat_default.json'))['copy_tbps'])" 2>/dev/null || echo 3.0)
  python3 bench/nsys_decode_profile.py "/tmp/trace_$name.csv" --batch 1 --hidden 2048 --q-size 4096 --kv-size 512 \
    --vocab 151936 --layers 48 --experts 128 --moe-intermediate 768 --top-k 8 --copy-tbps "$copy" \
    > "$OUT/profile_$name.txt" 2>&1
  sed "s/^/[trace $name] /" "$OUT/profile_$name.txt" | head -30 | tee -a "$SUM"
  gzip -c "/tmp/trace_$name.csv" > "$LOGS/trace_$name.csv.gz"
}
trace default "${BASE[@]}"
trace all "${ALL[@]}"
say "done"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
