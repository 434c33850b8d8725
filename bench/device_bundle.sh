#!/usr/bin/env bash
# bench/device_bundle.sh — build, on THIS machine (no GPU needed), every binary the device scripts
# run, for sm_90a, and pack them as one file the device call carries: .device/bundle.txz.
#
# Why: a device call is at most 600 s and a session has about 1,800 device seconds. On
# 2026-12-05 the device build of the GPU tests and pie_bench no longer fitted its 240-s step, and a
# second call that carried another set of paths made CMake recompile everything (the warm
# machine's build dir lost its CUTLASS headers). Built here, a call spends its time on the GPU.
#
# The bundle is a superset: every opt-in compile option is ON (the run-time defaults are
# unchanged: the opt-in paths still need their environment switches), CUTLASS's MoE path, the
# CUDA kernel benches and the CUPTI tracer. Layout = the build tree's (examples/pie/pie_bench,
# tests/gpu/…, tests/cuda/…, bench/cuda/…), stripped, plus lib/ (shared libraries the GPU machine
# lacks) and BUILT_FROM.txt. On the device, `PIE_PREBUILT=DIR` makes device_final.sh,
# device_moeroute.sh, device_decode_trace.sh, device_fusion.sh and device_ctxgraph.sh use DIR
# instead of configuring and building:
#   PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_final.sh   (unpacked into /tmp/pie_bundle)
#
# Usage, in the repository root here (about 20-30 minutes on 2 cores):
#   bash bench/device_bundle.sh [BUILD_DIR]      (default ../build-bundle; .device/bundle.txz out)
set -euo pipefail
BUILD=${1:-../build-bundle}
CUTLASS=${PIE_CUTLASS_DIR:-$HOME/.cache/pie-deps/cutlass-4.2.0.0/include}
STAGE=$(mktemp -d)/pie_bundle
JOBS=${JOBS:-2}
TARGETS=(pie_bench pie_gpu_test_hf pie_gpu_test_runner pie_gpu_test_fp8 pie_gpu_test_prompt_logprobs
  pie_gpu_test_async_scheduling pie_gpu_test_device_sampling pie_gpu_test_fused_ops
  pie_cuda_test_moe pie_cuda_test_moe_cutlass pie_cuda_test_sampling pie_cuda_test_rope_kv pie_cuda_test_gemm
  pie_cuda_test_prefill_fp8_kv
  pie_bench_cuda_moe_decode pie_bench_cuda_persist pie_kernel_trace ${PIE_EXTRA_TARGETS:-})
# PIE_BUNDLE_TARGETS="a b …" builds only those (a call that runs a few binaries; faster here too).
[ -n "${PIE_BUNDLE_TARGETS:-}" ] && read -r -a TARGETS <<< "$PIE_BUNDLE_TARGETS"
# Left out for the 64-MiB carry limit (add with PIE_EXTRA_TARGETS): pie_cuda_test_attention_decode
# (26 MB packed alone: the decode kernel's every instantiation).
# Every opt-in compile option that exists in this tree's CMakeLists.txt, ON.
OPTS=()
for o in PIE_DECODE_FIXED_SPLIT PIE_DECODE_LATENCY PIE_MOE_DECODE_VARIANTS PIE_L2_PREFETCH PIE_FP8_CUTLASS; do
  grep -q "option($o " CMakeLists.txt && OPTS+=("-D$o=ON")
done
# 90a-real: SASS for sm_90a without the PTX beside it (the lent cards are all sm_90, so nothing
# JIT-compiles it), which halves the binaries: the carry limit (64 MiB with the tracked tree, 13 MB
# in 2026-12) is what bounds a bundle.
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a-real \
  -DPIE_BUILD_TESTS=ON -DPIE_BUILD_EXAMPLES=ON -DPIE_BUILD_BENCH=ON -DPIE_BUILD_CUDA_BENCH=ON \
  -DPIE_MOE_CUTLASS=ON -DPIE_CUTLASS_DIR="$CUTLASS" "${OPTS[@]}"
# Targets this tree does not define (an older or newer tree) are left out, with a note.
HAVE=()
HELP=$(cmake --build "$BUILD" --target help 2>/dev/null)  # once: grep -q would SIGPIPE it under pipefail
for t in "${TARGETS[@]}"; do
  if grep -qx "\.\.\. $t" <<< "$HELP"; then HAVE+=("$t")
  else echo "device_bundle: no target $t in this tree, left out"; fi
done
cmake --build "$BUILD" -j "$JOBS" --target "${HAVE[@]}"
mkdir -p "$STAGE/lib"
for t in "${HAVE[@]}"; do
  f=$(find "$BUILD" -type f \( -name "$t" -o -name "lib$t.so" \) -perm -u+x -print -quit)  # no head: pipefail
  [ -n "$f" ] || { echo "device_bundle: $t built, binary not found"; continue; }
  rel=${f#"$BUILD"/}
  mkdir -p "$STAGE/$(dirname "$rel")"
  cp "$f" "$STAGE/$rel"
  strip "$STAGE/$rel" 2>/dev/null || true
  # Shared libraries outside the toolkit and glibc/libstdc++ (the GPU machine has those).
  ldd "$f" | awk '/=> \// {print $3}' | grep -vE "/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux)[.-]|/cuda|libcuda|libnvidia|libcupti|libcublas|libnccl" |
    while read -r so; do cp -nL "$so" "$STAGE/lib/" 2>/dev/null || true; done || true  # grep: none left
done
# The tracer is found by the scripts next to pie_bench's tree as bench/cuda/libpie_kernel_trace.so.
{
  echo "pie bundle from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- include tests bench examples CMakeLists.txt || echo ' + uncommitted changes'), built $(date -u +%Y-%m-%dT%H:%MZ) for sm_90a"
  echo "options: ${OPTS[*]:-none} -DPIE_MOE_CUTLASS=ON -DPIE_BUILD_CUDA_BENCH=ON"
  echo "targets: ${HAVE[*]}"
} > "$STAGE/BUILT_FROM.txt"
mkdir -p .device
# xz: 52 MB against gzip's 62 (2026-12-05); tracked files are ~6.5 MB of the 64-MiB carry.
tar -cf - -C "$(dirname "$STAGE")" pie_bundle | xz -9 -T2 > .device/bundle.txz
ls -la .device/bundle.txz
cat "$STAGE/BUILT_FROM.txt"
size=$(stat -c %s .device/bundle.txz)
tree=$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
[ "$((size + ${tree:-0}))" -lt $((63 << 20)) ] || echo "device_bundle: WARNING .device/bundle.txz is $((size >> 20)) MiB and the tracked tree $((${tree:-0} >> 20)) MiB; a call carries at most 64 MiB of both"
