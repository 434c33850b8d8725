// The host-checkable arithmetic of the CUTLASS MoE path (ops/cuda/moe_group_plan.hpp), which
// the device kernel that fills CUTLASS's per-group arrays calls as is: each expert's groups of
// both products cover exactly its grouped rows, stay inside their buffers and weights, and get
// M = 0 when empty; the argument arrays are 16-byte aligned and disjoint; the run-time switch
// rejects unknown values. And the fused decode block's host choices (moe_decode_plan.hpp): its
// switch, the gate_up GEMV's unroll by wave count, the fused down kernel's work split.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/ops/cuda/moe_decode_plan.hpp"
#include "pie/ops/cuda/moe_group_plan.hpp"

namespace {
using namespace pie::ops::cuda::moe_group;

std::vector<int32_t> offsets_of(const std::vector<int>& counts) {
  std::vector<int32_t> off(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), off.begin() + 1);
  return off;
}

/// Every group of product p: rows [r0, r0 + m) of A and D in order, disjoint, covering
/// [0, rows); A, B and D ranges inside their buffers; n and k the product's.
void check_groups(Product p, const std::vector<int>& counts, int H, int I) {
  const int E = static_cast<int>(counts.size());
  const auto off = offsets_of(counts);
  const int64_t rows = off[E];
  const Leading ld = leading(p, H, I);
  const int64_t n = p == Product::kGateUp ? 2 * I : H, k = p == Product::kGateUp ? H : I;
  int64_t next_row = 0;
  for (int e = 0; e < E; ++e) {
    SCOPED_TRACE("expert " + std::to_string(e));
    const Group g = group(p, e, off.data(), H, I);
    ASSERT_EQ(g.m, counts[e]);
    ASSERT_EQ(g.n, n);
    ASSERT_EQ(g.k, k);
    // A: rows [next_row, next_row + m) of [rows, k] with leading dimension ld.a = k.
    ASSERT_EQ(ld.a, k);
    ASSERT_EQ(g.a, next_row * ld.a);
    ASSERT_LE(g.a + int64_t(g.m) * ld.a, rows * k);
    // D: the same rows of [rows, n].
    ASSERT_EQ(ld.d, n);
    ASSERT_EQ(g.d, next_row * ld.d);
    ASSERT_LE(g.d + int64_t(g.m) * ld.d, rows * n);
    // B: expert e's [n, k] weight, K-major (ld.b = k), inside [E, n, k].
    ASSERT_EQ(ld.b, k);
    ASSERT_EQ(g.b, int64_t(e) * n * k);
    ASSERT_LE(g.b + n * k, int64_t(E) * n * k);
    // 16-byte alignment of every group's A and D start for bf16 (TMA): offsets multiple of 8.
    ASSERT_EQ(g.a % 8, 0);
    ASSERT_EQ(g.d % 8, 0);
    next_row += g.m;
  }
  ASSERT_EQ(next_row, rows);
}

TEST(MoeGroupPlan, GroupsCoverTheGroupedRows) {
  const int H = 2048, I = 768;  // Qwen3-30B-A3B
  std::mt19937 rng(5);
  std::vector<std::vector<int>> cases;
  cases.push_back(std::vector<int>(128, 64));  // batch 1024, top-8, even
  {
    std::vector<int> c(128, 0);  // every token on one expert (one group of all rows)
    c[77] = 8192;
    cases.push_back(c);
  }
  {
    std::vector<int> c(128, 0);  // ragged, empty experts in between
    std::poisson_distribution<int> d(64);
    for (int e = 0; e < 128; ++e) c[e] = (e % 3 == 1) ? 0 : d(rng);
    cases.push_back(c);
  }
  cases.push_back(std::vector<int>(128, 0));  // no rows at all
  {
    std::vector<int> c(8, 0);  // the tiny fixtures: 8 experts
    c[0] = 1;
    c[7] = 3;
    cases.push_back(c);
  }
  for (const auto& c : cases) {
    check_groups(Product::kGateUp, c, H, I);
    check_groups(Product::kDown, c, H, I);
    check_groups(Product::kGateUp, c, 72, 40);  // widths that are not tile multiples
    check_groups(Product::kDown, c, 72, 40);
  }
}

