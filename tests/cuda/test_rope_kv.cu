// The fused q/k-norm + RoPE + KV-cache write (ops/cuda/rope_kv.cuh) against the separate
// kernels it replaces (qk_norm_rope, then kv_write; each tested against the CPU ops in
// test_elementwise.cu): q/k outputs and cache bytes bit-identical over head dims 64/128/256,
// GQA groups, f16/bf16 activations, 16-bit and fp8 caches, blocks of 8 and 16, padding rows
// (slot −1), with and without q/k norms, and the RoPE scalings of the config.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <sstream>

#include "pie/ops/cpu/rope.hpp"
#include "pie/ops/cuda/kv_write.cuh"
#include "pie/ops/cuda/rope.cuh"
#include "pie/ops/cuda/rope_kv.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;
using ops::RopeScaling;

struct Case {
  int n, nq, nkv, hd, bs;
  bool norm;
  RopeScaling::Type scaling;
};

const char* scaling_name(RopeScaling::Type t) {
  switch (t) {
    case RopeScaling::Type::None: return "none";
    case RopeScaling::Type::Linear: return "linear";
    case RopeScaling::Type::Llama3: return "llama3";
    case RopeScaling::Type::Yarn: return "yarn";
  }
  return "?";
}

template <class T, class KV>
void check_fused(const Case& cs, uint32_t seed) {
  std::mt19937 rng(seed);
  const int n = cs.n, nq = cs.nq, nkv = cs.nkv, hd = cs.hd, bs = cs.bs, width = (nq + 2 * nkv) * hd;
  const int nblocks = (n + bs - 1) / bs + 3;
  auto qkv = randn<T>(size_t(n) * width, rng, 2.f);
  auto qn = randn<T>(hd, rng, 0.3f, 1.f), kn = randn<T>(hd, rng, 0.3f, 1.f);
  std::vector<int32_t> pos(n);
  for (auto& p : pos) p = int(rng() % 40000);
  std::vector<int64_t> slots(size_t(nblocks) * bs);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(n);
  for (int t = 2; t < n; t += 7) slots[t] = -1;  // graph padding rows: nothing stored

  RopeScaling sc;
  sc.type = cs.scaling;
  sc.factor = 4.0;
  sc.original_max_position_embeddings = 8192;
  auto table = ops::cpu::rope_inv_freq(hd, 1e6, sc, 32768);
  auto dfreq = upload(table.inv_freq);
  ops::cuda::RopeParams rp;
  rp.theta = 1e6f;
  // No scaling: the kernel's own powf path (inv_freq null), as a caller without a table runs it.
  rp.inv_freq = cs.scaling == RopeScaling::Type::None ? nullptr : dfreq.data();
  rp.mscale = table.attention_factor;

  auto dqn = upload(qn), dkn = upload(kn);
  auto dpos = upload(pos);
  auto dslots = upload(slots);
  const T* pqn = cs.norm ? dqn.data() : nullptr;
  const T* pkn = cs.norm ? dkn.data() : nullptr;
  // fp8: a different scale per head and for K and V, so a swapped or shifted scale differs.
  std::vector<float> ks, vs;
  for (int h = 0; h < nkv; ++h) {
    ks.push_back(0.05f * (1 + h));
    vs.push_back(0.08f / (1 + h));
  }
  auto dks = upload(ks), dvs = upload(vs);
  const size_t pool = size_t(nblocks) * 2 * nkv * bs * hd;

  // Separate kernels.
  auto d_sep = upload(qkv);
  DeviceBuffer<KV> pool_sep(pool);
  poison(pool_sep);
  kv::PagedKV<KV> c_sep{pool_sep.data(), nkv, hd, bs, 0, nullptr, nullptr, nullptr, dks.data(), dvs.data()};
  ops::cuda::qk_norm_rope(d_sep.view({n, width}), dpos.data(), nq, nkv, hd, pqn, pkn, 1e-6f, rp);
  TensorView<T> k(d_sep.data() + nq * hd, {n, nkv * hd}, Device::Cuda);
  TensorView<T> v(d_sep.data() + (nq + nkv) * hd, {n, nkv * hd}, Device::Cuda);
  k.stride[0] = v.stride[0] = width;
  ops::cuda::kv_write(c_sep, k, v, dslots.data());

  // Fused.
  auto d_fused = upload(qkv);
  DeviceBuffer<KV> pool_fused(pool);
  poison(pool_fused);
  kv::PagedKV<KV> c_fused{pool_fused.data(), nkv, hd, bs, 0, nullptr, nullptr, nullptr, dks.data(), dvs.data()};
  ops::cuda::qk_norm_rope_kv(d_fused.view({n, width}), dpos.data(), nq, nkv, hd, pqn, pkn, 1e-6f, rp, c_fused,
                             dslots.data());

  const auto q_sep = download(d_sep), q_fused = download(d_fused);
  const auto p_sep = download(pool_sep), p_fused = download(pool_fused);
  std::ostringstream what;
  what << tname<T>() << "→" << tname<KV>() << " tokens=" << n << " heads=" << nq << "/" << nkv << " hd=" << hd
       << " bs=" << bs << " norm=" << cs.norm << " scaling=" << scaling_name(cs.scaling);
  ASSERT_EQ(0, std::memcmp(q_sep.data(), q_fused.data(), q_sep.size() * sizeof(T))) << "qkv differs: " << what.str();
  size_t diff = 0, written = 0;
  for (size_t i = 0; i < pool; ++i) {
    diff += std::memcmp(&p_sep[i], &p_fused[i], sizeof(KV)) != 0;
    uint8_t ones[sizeof(KV)];
    std::memset(ones, 0xff, sizeof(KV));
    written += std::memcmp(&p_sep[i], ones, sizeof(KV)) != 0;
  }
  EXPECT_EQ(diff, 0u) << "cache differs: " << what.str();
  // The test means something: every stored row was written (2·nkv·hd elements per real slot)
  // and the padding rows were not.
  size_t real = 0;
  for (int64_t s : slots) real += s >= 0;
  EXPECT_EQ(written, real * 2 * nkv * hd) << what.str();
}

