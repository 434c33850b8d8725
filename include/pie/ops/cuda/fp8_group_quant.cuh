#pragma once
/// \file fp8_group_quant.cuh
/// \brief The 1×128-group fp8 activation quantization (block-scaled weights) as a flat
/// elementwise kernel: a thread per 8 columns, a half-warp per 128-column group, no CTA per row.
/// A producer policy gives each thread its 8 values: the row itself (Fp8FlatRows, fp8_quantize)
/// or SwiGLU's output (fp8_producers.cuh's Fp8FlatSwiGlu, silu_and_mul_fp8).
///
/// Why: with one scale per 128 columns a group's amax is a 16-lane max, so nothing needs the
/// whole row — yet the register producers (fp8_producers_v2.cuh) run a CTA per row, sized to the
/// row, which leaves SwiGLU at batch 512 in two short waves of 512 CTAs: 21.9 µs a layer for 31.7 MB
/// (46% of copy; one H100, 2026-12-06 trace), where the bf16 SwiGLU, a flat kernel over the same
/// 25 MB in, ran at 97%. Here every thread is independent but for its half-warp's shuffle, so the
/// grid is as wide and as deep as the bf16 kernel's.
/// The arithmetic per group is fp8_quant_regs's: the amax a max (exact in any order),
/// fp8_group_scale, an IEEE division, satfinite RNE; the producers compute the row kernels' values
/// — so the same codes and scales bit for bit (Fp8Kernels.QuantizationIsBitIdenticalToTheCpu and
/// Fp8Kernels.FusedProducersAreBitIdenticalToTheSeparateKernels take the flat path against the CPU
/// and the row kernels). Rows M..Mp−1 are padding: zero codes and scale 1 (fp8_group_scale of an
/// amax of 0), their inputs never read. Per-token scales (per-channel weights) need the whole row and keep
/// the row kernels.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "pie/core/env_switch.hpp"
#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

/// Whether fp8_quantize and silu_and_mul_fp8 take the flat group kernel for 1×128 group scales
/// (opt-in until measured on a GPU), or PIE_FP8_FLAT_GROUPS=0/1 (read once).
inline constexpr bool kFp8FlatGroupsDefault = false;
inline bool fp8_flat_groups_on() {
  static const bool on = env_switch("PIE_FP8_FLAT_GROUPS", std::getenv("PIE_FP8_FLAT_GROUPS"), kFp8FlatGroupsDefault);
  return on;
}
/// A launcher's `flat` argument: 0 or 1 chooses; −1 (the default) takes fp8_flat_groups_on().
inline bool fp8_flat_groups_choice(int flat) { return flat < 0 ? fp8_flat_groups_on() : flat != 0; }

/// \brief The flat kernel's producer of x's own rows: vector vi of row m widened from T.
template <class T>
struct Fp8FlatRows {
  const T* x;
  int64_t ldx;
  /// The next kernel may launch once this one is done reading (fp8_quant_regs_kernel's place).
  static constexpr bool kLaunchDependentsFirst = false;
  __device__ __forceinline__ void operator()(int m, int vi, float (&v)[8]) const {
    widen_raw8<T>(ld_raw8(x + int64_t(m) * ldx + vi * 8), v);
  }
};

namespace detail {

inline constexpr int kFp8FlatThreads = 256;

/// Thread i of the grid: row i / (K/8), columns 8·(i % (K/8)) … 8·(i % (K/8)) + 7. K % 128 == 0, so
/// a half-warp's 16 vectors are one group of one row, and every lane of a warp reaches the
/// shuffles (threads past the padded rows only feed them zeros).
template <class Producer>
__global__ void __launch_bounds__(kFp8FlatThreads)
    fp8_flat_group_quant_kernel(const __grid_constant__ Producer prod, int K, int M, int Mp,
                                __nv_fp8_e4m3* __restrict__ q, float* __restrict__ s) {
  if constexpr (Producer::kLaunchDependentsFirst) pdl_launch_dependents();
  pdl_wait();
  const int nvec = K / 8;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int m = static_cast<int>(i / nvec), vi = static_cast<int>(i % nvec);
  float v[8];
  if (m < M) {
    prod(m, vi, v);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = 0.f;
  }
  float a = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) a = fmaxf(a, fabsf(v[j]));
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));  // within 16 lanes
  if (m < Mp) {
    const float sc = fp8_group_scale(a);
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t c = from_f32<__nv_fp8_e4m3>(__fdiv_rn(v[j], sc)).__x;
      if (j < 4) lo |= c << (8 * j);
      else hi |= c << (8 * (j - 4));
    }
    *reinterpret_cast<uint2*>(q + int64_t(m) * K + vi * 8) = make_uint2(lo, hi);
    if ((threadIdx.x & 15) == 0) s[int64_t(vi / 16) * Mp + m] = sc;
  }
  if constexpr (!Producer::kLaunchDependentsFirst) pdl_launch_dependents();
}

/// Whether the flat kernel takes rows of K columns: K % 128 == 0, 16-byte vectors in (`in` with
/// row stride ld_in, and `out` with ld_out unless null; 2-byte elements) and 8-byte codes out.
inline bool fp8_flat_fits(int64_t K, const void* in, int64_t ld_in, const void* out, int64_t ld_out, const void* q) {
  return K % kFp8Block == 0 && ld_in % 8 == 0 && reinterpret_cast<uintptr_t>(in) % 16 == 0 &&
         (out == nullptr || (ld_out % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0)) &&
         reinterpret_cast<uintptr_t>(q) % 8 == 0;
}

/// Launches the flat kernel over Mp rows of K columns (codes q [Mp, K], scales s [K/128][Mp]).
template <class Producer>
void launch_fp8_flat_group_quant(const Producer& prod, int64_t K, int64_t M, int64_t Mp, __nv_fp8_e4m3* q, float* s,
                                 cudaStream_t stream) {
  const int64_t threads = Mp * (K / 8);
  launch_pdl(fp8_flat_group_quant_kernel<Producer>,
             dim3(static_cast<unsigned>((threads + kFp8FlatThreads - 1) / kFp8FlatThreads)), dim3(kFp8FlatThreads), 0,
             stream, prod, static_cast<int>(K), static_cast<int>(M), static_cast<int>(Mp), q, s);
}

}  // namespace detail
}  // namespace pie::ops::cuda
