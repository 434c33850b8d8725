#!/usr/bin/env bash
# bench/device_ctxgraph.sh — issues 14/15: decode CUDA graphs per context class
# (PIE_DECODE_GRAPH_CONTEXTS=1, engine/decode_context_classes.hpp), opt-in until this has run.
# One GPU call within PIE_DEADLINE_S (default 420), each step under its own limit:
#   1. build pie_gpu_test_runner and pie_bench from source for sm_90a (git-ignored build dir, ≤ 240 s),
#      or with PIE_PREBUILT=dir take them from dir (plain or .gz, built for sm_90a from this tree);
#   2. pie_gpu_test_runner GpuRunner.*: graph replay with context classes against eager over steps
#      whose longest context crosses class bounds (greedy tokens, logits within 1e-2), and bit
#      identity under --batch-invariant; the other runner tests beside them;
#   3. pie bench, Qwen3-8B shape (PIE_MODEL_DIR, default bench/models/Qwen3-8B), dummy weights, one
#      engine per setting (--mode both: batch 1 128/128 latency, then 64 x (128, 128) throughput
#      with --max-num-seqs 64), same binary, same call:
#        --max-model-len 40960 switch off | on | the default max_model_len (256, the floor);
#      then 48 x (128, 128) --max-num-seqs 48 at 40960 off | on (bucket 48 is split 4 ways at
#      40960 but not at its 512 class; bucket 64 has one split at every bound, so it cannot move).
# Summary: $OUT/summary.txt (the lines to compare last); logs: $OUT/logs.tgz.
#   OUT=dir bash bench/device_ctxgraph.sh      (from the root of a checkout)
set -u
OUT=${OUT:-/tmp/pie_ctxgraph_out}
BUILD=${PIE_BUILD_DIR:-.device/build-ctxgraph}  # git-ignored: a later call on the warm machine reuses it
DEADLINE=${PIE_DEADLINE_S:-420}
M8=${PIE_MODEL_DIR:-bench/models/Qwen3-8B}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS RUN_TAIL=10 RUN_MIN_LEFT=10
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
finish() { tar -czf "$OUT/logs.tgz" -C "$OUT" logs 2>/dev/null && rm -rf "$LOGS"; }
trap finish EXIT
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
unset PIE_DECODE_GRAPH_CONTEXTS
say "device: $(gpu_line)"

if [ -n "${PIE_PREBUILT:-}" ] && { [ -f "$PIE_PREBUILT" ] || [ -f "$PIE_PREBUILT/examples/pie/pie_bench" ]; }; then  # a bench/device_bundle.sh bundle
  use_prebuilt
  BENCH="$BUILD/examples/pie/pie_bench" TEST="$BUILD/tests/gpu/pie_gpu_test_runner"
elif [ -n "${PIE_PREBUILT:-}" ]; then  # binaries built for sm_90a elsewhere (plain or .gz): no build
  mkdir -p /tmp/pie_ctxgraph_bin
  for f in pie_bench pie_gpu_test_runner; do
    if [ -f "$PIE_PREBUILT/$f.gz" ]; then gunzip -c "$PIE_PREBUILT/$f.gz" > /tmp/pie_ctxgraph_bin/$f; else cp "$PIE_PREBUILT/$f" /tmp/pie_ctxgraph_bin/$f; fi
    chmod +x /tmp/pie_ctxgraph_bin/$f
  done
  BENCH=/tmp/pie_ctxgraph_bin/pie_bench TEST=/tmp/pie_ctxgraph_bin/pie_gpu_test_runner
  say "prebuilt binaries from $PIE_PREBUILT: $(cat "$PIE_PREBUILT/BUILT_FROM.txt" 2>/dev/null | head -1)"
else
  run configure 60 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DPIE_BUILD_BENCH=OFF -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_TESTS=ON -DPIE_MOE_CUTLASS=OFF
  run build 240 cmake --build "$BUILD" -j "$(nproc)" --target pie_bench pie_gpu_test_runner ||
    grep -E "error" "$LOGS/build.log" | head -20 | tee -a "$SUM"
  BENCH="$BUILD/examples/pie/pie_bench" TEST="$BUILD/tests/gpu/pie_gpu_test_runner"
fi

run test_runner 100 "$TEST" --gtest_color=no --gtest_filter='GpuRunner.*'
grep -E "^\[ctx classes|^\[gpu|OK \]|FAILED  \]|Failure|Expected|Which is|PASSED" "$LOGS/test_runner.log" | head -40 |
  tee -a "$SUM"

if [ -f "$M8/config.json" ]; then
  both() {  # NAME ENV... -- ARGS...: one engine, batch-1 latency then the throughput run
    local name=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    run "$name" 75 env "${envs[@]}" "$BENCH" "$M8" --load-format dummy --input-len 128 --output-len 128 \
      --num-iters 5 --num-iters-warmup 1 --output-json "$OUT/$name.json" "$@"
    grep -E "^(engine|latency|throughput|roofline|decode at)|captured" "$LOGS/$name.log" | sed "s/^/[$name] /" |
      tee -a "$SUM"
  }
  W64=(--mode both --num-prompts 64 --max-num-seqs 64)
  both off_40960 PIE_DECODE_GRAPH_CONTEXTS=0 -- "${W64[@]}" --max-model-len 40960
  both on_40960 PIE_DECODE_GRAPH_CONTEXTS=1 -- "${W64[@]}" --max-model-len 40960
  both floor_256 PIE_DECODE_GRAPH_CONTEXTS=0 -- "${W64[@]}"
  W48=(--mode throughput --num-prompts 48 --max-num-seqs 48 --max-model-len 40960)
  both off_b48 PIE_DECODE_GRAPH_CONTEXTS=0 -- "${W48[@]}"
  both on_b48 PIE_DECODE_GRAPH_CONTEXTS=1 -- "${W48[@]}"
  say "summary (ITL at batch 1; decode ms/step at batch 64 / 48):"
  for n in off_40960 on_40960 floor_256 off_b48 on_b48; do
    echo "$n: $(grep -hoE "ITL [0-9.]+ ms" "$LOGS/$n.log" | head -1)  $(grep -hoE "decode at batch [0-9]+: [0-9.]+ ms/step" \
      "$LOGS/$n.log" | head -1)  $(grep -hoE "captured [0-9]+ decode CUDA graphs[^)]*\) in [0-9.]+ s" "$LOGS/$n.log" | head -1)" |
      tee -a "$SUM"
  done
else
  say "no $M8/config.json: pie bench skipped"
fi
say "done"
