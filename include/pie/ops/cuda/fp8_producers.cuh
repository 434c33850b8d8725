#pragma once
/// \file fp8_producers.cuh
/// \brief The activation quantization of an fp8 GEMM fused into the kernel that produces the
/// activation: residual add + RMSNorm (before qkv and gate_up) and SwiGLU (before down).
/// Each kernel writes its bf16/f16 output as the unfused kernel does (the same arithmetic, so the
/// same values), then quantizes the row it just wrote, from L1/L2, into the fp8 GEMM's codes
/// and scales (fp8_quant.cuh's layouts and rule, bit-identical to fp8_quantize). One launch
/// instead of two, and the activation is not read back from HBM by a second kernel.
/// One CTA per row; the grid covers the GEMM's padded rows (fp8_padded_rows), which get zero
/// codes and scale 1.
#include <cuda_runtime.h>

#include <cstdint>

#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/fp8_producers_v2.cuh"
#include "pie/ops/cuda/fp8_quant.cuh"
#include "pie/ops/cuda/norm.cuh"

namespace pie::ops::cuda {

/// \brief Where a producer writes the fp8 GEMM's input: codes [Mp, K] and scales (per token:
/// [Mp]; per group: [ceil(K/128)][Mp]), as fp8_quantize writes them.
struct Fp8Act {
  fp8_e4m3* q = nullptr;
  float* s = nullptr;
  bool per_token = false;
};

/// \brief fp8_group_quant.cuh's flat kernel's producer of SwiGLU's output: gate_up [M, 2·K] (gate,
/// then up) → silu(gate)·up with the register producers' arithmetic (silu_mul8_stored), the
/// 16-bit row written to out unless !kStore.
template <class T, bool kStore>
struct Fp8FlatSwiGlu {
  const T* in;
  int64_t ld_in;
  T* out;
  int64_t ld_out;
  int inter;
  /// As silu_and_mul_fp8_v2_kernel: the down projection may launch (and stream weights) at once.
  static constexpr bool kLaunchDependentsFirst = true;
  __device__ __forceinline__ void operator()(int m, int vi, float (&v)[8]) const {
    const T* g = in + int64_t(m) * ld_in + vi * 8;
    const uint4 gp = ld_raw8(g), up = ld_raw8(g + inter);
    float gv[8], uv[8];
    widen_raw8<T>(gp, gv);
    widen_raw8<T>(up, uv);
    detail::silu_mul8_stored<T, kStore>(gv, uv, kStore ? out + int64_t(m) * ld_out + vi * 8 : nullptr, v);
  }
};

namespace detail {

/// add_rms_norm (norm.cuh's row body, in place) on rows < M, then the row's fp8 quantization.
template <class T>
__global__ void add_rms_norm_fp8_kernel(T* __restrict__ x, int64_t x_stride, T* __restrict__ residual,
                                        int64_t r_stride, const T* __restrict__ w, int dim, float eps, bool first,
                                        int M, int Mp, int per_token, __nv_fp8_e4m3* __restrict__ q,
                                        float* __restrict__ s, int batched) {
  __shared__ float red[32];
  __shared__ float gmax[kFp8MaxGroups];
  pdl_launch_dependents();
  pdl_wait();
  const int m = blockIdx.x;
  T* xr = x + int64_t(m) * x_stride;
  if (m < M) {
    rms_norm_row<true>(xr, residual + int64_t(m) * r_stride, w, dim, eps, first, red);
    __syncthreads();  // the row's bf16 values, written by the block, are read back below
  }
  if (batched) fp8_quant_row<T, 8>(static_cast<const T*>(xr), m, M, Mp, dim, per_token != 0, q, s, gmax);
  else fp8_quant_row<T, 1>(static_cast<const T*>(xr), m, M, Mp, dim, per_token != 0, q, s, gmax);
}

inline constexpr int kSiluFp8Threads = 256;

/// out[m] = silu(gate)·up (activation.cuh's arithmetic) on rows < M, then its fp8 quantization.
template <class T>
__global__ void __launch_bounds__(kSiluFp8Threads)
    silu_and_mul_fp8_kernel(const T* __restrict__ in, int64_t in_stride, T* __restrict__ out, int64_t out_stride,
                            int inter, int M, int Mp, int per_token, __nv_fp8_e4m3* __restrict__ q,
                            float* __restrict__ s, int batched) {
  __shared__ float gmax[kFp8MaxGroups];
  pdl_launch_dependents();
  pdl_wait();
  const int m = blockIdx.x;
  T* o = out + int64_t(m) * out_stride;
  if (m < M) {
    const T* g = in + int64_t(m) * in_stride;
    const T* u = g + inter;
    for (int i = threadIdx.x * 8; i < inter; i += blockDim.x * 8) {
      float gv[8], uv[8], ov[8];
      load8(g + i, gv);
      load8(u + i, uv);
#pragma unroll
      for (int j = 0; j < 8; ++j) ov[j] = to_f32(from_f32<T>(gv[j] / (1.f + expf(-gv[j])))) * uv[j];
      store8(o + i, ov);
    }
    __syncthreads();
  }
  if (batched) fp8_quant_row<T, 8>(static_cast<const T*>(o), m, M, Mp, inter, per_token != 0, q, s, gmax);
  else fp8_quant_row<T, 1>(static_cast<const T*>(o), m, M, Mp, inter, per_token != 0, q, s, gmax);
}

/// add_rms_norm_fp8_kernel with the row kept in registers: rms_norm_row_to's arithmetic written
/// out (the same loads, sums, block_sum and rounding points, so the same bits: the GPU test
/// compares them), the normalised bf16 values quantized by fp8_quant_regs in one pass instead of
/// being read back twice. blockDim.x = norm_threads(dim).
template <class T>
__global__ void add_rms_norm_fp8_regs_kernel(T* __restrict__ x, int64_t x_stride, T* __restrict__ residual,
                                             int64_t r_stride, const T* __restrict__ w, int dim, float eps, bool first,
                                             int M, int Mp, int per_token, __nv_fp8_e4m3* __restrict__ q,
                                             float* __restrict__ s) {
  constexpr int VPT = kNormVecsPerThread;
  __shared__ float red[32];
  pdl_launch_dependents();
  pdl_wait();
  const int m = blockIdx.x;
  if (m >= M) {
    fp8_quant_row<T, 1>(x, m, M, Mp, dim, per_token != 0, q, s, red);  // padding: zero codes, scale 1
    return;
  }
  T* xr = x + int64_t(m) * x_stride;
  T* rr = residual + int64_t(m) * r_stride;
  add_rms_norm_fp8_row<VPT>(
      xr, rr, dim, eps, m, Mp, per_token, q, s, red,
      [&](int, int i, float (&v)[8]) {
        load8(xr + i * 8, v);
        if (!first) {
          float r[8];
          load8(rr + i * 8, r);
#pragma unroll
          for (int j = 0; j < 8; ++j) v[j] += r[j];
        }
      },
      [&](int, int i, float (&wf)[8]) { load8(w + i * 8, wf); });
}

/// Vectors of 8 columns a thread of silu_and_mul_fp8_regs_kernel holds, and its launch bound:
/// 64 values a thread need more than the 64 registers a 1024-thread bound leaves (it spilled
/// 128 bytes); 512 threads allow 128 (inter ≤ 512·8·8 = 32768).
inline constexpr int kSiluFp8RegsVecs = 8;
inline constexpr int kSiluFp8RegsMaxThreads = 512;

/// silu_and_mul_fp8_kernel with the row kept in registers (the same arithmetic per element), the
/// stored bf16 values quantized by fp8_quant_regs in one pass. blockDim.x =
/// fp8_regs_threads(inter, kSiluFp8RegsVecs).
template <class T>
__global__ void __launch_bounds__(kSiluFp8RegsMaxThreads)
    silu_and_mul_fp8_regs_kernel(const T* __restrict__ in, int64_t in_stride, T* __restrict__ out,
                                 int64_t out_stride, int inter, int M, int Mp, int per_token,
                                 __nv_fp8_e4m3* __restrict__ q, float* __restrict__ s) {
  constexpr int VPT = kSiluFp8RegsVecs;
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
  const int nvec = inter / 8;
  float v[VPT][8];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * static_cast<int>(blockDim.x);
    if (i < nvec) {
      float gv[8], uv[8];
      load8(g + i * 8, gv);
      load8(u + i * 8, uv);
      silu_mul8_stored<T>(gv, uv, o + i * 8, v[k]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[k][j] = 0.f;
    }
  }
  fp8_quant_regs<VPT>(v, m, Mp, inter, per_token != 0, q, s, red);
}

}  // namespace detail

/// \brief add_rms_norm(x, residual, w, eps, first) (norm.cuh), and x's fp8 codes and scales for
/// the next fp8 GEMM into `a` (rows padded to fp8_padded_rows(M)).
/// `regs` as fp8_quantize's: 1 quantizes from registers in one pass, 0 writes and reads the row
/// back, −1 as fp8_quant_regs_on() says. `v2` (with registers): fp8_producers_v2_choice's, 0 the
/// first register kernel, nonzero fp8_producers_v2.cuh's loads-first kernels, −1 as
/// PIE_FP8_PRODUCERS (v2, the default, or v1) says. `store_x` false: x is left as it was where the
/// loads-first kernel runs (the codes, scales and residual are the same), for a caller that reads
/// only the codes; the other kernels write x anyway.
template <class T>
void add_rms_norm_fp8(TensorView<T> x, TensorView<T> residual, TensorView<T> w, float eps, bool first, Fp8Act a,
                      cudaStream_t stream, int regs = -1, int v2 = -1, bool store_x = true) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "add_rms_norm_fp8: f16 or bf16");
  check_rows8(x, "add_rms_norm_fp8 x");
  check_rows8(residual, "add_rms_norm_fp8 residual");
  const int64_t M = x.shape[0], dim = x.shape[1], Mp = fp8_padded_rows(M);
  PIE_CHECK(x.rank == 2 && w.numel() == dim && residual.shape[0] == M && residual.shape[1] == dim,
            "add_rms_norm_fp8: x [M, dim], residual [M, dim], w [dim] do not chain");
  PIE_CHECK(detail::norm_threads(static_cast<int>(dim)) <= 1024 && (dim + kFp8Block - 1) / kFp8Block <= kFp8MaxGroups,
            "add_rms_norm_fp8: rows of ", dim, " elements are too long");
  if (M == 0) return;
  using D = device_t<T>;
  if (fp8_quant_regs_choice(regs) && reinterpret_cast<uintptr_t>(a.q) % 8 == 0) {  // rows: check_rows8
    if (fp8_producers_v2_choice(v2) != 0) {
      auto kern = first ? (store_x ? detail::add_rms_norm_fp8_v2_kernel<D, true, true>
                                   : detail::add_rms_norm_fp8_v2_kernel<D, true, false>)
                        : (store_x ? detail::add_rms_norm_fp8_v2_kernel<D, false, true>
                                   : detail::add_rms_norm_fp8_v2_kernel<D, false, false>);
      launch_pdl(kern,
                 dim3(static_cast<unsigned>(Mp)), dim3(detail::norm_threads(static_cast<int>(dim))), 0, stream,
                 dev(x.data), x.stride[0], dev(residual.data), residual.stride[0], dev(w.data), static_cast<int>(dim),
                 eps, static_cast<int>(M), static_cast<int>(Mp), a.per_token ? 1 : 0,
                 reinterpret_cast<__nv_fp8_e4m3*>(a.q), a.s);
      return;
    }
    launch_pdl(detail::add_rms_norm_fp8_regs_kernel<D>, dim3(static_cast<unsigned>(Mp)),
               dim3(detail::norm_threads(static_cast<int>(dim))), 0, stream, dev(x.data), x.stride[0],
               dev(residual.data), residual.stride[0], dev(w.data), static_cast<int>(dim), eps, first,
               static_cast<int>(M), static_cast<int>(Mp), a.per_token ? 1 : 0,
               reinterpret_cast<__nv_fp8_e4m3*>(a.q), a.s);
    return;
  }
  launch_pdl(detail::add_rms_norm_fp8_kernel<D>, dim3(static_cast<unsigned>(Mp)),
             dim3(detail::norm_threads(static_cast<int>(dim))), 0, stream, dev(x.data), x.stride[0],
             dev(residual.data), residual.stride[0], dev(w.data), static_cast<int>(dim), eps, first,
             static_cast<int>(M), static_cast<int>(Mp), a.per_token ? 1 : 0, reinterpret_cast<__nv_fp8_e4m3*>(a.q),
             a.s, fp8_quant_batched() ? 1 : 0);
}

