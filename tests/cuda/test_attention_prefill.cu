// Paged prefill attention (tensor cores) against ops::cpu::paged_attention: fresh prompts,
// chunked prefills over a cached prefix, single-row chunks, ragged lengths, over block size ×
// head dim × GQA group × dtype, plus fp8 KV, head dim 256 and the variants.
// The default run goes through the Hopper kernel v3 (the engine's default); ctest runs the binary
// again with PIE_PREFILL_SM90=2 (v2), 3p (v3's persistent grid), 3c (2-CTA clusters), and v3's
// head-dim-64 shapes 3w (3 consumer warpgroups), 3e (exp2 emulation) and 3we.
// Every Hopper kernel and grid, chosen at run time by PIE_PREFILL_SM90 (the engine compiles v3's
// default shape only: attention_prefill.cuh).
#undef PIE_PREFILL_SM90_V3
#define PIE_PREFILL_SM90_V3 1
#define PIE_PREFILL_SM90_ALL 1
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>

#include "pie/ops/cpu/attention.hpp"
#include "pie/ops/cuda/attention_prefill.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;

/// lens: tokens in the cache per sequence after this step; qlens: query rows (the last ones).
template <class T, class KV, class Variant = attention::Causal>
double run_prefill(int bs, int hd, int group, int nkv, const std::vector<int>& lens, const std::vector<int>& qlens,
                   uint32_t seed, Variant var = {}) {
  std::mt19937 rng(seed);
  const int nseq = static_cast<int>(lens.size()), nq = nkv * group;
  RandomCache<KV> cache(lens, nkv, hd, bs, rng);
  std::vector<int32_t> cu(nseq + 1, 0);
  for (int b = 0; b < nseq; ++b) cu[b + 1] = cu[b] + qlens[b];
  const int rows = cu[nseq];
  const int max_q = *std::max_element(qlens.begin(), qlens.end());
  // q rows strided inside a wider buffer, as they sit in the fused qkv output
  const int64_t row_stride = int64_t(nq + 2 * nkv) * hd;
  auto qbuf = randn<T>(size_t(rows) * row_stride, rng);
  auto d_q = upload(qbuf);
  auto d_cu = upload(cu);
  DeviceBuffer<T> d_o(size_t(rows) * nq * hd);
  poison(d_o);
  TensorView<T> qv(d_q.data(), {rows, nq, hd}, Device::Cuda);
  qv.stride[0] = row_stride;
  const float scale = 1.f / std::sqrt(float(hd));
  ops::cuda::prefill_attention(qv, cache.device(), d_cu.data(), max_q, d_o.view({rows, nq, hd}), scale, var);
  auto o = download(d_o);
  std::vector<float> qf = to_f32(qbuf), ref(size_t(rows) * nq * hd);
  ops::cpu::paged_attention<Variant>(qf.data(), row_stride, ref.data(), int64_t(nq) * hd, cache.host(), cu.data(), nq,
                                     scale, var);
  return rel_err(o, ref);
}

using Param = std::tuple<int, int, int, bool>;  // block size, head dim, group, bf16?
class PrefillAttention : public ::testing::TestWithParam<Param> {};

TEST_P(PrefillAttention, MatchesCpu) {
  const auto [bs, hd, group, is_bf16] = GetParam();
  // fresh prompt; chunk after a cached prefix; a one-row chunk; a long chunk spanning tiles
  std::vector<int> lens = {77, 130 + 45, 3 * bs + 1, 300};
  std::vector<int> qlens = {77, 45, 1, 203};
  const int nkv = 2;
  double e = is_bf16 ? run_prefill<bf16, bf16>(bs, hd, group, nkv, lens, qlens, 3000 + bs * hd + group)
                     : run_prefill<f16, f16>(bs, hd, group, nkv, lens, qlens, 4000 + bs * hd + group);
  EXPECT_LT(e, is_bf16 ? tol<bf16>() : tol<f16>()) << "rel err " << e;
  std::printf("[prefill bs=%d hd=%d group=%d %s] rel err %.2e\n", bs, hd, group, is_bf16 ? "bf16" : "f16", e);
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  const int bs = std::get<0>(info.param), hd = std::get<1>(info.param), g = std::get<2>(info.param);
  return "Block" + std::to_string(bs) + "_HeadDim" + std::to_string(hd) + "_Group" + std::to_string(g) +
         (std::get<3>(info.param) ? "_BF16" : "_F16");
}

INSTANTIATE_TEST_SUITE_P(Grid, PrefillAttention,
                         ::testing::Combine(::testing::Values(8, 16, 32), ::testing::Values(64, 128),
                                            ::testing::Values(1, 4, 8), ::testing::Bool()),
                         param_name);

