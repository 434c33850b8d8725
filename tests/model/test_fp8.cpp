// FP8 weights on the CPU (label cpu): the quantization rule (e4m3 round-to-nearest-even with
// saturation, scale = amax / 448), the fp32 reference of the fp8 linear against a naive double
// product, loading the published Qwen3-FP8 format (codes and block scales where the fused
// projections expect them) and every error of that format (missing scale, wrong block shape,
// unknown fmt, wrong dtype, unsupported method, fused rows off the block grid), `--quantization
// fp8` on a bf16/fp32 checkpoint and with `--load-format dummy`, and make_engine()'s choice.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "pie/engine/cpu/cpu_forward.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/fp8_weights.hpp"
#include "pie/model/load.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/ops/cpu/fp8_linear.hpp"
#include "pie/registry/make_engine.hpp"
#include "gpu_test_util.hpp"  // small_qwen3: the GPU fp8 test's shape
#include "plan_builder.hpp"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::model::testing;
using nlohmann::json;

std::vector<float> randn(size_t n, uint32_t seed, float std = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, std);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// ---- the quantization rule ----

TEST(Fp8Quant, GroupScaleMapsTheMaximumTo448AndRoundsEveryValueOnce) {
  const int K = 300, group = 128;  // a partial last group
  auto x = randn(2 * K, 1, 3.0f);
  x[5] = 0.0f;
  std::vector<fp8_e4m3> q(2 * K);
  std::vector<float> s(2 * 3);
  ops::cpu::fp8_quantize_rows(x.data(), K, 2, K, group, q.data(), s.data());
  for (int t = 0; t < 2; ++t)
    for (int g = 0; g < 3; ++g) {
      float amax = 0;
      for (int k = g * group; k < std::min(K, (g + 1) * group); ++k) amax = std::max(amax, std::fabs(x[t * K + k]));
      EXPECT_EQ(s[t * 3 + g], amax / 448.0f);
      float qmax = 0;
      for (int k = g * group; k < std::min(K, (g + 1) * group); ++k) {
        const float v = x[t * K + k], dq = to_float(q[t * K + k]) * s[t * 3 + g];
        qmax = std::max(qmax, std::fabs(to_float(q[t * K + k])));
        // e4m3: 3 mantissa bits (relative half-ulp 2^-4), subnormal spacing 2^-9 of the scale.
        EXPECT_LE(std::fabs(v - dq), std::max(std::fabs(v) * 0.0625f, s[t * 3 + g] * 0.001f)) << v;
      }
      EXPECT_EQ(qmax, 448.0f);
    }
  // All-zero group: scale 1, codes 0. Saturation: values beyond 448·s clamp to 448 (a scale
  // that is slightly small after rounding must never give NaN).
  std::vector<float> z(128, 0.0f);
  float sz = 0;
  ops::cpu::fp8_quantize_rows(z.data(), 128, 1, 128, 128, q.data(), &sz);
  EXPECT_EQ(sz, 1.0f);
  EXPECT_EQ(q[0].bits, 0);
  EXPECT_EQ(fp8_e4m3(1000.0f).bits, 0x7e);
  EXPECT_EQ(fp8_e4m3(-449.0f).bits, 0xfe);
}

// ---- the fp32 reference of the fp8 linear ----

model::Fp8Weights<float> random_fp8(bool block, int64_t N, int64_t K, uint32_t seed) {
  model::Weights<float> src;
  auto v = randn(static_cast<size_t>(N * K), seed, 0.05f);
  auto t = src.allocate({N, K});
  std::copy(v.begin(), v.end(), t.data);
  model::Fp8Weights<float> w;
  w.block = block;
  Fp8Weight f = w.allocate_fp8(N, K);
  if (block) {
    for (int64_t nb = 0; nb < f.n_blocks(); ++nb)
      for (int64_t kb = 0; kb < f.k_blocks(); ++kb) {
        float amax = 0;
        for (int64_t n = nb * 128; n < std::min(N, nb * 128 + 128); ++n)
          for (int64_t k = kb * 128; k < std::min(K, kb * 128 + 128); ++k) amax = std::max(amax, std::fabs(t.data[n * K + k]));
        const float s = amax / 448.0f;
        f.scale.data[nb * f.scale_ld + kb] = s;
        for (int64_t n = nb * 128; n < std::min(N, nb * 128 + 128); ++n)
          for (int64_t k = kb * 128; k < std::min(K, kb * 128 + 128); ++k) f.q.data[n * K + k] = fp8_e4m3(t.data[n * K + k] / s);
      }
  } else {
    model::quantize_per_channel(t, f);
  }
  w.layers.resize(1);
  w.layers[0].o_proj = f;
  return w;
}

TEST(Fp8Linear, ReferenceIsTheProductOfTheQuantizedValues) {
  for (bool block : {true, false}) {
    const int n = 5, K = 384, N = 200;
    auto w = random_fp8(block, N, K, 7);
    const Fp8Weight& f = w.layers[0].o_proj;
    auto x = randn(static_cast<size_t>(n) * (K + 3), 8);
    std::vector<float> bias = randn(N, 9);
    std::vector<float> y(static_cast<size_t>(n) * N), xs, ws;
    ops::cpu::fp8_linear(x.data(), n, K, f, bias.data(), y.data(), K + 3, N, xs, ws);
    const int group = block ? 128 : K, G = (K + group - 1) / group;
    double worst = 0;
    for (int t = 0; t < n; ++t) {
      std::vector<float> s(G);
      std::vector<fp8_e4m3> q(K);
      ops::cpu::fp8_quantize_rows(x.data() + t * (K + 3), K + 3, 1, K, group, q.data(), s.data());
      for (int o = 0; o < N; ++o) {
        double ref = bias[o], mag = std::fabs(bias[o]);
        for (int k = 0; k < K; ++k) {
          const double a = double(to_float(q[k])) * s[k / group];
          const double b = double(to_float(f.q.data[o * K + k])) * f.scale_at(o, k);
          ref += a * b;
          mag += std::fabs(a * b);
        }
        worst = std::max(worst, std::fabs(y[t * N + o] - ref) / mag);
      }
    }
    EXPECT_LT(worst, 1e-6) << (block ? "block" : "per channel");
  }
}

