#pragma once
/// \file paged_kv.hpp
/// \brief PagedKV: the plain view struct of one layer's paged K/V that kernels take by value
/// (FlashInfer's paged_kv_t). Block tables are flattened: sequence b owns pages
/// indices[indptr[b] .. indptr[b+1]), its last page holding last_page_len[b] tokens.
#include <cstdint>

#include "pie/core/dtype.hpp"

namespace pie::kv {

/// \brief Paged K/V of one layer, pointers on the host or the device.
/// \tparam T KV element type
template <class T>
struct PagedKV {
  T* data = nullptr;               ///< this layer's pool [num_blocks][2][kv_heads][block][head_dim]
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 0;
  int batch_size = 0;
  const int32_t* indptr = nullptr;         ///< [batch_size + 1]
  const int32_t* indices = nullptr;        ///< [indptr[batch_size]] block ids
  const int32_t* last_page_len = nullptr;  ///< [batch_size], 1..block_size
  /// fp8 KV: this layer's dequantisation scales, one per kv head ([num_kv_heads], on the same
  /// side as data); the cache stores x / scale. Null means 1 (and 16-bit caches ignore them).
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;

  PIE_HD float k_scale_of(int head) const { return k_scale != nullptr ? k_scale[head] : 1.0f; }
  PIE_HD float v_scale_of(int head) const { return v_scale != nullptr ? v_scale[head] : 1.0f; }

  PIE_HD int64_t block_stride() const { return int64_t{2} * num_kv_heads * block_size * head_dim; }
  /// Start of K of `head` in block `block` (block_size·head_dim contiguous elements).
  PIE_HD T* k_page(int32_t block, int head) const {
    return data + block * block_stride() + int64_t{head} * block_size * head_dim;
  }
  PIE_HD T* v_page(int32_t block, int head) const {
    return k_page(block, head) + int64_t{num_kv_heads} * block_size * head_dim;
  }
  /// Number of tokens held by sequence b.
  PIE_HD int seq_len(int b) const {
    int pages = indptr[b + 1] - indptr[b];
    return pages == 0 ? 0 : (pages - 1) * block_size + last_page_len[b];
  }
  /// Address of K for (token slot, head): slot = block·block_size + offset.
  PIE_HD T* k_at_slot(int64_t slot, int head) const {
    int64_t block = slot / block_size, off = slot % block_size;
    return data + block * block_stride() + (int64_t{head} * block_size + off) * head_dim;
  }
  PIE_HD T* v_at_slot(int64_t slot, int head) const {
    return k_at_slot(slot, head) + int64_t{num_kv_heads} * block_size * head_dim;
  }
};

}  // namespace pie::kv
