// The nano-batch planner (engine/nano_split.hpp): which sequences go to which half, that the
// halves put back together are the step, that a prefill chunk stays whole, that no half is
// empty, and the cost model's choice at the Qwen3-8B shape.
#include "pie/engine/nano_split.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "plan_builder.hpp"

namespace pie::engine {
namespace {

using sched::StepPlan;

/// `decodes` one-token decodes with growing contexts, then prefill chunks of the given lengths
/// (the last chunk samples with n = 2, the others do not sample).
StepPlan mixed_plan(int decodes, const std::vector<int>& chunks) {
  constexpr int bs = 4;
  std::vector<test::SeqWork> seqs;
  int next_block = 0;
  auto blocks = [&](int n) {
    std::vector<int32_t> b;
    for (int i = 0; i < n; ++i) b.push_back(next_block++);
    return b;
  };
  for (int i = 0; i < decodes; ++i) {
    test::SeqWork w;
    w.cached = 3 + 5 * i;
    w.tokens = {100 + i};
    w.blocks = blocks((w.cached + 1 + bs - 1) / bs);
    seqs.push_back(w);
  }
  for (size_t c = 0; c < chunks.size(); ++c) {
    test::SeqWork w;
    w.cached = static_cast<int>(c) * 4;
    for (int t = 0; t < chunks[c]; ++t) w.tokens.push_back(1000 + t);
    w.blocks = blocks((w.cached + chunks[c] + bs - 1) / bs);
    w.sample = c + 1 == chunks.size();
    seqs.push_back(w);
  }
  StepPlan p = test::make_plan(seqs, bs);
  p.num_decode_seqs = decodes;
  if (!chunks.empty()) p.sample_counts.back() = 2;
  // Asynchronous scheduling: every other decode row takes a draw of the previous step.
  for (int i = 0; i < decodes; i += 2) {
    p.feed_rows.push_back(i);
    p.feed_draws.push_back(decodes - 1 - i);
  }
  return p;
}

/// The halves, put back together, are `p` (rows, sequences, block table, samples, feed rows).
void expect_reassembles(const StepPlan& p, const NanoSplit& s) {
  const StepPlan& a = s.half[0].plan;
  const StepPlan& b = s.half[1].plan;
  auto cat = [](auto x, const auto& y) { x.insert(x.end(), y.begin(), y.end()); return x; };
  EXPECT_EQ(cat(a.token_ids, b.token_ids), p.token_ids);
  EXPECT_EQ(cat(a.positions, b.positions), p.positions);
  EXPECT_EQ(cat(a.slot_mapping, b.slot_mapping), p.slot_mapping);
  EXPECT_EQ(cat(a.seq_ids, b.seq_ids), p.seq_ids);
  EXPECT_EQ(cat(a.query_lens, b.query_lens), p.query_lens);
  EXPECT_EQ(cat(a.context_lens, b.context_lens), p.context_lens);
  EXPECT_EQ(cat(a.kv_last_page_len, b.kv_last_page_len), p.kv_last_page_len);
  EXPECT_EQ(cat(a.kv_indices, b.kv_indices), p.kv_indices);
  EXPECT_EQ(a.num_decode_seqs + b.num_decode_seqs, p.num_decode_seqs);
  const int ra = a.num_tokens(), sa = a.num_seqs();
  ASSERT_EQ(a.cu_query_lens.size(), static_cast<size_t>(sa + 1));
  ASSERT_EQ(b.cu_query_lens.size(), static_cast<size_t>(b.num_seqs() + 1));
  for (int i = 0; i <= sa; ++i) EXPECT_EQ(a.cu_query_lens[i], p.cu_query_lens[i]);
  for (int i = 0; i <= b.num_seqs(); ++i) EXPECT_EQ(b.cu_query_lens[i] + ra, p.cu_query_lens[sa + i]);
  for (int i = 0; i <= b.num_seqs(); ++i) EXPECT_EQ(b.kv_indptr[i] + a.kv_indptr.back(), p.kv_indptr[sa + i]);
  // Samples in plan order, A's first: the halves' logits rows are consecutive in the step's.
  std::vector<int> seqs, rows, counts;
  for (size_t j = 0; j < a.sample_seqs.size(); ++j) {
    seqs.push_back(a.sample_seqs[j]);
    rows.push_back(a.logits_rows[j]);
    counts.push_back(a.draws_of(j));
  }
  for (size_t j = 0; j < b.sample_seqs.size(); ++j) {
    seqs.push_back(b.sample_seqs[j] + sa);
    rows.push_back(b.logits_rows[j] + ra);
    counts.push_back(b.draws_of(j));
  }
  EXPECT_EQ(seqs, std::vector<int>(p.sample_seqs.begin(), p.sample_seqs.end()));
  EXPECT_EQ(rows, std::vector<int>(p.logits_rows.begin(), p.logits_rows.end()));
  EXPECT_EQ(counts, std::vector<int>(p.sample_counts.begin(), p.sample_counts.end()));
  EXPECT_EQ(s.half[0].sample_begin, 0);
  EXPECT_EQ(s.half[1].sample_begin, s.half[0].num_samples);
  EXPECT_EQ(s.half[0].num_samples + s.half[1].num_samples, p.num_sampled_tokens());
  std::vector<int> frows, fdraws;
  for (size_t k = 0; k < a.feed_rows.size(); ++k) { frows.push_back(a.feed_rows[k]); fdraws.push_back(a.feed_draws[k]); }
  for (size_t k = 0; k < b.feed_rows.size(); ++k) { frows.push_back(b.feed_rows[k] + ra); fdraws.push_back(b.feed_draws[k]); }
  EXPECT_EQ(frows, std::vector<int>(p.feed_rows.begin(), p.feed_rows.end()));
  EXPECT_EQ(fdraws, std::vector<int>(p.feed_draws.begin(), p.feed_draws.end()));
}

TEST(NanoSplit, MixedStepKeepsPrefillChunksWholeInHalfB) {
  const StepPlan p = mixed_plan(6, {9, 5});
  const int a = nano_rows_a(p.num_tokens(), p.num_decode_seqs);
  EXPECT_EQ(a, 6);  // 20 rows: half is 10, capped at the 6 decodes
  auto s = split_plan(p, a);
  ASSERT_TRUE(s.has_value());
  expect_reassembles(p, *s);
  const StepPlan& A = s->half[0].plan;
  const StepPlan& B = s->half[1].plan;
  EXPECT_EQ(A.num_seqs(), 6);
  EXPECT_EQ(A.num_decode_seqs, 6);
  EXPECT_EQ(B.num_decode_seqs, 0);
  ASSERT_EQ(B.query_lens, (std::vector<int32_t>{9, 5}));  // both chunks, whole
  EXPECT_EQ(s->half[1].num_samples, 2);                    // the n = 2 chunk
  EXPECT_EQ(s->half[0].num_samples, 6);
}

TEST(NanoSplit, DecodesSplitOnBothSidesOfTheCut) {
  const StepPlan p = mixed_plan(40, {3});
  const int a = nano_rows_a(p.num_tokens(), p.num_decode_seqs);
  EXPECT_EQ(a, 24);  // 43 rows: 21 → 24
  auto s = split_plan(p, a);
  ASSERT_TRUE(s.has_value());
  expect_reassembles(p, *s);
  EXPECT_EQ(s->half[1].plan.num_decode_seqs, 16);
  EXPECT_EQ(s->half[1].plan.query_lens.back(), 3);
  // Feed rows keep the previous step's draw and move to their half's rows.
  EXPECT_FALSE(s->half[0].plan.feed_rows.empty());
  EXPECT_FALSE(s->half[1].plan.feed_rows.empty());
}

TEST(NanoSplit, AllDecodeStepsNeverLeaveAHalfEmpty) {
  for (int rows = 2; rows <= 640; ++rows) {
    const int a = nano_rows_a(rows, rows);
    ASSERT_GE(a, 1) << rows;
    ASSERT_LT(a, rows) << rows;
    if (rows >= 32) EXPECT_EQ(a % 8, 0) << rows;
    if (rows < 32) EXPECT_EQ(a, rows / 2) << rows;
  }
  EXPECT_EQ(nano_rows_a(512, 512), 256);
  EXPECT_EQ(nano_rows_a(496, 496), 248);
  EXPECT_EQ(nano_rows_a(1, 1), 0);  // one row: nothing to split
  EXPECT_EQ(nano_rows_a(50, 0), 0);  // no decode: a prefill chunk is never cut
  const StepPlan p = mixed_plan(17, {});
  auto s = split_plan(p, nano_rows_a(p.num_tokens(), p.num_decode_seqs));
  ASSERT_TRUE(s.has_value());
  expect_reassembles(p, *s);
  EXPECT_GT(s->half[0].plan.num_seqs(), 0);
  EXPECT_GT(s->half[1].plan.num_seqs(), 0);
}

TEST(NanoSplit, RefusesCutsItCannotMake) {
  StepPlan p = mixed_plan(4, {6});
  EXPECT_FALSE(split_plan(p, 0).has_value());  // empty half A
  EXPECT_FALSE(split_plan(p, 5).has_value());  // would cut into the prefill chunk
  EXPECT_TRUE(split_plan(p, 4).has_value());
  const StepPlan d = mixed_plan(4, {});
  EXPECT_FALSE(split_plan(d, 4).has_value());  // empty half B
  StepPlan lp = p;                             // prompt_logprobs rows are scored over the whole step
  lp.prompt_logprob_seqs = {4};
  lp.prompt_logprob_positions = {0};
  lp.prompt_logprob_tokens = {7};
  lp.logits_rows.push_back(4);
  EXPECT_FALSE(split_plan(lp, 2).has_value());
  StepPlan un = p;  // samples out of sequence order: the halves' logits rows would not be consecutive
  std::swap(un.sample_seqs[0], un.sample_seqs[1]);
  std::swap(un.logits_rows[0], un.logits_rows[1]);
  EXPECT_FALSE(split_plan(un, 2).has_value());
}

/// The Qwen3-8B shape: 7.57e9 linear + lm_head weights, bf16; 36 layers × 8 KV heads × 128 × K,V × 2 bytes.
NanoStepCost qwen3_8b() {
  NanoStepCost c;
  c.flops_per_row = 2 * 7.57e9;
  c.weight_bytes = 2 * 7.57e9;
  c.kv_bytes_per_token = 36.0 * 8 * 128 * 2 * 2;
  return c;
}

TEST(NanoSplit, CostModelSplitsLargeShortContextBatchesOnly) {
  const NanoStepCost c = qwen3_8b();
  NanoSplitOptions o;
  o.nano_batches = 2;
  // Batch 512 at context ~192 (2048 × (128, 128)): GEMMs ~9.5 ms, attention ~3.5 ms: overlap pays.
  const NanoPrediction p = predict_nano(c, o, 512, 512 * 192);
  EXPECT_NEAR(p.serial * 1e3, 13.0, 0.2);
  EXPECT_NEAR(p.split * 1e3, 10.65, 0.2);
  EXPECT_TRUE(nano_worth_splitting(c, o, 512, 512, 512 * 192));
  // Batch 256 at context ~640 (256 × (512, 256)): both halves would be bandwidth-bound, and the
  // weights would be read twice.
  EXPECT_FALSE(nano_worth_splitting(c, o, 256, 256, 256 * 640));
  EXPECT_FALSE(nano_worth_splitting(c, o, 64, 64, 64 * 200));
  EXPECT_FALSE(nano_worth_splitting(c, o, 1, 1, 100));
  // Long contexts at batch 512: attention dominates, splitting only adds weight reads.
  EXPECT_FALSE(nano_worth_splitting(c, o, 512, 512, 512 * 4000));
  // Off unless asked for; min_rows forces it (tests, A/B runs).
  o.nano_batches = 1;
  EXPECT_FALSE(nano_worth_splitting(c, o, 512, 512, 512 * 192));
  o.nano_batches = 2;
  o.min_rows = 8;
  EXPECT_TRUE(nano_worth_splitting(c, o, 16, 16, 16 * 4000));
  EXPECT_FALSE(nano_worth_splitting(c, o, 7, 7, 7 * 10));
}

}  // namespace
}  // namespace pie::engine