// The weight-only scheme (one row, core/fp8_weight.hpp's fp8_weight_only_single_rows): x as it
// is times the dequantized weight, against a double-precision sum; and not the quantized
// scheme's product (x rounded to e4m3 moves it by far more than float summation does).
TEST(Fp8Linear, WeightOnlyReferenceIsTheProductOfTheUnquantizedRow) {
  for (bool block : {true, false}) {
    const int n = 3, K = 384, N = 200;
    auto w = random_fp8(block, N, K, 17);
    const Fp8Weight& f = w.layers[0].o_proj;
    auto x = randn(static_cast<size_t>(n) * (K + 3), 18);
    std::vector<float> bias = randn(N, 19);
    std::vector<float> y(static_cast<size_t>(n) * N), y8(y.size()), xs, ws;
    ops::cpu::fp8_linear_w8a16(x.data(), n, K, f, bias.data(), y.data(), K + 3, N, ws);
    ops::cpu::fp8_linear(x.data(), n, K, f, bias.data(), y8.data(), K + 3, N, xs, ws);
    double worst = 0, moved = 0;
    for (int t = 0; t < n; ++t)
      for (int o = 0; o < N; ++o) {
        double ref = bias[o], mag = std::fabs(bias[o]);
        for (int k = 0; k < K; ++k) {
          const double b = double(to_float(f.q.data[o * K + k])) * f.scale_at(o, k);
          ref += double(x[t * (K + 3) + k]) * b;
          mag += std::fabs(double(x[t * (K + 3) + k]) * b);
        }
        worst = std::max(worst, std::fabs(y[t * N + o] - ref) / mag);
        moved = std::max(moved, std::fabs(y8[t * N + o] - ref) / mag);
      }
    EXPECT_LT(worst, 1e-6) << (block ? "block" : "per channel");
    EXPECT_GT(moved, 1e-3) << (block ? "block" : "per channel");
  }
  // The rule (core/fp8_weight.hpp) on the defaults: 1-4 rows weight-only, more rows not; K a
  // multiple of 16 within the GEMVs' shared memory (one row: K ≤ 32,768; several: rows · K ≤ 65,536).
  if (std::getenv("PIE_FP8_GEMV_W8A16") == nullptr && std::getenv("PIE_FP8_GEMV_W8A16_ROWS") == nullptr) {
    EXPECT_TRUE(fp8_weight_only_rows(1, 4096));
    EXPECT_TRUE(fp8_weight_only_rows(1, 32768));
    EXPECT_FALSE(fp8_weight_only_rows(1, 32784));
    EXPECT_FALSE(fp8_weight_only_rows(1, 4100));
    EXPECT_TRUE(fp8_weight_only_rows(2, 4096));
    EXPECT_TRUE(fp8_weight_only_rows(4, 12288));  // Qwen3-8B's down projection at batch 4
    EXPECT_TRUE(fp8_weight_only_rows(4, 16384));
    EXPECT_FALSE(fp8_weight_only_rows(4, 16400));
    EXPECT_FALSE(fp8_weight_only_rows(5, 4096));
    EXPECT_EQ(fp8_weight_only_max_rows(), 4);
  }
}

// ---- the published checkpoint format ----

// A Qwen3 whose fused projections line up with 128-row blocks (q 256, k 128, v 128 rows), as
// every published Qwen3-FP8 does.
json fp8_config() {
  return {{"architectures", {"Qwen3ForCausalLM"}}, {"vocab_size", 64}, {"hidden_size", 128},
          {"intermediate_size", 256}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"head_dim", 64}, {"tie_word_embeddings", false},
          {"max_position_embeddings", 256},
          {"quantization_config",
           {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {128, 128}}}}};
}

struct Fp8Ckpt {
  std::vector<RawTensor> tensors;
  std::map<std::string, std::vector<float>> dense;  // every tensor, dequantized (projections) or as written
};

RawTensor raw(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, const void* p, size_t n) {
  RawTensor t{name, dtype, std::move(shape), std::vector<unsigned char>(n)};
  std::memcpy(t.bytes.data(), p, n);
  return t;
}

