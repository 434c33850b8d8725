#pragma once
/// \file kv_scales.cuh
/// \brief kv_calculate_scales: `--calculate-kv-scales` on the device. One layer's K and V rows
/// of a step (as kv_write reads them) → each kv head's amax over the rows whose slot is ≥ 0 →
/// the head's scale kv::kv_scale_from_amax(amax, margin), written where the cache's PagedKV
/// points (KVCache::k_scales / v_scales), before that layer's kv_write. Runs once, on the first
/// real forward; the CPU forward does the same with kv::head_amax (the reference).
#include "pie/kv/kv_scales.hpp"
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

namespace detail {
/// CTA (h, 0) reduces K of kv head h, (h, 1) V; 256 threads stride over rows × 8-element chunks.
template <class T>
__global__ void __launch_bounds__(256) kv_scales_kernel(const T* __restrict__ k, int64_t k_stride,
                                                        const T* __restrict__ v, int64_t v_stride,
                                                        const int64_t* __restrict__ slots, int num_tokens, int hd,
                                                        float margin, float* __restrict__ k_scale,
                                                        float* __restrict__ v_scale) {
  const int h = blockIdx.x;
  const bool is_v = blockIdx.y == 1;
  const T* x = is_v ? v : k;
  const int64_t stride = is_v ? v_stride : k_stride;
  const int chunks = hd / 8;
  float m = 0.f;
  for (int64_t i = threadIdx.x; i < int64_t(num_tokens) * chunks; i += blockDim.x) {
    const int t = int(i / chunks), c = int(i % chunks) * 8;
    if (slots[t] < 0) continue;  // padding row: never written, so not calibrated on
    float f[8];
    load8(x + t * stride + int64_t(h) * hd + c, f);
#pragma unroll
    for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(f[j]));
  }
  m = warp_max(m);
  __shared__ float part[8];
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < int(blockDim.x / 32); ++w) m = fmaxf(m, part[w]);
    m = fmaxf(m, part[0]);
    (is_v ? v_scale : k_scale)[h] = kv::kv_scale_from_amax(m, margin);
  }
}
}  // namespace detail

/// \brief k_scale[h], v_scale[h] ← kv_scale_from_amax(max |K| (|V|) of kv head h over the rows
/// t with slot_mapping[t] ≥ 0, margin), for h < num_kv_heads.
/// \param k,v   [tokens, num_kv_heads·head_dim] (rows may be strided, as kv_write's)
/// \param k_scale,v_scale device float [num_kv_heads] (this layer's, KVCache::k_scales)
template <class T>
void kv_calculate_scales(TensorView<T> k, TensorView<T> v, const int64_t* slot_mapping, int num_kv_heads,
                         int head_dim, float margin, float* k_scale, float* v_scale, cudaStream_t stream = nullptr) {
  check_rows8(k, "kv_calculate_scales k");
  check_rows8(v, "kv_calculate_scales v");
  PIE_CHECK(head_dim % 8 == 0 && k.shape[1] == int64_t{num_kv_heads} * head_dim && v.shape[1] == k.shape[1] &&
                v.shape[0] == k.shape[0],
            "kv_calculate_scales: k and v must be [tokens, num_kv_heads·head_dim]");
  PIE_CHECK(k_scale != nullptr && v_scale != nullptr, "kv_calculate_scales: no scale arrays (not an fp8 cache)");
  detail::kv_scales_kernel<device_t<T>><<<dim3(unsigned(num_kv_heads), 2), 256, 0, stream>>>(
      dev(k.data), k.stride[0], dev(v.data), v.stride[0], slot_mapping, static_cast<int>(k.shape[0]), head_dim,
      margin, k_scale, v_scale);
  PIE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pie::ops::cuda
