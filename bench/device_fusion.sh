#!/usr/bin/env bash
# bench/device_fusion.sh — issue 15 item 2, the fusions at the decode step's op boundaries, on
# one GPU in one call within PIE_DEADLINE_S (default 180 s): build what is missing (reuses
# PIE_BUILD_DIR, e.g. device_final.sh's build of the same tree), then
#   1. the kernels against the separate ones, bit for bit: qk_norm_rope_kv vs qk_norm_rope +
#      kv_write (pie_cuda_test_rope_kv), the final norm in the float-output GEMV and SwiGLU in
#      the down projection's GEMV (pie_cuda_test_gemm, Gemv.*AddRmsNorm*, Gemv.*SwiGlu*);
#   2. the GPU engine with each switch and all against the separate kernels: every step's
#      logits bit-identical (pie_gpu_test_fused_ops), and the runner tests vs the CPU reference
#      with all switches on (pie_gpu_test_runner, two tests);
#   3. `pie bench`, Qwen3-8B shape, dummy weights, batch 1 128/128 and 2048 x (128, 128): the
#      separate kernels, then PIE_FUSED_ROPE_KV=1 PIE_FUSED_FINAL_NORM=1 PIE_FUSED_SWIGLU=1, in
#      the same call (ITL, tok/s, share of the roofline); then batch 1 with each switch alone,
#      the separate kernels again, and the kernel trace of batch 1 with all, if time is left
#      (the CUPTI tracer built with g++ when the build has none).
#   OUT=dir PIE_MODEL_DIR=<dir with Qwen3-8B config.json> PIE_BUILD_DIR=<build> bash bench/device_fusion.sh
set -u
OUT=${OUT:-/tmp/pie_fusion_out}
BUILD=${PIE_BUILD_DIR:-.device/build-final}  # device_final.sh's build of the same tree
DEADLINE=${PIE_DEADLINE_S:-180}
MODEL8B=${PIE_MODEL_DIR:-bench/models/Qwen3-8B}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=10 RUN_MIN_LEFT=8
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
gt() { grep -E "^\[fused|OK \]|FAILED  \]|Failure|Expected|Which is|PASSED" "$LOGS/$1.log" | head -${2:-30} | tee -a "$SUM"; }
bench_lines() { grep -E "^(ceilings|latency|throughput|roofline|decode at batch (1|512):|pie: PIE_FUSED)" "$LOGS/$1.log" | sed "s/^/[$1] /" | tee -a "$SUM"; }
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
unset PIE_FUSED_ROPE_KV PIE_FUSED_FINAL_NORM PIE_FUSED_SWIGLU
say "device: $(gpu_line)"

if ! use_prebuilt; then  # else $PIE_PREBUILT (bench/device_bundle.sh) holds every binary
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    run configure 40 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
      -DPIE_BUILD_BENCH=OFF -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_TESTS=ON
  fi
  TARGETS="pie_cuda_test_rope_kv pie_cuda_test_gemm pie_gpu_test_fused_ops pie_gpu_test_runner pie_bench"
  run build 150 cmake --build "$BUILD" -j "$(nproc)" --target $TARGETS || grep -E "error" "$LOGS/build.log" | head -20 | tee -a "$SUM"
fi

run test_rope_kv 30 "$BUILD/tests/cuda/pie_cuda_test_rope_kv" --gtest_color=no; gt test_rope_kv 10
run test_gemv_norm 30 "$BUILD/tests/cuda/pie_cuda_test_gemm" --gtest_color=no --gtest_filter='Gemv.*AddRmsNorm*:Gemv.*SwiGlu*'
gt test_gemv_norm 10
run test_fused_ops 90 "$BUILD/tests/gpu/pie_gpu_test_fused_ops" --gtest_color=no; gt test_fused_ops 30
PIE_FUSED_ROPE_KV=1 PIE_FUSED_FINAL_NORM=1 PIE_FUSED_SWIGLU=1 run test_runner_fused 60 "$BUILD/tests/gpu/pie_gpu_test_runner" \
  --gtest_color=no --gtest_filter='GpuRunner.MatchesCpuReferenceOverChunkedPrefillAndDecode:GpuRunner.GraphReplayMatchesEager'
