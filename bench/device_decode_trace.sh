#!/usr/bin/env bash
# bench/device_decode_trace.sh — where the tensor-core decode kernel's gain goes at the step level
# (issues 14, 15, 20), in one GPU call within PIE_DEADLINE_S (default 420).
#
# Why: on the H100 of 2026-12-05 the batch-invariant tensor-core split (PIE_DECODE_MMA_WIDE=all)
# ran group-4 decode attention at b512 ctx140 in 72.8 µs against the default CUDA-core kernel's
# 127.4 µs (kernel bench), yet `pie bench` 2048 × (128, 128) moved only 18.97 → 18.70 ms per step
# at batch 512: a ~2 ms gain predicted from the kernel bench (36 layers × ~55 µs) and 0.27 ms seen.
# A kernel trace of the replayed graphs of both runs shows which kernels the step really ran and
# how long attention took in them.
#
# Steps: build pie_bench (-DPIE_DECODE_FIXED_SPLIT=ON, so `all` is compiled in) and the CUPTI
# tracer (libpie_kernel_trace.so, g++ and CUPTI) from source in a git-ignored directory; then for each of
# default / PIE_DECODE_MMA_WIDE=all: `pie bench` 2048 × (128, 128) --max-num-seqs 512 (throughput,
# the same call's peer) and a traced run of 512 × (128, 64) profiled at batch 512
# (bench/nsys_decode_profile.py); then the same pair at batch 1 (latency + trace).
# Usage, in the repository root of the GPU machine (Qwen3-8B config in bench/models/Qwen3-8B):
#   OUT=dir bash bench/device_decode_trace.sh
set -u
OUT=${OUT:-/tmp/pie_decode_trace_out}
BUILD=${PIE_BUILD_DIR:-.device/build-trace}
MODEL=${PIE_MODEL_DIR:-bench/models/Qwen3-8B}
DEADLINE=${PIE_DEADLINE_S:-420}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=6 RUN_MIN_LEFT=15
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
export PYTHONUNBUFFERED=1
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
say "device: $(gpu_line)"

# bench/ needs Google Benchmark, which the GPU machine lacks: the tracer is built on its own.
if ! use_prebuilt; then  # else $PIE_PREBUILT (bench/device_bundle.sh), built with PIE_DECODE_FIXED_SPLIT=ON
  run configure 60 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DPIE_BUILD_TESTS=OFF -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_BENCH=OFF -DPIE_DECODE_FIXED_SPLIT=ON -DPIE_MOE_CUTLASS=OFF
  run tracer 60 g++ -O2 -shared -fPIC bench/cuda/kernel_trace.cpp -I/usr/local/cuda/include \
    -L/usr/local/cuda/lib64 -L/usr/local/cuda/extras/CUPTI/lib64 -lcupti -o "$BUILD/libpie_kernel_trace.so"
  run build 240 cmake --build "$BUILD" -j "$(nproc)" --target pie_bench \
    || grep -E "error" "$LOGS/build.log" | head -20 | tee -a "$SUM"
fi
BENCH=$BUILD/examples/pie/pie_bench
TRACER=""
for t in "$BUILD/libpie_kernel_trace.so" "$BUILD/bench/cuda/libpie_kernel_trace.so"; do [ -f "$t" ] && TRACER=$t; done
[ -x "$BENCH" ] || { say "no pie_bench"; exit 1; }
copy=4.2; case "$(gpu_line)" in *H100*) copy=2.99 ;; esac

for sw in 0 all; do
  run "tput_$sw" 60 env PIE_DECODE_MMA_WIDE=$sw "$BENCH" "$MODEL" --load-format dummy --mode throughput \
    --input-len 128 --output-len 128 --num-prompts 2048 --max-num-seqs 512 --output-json "$OUT/tput_$sw.json"
  grep -E "^(throughput|roofline|decode at)" "$LOGS/tput_$sw.log" | sed "s/^/[$sw] /" | tee -a "$SUM"
  [ -n "$TRACER" ] && trace_profile "trace512_$sw" 60 512 "trace b512 $sw" --copy-tbps $copy -- \
    env PIE_DECODE_MMA_WIDE=$sw "$BENCH" "$MODEL" --load-format dummy --mode throughput \
    --input-len 128 --output-len 64 --num-prompts 512 --max-num-seqs 512
done
for sw in 0 all; do
  run "lat_$sw" 40 env PIE_DECODE_MMA_WIDE=$sw "$BENCH" "$MODEL" --load-format dummy --mode latency \
    --input-len 128 --output-len 128 --num-iters 3 --num-iters-warmup 1
  grep -E "^latency" "$LOGS/lat_$sw.log" | sed "s/^/[$sw] /" | tee -a "$SUM"
  [ -n "$TRACER" ] && trace_profile "trace1_$sw" 45 1 "trace b1 $sw" --copy-tbps $copy -- \
    env PIE_DECODE_MMA_WIDE=$sw "$BENCH" "$MODEL" --load-format dummy --mode latency \
    --input-len 128 --output-len 128 --num-iters 1 --num-iters-warmup 1 --max-num-seqs 8
done
say "done"
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
