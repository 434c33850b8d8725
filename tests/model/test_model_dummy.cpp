// dummy_weights (--load-format dummy) and the embedded default model: deterministic for a seed
// and any thread count, shaped like load_weights' output, scaled so a Qwen3-8B-shaped forward
// pass stays finite.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "pie/model/load.hpp"
#include "test_util.hpp"

namespace pie::model {
namespace {

/// Every present tensor (absent optional ones, e.g. qkv_bias without attention_bias, have a
/// null data pointer and are skipped).
template <class T>
std::vector<TensorView<T>> all_tensors(const Weights<T>& w) {
  std::vector<TensorView<T>> v = {w.embed_tokens, w.norm, w.lm_head};
  for (const auto& l : w.layers)
    for (const auto& t : {l.input_layernorm, l.qkv_proj, l.qkv_bias, l.q_norm, l.k_norm, l.o_proj,
                          l.post_attention_layernorm, l.gate_up_proj, l.down_proj})
      if (t.data) v.push_back(t);
  return v;
}

template <class T>
bool bitwise_equal(const Weights<T>& a, const Weights<T>& b) {
  auto ta = all_tensors(a), tb = all_tensors(b);
  if (ta.size() != tb.size()) return false;
  for (size_t i = 0; i < ta.size(); ++i) {
    if (ta[i].numel() != tb[i].numel() || ta[i].rank != tb[i].rank) return false;
    if (std::memcmp(ta[i].data, tb[i].data, ta[i].numel() * sizeof(T))) return false;
  }
  return true;
}

TEST(DummyWeights, SameSeed_SameBits_AnyThreadCount) {
  ModelConfig c = load_model_config(testing::fixture_dir("qwen2_bias"));
  auto a = dummy_weights<float>(c, 42, 1);
  auto b = dummy_weights<float>(c, 42, 2);
  auto d = dummy_weights<float>(c, 42, 7);
  EXPECT_TRUE(bitwise_equal(a, b));
  EXPECT_TRUE(bitwise_equal(a, d));
  EXPECT_FALSE(bitwise_equal(a, dummy_weights<float>(c, 43, 2)));
  // Tensors draw from distinct streams: two same-shaped matrices differ.
  EXPECT_NE(std::memcmp(a.layers[0].down_proj.data, a.layers[1].down_proj.data,
                        a.layers[0].down_proj.numel() * sizeof(float)), 0);
}

TEST(DummyWeights, Bf16AndF16_AreRoundedFloatValues) {
  ModelConfig c = embedded_config();
  auto f = dummy_weights<float>(c, 5);
  auto b = dummy_weights<bf16>(c, 5);
  auto h = dummy_weights<f16>(c, 5);
  auto tf = all_tensors(f);
  auto tb = all_tensors(b);
  auto th = all_tensors(h);
  for (size_t i = 0; i < tf.size(); ++i)
    for (int64_t j = 0; j < tf[i].numel(); ++j) {
      ASSERT_EQ(tb[i].data[j].bits, bf16(tf[i].data[j]).bits);
      ASSERT_EQ(th[i].data[j].bits, f16(tf[i].data[j]).bits);
    }
}

/// Each fixture's dummy weights have exactly the shapes load_weights gives the real checkpoint.
TEST(DummyWeights, ShapesMatchLoadedCheckpoint_AllFixtures) {
  for (const char* name : {"qwen3_tied", "qwen3_gqa4_sharded", "qwen2_bias", "llama_rope_llama3"}) {
    SCOPED_TRACE(name);
    ModelConfig c = load_model_config(testing::fixture_dir(name));
    auto real = all_tensors(load_weights<float>(testing::fixture_dir(name), c, {.progress = false}));
    auto w = dummy_weights<float>(c, 1);
    auto dummy = all_tensors(w);
    ASSERT_EQ(real.size(), dummy.size());
    for (size_t i = 0; i < real.size(); ++i) {
      EXPECT_EQ(real[i].rank, dummy[i].rank) << i;
      EXPECT_EQ(real[i].shape, dummy[i].shape) << i;
    }
    EXPECT_EQ(w.lm_head.data == w.embed_tokens.data, c.tie_word_embeddings);
  }
}

TEST(DummyWeights, Scale_MatricesStd002_NormsNearOne) {
  ModelConfig c = embedded_config();
  auto w = dummy_weights<float>(c, 9);
  double sum = 0, sq = 0;
  int64_t n = 0;
  for (const auto& l : w.layers)
    for (const auto& t : {l.qkv_proj, l.o_proj, l.gate_up_proj, l.down_proj})
      for (int64_t i = 0; i < t.numel(); ++i) {
        ASSERT_TRUE(std::isfinite(t.data[i]));
        sum += t.data[i];
        sq += double(t.data[i]) * t.data[i];
        ++n;
      }
  double mean = sum / n, stdev = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 1e-4);
  EXPECT_NEAR(stdev, DummyScale::kMatrixStd, 0.02 * DummyScale::kMatrixStd);
  float lo = 2, hi = 0;
  for (const auto& l : w.layers)
    for (const auto& t : {l.input_layernorm, l.q_norm, l.k_norm, l.post_attention_layernorm})
      for (int64_t i = 0; i < t.numel(); ++i) {
        lo = std::min(lo, t.data[i]);
        hi = std::max(hi, t.data[i]);
      }
  EXPECT_GE(lo, 1.0f - DummyScale::kNormJitter);
  EXPECT_LE(hi, 1.0f + DummyScale::kNormJitter);
  EXPECT_GT(hi - lo, DummyScale::kNormJitter);  // jittered, not all ones
}

// ---- activations stay finite at Qwen3-8B's shape ---------------------------------------------

void rmsnorm(const std::vector<float>& x, const TensorView<bf16>& w, std::vector<float>& out) {
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  float inv = 1.0f / std::sqrt(float(ss / x.size()) + 1e-6f);
  out.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * inv * to_float(w.data[i % w.numel()]);
}
void matvec(const TensorView<bf16>& m, const std::vector<float>& x, std::vector<float>& y) {
  y.assign(m.shape[0], 0.0f);
  for (int64_t r = 0; r < m.shape[0]; ++r) {
    const uint16_t* row = reinterpret_cast<const uint16_t*>(m.row(r));
    float acc[16] = {};  // 16 independent sums let the compiler vectorize (widths are ×16)
    for (int64_t c = 0; c < m.shape[1]; c += 16)
      for (int k = 0; k < 16; ++k) acc[k] += bf16::to_float(row[c + k]) * x[c + k];
    float s = 0;
    for (float a : acc) s += a;
    y[r] = s;
  }
}
double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s / v.size());
}