// The variants and long contexts over the Hopper path's grid (block 8/16 × head dim 64/128 ×
// group 1/4/8): chunks after a long cached prefix wrap the K/V stage ring several times.
using VParam = std::tuple<int, int, int>;  // block size, head dim, group
class PrefillAttentionVariants : public ::testing::TestWithParam<VParam> {};

TEST_P(PrefillAttentionVariants, MatchCpu) {
  const auto [bs, hd, group] = GetParam();
  const std::vector<int> lens = {1300, 700, 2 * bs + 5}, qlens = {260, 700, 2 * bs + 5};
  const uint32_t seed = 5000 + bs * hd + group;
  double e1 = run_prefill<bf16, bf16>(bs, hd, group, 2, lens, qlens, seed);
  double e2 = run_prefill<bf16, bf16, attention::SlidingWindow<100>>(bs, hd, group, 2, lens, qlens, seed + 1);
  attention::SoftCap cap;
  cap.logits_soft_cap = 5.f;
  double e3 = run_prefill<f16, f16, attention::SoftCap>(bs, hd, group, 2, lens, qlens, seed + 2, cap);
  EXPECT_LT(e1, tol<bf16>()) << "causal " << e1;
  EXPECT_LT(e2, tol<bf16>()) << "sliding window " << e2;
  EXPECT_LT(e3, tol<f16>()) << "soft cap " << e3;
  std::printf("[prefill long bs=%d hd=%d group=%d] rel err causal %.2e window %.2e softcap %.2e\n", bs, hd, group, e1,
              e2, e3);
}

INSTANTIATE_TEST_SUITE_P(Grid, PrefillAttentionVariants,
                         ::testing::Combine(::testing::Values(8, 16), ::testing::Values(64, 128),
                                            ::testing::Values(1, 4, 8)),
                         [](const ::testing::TestParamInfo<VParam>& info) {
                           return "Block" + std::to_string(std::get<0>(info.param)) + "_HeadDim" +
                                  std::to_string(std::get<1>(info.param)) + "_Group" +
                                  std::to_string(std::get<2>(info.param));
                         });

TEST(PrefillAttentionShape, HeadDim256Block16BF16) {
  double e = run_prefill<bf16, bf16>(16, 256, 2, 2, {150, 70}, {150, 33}, 21);
  EXPECT_LT(e, tol<bf16>()) << e;
}

TEST(PrefillAttentionShape, LongChunk1000Block32Group4BF16) {
  double e = run_prefill<bf16, bf16>(32, 128, 4, 2, {1000 + 517, 999}, {1000, 999}, 22);
  EXPECT_LT(e, tol<bf16>()) << e;
}

TEST(PrefillAttentionFp8, Block16HeadDim128Group4) {
  double e = run_prefill<bf16, fp8_e4m3>(16, 128, 4, 2, {200, 90}, {120, 90}, 23);
  EXPECT_LT(e, tol<bf16>()) << e;
}

TEST(PrefillAttentionVariant, SlidingWindow100Block16) {
  double e = run_prefill<bf16, bf16, attention::SlidingWindow<100>>(16, 128, 4, 2, {400, 150}, {300, 20}, 24);
  EXPECT_LT(e, tol<bf16>()) << e;
}

TEST(PrefillAttentionVariant, SoftCap5Block8) {
  attention::SoftCap cap;
  cap.logits_soft_cap = 5.f;
  double e = run_prefill<f16, f16, attention::SoftCap>(8, 64, 4, 2, {260, 40}, {200, 40}, 25, cap);
  EXPECT_LT(e, tol<f16>()) << e;
}

