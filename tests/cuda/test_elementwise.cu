// Fused elementwise kernels against the CPU ops: RMSNorm (plain and residual-fused), q/k norm +
// RoPE, KV write (f16/bf16 and fp8), SiLU·mul, residual add and embedding gather, in f16 and bf16.
#include <gtest/gtest.h>

#include <cstring>

#include "pie/ops/cpu/activation.hpp"
#include "pie/ops/cpu/embedding.hpp"
#include "pie/ops/cpu/kv_write.hpp"
#include "pie/ops/cpu/rms_norm.hpp"
#include "pie/ops/cpu/rope.hpp"
#include "pie/ops/cuda/activation.cuh"
#include "pie/ops/cuda/add.cuh"
#include "pie/ops/cuda/embedding.cuh"
#include "pie/ops/cuda/kv_scales.cuh"
#include "pie/ops/cuda/kv_write.cuh"
#include "pie/ops/cuda/norm.cuh"
#include "pie/ops/cuda/rope.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;

template <class T> class Elementwise : public ::testing::Test {};
using Types = ::testing::Types<f16, bf16>;
TYPED_TEST_SUITE(Elementwise, Types);

TYPED_TEST(Elementwise, RmsNormRows37Dim5120) {
  using T = TypeParam;
  std::mt19937 rng(1);
  const int n = 37, dim = 5120;
  auto x = randn<T>(size_t(n) * dim, rng, 2.f);
  auto w = randn<T>(dim, rng, 1.f, 1.f);
  auto dx = upload(x), dw = upload(w);
  ops::cuda::rms_norm(dx.view({n, dim}), dw.view({dim}), 1e-6f);
  auto out = download(dx);
  auto ref = to_f32(x);
  ops::cpu::rms_norm(ref.data(), w.data(), n, dim, 1e-6f);
  EXPECT_LT(rel_err(out, ref), tol<T>());
}

TYPED_TEST(Elementwise, AddRmsNormRows19Dim4096) {
  using T = TypeParam;
  for (bool first : {false, true}) {
    std::mt19937 rng(2 + first);
    const int n = 19, dim = 4096;
    auto x = randn<T>(size_t(n) * dim, rng);
    auto r = randn<T>(size_t(n) * dim, rng);
    auto w = randn<T>(dim, rng, 0.5f, 1.f);
    auto dx = upload(x), dr = upload(r), dw = upload(w);
    if (first) poison(dr);  // first layer: the residual is written, never read
    ops::cuda::add_rms_norm(dx.view({n, dim}), dr.view({n, dim}), dw.view({dim}), 1e-6f, first);
    auto xo = download(dx);
    auto ro = download(dr);
    auto xr = to_f32(x), rr = to_f32(r);
    ops::cpu::add_rms_norm(xr.data(), rr.data(), w.data(), n, dim, 1e-6f, first);
    EXPECT_LT(rel_err(xo, xr), tol<T>()) << "first=" << first;
    EXPECT_LT(rel_err(ro, rr), tol<T>()) << "first=" << first;
  }
}

// Shapes: a few tokens with Qwen3-8B's 32/8 heads (a token's heads over several CTAs),
// 29 tokens of 8/2 heads, and 600 tokens (≥ 4·SMs: one CTA per token).
TYPED_TEST(Elementwise, QkNormRopeHeadDims64_128_256DecodeAndPrefillGrids) {
  using T = TypeParam;
  struct Shape { int n, nq, nkv; };
  for (Shape sh : {Shape{5, 32, 8}, Shape{29, 8, 2}, Shape{600, 8, 2}})
  for (int hd : {64, 128, 256}) {
    for (bool norm : {true, false}) {
      std::mt19937 rng(hd + norm + sh.n);
      const int n = sh.n, nq = sh.nq, nkv = sh.nkv, width = (nq + 2 * nkv) * hd;
      auto qkv = randn<T>(size_t(n) * width, rng);
      auto qn = randn<T>(hd, rng, 0.3f, 1.f), kn = randn<T>(hd, rng, 0.3f, 1.f);
      std::vector<int32_t> pos(n);
      for (auto& p : pos) p = int(rng() % 40000);
      auto table = ops::cpu::rope_inv_freq(hd, 1e6, {});
      auto d = upload(qkv);
      auto dqn = upload(qn), dkn = upload(kn);
      auto dpos = upload(pos);
      auto dfreq = upload(table.inv_freq);
      ops::cuda::RopeParams rp;
      rp.inv_freq = dfreq.data();
      ops::cuda::qk_norm_rope(d.view({n, width}), dpos.data(), nq, nkv, hd, norm ? dqn.data() : nullptr,
                              norm ? dkn.data() : nullptr, 1e-6f, rp);
      auto out = download(d);
      auto ref = to_f32(qkv);
      if (norm) {
        ops::cpu::head_rms_norm(ref.data(), width, n, nq, hd, qn.data(), 1e-6f);
        ops::cpu::head_rms_norm(ref.data() + nq * hd, width, n, nkv, hd, kn.data(), 1e-6f);
      }
      ops::cpu::rope_neox(ref.data(), width, n, nq + nkv, hd, pos.data(), table);
      EXPECT_LT(rel_err(out, ref), tol<T>()) << "hd=" << hd << " norm=" << norm << " tokens=" << n << " heads=" << nq;
      for (int t = 0; t < n; ++t)  // V is not touched
        ASSERT_EQ(0, std::memcmp(&out[size_t(t) * width + (nq + nkv) * hd], &qkv[size_t(t) * width + (nq + nkv) * hd],
                                 size_t(nkv) * hd * sizeof(T)));
    }
  }
}

