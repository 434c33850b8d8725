#pragma once
/// \file embedded.hpp
/// \brief The embedded default model: a tiny Qwen3 (vocab 512, hidden 128, 4 layers, GQA 4:2,
/// head_dim 32, q/k norms, tied embeddings) with deterministic random weights, needing no file
/// outside the repository. `pie generate` / `pie serve` use it when no model directory is given,
/// so a fresh machine sees the whole stack (tokenizer, scheduler, paged KV, sampler, server)
/// work end to end.
///
/// Its weights are random (dummy_weights with a fixed seed): it babbles. The ids match the
/// embedded tokenizer (pie/tokenizer/embedded.hpp): 500 `<|endoftext|>`, 501 `<|im_start|>`,
/// 502 `<|im_end|>`; eos ids are {502, 500} as Qwen3's are {<|im_end|>, <|endoftext|>}.
#include <cstdint>

#include "pie/model/config.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/weights.hpp"

namespace pie::model {

/// \brief Constants of the embedded model.
struct Embedded {
  static constexpr uint64_t kSeed = 0x7069652d656d6264ull;  ///< "pie-embd"
  static constexpr int32_t kEndOfText = 500, kImStart = 501, kImEnd = 502;
  static constexpr const char* kName = "pie-embedded-qwen3-tiny";
};

/// The embedded model's config (Qwen3 family; sizes documented in the file comment).
inline ModelConfig embedded_config() {
  ModelConfig c;
  c.architecture = Architecture::Qwen3;
  c.architecture_name = "Qwen3ForCausalLM";
  c.vocab_size = 512;
  c.hidden_size = 128;
  c.intermediate_size = 384;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1000000.0;
  c.max_position_embeddings = 4096;
  c.tie_word_embeddings = true;
  c.attention_bias = false;
  c.qk_norm = true;
  c.eos_token_ids = {Embedded::kImEnd, Embedded::kEndOfText};
  c.bos_token_id = Embedded::kEndOfText;
  c.torch_dtype = "float32";
  return c;
}

/// Sampling defaults of the embedded model (Qwen3's generation_config.json values).
inline GenerationConfig embedded_generation_config() {
  GenerationConfig g;
  g.eos_token_ids = {Embedded::kImEnd, Embedded::kEndOfText};
  g.bos_token_id = Embedded::kEndOfText;
  g.has_temperature = true; g.temperature = 0.6f;
  g.has_top_p = true;       g.top_p = 0.95f;
  g.has_top_k = true;       g.top_k = 20;
  return g;
}

/// The embedded model's weights: dummy_weights(embedded_config(), Embedded::kSeed).
template <class T>
Weights<T> embedded_weights() {
  return dummy_weights<T>(embedded_config(), Embedded::kSeed);
}

}  // namespace pie::model
