// Shard loading: the shard read straight from the safetensors equals the one cut from the full
// weights, the shards put back together give the full fused tensors, a shard holds ~1/N of the
// sharded parameters, and a checkpoint that disagrees with the config fails naming the tensor.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "pie/model/load.hpp"
#include "pie/model/shard_loader.hpp"

namespace {
namespace fs = std::filesystem;
using namespace pie;

std::string fixture_dir(const std::string& name) {
  return (fs::path(PIE_SOURCE_DIR) / "tests/reference/fixtures" / name).string();
}

template <class T>
bool same(const TensorView<T>& a, const TensorView<T>& b) {
  if (!a.data || !b.data) return !a.data && !b.data;  // absent tensors (a rank-0 view's numel is 1)
  if (a.numel() != b.numel() || a.rank != b.rank) return false;
  for (int d = 0; d < a.rank; ++d) if (a.shape[d] != b.shape[d]) return false;
  return a.numel() == 0 || std::memcmp(a.data, b.data, a.numel() * sizeof(T)) == 0;
}

template <class T>
void expect_same_weights(const model::Weights<T>& a, const model::Weights<T>& b) {
  EXPECT_TRUE(same(a.embed_tokens, b.embed_tokens));
  EXPECT_TRUE(same(a.norm, b.norm));
  EXPECT_TRUE(same(a.lm_head, b.lm_head));
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const auto &x = a.layers[i], &y = b.layers[i];
    EXPECT_TRUE(same(x.input_layernorm, y.input_layernorm)) << i;
    EXPECT_TRUE(same(x.qkv_proj, y.qkv_proj)) << i;
    EXPECT_TRUE(same(x.qkv_bias, y.qkv_bias)) << i;
    EXPECT_TRUE(same(x.q_norm, y.q_norm)) << i;
    EXPECT_TRUE(same(x.k_norm, y.k_norm)) << i;
    EXPECT_TRUE(same(x.o_proj, y.o_proj)) << i;
    EXPECT_TRUE(same(x.post_attention_layernorm, y.post_attention_layernorm)) << i;
    EXPECT_TRUE(same(x.gate_up_proj, y.gate_up_proj)) << i;
    EXPECT_TRUE(same(x.down_proj, y.down_proj)) << i;
  }
}

class ShardFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(ShardFixture, CheckpointShardEqualsInMemorySplitTp2AndTp4) {
  const std::string dir = fixture_dir(GetParam());
  auto full = model::load_model<float>(dir);
  for (int tp : {2, 4}) {
    for (int r = 0; r < tp; ++r) {
      auto s = parallel::make_tp_shard(full.weights.config, tp, r);
      auto from_ckpt = parallel::load_shard_weights<float>(dir, s, {.progress = false});
      auto from_mem = parallel::shard_weights<float>(full.weights, s);
      SCOPED_TRACE("tp " + std::to_string(tp) + " rank " + std::to_string(r));
      expect_same_weights(from_ckpt, from_mem);
      EXPECT_EQ(from_ckpt.config.num_attention_heads, s.local.num_attention_heads);
      EXPECT_EQ(from_ckpt.config.num_key_value_heads, s.local.num_key_value_heads);
      // Conversion to bf16 happens in the same per-slice reads (fixtures are stored in fp32).
      auto b = parallel::load_shard_weights<bf16>(dir, s, {.progress = false});
      const auto& o32 = from_ckpt.layers[0].o_proj;
      for (int64_t i = 0; i < o32.numel(); ++i)
        ASSERT_EQ(to_float(b.layers[0].o_proj.data[i]), to_float(from_float<bf16>(o32.data[i]))) << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ShardFixture,
                         ::testing::Values("llama_rope_llama3", "qwen2_bias", "qwen3_gqa4_sharded",
                                           "qwen3_tied"));

// The fused layouts of the shards, put back together, are the full fused tensors: q rows of all
// ranks in order, then k rows, then v rows; gate/up likewise; o_proj/down_proj by columns.
TEST(ShardLoader, Qwen3Gqa4ShardsReassembleTp2) {
  const std::string dir = fixture_dir("qwen3_gqa4_sharded");
  auto full = model::load_model<float>(dir).weights;
  const auto& c = full.config;
  const int tp = 2, H = c.hidden_size, hd = c.head_dim, I = c.intermediate_size;
  const int ql = c.q_size() / tp, kvl = c.kv_size() / tp, Il = I / tp;
  for (int r = 0; r < tp; ++r) {
    auto s = parallel::make_tp_shard(c, tp, r);
    auto w = parallel::load_shard_weights<float>(dir, s, {.progress = false});
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const auto &F = full.layers[l], &S = w.layers[l];
      const float* fq = F.qkv_proj.data;
      const float* fk = fq + int64_t(c.q_size()) * H;
      const float* fv = fk + int64_t(c.kv_size()) * H;
      EXPECT_EQ(0, std::memcmp(S.qkv_proj.data, fq + int64_t(r) * ql * H, sizeof(float) * ql * H));
      EXPECT_EQ(0, std::memcmp(S.qkv_proj.data + int64_t(ql) * H, fk + int64_t(r) * kvl * H, sizeof(float) * kvl * H));
      EXPECT_EQ(0, std::memcmp(S.qkv_proj.data + int64_t(ql + kvl) * H, fv + int64_t(r) * kvl * H, sizeof(float) * kvl * H));
      for (int row = 0; row < H; ++row) {
        EXPECT_EQ(0, std::memcmp(S.o_proj.data + int64_t(row) * ql, F.o_proj.data + int64_t(row) * c.q_size() + r * ql,
                                 sizeof(float) * ql));
        EXPECT_EQ(0, std::memcmp(S.down_proj.data + int64_t(row) * Il, F.down_proj.data + int64_t(row) * I + r * Il,
                                 sizeof(float) * Il));
      }
      EXPECT_EQ(0, std::memcmp(S.gate_up_proj.data, F.gate_up_proj.data + int64_t(r) * Il * H, sizeof(float) * Il * H));
      EXPECT_EQ(0, std::memcmp(S.gate_up_proj.data + int64_t(Il) * H, F.gate_up_proj.data + int64_t(I + r * Il) * H,
                               sizeof(float) * Il * H));
      EXPECT_EQ(S.q_norm.numel(), hd);
    }
    EXPECT_EQ(w.embed_tokens.size(0), c.vocab_size / tp);
  }
}

// Each rank holds its 1/N of every sharded matrix plus the replicated norms (and replicated KV
// heads when there are fewer than N): far less than the whole model.
TEST(ShardLoader, ShardHoldsItsFractionOfTheModelTp4) {
  const std::string dir = fixture_dir("qwen3_gqa4_sharded");
  auto full = model::load_model<float>(dir).weights;
  auto numel = [](const model::Weights<float>& w) {
    size_t n = 0;
    for (const auto& b : w.storage) n += b.size();
    return n;
  };
  auto s = parallel::make_tp_shard(full.config, 4, 1);
  auto w = parallel::load_shard_weights<float>(dir, s, {.progress = false});
  const auto& c = full.config;
  const size_t H = c.hidden_size, L = c.num_hidden_layers, hd = c.head_dim;
  // 8 heads, 2 KV heads at tp 4: 2 q heads and 1 (replicated) KV head per rank.
  const size_t per_layer = (2 + 2 * 1) * hd * H + H * 2 * hd + 2 * (c.intermediate_size / 4) * H +
                           H * (c.intermediate_size / 4) + 2 * H + 2 * hd;
  EXPECT_EQ(numel(w), L * per_layer + 2 * (c.vocab_size / 4) * H + H);
  EXPECT_LT(numel(w) * 3, numel(full));
}

TEST(ShardLoader, CheckpointDisagreeingWithConfigNamesTheTensor) {
  const std::string dir = fixture_dir("qwen3_gqa4_sharded");
  auto cfg = model::load_model_config(dir);
  cfg.intermediate_size = 200;  // checkpoint has 160
  auto s = parallel::make_tp_shard(cfg, 2, 0);
  try {
    parallel::load_shard_weights<float>(dir, s, {.progress = false});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mlp.gate_proj.weight' has shape [160, 64], expected [200, 64]"),
              std::string::npos) << e.what();
  }
}

}  // namespace