template <class T, class KV>
void check_kv_write(int bs, uint32_t seed) {
  std::mt19937 rng(seed);
  const int n = 45, nkv = 4, hd = 128, nblocks = 16, width = (8 + 2 * nkv) * hd;
  auto qkv = randn<T>(size_t(n) * width, rng);
  std::vector<int64_t> slots(size_t(nblocks) * bs);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(n);
  slots[3] = -1;  // padding row
  std::vector<KV> pool(size_t(nblocks) * 2 * nkv * bs * hd);
  std::memset(pool.data(), 0xff, pool.size() * sizeof(KV));
  auto dq = upload(qkv);
  auto dslots = upload(slots);
  DeviceBuffer<KV> dpool(pool.size());
  poison(dpool);
  // fp8: a different scale for each head and for K and V (a 16-bit cache ignores them).
  std::vector<float> ks, vs;
  for (int h = 0; h < nkv; ++h) {
    ks.push_back(0.02f * (1 + h));
    vs.push_back(0.05f / (1 + h));
  }
  auto dks = upload(ks), dvs = upload(vs);
  kv::PagedKV<KV> dc{dpool.data(), nkv, hd, bs, 0, nullptr, nullptr, nullptr, dks.data(), dvs.data()};
  TensorView<T> k(dq.data() + 8 * hd, {n, nkv * hd}, Device::Cuda), v(dq.data() + (8 + nkv) * hd, {n, nkv * hd}, Device::Cuda);
  k.stride[0] = v.stride[0] = width;
  ops::cuda::kv_write(dc, k, v, dslots.data());
  auto out = download(dpool);
  auto f = to_f32(qkv);
  kv::PagedKV<KV> hc{pool.data(), nkv, hd, bs, 0, nullptr, nullptr, nullptr, ks.data(), vs.data()};
  ops::cpu::kv_write(hc, f.data() + 8 * hd, f.data() + (8 + nkv) * hd, width, n, slots.data());
  // Same rounding on both sides: the pools must agree bit for bit (untouched slots stay NaN).
  size_t diff = 0;
  for (size_t i = 0; i < pool.size(); ++i) diff += std::memcmp(&out[i], &pool[i], sizeof(KV)) != 0;
  EXPECT_EQ(diff, 0u) << tname<T>() << "→" << tname<KV>() << " bs=" << bs;
}

TYPED_TEST(Elementwise, KvWriteBlocks8_16_32) {
  for (int bs : {8, 16, 32}) check_kv_write<TypeParam, TypeParam>(bs, 40 + bs);
}
TYPED_TEST(Elementwise, KvWriteFp8Block16) { check_kv_write<TypeParam, fp8_e4m3>(16, 50); }

