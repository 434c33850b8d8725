#pragma once
/// \file add.cuh
/// \brief In-place residual add: acc[t, i] = acc[t, i] + x[t, i], rounded to T once (as
/// transformers' `residual + hidden_states` in bf16). For models whose norms come after the
/// block (OLMo-2's post-norms), where the add is not fused into the next RMSNorm.
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

namespace detail {
template <class T>
__global__ void add_kernel(T* __restrict__ acc, int64_t acc_stride, const T* __restrict__ x, int64_t x_stride,
                           int num_tokens, int dim) {
  pdl_launch_dependents();
  pdl_wait();
  const int vpr = dim / 8;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(num_tokens) * vpr) return;
  const int64_t t = i / vpr;
  const int c = static_cast<int>(i % vpr) * 8;
  float a[8], b[8];
  load8(acc + t * acc_stride + c, a);
  load8(x + t * x_stride + c, b);
#pragma unroll
  for (int j = 0; j < 8; ++j) a[j] += b[j];
  store8(acc + t * acc_stride + c, a);
}
}  // namespace detail

/// \brief acc += x, both [tokens, dim] (rows may be strided; dim a multiple of 8).
template <class T>
void add(TensorView<T> acc, TensorView<T> x, cudaStream_t stream = nullptr) {
  check_rows8(acc, "add acc");
  check_rows8(x, "add x");
  PIE_CHECK(acc.rank == 2 && x.rank == 2 && acc.shape[0] == x.shape[0] && acc.shape[1] == x.shape[1],
            "add: acc and x must both be [tokens, dim]");
  const int n = static_cast<int>(acc.shape[0]), dim = static_cast<int>(acc.shape[1]);
  if (n == 0) return;
  const int64_t total = int64_t{n} * (dim / 8);
  constexpr int kThreads = 256;
  launch_pdl(detail::add_kernel<device_t<T>>, dim3(static_cast<unsigned>((total + kThreads - 1) / kThreads)),
             dim3(kThreads), 0, stream, dev(acc.data), acc.stride[0], dev(x.data), x.stride[0], n, dim);
}

}  // namespace pie::ops::cuda
