#pragma once
/// \file fp8_quant.cuh
/// \brief Dynamic activation quantization for the fp8 GEMM (core/fp8_weight.hpp's rule):
/// x [M, K] (bf16/f16) → e4m3 codes [Mp, K] and float scales, per token and 128-column group
/// (block weights) or per token (per-channel weights). Mp = M rounded up to 4: rows M..Mp−1 are
/// zero with scale 1, so the GEMM may run on Mp rows. Scale layouts are cuBLASLt's for the B
/// operand (x is B: y [M, N] is computed column-major as W·xᵀ): group scales [ceil(K/128)][Mp]
/// (VEC128_32F: consecutive tokens adjacent), per-token scales [Mp] (OUTER_VEC_32F).
/// Same arithmetic as ops::cpu::fp8_quantize_rows: scale = amax / 448, code = satfinite RNE of
/// x / scale (an IEEE division, whatever the compiler's fast-math flags).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

/// Rows M rounded up to the 4 the fp8 GEMM runs on.
inline int64_t fp8_padded_rows(int64_t m) { return (m + 3) / 4 * 4; }
/// Most 128-column groups in one row (K ≤ 32768).
inline constexpr int kFp8MaxGroups = 256;

/// Whether the quantization row loads 8 groups per warp before reducing them by default (the
/// same codes either way; opt-in until measured on the device).
inline constexpr bool kFp8QuantBatchedDefault = false;
/// kFp8QuantBatchedDefault, or PIE_FP8_QUANT_BATCHED=0/1 (read once).
inline bool fp8_quant_batched() {
  static const bool on = [] {
    const char* v = std::getenv("PIE_FP8_QUANT_BATCHED");
    return v != nullptr ? std::atoi(v) != 0 : kFp8QuantBatchedDefault;
  }();
  return on;
}

namespace detail {

/// Quantizes row m of width K from `row` by the whole CTA (any multiple of 32 threads; a warp
/// per 128-column group, a lane 4 consecutive columns: one 8-byte load and one 4-byte store when
/// the row allows it); rows m ≥ M are padding (zero codes, scale 1). A CTA that wrote `row`
/// itself must __syncthreads first. gmax: shared, ≥ ceil(K / 128) floats. kB: groups a warp
/// loads before it reduces them (1: one L2 round trip per group and pass; 8: one per 8 groups,
/// the same arithmetic, so the same codes).
template <class T, int kB = 1>
__device__ __forceinline__ void fp8_quant_row(const T* row, int m, int M, int Mp, int K, bool per_token,
                                              __nv_fp8_e4m3* __restrict__ q, float* __restrict__ s, float* gmax) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int groups = (K + kFp8Block - 1) / kFp8Block;
  if (m >= M) {
    for (int k = threadIdx.x; k < K; k += blockDim.x) q[int64_t(m) * K + k].__x = 0;
    if (per_token) {
      if (threadIdx.x == 0) s[m] = 1.0f;
    } else {
      for (int g = threadIdx.x; g < groups; g += blockDim.x) s[int64_t(g) * Mp + m] = 1.0f;
    }
    return;
  }
  __nv_fp8_e4m3* qr = q + int64_t(m) * K;
  // 4 columns per lane as one 8-byte load / 4-byte store: K % 4 == 0 and aligned row starts.
  const bool vec = K % 4 == 0 && (reinterpret_cast<uintptr_t>(row) & 7) == 0 && (reinterpret_cast<uintptr_t>(qr) & 3) == 0;
  auto load4 = [&](int k, float (&v)[4]) {
    if (vec && k + 3 < K) {
      const uint2 u = *reinterpret_cast<const uint2*>(row + k);
      const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = to_f32(h[j]);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = k + j < K ? to_f32(row[k + j]) : 0.0f;
    }
  };
  for (int g0 = warp; g0 < groups; g0 += warps * kB) {
    float v[kB][4];
#pragma unroll
    for (int i = 0; i < kB; ++i) {
      const int g = g0 + i * warps;
      if (kB == 1 || g < groups) load4(g * kFp8Block + lane * 4, v[i]);
    }
#pragma unroll
    for (int i = 0; i < kB; ++i) {
      const int g = g0 + i * warps;
      if (kB > 1 && g >= groups) break;
      float a = fmaxf(fmaxf(fabsf(v[i][0]), fabsf(v[i][1])), fmaxf(fabsf(v[i][2]), fabsf(v[i][3])));
      a = warp_max(a);
      if (lane == 0) gmax[g] = a;
    }
  }
  __syncthreads();
  float tok = 0.0f;
  if (per_token)
    for (int g = 0; g < groups; ++g) tok = fmaxf(tok, gmax[g]);
  for (int g0 = warp; g0 < groups; g0 += warps * kB) {
    float vb[kB][4];
#pragma unroll
    for (int i = 0; i < kB; ++i) {
      const int g = g0 + i * warps;
      if (kB == 1 || g < groups) load4(g * kFp8Block + lane * 4, vb[i]);
    }
#pragma unroll
    for (int i = 0; i < kB; ++i) {
      const int g = g0 + i * warps;
      if (kB > 1 && g >= groups) break;
      const float sc = fp8_group_scale(per_token ? tok : gmax[g]);
      const int k = g * kFp8Block + lane * 4;
      const float (&v)[4] = vb[i];
      __nv_fp8_e4m3 c[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) c[j] = from_f32<__nv_fp8_e4m3>(__fdiv_rn(v[j], sc));
      if (vec && k + 3 < K) {
        *reinterpret_cast<uint32_t*>(qr + k) =
            uint32_t(c[0].__x) | uint32_t(c[1].__x) << 8 | uint32_t(c[2].__x) << 16 | uint32_t(c[3].__x) << 24;
      } else {
        for (int j = 0; j < 4 && k + j < K; ++j) qr[k + j] = c[j];
      }
      if (lane == 0 && !per_token) s[int64_t(g) * Mp + m] = sc;
    }
  }
  if (per_token && threadIdx.x == 0) s[m] = fp8_group_scale(tok);
}

