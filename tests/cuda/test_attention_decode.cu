// Paged decode attention against ops::cpu::paged_attention, over block size × head dim × GQA
// group × dtype, ragged context lengths that are not multiples of the block size, split-K on
// and off, fp8 KV, head dim 256 and the sliding-window / soft-cap variants. The tensor-core kernel
// (head dims 64/128) is the default for fp8 K/V and Mode 4 for 16-bit K/V (the 16-bit grid below);
// the CUDA-core kernel (the 16-bit default, Mode 3 where fp8 would take tensor cores) has its own grid.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>

#include "pie/ops/cpu/attention.hpp"
#include "pie/ops/cuda/attention_decode.cuh"
#include "pie/ops/cuda/kv_write.cuh"
#include "pie/ops/cuda/rope.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;

/// Runs one decode launch and compares with the CPU op; returns the relative error. Mode 3: the
/// CUDA-core kernel where the tensor-core one is the default; 4: the tensor-core kernel on 16-bit
/// K/V (decode_attention's Mode).
template <class T, class KV, class Variant = attention::Causal, int Mode = 0>
double run_decode(int bs, int hd, int group, int nkv, const std::vector<int>& lens, int sm_count, uint32_t seed,
                  int* splits_out = nullptr, Variant var = {}, int plan_len = 0, int force_splits = 0,
                  std::vector<T>* out_raw = nullptr, const ops::cuda::DecodePlanOptions& popt = {},
                  int grid_splits = 0) {
  std::mt19937 rng(seed);
  const int batch = static_cast<int>(lens.size()), nq = nkv * group;
  RandomCache<KV> cache(lens, nkv, hd, bs, rng);
  auto q = randn<T>(size_t(batch) * nq * hd, rng);
  auto d_q = upload(q);
  DeviceBuffer<T> d_o(q.size());
  poison(d_o);
  int max_len = *std::max_element(lens.begin(), lens.end());
  // plan_len > max_len: a plan made for a longer context (a CUDA graph captured at
  // max_model_len, replayed on shorter sequences). force_splits: that many splits.
  auto plan = ops::cuda::plan_decode_attention(batch, nq, nkv, hd, std::max(max_len, plan_len), sm_count, popt);
  if (force_splits > 0) {
    const int len = std::max(max_len, plan_len);
    plan.tokens_per_split = ((len + force_splits - 1) / force_splits + 63) / 64 * 64;
    plan.num_splits = (len + plan.tokens_per_split - 1) / plan.tokens_per_split;
    plan.workspace_bytes = plan.num_splits > 1 ? size_t(plan.num_splits) * batch * nq * (hd + 1) * sizeof(float) : 0;
  }
  if (grid_splits > 0) plan.grid_splits = grid_splits;  // a fixed-split plan's work partition
  if (splits_out) *splits_out = plan.num_splits;
  DeviceBuffer<unsigned char> ws(plan.workspace_bytes);
  if (plan.workspace_bytes) poison(ws);
  const float scale = 1.f / std::sqrt(float(hd));
  ops::cuda::decode_attention<0, 0, Mode>(d_q.view({batch, nq, hd}), cache.device(), d_o.view({batch, nq, hd}), plan,
                                          ws.data(), scale, var);
  auto o = download(d_o);
  if (out_raw) *out_raw = o;
  std::vector<float> qf = to_f32(q), ref(q.size());
  std::vector<int32_t> cu(batch + 1);
  std::iota(cu.begin(), cu.end(), 0);
  ops::cpu::paged_attention<Variant>(qf.data(), int64_t(nq) * hd, ref.data(), int64_t(nq) * hd, cache.host(),
                                     cu.data(), nq, scale, var);
  return rel_err(o, ref);
}

// PIE_DECODE_TEST_MERGE_ONLY (a device-side build, tests/cuda/CMakeLists.txt) keeps only the
// merge tests below and the engine-plan test (DecodeAttentionWide): a binary small enough to
// carry to the GPU machine.
#ifndef PIE_DECODE_TEST_MERGE_ONLY
using Param = std::tuple<int, int, int, bool>;  // block size, head dim, group, bf16?
class DecodeAttention : public ::testing::TestWithParam<Param> {};

TEST_P(DecodeAttention, MatchesCpu) {
  const auto [bs, hd, group, is_bf16] = GetParam();
  // Ragged, never multiples of the block size; 1337 forces split-K with 3 sequences.
  std::vector<int> lens = {1, bs + 3, 1337, 3 * bs - 1, 77};
  const int nkv = 2;
  int splits = 0;
  using C = attention::Causal;  // Mode 4: the tensor-core kernel on 16-bit K/V
  double e = is_bf16 ? run_decode<bf16, bf16, C, 4>(bs, hd, group, nkv, lens, 132, 1000 + bs * hd + group, &splits)
                     : run_decode<f16, f16, C, 4>(bs, hd, group, nkv, lens, 132, 2000 + bs * hd + group, &splits);
  EXPECT_GT(splits, 1) << "this shape should take the split-K path";
  EXPECT_LT(e, is_bf16 ? tol<bf16>() : tol<f16>()) << "rel err " << e;
  // The same shapes planned for a 2-SM card: a wide grid, fewer splits.
  double w = is_bf16 ? run_decode<bf16, bf16, C, 4>(bs, hd, group, nkv, lens, 2, 3000 + bs * hd + group)
                     : run_decode<f16, f16, C, 4>(bs, hd, group, nkv, lens, 2, 4000 + bs * hd + group);
  EXPECT_LT(w, is_bf16 ? tol<bf16>() : tol<f16>()) << "2-SM plan: rel err " << w;
  std::printf("[decode bs=%d hd=%d group=%d %s splits=%d] rel err %.2e\n", bs, hd, group, is_bf16 ? "bf16" : "f16",
              splits, e);
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  const int bs = std::get<0>(info.param), hd = std::get<1>(info.param), g = std::get<2>(info.param);
  return "Block" + std::to_string(bs) + "_HeadDim" + std::to_string(hd) + "_Group" + std::to_string(g) +
         (std::get<3>(info.param) ? "_BF16" : "_F16");
}

INSTANTIATE_TEST_SUITE_P(Grid, DecodeAttention,
                         ::testing::Combine(::testing::Values(8, 16, 32), ::testing::Values(64, 128),
                                            ::testing::Values(1, 4, 8), ::testing::Bool()),
                         param_name);

TEST(DecodeAttentionBatch, Block16HeadDim128Group4Batch64Ragged) {
  std::mt19937 rng(7);
  std::vector<int> lens(64);
  for (auto& l : lens) l = 1 + int(rng() % 700);
  int splits = 0;
  double e = run_decode<bf16, bf16>(16, 128, 4, 8, lens, 132, 11, &splits);
  EXPECT_LE(splits, 2);  // 512 CTAs, and no split under 256 tokens
  EXPECT_LT(e, tol<bf16>()) << e;
  e = run_decode<bf16, bf16>(16, 128, 4, 8, lens, 132, 21, &splits, {}, 0, 3);
  EXPECT_EQ(splits, 3);
  EXPECT_LT(e, tol<bf16>()) << "3 splits: " << e;
}

TEST(DecodeAttentionBatch, Block16HeadDim128Group4ShortContextsOneSplit) {
  std::mt19937 rng(8);
  std::vector<int> lens(32);
  for (auto& l : lens) l = 1 + int(rng() % 300);
  int splits = 0;
  double e = run_decode<f16, f16>(16, 128, 4, 8, lens, 132, 17, &splits);
  EXPECT_EQ(splits, 1);
  EXPECT_LT(e, tol<f16>()) << e;
}

#endif  // PIE_DECODE_TEST_MERGE_ONLY

// The batch-invariant split's tests need its kernels in the default mode's dispatch
// (attention_decode_mma.cuh's kDecodeMmaWide): compiled with -DPIE_DECODE_FIXED_SPLIT=ON only, as the
// engine is, so CI's default build does not pay for them (the device bundle builds them).
#if defined(PIE_DECODE_FIXED_SPLIT)
// The engine's plan options (PIE_DECODE_MMA_WIDE, read once per process; ctest runs this binary
// once without it and once as fixed.* with `all`): with `all` a 16-bit launch at groups 4 and 8
// gets the batch-invariant split and the tensor-core kernel; unset, group 8 gets them on wide
// grids (more CTAs than SMs, as this batch of 64 × 4 KV heads; test_decode_plan checks that
// narrow ones keep the cost model's plan) and group 4 never. The default mode's bytes must equal
// those of the kernel it chose (Mode 4 or Mode 3, same plan), and the two kernels must differ
// here, or the test could not tell.
TEST(DecodeAttentionWide, EnginePlanTakesTheKernelTheEnvironmentNames) {
  using C = attention::Causal;
  for (int group : {4, 8}) {
    std::mt19937 rng(40 + group);
    std::vector<int> lens(64);
    for (auto& l : lens) l = 1 + int(rng() % 1200);
    const auto opt = ops::cuda::decode_plan_options(int(sizeof(bf16)), group, 128);
    const bool every = ops::cuda::decode_mma_wide_enabled(group);
    const bool wide_only = ops::cuda::decode_mma_wide_grids_only(group);
    EXPECT_EQ(opt.fixed_split_tokens > 0, every || wide_only);
    EXPECT_EQ(opt.fixed_split_wide_grids_only, wide_only);
    const bool wide = every || wide_only;
    std::vector<bf16> o0, o3, o4;
    int splits = 0;
    const uint32_t seed = 90 + group;
    const double e = run_decode<bf16, bf16, C, 0>(16, 128, group, 4, lens, 132, seed, &splits, {}, 0, 0, &o0, opt);
    if (wide) EXPECT_EQ(splits, 3) << "contexts up to 1200 tokens: 3 splits of 512";
    run_decode<bf16, bf16, C, 3>(16, 128, group, 4, lens, 132, seed, nullptr, {}, 0, 0, &o3, opt);
    run_decode<bf16, bf16, C, 4>(16, 128, group, 4, lens, 132, seed, nullptr, {}, 0, 0, &o4, opt);
    ASSERT_EQ(o0.size(), o3.size());
    ASSERT_NE(std::memcmp(o3.data(), o4.data(), o3.size() * sizeof(bf16)), 0) << "the kernels agree bitwise here";
    const auto& chosen = wide ? o4 : o3;
    EXPECT_EQ(std::memcmp(o0.data(), chosen.data(), o0.size() * sizeof(bf16)), 0)
        << "group " << group << ": the default mode is not the " << (wide ? "tensor-core" : "CUDA-core") << " kernel";
    EXPECT_LT(e, tol<bf16>()) << e;
    std::printf("[decode wide group=%d] %s kernel%s, %d splits, rel err %.2e\n", group,
                wide ? "tensor-core" : "CUDA-core", wide_only ? " (wide grids only)" : "", splits, e);
  }
}

