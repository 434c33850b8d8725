#pragma once
/// \file rope_kv.cuh
/// \brief qk_norm_rope (rope.cuh) that also writes the step's K and V rows into the paged cache
/// (kv_write.cuh's job), so a layer's attention needs no separate KV-write kernel: one launch
/// and one read of K/V fewer per layer, which at batch 1 is one link fewer in the chain of
/// dependent small kernels between two weight streams (docs/gpu_engine.md, "Fusions at the op
/// boundaries").
///
/// Bit for bit the separate kernels: q and k are rotated by the same device body
/// (qk_norm_rope_token), K is written from the rotated value rounded to the activation type
/// (what kv_write reads back from qkv), and both K and V go through kv_write's conversion:
/// times 1/scale of the KV head (k_scale, v_scale) for an fp8 cache, then the round-to-nearest (satfinite for fp8) store.
/// Rows whose slot is < 0 (graph padding) rotate q/k as before and write nothing to the cache.
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/rope.cuh"

namespace pie::ops::cuda {

namespace detail {

/// kv_write's per-element conversion of 8 values before the store: nothing for a 16-bit cache,
/// times 1/scale of the head for fp8 (the same float multiply by the same reciprocal).
template <class KV>
__device__ __forceinline__ void kv_scale8(float (&f)[8], float inv) {
  if constexpr (is_fp8_v<KV>) {
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] *= inv;
  }
}

/// The rotated K heads (h ≥ nq) of one token to their cache slot.
template <int HD, class T, class KV>
struct RopeKvSink {
  kv::PagedKV<KV> cache;
  int nq;
  int64_t slot;
  __device__ __forceinline__ void operator()(int h, int sub, const float (&oa)[8], const float (&ob)[8]) const {
    if (h < nq || slot < 0) return;
    // kv_write reads K back from qkv: the value as stored in T.
    float a[8], b[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      a[j] = to_f32(from_f32<T>(oa[j]));
      b[j] = to_f32(from_f32<T>(ob[j]));
    }
    const float inv = is_fp8_v<KV> ? 1.f / cache.k_scale_of(h - nq) : 1.f;
    kv_scale8<KV>(a, inv);
    kv_scale8<KV>(b, inv);
    KV* k = cache.k_at_slot(slot, h - nq);
    store8(k + sub * 8, a);
    store8(k + HD / 2 + sub * 8, b);
  }
};

template <int HD, class T, class KV>
__global__ void __launch_bounds__(kRopeThreads) qk_norm_rope_kv_kernel(
    T* __restrict__ qkv, int64_t row_stride, const int32_t* __restrict__ positions, int nq, int nkv,
    const T* __restrict__ q_norm, const T* __restrict__ k_norm, float eps, RopeParams rp, kv::PagedKV<KV> cache,
    const int64_t* __restrict__ slots) {
  pdl_launch_dependents();
  pdl_wait();
  const int t = blockIdx.x;
  T* row = qkv + t * row_stride;
  const int64_t slot = slots[t];
  // V: copied as it is (8 elements per thread, the token's CTAs share the heads). Issued before
  // the rotation, so its loads are in flight with q/k's.
  if (slot >= 0) {
    const T* v = row + int64_t{nq + nkv} * HD;
    for (int i = blockIdx.y * kRopeThreads + threadIdx.x; i < nkv * (HD / 8); i += kRopeThreads * gridDim.y) {
      const int h = i / (HD / 8), c = (i % (HD / 8)) * 8;
      float f[8];
      load8(v + h * HD + c, f);
      kv_scale8<KV>(f, is_fp8_v<KV> ? 1.f / cache.v_scale_of(h) : 1.f);
      store8(cache.v_at_slot(slot, h) + c, f);
    }
  }
  qk_norm_rope_token<HD>(row, nq, nq + nkv, q_norm, k_norm, eps, positions[t], rp,
                         RopeKvSink<HD, T, KV>{cache, nq, slot});
}

}  // namespace detail

/// \brief qk_norm_rope(qkv, …) and kv_write(cache, K of qkv, V of qkv, slot_mapping) in one
/// kernel, with the same results bit for bit (see the file comment).
/// \param qkv          [tokens, (nq + 2·nkv)·head_dim] (rows may be strided); q and k in place
/// \param cache        one layer's PagedKV (data, num_kv_heads = nkv, head_dim, block_size, k_scale, v_scale)
/// \param slot_mapping device int64 [tokens]; slots < 0 are skipped
template <class T, class KV>
void qk_norm_rope_kv(TensorView<T> qkv, const int32_t* positions, int num_q_heads, int num_kv_heads, int head_dim,
                     const T* q_norm, const T* k_norm, float eps, RopeParams rope, kv::PagedKV<KV> cache,
                     const int64_t* slot_mapping, cudaStream_t stream = nullptr) {
  check_rows8(qkv, "qk_norm_rope_kv qkv");
  PIE_CHECK(qkv.rank == 2 && qkv.shape[1] == int64_t{num_q_heads + 2 * num_kv_heads} * head_dim,
            "qk_norm_rope_kv: qkv must be [tokens, (nq + 2 nkv)·head_dim]");
  PIE_CHECK((q_norm == nullptr) == (k_norm == nullptr), "qk_norm_rope_kv: give both q_norm and k_norm or neither");
  PIE_CHECK(cache.num_kv_heads == num_kv_heads && cache.head_dim == head_dim && cache.block_size > 0,
            "qk_norm_rope_kv: the cache holds ", cache.num_kv_heads, " heads of ", cache.head_dim, ", qkv ",
            num_kv_heads, " of ", head_dim);
  PIE_CHECK(cache.data != nullptr && vec8_aligned(cache.data), "qk_norm_rope_kv: cache data must be 16-byte aligned");
  const int num_tokens = static_cast<int>(qkv.shape[0]);
  if (num_tokens == 0) return;
  kv::PagedKV<device_t<KV>> c{dev(cache.data), cache.num_kv_heads, cache.head_dim, cache.block_size,
                              cache.batch_size, cache.indptr, cache.indices, cache.last_page_len,
                              cache.k_scale, cache.v_scale};
  PIE_DISPATCH_HEAD_DIM(head_dim, HD, [&] {
    const unsigned split = detail::rope_split(num_tokens, num_q_heads + num_kv_heads, HD);
    launch_pdl(detail::qk_norm_rope_kv_kernel<HD, device_t<T>, device_t<KV>>,
               dim3(static_cast<unsigned>(num_tokens), split), dim3(detail::kRopeThreads), 0, stream, dev(qkv.data),
               qkv.stride[0], positions, num_q_heads, num_kv_heads, dev(q_norm), dev(k_norm), eps, rope, c,
               slot_mapping);
  });
}

}  // namespace pie::ops::cuda
