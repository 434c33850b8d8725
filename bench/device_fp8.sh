#!/usr/bin/env bash
# bench/device_fp8.sh — issue 18 on one H200 in one call: build the fp8 GPU test and pie_bench,
# build the transformers fixtures of tests/fp8 (in the background, during the build), run the
# fp8 GPU tests, then `pie bench` bf16 vs fp8 at the Qwen3-8B shape (--load-format dummy) on the
# issue's three workloads. Logs and JSON land in $OUT; the summary is printed last.
#
# Usage, in the repository root of the GPU machine:
#   OUT=/some/dir bash bench/device_fp8.sh
# Needs Qwen3-8B's config.json / generation_config.json in $PIE_MODEL_DIR (default
# .device/Qwen3-8B, git-ignored). The fp8 bench uses a copy of that config with the published
# quantization_config (Qwen3-8B-FP8's), so its dummy weights are 128×128 block-scaled.
# PIE_STAGES picks stages (default build,fixtures,test,bench,channel; also trace: a kernel trace of
# graph-replayed decode steps, bf16 and fp8, at batch 1 and 512 (PIE_TRACES, e.g. "fp8:1 fp8:512") → per-op
# time, bench/nsys_decode_profile.py,
# with bench/cuda/kernel_trace.cpp's CUPTI tracer from $PIE_KERNEL_TRACER or .device/lib);
# PIE_DEADLINE_S bounds the run. The fixtures of tests/fp8 are committed: the fixtures stage
# only rebuilds them with the device's transformers.
set -u
OUT=${OUT:-/tmp/pie_device_out}
MODEL=${PIE_MODEL_DIR:-.device/Qwen3-8B}
STAGES=${PIE_STAGES:-build,fixtures,test,bench,channel}
BUILD=${PIE_BUILD_DIR:-build-gpu-device}
DEADLINE=${PIE_DEADLINE_S:-100000}
LOGS="$OUT/logs"  # tarred into $OUT/logs.tgz at the end (few files come back)
mkdir -p "$LOGS"
SUM="$OUT/summary.txt"
has() { [[ ",$STAGES," == *",$1,"* ]]; }
LOGDIR=$LOGS RUN_TAIL=12 RUN_MIN_LEFT=15
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
export PYTHONUNBUFFERED=1
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
say "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"

FP8_MODEL=.device/Qwen3-8B-FP8
fp8_config "$MODEL" "$FP8_MODEL"

