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
#include <cstring>

#include "pie/core/env_switch.hpp"
#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/fp8_group_quant.cuh"

namespace pie::ops::cuda {

/// Rows M rounded up to the 4 the fp8 GEMM runs on.
inline int64_t fp8_padded_rows(int64_t m) { return (m + 3) / 4 * 4; }
/// Most 128-column groups in one row (K ≤ 32768).
inline constexpr int kFp8MaxGroups = 256;

/// Whether the quantization row loads 8 groups per warp before reducing them by default (the
/// same codes either way; opt-in until measured on the device).
inline constexpr bool kFp8QuantBatchedDefault = false;
/// Whether the quantizing kernels (fp8_quantize and the fused producers of fp8_producers.cuh)
/// quantize from registers in one pass (fp8_quant_regs) instead of writing the row and reading
/// it back twice (fp8_quant_row). The same codes and scales (Fp8Kernels.FusedProducersAreBitIdentical
/// ToTheSeparateKernels); the default since it was measured (one H100, 2026-12-05: fp8 2048 ×
/// (128, 128) +1.8–2.8% with 128×128 blocks, +3.2% per channel; docs/benchmarks.md).
/// PIE_FP8_QUANT_REGS=0 goes back to the row kernels.
inline constexpr bool kFp8QuantRegsDefault = true;
/// kFp8QuantRegsDefault, or PIE_FP8_QUANT_REGS=0/1 (read once).
inline bool fp8_quant_regs_on() {
  static const bool on = [] {
    return env_switch("PIE_FP8_QUANT_REGS", std::getenv("PIE_FP8_QUANT_REGS"), kFp8QuantRegsDefault);
  }();
  return on;
}
/// A launcher's `regs` argument: 0 or 1 chooses; −1 (the default) takes fp8_quant_regs_on().
inline bool fp8_quant_regs_choice(int regs) { return regs < 0 ? fp8_quant_regs_on() : regs != 0; }
/// Vectors of 8 columns a thread of the standalone register kernel holds (rows ≤ 1024·4·8).
inline constexpr int kFp8QuantRegsVecs = 4;

/// Whether the register quantizers load every vector first (fp8_producers_v2.cuh's RMSNorm and
/// SwiGLU, fp8_quant_regs_kernel's kLoadsFirst; the same codes), as the number of vectors of 8 columns a
/// SwiGLU thread holds: 4 (the default since it was measured: one H100, 2026-12-05, SwiGLU at batch
/// 512 31.2 → 22.0 µs, fp8 2048 × (128, 128) +3.1%; docs/kernels.md), or 0 with
/// PIE_FP8_PRODUCERS=v1 (the first register kernels). Read once; another value is an error.
inline int fp8_producers_v2_vecs() {
  static const int vecs = [] {
    const char* v = std::getenv("PIE_FP8_PRODUCERS");
    if (v == nullptr || *v == '\0' || std::strcmp(v, "v2") == 0) return 4;
    PIE_CHECK(std::strcmp(v, "v1") == 0, "PIE_FP8_PRODUCERS=", v, ": expected v2 (the default) or v1");
    return 0;
  }();
  return vecs;
}
/// A launcher's `v2` argument: 0 keeps the first register kernels, nonzero takes the loads-first
/// ones, −1 (the default) as fp8_producers_v2_vecs() says.
inline int fp8_producers_v2_choice(int v2) {
  if (v2 < 0) return fp8_producers_v2_vecs();
  return v2 != 0 ? 4 : 0;
}

/// kFp8QuantBatchedDefault, or PIE_FP8_QUANT_BATCHED=0/1 (read once).
inline bool fp8_quant_batched() {
  static const bool on = [] {
    return env_switch("PIE_FP8_QUANT_BATCHED", std::getenv("PIE_FP8_QUANT_BATCHED"), kFp8QuantBatchedDefault);
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

/// Quantizes row m from the values the CTA holds in registers: thread t's vector k covers columns
/// 8i … 8i+7 with i = t + k·blockDim.x (valid when i < nvec = K / 8; invalid ones hold zeros).
/// A 128-column group is 16 consecutive vectors, so (blockDim.x a multiple of 32) a group's
/// vectors sit in 16 consecutive lanes of one k: its amax is a 16-lane max — no shared memory, no
/// write-and-read-back, one pass. The codes and scales are fp8_quant_row's: max is exact in any
/// order (zeros do not change an amax ≥ 0), then the same fp8_group_scale and IEEE division.
/// Needs K % 8 == 0 and q 8-byte aligned (8 codes per store). `red`: shared, ≥ 32 floats.
template <int VPT>
__device__ __forceinline__ void fp8_quant_regs(const float (&v)[VPT][8], int m, int Mp, int K, bool per_token,
                                               __nv_fp8_e4m3* __restrict__ q, float* __restrict__ s, float* red) {
  const int nvec = K / 8;
  float gmax[VPT];
  float tok = 0.0f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    float a = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) a = fmaxf(a, fabsf(v[k][j]));
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));  // within 16 lanes
    gmax[k] = a;
    tok = fmaxf(tok, a);
  }
  if (per_token) tok = block_max(tok, red);
  __nv_fp8_e4m3* qr = q + int64_t(m) * K;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * static_cast<int>(blockDim.x);
    if (i >= nvec) continue;
    const float sc = fp8_group_scale(per_token ? tok : gmax[k]);
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t c = from_f32<__nv_fp8_e4m3>(__fdiv_rn(v[k][j], sc)).__x;
      if (j < 4) lo |= c << (8 * j);
      else hi |= c << (8 * (j - 4));
    }
    *reinterpret_cast<uint2*>(qr + 8 * i) = make_uint2(lo, hi);
    if (!per_token && (threadIdx.x & 15) == 0) s[int64_t(i / 16) * Mp + m] = sc;
  }
  if (per_token && threadIdx.x == 0) s[m] = fp8_group_scale(tok);
}