TEST(MoeGroupPlan, ArgsLayoutIsAlignedAndDisjoint) {
  for (int E : {1, 6, 8, 128, 256}) {
    SCOPED_TRACE("E " + std::to_string(E));
    const ArgsLayout l = args_layout(E, 8);
    struct Range {
      size_t at, bytes;
    };
    std::vector<Range> r;
    for (int p = 0; p < 2; ++p) {
      r.push_back({l.shapes[p], size_t(E) * 12});
      for (size_t at : {l.ptr_a[p], l.ptr_b[p], l.ptr_d[p], l.stride_a[p], l.stride_b[p], l.stride_d[p]})
        r.push_back({at, size_t(E) * 8});
    }
    std::sort(r.begin(), r.end(), [](const Range& a, const Range& b) { return a.at < b.at; });
    for (size_t i = 0; i < r.size(); ++i) {
      EXPECT_EQ(r[i].at % 16, 0u) << "array " << i;
      const size_t end = r[i].at + r[i].bytes;
      EXPECT_LE(end, i + 1 < r.size() ? r[i + 1].at : l.bytes) << "array " << i << " overlaps the next";
    }
    EXPECT_EQ(l.bytes % 16, 0u);
  }
  // The scratch the path allocates: h [rows, 2I].
  EXPECT_EQ(h_elems(8192, 768), size_t(8192) * 1536);
}

TEST(MoeGroupPlan, SwitchValues) {
  EXPECT_EQ(parse_gemm_choice(nullptr), GemmChoice::kMma);
  EXPECT_EQ(parse_gemm_choice(""), GemmChoice::kMma);
  EXPECT_EQ(parse_gemm_choice("mma"), GemmChoice::kMma);
  EXPECT_EQ(parse_gemm_choice("cutlass"), GemmChoice::kCutlass);
  // Unset or empty: the build's default (CUTLASS when compiled in); a value overrides it.
  EXPECT_EQ(parse_gemm_choice(nullptr, GemmChoice::kCutlass), GemmChoice::kCutlass);
  EXPECT_EQ(parse_gemm_choice("", GemmChoice::kCutlass), GemmChoice::kCutlass);
  EXPECT_EQ(parse_gemm_choice("mma", GemmChoice::kCutlass), GemmChoice::kMma);
  EXPECT_EQ(parse_gemm_choice("cutlass", GemmChoice::kMma), GemmChoice::kCutlass);
  try {
    parse_gemm_choice("cublas");
    FAIL() << "an unknown value was accepted";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("PIE_MOE_GEMM=cublas"), std::string::npos) << e.what();
  }
}

TEST(MoeDecodePlan, SwitchValues) {
  using pie::ops::cuda::moe_decode::Choice;
  using pie::ops::cuda::moe_decode::parse_choice;
  EXPECT_EQ(parse_choice(nullptr), Choice::kUnfused);
  EXPECT_EQ(parse_choice(""), Choice::kUnfused);
  EXPECT_EQ(parse_choice("unfused"), Choice::kUnfused);
  EXPECT_EQ(parse_choice("fused"), Choice::kFused);
  EXPECT_EQ(parse_choice("waves"), Choice::kWaves);
  for (const char* bad : {"Fused", "wave", "waves "}) {
    try {
      parse_choice(bad);
      FAIL() << "an unknown value was accepted: " << bad;
    } catch (const pie::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("PIE_MOE_DECODE=") + bad), std::string::npos) << e.what();
    }
  }
}

TEST(MoeDecodePlan, DownSwitchValues) {
  using pie::ops::cuda::moe_decode::parse_down_by_waves;
  EXPECT_FALSE(parse_down_by_waves(nullptr));
  EXPECT_FALSE(parse_down_by_waves(""));
  EXPECT_FALSE(parse_down_by_waves("default"));
  EXPECT_FALSE(parse_down_by_waves("base"));
  EXPECT_TRUE(parse_down_by_waves("waves"));
  try {
    parse_down_by_waves("c4");
    FAIL() << "an unknown value was accepted";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("PIE_MOE_DOWN=c4"), std::string::npos) << e.what();
  }
}

