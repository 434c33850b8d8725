#pragma once
/// \file block_manager.hpp
/// \brief BlockManager: what the scheduler does to BlockTables — grow a table for tokens about
/// to be written (copy-on-write of a shared last block included), fork, free, match and register
/// prefix-cache blocks, swap out to / in from the host pool. It owns the device and host pools.
///
/// Copy-on-write: a fork shares every block (ref counts +1). Full blocks are never written
/// again, so only a shared *partial* last block is copied, by the first sequence that appends
/// to it: it takes a fresh block, emits {old → new} into `copies`, and drops its reference.
/// The last owner left writes in place. The source stays out of the free list until end_step().
#include <algorithm>
#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/kv/block_copy.hpp"
#include "pie/kv/block_pool.hpp"
#include "pie/kv/block_table.hpp"

namespace pie::kv {

/// \brief Device + host block pools and the table operations over them.
class BlockManager {
 public:
  BlockManager(int num_device_blocks, int num_host_blocks, int block_size, bool enable_caching)
      : bs_(block_size), shift_(std::countr_zero(unsigned(block_size))),
        device_(num_device_blocks, block_size, enable_caching), host_(num_host_blocks, block_size, false) {
    // shifts instead of divisions: several per sequence per step on the scheduler's hot path
    PIE_CHECK(std::has_single_bit(unsigned(block_size)), "block_size must be a power of two, got ", block_size);
  }

  int block_size() const { return bs_; }
  /// Blocks holding `tokens` tokens: ⌈tokens / block_size⌉.
  int blocks_for(int tokens) const { return (tokens + bs_ - 1) >> shift_; }
  const BlockPool& device() const { return device_; }
  const BlockPool& host() const { return host_; }
  int num_free() const { return device_.num_free(); }

  /// Device blocks append(t, n) would take: new pages, plus one if the last block is shared
  /// and partial (copy-on-write).
  int blocks_to_append(const BlockTable& t, int n) const {
    int need = blocks_for(t.num_tokens + n) - static_cast<int>(t.blocks.size());
    if (n > 0 && cow_needed(t)) ++need;
    return need;
  }
  /// Assigns slots to the next n tokens of `t`. Precondition: blocks_to_append(t, n) ≤ num_free().
  void append(BlockTable& t, int n, std::vector<BlockCopy>& copies) {
    if (n > 0 && cow_needed(t)) {
      int32_t old = t.blocks.back(), fresh = device_.allocate();
      copies.push_back({old, fresh});
      device_.pin(old);  // read by the copy: not reusable before end_step()
      device_.decref(old);
      t.blocks.back() = fresh;
    }
    t.num_tokens += n;
    for (int need = blocks_for(t.num_tokens); static_cast<int>(t.blocks.size()) < need;)
      t.blocks.push_back(device_.allocate());
  }
  /// Ends a scheduling step: copy-on-write and swap-out sources freed during it become reusable.
  void end_step() { device_.unpin_all(); }
  /// A new table sharing every block of `t`.
  BlockTable fork(const BlockTable& t) {
    for (int32_t b : t.blocks) device_.incref(b);
    return t;
  }
  /// Drops every block (device and host), last block first so that a sequence's tail is
  /// evicted before its prefix. Keeps the hash memo.
  void free(BlockTable& t) {
    for (auto it = t.blocks.rbegin(); it != t.blocks.rend(); ++it) device_.decref(*it);
    for (int32_t b : t.host_blocks) host_.decref(b);
    t.blocks.clear();
    t.host_blocks.clear();
    t.num_tokens = 0;
    t.num_registered = 0;
  }