/// The work of fp8_quant_kernel from registers, one row per CTA: the row is loaded once (16-byte
/// vectors), reduced per group across 16 lanes, quantized and stored. kLoadsFirst issues every
/// vector's load before widening any; otherwise each vector is loaded and widened in turn
/// (fp8_quant_regs_kernel's kLoadsFirst). The same values either way, so the same codes.
template <class T, int VPT, bool kLoadsFirst>
__device__ __forceinline__ void fp8_quant_regs_rows(const T* __restrict__ x, int64_t ldx, int M, int Mp, int K,
                                                    int per_token, __nv_fp8_e4m3* __restrict__ q,
                                                    float* __restrict__ s, float* red) {
  pdl_wait();
  const int m = blockIdx.x;
  if (m >= M) {
    fp8_quant_row<T, 1>(x, m, M, Mp, K, per_token != 0, q, s, red);  // padding: zero codes, scale 1
  } else {
    const T* row = x + int64_t(m) * ldx;
    const int nvec = K / 8;
    [[maybe_unused]] uint4 raw[VPT];
    if constexpr (kLoadsFirst) {
#pragma unroll
      for (int k = 0; k < VPT; ++k) {
        const int i = static_cast<int>(threadIdx.x) + k * static_cast<int>(blockDim.x);
        if (i < nvec) raw[k] = ld_raw8(row + 8 * i);
      }
    }
    float v[VPT][8];
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int i = static_cast<int>(threadIdx.x) + k * static_cast<int>(blockDim.x);
      if (i < nvec) {
        if constexpr (kLoadsFirst) widen_raw8<T>(raw[k], v[k]);
        else load8(row + 8 * i, v[k]);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[k][j] = 0.0f;
      }
    }
    fp8_quant_regs<VPT>(v, m, Mp, K, per_token != 0, q, s, red);
  }
  pdl_launch_dependents();
}

/// fp8_quant_regs_rows as a kernel: each vector loaded and widened in turn, or with kLoadsFirst
/// the row's vectors loaded first as ld_raw8 words (the same values, so the same codes).
/// blockDim.x = ceil(K / 8 / VPT) rounded up to 32.
template <class T, int VPT, bool kLoadsFirst>
__global__ void __launch_bounds__(1024) fp8_quant_regs_kernel(const T* __restrict__ x, int64_t ldx, int M, int Mp,
                                                              int K, int per_token, __nv_fp8_e4m3* __restrict__ q,
                                                              float* __restrict__ s) {
  __shared__ float red[32];
  fp8_quant_regs_rows<T, VPT, kLoadsFirst>(x, ldx, M, Mp, K, per_token, q, s, red);
}