TEST(MoeDecodePlan, GemvSwitchValues) {
  using pie::ops::cuda::moe_decode::parse_gemv_ahead;
  EXPECT_FALSE(parse_gemv_ahead(nullptr));
  EXPECT_FALSE(parse_gemv_ahead(""));
  EXPECT_FALSE(parse_gemv_ahead("default"));
  EXPECT_FALSE(parse_gemv_ahead("base"));
  EXPECT_TRUE(parse_gemv_ahead("ahead"));
  try {
    parse_gemv_ahead("1");
    FAIL() << "an unknown value was accepted";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("PIE_MOE_GEMV=1"), std::string::npos) << e.what();
  }
}

TEST(MoeDecodePlan, DownColumnsByWaves) {
  namespace md = pie::ops::cuda::moe_decode;
  // Qwen3-30B-A3B batch 1 on 132 SMs: 2048 CTAs at 9 per SM (2 waves) vs 1024 at 9 (1): 4 columns.
  EXPECT_EQ(md::down_columns(256 * 8, 9, 128 * 8, 9, 132), 4);
  // Batch 2 (~15 experts): 3840 CTAs at 8 per SM (4 waves) vs 1920 at 7 (3): 4.
  EXPECT_EQ(md::down_columns(256 * 15, 8, 128 * 15, 7, 132), 4);
  // As many waves either way: keep 2 (the default's grid).
  EXPECT_EQ(md::down_columns(1000, 9, 500, 4, 132), 2);
  EXPECT_EQ(md::down_columns(100, 9, 50, 9, 132), 2);
  // Fewer CTAs but fewer per SM too, so more waves: 2.
  EXPECT_EQ(md::down_columns(2000, 16, 1000, 4, 132), 2);
}

TEST(MoeDecodePlan, RouteSwitchValues) {
  using pie::ops::cuda::moe_decode::parse_route_one_cta;
  EXPECT_FALSE(parse_route_one_cta(nullptr));
  EXPECT_FALSE(parse_route_one_cta(""));
  EXPECT_FALSE(parse_route_one_cta("atomic"));
  EXPECT_TRUE(parse_route_one_cta("cta"));
  // gate_up: a one-token call routes inside the gate_up GEMV, larger decode calls in one CTA.
  using pie::ops::cuda::moe_decode::parse_route;
  EXPECT_TRUE(parse_route("gate_up").one_cta && parse_route("gate_up").in_gate_up);
  EXPECT_TRUE(parse_route("cta").one_cta && !parse_route("cta").in_gate_up);
  EXPECT_FALSE(parse_route("atomic").one_cta || parse_route("atomic").in_gate_up);
  EXPECT_FALSE(parse_route(nullptr).in_gate_up);
  for (const char* bad : {"CTA", "gateup"}) {
    try {
      parse_route_one_cta(bad);
      FAIL() << "an unknown value was accepted: " << bad;
    } catch (const pie::Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(std::string("PIE_MOE_ROUTE=") + bad), std::string::npos) << m;
      EXPECT_NE(m.find("cta, gate_up or atomic"), std::string::npos) << m;
    }
  }
}

