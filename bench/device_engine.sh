#!/usr/bin/env bash
# bench/device_engine.sh — issue 6 on one GPU in one go: build pie's GPU engine, run the GPU
# tests (CUDA runner vs the CPU reference, graphs, swap, batch invariance; vs HF transformers on
# checkpoints transformers builds here), `pie bench` for the issue's workloads at the Qwen3-8B
# shape with --load-format dummy, and HF transformers on the same workloads.
#
# Usage, in the repository root of the GPU machine:
#   OUT=/some/dir bash bench/device_engine.sh
# Needs the model's config in $PIE_MODEL_DIR (default .device/Qwen3-8B: copy
# ../shared/models/Qwen3-8B/*.json there; the folder is git-ignored and never committed).
# PIE_STAGES picks stages (default: build,kernels,test,bench,invariant,sweep,nsys,hfref,hf); each stage has a time limit
# and the next one runs whatever happened. Logs and JSON results land in $OUT; the last lines
# printed are a summary. PIE_DEADLINE_S bounds the whole run (stages are cut to fit).
set -u
OUT=${OUT:-/tmp/pie_device_out}
MODEL=${PIE_MODEL_DIR:-.device/Qwen3-8B}
STAGES=${PIE_STAGES:-build,kernels,test,bench,invariant,sweep,nsys,hfref,hf}
BUILD=${PIE_BUILD_DIR:-build-gpu-device}
JOBS=${PIE_JOBS:-$(nproc)}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
has() { [[ ",$STAGES," == *",$1,"* ]]; }
DEADLINE=${PIE_DEADLINE_S:-100000}  # seconds: no stage runs past this, none starts too late
# say; run NAME LIMIT_S CMD...: output to $OUT/NAME.log, exit status to the summary.
RUN_TAIL=8 RUN_MIN_LEFT=20
source "$(dirname "$0")/device_lib.sh"

say "device: $(gpu_line)"
say "model config: $MODEL"
export PYTHONUNBUFFERED=1
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH

