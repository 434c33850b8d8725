// The host side of decode attention (attention_decode_plan.hpp), on the CPU: the split choice's
// invariants for both merges, the workspace layout (the fused merge's arrival counters first, at
// a place no plan of another batch size uses for partials), forced splits, and the environment
// switch. The kernels themselves are checked on the GPU (tests/cuda/test_attention_decode.cu).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "pie/ops/cuda/attention_decode_plan.hpp"

namespace {
using namespace pie::ops::cuda;

DecodePlanOptions fused(int counter_batch = 0) {
  DecodePlanOptions o;
  o.fused_merge = true;
  o.counter_batch = counter_batch;
  return o;
}

TEST(DecodePlan, DefaultLayoutIsTheMergeKernelsOne) {
  for (int batch : {1, 3, 8, 64}) {
    for (int len : {1, 100, 1337, 8192, 32768}) {
      const auto p = plan_decode_split(batch, 32, 8, 128, len, 132);
      EXPECT_FALSE(p.fused_merge);
      EXPECT_EQ(p.counter_bytes, 0u);
      EXPECT_EQ(p.workspace_bytes, p.num_splits > 1 ? size_t(p.num_splits) * batch * 32 * 129 * sizeof(float) : 0u);
      const auto l = decode_workspace_layout(p);
      EXPECT_EQ(l.part_o, 0u);
      EXPECT_EQ(l.end, p.workspace_bytes);
    }
  }
}

TEST(DecodePlan, FusedLayoutPutsAlignedCountersFirst) {
  for (int batch : {1, 3, 8, 64}) {
    for (int len : {100, 1337, 8192, 32768}) {
      for (int nkv : {1, 4, 8}) {
        const auto p = plan_decode_split(batch, 4 * nkv, nkv, 64, len, 132, fused());
        ASSERT_TRUE(p.fused_merge);
        if (p.num_splits == 1) {
          EXPECT_EQ(p.workspace_bytes, 0u);
          continue;
        }
        const auto l = decode_workspace_layout(p);
        EXPECT_EQ(l.counters, 0u);
        EXPECT_GE(p.counter_bytes, size_t(batch) * nkv * sizeof(uint32_t));  // one per (sequence, KV head)
        EXPECT_EQ(p.counter_bytes % 256, 0u);
        EXPECT_EQ(l.part_o, p.counter_bytes);  // float4 loads of the partials need 16-byte alignment
        EXPECT_EQ(l.part_lse, l.part_o + size_t(p.num_splits) * batch * 4 * nkv * 64 * sizeof(float));
        EXPECT_EQ(l.end, l.part_lse + size_t(p.num_splits) * batch * 4 * nkv * sizeof(float));
        EXPECT_EQ(p.workspace_bytes, l.end);
      }
    }
  }
}

// The runner keeps one workspace for the plans of every batch size and context (one per step):
// every plan must find its counters in the same bytes, and no plan's partials may overlap them,
// or a later plan's counter would start on a float an earlier plan left there.
TEST(DecodePlan, CountersStayPutAcrossTheRunnersPlans) {
  const int max_seqs = 256;
  size_t counters = 0;
  for (int batch = 1; batch <= max_seqs; batch += 17) {
    for (int len : {64, 300, 4096, 40960}) {
      const auto p = plan_decode_split(batch, 32, 8, 128, len, 132, fused(max_seqs));
      if (p.num_splits == 1) continue;
      if (counters == 0) counters = p.counter_bytes;
      EXPECT_EQ(p.counter_bytes, counters) << batch << " x " << len;
      EXPECT_GE(decode_workspace_layout(p).part_o, size_t(max_seqs) * 8 * sizeof(uint32_t));
    }
  }
  EXPECT_GT(counters, 0u);
}

TEST(DecodePlan, BothMergesSplitIntoMultiplesOf64WithNoEmptySplit) {
  for (bool f : {false, true}) {
    DecodePlanOptions o;
    o.fused_merge = f;
    for (int batch : {1, 2, 8, 16, 64, 512}) {
      for (int len : {1, 192, 1000, 2048, 8192, 32768}) {
        const auto p = plan_decode_split(batch, 32, 8, 128, len, 132, o);
        EXPECT_EQ(p.tokens_per_split % 64, 0);
        EXPECT_GE(int64_t(p.num_splits) * p.tokens_per_split, len);
        EXPECT_LT(int64_t(p.num_splits - 1) * p.tokens_per_split, len);
        // Never more CTAs than four waves of 4 per SM plus the unsplit grid.
        EXPECT_LE(int64_t(p.num_splits) * batch * 8, std::max<int64_t>(batch * 8, 4 * 132 * 4 + batch * 8));
      }
    }
  }
}

// The fused merge's constants are a separate choice; on the shapes the benchmark sweeps they keep
// the default's split (one wave of 64-token or longer splits: the wave term dominates both
// merges' costs), and they never choose fewer splits than the default.
TEST(DecodePlan, FusedChoiceIsNeverCoarser) {
  for (int batch : {1, 2, 4, 8, 16}) {
    for (int len : {192, 2048, 8192, 32768}) {
      const auto a = plan_decode_split(batch, 32, 8, 128, len, 132);
      const auto b = plan_decode_split(batch, 32, 8, 128, len, 132, fused());
      EXPECT_GE(b.num_splits, a.num_splits) << batch << " x " << len;
    }
  }
  EXPECT_EQ(plan_decode_split(1, 32, 8, 128, 32768, 132, fused()).num_splits, 64);
  EXPECT_EQ(plan_decode_split(8, 32, 8, 128, 8192, 132, fused()).num_splits, 8);
}

TEST(DecodePlan, ForcedSplitRoundsTo64AndSizesTheWorkspace) {
  auto p = plan_decode_split(2, 32, 8, 128, 1000, 132, fused(16));
  set_decode_split(p, 100, 1000, 16);
  EXPECT_EQ(p.tokens_per_split, 128);
  EXPECT_EQ(p.num_splits, 8);
  EXPECT_EQ(p.counter_bytes, 512u);  // 16 sequences x 8 KV heads x 4 bytes
  EXPECT_EQ(p.workspace_bytes, 512u + 8 * 2 * 32 * 129 * sizeof(float));
  set_decode_split(p, 1000, 1000, 16);  // one split: no workspace
  EXPECT_EQ(p.num_splits, 1);
  EXPECT_EQ(p.counter_bytes, 0u);
  EXPECT_EQ(p.workspace_bytes, 0u);
}

TEST(DecodePlan, EnvironmentSwitch) {
  ::unsetenv("PIE_DECODE_FUSED_MERGE");
  EXPECT_FALSE(DecodePlanOptions::from_env().fused_merge);
  ::setenv("PIE_DECODE_FUSED_MERGE", "0", 1);
  EXPECT_FALSE(DecodePlanOptions::from_env().fused_merge);
  ::setenv("PIE_DECODE_FUSED_MERGE", "1", 1);
  EXPECT_TRUE(DecodePlanOptions::from_env().fused_merge);
  ::unsetenv("PIE_DECODE_FUSED_MERGE");
}

TEST(DecodePlan, EnvironmentSwitchesOfTheClusterMergeAndTheEarlyPages) {
  for (const char* name : {"PIE_DECODE_CLUSTER_MERGE", "PIE_DECODE_EARLY_PAGES"}) {
    const bool cluster = name[11] == 'C';
    auto get = [&] {
      const auto o = DecodePlanOptions::from_env();
      return cluster ? o.cluster_merge : o.early_pages;
    };
    ::unsetenv(name);
    EXPECT_FALSE(get()) << name;
    ::setenv(name, "0", 1);
    EXPECT_FALSE(get()) << name;
    ::setenv(name, "1", 1);
    EXPECT_TRUE(get()) << name;
    ::setenv(name, "yes", 1);
    EXPECT_THROW(DecodePlanOptions::from_env(), pie::Error) << name << ": only 0 or 1";
    ::unsetenv(name);
  }
}

// In a build with the latency paths, unset switches mean: on, for small grids only. A switch set
// to 1 asks for every plan; 0 turns that path off and leaves the other's default.
TEST(DecodePlan, LatencyPathsDefaultToSmallGridsInABuildWithThem) {
  ::unsetenv("PIE_DECODE_CLUSTER_MERGE");
  ::unsetenv("PIE_DECODE_EARLY_PAGES");
  auto o = DecodePlanOptions::from_env(/*latency_compiled=*/false);
  EXPECT_FALSE(o.cluster_merge || o.early_pages || o.small_grids_only) << "a build without them";
  o = DecodePlanOptions::from_env(true);
  EXPECT_TRUE(o.cluster_merge && o.early_pages && o.small_grids_only);
  ::setenv("PIE_DECODE_CLUSTER_MERGE", "0", 1);
  o = DecodePlanOptions::from_env(true);
  EXPECT_FALSE(o.cluster_merge);
  EXPECT_TRUE(o.early_pages && o.small_grids_only);
  ::setenv("PIE_DECODE_CLUSTER_MERGE", "1", 1);
  o = DecodePlanOptions::from_env(true);
  EXPECT_TRUE(o.cluster_merge && o.early_pages);
  EXPECT_FALSE(o.small_grids_only) << "asked for: every plan";
  ::unsetenv("PIE_DECODE_CLUSTER_MERGE");
  ::setenv("PIE_DECODE_EARLY_PAGES", "", 1);
  EXPECT_TRUE(DecodePlanOptions::from_env(true).small_grids_only) << "empty is unset";
  ::unsetenv("PIE_DECODE_EARLY_PAGES");
}

// small_grid: batch · KV heads · splits ≤ the SM count. With small_grids_only the cluster merge and
// the early pages stay on such plans alone; the split choice is the same either way.
TEST(DecodePlan, SmallGridsOnlyKeepsTheLatencyPathsToOneWave) {
  DecodePlanOptions all;
  all.cluster_merge = all.early_pages = true;
  DecodePlanOptions small = all;
  small.small_grids_only = true;
  struct Case { int batch, kv, len; bool small; };
  // Qwen3-8B batch 1 at 192 tokens (8 pairs x 3 splits); Qwen3-30B-A3B's 4 KV heads; batch 16 at
  // 192 (128 pairs, which the cost model splits in more than one: past one wave); batch 64 (512
  // pairs); batch 512 at 140 (the 2048 x (128, 128) step); batch 1 at 32K (64 splits).
  for (const Case c : {Case{1, 8, 192, true}, Case{1, 4, 192, true}, Case{16, 8, 192, false}, Case{64, 8, 192, false},
                       Case{512, 8, 140, false}, Case{1, 8, 32768, false}}) {
    SCOPED_TRACE(std::to_string(c.batch) + " x " + std::to_string(c.len) + ", " + std::to_string(c.kv) + " KV heads");
    const auto a = plan_decode_split(c.batch, 32, c.kv, 128, c.len, 132, all);
    const auto s = plan_decode_split(c.batch, 32, c.kv, 128, c.len, 132, small);
    EXPECT_EQ(s.small_grid, c.small);
    EXPECT_EQ(a.small_grid, c.small) << "the grid's size, whatever the options";
    EXPECT_EQ(int64_t{c.batch} * c.kv * s.num_splits <= 132, s.small_grid);
    EXPECT_EQ(s.num_splits, a.num_splits);
    EXPECT_EQ(s.tokens_per_split, a.tokens_per_split);
    EXPECT_EQ(s.early_pages, c.small);
    EXPECT_TRUE(a.early_pages);
    EXPECT_EQ(s.cluster_merge, c.small && a.cluster_merge);
  }
  // The batch-1 plans: 3 splits merged in a cluster (what lets the RoPE inside attention take them).
  const auto b1 = plan_decode_split(1, 32, 8, 128, 192, 132, small);
  EXPECT_EQ(b1.num_splits, 3);
  EXPECT_TRUE(b1.cluster_merge);
  // The batch-invariant split: its grid (grid_splits CTAs a pair) decides.
  DecodePlanOptions fx = small;
  fx.fixed_split_tokens = kDecodeFixedSplitTokens;
  EXPECT_TRUE(plan_decode_split(1, 32, 8, 128, 192, 132, fx).small_grid);
  EXPECT_FALSE(plan_decode_split(512, 32, 8, 128, 140, 132, fx).small_grid);
  EXPECT_FALSE(plan_decode_split(512, 32, 8, 128, 140, 132, fx).early_pages);
}

// The cluster merge: only plans of 2 to 8 splits (a portable cluster), never with the fused
// merge's counters or a fixed split; no workspace; the split choice is the merge kernel's.
TEST(DecodePlan, ClusterMergeOnlyForTwoToEightSplitsWithTheMergeKernelsSplit) {
  DecodePlanOptions o;
  o.cluster_merge = true;
  o.early_pages = true;
  auto p = plan_decode_split(1, 32, 8, 128, 192, 132, o);  // Qwen3-8B, batch 1, 192 tokens
  EXPECT_EQ(p.num_splits, 3);
  EXPECT_TRUE(p.cluster_merge);
  EXPECT_TRUE(p.early_pages);
  EXPECT_EQ(p.workspace_bytes, 0u);
  for (int ctx : {100, 192, 512, 2048, 32768})
    for (int batch : {1, 4, 64}) {
      const auto c = plan_decode_split(batch, 32, 8, 128, ctx, 132, o);
      const auto m = plan_decode_split(batch, 32, 8, 128, ctx, 132, {});
      EXPECT_EQ(c.num_splits, m.num_splits) << batch << " x " << ctx;
      EXPECT_EQ(c.tokens_per_split, m.tokens_per_split) << batch << " x " << ctx;
      EXPECT_EQ(c.cluster_merge, m.num_splits >= 2 && m.num_splits <= kDecodeMaxClusterSplits) << batch << " x " << ctx;
      EXPECT_EQ(c.workspace_bytes, c.cluster_merge ? 0u : m.workspace_bytes) << batch << " x " << ctx;
    }
  // A forced split keeps the cluster merge only while it has 2 to 8 splits.
  set_decode_split(p, 64, 1000);
  EXPECT_EQ(p.num_splits, 16);
  EXPECT_FALSE(p.cluster_merge);
  EXPECT_GT(p.workspace_bytes, 0u);
  set_decode_split(p, 200, 1000);
  EXPECT_FALSE(p.cluster_merge);  // not turned back on by itself
  EXPECT_TRUE(use_decode_cluster_merge(p));
  EXPECT_EQ(p.num_splits, 4);
  EXPECT_EQ(p.workspace_bytes, 0u);
  o.fused_merge = true;  // the fused merge keeps its counters: no cluster
  EXPECT_FALSE(plan_decode_split(1, 32, 8, 128, 192, 132, o).cluster_merge);
  EXPECT_FALSE(decode_rope_supported(plan_decode_split(1, 32, 8, 128, 192, 132, o), 2)) << "fused merge";
  o.fused_merge = false;
  o.fixed_split_tokens = 64;  // nor does a fixed split
  EXPECT_FALSE(plan_decode_split(1, 32, 8, 128, 192, 132, o).cluster_merge);
  EXPECT_FALSE(decode_rope_supported(plan_decode_split(1, 32, 8, 128, 192, 132, o), 2)) << "fixed split";
}

// The RoPE inside decode attention: a 16-bit cache with one split, or with a cluster merge (the
// pair's CTAs all read q raw before it is written back rotated); never the merge kernel's splits.
TEST(DecodePlan, RopeInsideAttentionOnlyForOneSplitOrAClusterMerge) {
  DecodePlanOptions c;
  c.cluster_merge = true;
  EXPECT_TRUE(decode_rope_supported(plan_decode_split(64, 32, 8, 128, 100, 132, {}), 2)) << "one split";
  EXPECT_FALSE(decode_rope_supported(plan_decode_split(64, 32, 8, 128, 100, 132, {}), 1)) << "fp8 cache";
  EXPECT_FALSE(decode_rope_supported(plan_decode_split(1, 32, 8, 128, 192, 132, {}), 2)) << "3 splits, merge kernel";
  EXPECT_TRUE(decode_rope_supported(plan_decode_split(1, 32, 8, 128, 192, 132, c), 2)) << "3 splits, cluster";
  EXPECT_FALSE(decode_rope_supported(plan_decode_split(1, 32, 8, 128, 32768, 132, c), 2)) << "64 splits";
}

// The batch-invariant split: splits of a fixed token count from position 0, whatever the batch
// and the grid, so that a sequence is cut at the same places in every launch; the plan's split
// count only covers the longest context (shorter sequences' extra splits are empty).
TEST(DecodePlan, FixedSplitCutsEverySequenceAtTheSamePlacesWhateverTheBatch) {
  for (bool fm : {false, true}) {
    DecodePlanOptions o = fm ? fused(1024) : DecodePlanOptions{};
    o.fixed_split_tokens = kDecodeFixedSplitTokens;
    for (int batch : {0, 1, 3, 17, 64, 512, 1024}) {
      for (int len : {1, 140, 511, 512, 513, 1337, 4096, 32768}) {
        for (int sms : {2, 132}) {
          const auto p = plan_decode_split(batch, 32, 4, 128, len, sms, o);
          EXPECT_TRUE(p.fixed_split);
          EXPECT_EQ(p.tokens_per_split, kDecodeFixedSplitTokens) << "batch " << batch << " len " << len;
          EXPECT_EQ(p.num_splits, (len + kDecodeFixedSplitTokens - 1) / kDecodeFixedSplitTokens);
          EXPECT_EQ(p.fused_merge, fm);
          // The work partition: the cost model's split count, within 1..num_splits; the deep ring
          // on narrow grids (≤ 2 CTAs per SM). Neither changes the arithmetic.
          DecodePlanOptions cmo = o;
          cmo.fixed_split_tokens = 0;
          const int cm = plan_decode_split(batch, 32, 4, 128, len, sms, cmo).num_splits;
          EXPECT_EQ(p.grid_splits, std::min(cm, p.num_splits)) << "batch " << batch << " len " << len;
          EXPECT_GE(p.grid_splits, 1);
          EXPECT_EQ(p.deep_ring, int64_t{batch} * 4 * p.grid_splits <= 2 * sms);
          const size_t counters = fm && p.num_splits > 1 ? (1024 * 4 * sizeof(uint32_t) + 255) / 256 * 256 : 0;
          EXPECT_EQ(p.counter_bytes, counters);
          EXPECT_EQ(p.workspace_bytes,
                    p.num_splits > 1 ? counters + size_t(p.num_splits) * batch * 32 * 129 * sizeof(float) : 0u);
        }
      }
    }
  }
  // The cost model's plan is not fixed, and follows the batch (why it cannot serve the
  // tensor-core kernel's 16-bit launches).
  const auto a = plan_decode_split(1, 32, 8, 128, 4096, 132), b = plan_decode_split(64, 32, 8, 128, 4096, 132);
  EXPECT_FALSE(a.fixed_split);
  EXPECT_FALSE(a.deep_ring);
  // A graph planned at max_model_len for a wide batch: many splits of partials, one CTA per pair.
  DecodePlanOptions fo;
  fo.fixed_split_tokens = kDecodeFixedSplitTokens;
  const auto g = plan_decode_split(256, 32, 8, 128, 40960, 132, fo);
  EXPECT_EQ(g.num_splits, 80);
  EXPECT_EQ(g.grid_splits, 1);
  EXPECT_FALSE(g.deep_ring);
  // One long sequence: a wave's worth of CTAs, as the cost model.
  const auto one = plan_decode_split(1, 32, 8, 128, 32768, 132, fo);
  EXPECT_EQ(one.num_splits, 64);
  EXPECT_EQ(one.grid_splits, 64);
  EXPECT_NE(a.tokens_per_split, b.tokens_per_split);
  DecodePlanOptions bad;
  bad.fixed_split_tokens = 100;
  EXPECT_THROW(plan_decode_split(1, 32, 8, 128, 1000, 132, bad), std::exception);
}

TEST(DecodePlan, FixedSplitIsForSixteenBitCachesAtGroups4And8) {
  for (int mask : {0, 4, 8, 12}) {
    for (int kv_bytes : {1, 2, 4}) {
      for (int group : {1, 2, 4, 8, 16}) {
        for (int hd : {64, 128, 256}) {
          const bool want = kv_bytes == 2 && (group == 4 || group == 8) && (mask & group) && hd != 256;
          EXPECT_EQ(decode_fixed_split_wanted(kv_bytes, group, hd, mask), want)
              << "mask " << mask << " kv " << kv_bytes << " group " << group << " hd " << hd;
        }
      }
    }
  }
  // Unset: group 8 on wide grids (this test is compiled with the fixed split's kernels).
  EXPECT_EQ(decode_mma16_groups(nullptr), 8 | kDecodeMmaWideGridsOnly);
  EXPECT_EQ(decode_mma16_groups("8w"), 8 | kDecodeMmaWideGridsOnly);
  EXPECT_EQ(decode_mma16_groups("all"), 12);
  EXPECT_EQ(decode_mma16_groups("4,8"), 12);
  EXPECT_EQ(decode_mma16_groups("8,4"), 12);
  EXPECT_EQ(decode_mma16_groups("4"), 4);
  EXPECT_EQ(decode_mma16_groups("8"), 8);
  for (const char* off : {"0", "off", "none"}) EXPECT_EQ(decode_mma16_groups(off), 0) << off;
  for (const char* bad : {"", "1", "yes", "4 8", "16"}) EXPECT_THROW(decode_mma16_groups(bad), std::exception) << bad;
  // The engine's options, as this process's PIE_DECODE_MMA_WIDE says (ctest runs the binary again
  // as fixed.* with `all`).
  const int mask = decode_mma16_groups(std::getenv("PIE_DECODE_MMA_WIDE"));
  EXPECT_EQ(decode_plan_options(2, 4, 128).fixed_split_tokens, (mask & 4) ? kDecodeFixedSplitTokens : 0);
  EXPECT_EQ(decode_plan_options(2, 8, 64).fixed_split_tokens, (mask & 8) ? kDecodeFixedSplitTokens : 0);
  EXPECT_EQ(decode_plan_options(2, 8, 128).fixed_split_wide_grids_only, (mask & kDecodeMmaWideGridsOnly) != 0);
  EXPECT_EQ(decode_plan_options(1, 4, 128).fixed_split_tokens, 0);  // fp8: the cost model
  EXPECT_EQ(decode_plan_options(2, 2, 128).fixed_split_tokens, 0);
  EXPECT_EQ(decode_plan_options(2, 4, 256).fixed_split_tokens, 0);
}

// The fixed split on wide grids only (unset PIE_DECODE_MMA_WIDE at group 8): a cost-model grid of
// more than one CTA per SM takes the batch-invariant split (and so the tensor-core kernel);
// narrower ones keep the cost model's plan with its latency paths (group parts, wide CTAs).
TEST(DecodePlan, FixedSplitOnWideGridsOnlyKeepsNarrowGridsOnTheCostModel) {
  DecodePlanOptions o = DecodePlanOptions::from_env(true);
  o.fixed_split_tokens = kDecodeFixedSplitTokens;
  o.fixed_split_wide_grids_only = true;
  o.split_groups = true;
  o.split_groups_small_grids_only = true;
  const int sms = 132;
  // Qwen3-30B-A3B (32 q / 4 KV heads): batch 1024 at 256 tokens → 4096 one-split CTAs: fixed.
  const auto wide = plan_decode_split(1024, 32, 4, 128, 256, sms, o);
  EXPECT_TRUE(wide.fixed_split);
  EXPECT_EQ(wide.tokens_per_split, kDecodeFixedSplitTokens);
  EXPECT_EQ(wide.group_parts, 1);
  EXPECT_FALSE(wide.deep_ring);
  EXPECT_TRUE(wide.mma_wide_ctas) << "one split per sequence at group 8: the 4-warp tensor-core CTA";
  // The boundary: 33 sequences × 4 KV heads = 132 one-split CTAs stay on the cost model; 34 do not.
  EXPECT_FALSE(plan_decode_split(33, 32, 4, 128, 256, sms, o).fixed_split);
  EXPECT_TRUE(plan_decode_split(34, 32, 4, 128, 256, sms, o).fixed_split);
  // Batch 1: the cost model's plan, exactly as without the fixed split (group parts included).
  DecodePlanOptions plain = o;
  plain.fixed_split_tokens = 0;
  plain.fixed_split_wide_grids_only = false;
  for (int ctx : {192, 512, 2048}) {
    const auto a = plan_decode_split(1, 32, 4, 128, ctx, sms, o), b = plan_decode_split(1, 32, 4, 128, ctx, sms, plain);
    EXPECT_FALSE(a.fixed_split) << ctx;
    EXPECT_EQ(a.num_splits, b.num_splits) << ctx;
    EXPECT_EQ(a.tokens_per_split, b.tokens_per_split) << ctx;
    EXPECT_EQ(a.group_parts, b.group_parts) << ctx;
    EXPECT_EQ(a.cluster_merge, b.cluster_merge) << ctx;
  }
  EXPECT_EQ(plan_decode_split(1, 32, 4, 128, 192, sms, o).group_parts, 2) << "batch 1: two CTAs per KV head";
  // Few long sequences whose cost-model grid is wide: fixed, with the cost model's CTAs per pair.
  for (int batch : {1, 16}) {
    const auto longs = plan_decode_split(batch, 32, 4, 128, 32768, sms, o);
    EXPECT_TRUE(longs.fixed_split) << batch;
    EXPECT_FALSE(longs.mma_wide_ctas) << batch << ": several splits keep the 2-warp CTA";
    EXPECT_EQ(longs.grid_splits, plan_decode_split(batch, 32, 4, 128, 32768, sms, plain).num_splits) << batch;
    EXPECT_GT(int64_t{batch} * 4 * longs.grid_splits, sms) << batch;
  }
  // Group 4 limited to wide grids (not a default) keeps the 2-warp CTA.
  EXPECT_FALSE(plan_decode_split(1024, 32, 8, 128, 256, sms, o).mma_wide_ctas);
  EXPECT_TRUE(plan_decode_split(1024, 32, 8, 128, 256, sms, o).fixed_split);
  // Every grid when not limited to wide ones (PIE_DECODE_MMA_WIDE=8), with the 2-warp CTA
  // everywhere (its bits must not follow the grid).
  o.fixed_split_wide_grids_only = false;
  EXPECT_TRUE(plan_decode_split(1, 32, 4, 128, 192, sms, o).fixed_split);
  EXPECT_FALSE(plan_decode_split(1024, 32, 4, 128, 256, sms, o).mma_wide_ctas);
}

// Group parts (DecodePlanOptions::split_groups): opt-in until measured on a GPU; `1` asks for
// them on small grids; 16-bit caches only, never with a fixed split.
TEST(DecodePlan, SplitGroupsAreTheLatencyBuildsDefaultForSmallGridsOfSixteenBitCaches) {
  ::unsetenv("PIE_DECODE_SPLIT_GROUP");
  ::unsetenv("PIE_DECODE_SPLIT_GROUP4");
  ::unsetenv("PIE_DECODE_MMA_WIDE");
  EXPECT_FALSE(DecodePlanOptions::from_env(false).split_groups) << "off in a build without the latency paths";
  EXPECT_FALSE(DecodePlanOptions::from_env(false).split_group4);
  const auto latency = DecodePlanOptions::from_env(true);
  EXPECT_TRUE(latency.split_groups && latency.split_group4 && latency.split_groups_small_grids_only)
      << "on for small grids in a build with them";
  ::setenv("PIE_DECODE_SPLIT_GROUP", "1", 1);
  auto o = DecodePlanOptions::from_env(true);
  EXPECT_TRUE(o.split_groups && o.split_groups_small_grids_only);
  ::setenv("PIE_DECODE_SPLIT_GROUP", "0", 1);
  EXPECT_FALSE(DecodePlanOptions::from_env(true).split_groups);
  ::setenv("PIE_DECODE_SPLIT_GROUP", "2", 1);
  EXPECT_THROW(DecodePlanOptions::from_env(true), pie::Error);
  ::setenv("PIE_DECODE_SPLIT_GROUP", "1", 1);
  EXPECT_TRUE(decode_plan_options(2, 8, 128).split_groups);
  EXPECT_FALSE(decode_plan_options(1, 8, 128).split_groups) << "fp8 takes the tensor-core kernel";
  ::unsetenv("PIE_DECODE_SPLIT_GROUP");
  ::setenv("PIE_DECODE_SPLIT_GROUP4", "0", 1);
  EXPECT_FALSE(DecodePlanOptions::from_env(true).split_group4) << "group 4: its own switch";
  EXPECT_TRUE(DecodePlanOptions::from_env(true).split_groups);
  ::setenv("PIE_DECODE_SPLIT_GROUP4", "1", 1);
  EXPECT_TRUE(DecodePlanOptions::from_env(false).split_group4) << "asked for without the paths' default";
  EXPECT_FALSE(decode_plan_options(1, 4, 128).split_group4);
  ::unsetenv("PIE_DECODE_SPLIT_GROUP4");
}

// Two CTAs of four query heads per (sequence, KV head) at GQA group 8: where the doubled grid is
// one wave (small_grids_only) or everywhere (asked for), with a cluster of at most 16 CTAs
// (kDecodeMaxClusterCtas); the split is the cost model's either way, and the CTA shape (stages,
// CTAs per SM) is the four-head kernel's.
TEST(DecodePlan, GroupPartsForGroupEightWhereTheDoubledGridIsOneWave) {
  DecodePlanOptions small;
  small.cluster_merge = small.early_pages = small.small_grids_only = true;
  small.split_groups = small.split_groups_small_grids_only = true;
  DecodePlanOptions all = small;
  all.split_groups_small_grids_only = false;
  DecodePlanOptions off = small;
  off.split_groups = false;
  struct Case { int batch, len, parts, splits; bool cluster; };
  // Qwen3-30B-A3B (32 q / 4 KV heads): batch 1 at 192 (3 splits), at its 512-token graph class (8
  // splits: a cluster of 16), at 2048 (32 splits: 128 CTAs, doubled past one wave); batch 8 at 192
  // (3 splits: 96 CTAs, doubled past one wave).
  for (const Case c : {Case{1, 192, 2, 3, true}, Case{1, 512, 2, 8, true}, Case{1, 2048, 1, 32, false},
                       Case{8, 192, 1, 3, true}, Case{64, 512, 1, 1, false}}) {
    SCOPED_TRACE(std::to_string(c.batch) + " x " + std::to_string(c.len));
    const auto s = plan_decode_split(c.batch, 32, 4, 128, c.len, 132, small);
    const auto f = plan_decode_split(c.batch, 32, 4, 128, c.len, 132, off);
    EXPECT_EQ(s.group_parts, c.parts);
    EXPECT_EQ(f.group_parts, 1);
    EXPECT_EQ(s.num_splits, c.splits);
    EXPECT_EQ(s.num_splits, f.num_splits);
    EXPECT_EQ(s.tokens_per_split, f.tokens_per_split);
    EXPECT_EQ(s.cluster_merge, c.cluster);
    EXPECT_EQ(s.stages, c.parts == 2 ? detail::decode_stages(4) : detail::decode_stages(8));
    EXPECT_EQ(s.ctas_per_sm, c.parts == 2 ? detail::decode_ctas_per_sm(4) : detail::decode_ctas_per_sm(8));
    if (c.parts == 2) EXPECT_LE(2 * c.batch * 4 * s.num_splits, 132);
  }
  // Asked for everywhere: past one wave too (no cluster merge past 8 splits, the merge kernel).
  const auto w = plan_decode_split(1, 32, 4, 128, 2048, 132, all);
  EXPECT_EQ(w.group_parts, 2);
  EXPECT_FALSE(w.cluster_merge);
  EXPECT_FALSE(w.small_grid);
  // Group 4 (Qwen3-8B) only when asked for (split_group4), group 2 never; the fused merge and a
  // fixed split never.
  EXPECT_EQ(plan_decode_split(1, 32, 8, 128, 192, 132, all).group_parts, 1);
  DecodePlanOptions g4 = small;
  g4.split_group4 = true;
  const auto p4 = plan_decode_split(1, 32, 8, 128, 512, 132, g4);
  EXPECT_EQ(p4.group_parts, 2) << "Qwen3-8B batch 1 at its 512-token class: 8 x 8 x 2 = 128 CTAs";
  EXPECT_EQ(p4.stages, detail::decode_stages(2));
  EXPECT_EQ(plan_decode_split(2, 32, 8, 128, 512, 132, g4).group_parts, 1) << "256 CTAs";
  EXPECT_EQ(plan_decode_split(1, 32, 16, 128, 192, 132, g4).group_parts, 1);
  DecodePlanOptions fu = all;
  fu.fused_merge = true;
  EXPECT_EQ(plan_decode_split(1, 32, 4, 128, 192, 132, fu).group_parts, 1);
  DecodePlanOptions fx = all;
  fx.fixed_split_tokens = kDecodeFixedSplitTokens;
  EXPECT_EQ(plan_decode_split(1, 32, 4, 128, 192, 132, fx).group_parts, 1);
  // A forced split keeps the cluster within 16 CTAs: parts of 8 splits, not of 16.
  auto p = plan_decode_split(1, 32, 4, 128, 1024, 132, {});
  set_decode_split(p, 128, 1024);
  ASSERT_TRUE(use_decode_cluster_merge(p));
  EXPECT_TRUE(use_decode_group_parts(p, 2));
  EXPECT_EQ(p.num_splits * p.group_parts, kDecodeMaxClusterCtas);
  set_decode_split(p, 64, 1024);  // 16 splits: no cluster merge
  EXPECT_FALSE(p.cluster_merge);
  EXPECT_FALSE(use_decode_cluster_merge(p));
  EXPECT_FALSE(use_decode_group_parts(p, 3)) << "two parts only";
  EXPECT_TRUE(use_decode_group_parts(p, 1));
  EXPECT_EQ(p.group_parts, 1);
  EXPECT_EQ(p.stages, detail::decode_stages(8));
}

TEST(DecodePlan, RejectsBadShapes) {
  EXPECT_THROW(plan_decode_split(1, 30, 8, 128, 100, 132), std::exception);
  EXPECT_THROW(plan_decode_split(1, 32, 8, 128, 100, 0), std::exception);
}

}  // namespace

