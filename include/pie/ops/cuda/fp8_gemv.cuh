#pragma once
/// \file fp8_gemv.cuh
/// \brief Batch-1 fp8 linear: y [1, N] = q(x)·(W8·scale)ᵀ (+ bias), the activation's dynamic
/// quantization fused into the GEMV's prologue. Decode at batch 1 is bound by the weight stream,
/// so this kernel exists to read the fp8 bytes at memory speed; a separate quantization kernel
/// (and its launch) would cost more than the row it quantizes.
///
/// Each CTA quantizes x itself (the same rule and arithmetic as fp8_quant.cuh) into shared memory
/// as half codes scaled by 2⁻⁸, then its warps stream weight rows 16 bytes per lane. A 16-byte
/// chunk lies inside one 128-column group, so its 16 products (exact in half: e4m3 × e4m3·2⁻⁸
/// has 8 significant bits and stays in half's range) are summed with HFMA2 and the partial sum is
/// scaled once by x's and W's group scales into a float accumulator: the tensor cores' order
/// (block products, then scales), at 1.5 instructions per weight byte.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/fp8_quant.cuh"

namespace pie::ops::cuda {

namespace detail {

template <class T>
struct Fp8GemvParams {
  const T* x;
  const uint8_t* w;      // [N, K] e4m3
  const float* ws;       // weight scales
  int64_t ws_ld;         // block: row stride of the [N/128] × ld block scales; per channel: 1
  int block_n;           // 128, or 1 (per channel: ws[n])
  int per_token;         // activation scale per row (per-channel weights) instead of per group
  const T* bias;
  T* y;
  int N, K;
};

inline constexpr int kFp8GemvWarps = 16;
inline constexpr int kFp8GemvUnroll = 4;

template <class T>
__global__ void __launch_bounds__(kFp8GemvWarps * 32) fp8_gemv_kernel(const __grid_constant__ Fp8GemvParams<T> p) {
  extern __shared__ __align__(16) unsigned char fp8_gemv_smem[];
  __half* xh = reinterpret_cast<__half*>(fp8_gemv_smem);                       // [K] codes · 2⁻⁸
  float* xs = reinterpret_cast<float*>(fp8_gemv_smem + size_t(p.K) * 2);      // [groups] scale · 2⁸
  __shared__ float red[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int K = p.K, groups = (K + kFp8Block - 1) / kFp8Block;
  // The weights do not depend on the predecessor: pull the first row's into L2 while it finishes.
  const int64_t row0 = int64_t(blockIdx.x) * kFp8GemvWarps + warp;
  if (row0 < p.N)
    for (int k = lane * 128; k < K; k += 32 * 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p.w + row0 * K + k));
  pdl_wait();
  // ---- prologue: quantize x (group maxima, then codes) ----
  for (int g = warp; g < groups; g += kFp8GemvWarps) {
    float a = 0.0f;
    for (int j = 0; j < 4; ++j) {
      const int k = g * kFp8Block + lane * 4 + j;
      if (k < K) a = fmaxf(a, fabsf(to_f32(p.x[k])));
    }
    a = warp_max(a);
    if (lane == 0) xs[g] = a;
  }
  __syncthreads();
  if (p.per_token) {
    float a = 0.0f;
    for (int g = lane; g < groups; g += 32) a = fmaxf(a, xs[g]);
    a = warp_max(a);
    if (warp == 0 && lane == 0) red[0] = a;
    __syncthreads();
    for (int g = threadIdx.x; g < groups; g += blockDim.x) xs[g] = red[0];
    __syncthreads();
  }
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const float sc = fp8_group_scale(xs[k / kFp8Block]);
    const __nv_fp8_e4m3 c = from_f32<__nv_fp8_e4m3>(__fdiv_rn(to_f32(p.x[k]), sc));
    xh[k] = __float2half_rn(static_cast<float>(c) * (1.0f / 256.0f));  // exact: e4m3 ⊂ half, 2⁻⁸ a power of 2
  }
  __syncthreads();
  for (int g = threadIdx.x; g < groups; g += blockDim.x) xs[g] = fp8_group_scale(xs[g]) * 256.0f;
  __syncthreads();
  // ---- main loop: one warp per output row ----
  const int64_t rows_stride = int64_t(gridDim.x) * kFp8GemvWarps;
  for (int64_t n = row0; n < p.N; n += rows_stride) {
    const uint8_t* wr = p.w + n * K;
    const float* wsr = p.block_n == 1 ? p.ws + n : p.ws + (n / kFp8Block) * p.ws_ld;
    float acc = 0.0f;
    for (int base = lane * 16; base < K; base += 32 * 16 * kFp8GemvUnroll) {
      uint4 wv[kFp8GemvUnroll];
#pragma unroll
      for (int u = 0; u < kFp8GemvUnroll; ++u) {
        const int k = base + u * 32 * 16;
        wv[u] = k < K ? load16_stream(wr + k) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kFp8GemvUnroll; ++u) {
        const int k = base + u * 32 * 16;
        if (k >= K) break;
        const uint4 xa = *reinterpret_cast<const uint4*>(xh + k);
        const uint4 xb = *reinterpret_cast<const uint4*>(xh + k + 8);
        const __half2* x2a = reinterpret_cast<const __half2*>(&xa);
        const __half2* x2b = reinterpret_cast<const __half2*>(&xb);
        const __nv_fp8x2_storage_t* w2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&wv[u]);
        __half2 h = __float2half2_rn(0.0f);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(w2[i], __NV_E4M3);
          h = __hfma2(*reinterpret_cast<const __half2*>(&r), i < 4 ? x2a[i] : x2b[i - 4], h);
        }
        const float2 f = __half22float2(h);
        const int g = k / kFp8Block;
        acc = fmaf(f.x + f.y, xs[g] * (p.block_n == 1 ? wsr[0] : wsr[g]), acc);
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      if (p.bias) acc += to_f32(p.bias[n]);
      p.y[n] = from_f32<T>(acc);
    }
  }
  pdl_launch_dependents();
}

}  // namespace detail

