// The sharding plan: what each rank owns for Qwen3-8B's shape and for configs with fewer KV
// heads than ranks, and the errors for splits that cannot work.
#include <gtest/gtest.h>

#include <string>

#include "pie/core/error.hpp"
#include "pie/model/tp_plan.hpp"

namespace {
using namespace pie;
using parallel::make_tp_shard;
using parallel::Range;

model::ModelConfig qwen3_8b() {
  model::ModelConfig c;
  c.vocab_size = 151936;
  c.hidden_size = 4096;
  c.intermediate_size = 12288;
  c.num_hidden_layers = 36;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.qk_norm = true;
  return c;
}

// Expects make_tp_shard(c, n, 0) to throw a pie::Error whose message contains `what`.
void expect_error(const model::ModelConfig& c, int n, const std::string& what) {
  try {
    make_tp_shard(c, n, 0);
    ADD_FAILURE() << "no error for tp " << n;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(TpPlan, Qwen3_8BTp2) {
  auto s = make_tp_shard(qwen3_8b(), 2, 1);
  EXPECT_EQ(s.q_heads, (Range{16, 32}));
  EXPECT_EQ(s.kv_heads, (Range{4, 8}));
  EXPECT_FALSE(s.kv_replicated);
  EXPECT_EQ(s.q_rows(), (Range{2048, 4096}));
  EXPECT_EQ(s.kv_rows(), (Range{512, 1024}));
  EXPECT_EQ(s.intermediate, (Range{6144, 12288}));
  EXPECT_EQ(s.vocab, (Range{75968, 151936}));
  EXPECT_EQ(s.local.num_attention_heads, 16);
  EXPECT_EQ(s.local.num_key_value_heads, 4);
  EXPECT_EQ(s.local.intermediate_size, 6144);
  EXPECT_EQ(s.local.vocab_size, 75968);
  EXPECT_EQ(s.local.hidden_size, 4096);
  EXPECT_EQ(s.local.gqa_group(), 4);
}

TEST(TpPlan, Qwen3_8BTp8KvHeadPerRank) {
  for (int r = 0; r < 8; ++r) {
    auto s = make_tp_shard(qwen3_8b(), 8, r);
    EXPECT_EQ(s.q_heads, (Range{4 * r, 4 * r + 4}));
    EXPECT_EQ(s.kv_heads, (Range{r, r + 1}));
    EXPECT_FALSE(s.kv_replicated);
  }
}

TEST(TpPlan, FewerKvHeadsThanRanksReplicates) {
  auto c = qwen3_8b();
  c.num_key_value_heads = 2;  // GQA group 16; at tp 8 four ranks share each KV head
  for (int r = 0; r < 8; ++r) {
    auto s = make_tp_shard(c, 8, r);
    EXPECT_TRUE(s.kv_replicated);
    EXPECT_EQ(s.kv_heads, (Range{r / 4, r / 4 + 1})) << "rank " << r;
    EXPECT_EQ(s.local.num_key_value_heads, 1);
    EXPECT_EQ(s.local.num_attention_heads, 4);
  }
  c.num_key_value_heads = 1;  // MQA: every rank holds the one KV head
  for (int r = 0; r < 4; ++r) EXPECT_EQ(make_tp_shard(c, 4, r).kv_heads, (Range{0, 1}));
}

TEST(TpPlan, VocabNotDivisiblePadsLastSlice) {
  auto c = qwen3_8b();
  c.vocab_size = 250;
  EXPECT_EQ(make_tp_shard(c, 4, 0).vocab, (Range{0, 63}));
  EXPECT_EQ(make_tp_shard(c, 4, 3).vocab, (Range{189, 250}));
  EXPECT_EQ(make_tp_shard(c, 4, 3).vocab_per_rank, 63);
  EXPECT_EQ(make_tp_shard(c, 4, 3).local.vocab_size, 63);
}

TEST(TpPlan, Tp1IsTheWholeModel) {
  auto s = make_tp_shard(qwen3_8b(), 1, 0);
  EXPECT_EQ(s.q_heads, (Range{0, 32}));
  EXPECT_EQ(s.kv_heads, (Range{0, 8}));
  EXPECT_EQ(s.vocab, (Range{0, 151936}));
  EXPECT_EQ(s.local.intermediate_size, 12288);
}

TEST(TpPlan, Errors) {
  auto c = qwen3_8b();
  expect_error(c, 3, "does not divide num_attention_heads 32");
  expect_error(c, 0, "must be >= 1");
  expect_error(c, 64, "does not divide num_attention_heads");
  auto kv = c;
  kv.num_attention_heads = 12;
  kv.num_key_value_heads = 6;
  expect_error(kv, 4, "does not divide num_key_value_heads 6");
  kv.num_key_value_heads = 4;
  expect_error(kv, 6, "is not a multiple of num_key_value_heads 4");
  auto inter = c;
  inter.intermediate_size = 12290;
  expect_error(inter, 4, "does not divide intermediate_size 12290");
  EXPECT_THROW(make_tp_shard(c, 2, 2), Error);
  EXPECT_THROW(make_tp_shard(c, 2, -1), Error);
  auto zero = c;
  zero.num_key_value_heads = 0;
  expect_error(zero, 2, "zero dimension");
}

}  // namespace
