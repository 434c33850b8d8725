#pragma once
/// \file embedding.cuh
/// \brief Embedding gather: out[t] = table[ids[t]], 16 bytes per thread. An id outside the
/// vocabulary writes a zero row and sets *bad_id (when given) instead of reading out of bounds.
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

namespace detail {
template <class T>
__global__ void embedding_kernel(const T* __restrict__ table, int vocab, int hidden, const int32_t* __restrict__ ids,
                                 int n, T* __restrict__ out, int64_t out_stride, int32_t* bad_id) {
  pdl_launch_dependents();  // lm_head's GEMV may start streaming its weights now
  pdl_wait();
  const int vpr = hidden / 8;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(n) * vpr) return;
  int64_t t = i / vpr;
  int c = static_cast<int>(i % vpr) * 8;
  int32_t id = ids[t];
  Pack8<T> pk;
  if (id >= 0 && id < vocab) {
    pk = *reinterpret_cast<const Pack8<T>*>(table + static_cast<int64_t>(id) * hidden + c);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) pk.v[j] = from_f32<T>(0.f);
    if (bad_id != nullptr && c == 0) *bad_id = id;
  }
  *reinterpret_cast<Pack8<T>*>(out + t * out_stride + c) = pk;
}
}  // namespace detail

/// \brief out [n, hidden] ← table [vocab, hidden] rows ids[0..n) (device int32).
/// \param bad_id optional device int32 that receives an out-of-range id (left untouched otherwise)
template <class T>
void embedding(TensorView<T> table, const int32_t* ids, TensorView<T> out, int32_t* bad_id = nullptr,
               cudaStream_t stream = nullptr) {
  check_rows8(table, "embedding table");
  check_rows8(out, "embedding out");
  PIE_CHECK(table.rank == 2 && out.rank == 2 && out.shape[1] == table.shape[1],
            "embedding: table must be [vocab, hidden] and out [n, hidden]");
  PIE_CHECK(table.stride[0] == table.shape[1], "embedding: table rows must be contiguous");
  const int n = static_cast<int>(out.shape[0]), hidden = static_cast<int>(out.shape[1]);
  if (n == 0) return;
  int64_t total = int64_t{n} * (hidden / 8);
  constexpr int kThreads = 256;
  launch_pdl(detail::embedding_kernel<device_t<T>>, dim3(static_cast<unsigned>((total + kThreads - 1) / kThreads)),
             dim3(kThreads), 0, stream, dev(table.data), static_cast<int>(table.shape[0]), hidden, ids, n,
             dev(out.data), out.stride[0], bad_id);
}

}  // namespace pie::ops::cuda