/// Projection `name` [N, K] quantized per 128×128 block (written here independently of the loader).
void add_fp8(Fp8Ckpt& c, const std::string& name, int64_t N, int64_t K, uint32_t seed) {
  auto v = randn(static_cast<size_t>(N * K), seed, 1.0f / std::sqrt(float(K)));
  const int64_t nb = (N + 127) / 128, kb = (K + 127) / 128;
  std::vector<float> s(nb * kb);
  std::vector<uint8_t> q(N * K);
  std::vector<float> dq(N * K);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t d = 0; d < kb; ++d) {
      float amax = 0;
      for (int64_t n = b * 128; n < std::min(N, b * 128 + 128); ++n)
        for (int64_t k = d * 128; k < std::min(K, d * 128 + 128); ++k) amax = std::max(amax, std::fabs(v[n * K + k]));
      s[b * kb + d] = amax / 448.0f;
    }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const float sc = s[(n / 128) * kb + k / 128];
      q[n * K + k] = fp8_e4m3::from_float(v[n * K + k] / sc);
      dq[n * K + k] = fp8_e4m3::to_float(q[n * K + k]) * sc;
    }
  c.tensors.push_back(raw(name + ".weight", "F8_E4M3", {N, K}, q.data(), q.size()));
  c.tensors.push_back(raw(name + ".weight_scale_inv", "F32", {nb, kb}, s.data(), s.size() * 4));
  c.dense[name + ".weight"] = dq;
}
void add_f32(Fp8Ckpt& c, const std::string& name, std::vector<int64_t> shape, uint32_t seed, float mean, float std) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  auto v = randn(n, seed, std);
  for (float& x : v) x += mean;
  c.tensors.push_back(raw(name, "F32", shape, v.data(), v.size() * 4));
  c.dense[name] = v;
}

Fp8Ckpt make_fp8_ckpt() {
  Fp8Ckpt c;
  uint32_t seed = 100;
  add_f32(c, "model.embed_tokens.weight", {64, 128}, seed++, 0, 1);
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add_f32(c, p + "input_layernorm.weight", {128}, seed++, 1, 0.1f);
    add_fp8(c, p + "self_attn.q_proj", 256, 128, seed++);
    add_fp8(c, p + "self_attn.k_proj", 128, 128, seed++);
    add_fp8(c, p + "self_attn.v_proj", 128, 128, seed++);
    add_fp8(c, p + "self_attn.o_proj", 128, 256, seed++);
    add_f32(c, p + "self_attn.q_norm.weight", {64}, seed++, 1, 0.1f);
    add_f32(c, p + "self_attn.k_norm.weight", {64}, seed++, 1, 0.1f);
    add_f32(c, p + "post_attention_layernorm.weight", {128}, seed++, 1, 0.1f);
    add_fp8(c, p + "mlp.gate_proj", 256, 128, seed++);
    add_fp8(c, p + "mlp.up_proj", 256, 128, seed++);
    add_fp8(c, p + "mlp.down_proj", 128, 256, seed++);
  }
  add_f32(c, "model.norm.weight", {128}, seed++, 1, 0.1f);
  add_f32(c, "lm_head.weight", {64, 128}, seed++, 0, 1.0f / std::sqrt(128.0f));
  return c;
}