// The late dependent launch (PIE_DECODE_LATE_DEPENDENTS): the latency builds' default, parsed like
// the other switches, and only on plans whose grid is one wave of one CTA per SM.
TEST(DecodePlan, LateDependentsAreTheLatencyBuildsDefaultOnlyOnSmallGrids) {
  ::unsetenv("PIE_DECODE_LATE_DEPENDENTS");
  EXPECT_FALSE(DecodePlanOptions::from_env(false).late_dependents) << "off without the latency paths";
  EXPECT_TRUE(DecodePlanOptions::from_env(true).late_dependents) << "on with them";
  ::setenv("PIE_DECODE_LATE_DEPENDENTS", "0", 1);
  EXPECT_FALSE(DecodePlanOptions::from_env(true).late_dependents);
  ::setenv("PIE_DECODE_LATE_DEPENDENTS", "yes", 1);
  EXPECT_THROW(DecodePlanOptions::from_env(true), pie::Error);
  ::setenv("PIE_DECODE_LATE_DEPENDENTS", "1", 1);
  DecodePlanOptions o = DecodePlanOptions::from_env(true);
  ::unsetenv("PIE_DECODE_LATE_DEPENDENTS");
  EXPECT_TRUE(o.late_dependents);
  const auto b1 = plan_decode_split(1, 32, 8, 128, 512, 132, o);
  EXPECT_TRUE(b1.small_grid && b1.late_dependents) << "batch 1: a small grid";
  const auto b64 = plan_decode_split(64, 32, 8, 128, 4096, 132, o);
  EXPECT_FALSE(b64.small_grid || b64.late_dependents) << "batch 64: a full grid";
  o.late_dependents = false;
  EXPECT_FALSE(plan_decode_split(1, 32, 8, 128, 512, 132, o).late_dependents);
}

