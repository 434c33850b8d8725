#pragma once
/// \file block_pool.hpp
/// \brief BlockPool: a fixed set of KV blocks with reference counts, one free list and an
/// automatic prefix cache (content hash → block) whose unreferenced blocks are evicted LRU.
///
/// Free list: one intrusive doubly-linked queue of every block with ref count 0. Blocks that
/// hold no cached content are pushed at the head, cached ones at the tail, and allocate() pops
/// the head: an uncached block is used first, then the least recently freed cached block, whose
/// hash is dropped at that moment (eviction). A cached block found by a lookup while its ref
/// count is 0 leaves the queue again (incref). Every operation is O(1) except hashing.
///
/// Prefix cache key of a full block: hash(parent block's hash, the block's token ids). The pool
/// keeps each cached block's parent hash and tokens and compares them on lookup, so a 64-bit
/// hash collision can never hand out the wrong KV.
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "pie/core/error.hpp"

namespace pie::kv {

namespace detail {
/// \brief hash → block id, open addressing with linear probing and backward-shift deletion.
/// Keys are already well-mixed 64-bit hashes, so their low bits index the table. A node
/// map costs a cache miss or two per operation; at 256 sequences the pool registers and evicts
/// tens of blocks per step, so this is on the scheduler's hot path.
class BlockHashMap {
 public:
  explicit BlockHashMap(int max_entries) {
    size_t cap = 16;
    while (cap < size_t(max_entries) * 2) cap <<= 1;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
  }
  size_t size() const { return size_; }
  /// The value stored under `key`, or -1.
  int32_t find(uint64_t key) const {
    for (size_t i = key & mask_; !slots_[i].empty(); i = (i + 1) & mask_)
      if (slots_[i].key == key) return slots_[i].val;
    return -1;
  }
  /// Stores val (≥ 0) under key; false (and no change) when the key is present.
  bool insert(uint64_t key, int32_t val) {
    size_t i = key & mask_;
    for (; !slots_[i].empty(); i = (i + 1) & mask_)
      if (slots_[i].key == key) return false;
    slots_[i] = {key, val};
    ++size_;
    return true;
  }
  void erase(uint64_t key) {
    size_t i = key & mask_;
    for (; slots_[i].key != key || slots_[i].empty(); i = (i + 1) & mask_)
      if (slots_[i].empty()) return;
    // backward shift: pull later entries of the probe run into the hole
    for (size_t j = (i + 1) & mask_; !slots_[j].empty(); j = (j + 1) & mask_) {
      size_t home = slots_[j].key & mask_;
      if (((j - home) & mask_) >= ((j - i) & mask_)) {  // home is at or before the hole
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = Slot{};
    --size_;
  }

 private:
  struct Slot {
    uint64_t key = 0;
    int32_t val = -1;  // -1: empty
    bool empty() const { return val < 0; }
  };
  std::vector<Slot> slots_;  // key and value in one cache line
  size_t mask_ = 0, size_ = 0;
};
}  // namespace detail

/// \brief Device (or host) KV blocks: ref counts, free list, prefix cache, counters.
class BlockPool {
 public:
  /// Parent hash of a sequence's first block.
  static constexpr uint64_t kRootHash = 0x6a09e667f3bcc908ull;

  /// \param enable_caching false: blocks are never registered, lookups always miss.
  BlockPool(int num_blocks, int block_size, bool enable_caching = true)
      : num_blocks_(num_blocks), block_size_(block_size), caching_(enable_caching),
        ref_(num_blocks, 0), hash_(num_blocks, 0), parent_(num_blocks, 0),
        cached_(num_blocks, 0), pinned_(num_blocks, 0), prev_(num_blocks + 1), next_(num_blocks + 1),
        map_(enable_caching ? num_blocks : 0) {
    PIE_CHECK(num_blocks >= 0, "BlockPool: num_blocks must be >= 0, got ", num_blocks);
    PIE_CHECK(block_size >= 1, "BlockPool: block_size must be >= 1, got ", block_size);
    if (caching_) tokens_.resize(size_t(num_blocks) * block_size);
    prev_[nil()] = next_[nil()] = nil();
    for (int32_t b = 0; b < num_blocks; ++b) push_back(b);
    num_free_ = num_blocks;
  }

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  bool caching_enabled() const { return caching_; }
  /// Blocks with ref count 0 (cached ones included: they can be evicted at any time).
  int num_free() const { return num_free_; }
  /// Blocks holding registered prefix-cache content (referenced or not).
  int num_cached() const { return static_cast<int>(map_.size()); }
  /// Fraction of blocks referenced by some sequence, in [0, 1].
  double usage() const { return num_blocks_ ? 1.0 - double(num_free_) / num_blocks_ : 0.0; }
  int32_t ref_count(int32_t b) const { return ref_[b]; }
  bool is_cached(int32_t b) const { return cached_[b] != 0; }

