// Paged decode attention against ops::cpu::paged_attention, over block size × head dim × GQA
// group × dtype, ragged context lengths that are not multiples of the block size, split-K on
// and off, fp8 KV, head dim 256 and the sliding-window / soft-cap variants. The tensor-core kernel
// (head dims 64/128) is the default for fp8 K/V and Mode 4 for 16-bit K/V (the 16-bit grid below);
// the CUDA-core kernel (the 16-bit default, Mode 3 where fp8 would take tensor cores) has its own grid.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>

#include "pie/ops/cpu/attention.hpp"
#include "pie/ops/cuda/attention_decode.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;

/// Runs one decode launch and compares with the CPU op; returns the relative error. Mode 3: the
/// CUDA-core kernel where the tensor-core one is the default; 4: the tensor-core kernel on 16-bit
/// K/V (decode_attention's Mode).
template <class T, class KV, class Variant = attention::Causal, int Mode = 0>
double run_decode(int bs, int hd, int group, int nkv, const std::vector<int>& lens, int sm_count, uint32_t seed,
                  int* splits_out = nullptr, Variant var = {}, int plan_len = 0, int force_splits = 0) {
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
  auto plan = ops::cuda::plan_decode_attention(batch, nq, nkv, hd, std::max(max_len, plan_len), sm_count);
  if (force_splits > 0) {
    const int len = std::max(max_len, plan_len);
    plan.tokens_per_split = ((len + force_splits - 1) / force_splits + 63) / 64 * 64;
    plan.num_splits = (len + plan.tokens_per_split - 1) / plan.tokens_per_split;
    plan.workspace_bytes = plan.num_splits > 1 ? size_t(plan.num_splits) * batch * nq * (hd + 1) * sizeof(float) : 0;
  }
  if (splits_out) *splits_out = plan.num_splits;
  DeviceBuffer<unsigned char> ws(plan.workspace_bytes);
  if (plan.workspace_bytes) poison(ws);
  const float scale = 1.f / std::sqrt(float(hd));
  ops::cuda::decode_attention<0, 0, Mode>(d_q.view({batch, nq, hd}), cache.device(), d_o.view({batch, nq, hd}), plan,
                                          ws.data(), scale, var);
  auto o = download(d_o);
  std::vector<float> qf = to_f32(q), ref(q.size());
  std::vector<int32_t> cu(batch + 1);
  std::iota(cu.begin(), cu.end(), 0);
  ops::cpu::paged_attention<Variant>(qf.data(), int64_t(nq) * hd, ref.data(), int64_t(nq) * hd, cache.host(),
                                     cu.data(), nq, scale, var);
  return rel_err(o, ref);
}

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
      auto p = ops::cuda::plan_decode_attention(batch, 32, 8, 128, len, 132);
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
  EXPECT_EQ(ops::cuda::plan_decode_attention(512, 32, 8, 128, 140, 132).num_splits, 1);
  EXPECT_EQ(ops::cuda::plan_decode_attention(2048, 32, 8, 128, 4096, 132).num_splits, 1);
  auto w = ops::cuda::plan_decode_attention(64, 32, 8, 128, 4096, 132);
  EXPECT_GE(w.tokens_per_split, 256);
  EXPECT_EQ(ops::cuda::plan_decode_attention(1, 32, 8, 128, 100, 132).num_splits, 1);
  EXPECT_EQ(ops::cuda::plan_decode_attention(0, 32, 8, 128, 100, 132).num_splits, 1);
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
  auto a = ops::cuda::plan_decode_attention(1, 32, 8, 128, 256, 132);
  EXPECT_EQ(a.num_splits, 4);
  EXPECT_EQ(a.tokens_per_split, 64);
  // Batch 17 is 136 CTAs: splits of at least 256 tokens.
  auto c = ops::cuda::plan_decode_attention(17, 32, 8, 128, 512, 132);
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

}  // namespace