TEST(MoeDecodePlan, UnpermuteSwitchValues) {
  namespace md = pie::ops::cuda::moe_decode;
  EXPECT_FALSE(md::parse_unpermute_in_down(nullptr));
  EXPECT_FALSE(md::parse_unpermute_in_down(""));
  EXPECT_FALSE(md::parse_unpermute_in_down("kernel"));
  EXPECT_TRUE(md::parse_unpermute_in_down("down"));
  try {
    md::parse_unpermute_in_down("Down");
    FAIL() << "an unknown value was accepted";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("PIE_MOE_UNPERMUTE=Down"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(md::parse_switches(nullptr, nullptr, nullptr, nullptr, true, "down").unpermute_in_down);
  // The fifteenth session's three switches are opt-in (measured: no robust gain).
  const auto unset = md::parse_switches(nullptr, nullptr, nullptr, nullptr, true);
  EXPECT_FALSE(unset.unpermute_in_down || unset.route_in_gate_up || unset.down_early);
  EXPECT_TRUE(md::parse_switches(nullptr, nullptr, nullptr, nullptr, true, nullptr, "1").down_early);
  EXPECT_THROW(md::parse_down_early("yes"), pie::Error);
  EXPECT_TRUE(md::parse_switches(nullptr, nullptr, nullptr, nullptr, true, nullptr, nullptr, "start")
                  .down_dependents_at_start);
  EXPECT_FALSE(unset.down_dependents_at_start) << "opt-in";
  EXPECT_THROW(md::parse_down_dependents_at_start("begin"), pie::Error);
  EXPECT_THROW(md::parse_switches(nullptr, nullptr, nullptr, nullptr, false, nullptr, nullptr, "start"), pie::Error)
      << "refused without the variants";
  EXPECT_THROW(md::parse_switches(nullptr, nullptr, nullptr, nullptr, false, nullptr, "1"), pie::Error);
  EXPECT_FALSE(md::parse_switches(nullptr, nullptr, nullptr, nullptr, true, "kernel").unpermute_in_down);
  EXPECT_FALSE(md::parse_switches(nullptr, nullptr, nullptr, nullptr, false, "kernel").unpermute_in_down);
  try {
    md::parse_switches(nullptr, nullptr, nullptr, nullptr, false, "down");
    ADD_FAILURE() << "PIE_MOE_UNPERMUTE=down was accepted by a build without the variants";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("-DPIE_MOE_DECODE_VARIANTS=ON"), std::string::npos) << e.what();
  }
}

// A build without -DPIE_MOE_DECODE_VARIANTS=ON (CI's; ON is the default) refuses each switch that asks
// for a variant, naming the variable and the CMake option; the defaults pass; a build with them
// takes every value. The CUDA runner reads them this way when it is built (engine start).
TEST(MoeDecodePlan, VariantSwitchesNeedTheCMakeOption) {
  namespace md = pie::ops::cuda::moe_decode;
  const auto d = md::parse_switches(nullptr, "atomic", "default", "", false);
  EXPECT_EQ(d.decode, md::Choice::kUnfused);
  EXPECT_FALSE(d.route_one_cta || d.down_by_waves || d.gemv_ahead);
  EXPECT_EQ(md::parse_switches("unfused", nullptr, nullptr, "default", false).decode, md::Choice::kUnfused);
  struct Case {
    const char *decode, *route, *down, *gemv, *named;
  };
  for (const Case c : {Case{"fused", nullptr, nullptr, nullptr, "PIE_MOE_DECODE=fused"},
                       Case{"waves", nullptr, nullptr, nullptr, "PIE_MOE_DECODE=waves"},
                       Case{nullptr, "cta", nullptr, nullptr, "PIE_MOE_ROUTE=cta"},
                       Case{nullptr, "gate_up", nullptr, nullptr, "PIE_MOE_ROUTE=gate_up"},
                       Case{nullptr, nullptr, "waves", nullptr, "PIE_MOE_DOWN=waves"},
                       Case{nullptr, nullptr, nullptr, "ahead", "PIE_MOE_GEMV=ahead"}}) {
    try {
      md::parse_switches(c.decode, c.route, c.down, c.gemv, false);
      ADD_FAILURE() << c.named << " was accepted by a build without the variants";
    } catch (const pie::Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(c.named), std::string::npos) << m;
      EXPECT_NE(m.find("-DPIE_MOE_DECODE_VARIANTS=ON"), std::string::npos) << m;
    }
  }
  const auto all = md::parse_switches("waves", "cta", "waves", "ahead", true);
  EXPECT_EQ(all.decode, md::Choice::kWaves);
  EXPECT_TRUE(all.route_one_cta && all.down_by_waves && all.gemv_ahead);
  EXPECT_FALSE(all.route_in_gate_up);
  EXPECT_TRUE(md::parse_switches(nullptr, "gate_up", nullptr, nullptr, true).route_in_gate_up);
  EXPECT_EQ(md::parse_switches("fused", nullptr, nullptr, nullptr, true).decode, md::Choice::kFused);
  // A build with the variants: an unset (or empty) switch takes the measured best, and each base
  // value still chooses the base kernel of its step.
  for (const char* unset : {static_cast<const char*>(nullptr), ""}) {
    const auto d = md::parse_switches(unset, unset, unset, unset, true);
    EXPECT_EQ(d.decode, md::Choice::kWaves);
    EXPECT_TRUE(d.route_one_cta && d.down_by_waves && d.gemv_ahead);
  }
  const auto base = md::parse_switches("unfused", "atomic", "base", "base", true);
  EXPECT_EQ(base.decode, md::Choice::kUnfused);
  EXPECT_FALSE(base.route_one_cta || base.down_by_waves || base.gemv_ahead);
  const auto old_names = md::parse_switches(nullptr, "atomic", "default", "default", true);
  EXPECT_EQ(old_names.decode, md::Choice::kWaves);
  EXPECT_FALSE(old_names.route_one_cta || old_names.down_by_waves || old_names.gemv_ahead);
  // Without the variants the base names pass too.
  EXPECT_FALSE(md::parse_switches(nullptr, nullptr, "base", "base", false).gemv_ahead);
  // An unknown value is the parser's error in either build.
  EXPECT_THROW(md::parse_switches("Fused", nullptr, nullptr, nullptr, false), pie::Error);
  // This CPU test is built without the CMake option's definition.
  EXPECT_FALSE(md::kVariantsCompiled);
}