template <class T> class RopeKv : public ::testing::Test {};
using Types = ::testing::Types<f16, bf16>;
TYPED_TEST_SUITE(RopeKv, Types);

// Few tokens (a token's heads over several CTAs, as at decode), 29, and 600 (≥ 4·SMs: one CTA
// per token); GQA groups of 4 (Qwen3-8B's 32/8), 8, 1 (MHA) and a single KV head.
std::vector<Case> cases() {
  struct Heads { int nq, nkv; };
  std::vector<Case> v;
  for (int hd : {64, 128, 256})
    for (Heads h : {Heads{32, 8}, Heads{16, 2}, Heads{4, 4}, Heads{8, 1}})
      for (int n : {1, 5, 29, 600})
        for (int bs : {8, 16})
          for (bool norm : {true, false}) v.push_back({n, h.nq, h.nkv, hd, bs, norm, RopeScaling::Type::None});
  // RoPE scalings (the inv_freq table and yarn's cos/sin multiplier).
  for (auto sc : {RopeScaling::Type::Linear, RopeScaling::Type::Llama3, RopeScaling::Type::Yarn})
    for (int hd : {64, 128, 256}) {
      v.push_back({5, 32, 8, hd, 16, true, sc});
      v.push_back({29, 16, 2, hd, 8, false, sc});
    }
  return v;
}

TYPED_TEST(RopeKv, FusedEqualsQkNormRopeThenKvWriteBitwise) {
  uint32_t seed = 1;
  for (const Case& c : cases()) check_fused<TypeParam, TypeParam>(c, seed++);
}

TYPED_TEST(RopeKv, FusedEqualsSeparateFp8CacheBitwise) {
  uint32_t seed = 1000;
  for (const Case& c : cases()) check_fused<TypeParam, fp8_e4m3>(c, seed++);
}

TEST(RopeKvErrors, CacheShapeMismatchIsRefused) {
  const int n = 2, nq = 8, nkv = 2, hd = 128, width = (nq + 2 * nkv) * hd;
  DeviceBuffer<bf16> qkv(size_t(n) * width);
  DeviceBuffer<bf16> pool(size_t(4) * 2 * nkv * 16 * hd);
  DeviceBuffer<int32_t> pos(n);
  DeviceBuffer<int64_t> slots(n);
  kv::PagedKV<bf16> c{pool.data(), nkv + 1, hd, 16, 0, nullptr, nullptr, nullptr};
  EXPECT_THROW(ops::cuda::qk_norm_rope_kv(qkv.view({n, width}), pos.data(), nq, nkv, hd,
                                          static_cast<const bf16*>(nullptr), static_cast<const bf16*>(nullptr), 1e-6f,
                                          ops::cuda::RopeParams{}, c, slots.data()),
               Error);
}

}  // namespace