// --calculate-kv-scales on the device against kv::head_amax on the CPU: per kv head of K and V,
// the scale from the amax over the real rows (padding rows, slot < 0, hold the largest values
// and must be skipped). The amax is exact; the scale within 4 ulps (device division).
TYPED_TEST(Elementwise, KvCalculateScalesMatchesCpu) {
  using T = TypeParam;
  for (int n : {1, 45, 3000}) {
    std::mt19937 rng(60 + n);
    const int nkv = 4, hd = 128, width = (8 + 2 * nkv) * hd;
    auto qkv = randn<T>(size_t(n) * width, rng);
    for (int h = 0; h < nkv; ++h)  // heads of different magnitudes
      for (int t = 0; t < n; ++t)
        for (int i = 0; i < hd; ++i) {
          T& x = qkv[size_t(t) * width + (8 + h) * hd + i];
          x = from_float<T>(to_float(x) * (0.25f + h));
        }
    std::vector<int64_t> slots(n);
    std::iota(slots.begin(), slots.end(), 0);
    if (n > 1) {
      slots[n / 2] = -1;
      for (int i = 0; i < 2 * nkv * hd; ++i) qkv[size_t(n / 2) * width + 8 * hd + i] = from_float<T>(1000.f);
    }
    auto dq = upload(qkv);
    auto dslots = upload(slots);
    DeviceBuffer<float> dk(nkv), dv(nkv);
    TensorView<T> k(dq.data() + 8 * hd, {n, nkv * hd}, Device::Cuda), v(dq.data() + (8 + nkv) * hd, {n, nkv * hd}, Device::Cuda);
    k.stride[0] = v.stride[0] = width;
    ops::cuda::kv_calculate_scales(k, v, dslots.data(), nkv, hd, kv::kKvScaleMargin, dk.data(), dv.data());
    const auto gk = download(dk), gv = download(dv);
    const auto f = to_f32(qkv);
    std::vector<float> ak(nkv), av(nkv);
    kv::head_amax(f.data() + 8 * hd, width, n, slots.data(), nkv, hd, ak.data());
    kv::head_amax(f.data() + (8 + nkv) * hd, width, n, slots.data(), nkv, hd, av.data());
    for (int h = 0; h < nkv; ++h) {
      EXPECT_FLOAT_EQ(gk[h], kv::kv_scale_from_amax(ak[h], kv::kKvScaleMargin)) << tname<T>() << " n=" << n << " head " << h;
      EXPECT_FLOAT_EQ(gv[h], kv::kv_scale_from_amax(av[h], kv::kKvScaleMargin)) << tname<T>() << " n=" << n << " head " << h;
      EXPECT_LT(ak[h], 1000.f);  // the padding row was skipped
    }
  }
}

TYPED_TEST(Elementwise, SiluAndMulRows33Inter1536) {
  using T = TypeParam;
  std::mt19937 rng(6);
  const int n = 33, inter = 1536;
  auto gu = randn<T>(size_t(n) * 2 * inter, rng, 2.f);
  auto dgu = upload(gu);
  DeviceBuffer<T> dout(size_t(n) * inter);
  poison(dout);
  ops::cuda::silu_and_mul(dgu.view({n, 2 * inter}), dout.view({n, inter}));
  auto out = download(dout);
  auto f = to_f32(gu);
  std::vector<float> ref(size_t(n) * inter);
  ops::cpu::silu_and_mul(f.data(), n, inter, ref.data());
  EXPECT_LT(rel_err(out, ref), tol<T>());
}

// acc += x on strided rows (x is a column slice of a wider activation): one rounding to T of
// the float sum, exactly as the CPU's float add of the same T values rounded once.
TYPED_TEST(Elementwise, AddStridedRows29Dim640) {
  using T = TypeParam;
  std::mt19937 rng(12);
  const int n = 29, dim = 640, wide = 1024;
  auto acc = randn<T>(size_t(n) * dim, rng, 1.f);
  auto x = randn<T>(size_t(n) * wide, rng, 1.f);
  auto dacc = upload(acc);
  auto dx = upload(x);
  TensorView<T> xv = dx.view({n, dim});
  xv.stride[0] = wide;
  ops::cuda::add(dacc.view({n, dim}), xv);
  auto out = download(dacc);
  auto fa = to_f32(acc), fx = to_f32(x);
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < dim; ++i) {
      const float want = to_float(from_float<T>(fa[size_t(t) * dim + i] + fx[size_t(t) * wide + i]));
      ASSERT_EQ(to_float(out[size_t(t) * dim + i]), want) << "row " << t << " col " << i;
    }
}

TYPED_TEST(Elementwise, EmbeddingVocab1000Hidden512) {
  using T = TypeParam;
  std::mt19937 rng(7);
  const int vocab = 1000, hidden = 512, n = 41;
  auto table = randn<T>(size_t(vocab) * hidden, rng);
  std::vector<int32_t> ids(n);
  for (auto& i : ids) i = int(rng() % vocab);
  auto dt = upload(table);
  auto dids = upload(ids);
  DeviceBuffer<T> dout(size_t(n) * hidden);
  poison(dout);
  DeviceBuffer<int32_t> bad(1);
  PIE_CUDA_CHECK(cudaMemset(bad.data(), 0, sizeof(int32_t)));
  ops::cuda::embedding(dt.view({vocab, hidden}), dids.data(), dout.view({n, hidden}), bad.data());
  auto out = download(dout);
  std::vector<float> ref(size_t(n) * hidden);
  ops::cpu::embedding(table.data(), vocab, hidden, ids.data(), n, ref.data());
  EXPECT_EQ(rel_err(out, ref), 0.0);
  EXPECT_EQ(download(bad)[0], 0);
  // An id outside the vocabulary is reported, not read.
  ids[5] = vocab + 7;
  auto dids2 = upload(ids);
  ops::cuda::embedding(dt.view({vocab, hidden}), dids2.data(), dout.view({n, hidden}), bad.data());
  EXPECT_EQ(download(bad)[0], vocab + 7);
}

}  // namespace