/// The same model as fp32 Weights over the dequantized projections (fused as the loader fuses).
model::Weights<float> dequantized(const Fp8Ckpt& c, const model::ModelConfig& cfg) {
  model::Weights<float> w;
  w.config = cfg;
  auto put = [&](std::initializer_list<std::string> names, std::initializer_list<int64_t> dims) {
    auto v = w.allocate(dims);
    float* d = v.data;
    for (const auto& n : names) d = std::copy(c.dense.at(n).begin(), c.dense.at(n).end(), d);
    return v;
  };
  w.embed_tokens = put({"model.embed_tokens.weight"}, {64, 128});
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    model::LayerWeights<float> l;
    l.input_layernorm = put({p + "input_layernorm.weight"}, {128});
    l.qkv_proj = put({p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"}, {512, 128});
    l.q_norm = put({p + "self_attn.q_norm.weight"}, {64});
    l.k_norm = put({p + "self_attn.k_norm.weight"}, {64});
    l.o_proj = put({p + "self_attn.o_proj.weight"}, {128, 256});
    l.post_attention_layernorm = put({p + "post_attention_layernorm.weight"}, {128});
    l.gate_up_proj = put({p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}, {512, 128});
    l.down_proj = put({p + "mlp.down_proj.weight"}, {128, 256});
    w.layers.push_back(l);
  }
  w.norm = put({"model.norm.weight"}, {128});
  w.lm_head = put({"lm_head.weight"}, {64, 128});
  return w;
}

TEST(Fp8Load, PublishedFormatPutsCodesAndBlockScalesWhereTheFusedProjectionsExpectThem) {
  TempDir dir;
  Fp8Ckpt c = make_fp8_ckpt();
  write_tiny_checkpoint(dir.str(), c.tensors, fp8_config());
  EXPECT_EQ(model::checkpoint_quantization(dir.str()), model::CheckpointQuant::Fp8Block);
  const auto cfg = model::load_model_config(dir.str());
  auto w = model::load_fp8_weights<float>(dir.str(), cfg);
  ASSERT_TRUE(w.block);
  const auto ref = dequantized(c, cfg);
  auto check = [](const Fp8Weight& f, const TensorView<float>& d, const char* what) {
    ASSERT_EQ(f.rows(), d.shape[0]) << what;
    ASSERT_EQ(f.cols(), d.shape[1]) << what;
    EXPECT_EQ(f.scale_ld % 4, 0) << what;  // cuBLASLt's block-scale row stride
    for (int64_t n = 0; n < f.rows(); ++n)
      for (int64_t k = 0; k < f.cols(); ++k)
        ASSERT_EQ(to_float(f.q.data[n * f.cols() + k]) * f.scale_at(n, k), d.data[n * f.cols() + k])
            << what << " (" << n << ", " << k << ")";
  };
  for (int l = 0; l < 2; ++l) {
    check(w.layers[l].qkv_proj, ref.layers[l].qkv_proj, "qkv");
    check(w.layers[l].o_proj, ref.layers[l].o_proj, "o");
    check(w.layers[l].gate_up_proj, ref.layers[l].gate_up_proj, "gate_up");
    check(w.layers[l].down_proj, ref.layers[l].down_proj, "down");
    EXPECT_EQ(w.layers[l].q_norm.data[3], ref.layers[l].q_norm.data[3]);
  }
  EXPECT_EQ(w.lm_head.data[77], ref.lm_head.data[77]);
}

/// Logits of every position of `ids` (one prefill) through Model::forward over weights `w`.
template <class W>
std::vector<float> all_logits(const W& w, const std::vector<int32_t>& ids) {
  const auto& cfg = w.config;
  const int bs = 16, nb = (static_cast<int>(ids.size()) + bs - 1) / bs;
  engine::cpu::CpuForward<float, float> f(cfg, {});
  std::vector<std::vector<float>> pools(cfg.num_hidden_layers,
                                        std::vector<float>(size_t(nb + 1) * 2 * cfg.num_key_value_heads * bs * cfg.head_dim));
  std::vector<float*> ptrs;
  for (auto& p : pools) ptrs.push_back(p.data());
  std::vector<int32_t> blocks(nb);
  std::iota(blocks.begin(), blocks.end(), 1);
  auto plan = test::make_plan({test::SeqWork{blocks, 0, ids}}, bs);
  plan.logits_rows.resize(ids.size());
  std::iota(plan.logits_rows.begin(), plan.logits_rows.end(), 0);
  std::vector<float> logits(ids.size() * cfg.vocab_size);
  f.begin(plan, ptrs, bs, logits.data());
  Qwen3::forward(f, w);
  return logits;
}

/// Max over rows of max|a − b| / max|b|, and the fraction of rows whose argmax agrees.
std::pair<double, double> compare(const std::vector<float>& a, const std::vector<float>& b, int vocab) {
  double worst = 0;
  int agree = 0;
  const int rows = static_cast<int>(a.size()) / vocab;
  for (int r = 0; r < rows; ++r) {
    double num = 0, den = 0;
    for (int v = 0; v < vocab; ++v) {
      num = std::max(num, double(std::fabs(a[r * vocab + v] - b[r * vocab + v])));
      den = std::max(den, double(std::fabs(b[r * vocab + v])));
    }
    worst = std::max(worst, num / den);
    auto am = [&](const std::vector<float>& x) {
      return std::max_element(x.begin() + r * vocab, x.begin() + (r + 1) * vocab) - x.begin();
    };
    agree += am(a) == am(b);
  }
  return {worst, double(agree) / rows};
}

TEST(Fp8Load, PublishedCheckpointForwardDiffersFromItsDequantizedWeightsOnlyByActivationRounding) {
  TempDir dir;
  Fp8Ckpt c = make_fp8_ckpt();
  write_tiny_checkpoint(dir.str(), c.tensors, fp8_config());
  const auto cfg = model::load_model_config(dir.str());
  auto w = model::load_fp8_weights<float>(dir.str(), cfg);
  const auto ref = dequantized(c, cfg);
  std::vector<int32_t> ids(40);
  std::mt19937 rng(3);
  for (auto& t : ids) t = static_cast<int32_t>(rng() % 64);
  auto [err, agree] = compare(all_logits(w, ids), all_logits(ref, ids), 64);
  std::printf("[fp8 published vs dequantized fp32] max rel err %.3g, argmax agreement %.3f\n", err, agree);
  // Activation quantization only (2^-4 relative per element at most), through 2 layers of a
  // random model: measured 0.069, argmax agreement 0.95. A misplaced block scale gives O(1).
  EXPECT_LT(err, 0.1);
  EXPECT_GT(err, 0.0);   // activations really were quantized
  EXPECT_GE(agree, 0.9);
}

// ---- how the scheme amplifies tiny differences (the floor of any GPU-vs-CPU comparison) ----

/// CpuForward<bf16, bf16> at bf16 rounding points (the GPU's scheme) whose linear outputs are
/// multiplied by 1 ± eps (random sign) before their bf16 rounding: another implementation of the
/// same scheme that differs only as fp32 summation orders do (eps = 2⁻²⁰, a few fp32 ulps).
struct PerturbedForward : engine::cpu::CpuForward<bf16, bf16> {
  using Base = engine::cpu::CpuForward<bf16, bf16>;
  using Base::Base;
  float eps = 0;
  uint32_t state = 12345;
  template <class W>
  void linear(const Act& x, const W& w, const Weight& bias, Act out) {
    round_activations(false);
    Base::linear(x, w, bias, out);
    round_activations(true);
    const ops::cpu::RoundTo<bf16> r;
    for (int t = 0; t < num_tokens(); ++t)
      for (int64_t o = 0; o < out.shape[1]; ++o) {
        state = state * 1664525u + 1013904223u;
        out.row(t)[o] = r(out.row(t)[o] * (1.0f + ((state >> 31) ? eps : -eps)));
      }
  }
  template <class W>
  void norm_linear(Act x, Act& res, const Weight& norm, bool first, const W& w, const Weight& bias, Act out) {
    add_rms_norm(x, res, norm, first);
    linear(x, w, bias, out);
  }
};

/// Logits of every position of one 48-token prefill through the perturbed context.
template <class W>
std::vector<float> perturbed_logits(const W& w, float eps) {
  const auto& cfg = w.config;
  const int bs = 16, n = 48, nb = n / bs;
  std::vector<int32_t> ids(n);
  std::mt19937 rng(8);
  for (auto& t : ids) t = 2 + static_cast<int32_t>(rng() % (cfg.vocab_size - 2));
  PerturbedForward f(cfg, {});
  f.round_activations(true);
  f.eps = eps;
  std::vector<std::vector<bf16>> pools(cfg.num_hidden_layers,
                                       std::vector<bf16>(size_t(nb + 1) * 2 * cfg.num_key_value_heads * bs * cfg.head_dim));
  std::vector<bf16*> ptrs;
  for (auto& p : pools) ptrs.push_back(p.data());
  std::vector<int32_t> blocks(nb);
  std::iota(blocks.begin(), blocks.end(), 1);
  auto plan = test::make_plan({test::SeqWork{blocks, 0, ids}}, bs);
  plan.logits_rows.resize(n);
  std::iota(plan.logits_rows.begin(), plan.logits_rows.end(), 0);
  std::vector<float> logits(size_t(n) * cfg.vocab_size);
  f.begin(plan, ptrs, bs, logits.data());
  Qwen3::forward(f, w);
  return logits;
}

double rms_rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// Issue 18 asks the GPU's fp8 logits to be within 2e-2 of the CPU reference of the same scheme.
// The GPU cannot reproduce cuBLASLt's (or its attention's) summation order on the CPU, so the two
// differ by fp32 roundings, a bf16 ulp now and then after rounding — and an e4m3 code is a step
// of 2⁻³ relative, so a bf16-level difference that straddles a rounding point moves a code by a
// whole step, whose effect straddles more points downstream. This measures that floor on the
// CPU alone, on the shape and weights of the GPU test (tests/gpu/test_fp8.cu, 3 layers): the same
// perturbation moves bf16 logits by ~1e-3 and fp8 logits by several times more.
TEST(Fp8Scheme, AmplifiesSummationOrderDifferencesFarBeyondBf16) {
  const model::ModelConfig cfg = gpu_test::small_qwen3(3);
  auto hw = std::make_shared<const model::Weights<bf16>>(model::dummy_weights<bf16>(cfg, 21));
  auto fp8 = model::quantize_weights<bf16>(hw);
  const float eps = std::ldexp(1.0f, -20);
  const double e16 = rms_rel_err(perturbed_logits(*hw, eps), perturbed_logits(*hw, 0.0f));
  const double e8 = rms_rel_err(perturbed_logits(fp8, eps), perturbed_logits(fp8, 0.0f));
  std::printf("[fp8 scheme] logits moved by a 2^-20 perturbation of every linear output: bf16 %.3g, fp8 %.3g\n", e16,
              e8);
  EXPECT_LT(e16, 1e-2);
  EXPECT_GT(e8, 4 * e16);
}

// ---- every error of the format ----

TEST(Fp8Load, ErrorsNameTheFileAndTheTensor) {
  const auto load = [](const std::string& d) {
    return [d] { model::load_fp8_weights<float>(d, model::load_model_config(d)); };
  };
  {  // missing scale
    TempDir dir;
    Fp8Ckpt c = make_fp8_ckpt();
    std::erase_if(c.tensors, [](const RawTensor& t) { return t.name == "model.layers.1.self_attn.k_proj.weight_scale_inv"; });
    write_tiny_checkpoint(dir.str(), c.tensors, fp8_config());
    EXPECT_TRUE(throws_naming(load(dir.str()), {"model.safetensors", "model.layers.1.self_attn.k_proj.weight_scale_inv",
                                                "no scale"}));
  }
  {  // wrong block shape (a per-tensor scale where 128×128 blocks are expected)
    TempDir dir;
    Fp8Ckpt c = make_fp8_ckpt();
    for (auto& t : c.tensors)
      if (t.name == "model.layers.0.mlp.gate_proj.weight_scale_inv") {
        t.shape = {1, 1};
        t.bytes.resize(4);
      }
    write_tiny_checkpoint(dir.str(), c.tensors, fp8_config());
    EXPECT_TRUE(throws_naming(load(dir.str()), {"model.safetensors", "model.layers.0.mlp.gate_proj.weight_scale_inv",
                                                "[1, 1]", "[2, 1]"}));
  }
  {  // wrong dtype: a bf16 projection in an fp8 checkpoint
    TempDir dir;
    Fp8Ckpt c = make_fp8_ckpt();
    for (auto& t : c.tensors)
      if (t.name == "model.layers.1.mlp.down_proj.weight") {
        t.dtype = "BF16";
        t.bytes.resize(t.bytes.size() * 2);
      }
    write_tiny_checkpoint(dir.str(), c.tensors, fp8_config());
    EXPECT_TRUE(throws_naming(load(dir.str()), {"model.safetensors", "model.layers.1.mlp.down_proj.weight", "BF16",
                                                "F8_E4M3"}));
  }
  {  // unknown fmt, another method, another block size, static activations: config.json errors
    for (auto [key, value, named] :
         {std::tuple{"fmt", json("e5m2"), "e5m2"}, std::tuple{"quant_method", json("awq"), "awq"},
          std::tuple{"weight_block_size", json({64, 64}), "[64,64]"},
          std::tuple{"activation_scheme", json("static"), "static"}}) {
      TempDir dir;
      json cfg = fp8_config();
      cfg["quantization_config"][key] = value;
      write_tiny_checkpoint(dir.str(), make_fp8_ckpt().tensors, cfg);
      EXPECT_TRUE(throws_naming([&] { model::checkpoint_quantization(dir.str()); }, {"config.json", key, named}));
      EngineOptions eo;
      eo.model_dir = dir.str();
      EXPECT_TRUE(throws_naming([&] { make_engine(eo); }, {"config.json", key}));
    }
  }
  {  // fused parts that do not line up with the 128-row block grid
    TempDir dir;
    json cfg = fp8_config();
    cfg["head_dim"] = 32;  // q 128, k 64, v 64 rows
    Fp8Ckpt c;
    uint32_t seed = 1;
    add_f32(c, "model.embed_tokens.weight", {64, 128}, seed++, 0, 1);
    add_f32(c, "model.layers.0.input_layernorm.weight", {128}, seed++, 1, 0.1f);
    add_fp8(c, "model.layers.0.self_attn.q_proj", 128, 128, seed++);
    add_fp8(c, "model.layers.0.self_attn.k_proj", 64, 128, seed++);
    add_fp8(c, "model.layers.0.self_attn.v_proj", 64, 128, seed++);
    write_tiny_checkpoint(dir.str(), c.tensors, cfg);
    EXPECT_TRUE(throws_naming(load(dir.str()), {"model.layers.0.self_attn.k_proj.weight", "multiple of 128"}));
  }
}

// ---- engines ----

/// Greedy tokens of one prompt through an AnyEngine (ignoring EOS).
std::vector<int32_t> greedy(AnyEngine& e, std::vector<int32_t> prompt, int n) {
  sched::SamplingParams sp;
  sp.max_tokens = n;
  sp.temperature = 0;
  sp.ignore_eos = true;
  e.add_request(std::move(prompt), sp);
  std::vector<int32_t> out;
  while (e.has_unfinished())
    for (const auto& r : e.step())
      for (const auto& s : r.seqs) out.insert(out.end(), s.new_tokens.begin(), s.new_tokens.end());
  return out;
}

TEST(Fp8Engine, MakeEngineDetectsThePublishedFormatAndQuantizesOtherCheckpointsOnRequest) {
  TempDir dir;
  write_tiny_checkpoint(dir.str(), make_fp8_ckpt().tensors, fp8_config());
  EngineOptions eo;
  eo.model_dir = dir.str();
  EXPECT_EQ(resolve_engine(eo).weights, "fp8");  // config.json's quantization_config
  EXPECT_TRUE(is_compiled(resolve_engine(eo)));
  auto e = make_engine(eo);
  EXPECT_EQ(greedy(*e, {1, 2, 3, 4}, 8).size(), 8u);

  EngineOptions bf;
  bf.model_dir = fixture_dir("qwen3_tied");
  EXPECT_EQ(resolve_engine(bf).weights, "float32");
  bf.quantization = "fp8";
  EXPECT_EQ(resolve_engine(bf).weights, "fp8");
  bf.quantization = "int4";
  EXPECT_TRUE(throws_naming([&] { resolve_engine(bf); }, {"--quantization int4", "fp8"}));
  // Qwen3-MoE has no fp8 weights: refused with a message, not a missing-engine list.
  EngineOptions moe;
  moe.model_dir = std::string(PIE_SOURCE_DIR) + "/tests/moe/fixtures/qwen3_moe_top2_norm";
  moe.quantization = "fp8";
  EXPECT_TRUE(throws_naming([&] { make_engine(moe); }, {"qwen3_moe", "fp8"}));
}

TEST(Fp8Engine, QuantizeAtLoadStaysCloseToFp32OnTheTransformersFixtures) {
  for (const char* name : {"qwen3_tied", "qwen2_bias", "llama_rope_llama3", "qwen3_gqa4_sharded"}) {
    auto full = model::load_model<float>(fixture_dir(name));
    auto q = model::quantize_weights<float>(std::make_shared<const model::Weights<float>>(std::move(full.weights)));
    EXPECT_FALSE(q.block);
    EXPECT_EQ(q.layers[0].qkv_proj.scale_ld, 1);
    std::vector<int32_t> ids(48);
    std::mt19937 rng(11);
    for (auto& t : ids) t = static_cast<int32_t>(rng() % 256);
    const auto& ref = *std::static_pointer_cast<const model::Weights<float>>(q.keep);
    auto [err, agree] = compare(all_logits(q, ids), all_logits(ref, ids), 256);
    std::printf("[fp8 per-channel vs fp32] %s: max rel err %.3g, argmax agreement %.3f\n", name, err, agree);
    // Weights and activations rounded to e4m3 in random 2–3-layer models with O(1) activations
    // (measured: max rel err 0.08–0.18, argmax agreement 0.79–0.94; qwen3_tied worst).
    EXPECT_LT(err, 0.25) << name;
    EXPECT_GE(agree, 0.75) << name;
  }
}

TEST(Fp8Engine, DummyWeightsWithQuantization) {
  TempDir dir;
  json cfg = fp8_config();
  cfg.erase("quantization_config");
  write_file(dir.str() + "/config.json", cfg.dump());  // no weights at all
  EngineOptions eo;
  eo.model_dir = dir.str();
  eo.load_format = "dummy";
  eo.quantization = "fp8";
  auto e = make_engine(eo);
  EXPECT_EQ(greedy(*e, {5, 6, 7}, 4).size(), 4u);
}

// ---- the transformers-built checkpoints (tests/fp8/make_fp8_fixtures.py) ----

std::string fp8_fixture(const char* name) { return std::string(PIE_SOURCE_DIR) + "/tests/fp8/fixtures/" + name; }

/// Max over the reference's logits rows of max|a − b| / max|b| (transformers' metric) and the
/// ‖a − b‖ / ‖b‖ of the worst row, teacher-forced along the reference's greedy path.
template <class W>
std::pair<double, double> vs_reference(const W& w, const json& ref) {
  double worst_max = 0, worst_l2 = 0;
  const int V = w.config.vocab_size;
  for (const auto& pr : ref["prompts"]) {
    auto ids = pr["prompt_ids"].get<std::vector<int32_t>>();
    const auto greedy = pr["greedy_ids"].get<std::vector<int32_t>>();
    const auto rows = pr["logits"].get<std::vector<std::vector<float>>>();
    const size_t p = ids.size();
    ids.insert(ids.end(), greedy.begin(), greedy.begin() + (rows.size() - 1));
    auto got = all_logits(w, ids);
    for (size_t k = 0; k < rows.size(); ++k) {
      const float* g = got.data() + (p - 1 + k) * V;
      double num = 0, den = 0, n2 = 0, d2 = 0;
      for (int v = 0; v < V; ++v) {
        const double d = double(g[v]) - rows[k][v];
        num = std::max(num, std::fabs(d));
        den = std::max(den, double(std::fabs(rows[k][v])));
        n2 += d * d;
        d2 += double(rows[k][v]) * rows[k][v];
      }
      worst_max = std::max(worst_max, num / den);
      worst_l2 = std::max(worst_l2, std::sqrt(n2 / d2));
    }
  }
  return {worst_max, worst_l2};
}

TEST(Fp8Fixture, Bf16SourceMatchesTransformers) {
  const std::string dir = fp8_fixture("qwen3_bf16");
  if (!std::filesystem::exists(dir + "/reference.json")) GTEST_SKIP() << "no tests/fp8/fixtures (make_fp8_fixtures.py)";
  const json ref = json::parse(std::ifstream(dir + "/reference.json"));
  auto m = model::load_model<float>(dir);
  auto [mx, l2] = vs_reference(m.weights, ref);
  std::printf("[cpu fp32 vs transformers fp32] qwen3_bf16: max rel err %.3g (l2 %.3g)\n", mx, l2);
  EXPECT_LE(mx, 1e-4);  // fp32 arithmetic on both sides over the same bf16 weights
}

TEST(Fp8Fixture, TorchWrittenCheckpointIsOurQuantizationAndItsSchemeAgreesWithBf16) {
  const std::string dir = fp8_fixture("qwen3_fp8");
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << "no tests/fp8/fixtures (make_fp8_fixtures.py)";
  EXPECT_EQ(model::checkpoint_quantization(dir), model::CheckpointQuant::Fp8Block);
  auto w = model::load_fp8_weights<float>(dir, model::load_model_config(dir));
  // The published format written by torch: codes and scales equal the quantization of the bf16
  // source by this file's rule.
  auto src = model::load_model<float>(fp8_fixture("qwen3_bf16"));
  const Fp8Weight& f = w.layers[1].gate_up_proj;
  const auto& s = src.weights.layers[1].gate_up_proj;
  int bad = 0;
  for (int64_t n = 0; n < f.rows(); ++n)
    for (int64_t k = 0; k < f.cols(); ++k) {
      const float v = s.data[n * f.cols() + k], sc = f.scale_at(n, k);
      bad += fp8_e4m3(v / sc).bits != f.q.data[n * f.cols() + k].bits;
    }
  EXPECT_EQ(bad, 0) << "codes differing from e4m3(w / scale)";
  // Teacher-forced greedy agreement of the fp8 scheme with the bf16 model, over the 128-token
  // greedy paths of transformers (fp32 arithmetic over the bf16 weights).
  const json ref16 = json::parse(std::ifstream(fp8_fixture("qwen3_bf16") + "/reference.json"));
  int agree = 0, steps = 0;
  for (const auto& pr : ref16["prompts"]) {
    auto ids = pr["prompt_ids"].get<std::vector<int32_t>>();
    const auto greedy = pr["greedy_ids"].get<std::vector<int32_t>>();
    const size_t p = ids.size();
    ids.insert(ids.end(), greedy.begin(), greedy.end() - 1);
    auto got = all_logits(w, ids);
    const int V = w.config.vocab_size;
    for (size_t k = 0; k < greedy.size(); ++k, ++steps) {
      const float* row = got.data() + (p - 1 + k) * V;
      agree += std::max_element(row, row + V) - row == greedy[k];
    }
  }
  std::printf("[cpu fp8 reference vs bf16 greedy] teacher-forced agreement %d/%d = %.4f\n", agree, steps,
              double(agree) / steps);
  // Measured 352/384 = 0.917 (issue 18 asks 0.95 of the GPU: this random checkpoint's bf16
  // greedy paths have top-2 logit margins down to 1e-3, below fp8's rounding of the logits).
  EXPECT_GE(double(agree) / steps, 0.90);
}

/// CpuForward<float, float> whose fp8 linears quantize activations in groups of `group` columns
/// (0: the weight's own scheme), to compare activation granularities on the same weights.
struct GroupActForward : engine::cpu::CpuForward<float, float> {
  using Base = engine::cpu::CpuForward<float, float>;
  using Base::Base;
  using Base::linear;
  int group = 0;
  std::vector<float> xs, ws;
  void linear(const Act& x, const Fp8Weight& w, const Weight& bias, Act out) {
    const int n = num_tokens(), K = static_cast<int>(x.shape[1]), N = static_cast<int>(w.rows());
    xs.resize(size_t(n) * K);
    ws.resize(size_t(N) * K);
    ops::cpu::fp8_fake_quantize_rows(x.data, x.stride[0], n, K, group > 0 ? group : w.act_group(), xs.data());
    ops::cpu::fp8_dequantize(w, ws.data());
    ops::cpu::linear(xs.data(), n, K, ws.data(), N, bias.numel() > 0 ? bias.data : nullptr, out.data, K, out.stride[0]);
  }
  template <class W>
  void norm_linear(Act x, Act& res, const Weight& norm, bool first, const W& w, const Weight& bias, Act out) {
    add_rms_norm(x, res, norm, first);
    linear(x, w, bias, out);
  }
};

// Is per-token activation scaling (--quantization fp8, vLLM's) too coarse? The same per-channel
// weights with per-token and with 1x128 activation scales, teacher-forced along transformers'
// bf16 greedy paths of the fixture (as the test above), next to the published 128x128 scheme.
TEST(Fp8Fixture, PerTokenAnd1x128ActivationScalesOnPerChannelWeights) {
  const std::string dir = fp8_fixture("qwen3_bf16");
  if (!std::filesystem::exists(dir + "/reference.json")) GTEST_SKIP() << "no tests/fp8/fixtures (make_fp8_fixtures.py)";
  auto src = model::load_model<float>(dir);
  const json ref16 = json::parse(std::ifstream(dir + "/reference.json"));
  auto q = model::quantize_weights<float>(std::make_shared<const model::Weights<float>>(std::move(src.weights)));
  const auto& full = *std::static_pointer_cast<const model::Weights<float>>(q.keep);
  auto run = [&](const auto& w, int group, int& agree, double& err) {
    agree = 0;
    double num = 0, den = 0;
    for (const auto& pr : ref16["prompts"]) {
      auto ids = pr["prompt_ids"].get<std::vector<int32_t>>();
      const auto greedy = pr["greedy_ids"].get<std::vector<int32_t>>();
      const size_t p = ids.size();
      ids.insert(ids.end(), greedy.begin(), greedy.end() - 1);
      const auto& cfg = w.config;
      const int bs = 16, nb = (static_cast<int>(ids.size()) + bs - 1) / bs, V = cfg.vocab_size;
      auto logits_of = [&](auto& f, const auto& weights) {
        std::vector<std::vector<float>> pools(
            cfg.num_hidden_layers, std::vector<float>(size_t(nb + 1) * 2 * cfg.num_key_value_heads * bs * cfg.head_dim));
        std::vector<float*> ptrs;
        for (auto& pl : pools) ptrs.push_back(pl.data());
        std::vector<int32_t> blocks(nb);
        std::iota(blocks.begin(), blocks.end(), 1);
        auto plan = test::make_plan({test::SeqWork{blocks, 0, ids}}, bs);
        plan.logits_rows.resize(ids.size());
        std::iota(plan.logits_rows.begin(), plan.logits_rows.end(), 0);
        std::vector<float> logits(ids.size() * V);
        f.begin(plan, ptrs, bs, logits.data());
        Qwen3::forward(f, weights);
        return logits;
      };
      GroupActForward f(cfg, {});
      f.group = group;
      engine::cpu::CpuForward<float, float> f32(cfg, {});
      const auto got = logits_of(f, w), want = logits_of(f32, full);
      for (size_t k = 0; k < greedy.size(); ++k) {
        const float* row = got.data() + (p - 1 + k) * V;
        agree += std::max_element(row, row + V) - row == greedy[k];
        for (int v = 0; v < V; ++v) {
          const double d = row[v] - want[(p - 1 + k) * V + v];
          num += d * d;
          den += double(want[(p - 1 + k) * V + v]) * want[(p - 1 + k) * V + v];
        }
      }
    }
    err = std::sqrt(num / den);
  };
  int a_tok = 0, a_128 = 0, a_blk = 0;
  double e_tok = 0, e_128 = 0, e_blk = 0;
  run(q, 0, a_tok, e_tok);
  run(q, 128, a_128, e_128);
  auto blk = model::load_fp8_weights<float>(fp8_fixture("qwen3_fp8"), model::load_model_config(fp8_fixture("qwen3_fp8")));
  run(blk, 0, a_blk, e_blk);
  std::printf("[fp8 activation scales vs fp32, teacher-forced 384 steps] per-channel W + per-token x: %d (logits rel "
              "err %.4f); per-channel W + 1x128 x: %d (%.4f); 128x128 W + 1x128 x: %d (%.4f)\n",
              a_tok, e_tok, a_128, e_128, a_blk, e_blk);
  EXPECT_GE(a_tok, 0.85 * 384);
  EXPECT_GE(a_128, 0.85 * 384);
  EXPECT_LE(e_128, e_tok * 1.5);  // finer scales are not worse
}

TEST(Fp8Fixture, CpuReferenceMatchesTransformersFineGrainedFp8) {
  const std::string dir = fp8_fixture("qwen3_fp8");
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << "no tests/fp8/fixtures (make_fp8_fixtures.py)";
  const json ref = json::parse(std::ifstream(dir + "/reference.json"));
  // transformers 5.17 could not run it on the device: its fine-grained FP8 layer needs the
  // `kernels` package (Hub kernels), which that machine has not and cannot fetch.
  if (!ref.contains("prompts")) GTEST_SKIP() << "transformers could not load the fp8 checkpoint: " << ref.value("transformers_fp8", "");
  auto w = model::load_fp8_weights<float>(dir, model::load_model_config(dir));
  auto [mx, l2] = vs_reference(w, ref);
  std::printf("[cpu fp8 reference vs transformers fp8] %s: max rel err %.3g (l2 %.3g)\n",
              ref.value("transformers_fp8", std::string("?")).c_str(), mx, l2);
  EXPECT_LE(l2, 2e-2);
}

}  // namespace
