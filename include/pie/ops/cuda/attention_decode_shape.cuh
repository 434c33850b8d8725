#pragma once
/// \file attention_decode_shape.cuh
/// \brief The CUDA-core decode kernel's compile-time CTA shape (DecodeShape) and the reduce-scatter
/// of its scores. Private to ops/cuda (attention_decode.cuh and attention_decode_multi_item.cuh).
#include <cstddef>

#include "pie/ops/cuda/attention_decode_plan.hpp"
#include "pie/ops/cuda/attention_decode_ring.cuh"

namespace pie::ops::cuda::detail {

/// One level of the reduce-scatter of decode_body per recursion, sizes as template arguments so
/// every index is a constant (a run-time index would move `v` to local memory): lanes `o` apart
/// exchange halves; the lane with bit `o` set keeps the upper half.
template <int HALF, int O, int NV, int N>
__device__ __forceinline__ void reduce_scatter(float (&v)[N], int sub) {
  if constexpr (HALF >= NV && O >= 1) {
    const bool upper = sub & O;
#pragma unroll
    for (int i = 0; i < HALF; ++i) {
      const float send = upper ? v[i] : v[i + HALF];
      const float keep = upper ? v[i + HALF] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    reduce_scatter<HALF / 2, O / 2, NV>(v, sub);
  }
}

/// Compile-time shape of one CTA. A stage holds TOK tokens: K rows [TOK][HD] then V rows.
template <int HD, int GROUP, int NW, int STAGES, class KV>
struct DecodeShape {
  static constexpr int LPT = HD / 8;                // lanes per token row
  static constexpr int TG = 32 / LPT;               // token groups per warp
  static constexpr int NG = NW * TG;                // token groups per CTA
  static constexpr int U = decode_unroll(GROUP) < 64 / NG ? decode_unroll(GROUP) : 64 / NG;  // tokens per lane group and stage
  static constexpr int TOK = NG * U;                // tokens per stage (divides 64)
  static constexpr int STAGE_ELEMS = 2 * TOK * HD;
  static constexpr size_t RING_BYTES = size_t(STAGES) * STAGE_ELEMS * sizeof(KV);
  static constexpr size_t MERGE_BYTES = kDecodeMergeBytes<HD, GROUP, NW>;
  static constexpr size_t SMEM = RING_BYTES > MERGE_BYTES ? RING_BYTES : MERGE_BYTES;
  /// A multi-item CTA's (kDecodeMultiItem): the merge area after the ring, not over it, then
  /// two buffers of the GROUP query rows.
  template <class T>
  static constexpr size_t multi_item_smem() { return RING_BYTES + MERGE_BYTES + 2 * GROUP * HD * sizeof(T); }
  static_assert(64 % TOK == 0, "stages must tile the 64-token split granularity");
  static_assert(MERGE_BYTES % 16 == 0, "the multi-item CTA's query buffer follows the merge area");
};

}  // namespace pie::ops::cuda::detail