TEST(MoeDecodePlan, GateUpUnrollByWaves) {
  namespace md = pie::ops::cuda::moe_decode;
  EXPECT_EQ(md::waves(660, 5, 132), 1);
  EXPECT_EQ(md::waves(661, 5, 132), 2);
  EXPECT_EQ(md::waves(10, 0, 0), 10);  // degenerate occupancy counts as one slot, never a division by 0
  // Qwen3-30B-A3B, 132 SMs. Batch 1: 96 × 8 CTAs, 5 per SM with 4 chunks (2 waves), 9 with 2 (1).
  EXPECT_EQ(md::gate_up_unroll(96 * 8, 5, 9, 132), 2);
  // Batch 2: 96 × 16 CTAs, 4 per SM with 4 chunks (3 waves), 6 with 2 (2).
  EXPECT_EQ(md::gate_up_unroll(96 * 16, 4, 6, 132), 2);
  // A grid that fits one wave either way keeps 4 chunks in flight; so does a tie in waves.
  EXPECT_EQ(md::gate_up_unroll(200, 5, 9, 132), 4);
  EXPECT_EQ(md::gate_up_unroll(1300, 5, 9, 132), 4);
}

TEST(MoeDecodePlan, DownSplitCoversColumnsAndChunks) {
  namespace md = pie::ops::cuda::moe_decode;
  for (int H : {64, 72, 520, 2048})
    for (int I : {32, 40, 264, 768})
      for (int k : {1, 2, 8, 32})
        for (int C : {1, 2}) {
          const auto d = md::down_split(H, I, k, C);
          EXPECT_GE(d.ctas_x * 4 * C, H);
          EXPECT_LT((d.ctas_x - 1) * 4 * C, H);  // no CTA without a column
          EXPECT_GE(d.chunks * 256, I);
          EXPECT_LT((d.chunks - 1) * 256, I);
          EXPECT_EQ(d.items, k * d.chunks);
        }
  const auto q = md::down_split(2048, 768, 8, 1);  // Qwen3-30B-A3B: 512 CTAs a token, 24 items a warp
  EXPECT_EQ(q.ctas_x, 512);
  EXPECT_EQ(q.items, 24);
}

}  // namespace
