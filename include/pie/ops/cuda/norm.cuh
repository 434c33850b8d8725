#pragma once
/// \file norm.cuh
/// \brief RMSNorm and RMSNorm fused with the residual add (HF LlamaRMSNorm numerics: float32
/// mean of squares, T(x·rsqrt(ms + eps))·w), one CTA per row, 16-byte vectors held in registers so
/// each row is read once and written once.
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/mma.cuh"

namespace pie::ops::cuda {

namespace detail {
inline constexpr int kNormVecsPerThread = 4;  ///< rows up to 1024·4·8 = 32768 elements

/// Threads of the standalone kernel for a row of `dim` elements. The fused norm + GEMV
/// (gemv.cuh) uses the same count, and therefore the same reduction order, so its output
/// matches this kernel bit for bit.
__host__ __device__ constexpr int norm_threads(int dim) {
  const int t = ((dim / 8 + kNormVecsPerThread - 1) / kNormVecsPerThread + 31) / 32 * 32;
  return t < 64 ? 64 : t;
}

/// Copies this thread's vectors of an RMSNorm weight row (those rms_norm_row_emit gives it:
/// threadIdx.x + k·nthreads) into `staged` [dim] in shared memory with cp.async, one commit group.
/// The fused norm + GEMV kernels call it before `griddepcontrol.wait` (the weight does not depend
/// on the predecessor), so that the norm's second pass, after the block's reduction, reads shared
/// memory instead of waiting for global loads; registers would stay live beside the weight
/// buffers across the wait (sm_90a: the fp8 GEMV's 127 registers became 148, one CTA an SM).
template <class T>
__device__ __forceinline__ void stage_norm_weight(const T* __restrict__ w, T* staged, int dim, int nthreads) {
  const int nvec = dim / 8;
#pragma unroll
  for (int k = 0; k < kNormVecsPerThread; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * nthreads;
    if (static_cast<int>(threadIdx.x) < nthreads && i < nvec) cp_async16(smem_u32(staged + i * 8), w + i * 8, true);
  }
  cp_async_commit();
}

/// rms_norm_row_emit's sum over the norm's threads: the whole block's (block_sum), as the
/// standalone kernel sums.
struct NormBlockSum {
  float* red;
  __device__ __forceinline__ float operator()(float v) const { return block_sum(v, red); }
};

/// rms_norm_row_emit's sum over a group of `nthreads` threads (warps group·nthreads/32 …) of a
/// larger block, with its own 32 slots and named barrier (1 + group): block_sum's arithmetic on a
/// block of nthreads threads (each warp's butterfly, the warps' sums in warp order, the missing
/// lanes as exact zeros), so a row normalised by a group has the standalone kernel's bits.
struct NormGroupSum {
  float* red;
  int group, nthreads;
  __device__ __forceinline__ void sync() const {
    asm volatile("bar.sync %0, %1;\n" ::"r"(1 + group), "r"(nthreads) : "memory");
  }
  __device__ __forceinline__ float operator()(float v) const {
    const int lane = threadIdx.x & 31, nw = nthreads >> 5, warp = (threadIdx.x >> 5) - group * nw;
    v = warp_sum(v);
    sync();  // the slots may still be read by a previous call
    if (lane == 0) red[warp] = v;
    sync();
    v = lane < nw ? red[lane] : 0.f;
    return warp_sum(v);
  }
};

/// Device body for one row, by the norm's `nthreads` threads, thread `tid` of them (the block's
/// others, tid ≥ nthreads, only join the sum, adding exact zeros; `sum` reduces over them). With
/// Residual: r = x + r_in (or r = x when first) rounded to T, stored to r_out when non-null.
/// Then, for each vector i (elements 8i … 8i + 7) this thread owns (tid + k·nthreads), emit(i, o)
/// with o[j] = w·T(norm(r)) in float, before its rounding to T. `w_staged`: w is this thread's
/// stage_norm_weight copy in shared memory (its group is waited for here).
template <bool Residual, class T, class Sum, class Emit>
__device__ __forceinline__ void rms_norm_row_emit(const T* x, const T* r_in, T* r_out, const T* __restrict__ w,
                                                  bool w_staged, int dim, float eps, bool first, int tid,
                                                  int nthreads, const Sum& sum, Emit&& emit) {
  constexpr int VPT = kNormVecsPerThread;
  const int nvec = dim / 8;
  const bool mine = tid < nthreads;
  float v[VPT][8];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    int i = tid + k * nthreads;
    if (mine && i < nvec) {
      load8(x + i * 8, v[k]);
      if constexpr (Residual) {
        if (!first) {
          float r[8];
          load8(r_in + i * 8, r);
#pragma unroll
          for (int j = 0; j < 8; ++j) v[k][j] += r[j];
        }
        // The residual stream is stored in T; normalise what the next layer will read.
        Pack8<T> pk;
#pragma unroll
        for (int j = 0; j < 8; ++j) { pk.v[j] = from_f32<T>(v[k][j]); v[k][j] = to_f32(pk.v[j]); }
        if (r_out != nullptr) *reinterpret_cast<Pack8<T>*>(r_out + i * 8) = pk;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += v[k][j] * v[k][j];
    }
  }
  float inv = rsqrtf(sum(ss) / static_cast<float>(dim) + eps);
  if (w_staged) cp_async_wait_all();  // this thread's own copies: no barrier needed
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    int i = tid + k * nthreads;
    if (mine && i < nvec) {
      float wf[8], o[8];
      load8(w + i * 8, wf);
#pragma unroll
      // HF's (and vLLM's) rounding point: the normalised value is cast to T before the weight
      // multiplies it, so pie's bf16 activations match transformers' bit for bit here.
      for (int j = 0; j < 8; ++j) o[j] = wf[j] * to_f32(from_f32<T>(v[k][j] * inv));
      emit(i, o);
    }
  }
}

/// rms_norm_row_emit by the block's first `nthreads` threads, summed over the whole block.
template <bool Residual, class T, class Emit>
__device__ __forceinline__ void rms_norm_row_emit(const T* x, const T* r_in, T* r_out, const T* __restrict__ w,
                                                  bool w_staged, int dim, float eps, bool first, float* red,
                                                  int nthreads, Emit&& emit) {
  rms_norm_row_emit<Residual>(x, r_in, r_out, w, w_staged, dim, eps, first, static_cast<int>(threadIdx.x), nthreads,
                              NormBlockSum{red}, static_cast<Emit&&>(emit));
}

/// Whether vector threadIdx.x + k·nthreads of a row of `dim` elements is this thread's in
/// rms_norm_row_emit (it is emitted to this thread).
__device__ __forceinline__ bool norm_row_owns(int k, int dim, int nthreads) {
  const int i = static_cast<int>(threadIdx.x) + k * nthreads;
  return static_cast<int>(threadIdx.x) < nthreads && i < dim / 8;
}

/// rms_norm_row_emit with the row stored to `out`: out = T(norm(r))·w. In place is allowed (out ==
/// x, r_out == r_in): every element is read and written by the same thread, reads first.
template <bool Residual, class T>
__device__ __forceinline__ void rms_norm_row_to(const T* x, const T* r_in, T* r_out, const T* __restrict__ w, T* out,
                                                int dim, float eps, bool first, float* red, int nthreads,
                                                bool w_staged = false) {
  rms_norm_row_emit<Residual>(x, r_in, r_out, w, w_staged, dim, eps, first, red, nthreads,
                              [&](int i, const float (&o)[8]) { store8(out + i * 8, o); });
}

/// In place, by the whole block: r = x + r (or x when first); x = norm(r)·w.
template <bool Residual, class T>
__device__ __forceinline__ void rms_norm_row(T* x, T* residual, const T* __restrict__ w, int dim, float eps, bool first,
                                             float* red) {
  rms_norm_row_to<Residual>(x, residual, residual, w, x, dim, eps, first, red, static_cast<int>(blockDim.x));
}

template <bool Residual, class T>
__global__ void rms_norm_kernel(T* __restrict__ x, int64_t x_stride, T* __restrict__ residual,
                                int64_t r_stride, const T* __restrict__ w, int dim, float eps, bool first) {
  __shared__ float red[32];
  pdl_launch_dependents();  // the next GEMV may start streaming its weights now
  pdl_wait();
  const int64_t row = blockIdx.x;
  rms_norm_row<Residual>(x + row * x_stride, Residual ? residual + row * r_stride : nullptr, w, dim,
                         eps, first, red);
}

template <bool Residual, class T>
void launch_rms_norm(TensorView<T> x, TensorView<T>* residual, TensorView<T> w, float eps, bool first,
                     cudaStream_t stream) {
  check_rows8(x, "rms_norm x");
  check_rows8(w, "rms_norm weight");
  PIE_CHECK(x.rank == 2, "rms_norm: x must be [tokens, dim]");
  const int dim = static_cast<int>(x.shape[1]);
  PIE_CHECK(w.numel() == dim, "rms_norm: weight has ", w.numel(), " elements, row has ", dim);
  const int threads = norm_threads(dim);
  PIE_CHECK(threads <= 1024, "rms_norm: rows of ", dim, " elements are too long (max 32768)");
  if (x.shape[0] == 0) return;
  using D = device_t<T>;
  D* r = nullptr;
  int64_t rs = 0;
  if constexpr (Residual) {
    check_rows8(*residual, "rms_norm residual");
    PIE_CHECK(residual->shape[0] == x.shape[0] && residual->shape[1] == dim, "rms_norm: residual shape differs from x");
    r = dev(residual->data);
    rs = residual->stride[0];
  }
  launch_pdl(rms_norm_kernel<Residual, D>, dim3(static_cast<unsigned>(x.shape[0])), dim3(threads), 0, stream,
             dev(x.data), x.stride[0], r, rs, dev(w.data), dim, eps, first);
}
}  // namespace detail

/// \brief In place: x[t] = rmsnorm(x[t])·w. x is [tokens, dim] (rows may be strided), w is [dim].
template <class T>
void rms_norm(TensorView<T> x, TensorView<T> w, float eps, cudaStream_t stream = nullptr) {
  detail::launch_rms_norm<false>(x, static_cast<TensorView<T>*>(nullptr), w, eps, false, stream);
}

/// \brief In place, residual-fused: residual += x (residual = x when `first`); x = rmsnorm(residual)·w.
/// Same contract as ops::cpu::add_rms_norm; the residual is rounded to T before normalising.
template <class T>
void add_rms_norm(TensorView<T> x, TensorView<T> residual, TensorView<T> w, float eps, bool first,
                  cudaStream_t stream = nullptr) {
  detail::launch_rms_norm<true>(x, &residual, w, eps, first, stream);
}

}  // namespace pie::ops::cuda
