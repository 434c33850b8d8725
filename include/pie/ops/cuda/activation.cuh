#pragma once
/// \file activation.cuh
/// \brief SwiGLU: out[t, i] = silu(gate[t, i])·up[t, i] over the fused [gate | up] rows the
/// gate_up GEMM produces. One thread per 8 outputs: two 16-byte loads, one 16-byte store.
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

namespace detail {
/// o = T(silu(g))·u for 8 adjacent elements, in float: transformers' rounding points (silu(gate)
/// is a T tensor before it multiplies up). swiglu_gemv's prologue (gemv.cuh) calls it too, so
/// the two paths give the same bits.
template <class T>
__device__ __forceinline__ void swiglu8(const float (&g)[8], const float (&u)[8], float (&o)[8]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) o[j] = to_f32(from_f32<T>(g[j] / (1.f + expf(-g[j])))) * u[j];
}

template <class T>
__global__ void silu_and_mul_kernel(const T* __restrict__ in, int64_t in_stride, T* __restrict__ out,
                                    int64_t out_stride, int num_tokens, int inter) {
  pdl_launch_dependents();  // the down-projection GEMV may start streaming its weights now
  pdl_wait();
  const int vpr = inter / 8;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(num_tokens) * vpr) return;
  int64_t t = i / vpr;
  int c = static_cast<int>(i % vpr) * 8;
  float g[8], u[8], o[8];
  load8(in + t * in_stride + c, g);
  load8(in + t * in_stride + inter + c, u);
  swiglu8<T>(g, u, o);
  store8(out + t * out_stride + c, o);
}
}  // namespace detail

/// \brief out [tokens, inter] = silu(gate_up[:, :inter])·gate_up[:, inter:]; gate_up is [tokens, 2·inter].
template <class T>
void silu_and_mul(TensorView<T> gate_up, TensorView<T> out, cudaStream_t stream = nullptr) {
  check_rows8(gate_up, "silu_and_mul gate_up");
  check_rows8(out, "silu_and_mul out");
  PIE_CHECK(gate_up.rank == 2 && out.rank == 2 && gate_up.shape[0] == out.shape[0] &&
                gate_up.shape[1] == 2 * out.shape[1],
            "silu_and_mul: gate_up must be [tokens, 2·inter] and out [tokens, inter]");
  const int n = static_cast<int>(out.shape[0]), inter = static_cast<int>(out.shape[1]);
  if (n == 0) return;
  int64_t total = int64_t{n} * (inter / 8);
  constexpr int kThreads = 256;
  launch_pdl(detail::silu_and_mul_kernel<device_t<T>>, dim3(static_cast<unsigned>((total + kThreads - 1) / kThreads)),
             dim3(kThreads), 0, stream, dev(gate_up.data), gate_up.stride[0], dev(out.data), out.stride[0], n, inter);
}

}  // namespace pie::ops::cuda
