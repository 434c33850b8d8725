#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "pie/kv/block_manager.hpp"

namespace pie::kv {

namespace {
std::vector<int32_t> seq_tokens(int n, int start = 100) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}
}  // namespace

TEST(BlockManager, AppendAllocatesPagesAtBoundaries) {
  BlockManager m(8, 0, 4, false);
  BlockTable t;
  std::vector<BlockCopy> copies;
  EXPECT_EQ(m.blocks_to_append(t, 5), 2);
  m.append(t, 5, copies);
  EXPECT_EQ(t.blocks.size(), 2u);
  EXPECT_EQ(t.num_tokens, 5);
  EXPECT_EQ(m.blocks_to_append(t, 3), 0);
  EXPECT_EQ(m.blocks_to_append(t, 4), 1);
  m.append(t, 3, copies);
  EXPECT_EQ(t.blocks.size(), 2u);
  m.append(t, 1, copies);
  EXPECT_EQ(t.blocks.size(), 3u);
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(t.slot(4, 4), int64_t{t.blocks[1]} * 4);
  EXPECT_EQ(m.num_free(), 5);
  m.free(t);
  EXPECT_EQ(m.num_free(), 8);
  EXPECT_TRUE(t.blocks.empty());
}

TEST(BlockManager, ForkSharesAndFirstWriteIntoSharedPartialBlockCopies) {
  BlockManager m(8, 0, 4, false);
  BlockTable a;
  std::vector<BlockCopy> copies;
  m.append(a, 6, copies);  // blocks: full, partial (2 of 4)
  BlockTable b = m.fork(a), c = m.fork(a);
  EXPECT_EQ(m.device().ref_count(a.blocks[0]), 3);
  EXPECT_EQ(m.device().ref_count(a.blocks[1]), 3);
  int32_t shared = a.blocks[1];
  EXPECT_EQ(m.blocks_to_append(b, 1), 1);  // copy-on-write
  m.append(b, 1, copies);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, shared);
  EXPECT_EQ(copies[0].dst, b.blocks[1]);
  EXPECT_NE(b.blocks[1], shared);
  EXPECT_EQ(b.blocks[0], a.blocks[0]);  // full block stays shared
  EXPECT_EQ(m.device().ref_count(shared), 2);
  m.append(c, 1, copies);
  EXPECT_EQ(copies.size(), 2u);
  EXPECT_EQ(m.device().ref_count(shared), 1);
  EXPECT_EQ(m.blocks_to_append(a, 1), 0);  // last owner writes in place
  m.append(a, 1, copies);
  EXPECT_EQ(copies.size(), 2u);
  EXPECT_EQ(a.blocks[1], shared);
  m.end_step();
  m.free(a); m.free(b); m.free(c);
  EXPECT_EQ(m.num_free(), 8);
}

TEST(BlockManager, CopyOnWriteSourceIsNotReusedBeforeTheStepEnds) {
  BlockManager m(3, 0, 4, false);
  BlockTable a;
  std::vector<BlockCopy> copies;
  m.append(a, 2, copies);
  BlockTable b = m.fork(a);
  int32_t shared = a.blocks[0];
  m.append(a, 1, copies);  // a copies the shared block; the copy reads it before the forward
  m.free(b);               // b preempted in the same step: the source's ref count drops to 0
  EXPECT_EQ(m.device().ref_count(shared), 0);
  EXPECT_EQ(m.num_free(), 1);
  BlockTable c;
  m.append(c, 1, copies);  // must not be handed the pending copy source
  EXPECT_NE(c.blocks[0], shared);
  EXPECT_EQ(m.num_free(), 0);
  m.end_step();
  EXPECT_EQ(m.num_free(), 1);
  BlockTable d;
  m.append(d, 1, copies);
  EXPECT_EQ(d.blocks[0], shared);
}

TEST(BlockManager, ForkOfFullLastBlockNeedsNoCopy) {
  BlockManager m(8, 0, 4, false);
  BlockTable a;
  std::vector<BlockCopy> copies;
  m.append(a, 8, copies);
  BlockTable b = m.fork(a);
  EXPECT_EQ(m.blocks_to_append(b, 1), 1);
  m.append(b, 1, copies);
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(b.blocks.size(), 3u);
}

