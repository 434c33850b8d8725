// config.json / generation_config.json parsing for the three architectures, every rope_scaling
// spelling, and the errors for what pie does not support.
#include <gtest/gtest.h>

#include "pie/model/config_io.hpp"
#include "test_util.hpp"

namespace pie::model {
namespace {

using nlohmann::json;
using testing::TempDir;
using testing::throws_naming;

json base_config(const std::string& arch) {
  return json{{"architectures", {arch}}, {"vocab_size", 1000},      {"hidden_size", 256},
              {"intermediate_size", 512}, {"num_hidden_layers", 3}, {"num_attention_heads", 8},
              {"num_key_value_heads", 2},  {"rms_norm_eps", 1e-5},   {"hidden_act", "silu"}};
}

TEST(ModelConfig, Qwen3_8B_RealConfig) {
  const std::string dir = std::string(PIE_SOURCE_DIR) + "/../shared/models/Qwen3-8B";
  if (!std::filesystem::exists(dir + "/config.json")) GTEST_SKIP() << "no " << dir;
  ModelConfig c = load_model_config(dir);
  EXPECT_EQ(c.architecture, Architecture::Qwen3);
  EXPECT_EQ(c.architecture_name, "Qwen3ForCausalLM");
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 12288);
  EXPECT_EQ(c.num_hidden_layers, 36);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.gqa_group(), 4);
  EXPECT_EQ(c.qkv_size(), (32 + 16) * 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::None);
  EXPECT_EQ(c.max_position_embeddings, 40960);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{151645});
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.torch_dtype, "bfloat16");

  GenerationConfig g = load_generation_config(dir, c);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{151645, 151643}));
  EXPECT_TRUE(g.has_temperature);
  EXPECT_FLOAT_EQ(g.temperature, 0.6f);
  EXPECT_TRUE(g.has_top_p);
  EXPECT_FLOAT_EQ(g.top_p, 0.95f);
  EXPECT_TRUE(g.has_top_k);
  EXPECT_EQ(g.top_k, 20);
  EXPECT_FALSE(g.has_min_p);
  EXPECT_FALSE(g.has_repetition_penalty);
}

TEST(ModelConfig, Qwen3_AttentionBiasFromConfig_HeadDimDefault) {
  json j = base_config("Qwen3ForCausalLM");
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.head_dim, 32);  // hidden / heads
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
  j["attention_bias"] = true;
  EXPECT_TRUE(parse_model_config(j).attention_bias);
}

TEST(ModelConfig, Qwen2_AlwaysBias_NoQkNorm) {
  json j = base_config("Qwen2ForCausalLM");
  j["eos_token_id"] = 7;
  j["tie_word_embeddings"] = true;
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.architecture, Architecture::Qwen2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{7});
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
}

TEST(ModelConfig, Llama_ExplicitHeadDim_EosList_KvDefault) {
  json j = base_config("LlamaForCausalLM");
  j.erase("num_key_value_heads");
  j["head_dim"] = 64;  // ≠ 256 / 8
  j["eos_token_id"] = {128001, 128008, 128009};
  j["bos_token_id"] = 128000;
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.architecture, Architecture::Llama);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.q_size(), 512);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_token_id, 128000);
  j["attention_bias"] = true;  // would need an o_proj bias
  EXPECT_TRUE(throws_naming([&] { parse_model_config(j, "x/config.json"); },
                            {"x/config.json", "attention_bias"}));
}

TEST(ModelConfig, ModelTypeOnly_NoArchitectures) {
  json j = base_config("");
  j.erase("architectures");
  j["model_type"] = "qwen2";
  EXPECT_EQ(parse_model_config(j).architecture, Architecture::Qwen2);
}

TEST(ModelConfig, RopeScaling_None_Null_Default) {
  json j = base_config("LlamaForCausalLM");
  j["rope_scaling"] = nullptr;
  j["rope_theta"] = 5e5;
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::None);
  EXPECT_DOUBLE_EQ(c.rope_theta, 5e5);
  j.erase("rope_scaling");
  j.erase("rope_theta");  // transformers 5 spelling
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  c = parse_model_config(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::None);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
}

TEST(ModelConfig, RopeScaling_Linear_OldTypeKey) {
  json j = base_config("LlamaForCausalLM");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.5}};
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Linear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.5);
}

TEST(ModelConfig, RopeScaling_Llama3) {
  json j = base_config("LlamaForCausalLM");
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  j["rope_scaling"].erase("original_max_position_embeddings");
  EXPECT_TRUE(throws_naming([&] { parse_model_config(j); }, {"original_max_position_embeddings"}));
}

TEST(ModelConfig, RopeScaling_Yarn_Qwen3) {
  json j = base_config("Qwen3ForCausalLM");
  j["max_position_embeddings"] = 32768;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Yarn);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_slow, 1.0);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"beta_fast", 16},
                       {"beta_slow", 2}, {"attention_factor", 1.2},
                       {"original_max_position_embeddings", 4096}};
  c = parse_model_config(j);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_fast, 16.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_slow, 2.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.attention_factor, 1.2);
}

TEST(ModelConfig, RopeScaling_Unsupported) {
  json j = base_config("Qwen3ForCausalLM");
  for (const char* t : {"dynamic", "longrope", "su"}) {
    j["rope_scaling"] = {{"rope_type", t}, {"factor", 2.0}};
    EXPECT_TRUE(throws_naming([&] { parse_model_config(j, "m/config.json"); },
                              {"m/config.json", std::string("unsupported rope_scaling ") + t}));
  }
}

