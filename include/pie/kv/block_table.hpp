#pragma once
/// \file block_table.hpp
/// \brief BlockTable: one sequence's KV blocks (device, or host while swapped out). The
/// scheduler flattens the tables of a step into FlashInfer's paged form (StepPlan::kv_indptr,
/// kv_indices, kv_last_page_len): a table's first ⌈tokens/block_size⌉ blocks, in order.
#include <cstdint>
#include <vector>

namespace pie::kv {

/// \brief The blocks of one sequence. Token t lives in blocks[t / block_size] at offset
/// t % block_size, i.e. slot blocks[t / block_size]·block_size + t % block_size.
struct BlockTable {
  std::vector<int32_t> blocks;       ///< device blocks in token order (empty while swapped)
  std::vector<int32_t> host_blocks;  ///< host blocks in token order while swapped out
  std::vector<uint64_t> hashes;      ///< memo: content hashes of the first hashes.size() full blocks
  int num_tokens = 0;                ///< tokens whose KV slot is assigned (written or scheduled)
  int num_registered = 0;            ///< leading full blocks already offered to the prefix cache

  /// KV slot of token t (t < num_tokens).
  int64_t slot(int t, int block_size) const {
    return int64_t{blocks[t / block_size]} * block_size + t % block_size;
  }
};

}  // namespace pie::kv