/// Whether fp8_gemv() takes a K: 16-byte weight chunks (K % 16 == 0) and its row in shared memory.
inline bool fp8_gemv_supported(int64_t k) { return k > 0 && k % 16 == 0 && k <= 32768; }

/// y [1, N] = q(x)·dq(w)ᵀ (+ bias) (see the file comment). x, y device rows of T; w on the device.
template <class T>
void fp8_gemv(TensorView<T> y, TensorView<T> x, const Fp8Weight& w, const T* bias, cudaStream_t stream) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "fp8_gemv: f16 or bf16 activations");
  const int64_t N = w.rows(), K = w.cols();
  PIE_CHECK(x.shape[0] == 1 && y.shape[0] == 1 && x.shape[1] == K && y.shape[1] == N,
            "fp8_gemv: x [1, K], w [N, K], y [1, N] do not chain");
  PIE_CHECK(fp8_gemv_supported(K), "fp8_gemv: K = ", K, " must be a multiple of 16, at most 32768");
  PIE_CHECK(w.per_channel() || (w.block_n == kFp8Block && w.block_k == kFp8Block), "fp8_gemv: unknown weight blocks");
  using D = device_t<T>;
  detail::Fp8GemvParams<D> p{dev(x.data), reinterpret_cast<const uint8_t*>(w.q.data), w.scale.data, w.scale_ld,
                             w.block_n, w.per_channel() ? 1 : 0, dev(bias), dev(y.data), static_cast<int>(N),
                             static_cast<int>(K)};
  const int groups = static_cast<int>((K + kFp8Block - 1) / kFp8Block);
  const size_t smem = size_t(K) * 2 + size_t(groups) * sizeof(float);
  static const bool attr = [] {
    PIE_CUDA_CHECK(cudaFuncSetAttribute(detail::fp8_gemv_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        32768 * 2 + kFp8MaxGroups * 4));
    return true;
  }();
  (void)attr;
  const int64_t ctas = std::min<int64_t>((N + detail::kFp8GemvWarps - 1) / detail::kFp8GemvWarps, 2 * num_sms());
  launch_pdl(detail::fp8_gemv_kernel<D>, dim3(static_cast<unsigned>(ctas)), dim3(detail::kFp8GemvWarps * 32), smem,
             stream, p);
}

}  // namespace pie::ops::cuda
