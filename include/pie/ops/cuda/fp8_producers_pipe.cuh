#pragma once
/// \file fp8_producers_pipe.cuh
/// \brief SwiGLU + fp8 quantization (silu_and_mul_fp8's loads-first kernel) on a resident grid
/// whose rows arrive by bulk copies into a two-stage shared-memory ring, so that the next rows'
/// bytes stream while a row is reduced, quantized and stored (PIE_FP8_PRODUCERS=pipe; opt-in until
/// measured).
///
/// Why: fp8_producers_v2.cuh runs a CTA per row (384 threads for Qwen3-8B's 12,288 columns, two
/// CTAs per SM), so at 512 rows the grid is two waves, and each wave loads, then reduces, then
/// stores with DRAM idle between its loads and the next wave's: 19.7 µs for 31.5 MB at batch 512
/// per token (53% of copy, one H100, 2026-12-07), 65 µs at 2048 rows (65%). Here every CTA of the
/// resident grid issues its first two rows' copies (48 KB each at Qwen3-8B) at once, and refills a
/// stage as soon as the CTA's threads have read it, so the rows of a whole step are
/// in flight from the start at 512 rows and the DRAM stream never drains between rows at 2048.
///
/// Bits: each thread takes the same vectors as silu_and_mul_fp8_v2_kernel (vector i = tid + k·T),
/// widens the same 16-byte words (from shared memory instead of registers loaded first) and runs the same silu_mul8_stored and
/// fp8_quant_regs, so outputs, codes and scales are the v2 kernel's bit for bit
/// (Fp8Kernels.FusedProducersAreBitIdenticalToTheSeparateKernels runs both).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "pie/ops/cuda/bulk_copy.cuh"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/fp8_producers_v2.cuh"
#include "pie/ops/cuda/fp8_quant.cuh"

namespace pie::ops::cuda {

/// Whether SwiGLU's fp8 producer takes the pipelined resident grid (PIE_FP8_PRODUCERS=pipe; the
/// norm and the standalone quantization keep v2's kernels). Read once.
inline bool fp8_producers_pipe_on() {
  static const bool on = [] {
    const char* v = std::getenv("PIE_FP8_PRODUCERS");
    return v != nullptr && std::strcmp(v, "pipe") == 0;
  }();
  return on;
}
/// A launcher's `pipe` argument: 0 or 1 chooses, −1 (the default) as fp8_producers_pipe_on() says.
inline bool fp8_producers_pipe_choice(int pipe) { return pipe < 0 ? fp8_producers_pipe_on() : pipe != 0; }

namespace detail {

/// Rows a CTA of silu_and_mul_fp8_pipe_kernel has in its ring: two hold a step of 512 rows in
/// flight at once on 132 SMs × 2 CTAs, and at more rows keep ≥ 96 KB per SM requested, above
/// the ~25 KB per SM that the copy bandwidth × latency product asks.
inline constexpr int kFp8PipeStages = 2;
/// Threads a CTA of silu_and_mul_fp8_pipe_kernel may have: 384 (Qwen3-8B's inter 12,288 at 4
/// vectors a thread) under a bound of two CTAs per SM, i.e. ≤ 85 registers (one CTA per SM would
/// stall the SM's only warps at every barrier). Wider rows keep v2's kernel.
inline constexpr int kSiluFp8PipeMaxThreads = 384;
/// Most dynamic shared memory the ring may take: under sm_90's 227 KB opt-in limit with room for the
/// kernel's static barriers (Qwen3-8B's ring is 96 KB; 200 KB is inter ≤ 25,600 at 16 bits).
inline constexpr int kFp8PipeMaxSmem = 200 * 1024;

/// SwiGLU + quantization of rows blockIdx.x, blockIdx.x + G, … (G = gridDim.x, the resident
/// CTAs): row j of the CTA lands in stage j % 2 of the ring (gate then up, 2·inter elements, one
/// bulk copy completing on the stage's mbarrier); the CTA's threads run SwiGLU on their vectors
/// of the stage, the CTA synchronises, and thread 0 refills the stage with row j + 2 before the
/// quantization (the row's amax reduction and its codes' stores). Padding rows (M ≤ m < Mp) get
/// zero codes and scale 1 without a copy.
/// blockDim.x = fp8_regs_threads(inter, VPT, MaxThreads); dynamic shared memory
/// kFp8PipeStages · 2 · inter · sizeof(T).
template <class T, int VPT, int MaxThreads, bool kStore>
__global__ void __launch_bounds__(MaxThreads, 2)
    silu_and_mul_fp8_pipe_kernel(const T* __restrict__ in, int64_t in_stride, T* __restrict__ out, int64_t out_stride,
                                 int inter, int M, int Mp, int per_token, __nv_fp8_e4m3* __restrict__ q,
                                 float* __restrict__ s) {
  extern __shared__ __align__(128) unsigned char pipe_smem[];
  __shared__ __align__(8) uint64_t bar[kFp8PipeStages];
  __shared__ float red[32];
  T* ring = reinterpret_cast<T*>(pipe_smem);
  const int row_elems = 2 * inter, G = static_cast<int>(gridDim.x);
  const uint32_t row_bytes = static_cast<uint32_t>(row_elems) * sizeof(T);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int st = 0; st < kFp8PipeStages; ++st) mbar_init(&bar[st], 1);
  }
  __syncthreads();
  pdl_launch_dependents();
  pdl_wait();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int st = 0; st < kFp8PipeStages; ++st) {
      const int m = static_cast<int>(blockIdx.x) + st * G;
      if (m < M) {
        mbar_arrive_expect_tx(&bar[st], row_bytes);
        bulk_copy_g2s(ring + st * row_elems, in + int64_t(m) * in_stride, row_bytes, &bar[st]);
      }
    }
  }
  const int nvec = inter / 8;
  int j = 0;
  for (int m = static_cast<int>(blockIdx.x); m < Mp; m += G, ++j) {
    T* o = out + int64_t(m) * out_stride;
    if (m >= M) {
      fp8_quant_row<T, 1>(static_cast<const T*>(o), m, M, Mp, inter, per_token != 0, q, s, red);
      continue;
    }
    const int st = j % kFp8PipeStages;
    mbar_wait(&bar[st], static_cast<uint32_t>(j / kFp8PipeStages) & 1u);
    const T* g = ring + st * row_elems;
    const T* u = g + inter;
    float v[VPT][8];
    silu_mul_vectors<T, VPT, kStore>(nvec, o, v, [&](int, int i, uint4& gw, uint4& uw) {
      gw = *reinterpret_cast<const uint4*>(g + i * 8);
      uw = *reinterpret_cast<const uint4*>(u + i * 8);
    });
    __syncthreads();  // every thread is done with the stage: it may be refilled
    if (threadIdx.x == 0) {
      const int next = m + kFp8PipeStages * G;
      if (next < M) {
        mbar_arrive_expect_tx(&bar[st], row_bytes);
        bulk_copy_g2s(ring + st * row_elems, in + int64_t(next) * in_stride, row_bytes, &bar[st]);
      }
    }
    fp8_quant_regs<VPT>(v, m, Mp, inter, per_token != 0, q, s, red);
  }
}

