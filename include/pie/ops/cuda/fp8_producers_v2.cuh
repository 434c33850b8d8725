#pragma once
/// \file fp8_producers_v2.cuh
/// \brief The fused fp8 producers of fp8_producers.cuh (residual add + RMSNorm, SwiGLU, each
/// quantizing its output from registers) with every load of a row issued before the first use
/// (the default since measured on an H100, 2026-12-05; PIE_FP8_PRODUCERS=v1 goes back).
/// The switch, fp8_producers_v2_vecs(), lives in fp8_quant.cuh (it also picks the standalone
/// quantization's loads-first kernel). Why: the register kernels load through load8, which
/// compiles to four 4-byte loads per 16 bytes (common.cuh's ld_raw8 says why), and each vector's
/// loads wait for the previous vector's store — a thread has 16–32 bytes in flight, so a CTA pays
/// one memory latency per vector (issue 18: SwiGLU at 31 µs for ~15 µs of bytes at batch 512). Here a
/// thread loads its whole share as 16-byte vectors first (RMSNorm's weight even before
/// pdl_wait: no earlier kernel writes it), then runs the same arithmetic per element in the same
/// order, so outputs, codes and scales are the first kernels' bits (Fp8Kernels.FusedProducers
/// AreBitIdenticalToTheSeparateKernels compares them).
#include <cuda_runtime.h>

#include <cstdint>

#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/fp8_quant.cuh"
#include "pie/ops/cuda/norm.cuh"

namespace pie::ops::cuda {

namespace detail {

/// The arithmetic of one row of the fused residual add + RMSNorm + fp8 quantization, shared by
/// add_rms_norm_fp8_regs_kernel and add_rms_norm_fp8_v2_kernel, which differ only in where their
/// loads are issued: load_xr(k, i, v) fills v with x + residual (x alone for the first layer) of
/// vector i, this thread's k-th; load_w(k, i, wf) the weight's. The rounded sum is stored to the
/// residual, the normalised row to x (unless !kStore: the codes alone are wanted), and the
/// stored values are quantized (fp8_quant_regs).
template <int VPT, bool kStore = true, class T, class LoadXR, class LoadW>
__device__ __forceinline__ void add_rms_norm_fp8_row(T* __restrict__ xr, T* __restrict__ rr, int dim, float eps,
                                                     int m, int Mp, int per_token, __nv_fp8_e4m3* __restrict__ q,
                                                     float* __restrict__ s, float* red, LoadXR load_xr,
                                                     LoadW load_w) {
  const int nvec = dim / 8, nthreads = static_cast<int>(blockDim.x);
  float v[VPT][8];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * nthreads;
    if (i < nvec) {
      load_xr(k, i, v[k]);
      Pack8<T> pk;
#pragma unroll
      for (int j = 0; j < 8; ++j) { pk.v[j] = from_f32<T>(v[k][j]); v[k][j] = to_f32(pk.v[j]); }
      *reinterpret_cast<Pack8<T>*>(rr + i * 8) = pk;
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += v[k][j] * v[k][j];
    }
  }
  const float inv = rsqrtf(block_sum(ss, red) / static_cast<float>(dim) + eps);
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * nthreads;
    if (i < nvec) {
      float wf[8], o[8];
      load_w(k, i, wf);
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = wf[j] * to_f32(from_f32<T>(v[k][j] * inv));
      if constexpr (kStore) store8(xr + i * 8, o);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[k][j] = to_f32(from_f32<T>(o[j]));  // the value stored
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[k][j] = 0.f;
    }
  }
  fp8_quant_regs<VPT>(v, m, Mp, dim, per_token != 0, q, s, red);
}

/// SwiGLU of one vector of 8 (gate gv, up uv), stored to o (unless !kStore), and the values stored
/// (or that would be) into v for the quantization: the per-element arithmetic of
/// silu_and_mul_fp8_regs_kernel and silu_and_mul_fp8_v2_kernel.
template <class T, bool kStore = true>
__device__ __forceinline__ void silu_mul8_stored(const float (&gv)[8], const float (&uv)[8], T* __restrict__ o,
                                                 float (&v)[8]) {
  float ov[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) ov[j] = to_f32(from_f32<T>(gv[j] / (1.f + expf(-gv[j])))) * uv[j];
  if constexpr (kStore) store8(o, ov);
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = to_f32(from_f32<T>(ov[j]));  // the value stored
}

