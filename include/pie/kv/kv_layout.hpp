#pragma once
/// \file kv_layout.hpp
/// \brief The one place that sizes the KV cache: bytes per token, bytes per block, and how many
/// blocks fit a memory budget. Layout of the pool (per layer, contiguous):
///   [num_blocks][2 (K,V)][num_kv_heads][block_size][head_dim]  in kv_dtype
/// so a decode kernel reads one block's K for one head as one contiguous block_size·head_dim run.
#include <cstddef>
#include <cstdint>

#include "pie/core/dtype.hpp"

namespace pie::kv {

/// \brief Shape facts of a KV cache (per rank under tensor parallelism).
struct KVLayout {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;
  DType kv_dtype = DType::BF16;

  /// K and V of one token over all layers: 2·layers·kv_heads·head_dim·sizeof(kv_dtype).
  constexpr size_t bytes_per_token() const {
    return size_t{2} * num_layers * num_kv_heads * head_dim * dtype_size(kv_dtype);
  }
  constexpr size_t bytes_per_block() const { return bytes_per_token() * block_size; }
  /// Elements of one block in one layer (K and V).
  constexpr size_t block_elems_per_layer() const {
    return size_t{2} * num_kv_heads * block_size * head_dim;
  }
  /// Elements of one K (or V) page of one head: block_size·head_dim.
  constexpr size_t page_elems() const { return size_t{1} * block_size * head_dim; }
  /// How many whole blocks fit in `budget_bytes`.
  constexpr int64_t blocks_for_budget(size_t budget_bytes) const {
    size_t b = bytes_per_block();
    return b ? static_cast<int64_t>(budget_bytes / b) : 0;
  }
};

}  // namespace pie::kv
