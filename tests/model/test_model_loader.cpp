// load_weights on the committed HF transformers fixtures: every fused tensor holds exactly the
// checkpoint's rows in the documented order, tied embeddings alias, and conversion to
// f16/bf16 rounds each element as pie::from_float does.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "pie/model/load.hpp"
#include "test_util.hpp"

namespace pie::model {
namespace {

const char* const kFixtures[] = {"qwen3_tied", "qwen3_gqa4_sharded", "qwen2_bias",
                                 "llama_rope_llama3"};

std::vector<float> raw(const Checkpoint& ck, const std::string& name) {
  const TensorInfo& t = ck.at(name);
  std::vector<float> v(static_cast<size_t>(t.numel()));
  read_elements(t, 0, v.size(), v.data());
  return v;
}

template <class T>
std::vector<float> view_values(const TensorView<T>& v, int64_t begin = 0, int64_t count = -1) {
  if (count < 0) count = v.numel() - begin;
  std::vector<float> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) out[i] = to_float(v.data[begin + i]);
  return out;
}

/// Checks `fused` rows [row0, row0 + rows) equal checkpoint tensor `name`.
void expect_rows(const TensorView<float>& fused, int64_t row0, const Checkpoint& ck,
                 const std::string& name) {
  std::vector<float> want = raw(ck, name);
  int64_t cols = fused.rank == 2 ? fused.shape[1] : 1;
  EXPECT_EQ(view_values(fused, row0 * cols, static_cast<int64_t>(want.size())), want) << name;
}

class FixtureLoad : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureLoad, FusedLayoutMatchesCheckpoint_F32) {
  const std::string dir = testing::fixture_dir(GetParam());
  ModelConfig cfg = load_model_config(dir);
  Weights<float> w = load_weights<float>(dir, cfg, {.progress = false});
  Checkpoint ck(dir);
  const int64_t h = cfg.hidden_size, q = cfg.q_size(), kv = cfg.kv_size(), in = cfg.intermediate_size;
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(cfg.num_hidden_layers));
  EXPECT_EQ(w.embed_tokens.shape[0], cfg.vocab_size);
  EXPECT_EQ(w.embed_tokens.shape[1], h);
  expect_rows(w.embed_tokens, 0, ck, "model.embed_tokens.weight");
  expect_rows(w.norm, 0, ck, "model.norm.weight");
  for (int i = 0; i < cfg.num_hidden_layers; ++i) {
    SCOPED_TRACE("layer " + std::to_string(i));
    const LayerWeights<float>& l = w.layers[i];
    auto n = [i](const char* rest) { return layer_tensor(i, rest); };
    EXPECT_EQ(l.qkv_proj.rank, 2);
    EXPECT_EQ(l.qkv_proj.shape[0], q + 2 * kv);
    EXPECT_EQ(l.qkv_proj.shape[1], h);
    expect_rows(l.qkv_proj, 0, ck, n("self_attn.q_proj.weight"));
    expect_rows(l.qkv_proj, q, ck, n("self_attn.k_proj.weight"));
    expect_rows(l.qkv_proj, q + kv, ck, n("self_attn.v_proj.weight"));
    if (cfg.attention_bias) {
      EXPECT_EQ(l.qkv_bias.numel(), q + 2 * kv);
      expect_rows(l.qkv_bias, 0, ck, n("self_attn.q_proj.bias"));
      expect_rows(l.qkv_bias, q, ck, n("self_attn.k_proj.bias"));
      expect_rows(l.qkv_bias, q + kv, ck, n("self_attn.v_proj.bias"));
    } else {
      EXPECT_EQ(l.qkv_bias.data, nullptr);
    }
    if (cfg.qk_norm) {
      EXPECT_EQ(l.q_norm.numel(), cfg.head_dim);
      expect_rows(l.q_norm, 0, ck, n("self_attn.q_norm.weight"));
      expect_rows(l.k_norm, 0, ck, n("self_attn.k_norm.weight"));
    } else {
      EXPECT_EQ(l.q_norm.data, nullptr);
      EXPECT_EQ(l.k_norm.data, nullptr);
    }
    EXPECT_EQ(l.o_proj.shape[0], h);
    EXPECT_EQ(l.o_proj.shape[1], q);
    expect_rows(l.o_proj, 0, ck, n("self_attn.o_proj.weight"));
    expect_rows(l.input_layernorm, 0, ck, n("input_layernorm.weight"));
    expect_rows(l.post_attention_layernorm, 0, ck, n("post_attention_layernorm.weight"));
    EXPECT_EQ(l.gate_up_proj.shape[0], 2 * in);
    expect_rows(l.gate_up_proj, 0, ck, n("mlp.gate_proj.weight"));
    expect_rows(l.gate_up_proj, in, ck, n("mlp.up_proj.weight"));
    EXPECT_EQ(l.down_proj.shape[0], h);
    EXPECT_EQ(l.down_proj.shape[1], in);
    expect_rows(l.down_proj, 0, ck, n("mlp.down_proj.weight"));
  }
  if (cfg.tie_word_embeddings) {
    EXPECT_EQ(w.lm_head.data, w.embed_tokens.data);
    EXPECT_FALSE(ck.contains("lm_head.weight"));  // transformers omits the tied copy
  } else {
    EXPECT_NE(w.lm_head.data, w.embed_tokens.data);
    expect_rows(w.lm_head, 0, ck, "lm_head.weight");
  }
}