/// One CTA of 128 threads per row (padded rows included).
template <class T>
__global__ void __launch_bounds__(128) fp8_quant_kernel(const T* __restrict__ x, int64_t ldx, int M, int Mp, int K,
                                                        int per_token, __nv_fp8_e4m3* __restrict__ q,
                                                        float* __restrict__ s, int batched) {
  __shared__ float gmax[kFp8MaxGroups];
  pdl_wait();
  const int m = blockIdx.x;
  const T* row = x + int64_t(m < M ? m : 0) * ldx;
  if (batched) fp8_quant_row<T, 8>(row, m, M, Mp, K, per_token != 0, q, s, gmax);
  else fp8_quant_row<T, 1>(row, m, M, Mp, K, per_token != 0, q, s, gmax);
  pdl_launch_dependents();
}

}  // namespace detail

/// Quantizes x [M, K] (row stride x.stride[0]) into q [Mp, K] and s (see the file comment);
/// `per_token`: one scale per row, else one per row and 128-column group.
template <class T>
void fp8_quantize(TensorView<T> x, bool per_token, fp8_e4m3* q, float* s, cudaStream_t stream) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "fp8_quantize: f16 or bf16 input");
  const int64_t M = x.shape[0], K = x.shape[1], Mp = fp8_padded_rows(M);
  PIE_CHECK(x.rank == 2 && x.stride[1] == 1, "fp8_quantize: x must be a matrix with contiguous rows");
  PIE_CHECK((K + kFp8Block - 1) / kFp8Block <= kFp8MaxGroups, "fp8_quantize: K = ", K, " exceeds ",
            kFp8MaxGroups * kFp8Block);
  if (M == 0) return;
  launch_pdl(detail::fp8_quant_kernel<device_t<T>>, dim3(static_cast<unsigned>(Mp)), dim3(128), 0, stream,
             dev(x.data), x.stride[0], static_cast<int>(M), static_cast<int>(Mp), static_cast<int>(K),
             per_token ? 1 : 0, reinterpret_cast<__nv_fp8_e4m3*>(q), s, fp8_quant_batched() ? 1 : 0);
}

}  // namespace pie::ops::cuda
