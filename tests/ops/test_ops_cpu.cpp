// CPU ops against float64 references written the naive way, on random (never zero) inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "pie/ops/cpu/ops.hpp"

namespace {
using namespace pie;
using namespace pie::ops::cpu;

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
double rel_err(const std::vector<float>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_FALSE(std::isnan(a[i]));
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

template <class T> std::vector<T> cast(const std::vector<float>& v) {
  std::vector<T> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = from_float<T>(v[i]);
  return o;
}

template <class T> class LinearTyped : public ::testing::Test {};
using WeightTypes = ::testing::Types<float, bf16, f16>;
TYPED_TEST_SUITE(LinearTyped, WeightTypes);

TYPED_TEST(LinearTyped, MatchesFloat64Reference) {
  using T = TypeParam;
  for (auto [n, in, out] : {std::tuple{1, 8, 4}, {5, 37, 19}, {13, 64, 130}, {33, 129, 67}}) {
    auto x = randn(size_t(n) * in, 1), wf = randn(size_t(out) * in, 2), bf = randn(out, 3);
    auto w = cast<T>(wf), b = cast<T>(bf);
    std::vector<float> y(size_t(n) * out, NAN);
    linear(x.data(), n, in, w.data(), out, b.data(), y.data());
    std::vector<double> ref(y.size());
    for (int t = 0; t < n; ++t)
      for (int o = 0; o < out; ++o) {
        double s = to_float(b[o]);
        for (int k = 0; k < in; ++k) s += double(x[t * in + k]) * to_float(w[size_t(o) * in + k]);
        ref[size_t(t) * out + o] = s;
      }
    EXPECT_LT(rel_err(y, ref), 1e-6) << n << "x" << in << "x" << out;
  }
}

// The property batch invariance rests on: a row's result is bitwise independent of how many
// rows surround it and where it sits among them.
TEST(Linear, RowResultIndependentOfBatchShape) {
  const int in = 200, out = 77;
  auto w = randn(size_t(out) * in, 4);
  auto x = randn(size_t(9) * in, 5);
  std::vector<float> alone(out), batch(size_t(9) * out);
  linear(x.data() + 6 * in, 1, in, w.data(), out, static_cast<const float*>(nullptr), alone.data());
  linear(x.data(), 9, in, w.data(), out, static_cast<const float*>(nullptr), batch.data());
  for (int o = 0; o < out; ++o) ASSERT_EQ(alone[o], batch[6 * out + o]) << o;
}

// Large enough for the thread team to start: results must not depend on the thread count.
TEST(Linear, ThreadCountInvariant) {
  const int n = 37, in = 256, out = 300;
  auto x = randn(size_t(n) * in, 20), w = randn(size_t(out) * in, 21);
  std::vector<float> one(size_t(n) * out), two(size_t(n) * out);
  set_num_threads(1);
  linear(x.data(), n, in, w.data(), out, static_cast<const float*>(nullptr), one.data());
  set_num_threads(2);
  linear(x.data(), n, in, w.data(), out, static_cast<const float*>(nullptr), two.data());
  EXPECT_EQ(one, two);
}

TEST(RmsNorm, FusedResidualMatchesReference) {
  const int n = 3, d = 45;
  auto x = randn(n * d, 6), r = randn(n * d, 7), w = randn(d, 8);
  auto x0 = x, r0 = r;
  add_rms_norm(x.data(), r.data(), w.data(), n, d, 1e-6f);
  std::vector<double> refx(n * d), refr(n * d);
  for (int t = 0; t < n; ++t) {
    double ss = 0;
    for (int i = 0; i < d; ++i) { refr[t * d + i] = double(r0[t * d + i]) + x0[t * d + i]; ss += refr[t * d + i] * refr[t * d + i]; }
    double inv = 1.0 / std::sqrt(ss / d + 1e-6);
    for (int i = 0; i < d; ++i) refx[t * d + i] = refr[t * d + i] * inv * w[i];
  }
  EXPECT_LT(rel_err(x, refx), 1e-6);
  EXPECT_LT(rel_err(r, refr), 1e-7);
  // first layer: residual = x
  auto x2 = x0, r2 = r0;
  add_rms_norm(x2.data(), r2.data(), w.data(), n, d, 1e-6f, /*first=*/true);
  for (int i = 0; i < n * d; ++i) ASSERT_EQ(r2[i], x0[i]);
}

TEST(RmsNorm, PerHeadNormalisesEachHeadOnly) {
  const int n = 2, heads = 3, hd = 16, stride = 100;
  auto x = randn(n * stride, 9), w = randn(hd, 10);
  auto x0 = x;
  head_rms_norm(x.data(), stride, n, heads, hd, w.data(), 1e-6f);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      double ss = 0;
      for (int i = 0; i < hd; ++i) ss += double(x0[t * stride + h * hd + i]) * x0[t * stride + h * hd + i];
      double inv = 1.0 / std::sqrt(ss / hd + 1e-6);
      for (int i = 0; i < hd; ++i)
        EXPECT_NEAR(x[t * stride + h * hd + i], x0[t * stride + h * hd + i] * inv * w[i], 1e-5);
    }
    for (int i = heads * hd; i < stride; ++i) ASSERT_EQ(x[t * stride + i], x0[t * stride + i]);
  }
}