template <class T>
void expect_converted(const Weights<float>& f, const Weights<T>& t) {
  auto same = [](const TensorView<float>& a, const TensorView<T>& b, const char* what) {
    ASSERT_EQ(a.numel(), b.numel()) << what;
    for (int64_t i = 0; i < a.numel(); ++i)
      ASSERT_EQ(to_float(from_float<T>(a.data[i])), to_float(b.data[i])) << what << " [" << i << "]";
  };
  same(f.embed_tokens, t.embed_tokens, "embed");
  same(f.lm_head, t.lm_head, "lm_head");
  for (size_t i = 0; i < f.layers.size(); ++i) {
    same(f.layers[i].qkv_proj, t.layers[i].qkv_proj, "qkv");
    same(f.layers[i].gate_up_proj, t.layers[i].gate_up_proj, "gate_up");
    same(f.layers[i].down_proj, t.layers[i].down_proj, "down");
  }
}

TEST_P(FixtureLoad, ConvertsToBf16AndF16_OneAndTwoThreads) {
  const std::string dir = testing::fixture_dir(GetParam());
  ModelConfig cfg = load_model_config(dir);
  Weights<float> f = load_weights<float>(dir, cfg, {.progress = false, .threads = 1});
  expect_converted(f, load_weights<bf16>(dir, cfg, {.progress = false, .threads = 2}));
  expect_converted(f, load_weights<f16>(dir, cfg, {.progress = false, .threads = 2}));
  Weights<bf16> b = load_weights<bf16>(dir, cfg, {.progress = false});
  EXPECT_EQ(b.lm_head.data == b.embed_tokens.data, cfg.tie_word_embeddings);
}

/// The reference outputs are self-consistent: the format README.md documents, and greedy token
/// 0 is the argmax of logit row 0 (row j is the distribution after j greedy tokens).
TEST_P(FixtureLoad, ReferenceJsonFormat) {
  const std::string dir = testing::fixture_dir(GetParam());
  std::ifstream in(dir + "/reference.json");
  nlohmann::json r = nlohmann::json::parse(in);
  ModelConfig cfg = load_model_config(dir);
  EXPECT_EQ(r["name"], GetParam());
  EXPECT_EQ(r["architecture"], cfg.architecture_name);
  EXPECT_EQ(r["vocab_size"], cfg.vocab_size);
  ASSERT_GE(r["prompts"].size(), 3u);
  for (const auto& p : r["prompts"]) {
    ASSERT_EQ(p["greedy_ids"].size(), r["new_tokens"].get<size_t>());
    ASSERT_EQ(p["logits"].size(), r["logit_steps"].get<size_t>());
    for (int j = 0; j < r["logit_steps"].get<int>(); ++j) {
      auto row = p["logits"][j].get<std::vector<float>>();
      ASSERT_EQ(row.size(), static_cast<size_t>(cfg.vocab_size));
      EXPECT_EQ(std::max_element(row.begin(), row.end()) - row.begin(), p["greedy_ids"][j].get<int>());
    }
    for (int id : p["prompt_ids"]) EXPECT_LT(id, cfg.vocab_size);
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, FixtureLoad, ::testing::ValuesIn(kFixtures),
                         [](const auto& info) { return std::string(info.param); });

TEST(Loader, ShardedFixture_HasSeveralFiles) {
  Checkpoint ck(testing::fixture_dir("qwen3_gqa4_sharded"));
  EXPECT_GT(ck.files().size(), 2u);
  EXPECT_NE(ck.source().find("model.safetensors.index.json"), std::string::npos);
}

/// A BF16 checkpoint loaded as float gives exactly the bf16 values; as bf16, the same bits.
TEST(Loader, Bf16Checkpoint_ToFloatAndBf16) {
  testing::TempDir tmp;
  auto t = testing::tiny_qwen3_tensors();
  for (auto& r : t) {
    std::vector<unsigned char> b(r.bytes.size() / 2);
    for (size_t i = 0; i < b.size() / 2; ++i) {
      float x;
      std::memcpy(&x, &r.bytes[4 * i], 4);
      uint16_t h = bf16::from_float(x);
      std::memcpy(&b[2 * i], &h, 2);
    }
    r.bytes = std::move(b);
    r.dtype = "BF16";
  }
  testing::write_tiny_checkpoint(tmp.str(), t);
  auto m = load_model<float>(tmp.str());
  auto mb = load_model<bf16>(tmp.str());
  uint16_t first;
  std::memcpy(&first, t[0].bytes.data(), 2);
  EXPECT_EQ(m.weights.embed_tokens.data[0], bf16::to_float(first));
  EXPECT_EQ(mb.weights.embed_tokens.data[0].bits, first);
  for (int64_t i = 0; i < m.weights.lm_head.numel(); ++i)
    ASSERT_EQ(m.weights.lm_head.data[i], to_float(mb.weights.lm_head.data[i]));
}

}  // namespace
}  // namespace pie::model
