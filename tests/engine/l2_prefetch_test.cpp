// The GPU forward's L2 prefetch (PIE_L2_PREFETCH, engine/l2_prefetch.hpp): its environment
// switches, the byte ranges one prefetch call moves, and where the Qwen3 forward places the hint
// (after the qkv projection, naming o_proj then gate_up_proj, before RoPE and attention). The
// kernel itself, and logits bit-identical with it on and off: tests/gpu/test_fused_ops.cu.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "pie/engine/cpu/cpu_forward.hpp"
#include "pie/engine/l2_prefetch.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/qwen3.hpp"
#include "plan_builder.hpp"

namespace {
using pie::engine::L2Prefetch;
using pie::engine::PrefetchRange;

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kL2 = 60 * kMiB;  // an H200's L2

TEST(L2PrefetchSwitch, UnsetEmptyOrZeroNeverPrefetches) {
  for (const char* v : {static_cast<const char*>(nullptr), "", "0"}) {
    const L2Prefetch p = L2Prefetch::parse(v, nullptr, kL2);
    EXPECT_EQ(p.max_rows, 0);
    for (int rows : {0, 1, 8}) EXPECT_FALSE(p.wants(rows)) << (v ? v : "unset") << ", " << rows << " rows";
  }
}

TEST(L2PrefetchSwitch, RowsBoundTheStepsThatPrefetch) {
  const L2Prefetch p = L2Prefetch::parse("2", nullptr, kL2);
  EXPECT_FALSE(p.wants(0));
  EXPECT_TRUE(p.wants(1));
  EXPECT_TRUE(p.wants(2));
  EXPECT_FALSE(p.wants(3));
}

TEST(L2PrefetchSwitch, BudgetIsHalfTheL2UnlessMiBSayOtherwiseAtMostThreeQuarters) {
  EXPECT_EQ(L2Prefetch::parse("1", nullptr, kL2).budget, 30 * kMiB);
  EXPECT_EQ(L2Prefetch::parse("1", "16", kL2).budget, 16 * kMiB);
  EXPECT_EQ(L2Prefetch::parse("1", "500", kL2).budget, 45 * kMiB) << "capped at 3/4 of L2";
  const L2Prefetch none = L2Prefetch::parse("1", nullptr, 0);
  EXPECT_FALSE(none.wants(1)) << "a device without L2 never prefetches";
}

TEST(L2PrefetchSwitch, MalformedValuesAreRefusedNamingTheVariable) {
  for (const char* v : {"abc", "-1", "1x", " 1"}) {
    try {
      L2Prefetch::parse(v, nullptr, kL2);
      ADD_FAILURE() << "PIE_L2_PREFETCH=" << v << " accepted";
    } catch (const pie::Error& e) {
      EXPECT_NE(std::string(e.what()).find("PIE_L2_PREFETCH"), std::string::npos) << e.what();
    }
  }
  for (const char* v : {"0", "x", "-4"}) {
    try {
      L2Prefetch::parse("1", v, kL2);
      ADD_FAILURE() << "PIE_L2_PREFETCH_MB=" << v << " accepted";
    } catch (const pie::Error& e) {
      EXPECT_NE(std::string(e.what()).find("PIE_L2_PREFETCH_MB"), std::string::npos) << e.what();
    }
  }
}

alignas(256) char arena[1 << 16];

TEST(L2PrefetchPlan, RangesInOrderUntilTheBudgetTheLastOneCut) {
  L2Prefetch p;
  p.max_rows = 1;
  p.budget = 3000;
  const auto out = p.plan({{arena, 2048}, {arena + 4096, 4096}, {arena + 16384, 512}});
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].data, arena);
  EXPECT_EQ(out[0].bytes, 2048u);
  EXPECT_EQ(out[1].data, arena + 4096);
  EXPECT_EQ(out[1].bytes, 944u) << "the rest of the budget, a multiple of 16";
}