TEST(BlockManager, PrefixMatchReusesFullBlocksAndLeavesOneTokenToCompute) {
  BlockManager m(16, 0, 4, true);
  auto toks = seq_tokens(10);
  BlockTable a;
  std::vector<BlockCopy> copies;
  m.append(a, 10, copies);
  m.register_full_blocks(a, toks);
  EXPECT_EQ(a.num_registered, 2);
  BlockTable b;
  EXPECT_EQ(m.match_prefix(b, toks), 8);
  EXPECT_EQ(b.blocks[0], a.blocks[0]);
  EXPECT_EQ(b.blocks[1], a.blocks[1]);
  EXPECT_EQ(m.device().prefix_cache_queries(), 10);
  EXPECT_EQ(m.device().prefix_cache_hits(), 8);
  // exactly 8 tokens: at most one block may come from the cache
  BlockTable c;
  auto eight = seq_tokens(8);
  EXPECT_EQ(m.match_prefix(c, eight), 4);
  // a different first block breaks the chain
  auto other = toks;
  other[0] = -5;
  BlockTable d;
  EXPECT_EQ(m.match_prefix(d, other), 0);
  // freed blocks stay cached
  m.free(a); m.free(b); m.free(c); m.free(d);
  EXPECT_EQ(m.num_free(), 16);
  BlockTable e;
  EXPECT_EQ(m.match_prefix(e, toks), 8);
}

// A sequence that starts from a prefix hit registers the full blocks it computes afterwards
// (num_registered counts blocks: it once took the hit's token count, so those blocks were never
// offered to the cache until the sequence was freed and matched again).
TEST(BlockManager, BlocksComputedAfterAPrefixHitAreRegistered) {
  BlockManager m(16, 0, 4, true);
  auto toks = seq_tokens(13);
  BlockTable a;
  std::vector<BlockCopy> copies;
  m.append(a, 5, copies);
  m.register_full_blocks(a, toks);  // block 0
  BlockTable b;
  ASSERT_EQ(m.match_prefix(b, toks), 4);
  EXPECT_EQ(b.num_registered, 1);
  m.append(b, 8, copies);  // tokens 4..11: blocks 1 and 2 become full
  m.register_full_blocks(b, toks);
  EXPECT_EQ(b.num_registered, 3);
  BlockTable c;
  EXPECT_EQ(m.match_prefix(c, toks), 12);  // all three full blocks, one token left to compute
  EXPECT_EQ(c.blocks, std::vector<int32_t>(b.blocks.begin(), b.blocks.begin() + 3));
}

TEST(BlockManager, SwapRoundTripEmitsCopiesAndRestoresTable) {
  BlockManager m(8, 8, 4, false);
  auto toks = seq_tokens(10);
  BlockTable a;
  std::vector<BlockCopy> out, in, cow;
  m.append(a, 10, cow);
  auto dev = a.blocks;
  ASSERT_TRUE(m.swap_out(a, out));
  ASSERT_EQ(out.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(out[i].src, dev[i]);
    EXPECT_EQ(out[i].dst, a.host_blocks[i]);
  }
  EXPECT_EQ(m.num_free(), 5);  // pinned: the copies read them in this step
  m.end_step();
  EXPECT_EQ(m.num_free(), 8);
  EXPECT_EQ(m.host().num_free(), 5);
  EXPECT_EQ(a.num_tokens, 10);
  m.swap_in(a, toks, in);
  ASSERT_EQ(in.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(in[i].src, out[i].dst);
    EXPECT_EQ(in[i].dst, a.blocks[i]);
  }
  EXPECT_EQ(m.host().num_free(), 8);
  EXPECT_EQ(m.num_free(), 5);
}

TEST(BlockManager, SwapOutFailsWithoutHostRoom) {
  BlockManager m(8, 1, 4, false);
  BlockTable a;
  std::vector<BlockCopy> out, cow;
  m.append(a, 5, cow);
  EXPECT_FALSE(m.swap_out(a, out));
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(a.blocks.size(), 2u);
}

TEST(BlockManager, SwapInTakesStillCachedBlocksWithoutCopy) {
  BlockManager m(8, 8, 4, true);
  auto toks = seq_tokens(10);
  BlockTable a;
  std::vector<BlockCopy> out, in, cow;
  m.append(a, 10, cow);
  m.register_full_blocks(a, toks);
  auto dev = a.blocks;
  ASSERT_TRUE(m.swap_out(a, out));
  m.swap_in(a, toks, in);
  ASSERT_EQ(in.size(), 1u);  // only the partial block is copied back
  EXPECT_EQ(a.blocks[0], dev[0]);
  EXPECT_EQ(a.blocks[1], dev[1]);
  EXPECT_EQ(in[0].dst, a.blocks[2]);
}

TEST(BlockTable, SlotIsBlockTimesBlockSizePlusOffset) {
  BlockTable t;
  t.blocks = {5, 6, 7};
  t.num_tokens = 9;
  EXPECT_EQ(t.slot(0, 4), 20);
  EXPECT_EQ(t.slot(5, 4), 25);
  EXPECT_EQ(t.slot(8, 4), 28);
}

}  // namespace pie::kv