/// One token at position 0 (RoPE is the identity, attention over itself returns its own v)
/// through a Qwen3-8B-shaped layer applied 36 times: the residual stream and the logits stay
/// finite and O(1). One layer reused keeps the test at 0.4 GB; reusing is the worse case, as
/// every layer pushes the residual the same way.
TEST(DummyWeights, Qwen3_8B_Shape_OneTokenForwardStaysFinite) {
  const std::string dir = std::string(PIE_SOURCE_DIR) + "/../shared/models/Qwen3-8B";
  if (!std::filesystem::exists(dir + "/config.json")) GTEST_SKIP() << "no " << dir;
  ModelConfig c = load_model_config(dir);
  const int layers = c.num_hidden_layers;
  c.num_hidden_layers = 1;
  c.vocab_size = 4096;  // logits statistics do not depend on the vocabulary size
  auto w = dummy_weights<bf16>(c, 3);
  const LayerWeights<bf16>& l = w.layers[0];
  const int hd = c.head_dim, q = c.q_size(), kv = c.kv_size(), inter = c.intermediate_size;
  std::vector<float> h(c.hidden_size), x, qkv, attn(q), o, gu, act(inter), down;
  for (int i = 0; i < c.hidden_size; ++i) h[i] = to_float(w.embed_tokens.data[123 * c.hidden_size + i]);
  for (int step = 0; step < layers; ++step) {
    rmsnorm(h, l.input_layernorm, x);
    matvec(l.qkv_proj, x, qkv);
    std::vector<float> v(qkv.begin() + q + kv, qkv.end()), qh(qkv.begin(), qkv.begin() + hd), qn;
    rmsnorm(qh, l.q_norm, qn);  // q/k norms: finite, though a lone token ignores q·k
    ASSERT_TRUE(std::isfinite(rms(qn)));
    for (int head = 0; head < c.num_attention_heads; ++head)
      for (int d = 0; d < hd; ++d) attn[head * hd + d] = v[(head / c.gqa_group()) * hd + d];
    matvec(l.o_proj, attn, o);
    for (int i = 0; i < c.hidden_size; ++i) h[i] += o[i];
    rmsnorm(h, l.post_attention_layernorm, x);
    matvec(l.gate_up_proj, x, gu);
    for (int i = 0; i < inter; ++i) act[i] = gu[i] / (1.0f + std::exp(-gu[i])) * gu[inter + i];
    matvec(l.down_proj, act, down);
    for (int i = 0; i < c.hidden_size; ++i) h[i] += down[i];
    ASSERT_TRUE(std::isfinite(rms(h))) << "layer " << step;
    ASSERT_LT(rms(h), 1e3) << "layer " << step;
    if (step % 6 == 5) std::printf("layer %d: residual rms %.3f\n", step + 1, rms(h));
  }
  std::vector<float> logits;
  rmsnorm(h, w.norm, x);
  matvec(w.lm_head, x, logits);
  double r = rms(logits);
  std::printf("logits rms %.3f\n", r);
  EXPECT_TRUE(std::isfinite(r));
  EXPECT_GT(r, 0.3);  // spread enough that sampling is not uniform noise
  EXPECT_LT(r, 10.0);
}

// ---- embedded default ------------------------------------------------------------------------

TEST(EmbeddedModel, ConfigMatchesEmbeddedTokenizerIds) {
  ModelConfig c = embedded_config();
  EXPECT_EQ(c.architecture, Architecture::Qwen3);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{502, 500}));
  EXPECT_TRUE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim * c.num_attention_heads, c.q_size());
  EXPECT_EQ(c.num_attention_heads % c.num_key_value_heads, 0);
  GenerationConfig g = embedded_generation_config();
  EXPECT_EQ(g.eos_token_ids, c.eos_token_ids);
}

TEST(EmbeddedModel, Deterministic_AndWhatLoadModelGivesForNoDirectory) {
  auto a = embedded_weights<float>();
  auto m = load_model<float>("");
  EXPECT_TRUE(bitwise_equal(a, m.weights));
  EXPECT_EQ(m.weights.config.vocab_size, 512);
  EXPECT_EQ(m.weights.lm_head.data, m.weights.embed_tokens.data);
  EXPECT_EQ(m.generation.top_k, 20);
}

TEST(EmbeddedModel, LoadFormatDummy_UsesDirectoryConfig) {
  auto m = load_model<float>(testing::fixture_dir("qwen3_gqa4_sharded"), LoadFormat::Dummy, 11);
  EXPECT_EQ(m.weights.config.head_dim, 24);
  EXPECT_TRUE(bitwise_equal(m.weights, dummy_weights<float>(m.weights.config, 11)));
  EXPECT_EQ(m.generation.eos_token_ids, std::vector<int32_t>{255});
}

}  // namespace
}  // namespace pie::model
