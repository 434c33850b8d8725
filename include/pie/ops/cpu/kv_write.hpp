#pragma once
/// \file kv_write.hpp
/// \brief Writes the step's new K and V rows into their paged-cache slots (the plan's
/// slot_mapping), converting float to the KV dtype (divided by the head's k_scale / v_scale for an fp8 cache).
#include <cstdint>
#include <type_traits>

#include "pie/core/dtype.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cpu/parallel.hpp"

namespace pie::ops::cpu {

/// \brief For row t < n: K/V of every kv head go to slot slots[t] of `kv` (slot < 0: skipped,
/// vLLM's padding convention).
/// \param k row t's kv head h at k + t·row_stride + h·head_dim (same for v)
template <class KVT>
inline void kv_write(const kv::PagedKV<KVT>& kv, const float* k, const float* v, int64_t row_stride,
                     int n, const int64_t* slots) {
  const int hd = kv.head_dim;
  constexpr bool scaled = std::is_same_v<KVT, fp8_e4m3>;
  parallel_for(n, [&](int64_t t) {
    const int64_t slot = slots[t];
    if (slot < 0) return;
    for (int h = 0; h < kv.num_kv_heads; ++h) {
      const float* ks = k + t * row_stride + static_cast<int64_t>(h) * hd;
      const float* vs = v + t * row_stride + static_cast<int64_t>(h) * hd;
      KVT* kd = kv.k_at_slot(slot, h);
      KVT* vd = kv.v_at_slot(slot, h);
      const float kinv = scaled ? 1.0f / kv.k_scale_of(h) : 1.0f, vinv = scaled ? 1.0f / kv.v_scale_of(h) : 1.0f;
      for (int i = 0; i < hd; ++i) {
        kd[i] = from_float<KVT>(ks[i] * kinv);
        vd[i] = from_float<KVT>(vs[i] * vinv);
      }
    }
  }, int64_t{4} * kv.num_kv_heads * hd);
}

}  // namespace pie::ops::cpu