/// Launches silu_and_mul_fp8_pipe_kernel over Mp rows on the CTAs that fit at once (occupancy at
/// this row's ring); false (nothing launched) when a row needs more than MaxThreads threads at VPT
/// vectors, the ring does not fit, or a row is not 16-byte aligned for the bulk copy.
template <int VPT, int MaxThreads, class T>
bool launch_silu_and_mul_fp8_pipe(const T* in, int64_t in_stride, T* out, int64_t out_stride, int64_t inter,
                                  int64_t M, int64_t Mp, bool per_token, __nv_fp8_e4m3* q, float* s,
                                  cudaStream_t stream, bool store = true) {
  const int rt = fp8_regs_threads(inter, VPT, MaxThreads);
  const size_t smem = size_t(kFp8PipeStages) * 2 * size_t(inter) * sizeof(T);
  if (rt == 0 || smem > size_t(kFp8PipeMaxSmem) || (in_stride * sizeof(T)) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(in) % 16 != 0)
    return false;
  auto kern = store ? silu_and_mul_fp8_pipe_kernel<T, VPT, MaxThreads, true>
                    : silu_and_mul_fp8_pipe_kernel<T, VPT, MaxThreads, false>;
  // Every launch, as v3's: the attribute is per device, and the ring's size (not the most a CTA may
  // take, which with the static barriers could exceed the opt-in limit) is what is asked for.
  PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int per_sm = 0;
  PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, rt, smem));
  if (per_sm < 1) return false;
  const int64_t ctas = std::min<int64_t>(Mp, int64_t(per_sm) * num_sms());
  launch_pdl(kern, dim3(static_cast<unsigned>(ctas)), dim3(rt), smem, stream, in, in_stride, out, out_stride,
             static_cast<int>(inter), static_cast<int>(M), static_cast<int>(Mp), per_token ? 1 : 0, q, s);
  return true;
}

}  // namespace detail
}  // namespace pie::ops::cuda
