// The fp8 cache's prefill through a 16-bit staging pool and the Hopper kernel v3
// (ops/cuda/prefill_fp8_kv.cuh) against ops::cpu::paged_attention and against the mma.sync kernel
// that reads the fp8 pages itself: fresh prompts, chunks after a cached prefix, a one-row chunk,
// per-head K and V scales that differ (RandomCache), over block size 8/16 × head dim 64/128 × GQA
// group 1/4/8, plus the sliding window and soft cap. The call sees the sequences after the first
// through a table whose indptr starts past that sequence's pages, as the engine's prefill rows
// follow its decode rows. Compiled as the engine compiles v3 (its default shape only).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>

#include "pie/ops/cpu/attention.hpp"
#include "pie/ops/cuda/prefill_fp8_kv.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;

bool hopper() { return ops::cuda::sm90::hopper_device(); }

struct StagedResult {
  bool ran = false;
  double vs_cpu = 0, vs_direct = 0;
};

/// lens: tokens cached per sequence after the step; qlens: its query rows (the last ones). The
/// staged call covers sequences 1 … n − 1; `cap_pages` / `cap_seqs` size the staging (0: enough).
template <class Variant = attention::Causal>
StagedResult run_staged(int bs, int hd, int group, int nkv, const std::vector<int>& lens, const std::vector<int>& qlens,
                        uint32_t seed, Variant var = {}, int64_t cap_pages = 0, int cap_seqs = 0) {
  std::mt19937 rng(seed);
  const int nseq = static_cast<int>(lens.size()), nq = nkv * group;
  RandomCache<fp8_e4m3> cache(lens, nkv, hd, bs, rng);
  std::vector<int32_t> cu(nseq + 1, 0);
  for (int b = 0; b < nseq; ++b) cu[b + 1] = cu[b] + qlens[b];
  const int rows = cu[nseq], r0 = cu[1], tail_rows = rows - r0;
  int max_q = 0;
  for (int b = 1; b < nseq; ++b) max_q = std::max(max_q, qlens[b]);
  const int64_t row_stride = int64_t(nq + 2 * nkv) * hd;  // q rows inside the fused qkv output
  auto qbuf = randn<bf16>(size_t(rows) * row_stride, rng);
  auto d_q = upload(qbuf);
  std::vector<int32_t> cu_tail(nseq);
  for (int b = 1; b <= nseq; ++b) cu_tail[b - 1] = cu[b] - r0;
  auto d_cu = upload(cu_tail);
  auto view = cache.device();
  view.indptr += 1, view.last_page_len += 1, view.batch_size -= 1;  // sequences 1 … n − 1
  TensorView<bf16> qv(d_q.data() + int64_t(r0) * row_stride, {tail_rows, nq, hd}, Device::Cuda);
  qv.stride[0] = row_stride;
  DeviceBuffer<bf16> d_staged(size_t(tail_rows) * nq * hd), d_direct(d_staged.size());
  poison(d_staged);
  const float scale = 1.f / std::sqrt(float(hd));
  const int64_t pages = cache.indptr[nseq] - cache.indptr[1];
  ops::cuda::Fp8KvPrefillStaging<bf16> staging(cap_pages > 0 ? cap_pages : pages + 3, nkv, bs, hd,
                                               cap_seqs > 0 ? cap_seqs : nseq);
  StagedResult r;
  r.ran = ops::cuda::prefill_attention_fp8_staged(qv, view, d_cu.data(), max_q, d_staged.view({tail_rows, nq, hd}),
                                                  scale, var, nullptr, staging, pages);
  ops::cuda::prefill_attention(qv, view, d_cu.data(), max_q, d_direct.view({tail_rows, nq, hd}), scale, var);
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  if (!r.ran) return r;
  std::vector<float> qf = to_f32(qbuf), ref(size_t(rows) * nq * hd);
  ops::cpu::paged_attention<Variant>(qf.data(), row_stride, ref.data(), int64_t(nq) * hd, cache.host(), cu.data(), nq,
                                     scale, var);
  const std::vector<float> ref_tail(ref.begin() + int64_t(r0) * nq * hd, ref.end());
  const auto staged = download(d_staged);
  r.vs_cpu = rel_err(staged, ref_tail);
  r.vs_direct = rel_err(staged, to_f32(download(d_direct)));
  return r;
}