TEST(L2PrefetchPlan, StartsRoundUpAndLengthsDownTo16Bytes) {
  L2Prefetch p;
  p.max_rows = 1;
  p.budget = 1 << 20;
  const auto out = p.plan({{arena + 8, 100}, {arena + 1024, 8}, {arena + 2048 + 1, 15}});
  ASSERT_EQ(out.size(), 1u) << "ranges with no whole aligned 16 bytes are dropped";
  EXPECT_EQ(out[0].data, arena + 16);
  EXPECT_EQ(out[0].bytes, 80u);  // (100 - 8) rounded down
}

TEST(L2PrefetchPlan, EmptyAndNullRangesAreSkippedAndATinyBudgetMovesNothing) {
  L2Prefetch p;
  p.max_rows = 1;
  p.budget = 1 << 20;
  const auto out = p.plan({{nullptr, 4096}, {arena, 0}, {arena + 256, 64}});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].data, arena + 256);
  p.budget = 15;
  EXPECT_TRUE(p.plan({{arena, 4096}}).empty());
}

/// A CPU forward context that records, in order, the prefetch hints, the RoPE ops and the
/// projections the model calls directly (the GPU context acts on the same calls).
struct RecordingForward : pie::engine::cpu::CpuForward<float, float> {
  using Base = pie::engine::cpu::CpuForward<float, float>;
  using Base::Base;
  struct Event {
    std::string what;
    std::vector<const void*> weights;
  };
  std::vector<Event> events;

  template <class... Ws>
  void prefetch(const Ws&... ws) {
    events.push_back({"prefetch", {static_cast<const void*>(ws.data)...}});
  }
  void qk_norm_rope(Act qkv, const Weight& q_norm, const Weight& k_norm) {
    events.push_back({"rope", {}});
    Base::qk_norm_rope(qkv, q_norm, k_norm);
  }
  void attention(int l, const Act& qkv, Act out) {
    events.push_back({"attention", {}});
    Base::attention(l, qkv, out);
  }
  template <class W>
  void linear(const Act& x, const W& w, const Weight& bias, Act out) {
    events.push_back({"linear", {w.data}});
    Base::linear(x, w, bias, out);
  }
};

TEST(L2PrefetchHint, Qwen3NamesOProjThenGateUpBeforeRopeAndAttention) {
  pie::model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  const auto w = pie::model::dummy_weights<float>(c, 7, 1);
  const int bs = 8, n = 5;
  std::vector<std::vector<float>> pools(c.num_hidden_layers, std::vector<float>(size_t(2) * 2 * c.num_key_value_heads * bs * c.head_dim));
  std::vector<float*> ptrs;
  for (auto& p : pools) ptrs.push_back(p.data());
  std::vector<int32_t> ids = {3, 9, 4, 17, 2};
  auto plan = pie::test::make_plan({pie::test::SeqWork{{1}, 0, ids}}, bs);
  std::vector<float> logits(size_t(c.vocab_size));
  RecordingForward f(c, {});
  f.begin(plan, ptrs, bs, logits.data());
  pie::Qwen3::forward(f, w);

  // Per layer: prefetch(o_proj, gate_up_proj), then rope, attention, and the o_proj linear.
  int layer = 0;
  for (size_t i = 0; i < f.events.size(); ++i) {
    if (f.events[i].what != "prefetch") continue;
    ASSERT_LT(layer, c.num_hidden_layers);
    const auto& L = w.layers[layer];
    ASSERT_EQ(f.events[i].weights.size(), 2u);
    EXPECT_EQ(f.events[i].weights[0], L.o_proj.data) << "layer " << layer;
    EXPECT_EQ(f.events[i].weights[1], L.gate_up_proj.data) << "layer " << layer;
    ASSERT_LT(i + 3, f.events.size());
    EXPECT_EQ(f.events[i + 1].what, "rope") << "layer " << layer;
    EXPECT_EQ(f.events[i + 2].what, "attention") << "layer " << layer;
    EXPECT_EQ(f.events[i + 3].what, "linear") << "layer " << layer;
    EXPECT_EQ(f.events[i + 3].weights.at(0), L.o_proj.data) << "layer " << layer;
    ++layer;
  }
  EXPECT_EQ(layer, c.num_hidden_layers) << "one prefetch per layer";
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
}

}  // namespace
