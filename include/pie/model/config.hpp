#pragma once
/// \file config.hpp
/// \brief ModelConfig (from a Hugging Face config.json) and GenerationConfig (from
/// generation_config.json). Parsing lives in model/config_io.hpp; these are the plain structs
/// every other part reads.
#include <cstdint>
#include <string>
#include <vector>

#include "pie/ops/rope_scaling.hpp"

namespace pie::model {

/// \brief Which decoder family; the three share one implementation (model/qwen3.hpp). Custom:
/// another architecture, parsed for a user's model (architecture_name says which).
enum class Architecture { Qwen3, Qwen2, Llama, Custom };

/// \brief RoPE frequency scaling (HF `rope_scaling`); defined with the RoPE ops, which read it.
using ops::RopeScaling;

/// \brief Shape and numerics of a decoder-only transformer.
struct ModelConfig {
  Architecture architecture = Architecture::Qwen3;
  std::string architecture_name = "Qwen3ForCausalLM";
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;                 ///< may differ from hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      ///< q/k/v biases (Qwen2: true)
  bool qk_norm = false;             ///< per-head RMSNorm of q and k before RoPE (Qwen3)
  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;
  std::string torch_dtype = "bfloat16";

  int q_size() const { return num_attention_heads * head_dim; }
  int kv_size() const { return num_key_value_heads * head_dim; }
  int qkv_size() const { return q_size() + 2 * kv_size(); }
  int gqa_group() const { return num_attention_heads / num_key_value_heads; }
};

/// \brief Defaults from generation_config.json (vLLM's `--generation-config auto`).
struct GenerationConfig {
  std::vector<int32_t> eos_token_ids;  ///< union with config.json's eos ids
  int32_t bos_token_id = -1;
  bool has_temperature = false; float temperature = 1.0f;
  bool has_top_p = false;       float top_p = 1.0f;
  bool has_top_k = false;       int top_k = 0;
  bool has_min_p = false;       float min_p = 0.0f;
  bool has_repetition_penalty = false; float repetition_penalty = 1.0f;
};

}  // namespace pie::model