TEST(Activation, SiluAndMul) {
  const int n = 3, inter = 21;
  auto gu = randn(n * 2 * inter, 11);
  std::vector<float> out(n * inter);
  silu_and_mul(gu.data(), n, inter, out.data());
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < inter; ++i) {
      double g = gu[t * 2 * inter + i], u = gu[t * 2 * inter + inter + i];
      EXPECT_NEAR(out[t * inter + i], g / (1 + std::exp(-g)) * u, 1e-6);
    }
}

TEST(Embedding, GathersRowsAndRejectsBadIds) {
  auto table = randn(10 * 6, 12);
  std::vector<int32_t> ids = {3, 0, 9, 3};
  std::vector<float> out(4 * 6);
  embedding(table.data(), 10, 6, ids.data(), 4, out.data());
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 6; ++i) ASSERT_EQ(out[t * 6 + i], table[ids[t] * 6 + i]);
  std::vector<int32_t> bad = {10};
  EXPECT_THROW(embedding(table.data(), 10, 6, bad.data(), 1, out.data()), pie::Error);
}

struct RopeCase { ops::RopeScaling::Type type; };
class RopeScalingTest : public ::testing::TestWithParam<ops::RopeScaling::Type> {};

TEST_P(RopeScalingTest, RotatesPairsByReferenceAngles) {
  ops::RopeScaling sc;
  sc.type = GetParam();
  sc.factor = 4.0;
  sc.original_max_position_embeddings = 64;
  const int hd = 32, heads = 2, n = 3;
  auto tab = rope_inv_freq(hd, 10000.0, sc, 256);
  // Float64 reference of the inverse frequencies.
  std::vector<double> inv(hd / 2);
  double attn = 1.0;
  for (int i = 0; i < hd / 2; ++i) {
    double f = 1.0 / std::pow(10000.0, 2.0 * i / hd);
    if (sc.type == ops::RopeScaling::Type::Linear) f /= 4.0;
    if (sc.type == ops::RopeScaling::Type::Llama3) {
      double wl = 2 * M_PI / f, lw = 64 / 1.0, hw = 64 / 4.0;
      if (wl > lw) f /= 4.0;
      else if (wl >= hw) { double s = (64 / wl - 1.0) / 3.0; f = (1 - s) * f / 4.0 + s * f; }
    }
    if (sc.type == ops::RopeScaling::Type::Yarn) {
      auto cd = [&](double r) { return hd * std::log(64 / (r * 2 * M_PI)) / (2 * std::log(10000.0)); };
      double lo = std::max(std::floor(cd(32)), 0.0), hi = std::min(std::ceil(cd(1)), double(hd - 1));
      double ramp = std::clamp((i - lo) / (hi - lo), 0.0, 1.0);
      f = f / 4.0 * ramp + f * (1 - ramp);
      attn = 0.1 * std::log(4.0) + 1.0;
    }
    inv[i] = f;
    EXPECT_NEAR(tab.inv_freq[i], f, 1e-6 * f + 1e-12) << i;
  }
  EXPECT_NEAR(tab.attention_factor, attn, 1e-6);
  auto x = randn(n * heads * hd, 13);
  auto x0 = x;
  std::vector<int32_t> pos = {0, 5, 77};
  rope_neox(x.data(), heads * hd, n, heads, hd, pos.data(), tab);
  std::vector<double> ref(x.size());
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        double a = double(float(inv[i]) * float(pos[t]));
        double c = std::cos(a) * attn, s = std::sin(a) * attn;
        int b = t * heads * hd + h * hd;
        ref[b + i] = x0[b + i] * c - x0[b + i + hd / 2] * s;
        ref[b + i + hd / 2] = x0[b + i + hd / 2] * c + x0[b + i] * s;
      }
  EXPECT_LT(rel_err(x, ref), 1e-5);
}
INSTANTIATE_TEST_SUITE_P(Scalings, RopeScalingTest,
                         ::testing::Values(ops::RopeScaling::Type::None, ops::RopeScaling::Type::Linear,
                                           ops::RopeScaling::Type::Llama3, ops::RopeScaling::Type::Yarn));

