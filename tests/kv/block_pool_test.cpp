#include <gtest/gtest.h>

#include <random>
#include <set>
#include <unordered_map>
#include <vector>

#include "pie/kv/block_pool.hpp"

namespace pie::kv {

std::vector<int32_t> iota_tokens(int n, int start) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = start + i;
  return t;
}

TEST(BlockHashMap, MatchesStdUnorderedMapUnderCollisions) {
  detail::BlockHashMap m(64);  // 128 slots
  std::unordered_map<uint64_t, int32_t> ref;
  std::mt19937_64 rng(3);
  for (int it = 0; it < 200000; ++it) {
    // keys sharing their low bits collide into long probe runs, wrapping around the table
    uint64_t key = (rng() % 96) << 7 | (rng() % 3 == 0 ? 127 : rng() % 4);
    if (rng() % 2 && ref.size() < 64) {
      bool fresh = !ref.count(key);
      ASSERT_EQ(m.insert(key, it), fresh);
      if (fresh) ref[key] = it;
    } else if (ref.count(key)) {
      m.erase(key);
      ref.erase(key);
    }
    ASSERT_EQ(m.size(), ref.size());
    uint64_t probe = (rng() % 96) << 7 | (rng() % 3 == 0 ? 127 : rng() % 4);
    auto f = ref.find(probe);
    ASSERT_EQ(m.find(probe), f == ref.end() ? -1 : f->second);
  }
}

TEST(BlockPool, AllocateUntilEmptyThenThrows) {
  BlockPool p(4, 16);
  std::set<int32_t> got;
  for (int i = 0; i < 4; ++i) got.insert(p.allocate());
  EXPECT_EQ(got.size(), 4u);
  EXPECT_EQ(p.num_free(), 0);
  EXPECT_DOUBLE_EQ(p.usage(), 1.0);
  EXPECT_THROW(p.allocate(), Error);
}

TEST(BlockPool, RefCountsFreeAtZero) {
  BlockPool p(2, 16);
  int32_t b = p.allocate();
  p.incref(b);
  EXPECT_EQ(p.ref_count(b), 2);
  p.decref(b);
  EXPECT_EQ(p.num_free(), 1);
  p.decref(b);
  EXPECT_EQ(p.num_free(), 2);
  EXPECT_THROW(p.decref(b), Error);
}

TEST(BlockPool, CachedBlockSurvivesFreeAndIsFoundAgain) {
  BlockPool p(3, 4);
  auto toks = iota_tokens(4, 10);
  int32_t b = p.allocate();
  uint64_t h = BlockPool::hash_block(BlockPool::kRootHash, toks);
  EXPECT_TRUE(p.cache_block(b, h, BlockPool::kRootHash, toks));
  p.decref(b);
  EXPECT_EQ(p.num_free(), 3);
  EXPECT_EQ(p.find_cached(h, BlockPool::kRootHash, toks), b);
  p.incref(b);  // reuse from the cache: leaves the free list
  EXPECT_EQ(p.num_free(), 2);
  EXPECT_EQ(p.ref_count(b), 1);
  // other allocations never hand out a referenced block
  int32_t x = p.allocate(), y = p.allocate();
  EXPECT_NE(x, b);
  EXPECT_NE(y, b);
}

TEST(BlockPool, LookupComparesContentNotJustHash) {
  BlockPool p(2, 4);
  auto toks = iota_tokens(4, 0);
  int32_t b = p.allocate();
  uint64_t h = BlockPool::hash_block(BlockPool::kRootHash, toks);
  p.cache_block(b, h, BlockPool::kRootHash, toks);
  auto other = iota_tokens(4, 1);
  EXPECT_EQ(p.find_cached(h, BlockPool::kRootHash, other), -1);  // forged collision
  EXPECT_EQ(p.find_cached(h, 12345, toks), -1);                  // other parent
  EXPECT_EQ(p.find_cached(h, BlockPool::kRootHash, toks), b);
}

TEST(BlockPool, UncachedFreeBlocksAreUsedBeforeEvictingCachedOnes) {
  BlockPool p(3, 2);
  int32_t a = p.allocate(), b = p.allocate(), c = p.allocate();
  std::vector<int32_t> ta{1, 2}, tb{3, 4};
  uint64_t ha = BlockPool::hash_block(BlockPool::kRootHash, ta);
  uint64_t hb = BlockPool::hash_block(BlockPool::kRootHash, tb);
  p.cache_block(a, ha, BlockPool::kRootHash, ta);
  p.cache_block(b, hb, BlockPool::kRootHash, tb);
  p.decref(a);  // a freed before b: a is least recently used
  p.decref(b);
  p.decref(c);  // uncached
  EXPECT_EQ(p.allocate(), c);
  EXPECT_EQ(p.num_cached(), 2);
  EXPECT_EQ(p.allocate(), a);  // LRU eviction
  EXPECT_EQ(p.find_cached(ha, BlockPool::kRootHash, ta), -1);
  EXPECT_EQ(p.find_cached(hb, BlockPool::kRootHash, tb), b);
  EXPECT_EQ(p.num_cached(), 1);
}

TEST(BlockPool, TouchingACachedBlockMakesItMostRecent) {
  BlockPool p(2, 2);
  int32_t a = p.allocate(), b = p.allocate();
  std::vector<int32_t> ta{1, 2}, tb{3, 4};
  p.cache_block(a, BlockPool::hash_block(BlockPool::kRootHash, ta), BlockPool::kRootHash, ta);
  p.cache_block(b, BlockPool::hash_block(BlockPool::kRootHash, tb), BlockPool::kRootHash, tb);
  p.decref(a);
  p.decref(b);
  p.incref(a);  // hit on a
  p.decref(a);  // a is now more recent than b
  EXPECT_EQ(p.allocate(), b);
}

TEST(BlockPool, DuplicateContentIsRegisteredOnce) {
  BlockPool p(2, 2);
  std::vector<int32_t> t{7, 8};
  uint64_t h = BlockPool::hash_block(BlockPool::kRootHash, t);
  int32_t a = p.allocate(), b = p.allocate();
  EXPECT_TRUE(p.cache_block(a, h, BlockPool::kRootHash, t));
  EXPECT_FALSE(p.cache_block(b, h, BlockPool::kRootHash, t));
  EXPECT_FALSE(p.is_cached(b));
}

TEST(BlockPool, CachingOffNeverFinds) {
  BlockPool p(2, 2, false);
  std::vector<int32_t> t{7, 8};
  int32_t a = p.allocate();
  uint64_t h = BlockPool::hash_block(BlockPool::kRootHash, t);
  EXPECT_FALSE(p.cache_block(a, h, BlockPool::kRootHash, t));
  EXPECT_EQ(p.find_cached(h, BlockPool::kRootHash, t), -1);
}

TEST(BlockPool, HashDependsOnParentAndEveryToken) {
  std::vector<int32_t> t{1, 2, 3, 4};
  uint64_t h = BlockPool::hash_block(BlockPool::kRootHash, t);
  EXPECT_NE(h, BlockPool::hash_block(h, t));
  for (int i = 0; i < 4; ++i) {
    auto u = t;
    ++u[i];
    EXPECT_NE(h, BlockPool::hash_block(BlockPool::kRootHash, u)) << i;
  }
}

TEST(BlockPool, Counters) {
  BlockPool p(2, 2);
  p.record_query(10, 4);
  p.record_query(6, 0);
  EXPECT_EQ(p.prefix_cache_queries(), 16);
  EXPECT_EQ(p.prefix_cache_hits(), 4);
}

}  // namespace pie::kv
