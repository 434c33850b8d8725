// The decode graphs' context classes (engine/decode_context_classes.hpp): the ladder the decode
// cost model picks at the Qwen3-8B shape, the class a step replays (contexts at and just past a
// bound), max_model_len not a power of two, tiny max_model_len, and the switch's parsing.
#include "pie/engine/decode_context_classes.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/ops/cuda/attention_decode_plan.hpp"

namespace pie::engine {
namespace {

using ops::cuda::DecodePlan;

constexpr int kSms = 132;  // H100 SXM / H200

/// The runner's plan of a bucket at the Qwen3-8B attention shape (32 query heads, 8 KV heads, head dim 128).
DecodePlan qwen3_8b_plan(int batch, int bound) {
  ops::cuda::DecodePlanOptions o;
  o.counter_batch = 256;
  return ops::cuda::plan_decode_split(batch, 32, 8, 128, bound, kSms, o);
}
double cost(const DecodePlan& p, int ctx) { return ops::cuda::decode_plan_cost_us(p, ctx, kSms); }
std::vector<int> ladder(int batch, int max_model_len) {
  return decode_context_ladder(max_model_len, [&](int bound) { return qwen3_8b_plan(batch, bound); }, cost);
}

TEST(DecodeContextClasses, LadderEndsAtMaxModelLenAndKeepsOnlyClassesWorthAGraph) {
  for (int batch : {1, 2, 8, 24, 48, 64, 72, 256}) {
    const std::vector<int> v = ladder(batch, 40960);
    ASSERT_FALSE(v.empty());
    EXPECT_EQ(v.back(), 40960);
    for (size_t i = 0; i + 1 < v.size(); ++i) {
      EXPECT_LT(v[i], v[i + 1]);
      // A candidate: 512·4^k.
      int c = kMinDecodeContextClass;
      while (c < v[i]) c *= kDecodeContextClassStep;
      EXPECT_EQ(c, v[i]) << "batch " << batch;
      // Kept because the next class's plan is that much slower at this bound.
      EXPECT_GT(cost(qwen3_8b_plan(batch, v[i + 1]), v[i]), kDecodeClassGain * cost(qwen3_8b_plan(batch, v[i]), v[i]))
          << "batch " << batch << " bound " << v[i];
    }
  }
  // Batch 1 at max_model_len 40,960: 64 splits of 640 tokens, a few hundred tokens all in the first
  // CTA of each KV head; a 2048 class (32 splits of 64) is modelled over twice as fast.
  const std::vector<int> b1 = ladder(1, 40960);
  EXPECT_GE(b1.size(), 3u);
  EXPECT_EQ(b1.front(), 2048);
  EXPECT_GT(cost(qwen3_8b_plan(1, 40960), 300), 2 * cost(qwen3_8b_plan(1, 2048), 300));
  // Batch 64: one split per (sequence, KV head) at every bound — the same launch, one graph.
  EXPECT_EQ(qwen3_8b_plan(64, 40960).num_splits, 1);
  EXPECT_EQ(ladder(64, 40960), std::vector<int>{40960});
}

TEST(DecodeContextClasses, MaxModelLenNotAPowerOfTwoAndTiny) {
  // 3000: candidates 512 and 2048 below it, then 3000 itself.
  for (int batch : {1, 8, 32}) {
    const std::vector<int> v = ladder(batch, 3000);
    EXPECT_EQ(v.back(), 3000);
    for (int x : v) EXPECT_TRUE(x == 512 || x == 2048 || x == 3000) << x;
  }
  // At most one class when no candidate lies below max_model_len.
  for (int mml : {1, 16, 100, 511, 512}) {
    EXPECT_EQ(ladder(1, mml), std::vector<int>{mml});
    EXPECT_EQ(ladder(64, mml), std::vector<int>{mml});
  }
  // 513: the 512 candidate is below it (kept or not, 513 ends the ladder).
  EXPECT_EQ(ladder(1, 513).back(), 513);
  EXPECT_THROW(ladder(1, 0), Error);
  // The largest max_model_len: the candidates 512·4^0 … 512·4^10 stop below it (no overflow);
  // with a cost that grows with the plan's bound every one of them is kept.
  const std::vector<int> huge = decode_context_ladder(
      std::numeric_limits<int>::max(), [](int bound) { return bound; },
      [](int plan_bound, int ctx) { return double(plan_bound) / ctx; });
  ASSERT_EQ(huge.size(), 12u);
  EXPECT_EQ(huge.front(), 512);
  EXPECT_EQ(huge[10], 512 << 20);
  EXPECT_EQ(huge.back(), std::numeric_limits<int>::max());
}

TEST(DecodeContextClasses, StepReplaysTheSmallestBoundAtOrAboveItsLongestContext) {
  const std::vector<int> buckets{1, 2, 4, 8, 16, 24, 32, 64};
  DecodeContextClasses cl(buckets, 40960, qwen3_8b_plan, cost);
  ASSERT_FALSE(cl.empty());
  const std::vector<int> b1 = cl.bounds(1);
  ASSERT_GE(b1.size(), 2u);
  for (size_t i = 0; i < b1.size(); ++i) {
    const int lo = i == 0 ? 1 : b1[i - 1] + 1;
    EXPECT_EQ(cl.bound_for(1, lo), b1[i]);       // just past the bound below
    EXPECT_EQ(cl.bound_for(1, b1[i]), b1[i]);    // exactly at the bound
    if (i + 1 < b1.size()) EXPECT_EQ(cl.bound_for(1, b1[i] + 1), b1[i + 1]);
  }
  EXPECT_EQ(cl.bound_for(1, 40960), 40960);
  EXPECT_EQ(cl.bound_for(64, 1), 40960);  // one class
  EXPECT_THROW(cl.bound_for(1, 40961), Error);
  // A bucket without classes replays max_model_len's graph.
  EXPECT_EQ(cl.bound_for(3, 100), 40960);
  EXPECT_EQ(cl.bounds(3), std::vector<int>{40960});
  size_t n = 0;
  for (int b : buckets) n += cl.bounds(b).size();
  EXPECT_EQ(cl.graphs(), n);
  EXPECT_GT(cl.graphs(), buckets.size());
  const std::vector<int> lower = cl.lower_bounds();
  ASSERT_FALSE(lower.empty());
  EXPECT_TRUE(std::is_sorted(lower.begin(), lower.end()));
  EXPECT_LT(lower.back(), 40960);
  // Off: no classes, every step replays max_model_len's graph.
  DecodeContextClasses off;
  EXPECT_TRUE(off.empty());
  EXPECT_EQ(off.graphs(), 0u);
}

TEST(DecodeContextClasses, PlansThatLaunchTheSameWorkShareOneGraph) {
  // A plan whose cost does not depend on its bound (e.g. one split at every bound): one class.
  auto flat = [](int b, int) { return qwen3_8b_plan(b, 512); };
  DecodeContextClasses cl(std::vector<int>{1, 8, 64}, 8192, flat, [](const DecodePlan&, int) { return 1.0; });
  EXPECT_EQ(cl.graphs(), 3u);
  EXPECT_TRUE(cl.lower_bounds().empty());
}

TEST(DecodeContextClasses, CostOfAPlanAtAShorterContext) {
  for (int batch : {1, 8, 64, 200})
    for (int bound : {512, 4096, 40960}) {
      const DecodePlan p = qwen3_8b_plan(batch, bound);
      // Never more at a shorter context; at its own bound never more than any other split the
      // choice searches (plan_decode_split: splits ≥ min_split tokens, ≤ 4 waves' worth of CTAs).
      for (int ctx = 1; ctx < bound; ctx = ctx * 2 + 1) EXPECT_LE(cost(p, ctx), cost(p, bound) + 1e-9);
      const int ctas = batch * 8, slots = kSms * p.ctas_per_sm, min_split = ctas < kSms ? 64 : 256;
      const int max_splits = std::min(std::max(1, bound / min_split), 4 * slots / ctas + 1);
      for (int tps = 64; tps <= bound; tps *= 2) {
        DecodePlan q = p;
        ops::cuda::set_decode_split(q, tps, bound, 256);
        if (q.num_splits > max_splits) continue;
        EXPECT_LE(cost(p, bound), cost(q, bound) + 1e-9) << "batch " << batch << " bound " << bound << " tps " << tps;
      }
    }
}

// The runner's ladder when the classes are off (--batch-invariant, PIE_DECODE_GRAPH_CONTEXTS=0):
// default-constructed, no bounds for any bucket, so no class graph is captured (it once had
// {0}: a bound-0 graph per bucket, captured and never replayed).
TEST(DecodeContextClasses, OffLadderHasNoBounds) {
  const DecodeContextClasses off;
  EXPECT_TRUE(off.empty());
  EXPECT_TRUE(off.bounds(1).empty());
  EXPECT_TRUE(off.bounds(64).empty());
  EXPECT_TRUE(off.lower_bounds().empty());
}

TEST(DecodeContextClasses, SwitchParsing) {
  EXPECT_TRUE(decode_graph_contexts_from_env(nullptr));  // on by default
  EXPECT_TRUE(decode_graph_contexts_from_env(""));
  EXPECT_FALSE(decode_graph_contexts_from_env("0"));
  EXPECT_TRUE(decode_graph_contexts_from_env("1"));
  EXPECT_THROW(decode_graph_contexts_from_env("2"), Error);
  EXPECT_THROW(decode_graph_contexts_from_env("yes"), Error);
}

}  // namespace
}  // namespace pie::engine