// Paged attention against dense causal attention over the same K/V, for a batch mixing
// decodes and prefill chunks with cached prefixes, shuffled block tables and GQA.
struct AttnCase { int block_size, head_dim, group; };
class PagedAttention : public ::testing::TestWithParam<AttnCase> {};

template <class KVT>
void run_attention_case(const AttnCase& c, double tol) {
  const int nkv = 2, nq = nkv * c.group, hd = c.head_dim, bs = c.block_size;
  // (context_len, query_len): decode, decode, prefill chunk after a cached prefix, full prefill.
  std::vector<std::pair<int, int>> seqs = {{17, 1}, {1, 1}, {40, 9}, {23, 23}};
  const int B = seqs.size();
  std::vector<int32_t> indptr = {0}, indices, last, cu = {0};
  int total_blocks = 0;
  for (auto [ctx, ql] : seqs) { int nb = (ctx + bs - 1) / bs; total_blocks += nb; }
  std::vector<int32_t> perm(total_blocks + 3);
  for (int i = 0; i < (int)perm.size(); ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), std::mt19937(14));
  int next = 0;
  for (auto [ctx, ql] : seqs) {
    int nb = (ctx + bs - 1) / bs;
    for (int i = 0; i < nb; ++i) indices.push_back(perm[next++]);
    indptr.push_back(indices.size());
    last.push_back(ctx - (nb - 1) * bs);
    cu.push_back(cu.back() + ql);
  }
  const int num_blocks = perm.size();
  std::vector<KVT> pool(size_t(num_blocks) * 2 * nkv * bs * hd, from_float<KVT>(NAN));
  // fp8: per-head scales, different for K and V (16-bit caches ignore them). The K/V values are
  // multiplied by the same factors, so each head's scaled values sit in e4m3's normal range and a
  // kernel reading another head's scale (or K's for V) is off by a factor of 2 or more.
  constexpr bool fp8 = std::is_same_v<KVT, fp8_e4m3>;
  const std::vector<float> ks = {0.5f, 4.0f}, vs = {8.0f, 0.25f};
  kv::PagedKV<KVT> kv{pool.data(), nkv, hd, bs, B, indptr.data(), indices.data(), last.data(),
                      fp8 ? ks.data() : nullptr, fp8 ? vs.data() : nullptr};
  // What the cache holds of x in head h, dequantised: x itself rounded to KVT, or for fp8
  // e4m3(x / scale) · scale.
  auto held = [&](float x, int h, bool is_k) {
    if constexpr (fp8) {
      const float s = is_k ? ks[h] : vs[h];
      return to_float(from_float<KVT>(x / s)) * s;
    }
    return to_float(from_float<KVT>(x));
  };
  // Dense K/V per sequence, written through kv_write at their slots.
  std::vector<std::vector<float>> K(B), V(B);
  for (int b = 0; b < B; ++b) {
    int ctx = seqs[b].first;
    K[b] = randn(size_t(ctx) * nkv * hd, 100 + b);
    V[b] = randn(size_t(ctx) * nkv * hd, 200 + b);
    if (fp8)
      for (size_t i = 0; i < K[b].size(); ++i) {
        K[b][i] *= ks[(i / hd) % nkv];
        V[b][i] *= vs[(i / hd) % nkv];
      }
    std::vector<int64_t> slots(ctx);
    for (int p = 0; p < ctx; ++p) slots[p] = int64_t(indices[indptr[b] + p / bs]) * bs + p % bs;
    kv_write(kv, K[b].data(), V[b].data(), nkv * hd, ctx, slots.data());
  }
  const int rows = cu.back();
  auto q = randn(size_t(rows) * nq * hd, 15);
  std::vector<float> out(size_t(rows) * nq * hd, NAN);
  const float scale = 1.0f / std::sqrt(float(hd));
  paged_attention(q.data(), nq * hd, out.data(), nq * hd, kv, cu.data(), nq, scale);
  std::vector<double> ref(out.size());
  for (int b = 0; b < B; ++b) {
    auto [ctx, ql] = seqs[b];
    for (int r = 0; r < ql; ++r) {
      int row = cu[b] + r, qpos = ctx - ql + r;
      for (int h = 0; h < nq; ++h) {
        int kh = h / c.group;
        std::vector<double> s(qpos + 1);
        double m = -1e300;
        for (int p = 0; p <= qpos; ++p) {
          double d = 0;
          for (int i = 0; i < hd; ++i)
            d += double(q[(size_t(row) * nq + h) * hd + i]) * held(K[b][(size_t(p) * nkv + kh) * hd + i], kh, true);
          s[p] = d * scale; m = std::max(m, s[p]);
        }
        double sum = 0;
        for (auto& v : s) { v = std::exp(v - m); sum += v; }
        for (int i = 0; i < hd; ++i) {
          double o = 0;
          for (int p = 0; p <= qpos; ++p) o += s[p] * held(V[b][(size_t(p) * nkv + kh) * hd + i], kh, false);
          ref[(size_t(row) * nq + h) * hd + i] = o / sum;
        }
      }
    }
  }
  EXPECT_LT(rel_err(out, ref), tol);
}