# Binaries built elsewhere (same x86-64, same CUDA 13) can be carried in $PIE_PREBUILT
# (pie_bench, pie_gpu_test_fp8): used when they load, else built here.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
if [ -n "${PIE_PREBUILT:-}" ] && "$PIE_PREBUILT/pie_gpu_test_fp8" --gtest_list_tests > /dev/null 2>&1 \
   && "$PIE_PREBUILT/pie_bench" --help > /dev/null 2>&1; then
  say "using prebuilt binaries from $PIE_PREBUILT"
  mkdir -p "$BUILD/examples/pie" "$BUILD/tests/gpu"
  cp "$PIE_PREBUILT/pie_bench" "$BUILD/examples/pie/"
  cp "$PIE_PREBUILT/pie_gpu_test_fp8" "$BUILD/tests/gpu/"
  STAGES=${STAGES//build/}
elif [ -n "${PIE_PREBUILT:-}" ]; then
  say "prebuilt binaries do not load here: building"
  STAGES="build,$STAGES"
fi

if has fixtures; then  # transformers on the GPU, while the build runs on the CPUs
  (timeout 240 python3 tests/fp8/make_fp8_fixtures.py > "$LOGS/fixtures.log" 2>&1; echo "rc=$?" >> "$LOGS/fixtures.log") &
  FIX_PID=$!
fi
if has build; then
  run configure 120 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DPIE_BUILD_BENCH=OFF -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_TESTS=ON
  run build 330 cmake --build "$BUILD" -j "$(nproc)" --target pie_bench pie_gpu_test_fp8
fi
BIN="$BUILD/examples/pie/pie_bench"
if has test; then  # what needs no fixture, while transformers builds them
  run gpu_test_fp8 150 "$BUILD/tests/gpu/pie_gpu_test_fp8" --gtest_color=no \
    --gtest_filter='Fp8Kernels.*:Fp8Engine.PerChannel*:Fp8Engine.Bf16*:Fp8Engine.Dummy*'
  grep -E "^\[fp8|OK \]|FAILED  \]|Failure|Expected|Which is|Value of|error" "$LOGS/gpu_test_fp8.log" | head -50 | tee -a "$SUM"
fi
if has test; then  # the batch-1 GEMV alone against the copy bandwidth (a disabled test: a measurement)
  run gemv_alone 60 "$BUILD/tests/gpu/pie_gpu_test_fp8" --gtest_color=no --gtest_also_run_disabled_tests \
    --gtest_filter='Fp8Bench.*'
  grep -E "^\[fp8 gemv alone" "$LOGS/gemv_alone.log" | tee -a "$SUM"
fi
if has fixtures && [ -n "${FIX_PID:-}" ]; then
  wait "$FIX_PID"
  tail -4 "$LOGS/fixtures.log" | sed 's/^/   | /' | tee -a "$SUM"
  tar czf "$OUT/fp8_fixtures.tgz" tests/fp8/fixtures 2>/dev/null
fi
if has test; then
  run gpu_test_fp8_fixtures 120 "$BUILD/tests/gpu/pie_gpu_test_fp8" --gtest_color=no \
    --gtest_filter='Fp8Engine.Published*:Fp8Engine.Transformers*'
  grep -E "^\[fp8|OK \]|FAILED  \]|Failure|Expected|Which is|Value of|error|SKIP" "$LOGS/gpu_test_fp8_fixtures.log" | head -30 | tee -a "$SUM"
fi
# One workload, bf16 then fp8 (128×128 blocks: the Qwen3-8B-FP8 config) in the same call.
if has bench; then
  for v in "bf16 $MODEL" "fp8 $FP8_MODEL"; do set -- $v
    run "$1_latency" 60 "$BIN" "$2" --load-format dummy --mode latency --input-len 128 --output-len 128 \
      --num-iters 3 --num-iters-warmup 1 --max-num-seqs 8 --output-json "$LOGS/$1_latency.json"
    grep -E "^(latency|engine)" "$LOGS/$1_latency.log" | sed "s/^/$1 /" | tee -a "$SUM"
  done
  for v in "bf16 $MODEL" "fp8 $FP8_MODEL"; do set -- $v
    run "$1_2048" 100 "$BIN" "$2" --load-format dummy --mode throughput --num-prompts 2048 \
      --input-len 128 --output-len 128 --max-num-seqs 512 --output-json "$LOGS/$1_2048.json"
    grep -E "^(throughput|roofline|decode at batch (1|512):)" "$LOGS/$1_2048.log" | sed "s/^/$1 2048 /" | tee -a "$SUM"
  done
  for v in "bf16 $MODEL" "fp8 $FP8_MODEL"; do set -- $v
    run "$1_256" 80 "$BIN" "$2" --load-format dummy --mode throughput --num-prompts 256 \
      --input-len 512 --output-len 256 --max-num-seqs 256 --output-json "$LOGS/$1_256.json"
    grep -E "^(throughput|roofline)" "$LOGS/$1_256.log" | sed "s/^/$1 256 /" | tee -a "$SUM"
  done
fi
if has channel; then  # --quantization fp8 on the bf16 config: per-channel weights, per-token activations
  run channel_latency 60 "$BIN" "$MODEL" --load-format dummy --quantization fp8 --mode latency --input-len 128 \
    --output-len 128 --num-iters 3 --num-iters-warmup 1 --max-num-seqs 8 --output-json "$LOGS/channel_latency.json"
  grep -E "^latency" "$LOGS/channel_latency.log" | sed "s/^/channel /" | tee -a "$SUM"
  run channel_2048 100 "$BIN" "$MODEL" --load-format dummy --quantization fp8 --mode throughput --num-prompts 2048 \
    --input-len 128 --output-len 128 --max-num-seqs 512 --output-json "$LOGS/channel_2048.json"
  grep -E "^(throughput|roofline)" "$LOGS/channel_2048.log" | sed "s/^/channel 2048 /" | tee -a "$SUM"
fi
if has trace; then
  TRACER=${PIE_KERNEL_TRACER:-$(ls "$BUILD"/bench/cuda/libpie_kernel_trace.so .device/lib/libpie_kernel_trace.so 2>/dev/null | head -1)}
  for spec in ${PIE_TRACES:-bf16:1 fp8:1 bf16:512 fp8:512}; do  # weights:batch
    IFS=: read -r dt batch <<< "$spec"
    tag="b$batch"
    if [ "$dt" = fp8 ]; then dir=$FP8_MODEL wb=1; else dir=$MODEL wb=2; fi
    [ -z "$TRACER" ] && { say "trace: no CUPTI tracer"; break; }
    if [ "$batch" = 1 ]; then args="--mode latency --input-len 128 --output-len 128 --num-iters 1 --num-iters-warmup 1 --max-num-seqs 8"
    else args="--mode throughput --num-prompts 512 --input-len 128 --output-len 24 --max-num-seqs 512"; fi
    csv="/tmp/trace_${dt}_$tag.csv"
    run "trace_${dt}_$tag" 90 env CUDA_INJECTION64_PATH="$(realpath "$TRACER")" PIE_KERNEL_TRACE="$csv" "$BIN" "$dir" \
      --load-format dummy $args
    python3 bench/nsys_decode_profile.py "$csv" --batch "$batch" --weight-bytes "$wb" --copy-tbps 4.2 \
      > "$LOGS/profile_${dt}_$tag.txt" 2>&1
    sed "s/^/[$dt $tag] /" "$LOGS/profile_${dt}_$tag.txt" | tee -a "$SUM"
  done
fi
say "done"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
cat "$SUM"