grep -E "^\[gpu vs" "$LOGS/test_runner_fused.log" | tee -a "$SUM"; gt test_runner_fused 8

if [ -f "$MODEL8B/config.json" ]; then
  BENCH=("$BUILD/examples/pie/pie_bench" "$MODEL8B" --load-format dummy --input-len 128 --output-len 128)
  BOTH=(--mode both --num-prompts 2048 --max-num-seqs 512 --num-iters 3 --num-iters-warmup 1)
  B1=(--mode latency --num-iters 3 --num-iters-warmup 1)
  run bench_off 70 "${BENCH[@]}" "${BOTH[@]}" --output-json "$OUT/bench_off.json"; bench_lines bench_off
  PIE_FUSED_ROPE_KV=1 PIE_FUSED_FINAL_NORM=1 PIE_FUSED_SWIGLU=1 run bench_on 70 "${BENCH[@]}" "${BOTH[@]}" \
    --output-json "$OUT/bench_on.json"
  bench_lines bench_on
  # Each fusion alone at batch 1 (where the trace says the launches count), then the trace.
  PIE_FUSED_ROPE_KV=1 run bench_b1_rope_kv 35 "${BENCH[@]}" "${B1[@]}" --output-json "$OUT/bench_b1_rope_kv.json"
  bench_lines bench_b1_rope_kv
  PIE_FUSED_FINAL_NORM=1 run bench_b1_final_norm 35 "${BENCH[@]}" "${B1[@]}" \
    --output-json "$OUT/bench_b1_final_norm.json"
  bench_lines bench_b1_final_norm
  PIE_FUSED_SWIGLU=1 run bench_b1_swiglu 35 "${BENCH[@]}" "${B1[@]}" --output-json "$OUT/bench_b1_swiglu.json"
  bench_lines bench_b1_swiglu
  run bench_b1_off 35 "${BENCH[@]}" "${B1[@]}" --output-json "$OUT/bench_b1_off.json"  # the peer, again
  bench_lines bench_b1_off
  TRACER=${PIE_KERNEL_TRACER:-$(ls "$BUILD"/bench/cuda/libpie_kernel_trace.so "$BUILD"/libpie_kernel_trace.so .device/lib/libpie_kernel_trace.so 2>/dev/null | head -1)}
  if [ -z "$TRACER" ]; then  # bench/ needs Google Benchmark, which the GPU machine lacks: g++ and CUPTI alone
    run tracer 60 g++ -O2 -shared -fPIC bench/cuda/kernel_trace.cpp -I/usr/local/cuda/include \
      -L/usr/local/cuda/lib64 -L/usr/local/cuda/extras/CUPTI/lib64 -lcupti -o "$BUILD/libpie_kernel_trace.so" &&
      TRACER=$BUILD/libpie_kernel_trace.so
  fi
  if [ -n "$TRACER" ]; then
    for sw in 0 1; do
      PIE_FUSED_ROPE_KV=$sw PIE_FUSED_FINAL_NORM=$sw PIE_FUSED_SWIGLU=$sw run "trace_b1_$sw" 35 env CUDA_INJECTION64_PATH="$(realpath "$TRACER")" \
        PIE_KERNEL_TRACE="/tmp/trace_b1_$sw.csv" "${BENCH[@]}" --mode latency --num-iters 1 --num-iters-warmup 1 \
        --max-num-seqs 8 && python3 bench/nsys_decode_profile.py "/tmp/trace_b1_$sw.csv" --batch 1 > "$OUT/profile_b1_$sw.txt" 2>&1
      [ -f "$OUT/profile_b1_$sw.txt" ] && sed "s/^/[trace b1 fused=$sw] /" "$OUT/profile_b1_$sw.txt" | head -30 | tee -a "$SUM"
    done
  else
    say "trace: no CUPTI tracer built (-DPIE_BUILD_CUDA_BENCH=ON builds bench/cuda/libpie_kernel_trace.so)"
  fi
else
  say "no $MODEL8B/config.json: bench skipped"
fi
say "done"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