// The engine's batch-invariant mode sends every attention row through this kernel, decode rows
// as one-row prefills: a row's output must depend only on its own query and context, not on the
// chunk it sits in, nor on the CTA's warp count. One cached sequence of 300 tokens; its rows
// computed as one chunk, as chunks of 37, one row at a time, and mixed (single rows beside
// chunks), also with one-warp CTAs and GQA-packed rows (as the engine runs decode rows in
// batch-invariant mode) — bit for bit the same.
template <class T, class Variant = attention::Causal>
void check_row_invariance(int bs, int hd, int group, Variant var = {}) {
  const int L = 300, nkv = 2, nq = nkv * group;
  std::mt19937 rng(bs * 1000 + hd + group);
  RandomCache<T> cache({L}, nkv, hd, bs, rng);
  auto qall = randn<T>(size_t(L) * nq * hd, rng);
  // A launch: segments [r0, r1) of the one sequence, each a "sequence" whose cache ends at r1.
  // one_warp: 16-row CTAs; pack: a CTA's rows are (token, head) pairs of one GQA group.
  auto launch = [&](const std::vector<std::pair<int, int>>& segs, bool one_warp = false, bool pack = false) {
    std::vector<int32_t> cu{0}, indptr{0}, indices, last;
    std::vector<T> q;
    int max_q = 0;
    for (auto [r0, r1] : segs) {
      const int pages = (r1 + bs - 1) / bs;
      indices.insert(indices.end(), cache.indices.begin(), cache.indices.begin() + pages);
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last.push_back((r1 - 1) % bs + 1);
      cu.push_back(cu.back() + (r1 - r0));
      q.insert(q.end(), qall.begin() + size_t(r0) * nq * hd, qall.begin() + size_t(r1) * nq * hd);
      max_q = std::max(max_q, r1 - r0);
    }
    const int rows = cu.back();
    auto d_q = upload(q);
    auto d_cu = upload(cu), d_indptr = upload(indptr), d_indices = upload(indices), d_last = upload(last);
    DeviceBuffer<T> d_o(size_t(rows) * nq * hd);
    poison(d_o);
    kv::PagedKV<T> kv{cache.d_pool.data(), nkv, hd, bs, static_cast<int>(segs.size()), d_indptr.data(),
                      d_indices.data(), d_last.data()};
    const float scale = 1.f / std::sqrt(float(hd));
    auto qv = d_q.view({rows, nq, hd});
    auto ov = d_o.view({rows, nq, hd});
    if (one_warp && pack)  // the engine's decode rows in batch-invariant mode
      ops::cuda::prefill_attention<1, true>(qv, kv, d_cu.data(), max_q, ov, scale, var);
    else if (one_warp)
      ops::cuda::prefill_attention<1>(qv, kv, d_cu.data(), max_q, ov, scale, var);
    else if (pack)
      ops::cuda::prefill_attention<0, true>(qv, kv, d_cu.data(), max_q, ov, scale, var);
    else  // the mma.sync kernel's default shape (8 warps); the default call takes the Hopper path
      ops::cuda::prefill_attention<8>(qv, kv, d_cu.data(), max_q, ov, scale, var);
    return download(d_o);
  };
  auto whole = launch({{0, L}});
  auto same = [&](const std::vector<T>& got, const char* how) {
    ASSERT_EQ(got.size(), whole.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i].bits, whole[i].bits) << how << ": row " << i / (nq * hd) << " differs (block " << bs
                                            << ", head_dim " << hd << ", group " << group << ")";
  };
  std::vector<std::pair<int, int>> chunks, singles, mixed;
  for (int r = 0; r < L; r += 37) chunks.push_back({r, std::min(L, r + 37)});
  for (int r = 0; r < L; ++r) singles.push_back({r, r + 1});
  for (int r = 0; r < L;) {  // alternate one-row "decodes" with chunks of 1..64 rows
    const int n = (r / 7) % 2 ? 1 : 1 + (r * 13) % 64;
    mixed.push_back({r, std::min(L, r + n)});
    r += n;
  }
  same(launch(chunks), "chunks of 37");
  same(launch(singles), "one row per launch row");
  same(launch(singles, /*one_warp=*/true), "one row per launch row, one-warp CTAs");
  same(launch(chunks, /*one_warp=*/true), "chunks of 37, one-warp CTAs");
  same(launch(singles, true, /*pack=*/true), "one row per launch row, one-warp CTAs, GQA-packed");
  same(launch(chunks, false, /*pack=*/true), "chunks of 37, GQA-packed");
  same(launch(mixed, true, /*pack=*/true), "single rows beside chunks, one-warp CTAs, GQA-packed");
  same(launch(mixed), "single rows beside chunks");
}