// The wide CTAs (PIE_DECODE_WIDE_CTAS=8 or 16; unset: 16 in a build with the latency paths, 0 off):
// on small grids at head dim 128 with at most 4 query heads per CTA (group parts count), never for
// fp8 caches or the fixed split.
TEST(DecodePlan, WideCtasOnlyForSmallGridsOfFourHeadsAtHeadDim128) {
  ::unsetenv("PIE_DECODE_WIDE_CTAS");
  EXPECT_EQ(DecodePlanOptions::from_env(true).wide_warps, 16) << "the latency builds' default";
  EXPECT_EQ(DecodePlanOptions::from_env(false).wide_warps, 0) << "off without the latency paths";
  ::setenv("PIE_DECODE_WIDE_CTAS", "0", 1);
  EXPECT_EQ(DecodePlanOptions::from_env(true).wide_warps, 0) << "0 turns it off";
  ::setenv("PIE_DECODE_WIDE_CTAS", "8", 1);
  EXPECT_EQ(DecodePlanOptions::from_env(true).wide_warps, 8);
  ::setenv("PIE_DECODE_WIDE_CTAS", "1", 1);
  EXPECT_THROW(DecodePlanOptions::from_env(true), pie::Error) << "warps: 0, 8 or 16";
  ::setenv("PIE_DECODE_WIDE_CTAS", "16", 1);
  EXPECT_EQ(DecodePlanOptions::from_env(false).wide_warps, 0) << "only in a build with the latency paths";
  DecodePlanOptions o = DecodePlanOptions::from_env(true);
  EXPECT_EQ(o.wide_warps, 16);
  EXPECT_EQ(decode_plan_options(1, 4, 128).wide_warps, 0) << "fp8 takes the tensor-core kernel";
  ::unsetenv("PIE_DECODE_WIDE_CTAS");
  o.split_groups = o.split_group4 = true;
  o.split_groups_small_grids_only = true;
  // Qwen3-8B batch 1 (group 4, parts: 2 heads a CTA) and Qwen3-30B-A3B (group 8, parts: 4).
  for (int warps : {8, 16}) {
    o.wide_warps = warps;
    for (int nkv : {8, 4}) {
      const auto b1 = plan_decode_split(1, 32, nkv, 128, 512, 132, o);
      EXPECT_EQ(b1.group_parts, 2) << nkv;
      EXPECT_EQ(b1.warps, warps) << nkv;
      EXPECT_EQ(b1.stages, 2);
    }
  }
  o.split_groups = false;  // group 8 in one CTA: 8 heads, too many registers for a wide CTA
  EXPECT_EQ(plan_decode_split(1, 32, 4, 128, 512, 132, o).warps, 4);
  EXPECT_EQ(plan_decode_split(64, 32, 8, 128, 4096, 132, o).warps, 4) << "a full grid";
  EXPECT_EQ(plan_decode_split(1, 32, 8, 64, 512, 132, o).warps, 4) << "head dim 64";
  o.wide_warps = 0;
  EXPECT_EQ(plan_decode_split(1, 32, 8, 128, 512, 132, o).warps, 4);
}

