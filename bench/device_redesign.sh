#!/usr/bin/env bash
# bench/device_redesign.sh — the one-engine redesign (issue 13) against the commit before it, in
# one GPU machine's calls: build this tree and $PIE_OLD_SRC (the pre-redesign source, e.g.
# `git archive <commit> | tar -x -C .devrun/old`), run the GPU tests of this tree (runner vs the
# CPU forward, graphs, batch invariance, OLMo-2 user model, kernel tests, HF transformers), then
# `pie bench` of both builds interleaved on the same workloads (batch-1 128/128 latency and
# 2048 × (128, 128) throughput, Qwen3-8B shape, dummy weights).
#
#   OUT=dir PIE_STAGES=build,test,bench bash bench/device_redesign.sh
# PIE_MODEL_DIR holds config.json/generation_config.json of Qwen3-8B (default .devrun/Qwen3-8B).
set -u
OUT=${OUT:-/tmp/pie_redesign_out}
MODEL=${PIE_MODEL_DIR:-.devrun/Qwen3-8B}
OLD=${PIE_OLD_SRC:-.devrun/old}
STAGES=${PIE_STAGES:-build,test,bench}
JOBS=${PIE_JOBS:-$(nproc)}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
has() { [[ ",$STAGES," == *",$1,"* ]]; }
LOGDIR=$OUT RUN_TAIL=12 RUN_MIN_LEFT=5
source "$(dirname "$0")/device_lib.sh"  # say, run (NAME LIMIT_S CMD...), gpu_line
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
say "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
GEN=(); command -v ninja > /dev/null && GEN=(-G Ninja)
CFG=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DPIE_BUILD_BENCH=OFF -DPIE_BUILD_EXAMPLES=ON
     -DPIE_BUILD_TESTS=ON)

if has build; then
  run configure_new 120 cmake -S . -B build-new "${GEN[@]}" "${CFG[@]}"
  run configure_old 120 cmake -S "$OLD" -B build-old "${GEN[@]}" "${CFG[@]}"
  run build_new 420 cmake --build build-new -j "$JOBS" --target pie_bench pie_gpu_test_runner pie_gpu_test_hf \
    olmo2_gpu_test pie_cuda_test_elementwise pie_cuda_test_sampling &
  run build_old 420 cmake --build build-old -j "$((JOBS / 2))" --target pie_bench pie_gpu_test_hf &
  wait
fi

if has test; then
  for t in ${PIE_TEST_BINS:-build-new/tests/gpu/pie_gpu_test_runner build-new/examples/custom_model/olmo2_gpu_test \
           build-new/tests/cuda/pie_cuda_test_elementwise build-new/tests/cuda/pie_cuda_test_sampling}; do
    run "test_$(basename "$t")" 240 "$t" --gtest_color=no
    grep -E "^\[(gpu|batch|olmo2)|OK \]|FAILED  \]|Failure|PASSED" "$OUT/test_$(basename "$t").log" | head -30 | tee -a "$SUM"
  done
  run hf_reference 150 python3 tests/gpu/make_hf_reference.py --out /tmp/pie_hfref --config-8b "$MODEL/config.json" \
    --layers-8b "${PIE_HF_LAYERS:-8}"
  # The same checkpoints through the pre-redesign build: the agreement of both, same call.
  for side in new old; do
    PIE_GPU_HF_DIR=/tmp/pie_hfref run "test_gpu_hf_$side" 150 build-$side/tests/gpu/pie_gpu_test_hf --gtest_color=no
    grep -E "greedy agreement|OK \]|FAILED  \]" "$OUT/test_gpu_hf_$side.log" | sed "s/^/[$side] /" | head -8 | tee -a "$SUM"
  done
fi

if has bench; then
  # Interleaved old/new, twice: the spread between the repeats is the noise floor.
  for rep in $(seq 1 "${PIE_REPS:-2}"); do
    for side in old new; do
      BIN=build-$side/examples/pie/pie_bench
      run "lat_${side}_$rep" 150 "$BIN" "$MODEL" --load-format dummy --mode latency --input-len 128 --output-len 128 \
        --num-iters 5 --max-num-seqs 8 --output-json "$OUT/lat_${side}_$rep.json"
      grep -E "^latency" "$OUT/lat_${side}_$rep.log" | sed "s/^/[$side $rep] /" | tee -a "$SUM"
      run "tput_${side}_$rep" 200 "$BIN" "$MODEL" --load-format dummy --mode throughput --num-prompts 2048 \
        --input-len 128 --output-len 128 --max-num-seqs 512 --output-json "$OUT/tput_${side}_$rep.json"
      grep -E "^(throughput|roofline|decode at)" "$OUT/tput_${side}_$rep.log" | sed "s/^/[$side $rep] /" | tee -a "$SUM"
    done
  done
fi
say "done"