  // ---- prefix cache ----------------------------------------------------------------------------
  /// For an empty table: takes the longest cached run of full blocks of `tokens`, leaving at
  /// least one token to compute (its logits are needed). Counts the lookup; returns cached tokens.
  int match_prefix(BlockTable& t, std::span<const int32_t> tokens) {
    PIE_CHECK(t.blocks.empty() && t.num_tokens == 0, "match_prefix needs an empty table");
    if (!device_.caching_enabled()) return 0;
    int max_blocks = (static_cast<int>(tokens.size()) - 1) / bs_;
    ensure_hashes(t, tokens, max_blocks);
    for (int i = 0; i < max_blocks; ++i) {
      int32_t b = device_.find_cached(t.hashes[i], parent_hash(t, i), tokens.subspan(size_t(i) * bs_, bs_));
      if (b < 0) break;
      device_.incref(b);
      t.blocks.push_back(b);
    }
    t.num_registered = static_cast<int>(t.blocks.size());  // blocks, not tokens
    t.num_tokens = t.num_registered * bs_;
    device_.record_query(static_cast<int64_t>(tokens.size()), t.num_tokens);
    return t.num_tokens;
  }
  /// Offers every full block of `t` not yet offered to the prefix cache. `tokens` are the
  /// sequence's tokens (at least t.num_tokens of them).
  void register_full_blocks(BlockTable& t, std::span<const int32_t> tokens) {
    if (!device_.caching_enabled()) return;
    // Only blocks whose tokens are all known: under asynchronous scheduling the table may hold
    // a placeholder's slot (a token still being sampled), which must never be hashed.
    int full = std::min<int>(t.num_tokens, static_cast<int>(tokens.size())) >> shift_;
    if (full <= t.num_registered) return;
    ensure_hashes(t, tokens, full);
    for (int i = t.num_registered; i < full; ++i)
      device_.cache_block(t.blocks[i], t.hashes[i], parent_hash(t, i), tokens.subspan(size_t(i) * bs_, bs_));
    t.num_registered = full;
  }

  // ---- swapping --------------------------------------------------------------------------------
  /// Moves `t` to host blocks, emitting device → host copies. False (nothing done) when the host
  /// pool lacks room. The device blocks stay out of the free list until end_step().
  bool swap_out(BlockTable& t, std::vector<BlockCopy>& copies) {
    if (host_.num_free() < static_cast<int>(t.blocks.size())) return false;
    for (int32_t b : t.blocks) {
      int32_t h = host_.allocate();
      copies.push_back({b, h});
      t.host_blocks.push_back(h);
    }
    for (auto it = t.blocks.rbegin(); it != t.blocks.rend(); ++it) {
      device_.pin(*it);  // read by the swap-out copy: not a copy target in this step
      device_.decref(*it);
    }
    t.blocks.clear();
    t.num_registered = 0;
    return true;
  }
  /// Device blocks swap_in(t) takes at most.
  int blocks_to_swap_in(const BlockTable& t) const { return static_cast<int>(t.host_blocks.size()); }
  /// Brings `t` back to the device, emitting host → device copies; a full block still in the
  /// prefix cache is taken from there instead of copied. Precondition: enough free blocks.
  void swap_in(BlockTable& t, std::span<const int32_t> tokens, std::vector<BlockCopy>& copies) {
    int full = device_.caching_enabled() ? t.num_tokens / bs_ : 0;
    if (full) ensure_hashes(t, tokens, full);
    for (size_t i = 0; i < t.host_blocks.size(); ++i) {
      int32_t b = -1;
      if (static_cast<int>(i) < full)
        b = device_.find_cached(t.hashes[i], parent_hash(t, int(i)), tokens.subspan(i * bs_, bs_));
      if (b >= 0) {
        device_.incref(b);
      } else {
        b = device_.allocate();
        copies.push_back({t.host_blocks[i], b});
      }
      t.blocks.push_back(b);
      host_.decref(t.host_blocks[i]);
    }
    t.host_blocks.clear();
    t.num_registered = 0;
    register_full_blocks(t, tokens);
  }

 private:
  bool cow_needed(const BlockTable& t) const {
    return (t.num_tokens & (bs_ - 1)) != 0 && device_.ref_count(t.blocks.back()) > 1;
  }
  static uint64_t parent_hash(const BlockTable& t, int i) {
    return i == 0 ? BlockPool::kRootHash : t.hashes[i - 1];
  }
  void ensure_hashes(BlockTable& t, std::span<const int32_t> tokens, int n) {
    for (int i = static_cast<int>(t.hashes.size()); i < n; ++i)
      t.hashes.push_back(BlockPool::hash_block(parent_hash(t, i), tokens.subspan(size_t(i) * bs_, bs_)));
  }

  int bs_, shift_;
  BlockPool device_, host_;
};

}  // namespace pie::kv