// The pushing cluster merge (PIE_DECODE_CLUSTER_PUSH; unset: on in a build with the latency paths,
// `0` off): a plan takes it only where it has a cluster merge.
TEST(DecodePlan, ClusterPushOnlyWithAClusterMerge) {
  ::unsetenv("PIE_DECODE_CLUSTER_PUSH");
  EXPECT_TRUE(DecodePlanOptions::from_env(true).cluster_push) << "the latency builds' default";
  EXPECT_FALSE(DecodePlanOptions::from_env(false).cluster_push);
  ::setenv("PIE_DECODE_CLUSTER_PUSH", "0", 1);
  EXPECT_FALSE(DecodePlanOptions::from_env(true).cluster_push);
  ::setenv("PIE_DECODE_CLUSTER_PUSH", "1", 1);
  EXPECT_TRUE(DecodePlanOptions::from_env(true).cluster_push);
  EXPECT_FALSE(DecodePlanOptions::from_env(false).cluster_push) << "only with the latency paths";
  ::setenv("PIE_DECODE_CLUSTER_PUSH", "yes", 1);
  EXPECT_THROW(DecodePlanOptions::from_env(true), pie::Error);
  ::unsetenv("PIE_DECODE_CLUSTER_PUSH");
  DecodePlanOptions o;
  o.cluster_push = true;
  EXPECT_FALSE(plan_decode_split(1, 32, 8, 128, 512, 132, o).cluster_push) << "no cluster merge asked for";
  o.cluster_merge = true;
  const auto b1 = plan_decode_split(1, 32, 8, 128, 512, 132, o);
  EXPECT_TRUE(b1.cluster_merge);
  EXPECT_TRUE(b1.cluster_push);
  EXPECT_FALSE(plan_decode_split(256, 32, 8, 128, 4096, 132, o).cluster_push) << "a full grid: no cluster merge";
}

