#pragma once
/// \file kv_write.cuh
/// \brief Writes this step's K and V rows into their paged-cache slots. For an fp8 e4m3 cache
/// the values are divided by their KV head's k_scale / v_scale (PagedKV) and saturated; attention
/// multiplies them back.
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

namespace detail {
/// One thread moves 8 elements of one (token, kv head) row of K and of V.
template <class T, class KV>
__global__ void kv_write_kernel(kv::PagedKV<KV> cache, const T* __restrict__ k, int64_t k_stride,
                                const T* __restrict__ v, int64_t v_stride, const int64_t* __restrict__ slots,
                                int num_tokens) {
  pdl_launch_dependents();
  pdl_wait();
  const int hd = cache.head_dim, vec_per_head = hd / 8;
  const int vec_per_token = cache.num_kv_heads * vec_per_head;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(num_tokens) * vec_per_token) return;
  int t = static_cast<int>(i / vec_per_token);
  int r = static_cast<int>(i % vec_per_token);
  int h = r / vec_per_head, c = (r % vec_per_head) * 8;
  int64_t slot = slots[t];
  if (slot < 0) return;  // padding token: nothing to store
  float kf[8], vf[8];
  load8(k + t * k_stride + h * hd + c, kf);
  load8(v + t * v_stride + h * hd + c, vf);
  if constexpr (is_fp8_v<KV>) {
    const float kinv = 1.f / cache.k_scale_of(h), vinv = 1.f / cache.v_scale_of(h);
#pragma unroll
    for (int j = 0; j < 8; ++j) { kf[j] *= kinv; vf[j] *= vinv; }
  }
  store8(cache.k_at_slot(slot, h) + c, kf);
  store8(cache.v_at_slot(slot, h) + c, vf);
}
}  // namespace detail

/// \brief cache[slot_mapping[t]] ← (k[t], v[t]) for every token; slots < 0 are skipped.
/// \param cache  one layer's PagedKV (device pool; only data, num_kv_heads, head_dim, block_size,
///               k_scale, v_scale are read)
/// \param k,v    [tokens, num_kv_heads·head_dim] (rows may be strided, e.g. inside the qkv buffer)
/// \param slot_mapping device int64 [tokens]
template <class T, class KV>
void kv_write(kv::PagedKV<KV> cache, TensorView<T> k, TensorView<T> v, const int64_t* slot_mapping,
              cudaStream_t stream = nullptr) {
  check_rows8(k, "kv_write k");
  check_rows8(v, "kv_write v");
  PIE_CHECK(cache.head_dim % 8 == 0, "kv_write: head_dim must be a multiple of 8");
  PIE_CHECK(k.shape[1] == int64_t{cache.num_kv_heads} * cache.head_dim && v.shape[1] == k.shape[1] &&
                v.shape[0] == k.shape[0],
            "kv_write: k and v must be [tokens, num_kv_heads·head_dim]");
  const int num_tokens = static_cast<int>(k.shape[0]);
  if (num_tokens == 0) return;
  kv::PagedKV<device_t<KV>> c{dev(cache.data), cache.num_kv_heads, cache.head_dim, cache.block_size,
                              cache.batch_size, cache.indptr, cache.indices, cache.last_page_len,
                              cache.k_scale, cache.v_scale};
  int64_t n = int64_t{num_tokens} * cache.num_kv_heads * (cache.head_dim / 8);
  constexpr int kThreads = 256;
  launch_pdl(detail::kv_write_kernel<device_t<T>, device_t<KV>>,
             dim3(static_cast<unsigned>((n + kThreads - 1) / kThreads)), dim3(kThreads), 0, stream, c, dev(k.data),
             k.stride[0], dev(v.data), v.stride[0], slot_mapping, num_tokens);
}

}  // namespace pie::ops::cuda