/// Threads of a register-quantizing CTA: ceil(K / 8 / vpt) rounded up to 32 (0: the row needs more
/// than `max_threads`, the kernel's launch bound).
inline int fp8_regs_threads(int64_t K, int vpt, int max_threads = 1024) {
  const int64_t t = ((K / 8 + vpt - 1) / vpt + 31) / 32 * 32;
  return t <= max_threads ? static_cast<int>(t) : 0;
}
/// Whether the register path takes this row: K % 8 == 0, 16-byte rows in, 8-byte rows of codes out.
inline bool fp8_regs_fit(int64_t K, const void* x, int64_t ldx, size_t elem, const void* q) {
  return K % 8 == 0 && ldx % 8 == 0 && reinterpret_cast<uintptr_t>(x) % (8 * elem) == 0 &&
         reinterpret_cast<uintptr_t>(q) % 8 == 0;
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
/// `regs`: 1 quantizes from registers in one pass (detail::fp8_quant_regs_kernel), 0 through the
/// row kernel, −1 as fp8_quant_regs_on() says; rows the register path cannot take use the row kernel.
/// `v2` (with registers): nonzero loads the row first (fp8_quant_regs_kernel's kLoadsFirst), 0 not, −1 as
/// fp8_producers_v2_vecs() (PIE_FP8_PRODUCERS) says. `flat` (group scales): nonzero takes
/// fp8_group_quant.cuh's flat kernel where it fits, 0 not, −1 as fp8_flat_groups_on() says.
template <class T>
void fp8_quantize(TensorView<T> x, bool per_token, fp8_e4m3* q, float* s, cudaStream_t stream, int regs = -1,
                  int v2 = -1, int flat = -1) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "fp8_quantize: f16 or bf16 input");
  const int64_t M = x.shape[0], K = x.shape[1], Mp = fp8_padded_rows(M);
  PIE_CHECK(x.rank == 2 && x.stride[1] == 1, "fp8_quantize: x must be a matrix with contiguous rows");
  PIE_CHECK((K + kFp8Block - 1) / kFp8Block <= kFp8MaxGroups, "fp8_quantize: K = ", K, " exceeds ",
            kFp8MaxGroups * kFp8Block);
  if (M == 0) return;
  if (!per_token && fp8_flat_groups_choice(flat) && detail::fp8_flat_fits(K, x.data, x.stride[0], nullptr, 0, q)) {
    detail::launch_fp8_flat_group_quant(Fp8FlatRows<device_t<T>>{dev(x.data), x.stride[0]}, K, M, Mp,
                                        reinterpret_cast<__nv_fp8_e4m3*>(q), s, stream);
    return;
  }
  const int rt = detail::fp8_regs_threads(K, kFp8QuantRegsVecs);
  if (fp8_quant_regs_choice(regs) && rt > 0 && detail::fp8_regs_fit(K, x.data, x.stride[0], sizeof(T), q)) {
    launch_pdl(fp8_producers_v2_choice(v2) != 0 ? detail::fp8_quant_regs_kernel<device_t<T>, kFp8QuantRegsVecs, true>
                                                : detail::fp8_quant_regs_kernel<device_t<T>, kFp8QuantRegsVecs, false>,
               dim3(static_cast<unsigned>(Mp)),
               dim3(rt), 0, stream, dev(x.data), x.stride[0], static_cast<int>(M), static_cast<int>(Mp),
               static_cast<int>(K), per_token ? 1 : 0, reinterpret_cast<__nv_fp8_e4m3*>(q), s);
    return;
  }
  launch_pdl(detail::fp8_quant_kernel<device_t<T>>, dim3(static_cast<unsigned>(Mp)), dim3(128), 0, stream,
             dev(x.data), x.stride[0], static_cast<int>(M), static_cast<int>(Mp), static_cast<int>(K),
             per_token ? 1 : 0, reinterpret_cast<__nv_fp8_e4m3*>(q), s, fp8_quant_batched() ? 1 : 0);
}

}  // namespace pie::ops::cuda