// The persistent grid (PIE_DECODE_PERSISTENT, opt-in): parsed like the other switches, and only on
// plans of one split per pair, without clusters or group parts, whose pairs outnumber the resident
// CTAs — b512 × 8 KV heads at ctx 140 (4,096 pairs over 132 × 4 slots), not batch 1 or 64.
TEST(DecodePlan, PersistentOnlyForOneSplitGridsPastOneWave) {
  ::unsetenv("PIE_DECODE_PERSISTENT");
  EXPECT_FALSE(DecodePlanOptions::from_env(true).persistent) << "opt-in";
  ::setenv("PIE_DECODE_PERSISTENT", "on", 1);
  EXPECT_THROW(DecodePlanOptions::from_env(true), pie::Error);
  ::setenv("PIE_DECODE_PERSISTENT", "1", 1);
  const DecodePlanOptions o = DecodePlanOptions::from_env(true);
  ::unsetenv("PIE_DECODE_PERSISTENT");
  ASSERT_TRUE(o.persistent);
  const auto wide = plan_decode_split(512, 32, 8, 128, 140, 132, o);
  EXPECT_EQ(wide.num_splits, 1);
  EXPECT_TRUE(wide.persistent) << "4,096 pairs over 528 slots";
  EXPECT_FALSE(plan_decode_split(1, 32, 8, 128, 512, 132, o).persistent) << "batch 1: a small grid";
  const auto b64 = plan_decode_split(64, 32, 8, 128, 4096, 132, o);
  EXPECT_FALSE(b64.persistent) << "batch 64 at ctx 4096: " << b64.num_splits << " splits";
  const auto fits = plan_decode_split(64, 32, 8, 128, 140, 132, o);  // 512 pairs ≤ 528 slots: one wave
  EXPECT_FALSE(fits.persistent);
  DecodePlanOptions off = o;
  off.persistent = false;
  EXPECT_FALSE(plan_decode_split(512, 32, 8, 128, 140, 132, off).persistent);
  DecodePlanOptions early = o;  // the early pages on every plan (PIE_DECODE_EARLY_PAGES=1): not persistent
  early.early_pages = true;
  early.small_grids_only = false;
  const auto ep = plan_decode_split(512, 32, 8, 128, 140, 132, early);
  EXPECT_TRUE(ep.early_pages && !ep.persistent);
}