TEST_P(PagedAttention, F32CacheMatchesDenseCausal) { run_attention_case<float>(GetParam(), 1e-5); }
TEST_P(PagedAttention, Bf16CacheMatchesDenseCausal) { run_attention_case<bf16>(GetParam(), 1e-5); }
// fp8 e4m3 with per-kv-head K and V scales: kv_write divides, attention multiplies back.
TEST_P(PagedAttention, Fp8CachePerHeadScalesMatchesDenseCausal) { run_attention_case<fp8_e4m3>(GetParam(), 1e-5); }
INSTANTIATE_TEST_SUITE_P(BlockHeadGroup, PagedAttention,
                         ::testing::Values(AttnCase{8, 64, 1}, AttnCase{16, 128, 2}, AttnCase{16, 64, 4},
                                           AttnCase{32, 128, 8}, AttnCase{16, 40, 1}),
                         [](const auto& i) {
                           return "bs" + std::to_string(i.param.block_size) + "_hd" +
                                  std::to_string(i.param.head_dim) + "_g" + std::to_string(i.param.group);
                         });

TEST(PagedAttentionVariant, SlidingWindowMasksOldKeys) {
  // One sequence of 12 tokens, window 4: changing V of key 0 must not affect the last query,
  // while with plain causal attention it does.
  const int hd = 8, bs = 8;
  std::vector<int32_t> indptr = {0, 2}, indices = {1, 0}, last = {4}, cu = {0, 1};
  std::vector<float> pool(2 * 2 * bs * hd);
  kv::PagedKV<float> kv{pool.data(), 1, hd, bs, 1, indptr.data(), indices.data(), last.data()};
  auto k = randn(12 * hd, 16), v = randn(12 * hd, 17), q = randn(hd, 18);
  std::vector<int64_t> slots(12);
  for (int p = 0; p < 12; ++p) slots[p] = indices[p / bs] * bs + p % bs;
  auto run = [&](auto variant) {
    kv_write(kv, k.data(), v.data(), hd, 12, slots.data());
    std::vector<float> o(hd);
    paged_attention(q.data(), hd, o.data(), hd, kv, cu.data(), 1, 0.3f, variant);
    return o;
  };
  auto w1 = run(attention::SlidingWindow<4>{});
  auto c1 = run(attention::Causal{});
  for (int i = 0; i < hd; ++i) v[i] += 5.0f;
  EXPECT_EQ(run(attention::SlidingWindow<4>{}), w1);
  EXPECT_NE(run(attention::Causal{}), c1);
}

}  // namespace