TEST(ModelConfig, UnknownArchitecture_NamesFileAndArchitecture) {
  TempDir tmp;
  json j = base_config("MistralForCausalLM");
  testing::write_file(tmp.file("config.json"), j.dump());
  EXPECT_TRUE(throws_naming([&] { load_model_config(tmp.str()); },
                            {tmp.file("config.json"), "MistralForCausalLM"}));
}

TEST(ModelConfig, InvalidValues_AreErrors) {
  json j = base_config("Qwen3ForCausalLM");
  j.erase("hidden_size");
  EXPECT_TRUE(throws_naming([&] { parse_model_config(j); }, {"hidden_size"}));
  j = base_config("Qwen3ForCausalLM");
  j["num_key_value_heads"] = 3;  // 8 % 3 != 0
  EXPECT_TRUE(throws_naming([&] { parse_model_config(j); }, {"num_key_value_heads"}));
  j = base_config("Qwen3ForCausalLM");
  j["hidden_act"] = "gelu";
  EXPECT_TRUE(throws_naming([&] { parse_model_config(j); }, {"gelu"}));
  j = base_config("Qwen2ForCausalLM");
  j["use_sliding_window"] = true;
  EXPECT_TRUE(throws_naming([&] { parse_model_config(j); }, {"use_sliding_window"}));
  j = base_config("Qwen3ForCausalLM");
  j["vocab_size"] = "big";
  EXPECT_TRUE(throws_naming([&] { parse_model_config(j); }, {"vocab_size"}));
  TempDir tmp;
  testing::write_file(tmp.file("config.json"), "{\"architectures\": [");
  EXPECT_TRUE(throws_naming([&] { load_model_config(tmp.str()); }, {tmp.file("config.json"), "invalid JSON"}));
  EXPECT_TRUE(throws_naming([&] { load_model_config(tmp.file("absent.json")); }, {"absent.json"}));
}

TEST(GenerationConfig, AbsentFile_UsesModelEos) {
  TempDir tmp;
  ModelConfig c = parse_model_config(base_config("Qwen3ForCausalLM"));
  c.eos_token_ids = {5};
  c.bos_token_id = 4;
  GenerationConfig g = load_generation_config(tmp.str(), c);
  EXPECT_EQ(g.eos_token_ids, std::vector<int32_t>{5});
  EXPECT_EQ(g.bos_token_id, 4);
  EXPECT_FALSE(g.has_temperature || g.has_top_p || g.has_top_k);
}

TEST(GenerationConfig, IntEos_MergedWithoutDuplicates_AllFields) {
  TempDir tmp;
  testing::write_file(tmp.file("generation_config.json"),
                      json{{"eos_token_id", 9}, {"temperature", 0.3}, {"min_p", 0.05},
                           {"repetition_penalty", 1.1}, {"top_p", nullptr}}.dump());
  ModelConfig c = parse_model_config(base_config("Qwen3ForCausalLM"));
  c.eos_token_ids = {9, 3};
  GenerationConfig g = load_generation_config(tmp.str(), c);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{9, 3}));
  EXPECT_FLOAT_EQ(g.temperature, 0.3f);
  EXPECT_TRUE(g.has_min_p);
  EXPECT_FLOAT_EQ(g.min_p, 0.05f);
  EXPECT_TRUE(g.has_repetition_penalty);
  EXPECT_FLOAT_EQ(g.repetition_penalty, 1.1f);
  EXPECT_FALSE(g.has_top_p);  // null means unset
  testing::write_file(tmp.file("generation_config.json"), json{{"eos_token_id", "x"}}.dump());
  EXPECT_TRUE(throws_naming([&] { load_generation_config(tmp.str(), c); },
                            {"generation_config.json", "eos_token_id"}));
}

/// The committed transformers-5 fixture configs (rope_parameters, dtype spellings).
TEST(ModelConfig, ReferenceFixtures_Transformers5Spelling) {
  ModelConfig a = load_model_config(testing::fixture_dir("qwen3_gqa4_sharded"));
  EXPECT_EQ(a.architecture, Architecture::Qwen3);
  EXPECT_EQ(a.head_dim, 24);
  EXPECT_NE(a.head_dim, a.hidden_size / a.num_attention_heads);
  EXPECT_EQ(a.gqa_group(), 4);
  EXPECT_DOUBLE_EQ(a.rope_theta, 1e6);
  EXPECT_EQ(a.torch_dtype, "float32");
  ModelConfig t = load_model_config(testing::fixture_dir("qwen3_tied"));
  EXPECT_TRUE(t.tie_word_embeddings);
  ModelConfig q2 = load_model_config(testing::fixture_dir("qwen2_bias"));
  EXPECT_EQ(q2.architecture, Architecture::Qwen2);
  EXPECT_TRUE(q2.attention_bias);
  EXPECT_EQ(q2.gqa_group(), 4);
  ModelConfig l = load_model_config(testing::fixture_dir("llama_rope_llama3"));
  EXPECT_EQ(l.architecture, Architecture::Llama);
  EXPECT_EQ(l.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_DOUBLE_EQ(l.rope_scaling.factor, 8.0);
  EXPECT_EQ(l.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_DOUBLE_EQ(l.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(l.rms_norm_eps, 1e-5);
  GenerationConfig g = load_generation_config(testing::fixture_dir("llama_rope_llama3"), l);
  EXPECT_EQ(g.eos_token_ids, std::vector<int32_t>{255});
  EXPECT_FLOAT_EQ(g.temperature, 0.7f);
}

}  // namespace
}  // namespace pie::model