// The fewest tokens a split of a small grid covers (PIE_DECODE_SMALL_SPLIT_TOKENS, default 64):
// batch 1's 512-token graph class is 8 cluster-merged splits of 64 by default, one split with no
// merge at 512 (the RoPE can still go inside, and the group parts and wide CTAs still apply), two
// at 256; wide grids keep their 256-token floor either way.
TEST(DecodePlan, SmallSplitTokensSetTheFloorOfBatchOnesSplits) {
  ::unsetenv("PIE_DECODE_SMALL_SPLIT_TOKENS");
  EXPECT_EQ(DecodePlanOptions::from_env(true).small_split_tokens, 64);
  for (const char* bad : {"0", "100", "-64", "x", "64k"}) {
    ::setenv("PIE_DECODE_SMALL_SPLIT_TOKENS", bad, 1);
    EXPECT_THROW(DecodePlanOptions::from_env(true), pie::Error) << bad;
  }
  ::setenv("PIE_DECODE_SMALL_SPLIT_TOKENS", "512", 1);
  DecodePlanOptions o = DecodePlanOptions::from_env(true);
  ::unsetenv("PIE_DECODE_SMALL_SPLIT_TOKENS");
  EXPECT_EQ(o.small_split_tokens, 512);
  DecodePlanOptions d = DecodePlanOptions::from_env(true);
  for (int nkv : {8, 4}) {  // Qwen3-8B, Qwen3-30B-A3B
    const auto base = plan_decode_split(1, 32, nkv, 128, 512, 132, d);
    EXPECT_EQ(base.num_splits, 8) << nkv;
    EXPECT_TRUE(base.cluster_merge) << nkv;
    const auto one = plan_decode_split(1, 32, nkv, 128, 512, 132, o);
    EXPECT_EQ(one.num_splits, 1) << nkv;
    EXPECT_FALSE(one.cluster_merge || one.cluster_push) << nkv;
    EXPECT_EQ(one.workspace_bytes, 0u) << nkv;
    EXPECT_EQ(one.group_parts, 2) << nkv;
    EXPECT_EQ(one.warps, 16) << nkv;
    EXPECT_TRUE(decode_rope_supported(one, 2)) << nkv;
    o.small_split_tokens = 256;
    EXPECT_EQ(plan_decode_split(1, 32, nkv, 128, 512, 132, o).num_splits, 2) << nkv;
    o.small_split_tokens = 512;
  }
  EXPECT_EQ(plan_decode_split(1, 32, 8, 128, 4096, 132, o).num_splits, 8) << "longer classes: 512-token splits";
  EXPECT_EQ(plan_decode_split(256, 32, 8, 128, 4096, 132, o).num_splits,
            plan_decode_split(256, 32, 8, 128, 4096, 132, d).num_splits)
      << "a wide grid keeps its own floor";
}