// The fixed split on a wide grid at group 8 whose sequences are one split each (contexts ≤ 512)
// takes the tensor-core kernel's 4-warp CTA (DecodePlan::mma_wide_ctas): against the CPU
// reference, head dims 64 and 128, block sizes 8 and 16, ragged contexts up to the split.
TEST(DecodeAttentionWide, OneSplitWideGridsAtGroup8TakeTheFourWarpCtaAndMatchCpu) {
  using C = attention::Causal;
  ops::cuda::DecodePlanOptions opt;
  opt.fixed_split_tokens = ops::cuda::kDecodeFixedSplitTokens;
  opt.fixed_split_wide_grids_only = true;
  for (int hd : {128, 64}) {
    for (int bs : {16, 8}) {
      std::mt19937 rng(hd + bs);
      std::vector<int> lens(80);  // 80 sequences × 4 KV heads: 320 CTAs on 132 SMs
      for (auto& l : lens) l = 1 + int(rng() % 512);
      lens[7] = 512;
      lens[9] = 1;
      const auto plan = ops::cuda::plan_decode_attention(80, 32, 4, hd, 512, 132, opt);
      ASSERT_TRUE(plan.fixed_split && plan.mma_wide_ctas) << "hd " << hd;
      int splits = 0;
      const double e = run_decode<bf16, bf16, C, 0>(bs, hd, 8, 4, lens, 132, 70 + hd + bs, &splits, {}, 0, 0, nullptr, opt);
      EXPECT_EQ(splits, 1);
      EXPECT_LT(e, tol<bf16>()) << "hd " << hd << " bs " << bs;
      std::printf("[decode wide 4-warp hd=%d bs=%d] rel err %.2e\n", hd, bs, e);
    }
  }
}

#endif  // PIE_DECODE_FIXED_SPLIT

#ifndef PIE_DECODE_TEST_MERGE_ONLY
#if defined(PIE_DECODE_FIXED_SPLIT)
// The batch-invariant plan against the CPU reference over the grid (block size × head dim ×
// group × dtype; groups 4 and 8 take the tensor-core kernel with it, group 1 the CUDA-core one):
// the kDecodeFixedSplitTokens split, and 64-token splits (21 for the 1337-token sequence), with
// the plan's CTAs per (sequence, KV head) and with 1 and 2 (each CTA running several splits in
// turn), and from a plan made for a longer context (a graph captured at max_model_len).
class DecodeAttentionFixedSplitGrid : public ::testing::TestWithParam<Param> {};