using Param = std::tuple<int, int, int>;  // block size, head dim, group
class PrefillFp8Staged : public ::testing::TestWithParam<Param> {};

TEST_P(PrefillFp8Staged, MatchesCpuAndTheFp8Kernel) {
  if (!hopper()) GTEST_SKIP() << "not sm_90: v3 is Hopper's";
  const auto [bs, hd, group] = GetParam();
  // sequence 0 stands for the decode rows before; then a fresh prompt, a chunk after a cached
  // prefix, a one-row chunk, a long chunk spanning row and key tiles
  const std::vector<int> lens = {37, 77, 130 + 45, 3 * bs + 1, 300}, qlens = {1, 77, 45, 1, 203};
  const auto r = run_staged(bs, hd, group, 2, lens, qlens, 6000 + bs * hd + group);
  ASSERT_TRUE(r.ran) << "the staged path refused a shape it takes";
  EXPECT_LT(r.vs_cpu, tol<bf16>()) << "against the CPU " << r.vs_cpu;
  EXPECT_LT(r.vs_direct, tol<bf16>()) << "against the mma.sync fp8 kernel " << r.vs_direct;
  std::printf("[prefill fp8 staged bs=%d hd=%d group=%d] rel err vs CPU %.2e, vs the fp8 kernel %.2e\n", bs, hd, group,
              r.vs_cpu, r.vs_direct);
}

INSTANTIATE_TEST_SUITE_P(Grid, PrefillFp8Staged,
                         ::testing::Combine(::testing::Values(8, 16), ::testing::Values(64, 128),
                                            ::testing::Values(1, 4, 8)),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           return "Block" + std::to_string(std::get<0>(info.param)) + "_HeadDim" +
                                  std::to_string(std::get<1>(info.param)) + "_Group" +
                                  std::to_string(std::get<2>(info.param));
                         });

TEST(PrefillFp8StagedVariant, SlidingWindow100AndSoftCap5Block16HeadDim128Group4) {
  if (!hopper()) GTEST_SKIP() << "not sm_90: v3 is Hopper's";
  const std::vector<int> lens = {20, 400, 150}, qlens = {1, 300, 20};
  const auto w = run_staged(16, 128, 4, 2, lens, qlens, 31, attention::SlidingWindow<100>{});
  attention::SoftCap cap;
  cap.logits_soft_cap = 5.f;
  const auto c = run_staged(16, 128, 4, 2, lens, qlens, 32, cap);
  ASSERT_TRUE(w.ran && c.ran);
  EXPECT_LT(w.vs_cpu, tol<bf16>()) << w.vs_cpu;
  EXPECT_LT(w.vs_direct, tol<bf16>()) << w.vs_direct;
  EXPECT_LT(c.vs_cpu, tol<bf16>()) << c.vs_cpu;
  EXPECT_LT(c.vs_direct, tol<bf16>()) << c.vs_direct;
}

// Past the staging's capacity (pages or sequences) the call launches nothing and says so; the
// caller's fallback then runs (run_staged's direct call).
TEST(PrefillFp8StagedCapacity, RefusesPagesOrSequencesPastTheStaging) {
  if (!hopper()) GTEST_SKIP() << "not sm_90: v3 is Hopper's";
  const std::vector<int> lens = {5, 200, 90}, qlens = {1, 120, 90};
  const int pages = (200 + 15) / 16 + (90 + 15) / 16;
  EXPECT_FALSE(run_staged(16, 128, 4, 2, lens, qlens, 41, attention::Causal{}, pages - 1).ran);
  EXPECT_FALSE(run_staged(16, 128, 4, 2, lens, qlens, 42, attention::Causal{}, 0, 1).ran);
  EXPECT_TRUE(run_staged(16, 128, 4, 2, lens, qlens, 43, attention::Causal{}, pages).ran);
}

}  // namespace