// Hopper kernel v3 (opt-in): ctest runs this binary again with PIE_PREFILL_SM90=3 (tests named
// v3.*), =3p (v3p.*, the persistent grid) and =3c (v3c.*, 2-CTA clusters with K/V multicast),
// so the grids above go through v3. This test makes a silent fallback to v2
// or to one box per half a failure there, and checks v3 on the largest group (8 heads, 128-row
// tiles of 16 tokens) with a context of many tiles, so the three-stage rings wrap several times.
TEST(PrefillAttentionV3, TakenWhenAskedFor) {
  namespace v3 = ops::cuda::sm90::v3;
  if (v3::version() != 3) GTEST_SKIP() << "PIE_PREFILL_SM90 is not 3, 3p, 3c or 3h";
  int dev = 0, major = 0, minor = 0;
  PIE_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (major != 9 || minor != 0) GTEST_SKIP() << "not sm_90";
  using D = __nv_bfloat16;
  ASSERT_TRUE((v3::available<128, D, attention::Causal>()));
  ASSERT_TRUE((v3::available<64, D, attention::Causal>()));
  std::mt19937 rng(77);
  const int bs = 16, hd = 128, nkv = 2, group = 8, n = 1000;
  RandomCache<bf16> cache({n}, nkv, hd, bs, rng);
  auto q = upload(randn<bf16>(size_t(n) * nkv * group * hd, rng));
  DeviceBuffer<bf16> o(q.size());
  auto cu = upload(std::vector<int32_t>{0, n});
  ops::cuda::sm90::Params<D, attention::Causal> sp{};
  sp.q = reinterpret_cast<const D*>(q.data()); sp.q_stride = int64_t(nkv) * group * hd;
  sp.out = reinterpret_cast<D*>(o.data()); sp.out_stride = sp.q_stride;
  auto kv = cache.device();
  sp.indptr = kv.indptr; sp.indices = kv.indices; sp.last_page_len = kv.last_page_len;
  sp.cu_q = cu.data(); sp.num_kv_heads = nkv; sp.block_size = bs; sp.bs_shift = 4; sp.group = group;
  sp.sm_scale = 1.f / std::sqrt(float(hd));
  const auto box = v3::launch<128, D, attention::Causal>(sp, reinterpret_cast<const D*>(kv.data), 1, n, nullptr,
                                                         v3::requested_box(), v3::requested_grid());
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(int(box), int(v3::requested_box())) << "the driver refused the 5-D page map";
  const double e = run_prefill<bf16, bf16>(bs, hd, group, nkv, {n + 900}, {n}, 78);
  EXPECT_LT(e, tol<bf16>()) << e;
  std::printf("[prefill v3 box=%s%s] 1000 rows after 900 cached, group 8: rel err %.2e\n",
              box == ops::cuda::sm90::plan::Box::kPage ? "page" : "halves",
              v3::requested_grid() == ops::cuda::sm90::plan::Grid::kPersistent ? ", persistent"
              : v3::requested_grid() == ops::cuda::sm90::plan::Grid::kCluster  ? ", cluster"
                                                                               : "",
              e);
}

// v3's shapes (PIE_PREFILL_SM90=3w: 3 consumer warpgroups, 192-row tiles; 3e: part of the exps
// on the FMA pipe; 3we: both; ctest runs v3w.*, v3e.*, v3we.*): the shape asked for is the one
// launched at head dim 64 (no silent fallback), the variants that keep 2 warpgroups keep them,
// and a long chunk over a longer prefix at group 8 (192-row tiles of 24 tokens, mostly unmasked
// key tiles, where the emulated exps are taken; the six-stage rings wrap many times) matches the
// CPU. The grids above go through the shape too.
TEST(PrefillAttentionV3, ShapeTakenWhenAskedFor) {
  namespace v3 = ops::cuda::sm90::v3;
  using Grid = ops::cuda::sm90::plan::Grid;
  const v3::Shape want = v3::requested_shape();
  if (v3::version() != 3 || want.nc == 0) GTEST_SKIP() << "PIE_PREFILL_SM90 is not 3w, 3e or 3we";
  const v3::Shape got = v3::effective_shape<64, attention::Causal>(want, v3::requested_grid());
  EXPECT_EQ(got.nc, want.nc);
  EXPECT_EQ(got.emu, want.emu);
  EXPECT_EQ((v3::effective_shape<128, attention::Causal>(want, Grid::kTile).nc), 2);
  EXPECT_EQ((v3::effective_shape<64, attention::SoftCap>(want, Grid::kTile).nc), 2);
  EXPECT_EQ((v3::effective_shape<64, attention::SlidingWindow<100>>(want, Grid::kTile).nc), 2);
  EXPECT_EQ((v3::effective_shape<64, attention::Causal>(want, Grid::kPersistent).nc), 2);
  const double e = run_prefill<bf16, bf16>(16, 64, 8, 2, {1000 + 900}, {1000}, 79);
  EXPECT_LT(e, tol<bf16>()) << e;
  std::printf("[prefill v3 shape nc=%d emu=%d] hd 64, 1000 rows after 900 cached, group 8: rel err %.2e\n", got.nc,
              got.emu, e);
}

TEST(PrefillAttentionRowInvariance, Block16HeadDim128Group4BF16) { check_row_invariance<bf16>(16, 128, 4); }
TEST(PrefillAttentionRowInvariance, Block8HeadDim64Group2BF16) { check_row_invariance<bf16>(8, 64, 2); }
TEST(PrefillAttentionRowInvariance, Block32HeadDim128Group8F16) { check_row_invariance<f16>(32, 128, 8); }
TEST(PrefillAttentionRowInvariance, SlidingWindow100Block16HeadDim128Group4BF16) {
  check_row_invariance<bf16>(16, 128, 4, attention::SlidingWindow<100>{});
}

}  // namespace