TEST_P(DecodeAttentionFixedSplitGrid, MatchesCpu) {
  const auto [bs, hd, group, is_bf16] = GetParam();
  std::vector<int> lens = {1, bs + 3, 1337, 3 * bs - 1, 77};
  using C = attention::Causal;
  for (int tps : {ops::cuda::kDecodeFixedSplitTokens, 64}) {
    ops::cuda::DecodePlanOptions o;
    o.fixed_split_tokens = tps;
    for (auto [plan_len, grid] : {std::pair{0, 0}, std::pair{0, 1}, std::pair{0, 2}, std::pair{4000, 0}}) {
      int splits = 0;
      const uint32_t seed = 5000 + bs * hd + group + tps + plan_len + grid;
      const double e = is_bf16 ? run_decode<bf16, bf16, C, 0>(bs, hd, group, 2, lens, 132, seed, &splits, {}, plan_len,
                                                              0, nullptr, o, grid)
                               : run_decode<f16, f16, C, 0>(bs, hd, group, 2, lens, 132, seed, &splits, {}, plan_len, 0,
                                                            nullptr, o, grid);
      EXPECT_EQ(splits, (std::max(1337, plan_len) + tps - 1) / tps);
      EXPECT_LT(e, is_bf16 ? tol<bf16>() : tol<f16>())
          << tps << "-token splits, plan for " << plan_len << ", grid " << grid << ": " << e;
      if (plan_len == 0 && grid == 0)
        std::printf("[decode fixed split bs=%d hd=%d group=%d %s tps=%d splits=%d] rel err %.2e\n", bs, hd, group,
                    is_bf16 ? "bf16" : "f16", tps, splits, e);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, DecodeAttentionFixedSplitGrid,
                         ::testing::Combine(::testing::Values(8, 16, 32), ::testing::Values(64, 128),
                                            ::testing::Values(1, 4, 8), ::testing::Bool()),
                         param_name);

/// A batch `lens` in which sequence `pos` has the pages and query of `alone` (a one-sequence
/// cache, query `q_alone`) and the others random ones (from `seed`); run() decodes it in the
/// default mode and returns `pos`'s output rows.
template <class T>
struct Embedded {
  int batch, pos, nq, hd;
  RandomCache<T> cache;
  DeviceBuffer<T> d_q, d_o;
  Embedded(RandomCache<T>& alone, const std::vector<T>& q_alone, std::vector<int> lens, int pos_, int group,
           std::mt19937&& rng)
      : batch(int(lens.size())), pos(pos_), nq(alone.num_kv_heads * group), hd(alone.head_dim),
        cache((lens[pos_] = alone.lens[0], lens), alone.num_kv_heads, alone.head_dim, alone.block_size, rng) {
    const size_t page = size_t(2) * alone.num_kv_heads * alone.block_size * hd;  // a block: K, V of every head
    for (int i = 0; i < (alone.lens[0] + alone.block_size - 1) / alone.block_size; ++i)
      std::copy_n(alone.pool.begin() + size_t(alone.indices[i]) * page, page,
                  cache.pool.begin() + size_t(cache.indices[cache.indptr[pos] + i]) * page);
    cache.d_pool = upload(cache.pool);
    auto q = randn<T>(size_t(batch) * nq * hd, rng);
    std::copy(q_alone.begin(), q_alone.end(), q.begin() + size_t(pos) * nq * hd);
    d_q = upload(q);
    d_o = DeviceBuffer<T>(q.size());
  }
  /// The plan comes from `o` for the longest context or `plan_len`; force_tps > 0 then sets its
  /// split to that many tokens, grid_splits > 0 its CTAs per (sequence, KV head); deep_count
  /// counts plans with the deep ring. The output and workspace start poisoned (the arrival
  /// counters zeroed, for the fused merge).
  std::vector<T> run(const ops::cuda::DecodePlanOptions& o, int plan_len = 0, int force_tps = 0,
                     int* deep_count = nullptr, int grid_splits = 0) {
    poison(d_o);
    const int len = std::max(*std::max_element(cache.lens.begin(), cache.lens.end()), plan_len);
    auto plan = ops::cuda::plan_decode_attention(batch, nq, cache.num_kv_heads, hd, len, 132, o);
    if (force_tps > 0) ops::cuda::set_decode_split(plan, force_tps, len, o.counter_batch);
    if (grid_splits > 0) plan.grid_splits = grid_splits;
    if (deep_count) *deep_count += plan.deep_ring;
    DeviceBuffer<unsigned char> ws(std::max<size_t>(plan.workspace_bytes, 16));
    poison(ws);
    PIE_CUDA_CHECK(cudaMemset(ws.data(), 0, plan.counter_bytes));
    ops::cuda::decode_attention(d_q.view({batch, nq, hd}), cache.device(), d_o.view({batch, nq, hd}), plan, ws.data(),
                                1.f / std::sqrt(float(hd)));
    const auto out = download(d_o);
    return std::vector<T>(out.begin() + size_t(pos) * nq * hd, out.begin() + size_t(pos + 1) * nq * hd);
  }
};

// The point of the batch-invariant split: a sequence's output bytes are the same decoded alone
// and inside batches of 3, 17 and 160 other sequences of other lengths (longer ones give the
// launch more splits than the sequence has, shorter ones fewer), with the merge kernel or the
// fused merge, with the plan's CTAs per (sequence, KV head) or one CTA running every split, and
// from a plan made for a longer context (a CUDA graph's). Sequences of 300 tokens (one split)
// and 1337 (three). The check has teeth: the same sequence cut into 256-token splits instead
// gives other bytes (the tensor-core kernel rounds P per split).
using InvParam = std::tuple<int, int, int>;  // block size, head dim, group
class DecodeAttentionFixedSplit : public ::testing::TestWithParam<InvParam> {};

TEST_P(DecodeAttentionFixedSplit, SequenceBytesIndependentOfTheBatch) {
  const auto [bs, hd, group] = GetParam();
  const int nkv = 2, nq = nkv * group;
  ops::cuda::DecodePlanOptions o;
  o.fixed_split_tokens = ops::cuda::kDecodeFixedSplitTokens;
  ops::cuda::DecodePlanOptions of = o;
  of.fused_merge = true;
  of.counter_batch = 70;
  for (int target : {300, 1337}) {
    std::mt19937 rng(600 + bs + hd + group + target);
    RandomCache<bf16> alone({target}, nkv, hd, bs, rng);
    const auto q_alone = randn<bf16>(size_t(nq) * hd, rng);
    Embedded<bf16> one(alone, q_alone, {target}, 0, group, std::mt19937(1));
    int deep = 0;
    const auto ref = one.run(o, 0, 0, &deep);
    EXPECT_EQ(deep, 1) << "one sequence alone takes the deep ring";
    auto same = [&](const std::vector<bf16>& got) {
      return std::memcmp(got.data(), ref.data(), ref.size() * sizeof(bf16)) == 0;
    };
    EXPECT_TRUE(same(one.run(of, 4096))) << target << " tokens alone: fused merge, plan for 4096 tokens";
    EXPECT_FALSE(same(one.run(o, 0, 256)))
        << "256-token splits gave the bytes of 512-token ones: the comparison cannot see a split change";
    int checked = 0;
    // 160: at group 8 the plan gives a batch of 64 few enough CTAs for the deep ring (batch × KV
    // heads × CTAs per pair ≤ 2 × 132 SMs; H100 call of 2026-12-05); 160 × 2 heads exceeds it
    // even at one CTA per pair, so the 2-stage ring is covered at every group.
    for (int batch : {3, 17, 160}) {
      std::vector<int> lens(batch);
      for (auto& l : lens) l = 1 + int(rng() % 2000);
      const int pos = int(rng() % batch);
      Embedded<bf16> e(alone, q_alone, lens, pos, group, std::mt19937(10 + batch));
      EXPECT_TRUE(same(e.run(o, 0, 0, &deep))) << target << " tokens at " << pos << " of a batch of " << batch;
      EXPECT_TRUE(same(e.run(of))) << target << " tokens at " << pos << " of a batch of " << batch << ", fused merge";
      EXPECT_TRUE(same(e.run(o, 8192)))
          << target << " tokens at " << pos << " of a batch of " << batch << ", plan for 8192 tokens";
      EXPECT_TRUE(same(e.run(of, 0, 0, nullptr, 1)))
          << target << " tokens at " << pos << " of a batch of " << batch << ", fused, one CTA per pair";
      checked += 4;
    }
    EXPECT_LT(deep, 4) << "the batch of 160 must take the 2-stage ring";
    std::printf("[decode fixed split invariance bs=%d hd=%d group=%d len=%d] %d batched launches compared\n", bs, hd,
                group, target, checked + 1);
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, DecodeAttentionFixedSplit,
                         ::testing::Combine(::testing::Values(8, 16), ::testing::Values(64, 128), ::testing::Values(4, 8)),
                         [](const ::testing::TestParamInfo<InvParam>& info) {
                           return "Block" + std::to_string(std::get<0>(info.param)) + "_HeadDim" +
                                  std::to_string(std::get<1>(info.param)) + "_Group" +
                                  std::to_string(std::get<2>(info.param));
                         });
#endif  // PIE_DECODE_FIXED_SPLIT

TEST(DecodeAttentionBatch, Block16HeadDim256Group2BF16) {
  double e = run_decode<bf16, bf16>(16, 256, 2, 2, {5, 300, 1023}, 132, 12);
  EXPECT_LT(e, tol<bf16>()) << e;
}

TEST(DecodeAttentionFp8, Block16HeadDim128Group4) {
  double e = run_decode<bf16, fp8_e4m3>(16, 128, 4, 2, {9, 600, 31}, 132, 13);
  EXPECT_LT(e, tol<bf16>()) << e;
}

TEST(DecodeAttentionFp8, Block8HeadDim64Group8F16) {
  double e = run_decode<f16, fp8_e4m3>(8, 64, 8, 2, {1, 45, 1500}, 132, 14);
  EXPECT_LT(e, tol<f16>()) << e;
}

// The fp8 cache takes the tensor-core kernel at head dims 64 and 128 (every group): the same grid
// as the 16-bit one, with 2 GQA groups more, bf16 and f16 queries.
using Fp8Param = std::tuple<int, int, int, bool>;  // block size, head dim, group, bf16 queries?
class DecodeAttentionFp8Grid : public ::testing::TestWithParam<Fp8Param> {};

TEST_P(DecodeAttentionFp8Grid, MatchesCpu) {
  const auto [bs, hd, group, is_bf16] = GetParam();
  std::vector<int> lens = {1, bs + 3, 1337, 3 * bs - 1, 77};
  const uint32_t seed = 5000 + bs * hd + group * 7 + is_bf16;
  int splits = 0;
  double e = is_bf16 ? run_decode<bf16, fp8_e4m3>(bs, hd, group, 2, lens, 132, seed, &splits)
                     : run_decode<f16, fp8_e4m3>(bs, hd, group, 2, lens, 132, seed, &splits);
  EXPECT_GT(splits, 1) << "this shape should take the split-K path";
  EXPECT_LT(e, is_bf16 ? tol<bf16>() : tol<f16>()) << "rel err " << e;
  double w = is_bf16 ? run_decode<bf16, fp8_e4m3>(bs, hd, group, 2, lens, 2, seed + 1)
                     : run_decode<f16, fp8_e4m3>(bs, hd, group, 2, lens, 2, seed + 1);
  EXPECT_LT(w, is_bf16 ? tol<bf16>() : tol<f16>()) << "2-SM plan: rel err " << w;
  std::printf("[decode fp8 bs=%d hd=%d group=%d %s splits=%d] rel err %.2e / %.2e\n", bs, hd, group,
              is_bf16 ? "bf16" : "f16", splits, e, w);
}

INSTANTIATE_TEST_SUITE_P(Grid, DecodeAttentionFp8Grid,
                         ::testing::Combine(::testing::Values(8, 16, 32), ::testing::Values(64, 128),
                                            ::testing::Values(1, 2, 4, 8), ::testing::Bool()),
                         param_name);

// The CUDA-core kernel (Mode 3; the default at head dim 256, the peer of the tensor-core kernel
// in the benchmarks) over the same grid.
class DecodeAttentionCudaCoreGrid : public ::testing::TestWithParam<Param> {};

TEST_P(DecodeAttentionCudaCoreGrid, MatchesCpu) {
  const auto [bs, hd, group, is_bf16] = GetParam();
  std::vector<int> lens = {1, bs + 3, 1337, 3 * bs - 1, 77};
  const uint32_t seed = 7000 + bs * hd + group * 7 + is_bf16;
  using C = attention::Causal;
  int splits = 0;
  double e = is_bf16 ? run_decode<bf16, bf16, C, 3>(bs, hd, group, 2, lens, 132, seed, &splits)
                     : run_decode<f16, f16, C, 3>(bs, hd, group, 2, lens, 132, seed, &splits);
  EXPECT_GT(splits, 1) << "this shape should take the split-K path";
  EXPECT_LT(e, is_bf16 ? tol<bf16>() : tol<f16>()) << "rel err " << e;
  double w = is_bf16 ? run_decode<bf16, bf16, C, 3>(bs, hd, group, 2, lens, 2, seed + 1)
                     : run_decode<f16, f16, C, 3>(bs, hd, group, 2, lens, 2, seed + 1);
  EXPECT_LT(w, is_bf16 ? tol<bf16>() : tol<f16>()) << "2-SM plan: rel err " << w;
  std::printf("[decode cudacore bs=%d hd=%d group=%d %s splits=%d] rel err %.2e / %.2e\n", bs, hd, group,
              is_bf16 ? "bf16" : "f16", splits, e, w);
}

INSTANTIATE_TEST_SUITE_P(Grid, DecodeAttentionCudaCoreGrid,
                         ::testing::Combine(::testing::Values(8, 16, 32), ::testing::Values(64, 128),
                                            ::testing::Values(1, 2, 4, 8), ::testing::Bool()),
                         param_name);

TEST(DecodeAttentionCudaCore, VariantsSplitsAndLongPlansAndFp8) {
  double e = run_decode<bf16, bf16, attention::SlidingWindow<100>, 3>(16, 128, 4, 2, {50, 101, 1337}, 132, 71,
                                                                      nullptr, {}, 0, 7);
  EXPECT_LT(e, tol<bf16>()) << "window: " << e;
  attention::SoftCap cap;
  cap.logits_soft_cap = 5.f;
  e = run_decode<f16, f16, attention::SoftCap, 3>(16, 64, 8, 1, {3, 999}, 132, 72, nullptr, cap, 0, 5);
  EXPECT_LT(e, tol<f16>()) << "soft-cap: " << e;
  for (int bs : {8, 16, 32, 64}) {
    int splits = 0;
    e = run_decode<bf16, bf16, attention::Causal, 3>(bs, 128, 4, 2, {1, 63, 64, 65, 700}, 132, 74 + bs, &splits, {},
                                                     0, 11);
    EXPECT_EQ(splits, 11);
    EXPECT_LT(e, tol<bf16>()) << "bs " << bs << ": " << e;
  }
  e = run_decode<bf16, bf16, attention::Causal, 3>(16, 128, 8, 4, {1, 77, 1337}, 132, 75, nullptr, {}, 32768);
  EXPECT_LT(e, tol<bf16>()) << "long plan: " << e;
  e = run_decode<bf16, fp8_e4m3, attention::Causal, 3>(16, 128, 4, 2, {9, 600, 1337}, 132, 76);
  EXPECT_LT(e, tol<bf16>()) << "fp8: " << e;
  e = run_decode<f16, fp8_e4m3, attention::Causal, 3>(8, 64, 8, 2, {1, 45, 1500}, 132, 77);
  EXPECT_LT(e, tol<f16>()) << "fp8, f16 queries: " << e;
}

TEST(DecodeAttentionFp8, VariantsSplitsAndLongPlans) {
  // The window starting inside a stage and a split; soft-cap at group 8 in 5 splits.
  double e = run_decode<bf16, fp8_e4m3, attention::SlidingWindow<100>>(16, 128, 4, 2, {50, 101, 1337}, 132, 61,
                                                                       nullptr, {}, 0, 7);
  EXPECT_LT(e, tol<bf16>()) << "window: " << e;
  e = run_decode<f16, fp8_e4m3, attention::SlidingWindow<100>>(8, 64, 1, 4, {50, 101, 1337}, 132, 62);
  EXPECT_LT(e, tol<f16>()) << "window, bs 8 hd 64: " << e;
  attention::SoftCap cap;
  cap.logits_soft_cap = 5.f;
  e = run_decode<bf16, fp8_e4m3, attention::SoftCap>(16, 64, 8, 1, {3, 999}, 132, 63, nullptr, cap, 0, 5);
  EXPECT_LT(e, tol<bf16>()) << "soft-cap: " << e;
  // Many splits of one stage each, ragged, every block size the stages slice differently.
  for (int bs : {8, 16, 32, 64}) {
    int splits = 0;
    e = run_decode<bf16, fp8_e4m3>(bs, 128, 4, 2, {1, 63, 64, 65, 700}, 132, 64 + bs, &splits, {}, 0, 11);
    EXPECT_EQ(splits, 11);
    EXPECT_LT(e, tol<bf16>()) << "bs " << bs << ": " << e;
  }
  // A plan made for 32K tokens run on short sequences (the CUDA-graph case); head dim 256 stays
  // on the CUDA-core kernel.
  e = run_decode<bf16, fp8_e4m3>(16, 128, 8, 4, {1, 77, 1337}, 132, 65, nullptr, {}, 32768);
  EXPECT_LT(e, tol<bf16>()) << "long plan: " << e;
  e = run_decode<bf16, fp8_e4m3>(16, 256, 2, 2, {5, 300, 1023}, 132, 66);
  EXPECT_LT(e, tol<bf16>()) << "head dim 256: " << e;
}

TEST(DecodeAttentionVariant, SlidingWindow100Block16) {
  double e = run_decode<bf16, bf16, attention::SlidingWindow<100>>(16, 128, 4, 2, {50, 101, 1337}, 132, 15);
  EXPECT_LT(e, tol<bf16>()) << e;
  // The window starting inside a stage and a split: 1337 - 100 = 1237 is in neither's first token.
  for (int bs : {8, 32}) {
    e = run_decode<f16, f16, attention::SlidingWindow<100>>(bs, 64, 1, 4, {50, 101, 1337}, 132, 25 + bs, nullptr, {},
                                                            0, 7);
    EXPECT_LT(e, tol<f16>()) << "bs " << bs << ": " << e;
  }
}

TEST(DecodeAttentionVariant, SoftCap5Block32) {
  attention::SoftCap cap;
  cap.logits_soft_cap = 5.f;  // small enough that the cap changes the result
  double e = run_decode<bf16, bf16, attention::SoftCap>(32, 128, 4, 2, {50, 999}, 132, 16, nullptr, cap);
  EXPECT_LT(e, tol<bf16>()) << e;
  e = run_decode<bf16, bf16, attention::SoftCap>(16, 64, 8, 1, {3, 999}, 132, 26, nullptr, cap, 0, 5);
  EXPECT_LT(e, tol<bf16>()) << "5 splits, group 8: " << e;
}

TEST(DecodeAttentionPlan, SplitsFillTheCardAndStayMultiplesOf64) {
  for (int batch : {1, 2, 8, 16, 64}) {
    for (int len : {1000, 8192, 32768}) {
      auto p = ops::cuda::plan_decode_attention(batch, 32, 8, 128, len, 132, {});
      EXPECT_EQ(p.tokens_per_split % 64, 0);
      EXPECT_GE(int64_t(p.num_splits) * p.tokens_per_split, len);
      EXPECT_LT(int64_t(p.num_splits - 1) * p.tokens_per_split, len);  // no split is empty at len
      EXPECT_EQ(p.workspace_bytes, p.num_splits > 1 ? size_t(p.num_splits) * batch * 32 * 129 * sizeof(float) : 0u);
      EXPECT_EQ(p.warps, 4);
      if (len >= 8192 && batch <= 8) {  // few sequences, long contexts: at least one CTA per SM
        EXPECT_GE(int64_t(p.num_splits) * batch * 8, 132) << batch << " x " << len;
        EXPECT_LE(int64_t(p.num_splits) * batch * 8, 2 * 132 * p.ctas_per_sm) << batch << " x " << len;
      }
    }
  }
  // Grids of many waves need no split; no split is under 256 tokens when the unsplit grid fills the SMs.
  EXPECT_EQ(ops::cuda::plan_decode_attention(512, 32, 8, 128, 140, 132, {}).num_splits, 1);
  EXPECT_EQ(ops::cuda::plan_decode_attention(2048, 32, 8, 128, 4096, 132, {}).num_splits, 1);
  auto w = ops::cuda::plan_decode_attention(64, 32, 8, 128, 4096, 132, {});
  EXPECT_GE(w.tokens_per_split, 256);
  EXPECT_EQ(ops::cuda::plan_decode_attention(1, 32, 8, 128, 100, 132, {}).num_splits, 1);
  EXPECT_EQ(ops::cuda::plan_decode_attention(0, 32, 8, 128, 100, 132, {}).num_splits, 1);
}

// A plan made for a longer context than any sequence has (a CUDA graph captured at
// max_model_len): CTAs past a sequence's end write empty partials.
TEST(DecodeAttentionPlan, PlanForLongerContextsMatchesReference) {
  int splits = 0;
  double e = run_decode<bf16, bf16>(16, 128, 4, 8, {1, 77, 1337}, 132, 31, &splits, {}, 32768);
  EXPECT_GT(splits, 8);
  EXPECT_LT(e, tol<bf16>()) << e;
  e = run_decode<bf16, bf16, attention::SlidingWindow<100>>(8, 64, 8, 2, {1, 300, 999}, 132, 32, &splits, {}, 8192);
  EXPECT_LT(e, tol<bf16>()) << "window: " << e;
}

// Fp8 KV and head_dim 256 planned for a 1-SM card (a wide grid: few or no splits).
TEST(DecodeAttentionBatch, OneSmPlanFp8Block16HeadDim128Group4AndHeadDim256) {
  const double e8 = run_decode<bf16, fp8_e4m3>(16, 128, 4, 2, {9, 600, 1500}, 1, 18);
  EXPECT_LT(e8, tol<bf16>());
  const double e256 = run_decode<bf16, bf16>(16, 256, 2, 2, {5, 300, 1023}, 1, 19);
  EXPECT_LT(e256, tol<bf16>());
}

TEST(DecodeAttentionPlan, FewerCtasThanSmsSplitDownTo64Tokens) {
  // Batch 1 at 8 KV heads is 8 CTAs on 132 SMs: a 256-token context splits in 64-token pieces.
  auto a = ops::cuda::plan_decode_attention(1, 32, 8, 128, 256, 132, {});
  EXPECT_EQ(a.num_splits, 4);
  EXPECT_EQ(a.tokens_per_split, 64);
  // Batch 17 is 136 CTAs: splits of at least 256 tokens.
  auto c = ops::cuda::plan_decode_attention(17, 32, 8, 128, 512, 132, {});
  EXPECT_GE(c.tokens_per_split, 256);
}

TEST(DecodeAttention, BF16ShortContextsSplitIn64TokenChunksMatchReference) {
  int splits = 0;
  double e = run_decode<bf16, bf16>(16, 128, 4, 8, {256}, 132, 16, &splits);
  EXPECT_EQ(splits, 4);
  EXPECT_LT(e, tol<bf16>()) << e;
  e = run_decode<bf16, bf16>(16, 128, 4, 8, {200, 65}, 132, 17, &splits, {}, 0, 2);  // 128-token splits, one empty for 65
  EXPECT_EQ(splits, 2);
  // Many splits of one stage each, ragged, every block size the stages slice differently.
  for (int bs : {8, 16, 32, 64}) {
    e = run_decode<bf16, bf16>(bs, 128, 4, 2, {1, 63, 64, 65, 700}, 132, 40 + bs, &splits, {}, 0, 11);
    EXPECT_EQ(splits, 11);
    EXPECT_LT(e, tol<bf16>()) << "bs " << bs << ": " << e;
  }
  EXPECT_LT(e, tol<bf16>()) << e;
}

#endif  // PIE_DECODE_TEST_MERGE_ONLY

// ---- The split merge fused into the decode kernels (DecodePlan::fused_merge) ---------------------

/// Runs one decode shape with the two-kernel merge and with the fused merge on the same inputs:
/// the fused output must equal the two-kernel one bit for bit (same partials, same merge
/// arithmetic) and the CPU reference within tolerance. The fused launch runs twice eagerly and
/// then twice as a CUDA-graph replay, with the output poisoned before each, and the counters
/// must be back at zero after each: a counter left non-zero makes the next launch's merge run
/// early (or never), which the comparison catches. Returns the fused output's relative error.
/// `fo`: the options of the launch compared with the merge kernel's (by default the fused merge;
/// the cluster merge and the early pages use the same harness: run_decode_cluster).
/// The pushing cluster merge (DecodePlan::cluster_push) in the harnesses' cluster-merged launches of
/// the CUDA-core kernel: as the environment's PIE_DECODE_CLUSTER_PUSH says (unset: on, the latency
/// builds' default; `0` runs the whole binary on the distributed reads), and each way inside
/// DecodeAttentionClusterPush.* (ClusterPushSet).
bool g_cluster_push = ops::cuda::DecodePlanOptions::from_env(true).cluster_push;
struct ClusterPushSet {
  bool was = g_cluster_push;
  explicit ClusterPushSet(bool on) { g_cluster_push = on; }
  ~ClusterPushSet() { g_cluster_push = was; }
};

template <class T, class KV, class Variant = attention::Causal, int Mode = 0>
double run_decode_fused(int bs, int hd, int group, int nkv, const std::vector<int>& lens, uint32_t seed,
                        int force_splits, int plan_len = 0, Variant var = {}, int* splits_out = nullptr,
                        ops::cuda::DecodePlanOptions fo = {.fused_merge = true}, bool* cluster_out = nullptr,
                        int parts = 1) {
  std::mt19937 rng(seed);
  const int batch = static_cast<int>(lens.size()), nq = nkv * group;
  RandomCache<KV> cache(lens, nkv, hd, bs, rng);
  auto q = randn<T>(size_t(batch) * nq * hd, rng);
  auto d_q = upload(q);
  DeviceBuffer<T> d_ref(q.size()), d_o(q.size());
  const int len = std::max(*std::max_element(lens.begin(), lens.end()), plan_len);
  fo.counter_batch = batch + 3;  // as the runner: counters for more sequences than this batch
  auto two = ops::cuda::plan_decode_attention(batch, nq, nkv, hd, len, 132, ops::cuda::DecodePlanOptions{});
  auto one = ops::cuda::plan_decode_attention(batch, nq, nkv, hd, len, 132, fo);
  if (force_splits > 0) {
    const int tps = (len + force_splits - 1) / force_splits;
    ops::cuda::set_decode_split(two, tps, len);
    ops::cuda::set_decode_split(one, tps, len, fo.counter_batch);
    if (fo.cluster_merge) ops::cuda::use_decode_cluster_merge(one);
  }
  if (parts > 1) {  // both launches with group parts: the merges compared on the same CTAs' partials
    EXPECT_TRUE(ops::cuda::use_decode_group_parts(two, parts)) << two.num_splits << " splits";
    EXPECT_TRUE(ops::cuda::use_decode_group_parts(one, parts)) << one.num_splits << " splits";
  }
  if (fo.wide_warps > 0) {  // both launches on the wide CTA (DecodePlanOptions::wide_warps)
    EXPECT_TRUE(ops::cuda::use_decode_wide_ctas(two, fo.wide_warps)) << "wide CTAs: a small grid at head dim 128";
    EXPECT_TRUE(ops::cuda::use_decode_wide_ctas(one, fo.wide_warps));
    EXPECT_EQ(one.warps, fo.wide_warps);
  }
  one.cluster_push = g_cluster_push && one.cluster_merge;
  if (cluster_out) *cluster_out = one.cluster_merge;
  EXPECT_EQ(one.num_splits, two.num_splits);
  if (splits_out) *splits_out = one.num_splits;
  const float scale = 1.f / std::sqrt(float(hd));
  DeviceBuffer<unsigned char> ws_two(std::max<size_t>(two.workspace_bytes, 16)), ws(std::max<size_t>(one.workspace_bytes, 16));
  poison(ws_two);
  poison(ws);  // stale partials everywhere; the counters alone start at zero
  PIE_CUDA_CHECK(cudaMemset(ws.data(), 0, one.counter_bytes));
  poison(d_ref);
  ops::cuda::decode_attention<0, 0, Mode>(d_q.view({batch, nq, hd}), cache.device(), d_ref.view({batch, nq, hd}), two,
                                          ws_two.data(), scale, var);
  const auto ref_gpu = download(d_ref);
  std::vector<float> qf = to_f32(q), ref(q.size());
  std::vector<int32_t> cu(batch + 1);
  std::iota(cu.begin(), cu.end(), 0);
  ops::cpu::paged_attention<Variant>(qf.data(), int64_t(nq) * hd, ref.data(), int64_t(nq) * hd, cache.host(),
                                     cu.data(), nq, scale, var);
  const size_t n_counters = one.counter_bytes / sizeof(uint32_t);
  auto counters_zero = [&] {
    std::vector<uint32_t> c(n_counters);
    if (n_counters)
      PIE_CUDA_CHECK(cudaMemcpy(c.data(), ws.data(), one.counter_bytes, cudaMemcpyDeviceToHost));
    return std::all_of(c.begin(), c.end(), [](uint32_t v) { return v == 0; });
  };
  auto same_bits = [&](const std::vector<T>& o) {
    return std::memcmp(o.data(), ref_gpu.data(), o.size() * sizeof(T)) == 0;
  };
  double err = 0;
  for (int rep = 0; rep < 2; ++rep) {
    poison(d_o);
    ops::cuda::decode_attention<0, 0, Mode>(d_q.view({batch, nq, hd}), cache.device(), d_o.view({batch, nq, hd}), one,
                                            ws.data(), scale, var);
    const auto o = download(d_o);
    EXPECT_TRUE(same_bits(o)) << "eager launch " << rep << ": fused merge differs from the merge kernel";
    EXPECT_TRUE(counters_zero()) << "eager launch " << rep << " left a counter non-zero";
    err = std::max(err, rel_err(o, ref));
  }
  cudaStream_t st;
  PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  PIE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  ops::cuda::decode_attention<0, 0, Mode>(d_q.view({batch, nq, hd}), cache.device(), d_o.view({batch, nq, hd}), one,
                                          ws.data(), scale, var, st);
  PIE_CUDA_CHECK(cudaStreamEndCapture(st, &graph));
  PIE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int rep = 0; rep < 2; ++rep) {
    PIE_CUDA_CHECK(cudaMemsetAsync(d_o.data(), 0xff, d_o.size() * sizeof(T), st));
    PIE_CUDA_CHECK(cudaGraphLaunch(exec, st));
    PIE_CUDA_CHECK(cudaStreamSynchronize(st));
    const auto o = download(d_o);
    EXPECT_TRUE(same_bits(o)) << "graph replay " << rep << ": fused merge differs from the merge kernel";
    EXPECT_TRUE(counters_zero()) << "graph replay " << rep << " left a counter non-zero";
  }
  PIE_CUDA_CHECK(cudaGraphExecDestroy(exec));
  PIE_CUDA_CHECK(cudaGraphDestroy(graph));
  PIE_CUDA_CHECK(cudaStreamDestroy(st));
  EXPECT_LT(rel_err(ref_gpu, ref), (std::is_same_v<T, bf16> ? tol<bf16>() : tol<f16>())) << "two-kernel path";
  return err;
}

// PIE_DECODE_TEST_PERSISTENT_ONLY (a device-side build by hand, for the carry limit) keeps only the
// persistent grid's tests (at the end) and the harness above.
#ifndef PIE_DECODE_TEST_PERSISTENT_ONLY
enum class Kern { CudaCore16, TensorCore16, TensorCoreFp8, CudaCoreFp8 };
using FusedParam = std::tuple<int, int, int, Kern>;  // block size, head dim, group, kernel
class DecodeAttentionFusedMerge : public ::testing::TestWithParam<FusedParam> {};

template <class T, class KV, int Mode>
void fused_grid_case(int bs, int hd, int group, uint32_t seed) {
  // Ragged lengths, never multiples of the block size; split counts 1 (the kernel writes the
  // output), 2 (one empty split for the short sequences), the plan's, 11 (splits of one stage),
  // and a plan made for 8192 tokens (the graph case: most CTAs past their sequence's end).
  const std::vector<int> lens = {1, bs + 3, 1337, 3 * bs - 1, 77};
  const double t = std::is_same_v<T, bf16> ? tol<bf16>() : tol<f16>();
  int splits = 0;
  for (int force : {1, 2, 0, 11}) {
    const double e = run_decode_fused<T, KV, attention::Causal, Mode>(bs, hd, group, 2, lens, seed + force, force, 0,
                                                                      {}, &splits);
    EXPECT_LT(e, t) << "splits " << splits << ": rel err " << e;
    if (force > 0) EXPECT_EQ(splits, force);
  }
  const double e = run_decode_fused<T, KV, attention::Causal, Mode>(bs, hd, group, 2, lens, seed + 99, 0, 8192, {},
                                                                    &splits);
  EXPECT_GT(splits, 8);
  EXPECT_LT(e, t) << "plan for 8192 tokens, " << splits << " splits: rel err " << e;
}

TEST_P(DecodeAttentionFusedMerge, BitIdenticalToMergeKernel) {
  const auto [bs, hd, group, kern] = GetParam();
  const uint32_t seed = 9000 + bs * hd + group * 7 + int(kern) * 1000;
  switch (kern) {
    case Kern::CudaCore16: fused_grid_case<bf16, bf16, 0>(bs, hd, group, seed); break;
    case Kern::TensorCore16: fused_grid_case<f16, f16, 4>(bs, hd, group, seed); break;
    case Kern::TensorCoreFp8: fused_grid_case<bf16, fp8_e4m3, 0>(bs, hd, group, seed); break;
    case Kern::CudaCoreFp8: fused_grid_case<f16, fp8_e4m3, 3>(bs, hd, group, seed); break;
  }
}

std::string fused_name(const ::testing::TestParamInfo<FusedParam>& info) {
  static const char* kKern[] = {"CudaCoreBF16", "TensorCoreF16", "TensorCoreFp8", "CudaCoreFp8"};
  return "Block" + std::to_string(std::get<0>(info.param)) + "_HeadDim" + std::to_string(std::get<1>(info.param)) +
         "_Group" + std::to_string(std::get<2>(info.param)) + "_" + kKern[int(std::get<3>(info.param))];
}

INSTANTIATE_TEST_SUITE_P(Grid, DecodeAttentionFusedMerge,
                         ::testing::Combine(::testing::Values(8, 16), ::testing::Values(64, 128),
                                            ::testing::Values(1, 4, 8),
                                            ::testing::Values(Kern::CudaCore16, Kern::TensorCore16,
                                                              Kern::TensorCoreFp8, Kern::CudaCoreFp8)),
                         fused_name);

TEST(DecodeAttentionFusedMergeMore, HeadDim256VariantsAndWideBatch) {
  // Head dim 256 (4 split lanes per chunk in the merge), group 2.
  double e = run_decode_fused<bf16, bf16>(16, 256, 2, 2, {5, 300, 1023}, 81, 7);
  EXPECT_LT(e, tol<bf16>()) << "head dim 256: " << e;
  // A sliding window (CTAs before the window write empty partials) and a soft-cap, 5-7 splits.
  e = run_decode_fused<bf16, bf16, attention::SlidingWindow<100>>(16, 128, 4, 2, {50, 101, 1337}, 82, 7);
  EXPECT_LT(e, tol<bf16>()) << "window: " << e;
  e = run_decode_fused<bf16, fp8_e4m3, attention::SlidingWindow<100>>(8, 64, 8, 2, {50, 101, 1337}, 83, 7);
  EXPECT_LT(e, tol<bf16>()) << "window, fp8: " << e;
  attention::SoftCap cap;
  cap.logits_soft_cap = 5.f;
  e = run_decode_fused<f16, f16, attention::SoftCap>(16, 64, 8, 1, {3, 999}, 84, 5, 0, cap);
  EXPECT_LT(e, tol<f16>()) << "soft-cap: " << e;
  // 48 sequences x 8 KV heads x 3 splits: many pairs finishing in any order across the SMs.
  std::mt19937 rng(85);
  std::vector<int> lens(48);
  for (auto& l : lens) l = 1 + int(rng() % 900);
  e = run_decode_fused<bf16, bf16>(16, 128, 4, 8, lens, 86, 3);
  EXPECT_LT(e, tol<bf16>()) << "48 sequences: " << e;
  e = run_decode_fused<bf16, fp8_e4m3>(16, 128, 4, 8, lens, 87, 3);
  EXPECT_LT(e, tol<bf16>()) << "48 sequences, fp8: " << e;
  // Batch 1 at 32K tokens with the plan's split (64 splits of 512): the b1 ctx32768 shape.
  int splits = 0;
  e = run_decode_fused<bf16, bf16>(16, 128, 4, 8, {32768}, 88, 0, 0, {}, &splits);
  EXPECT_GT(splits, 16);
  EXPECT_LT(e, tol<bf16>()) << "b1 ctx32768: " << e;
}

TEST(DecodeAttentionFusedMergeMore, RefusesAPlanWithoutCountersForTheBatch) {
  std::mt19937 rng(90);
  RandomCache<bf16> cache({300, 700}, 2, 128, 16, rng);
  DeviceBuffer<bf16> q(size_t(2) * 8 * 128), o(q.size());
  ops::cuda::DecodePlanOptions fo;
  fo.fused_merge = true;
  auto plan = ops::cuda::plan_decode_attention(2, 8, 2, 128, 700, 132, fo);
  ops::cuda::set_decode_split(plan, 128, 700);
  plan.counter_bytes = 0;  // a hand-made plan that lost its counters
  DeviceBuffer<unsigned char> ws(plan.workspace_bytes);
  EXPECT_THROW(ops::cuda::decode_attention(q.view({2, 8, 128}), cache.device(), o.view({2, 8, 128}), plan, ws.data(),
                                           0.1f),
               std::exception);
}

#if defined(PIE_DECODE_LATENCY)
// ---- The split merge in distributed shared memory, and the early pages ----------------------------
// (DecodePlan::cluster_merge, DecodePlan::early_pages: both opt-in, compiled with -DPIE_DECODE_LATENCY=ON)

/// The cluster merge (with or without the early pages) on run_decode_fused's harness: bit-identical
/// to the merge kernel, eager and replayed from a graph. Returns the relative error to the CPU.
template <class T, class KV, class Variant = attention::Causal, int Mode = 0>
double run_decode_cluster(int bs, int hd, int group, int nkv, const std::vector<int>& lens, uint32_t seed,
                          int force_splits, bool early, Variant var = {}, bool expect_cluster = true, int parts = 1) {
  ops::cuda::DecodePlanOptions o;
  o.cluster_merge = true;
  o.early_pages = early;
  int splits = 0;
  bool cluster = false;
  const double e = run_decode_fused<T, KV, Variant, Mode>(bs, hd, group, nkv, lens, seed, force_splits, 0, var,
                                                          &splits, o, &cluster, parts);
  if (force_splits > 0) EXPECT_EQ(splits, force_splits);
  EXPECT_EQ(cluster, expect_cluster) << splits << " splits";
  return e;
}

class DecodeAttentionClusterMerge : public ::testing::TestWithParam<FusedParam> {};

template <class T, class KV, int Mode>
void cluster_grid_case(int bs, int hd, int group, uint32_t seed) {
  // Ragged lengths (1 token; shorter than one split: empty CTAs in the cluster; a page boundary
  // plus a few), 2 to 8 splits, early pages on and off. A split holds a multiple of 64 tokens
  // (set_decode_split), so the longest length, 1024, is one that 2, 3, 4 and 8 splits cut into
  // exactly that many.
  const std::vector<int> lens = {1, bs + 3, 1024, 3 * bs - 1, 77};
  const double t = std::is_same_v<T, bf16> ? tol<bf16>() : tol<f16>();
  for (int force : {2, 3, 4, 8}) {
    for (bool early : {false, true}) {
      const double e = run_decode_cluster<T, KV, attention::Causal, Mode>(bs, hd, group, 2, lens, seed + force, force,
                                                                          early);
      EXPECT_LT(e, t) << force << " splits, early pages " << early << ": rel err " << e;
    }
  }
}

TEST_P(DecodeAttentionClusterMerge, BitIdenticalToMergeKernel) {
  const auto [bs, hd, group, kern] = GetParam();
  const uint32_t seed = 19000 + bs * hd + group * 7 + int(kern) * 1000;
  switch (kern) {
    case Kern::CudaCore16: cluster_grid_case<bf16, bf16, 0>(bs, hd, group, seed); break;
    case Kern::TensorCore16: cluster_grid_case<f16, f16, 4>(bs, hd, group, seed); break;
    case Kern::TensorCoreFp8: cluster_grid_case<bf16, fp8_e4m3, 0>(bs, hd, group, seed); break;
    case Kern::CudaCoreFp8: cluster_grid_case<f16, fp8_e4m3, 3>(bs, hd, group, seed); break;
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, DecodeAttentionClusterMerge,
                         ::testing::Combine(::testing::Values(8, 16), ::testing::Values(64, 128),
                                            ::testing::Values(1, 4, 8),
                                            ::testing::Values(Kern::CudaCore16, Kern::TensorCore16,
                                                              Kern::TensorCoreFp8, Kern::CudaCoreFp8)),
                         fused_name);

TEST(DecodeAttentionClusterMergeMore, EnginePlansHeadDim256VariantsAndWideBatch) {
  // The plan's own split where it takes the cluster merge: batch 1 at 192 tokens (3 splits of 64,
  // the Qwen3-8B and -30B-A3B batch-1 shape), and at 32K tokens, whose 64 splits keep the merge
  // kernel (more than a portable cluster).
  double e = run_decode_cluster<bf16, bf16>(16, 128, 4, 8, {192}, 91, 0, true);
  EXPECT_LT(e, tol<bf16>()) << "b1 ctx192 group 4: " << e;
  e = run_decode_cluster<bf16, bf16>(16, 128, 8, 4, {192}, 92, 0, true);
  EXPECT_LT(e, tol<bf16>()) << "b1 ctx192 group 8: " << e;
  e = run_decode_cluster<bf16, bf16>(16, 128, 4, 8, {32768}, 93, 0, true, {}, false);
  EXPECT_LT(e, tol<bf16>()) << "b1 ctx32768: " << e;
  // Head dim 256 (4 split lanes per chunk: two splits per lane at 8), group 2.
  e = run_decode_cluster<bf16, bf16>(16, 256, 2, 2, {5, 300, 1023}, 94, 8, true);
  EXPECT_LT(e, tol<bf16>()) << "head dim 256: " << e;
  // A sliding window (CTAs before the window are empty) and a soft-cap.
  e = run_decode_cluster<bf16, bf16, attention::SlidingWindow<100>>(16, 128, 4, 2, {50, 101, 1337}, 95, 7, true);
  EXPECT_LT(e, tol<bf16>()) << "window: " << e;
  e = run_decode_cluster<bf16, fp8_e4m3, attention::SlidingWindow<100>>(8, 64, 8, 2, {50, 101, 1337}, 96, 7, true);
  EXPECT_LT(e, tol<bf16>()) << "window, fp8: " << e;
  attention::SoftCap cap;
  cap.logits_soft_cap = 5.f;
  e = run_decode_cluster<f16, f16, attention::SoftCap>(16, 64, 8, 1, {3, 1280}, 97, 5, true, cap);
  EXPECT_LT(e, tol<f16>()) << "soft-cap: " << e;
  // 48 sequences x 8 KV heads x 3 splits: 384 clusters in flight.
  std::mt19937 rng(98);
  std::vector<int> lens(48);
  for (auto& l : lens) l = 1 + int(rng() % 900);
  e = run_decode_cluster<bf16, bf16>(16, 128, 4, 8, lens, 99, 3, true);
  EXPECT_LT(e, tol<bf16>()) << "48 sequences: " << e;
}

TEST(DecodeAttentionEarlyPages, BitIdenticalWithoutClusterAndInFixedSplits) {
  // The early pages with the merge kernel, one split and many (no cluster), and in the fixed
  // split's split_loop launches (the tensor-core kernel, first split of each CTA only).
  ops::cuda::DecodePlanOptions o;
  o.early_pages = true;
  for (int force : {1, 3, 11}) {
    const double e = run_decode_fused<bf16, bf16>(16, 128, 4, 2, {1, 19, 700, 1337}, 100 + force, force, 0, {},
                                                  nullptr, o);
    EXPECT_LT(e, tol<bf16>()) << force << " splits: " << e;
  }
  const double e = run_decode_fused<bf16, fp8_e4m3>(8, 64, 8, 2, {1, 19, 700, 1337}, 105, 11, 0, {}, nullptr, o);
  EXPECT_LT(e, tol<bf16>()) << "fp8, 11 splits: " << e;
#if defined(PIE_DECODE_FIXED_SPLIT)
  // Fixed splits of 512 tokens, 2 CTAs per pair looping over up to 6 splits: the same inputs (one
  // seed) with and without the early pages give the same bytes.
  ops::cuda::DecodePlanOptions fx;
  fx.fixed_split_tokens = 512;
  std::vector<bf16> off, on;
  const std::vector<int> lens = {1, 19, 700, 1337, 3000};
  run_decode<bf16, bf16>(16, 128, 4, 2, lens, 132, 106, nullptr, {}, 0, 0, &off, fx, 2);
  fx.early_pages = true;
  const double f = run_decode<bf16, bf16>(16, 128, 4, 2, lens, 132, 106, nullptr, {}, 0, 0, &on, fx, 2);
  EXPECT_LT(f, tol<bf16>()) << "fixed split: " << f;
  ASSERT_EQ(on.size(), off.size());
  EXPECT_EQ(std::memcmp(on.data(), off.data(), on.size() * sizeof(bf16)), 0) << "fixed split: early pages change bytes";
#endif
}

// ---- q/k norm + RoPE and the KV write inside decode attention (kDecodeRope) ----------------------

/// The same raw qkv rows and cache through qk_norm_rope + kv_write + decode_attention and through
/// decode_attention with `rope`: the output, qkv (q and k rotated in place, v untouched) and every
/// cache byte must be the same. `force_splits` 1: one split; > 1 with the cluster merge.
/// `parts` > 1: both launches with that many CTAs per KV head (DecodePlan::group_parts).
template <class T>
void run_decode_rope(int bs, int hd, int group, int nkv, const std::vector<int>& lens, uint32_t seed, int force_splits,
                     bool norms, bool early, bool scaled_rope = false, int parts = 1, int wide_warps = 0) {
  std::mt19937 rng(seed);
  const int batch = static_cast<int>(lens.size()), nq = nkv * group;
  const int64_t row = int64_t(nq + 2 * nkv) * hd;
  RandomCache<T> cache(lens, nkv, hd, bs, rng);
  DeviceBuffer<T> pool2(cache.pool.size());
  PIE_CUDA_CHECK(cudaMemcpy(pool2.data(), cache.d_pool.data(), cache.pool.size() * sizeof(T), cudaMemcpyDeviceToDevice));
  kv::PagedKV<T> ref_cache = cache.device();
  ref_cache.data = pool2.data();
  const auto qkv = randn<T>(size_t(batch) * row, rng, 2.f);
  auto d_ref = upload(qkv), d_fus = upload(qkv);
  std::vector<int32_t> pos(batch);
  std::vector<int64_t> slots(batch);
  for (int b = 0; b < batch; ++b) {
    const int q = lens[b] - 1;
    pos[b] = std::max(q, 0) + 3 * b;  // positions need not be the context length
    slots[b] = q < 0 ? -1 : int64_t(cache.indices[cache.indptr[b] + q / bs]) * bs + q % bs;
  }
  auto d_pos = upload(pos);
  auto d_slots = upload(slots);
  auto qn = randn<T>(size_t(hd), rng, 0.2f, 1.f), kn = randn<T>(size_t(hd), rng, 0.2f, 1.f);
  auto d_qn = upload(qn), d_kn = upload(kn);
  std::vector<float> inv(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv[i] = std::pow(1e6f, -2.f * i / hd) * (i % 3 == 0 ? 0.125f : 1.f);
  auto d_inv = upload(inv);
  ops::cuda::RopeParams rp;
  rp.theta = 1e6f;
  if (scaled_rope) { rp.inv_freq = d_inv.data(); rp.mscale = 1.25f; }
  const int max_len = *std::max_element(lens.begin(), lens.end());
  ops::cuda::DecodePlanOptions o;
  o.cluster_merge = force_splits > 1;
  o.early_pages = early;
  auto plan = ops::cuda::plan_decode_attention(batch, nq, nkv, hd, max_len, 132, o);
  ops::cuda::set_decode_split(plan, (max_len + force_splits - 1) / force_splits, max_len);
  if (force_splits > 1) ASSERT_TRUE(ops::cuda::use_decode_cluster_merge(plan)) << plan.num_splits << " splits";
  if (parts > 1) ASSERT_TRUE(ops::cuda::use_decode_group_parts(plan, parts)) << plan.num_splits << " splits";
  if (wide_warps > 0)
    ASSERT_TRUE(ops::cuda::use_decode_wide_ctas(plan, wide_warps)) << "wide CTAs: a small grid at head dim 128";
  ASSERT_EQ(plan.num_splits, force_splits);
  plan.cluster_push = g_cluster_push && plan.cluster_merge;
  ASSERT_TRUE(ops::cuda::decode_rope_supported(plan, 2));
  auto heads_of = [&](DeviceBuffer<T>& buf, int64_t off, int h) {
    TensorView<T> v = TensorView<T>(buf.data() + off, {batch, h, hd}, Device::Cuda);
    v.stride[0] = row;
    return v;
  };
  auto mat_of = [&](DeviceBuffer<T>& buf, int64_t off) {
    TensorView<T> v = TensorView<T>(buf.data() + off, {batch, int64_t(nkv) * hd}, Device::Cuda);
    v.stride[0] = row;
    return v;
  };
  const float scale = 1.f / std::sqrt(float(hd));
  DeviceBuffer<T> o_ref(size_t(batch) * nq * hd), o_fus(o_ref.size());
  poison(o_ref);
  poison(o_fus);
  const T* pqn = norms ? d_qn.data() : nullptr;
  const T* pkn = norms ? d_kn.data() : nullptr;
  ops::cuda::qk_norm_rope(d_ref.view({batch, row}), d_pos.data(), nq, nkv, hd, pqn, pkn, 1e-6f, rp);
  ops::cuda::kv_write(ref_cache, mat_of(d_ref, int64_t(nq) * hd), mat_of(d_ref, int64_t(nq + nkv) * hd), d_slots.data());
  ops::cuda::decode_attention(heads_of(d_ref, 0, nq), ref_cache, o_ref.view({batch, nq, hd}), plan, nullptr, scale);
  ops::cuda::DecodeRopeArgs<T> args;
  args.positions = d_pos.data();
  args.q_norm = pqn;
  args.k_norm = pkn;
  args.eps = 1e-6f;
  args.rope = rp;
  args.k_new = d_fus.data() + int64_t(nq) * hd;
  args.v_new = d_fus.data() + int64_t(nq + nkv) * hd;
  args.row_stride = row;
  ops::cuda::decode_attention(heads_of(d_fus, 0, nq), cache.device(), o_fus.view({batch, nq, hd}), plan, nullptr, scale,
                              attention::Causal{}, nullptr, &args);
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  const auto a = download(o_ref), b = download(o_fus);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)), 0) << "attention output";
  const auto qa = download(d_ref), qb = download(d_fus);
  EXPECT_EQ(std::memcmp(qa.data(), qb.data(), qa.size() * sizeof(T)), 0) << "qkv after the op";
  std::vector<T> pa(cache.pool.size()), pb(cache.pool.size());
  PIE_CUDA_CHECK(cudaMemcpy(pa.data(), pool2.data(), pa.size() * sizeof(T), cudaMemcpyDeviceToHost));
  PIE_CUDA_CHECK(cudaMemcpy(pb.data(), cache.d_pool.data(), pb.size() * sizeof(T), cudaMemcpyDeviceToHost));
  EXPECT_EQ(std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(T)), 0) << "the KV cache";
}