# Binaries built elsewhere (same x86-64, same CUDA 13) can be carried in $PIE_PREBUILT
# (pie_bench, pie_gpu_test_runner, pie_gpu_test_hf): used when they load, else built here.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
if [ -n "${PIE_PREBUILT:-}" ] && "$PIE_PREBUILT/pie_gpu_test_runner" --gtest_list_tests > /dev/null 2>&1 \
   && "$PIE_PREBUILT/pie_bench" --help > /dev/null 2>&1; then
  say "using prebuilt binaries from $PIE_PREBUILT"
  mkdir -p "$BUILD/examples/pie" "$BUILD/tests/gpu"
  cp "$PIE_PREBUILT/pie_bench" "$BUILD/examples/pie/"
  cp "$PIE_PREBUILT/pie_gpu_test_runner" "$PIE_PREBUILT/pie_gpu_test_hf" "$BUILD/tests/gpu/"
  # Kernel tests and the kernel bench, when carried too.
  mkdir -p "$BUILD/tests/cuda" "$BUILD/bench/cuda"
  cp "$PIE_PREBUILT"/pie_cuda_test_* "$BUILD/tests/cuda/" 2>/dev/null
  cp "$PIE_PREBUILT"/pie_bench_cuda_kernels "$BUILD/bench/cuda/" 2>/dev/null
  STAGES=${STAGES//build/}
fi

if has build; then
  run configure 120 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DPIE_BUILD_BENCH=OFF -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_TESTS=ON
  if ! run build 300 cmake --build "$BUILD" -j "$JOBS" --target pie_bench pie_gpu_test_runner pie_gpu_test_hf; then
    tail -30 "$OUT/build.log"
    # Fallback when another area's CMake breaks the configure: nvcc straight, same flags.
    say "build: falling back to plain nvcc"
    mkdir -p "$BUILD/examples/pie" "$BUILD/tests/gpu"
    NV=(nvcc -std=c++20 -O3 -DNDEBUG -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo
        -DPIE_WITH_CUDA=1 -Iinclude -I/usr/include/eigen3 -Xcompiler -pthread)
    run nvcc_bench 300 "${NV[@]}" -DPIE_BENCH_MAIN=1 -x cu examples/pie/bench.cpp -o "$BUILD/examples/pie/pie_bench" \
      -lcublasLt -lcublas &
    run nvcc_test_runner 300 "${NV[@]}" tests/gpu/test_runner.cu -o "$BUILD/tests/gpu/pie_gpu_test_runner" \
      -lgtest -lgtest_main -lcublasLt -lcublas &
    run nvcc_test_hf 300 "${NV[@]}" tests/gpu/test_hf.cu -o "$BUILD/tests/gpu/pie_gpu_test_hf" \
      -lgtest -lgtest_main -lcublasLt -lcublas &
    wait
  fi
fi
BIN="$BUILD/examples/pie/pie_bench"

if has kernels; then
  # Kernel tests touched by engine work (GEMV, decode split, HF rounding points) and their bench.
  for t in "$BUILD"/tests/cuda/pie_cuda_test_*; do
    [ -x "$t" ] || continue
    run "kernel_$(basename "$t")" 120 "$t" --gtest_color=no
    grep -E "FAILED  \]|Failure|PASSED" "$OUT/kernel_$(basename "$t").log" | head -12 | tee -a "$SUM"
  done
  if [ -x "$BUILD/bench/cuda/pie_bench_cuda_kernels" ]; then
    run kernel_bench 150 "$BUILD/bench/cuda/pie_bench_cuda_kernels" \
      --benchmark_filter="${PIE_KERNEL_FILTER:-SkinnyLinear|DecodeAttention|AddRmsNorm|QkNormRope|SiluAndMul}" --benchmark_out="$OUT/kernel_bench.json" \
      --benchmark_out_format=json
    { grep -E "^ceilings" "$OUT/kernel_bench.log"; sed -n '/^kernel /,$p' "$OUT/kernel_bench.log"; } | tee -a "$SUM"
  fi
fi

if has test; then
  run gpu_test_runner 180 "$BUILD/tests/gpu/pie_gpu_test_runner" --gtest_color=no
  grep -E "^\[(gpu|batch)|OK \]|FAILED  \]|Failure|Expected|Which is|Value of|error" "$OUT/gpu_test_runner.log" | head -40 | tee -a "$SUM"
fi

if has bench; then
  run pie_latency 120 "$BIN" "$MODEL" --load-format dummy --mode latency --input-len 128 --output-len 128 \
    --num-iters 5 --max-num-seqs 8 --profile --output-json "$OUT/pie_latency.json"
  grep -E "^(latency|ceilings|pie: memory|profile)" "$OUT/pie_latency.log" | tee -a "$SUM"
  run pie_tput_2048x128x128 180 "$BIN" "$MODEL" --load-format dummy --mode throughput --num-prompts 2048 \
    --input-len 128 --output-len 128 --max-num-seqs 512 --profile --output-json "$OUT/pie_tput_2048.json"
  grep -E "^(throughput|roofline|decode at|pie: memory|pie: captured|profile)" "$OUT/pie_tput_2048x128x128.log" | tee -a "$SUM"
  # Same workload with 8-token KV blocks: internal fragmentation of the last block halves.
  run pie_tput_2048_bs8 180 "$BIN" "$MODEL" --load-format dummy --mode throughput --num-prompts 2048 \
    --input-len 128 --output-len 128 --max-num-seqs 512 --block-size 8 --output-json "$OUT/pie_tput_2048_bs8.json"
  grep -E "^(throughput|roofline|decode at)" "$OUT/pie_tput_2048_bs8.log" | sed 's/^/bs8 /' | tee -a "$SUM"
  run pie_tput_256x512x256 150 "$BIN" "$MODEL" --load-format dummy --mode throughput --num-prompts 256 \
    --input-len 512 --output-len 256 --max-num-seqs 256 --profile --output-json "$OUT/pie_tput_256.json"
  grep -E "^(throughput|roofline|decode at|profile)" "$OUT/pie_tput_256x512x256.log" | tee -a "$SUM"
fi

if has invariant; then
  # --batch-invariant against the default kernels, same workloads, same call: its cost.
  for mode in default invariant; do
    flag=; [ "$mode" = invariant ] && flag=--batch-invariant
    run "pie_${mode}_latency" 120 "$BIN" "$MODEL" --load-format dummy --mode latency --input-len 128 --output-len 128 \
      --num-iters 5 --max-num-seqs 8 $flag --output-json "$OUT/pie_${mode}_latency.json"
    grep -E "^latency" "$OUT/pie_${mode}_latency.log" | sed "s/^/$mode /" | tee -a "$SUM"
    run "pie_${mode}_256x512x256" 150 "$BIN" "$MODEL" --load-format dummy --mode throughput --num-prompts 256 \
      --input-len 512 --output-len 256 --max-num-seqs 256 $flag --output-json "$OUT/pie_${mode}_256.json"
    grep -E "^(throughput|roofline)" "$OUT/pie_${mode}_256x512x256.log" | sed "s/^/$mode /" | tee -a "$SUM"
  done
fi

if has sweep; then
  # Throughput against batch size: 2B requests of (128, 128) at max_num_seqs B (the plot's data).
  for B in ${PIE_SWEEP:-1 8 32 64 128 256 512}; do
    run "pie_sweep_$B" 90 "$BIN" "$MODEL" --load-format dummy --mode throughput --num-prompts $((2 * B)) \
      --input-len 128 --output-len 128 --max-num-seqs "$B" --output-json "$OUT/pie_sweep_$B.json"
    grep -E "^(throughput|roofline)" "$OUT/pie_sweep_$B.log" | sed "s/^/B=$B /" | tee -a "$SUM"
  done
fi

if has nsys; then
  # The decode step as the GPU ran it (graphs replayed, PDL overlap): a kernel trace → per-op
  # time and idle gaps per step (bench/nsys_decode_profile.py). Nsight Systems when installed,
  # else pie's CUPTI injection tracer (bench/cuda/kernel_trace.cpp, $PIE_KERNEL_TRACER).
  NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  TRACER=${PIE_KERNEL_TRACER:-$(ls "$BUILD"/bench/cuda/libpie_kernel_trace.so .device/lib/libpie_kernel_trace.so 2>/dev/null | head -1)}
  for spec in "b1:1:--mode latency --input-len 128 --output-len 128 --num-iters 1 --num-iters-warmup 1 --max-num-seqs 8" \
              "b512:512:--mode throughput --num-prompts 512 --input-len 128 --output-len 24 --max-num-seqs 512" \
              "b256ctx640:256:--mode throughput --num-prompts 256 --input-len 640 --output-len 40 --max-num-seqs 256"; do
    IFS=: read -r tag batch args <<< "$spec"
    csv="/tmp/trace_$tag.csv"
    if [ -n "$NSYS" ]; then
      run "nsys_$tag" 150 "$NSYS" profile --cuda-graph-trace=node --trace=cuda -o "/tmp/nsys_$tag" --force-overwrite true \
        "$BIN" "$MODEL" --load-format dummy $args
      run "nsys_stats_$tag" 150 "$NSYS" stats --report cuda_gpu_trace --format csv --output "/tmp/nsys_$tag" "/tmp/nsys_$tag.nsys-rep"
      csv="/tmp/nsys_${tag}_cuda_gpu_trace.csv"
    elif [ -n "$TRACER" ]; then
      run "trace_$tag" 150 env CUDA_INJECTION64_PATH="$(realpath "$TRACER")" PIE_KERNEL_TRACE="$csv" "$BIN" "$MODEL" --load-format dummy $args
    else
      say "trace: neither nsys nor the CUPTI tracer here"; break
    fi
    python3 bench/nsys_decode_profile.py "$csv" --batch "$batch" > "$OUT/profile_$tag.txt" 2>&1
    gzip -c "$csv" > "$OUT/trace_$tag.csv.gz"
    sed "s/^/[$tag] /" "$OUT/profile_$tag.txt" | tee -a "$SUM"
  done
fi

if has hfref; then
  run hf_reference 150 python3 tests/gpu/make_hf_reference.py --out /tmp/pie_hfref --config-8b "$MODEL/config.json" \
    --layers-8b "${PIE_HF_LAYERS:-8}"
  cat "$OUT/hf_reference.log" | grep -v Warning | tail -4 | tee -a "$SUM"
  PIE_GPU_HF_DIR=/tmp/pie_hfref run gpu_test_hf 150 "$BUILD/tests/gpu/pie_gpu_test_hf" --gtest_color=no
  grep -E "^\[gpu vs|OK \]|FAILED  \]|Failure|Expected|Which is|Value of" "$OUT/gpu_test_hf.log" | head -20 | tee -a "$SUM"
fi

if has hf; then
  run hf_compare 240 python3 bench/compare_hf.py "$MODEL" latency:128:128 throughput:512:128:128:512 \
    throughput:256:512:256:256 --output-json "$OUT/hf.jsonl"
  grep '^{' "$OUT/hf_compare.log" | tee -a "$SUM"
fi
say "done"