/// add_rms_norm_fp8_regs_kernel with its loads first: the weight's vectors before pdl_wait, then
/// every x and residual vector of the thread, then add_rms_norm_fp8_regs_kernel's arithmetic
/// (the same vectors per thread, the same sums in the same order and block_sum over the same
/// norm_threads(dim) threads, so the same bits). blockDim.x = norm_threads(dim). `first` is a
/// template parameter so that no branch separates one vector's loads from the next's. !kStore:
/// x is not written (the residual is), for a caller that reads only the codes.
template <class T, bool first, bool kStore = true>
__global__ void add_rms_norm_fp8_v2_kernel(T* __restrict__ x, int64_t x_stride, T* __restrict__ residual,
                                           int64_t r_stride, const T* __restrict__ w, int dim, float eps, int M,
                                           int Mp, int per_token, __nv_fp8_e4m3* __restrict__ q,
                                           float* __restrict__ s) {
  constexpr int VPT = kNormVecsPerThread;
  __shared__ float red[32];
  const int m = blockIdx.x;
  const int nvec = dim / 8, nthreads = static_cast<int>(blockDim.x);
  uint4 wp[VPT];
  if (m < M) {
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int i = static_cast<int>(threadIdx.x) + k * nthreads;
      if (i < nvec) wp[k] = ld_raw8(w + i * 8);
    }
  }
  pdl_launch_dependents();
  pdl_wait();
  if (m >= M) {
    fp8_quant_row<T, 1>(x, m, M, Mp, dim, per_token != 0, q, s, red);  // padding: zero codes, scale 1
    return;
  }
  T* xr = x + int64_t(m) * x_stride;
  T* rr = residual + int64_t(m) * r_stride;
  uint4 xp[VPT], rp[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * nthreads;
    if (i < nvec) {
      xp[k] = ld_raw8(xr + i * 8);
      if constexpr (!first) rp[k] = ld_raw8(rr + i * 8);
    }
  }
  add_rms_norm_fp8_row<VPT, kStore>(
      xr, rr, dim, eps, m, Mp, per_token, q, s, red,
      [&](int k, int, float (&v)[8]) {
        widen_raw8<T>(xp[k], v);
        if constexpr (!first) {
          float r[8];
          widen_raw8<T>(rp[k], r);
#pragma unroll
          for (int j = 0; j < 8; ++j) v[j] += r[j];
        }
      },
      [&](int k, int, float (&wf)[8]) { widen_raw8<T>(wp[k], wf); });
}

/// Vectors of 8 columns a thread of silu_and_mul_fp8_v2_kernel holds by default, and its launch
/// bound (inter ≤ 512·4·8 = 16384): Qwen3-8B's inter 12288 takes 384 threads of 64 registers
/// (sm_90a, CUDA 13), 2 CTAs per SM, 96 KB of loads in flight per SM. 8 vectors (192 threads of 106
/// registers under a 256 bound, 3 CTAs per SM) measured slower on the H100 (SwiGLU at batch 512
/// 28.9 against 22.0 µs) and was removed; 8 under a 512 bound spilled 36 bytes.
inline constexpr int kSiluFp8V2Vecs = 4;
inline constexpr int kSiluFp8V2MaxThreads = 512;

/// silu_and_mul_fp8_regs_kernel with its loads first: every gate and up vector of the thread as
/// 16-byte loads, then silu_and_mul_fp8_regs_kernel's arithmetic per element (which vectors a
/// thread holds changes no bit: a group's amax is a max). blockDim.x = fp8_regs_threads(inter, VPT).
/// !kStore: out is not written, for a caller that reads only the codes.
template <class T, int VPT, int MaxThreads, bool kStore = true>
__global__ void __launch_bounds__(MaxThreads)
    silu_and_mul_fp8_v2_kernel(const T* __restrict__ in, int64_t in_stride, T* __restrict__ out, int64_t out_stride,
                               int inter, int M, int Mp, int per_token, __nv_fp8_e4m3* __restrict__ q,
                               float* __restrict__ s) {
  __shared__ float red[32];
  pdl_launch_dependents();
  pdl_wait();
  const int m = blockIdx.x;
  T* o = out + int64_t(m) * out_stride;
  if (m >= M) {
    fp8_quant_row<T, 1>(static_cast<const T*>(o), m, M, Mp, inter, per_token != 0, q, s, red);
    return;
  }
  const T* g = in + int64_t(m) * in_stride;
  const T* u = g + inter;
  const int nvec = inter / 8, nthreads = static_cast<int>(blockDim.x);
  uint4 gp[VPT], up[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * nthreads;
    if (i < nvec) {
      gp[k] = ld_raw8(g + i * 8);
      up[k] = ld_raw8(u + i * 8);
    }
  }
  float v[VPT][8];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * nthreads;
    if (i < nvec) {
      float gv[8], uv[8];
      widen_raw8<T>(gp[k], gv);
      widen_raw8<T>(up[k], uv);
      silu_mul8_stored<T, kStore>(gv, uv, o + i * 8, v[k]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[k][j] = 0.f;
    }
  }
  fp8_quant_regs<VPT>(v, m, Mp, inter, per_token != 0, q, s, red);
}

/// Launches silu_and_mul_fp8_v2_kernel<T, VPT, MaxThreads> over Mp rows (`store`: out written, else
/// only the codes); false (nothing launched) when a row needs more than MaxThreads threads at VPT
/// vectors each.
template <int VPT, int MaxThreads, class T>
bool launch_silu_and_mul_fp8_v2(const T* in, int64_t in_stride, T* out, int64_t out_stride, int64_t inter,
                                int64_t M, int64_t Mp, bool per_token, __nv_fp8_e4m3* q, float* s,
                                cudaStream_t stream, bool store = true) {
  const int rt = fp8_regs_threads(inter, VPT, MaxThreads);
  if (rt == 0) return false;
  launch_pdl(store ? silu_and_mul_fp8_v2_kernel<T, VPT, MaxThreads, true> : silu_and_mul_fp8_v2_kernel<T, VPT, MaxThreads, false>,
             dim3(static_cast<unsigned>(Mp)), dim3(rt), 0, stream, in,
             in_stride, out, out_stride, static_cast<int>(inter), static_cast<int>(M), static_cast<int>(Mp),
             per_token ? 1 : 0, q, s);
  return true;
}

}  // namespace detail
}  // namespace pie::ops::cuda