using RopeParam = std::tuple<int, int, int>;  // block size, head dim, group
class DecodeAttentionRope : public ::testing::TestWithParam<RopeParam> {};

TEST_P(DecodeAttentionRope, BitIdenticalToRopeKernelKvWriteAndAttention) {
  const auto [bs, hd, group] = GetParam();
  const uint32_t seed = 29000 + bs * hd + group;
  // Length 0 (a graph's padding row: nothing written), 1, a page boundary, ragged; the longest,
  // 1024, is cut into exactly 3 or 8 splits (a split holds a multiple of 64 tokens).
  const std::vector<int> lens = {1, 0, bs, bs + 1, 150, 1024};
  for (int splits : {1, 3, 8}) {
    SCOPED_TRACE(std::to_string(splits) + " splits");
    run_decode_rope<bf16>(bs, hd, group, 2, lens, seed + splits, splits, true, false);
    run_decode_rope<bf16>(bs, hd, group, 2, lens, seed + splits, splits, true, true);  // early pages
    run_decode_rope<f16>(bs, hd, group, 2, lens, seed + 50 + splits, splits, false, true, true);  // Llama-style
  }
}

std::string rope_name(const ::testing::TestParamInfo<RopeParam>& info) {
  return "Block" + std::to_string(std::get<0>(info.param)) + "_HeadDim" + std::to_string(std::get<1>(info.param)) +
         "_Group" + std::to_string(std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Grid, DecodeAttentionRope,
                         ::testing::Combine(::testing::Values(8, 16), ::testing::Values(64, 128, 256),
                                            ::testing::Values(1, 4, 8)),
                         rope_name);

TEST(DecodeAttentionRopeMore, BatchOneShapesAndWideBatch) {
  run_decode_rope<bf16>(16, 128, 4, 8, {192}, 31001, 3, true, true);    // Qwen3-8B, batch 1
  run_decode_rope<bf16>(16, 128, 8, 4, {192}, 31002, 3, true, true);    // Qwen3-30B-A3B, batch 1
  run_decode_rope<bf16>(16, 128, 4, 8, {40}, 31003, 1, true, true);     // one split
  std::mt19937 rng(31004);
  std::vector<int> lens(64);
  for (auto& l : lens) l = int(rng() % 600);
  run_decode_rope<bf16>(16, 128, 4, 8, lens, 31005, 1, true, true);     // 64 sequences, one split each
  run_decode_rope<bf16>(16, 128, 4, 8, lens, 31006, 5, true, false);    // 512 clusters
}

TEST(DecodeAttentionRopeMore, RefusesPlansItCannotServe) {
  std::mt19937 rng(31007);
  RandomCache<bf16> cache({300, 700}, 2, 128, 16, rng);
  DeviceBuffer<bf16> qkv(size_t(2) * 12 * 128), o(size_t(2) * 8 * 128);
  DeviceBuffer<int32_t> pos(2);
  ops::cuda::DecodeRopeArgs<bf16> args;
  args.positions = pos.data();
  args.k_new = qkv.data() + 8 * 128;
  args.v_new = qkv.data() + 10 * 128;
  args.row_stride = 12 * 128;
  auto plan = ops::cuda::plan_decode_attention(2, 8, 2, 128, 700, 132, {});
  ops::cuda::set_decode_split(plan, 128, 700);  // 6 splits through the merge kernel
  DeviceBuffer<unsigned char> ws(plan.workspace_bytes);
  TensorView<bf16> q = TensorView<bf16>(qkv.data(), {2, 8, 128}, Device::Cuda);
  q.stride[0] = 12 * 128;
  EXPECT_FALSE(ops::cuda::decode_rope_supported(plan, 2));
  EXPECT_THROW(ops::cuda::decode_attention(q, cache.device(), o.view({2, 8, 128}), plan, ws.data(), 0.1f,
                                           attention::Causal{}, nullptr, &args),
               std::exception);
  EXPECT_FALSE(ops::cuda::decode_rope_supported(ops::cuda::plan_decode_attention(2, 8, 2, 128, 100, 132, {}), 1))
      << "an fp8 cache takes the tensor-core kernel";
}

// ---- two CTAs per KV head at GQA group 8 (DecodePlan::group_parts) ----------------------------

// Each part serves half of the KV head's query heads (four of eight; two of four, opt-in for
// Qwen3-8B). Against the CPU within tolerance, and
// the merges (a cluster of both parts and every split, or the merge kernel) bit-identical on the
// parts' partials: 1 split (a cluster of the two parts alone), 2 to 8 splits (8: a cluster of 16
// CTAs, past the portable size), early pages on and off, eager and replayed from a graph.
TEST(DecodeAttentionGroupParts, Groups8And4ClusterAndMergeKernelMatchCpu) {
  for (int group : {8, 4})
    for (int bs : {8, 16})
      for (int hd : {64, 128}) {
        const std::vector<int> lens = {1, bs + 3, 1024, 3 * bs - 1, 77};
        for (int force : {1, 2, 3, 4, 8})
          for (bool early : {false, true}) {
            SCOPED_TRACE("group " + std::to_string(group) + " block " + std::to_string(bs) + " head dim " +
                         std::to_string(hd) + ", " + std::to_string(force) + " splits, early pages " +
                         std::to_string(early));
            const double e = run_decode_cluster<bf16, bf16>(bs, hd, group, 2, lens, 41000 + bs * hd + force + group,
                                                            force, early, {}, force > 1, 2);
            EXPECT_LT(e, tol<bf16>()) << e;
          }
      }
  // The merge kernel's many splits (no cluster past 8 splits), f16 and a variant.
  ops::cuda::DecodePlanOptions none;
  const std::vector<int> lens = {5, 300, 1024, 2000};
  double e = run_decode_fused<f16, f16>(16, 128, 8, 2, lens, 41500, 16, 0, {}, nullptr, none, nullptr, 2);
  EXPECT_LT(e, tol<f16>()) << "16 splits: " << e;
  e = run_decode_fused<bf16, bf16, attention::SlidingWindow<100>>(16, 128, 8, 2, lens, 41501, 5, 0, {}, nullptr, none,
                                                                  nullptr, 2);
  EXPECT_LT(e, tol<bf16>()) << "sliding window, 5 splits: " << e;
  // The engine's batch-1 plan for Qwen3-30B-A3B (4 KV heads) at its 512-token graph class.
  ops::cuda::DecodePlanOptions eng = ops::cuda::DecodePlanOptions::from_env(true);
  eng.cluster_merge = eng.split_groups = true;
  const auto b1 = ops::cuda::plan_decode_attention(1, 32, 4, 128, 512, 132, eng);
  EXPECT_EQ(b1.group_parts, 2);
  EXPECT_EQ(b1.num_splits, 8);
  EXPECT_TRUE(b1.cluster_merge);
  // A 192-token context in the 512-token class's 8 splits of 64 (5 of them empty), as the engine
  // plans it: the plan's longest context is the class's, so a 512-token sequence rides along.
  e = run_decode_cluster<bf16, bf16>(16, 128, 8, 4, {192, 512}, 41502, 8, true, {}, true, 2);
  EXPECT_LT(e, tol<bf16>()) << "ctx192 in 8 splits: " << e;
  e = run_decode_cluster<bf16, bf16>(16, 128, 4, 8, {192, 512}, 41503, 8, true, {}, true, 2);
  EXPECT_LT(e, tol<bf16>()) << "Qwen3-8B ctx192 in 8 splits: " << e;
}

// The RoPE inside attention with group parts: each owner part rotates the K row for its stage,
// the lead alone writes the cache row and K back; output, qkv and the cache bit-identical to the
// RoPE kernel + KV write + attention on the same parts.
TEST(DecodeAttentionGroupParts, RopeInsideBitIdenticalToSeparateKernels) {
  for (int group : {8, 4})
    for (int bs : {8, 16})
      for (int hd : {64, 128, 256}) {
        const std::vector<int> lens = {1, 0, bs, bs + 1, 150, 1024};
        for (int splits : {1, 3, 8}) {
          SCOPED_TRACE("group " + std::to_string(group) + " block " + std::to_string(bs) + " head dim " +
                       std::to_string(hd) + ", " + std::to_string(splits) + " splits");
          run_decode_rope<bf16>(bs, hd, group, 2, lens, 42000 + bs * hd + splits + group, splits, true, true, false, 2);
          run_decode_rope<f16>(bs, hd, group, 2, lens, 42100 + bs * hd + splits + group, splits, false, false, true, 2);
        }
      }
  // Qwen3-30B-A3B and Qwen3-8B: a 192-token context in the 512-token class's 8 splits (the plan's
  // longest context is the class's: set_decode_split rounds a split to 64 tokens).
  run_decode_rope<bf16>(16, 128, 8, 4, {192, 512}, 42200, 8, true, true, false, 2);
  run_decode_rope<bf16>(16, 128, 4, 8, {192, 512}, 42201, 8, true, true, false, 2);
}

// The wide CTAs (8 and 16 warps: a 64-token split is one stage; DecodePlanOptions::wide_warps) at
// head dim 128 with at most 4 query heads per CTA: groups 4 and 2 alone, groups 8 and 4 in two parts;
// ragged lengths (1 token, a page and a bit, the 512-token class's shapes), 1 to 8 splits; the
// cluster merge bit-identical to the merge kernel on the same CTAs, both within tolerance of the
// CPU; the RoPE inside bit-identical to the separate kernels on it.
TEST(DecodeAttentionWideCtas, EightAndSixteenWarpsMatchCpuClusterAndMergeKernelAndRopeInside) {
  struct Case { int group, nkv, parts; };
  for (int warps : {8, 16})
  for (const Case c : {Case{4, 8, 1}, Case{2, 4, 1}, Case{8, 4, 2}, Case{4, 8, 2}})
    for (const auto& lens : {std::vector<int>{192, 512}, std::vector<int>{1, 17, 300}})
      for (int force : {1, 3, 8}) {
        SCOPED_TRACE(std::to_string(warps) + " warps, group " + std::to_string(c.group) + " parts " +
                     std::to_string(c.parts) + ", " +
                     std::to_string(force) + " splits, " + std::to_string(lens.size()) + " sequences");
        ops::cuda::DecodePlanOptions o;
        o.cluster_merge = force > 1;
        o.early_pages = true;
        o.wide_warps = warps;
        const double e = run_decode_fused<bf16, bf16>(16, 128, c.group, c.nkv, lens, 43000 + force + c.group, force, 0,
                                                      {}, nullptr, o, nullptr, c.parts);
        EXPECT_LT(e, tol<bf16>()) << e;
        if (lens.size() == 2)  // (its harness asks for exactly `force` splits: 300 tokens in 8 is 5 of 64)
          run_decode_rope<bf16>(16, 128, c.group, c.nkv, lens, 43100 + force + c.group, force, true, true, false,
                                c.parts, warps);
      }
}

// The pushing cluster merge (DecodePlan::cluster_push: every CTA writes its partials into split 0's
// shared memory, split 0 merges alone) and the distributed reads it replaced (push off): each
// bit-identical to the merge kernel on the same CTAs and within tolerance of the CPU, for the
// CUDA-core kernel's shapes of the cluster merge — groups 1, 4 and 8, group parts, 4/8/16 warps,
// head dims 64 and 128, 2 to 8 splits (8 with parts: a 16-CTA cluster), ragged lengths with empty
// CTAs, early pages on and off, eager and replayed from a graph — and the RoPE inside
// bit-identical to the separate kernels with it.
TEST(DecodeAttentionClusterPush, BitIdenticalToMergeKernelAndRopeInside) {
  for (bool on : {true, false}) {
  SCOPED_TRACE(on ? "push" : "distributed reads");
  ClusterPushSet push(on);
  for (int bs : {8, 16})
    for (int hd : {64, 128})
      for (int group : {1, 4, 8})
        for (int force : {2, 3, 8}) {
          SCOPED_TRACE("block " + std::to_string(bs) + " head dim " + std::to_string(hd) + " group " +
                       std::to_string(group) + ", " + std::to_string(force) + " splits");
          const std::vector<int> lens = {1, bs + 3, 1024, 3 * bs - 1, 77};
          double e = run_decode_cluster<bf16, bf16>(bs, hd, group, 2, lens, 44000 + bs * hd + force + group, force,
                                                    force != 3);
          EXPECT_LT(e, tol<bf16>()) << e;
          if (group >= 4) {
            e = run_decode_cluster<bf16, bf16>(bs, hd, group, 2, lens, 44100 + bs * hd + force + group, force, true, {},
                                               true, 2);
            EXPECT_LT(e, tol<bf16>()) << "parts: " << e;
          }
        }
  struct Case { int group, nkv, parts; };
  for (int warps : {8, 16})
    for (const Case c : {Case{4, 8, 1}, Case{8, 4, 2}, Case{4, 8, 2}})
      for (int force : {3, 8}) {
        SCOPED_TRACE(std::to_string(warps) + " warps, group " + std::to_string(c.group) + " parts " +
                     std::to_string(c.parts) + ", " + std::to_string(force) + " splits");
        ops::cuda::DecodePlanOptions o;
        o.cluster_merge = o.early_pages = true;
        o.wide_warps = warps;
        const double e = run_decode_fused<bf16, bf16>(16, 128, c.group, c.nkv, {192, 512}, 44200 + force + c.group,
                                                      force, 0, {}, nullptr, o, nullptr, c.parts);
        EXPECT_LT(e, tol<bf16>()) << e;
        run_decode_rope<bf16>(16, 128, c.group, c.nkv, {192, 512}, 44300 + force + c.group, force, true, true, false,
                              c.parts, warps);
      }
  for (int group : {8, 4})
    for (int splits : {3, 8}) {
      run_decode_rope<bf16>(16, 128, group, 8 / (group / 4), {1, 0, 16, 150, 1024}, 44400 + splits + group, splits,
                            true, true, false, 2);
      run_decode_rope<f16>(8, 64, group, 2, {1, 0, 8, 150, 1024}, 44500 + splits + group, splits, false, false, true);
    }
  }
}

// Where parts cannot serve: group 2 and the fused merge (the fixed split and clusters past 16 CTAs:
// the CPU plan tests); decode_attention refuses a parts plan over an fp8 cache.
TEST(DecodeAttentionGroupParts, RefusedWhereItCannotServe) {
  auto p2 = ops::cuda::plan_decode_attention(1, 32, 16, 128, 192, 132, {});
  EXPECT_FALSE(ops::cuda::use_decode_group_parts(p2, 2)) << "group 2";
  ops::cuda::DecodePlanOptions fu;
  fu.fused_merge = true;
  auto pf = ops::cuda::plan_decode_attention(1, 32, 4, 128, 192, 132, fu);
  EXPECT_FALSE(ops::cuda::use_decode_group_parts(pf, 2)) << "fused merge";
  auto p8 = ops::cuda::plan_decode_attention(1, 32, 4, 128, 512, 132, {});
  ops::cuda::use_decode_cluster_merge(p8);
  ASSERT_TRUE(ops::cuda::use_decode_group_parts(p8, 2));
  std::mt19937 rng(42300);
  RandomCache<fp8_e4m3> cache({192}, 4, 128, 16, rng);
  DeviceBuffer<bf16> q(size_t(32) * 128), o(q.size());
  EXPECT_THROW(ops::cuda::decode_attention(q.view({1, 32, 128}), cache.device(), o.view({1, 32, 128}), p8, nullptr,
                                           0.1f),
               std::exception)
      << "an fp8 cache";
}
#endif  // PIE_DECODE_LATENCY
#endif  // PIE_DECODE_TEST_PERSISTENT_ONLY

}  // namespace