  /// Takes a free block (uncached first, else the LRU cached one, evicting it); ref count 1.
  int32_t allocate() {
    PIE_CHECK(num_free_ > 0, "BlockPool: out of blocks (", num_blocks_, " in the pool)");
    int32_t b = next_[nil()];
    unlink(b);
    --num_free_;
    if (cached_[b]) uncache(b);
    ref_[b] = 1;
    return b;
  }
  /// One more owner. A cached block with ref count 0 leaves the free list.
  void incref(int32_t b) {
    if (ref_[b]++ == 0 && !pinned_[b]) { unlink(b); --num_free_; }
  }
  /// One owner less. At 0 the block is free again: cached → LRU tail, uncached → head; a pinned
  /// block waits for unpin_all().
  void decref(int32_t b) {
    PIE_CHECK(ref_[b] > 0, "BlockPool: decref of free block ", b);
    if (--ref_[b] == 0 && !pinned_[b]) release(b);
  }
  /// Keeps `b` from being handed out again until unpin_all(), even if its ref count drops to 0.
  /// The scheduler pins the sources of the plan's copies (copy-on-write, swap-out), so that no
  /// block a copy reads is also written by a copy of the same step: the engine may run each
  /// copy list as one batched kernel.
  void pin(int32_t b) {
    if (!pinned_[b]) { pinned_[b] = 1; pinned_list_.push_back(b); }
  }
  void unpin_all() {
    for (int32_t b : pinned_list_) {
      pinned_[b] = 0;
      if (ref_[b] == 0) release(b);
    }
    pinned_list_.clear();
  }

  // ---- prefix cache ----------------------------------------------------------------------------
  /// Content hash of a full block given its parent's hash (kRootHash for the first block).
  static uint64_t hash_block(uint64_t parent, std::span<const int32_t> tokens) {
    uint64_t h = parent ^ 0x9e3779b97f4a7c15ull;
    for (int32_t t : tokens) {
      h ^= static_cast<uint32_t>(t);
      h *= 0xff51afd7ed558ccdull;
      h ^= h >> 32;
    }
    h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ull; h ^= h >> 33;
    return h;
  }
  /// Block holding exactly this content, or -1. Does not change its ref count.
  int32_t find_cached(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const {
    if (!caching_) return -1;
    int32_t b = map_.find(hash);
    if (b < 0) return -1;
    if (parent_[b] != parent) return -1;
    const int32_t* own = tokens_.data() + size_t(b) * block_size_;
    for (int i = 0; i < block_size_; ++i)
      if (own[i] != tokens[i]) return -1;
    return b;
  }
  /// Registers full block `b` (referenced) under `hash`. False when caching is off, when `b`
  /// is already registered, or when another block already holds this hash.
  bool cache_block(int32_t b, uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) {
    if (!caching_ || cached_[b]) return false;
    PIE_CHECK(static_cast<int>(tokens.size()) == block_size_, "BlockPool: cache_block needs a full block");
    if (!map_.insert(hash, b)) return false;
    cached_[b] = 1;
    hash_[b] = hash;
    parent_[b] = parent;
    std::copy(tokens.begin(), tokens.end(), tokens_.begin() + size_t(b) * block_size_);
    return true;
  }
  /// Counts one admission lookup: `queried` prompt tokens, `hit` of them served from cache.
  void record_query(int64_t queried, int64_t hit) { queries_ += queried; hits_ += hit; }
  int64_t prefix_cache_queries() const { return queries_; }  ///< tokens looked up
  int64_t prefix_cache_hits() const { return hits_; }        ///< tokens found cached

 private:
  int32_t nil() const { return num_blocks_; }
  void unlink(int32_t b) { next_[prev_[b]] = next_[b]; prev_[next_[b]] = prev_[b]; }
  void push_front(int32_t b) {
    prev_[b] = nil(); next_[b] = next_[nil()]; prev_[next_[nil()]] = b; next_[nil()] = b;
  }
  void push_back(int32_t b) {
    next_[b] = nil(); prev_[b] = prev_[nil()]; next_[prev_[nil()]] = b; prev_[nil()] = b;
  }
  void uncache(int32_t b) { map_.erase(hash_[b]); cached_[b] = 0; }
  void release(int32_t b) {
    if (cached_[b]) push_back(b); else push_front(b);
    ++num_free_;
  }

  int num_blocks_, block_size_;
  bool caching_;
  int num_free_ = 0;
  std::vector<int32_t> ref_;
  std::vector<uint64_t> hash_, parent_;
  std::vector<uint8_t> cached_, pinned_;
  std::vector<int32_t> pinned_list_;
  std::vector<int32_t> tokens_;     // [num_blocks][block_size] content of cached blocks
  std::vector<int32_t> prev_, next_;  // free queue; index num_blocks is the sentinel
  detail::BlockHashMap map_;
  int64_t queries_ = 0, hits_ = 0;
};

}  // namespace pie::kv