/// \brief silu_and_mul(gate_up, out) (activation.cuh), and out's fp8 codes and scales for the
/// next fp8 GEMM into `a` (rows padded to fp8_padded_rows(M)).
/// `regs` and `v2` as add_rms_norm_fp8's; `store_out` false: out is not written where the
/// loads-first or the flat kernel runs (the codes and scales are the same), for a caller that
/// reads only them. `flat` as fp8_quantize's: group scales take fp8_group_quant.cuh's flat kernel
/// (a thread per 8 columns) before any row kernel, unless 0.
template <class T>
void silu_and_mul_fp8(TensorView<T> gate_up, TensorView<T> out, Fp8Act a, cudaStream_t stream, int regs = -1,
                      int v2 = -1, bool store_out = true, int flat = -1) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "silu_and_mul_fp8: f16 or bf16");
  check_rows8(gate_up, "silu_and_mul_fp8 gate_up");
  check_rows8(out, "silu_and_mul_fp8 out");
  const int64_t M = out.shape[0], I = out.shape[1], Mp = fp8_padded_rows(M);
  PIE_CHECK(gate_up.shape[0] == M && gate_up.shape[1] == 2 * I, "silu_and_mul_fp8: gate_up must be [M, 2·inter]");
  PIE_CHECK((I + kFp8Block - 1) / kFp8Block <= kFp8MaxGroups, "silu_and_mul_fp8: inter = ", I, " is too wide");
  if (M == 0) return;
  using D = device_t<T>;
  const int rt = detail::fp8_regs_threads(I, detail::kSiluFp8RegsVecs, detail::kSiluFp8RegsMaxThreads);
  const bool regs_on = fp8_quant_regs_choice(regs) && reinterpret_cast<uintptr_t>(a.q) % 8 == 0;  // rows: check_rows8
  const int vecs = regs_on ? fp8_producers_v2_choice(v2) : 0;
  auto* q = reinterpret_cast<__nv_fp8_e4m3*>(a.q);
  if (!a.per_token && fp8_flat_groups_choice(flat) &&
      detail::fp8_flat_fits(I, gate_up.data, gate_up.stride[0], store_out ? out.data : nullptr, out.stride[0], q)) {
    if (store_out)
      detail::launch_fp8_flat_group_quant(
          Fp8FlatSwiGlu<D, true>{dev(gate_up.data), gate_up.stride[0], dev(out.data), out.stride[0], int(I)}, I, M, Mp,
          q, a.s, stream);
    else
      detail::launch_fp8_flat_group_quant(
          Fp8FlatSwiGlu<D, false>{dev(gate_up.data), gate_up.stride[0], nullptr, 0, int(I)}, I, M, Mp, q, a.s, stream);
    return;
  }
  if (vecs != 0 && detail::launch_silu_and_mul_fp8_v2<detail::kSiluFp8V2Vecs, detail::kSiluFp8V2MaxThreads>(
                       dev(gate_up.data), gate_up.stride[0], dev(out.data), out.stride[0], I, M, Mp, a.per_token, q,
                       a.s, stream, store_out))
    return;
  if (regs_on && rt > 0) {
    launch_pdl(detail::silu_and_mul_fp8_regs_kernel<D>, dim3(static_cast<unsigned>(Mp)), dim3(rt), 0, stream,
               dev(gate_up.data), gate_up.stride[0], dev(out.data), out.stride[0], static_cast<int>(I),
               static_cast<int>(M), static_cast<int>(Mp), a.per_token ? 1 : 0,
               reinterpret_cast<__nv_fp8_e4m3*>(a.q), a.s);
    return;
  }
  launch_pdl(detail::silu_and_mul_fp8_kernel<D>, dim3(static_cast<unsigned>(Mp)), dim3(detail::kSiluFp8Threads), 0,
             stream, dev(gate_up.data), gate_up.stride[0], dev(out.data), out.stride[0], static_cast<int>(I),
             static_cast<int>(M), static_cast<int>(Mp), a.per_token ? 1 : 0, reinterpret_cast<__nv_fp8_e4m3*>(a.q),
             a.s, fp8_quant_batched() ? 1 : 0);
}

}  // namespace pie::ops::cuda
