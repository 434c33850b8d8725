#pragma once
/// \file moe_unpermute.cuh
/// \brief The MoE block's last stage on the GPU (moe.cuh, step 4): each token's k expert rows
/// summed with their routing weights, in ascending expert id (the CPU op's order).
#include <cuda_runtime.h>

#include <cstdint>

#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/moe_routing.cuh"

namespace pie::ops::cuda::detail {

/// Step 4: CTA (t, c) writes elements [c·1024, (c+1)·1024) of token t, 8 per thread. Lanes
/// 0..k−1 read the token's k slots at once and place each by its rank among the token's
/// (distinct) expert ids, so the sum runs in ascending expert id (the CPU op's order); then each
/// thread issues its k row loads 8 at a time before using any (one CTA per token with a serial
/// sort and dependent loads took 6.3 µs at batch 1 on the H200, mostly load latency).
template <class T>
__global__ void __launch_bounds__(128) moe_unpermute_kernel(const T* __restrict__ y, int64_t ldy,
                                                            const int32_t* __restrict__ ids,
                                                            const float* __restrict__ weights,
                                                            const int32_t* __restrict__ inv, int k, int H, T* out,
                                                            int64_t ldo) {
  static_assert(sizeof(Pack8<T>) == sizeof(uint4), "8 elements of T are one 16-byte load");
  __shared__ int s_id[kMoeMaxTopK];
  __shared__ int s_pos[kMoeMaxTopK];
  __shared__ float s_w[kMoeMaxTopK];
  pdl_wait();
  pdl_launch_dependents();
  const int t = blockIdx.x;
  moe_token_slots_by_expert<false>(ids, weights, inv, t, k, s_id, s_pos, s_w);
  const int h = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
  if (h >= H) return;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int j0 = 0; j0 < k; j0 += 8) {
    uint4 raw[8];
#pragma unroll
    for (int u = 0; u < 8; ++u)
      if (j0 + u < k) raw[u] = *reinterpret_cast<const uint4*>(y + static_cast<int64_t>(s_pos[j0 + u]) * ldy + h);
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      if (j0 + u >= k) break;
      float v[8];
      widen8(*reinterpret_cast<const Pack8<T>*>(&raw[u]), v);
      const float w = s_w[j0 + u];
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[q] = fmaf(v[q], w, acc[q]);  // as moe_decode.cuh's fused down
    }
  }
  store8(out + static_cast<int64_t>(t) * ldo + h, acc);
}

}  // namespace pie::ops::cuda::detail