// ---- the persistent tensor-core kernel (DecodePlan::persistent) ----------------------------------

// One-split plans whose (sequence, KV head) pairs outnumber the resident CTAs (1,500 sequences × 2
// KV heads over 132 × 4 slots on an H100/H200: ~6 pairs a CTA, so the ring runs across pairs):
// the persistent grid against the one-item kernel bit for bit (eager and graph replay) and against
// the CPU, at ragged contexts of 1 to 300 tokens (a pair of 1 to 5 stages, fewer than the ring's 2
// included), for the engine's shape (block 16, head dim 128, group 4), head dim 64 at group 8 with
// block 8, and a sliding window that starts inside a stage.
TEST(DecodeAttentionPersistent, Fp8BitIdenticalToTheOneItemKernelAndMatchesCpu) {
  std::mt19937 rng(4242);
  std::vector<int> lens(1500);
  for (int& l : lens) l = 1 + int(rng() % 300);
  lens[0] = 1, lens[1] = 64, lens[2] = 65, lens[3] = 300, lens[4] = 129;
  ops::cuda::DecodePlanOptions o;
  o.persistent = true;
  struct Shape { int bs, hd, group; };
  for (const Shape& sh : {Shape{16, 128, 4}, Shape{8, 64, 8}}) {
    SCOPED_TRACE(testing::Message() << "block " << sh.bs << " head dim " << sh.hd << " group " << sh.group);
    const auto plan = ops::cuda::plan_decode_attention(int(lens.size()), 2 * sh.group, 2, sh.hd, 300, 132, o);
    EXPECT_TRUE(plan.persistent && plan.num_splits == 1) << plan.num_splits << " splits";
    const int64_t before = ops::cuda::detail::g_decode_persistent_launches.load();
    const double e = run_decode_fused<bf16, fp8_e4m3>(sh.bs, sh.hd, sh.group, 2, lens, 500 + sh.hd, 0, 0, {}, nullptr, o);
    EXPECT_LT(e, tol<bf16>()) << "rel err against the CPU " << e;
    EXPECT_EQ(ops::cuda::detail::g_decode_persistent_launches.load() - before, 3) << "two eager launches, one captured";
  }
  const int64_t before = ops::cuda::detail::g_decode_persistent_launches.load();
  const double e = run_decode_fused<bf16, fp8_e4m3, attention::SlidingWindow<100>>(16, 128, 4, 2, lens, 777, 0, 0, {},
                                                                                  nullptr, o);
  EXPECT_LT(e, tol<bf16>()) << "sliding window: " << e;
  EXPECT_EQ(ops::cuda::detail::g_decode_persistent_launches.load() - before, 3);
}