// RoundTo<bf16>: the rounding points of a bf16 forward (transformers', the GPU kernels'), each
// op against the same arithmetic written out step by step, bit for bit; and Exact (the default)
// leaves the float ops as they were.
namespace rounding {
float r16(float x) { return to_float(from_float<bf16>(x)); }

TEST(RoundingPoints, AddRmsNormRoundsResidualNormAndProduct) {
  const int n = 3, d = 40;
  auto x0 = randn(n * d, 31), r0 = randn(n * d, 32);
  std::vector<bf16> w(d);
  auto wf = randn(d, 33);
  for (int i = 0; i < d; ++i) w[i] = bf16(wf[i]);
  auto x = x0, r = r0, xe = x0, re = r0;
  add_rms_norm(x.data(), r.data(), w.data(), n, d, 1e-6f, false, RoundTo<bf16>{});
  add_rms_norm(xe.data(), re.data(), w.data(), n, d, 1e-6f, false);
  int differ = 0;
  for (int t = 0; t < n; ++t) {
    std::vector<float> res(d);
    for (int i = 0; i < d; ++i) res[i] = r16(r0[t * d + i] + x0[t * d + i]);
    float acc[8] = {};
    for (int i = 0; i < d; ++i) acc[i & 7] += res[i] * res[i];  // rms_norm_row's lanes (d % 8 == 0)
    float ss = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    float inv = 1.0f / std::sqrt(ss / d + 1e-6f);
    for (int i = 0; i < d; ++i) {
      ASSERT_EQ(r[t * d + i], res[i]);
      ASSERT_EQ(x[t * d + i], r16(to_float(w[i]) * r16(res[i] * inv)));
      differ += x[t * d + i] != xe[t * d + i];
    }
  }
  EXPECT_GT(differ, 0);  // the rounding is not a no-op
}

TEST(RoundingPoints, SiluAndMulRoundsSiluThenProduct) {
  const int n = 2, inter = 24;
  auto gu = randn(n * 2 * inter, 34);
  std::vector<float> out(n * inter), ex(n * inter);
  silu_and_mul(gu.data(), n, inter, out.data(), RoundTo<bf16>{});
  silu_and_mul(gu.data(), n, inter, ex.data());
  int differ = 0;
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < inter; ++i) {
      const float g = gu[t * 2 * inter + i], u = gu[t * 2 * inter + inter + i];
      ASSERT_EQ(out[t * inter + i], r16(r16(silu(g)) * u));
      ASSERT_EQ(ex[t * inter + i], silu(g) * u);
      differ += out[t * inter + i] != ex[t * inter + i];
    }
  EXPECT_GT(differ, 0);
}

TEST(RoundingPoints, RopeRoundsCosSinEachProductAndSum) {
  const int n = 2, heads = 2, hd = 16, half = hd / 2;
  auto x0 = randn(n * heads * hd, 35);
  std::vector<int32_t> pos = {3, 1000};
  auto tab = rope_inv_freq(hd, 10000.0, ops::RopeScaling{});
  auto x = x0;
  rope_neox(x.data(), heads * hd, n, heads, hd, pos.data(), tab, RoundTo<bf16>{});
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < half; ++i) {
        const float a = tab.inv_freq[i] * static_cast<float>(pos[t]);
        const float c = r16(std::cos(a)), s = r16(std::sin(a));
        const float* p = x0.data() + (t * heads + h) * hd;
        const float* q = x.data() + (t * heads + h) * hd;
        ASSERT_EQ(q[i], r16(r16(p[i] * c) - r16(p[half + i] * s)));
        ASSERT_EQ(q[half + i], r16(r16(p[half + i] * c) + r16(p[i] * s)));
      }
}
}  // namespace rounding
