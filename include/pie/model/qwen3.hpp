#pragma once
/// \file qwen3.hpp
/// \brief The Qwen3 / Qwen2 / Llama family as models of the engine's Model concept
/// (model/model_concept.hpp): one forward, written once over a backend's forward context, that
/// the CPU backend, one GPU and every tensor-parallel rank run unchanged.
///
/// The three named models share the decoder; their differences are traits checked against the
/// checkpoint: Qwen3 normalises q and k per head (q_norm/k_norm) and has no biases, Qwen2 has
/// q/k/v biases, Llama has neither. Engine<pie::Qwen3, P> refuses a Qwen2 checkpoint (and so on)
/// with a message that names the model to use; make_engine() picks by config.json.
///
/// One forward pass covers every token of the step at once — decode rows and prefill chunks of
/// many sequences — so each projection is one GEMM over all rows; attention reads and writes
/// K/V only through the paged cache, so a chunk sees its cached prefix exactly as a decode does.
#include <algorithm>
#include <string_view>

#include "pie/core/error.hpp"
#include "pie/model/config.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/weights.hpp"

namespace pie {

namespace model {

/// \brief The decoder of the Qwen3 family over a forward context `F` (model_concept.hpp):
/// pre-norm attention and SwiGLU MLP blocks with a residual stream, fused QKV and gate/up
/// projections, optional per-head q/k RMSNorm (Qwen3) and q/k/v bias (Qwen2).
struct DecoderForward {
  /// Runs one step: `f` carries the plan, the KV cache, the backend's ops and (under tensor
  /// parallelism) the rank's communicator; `w` are the rank's weights (host or device views).
  template <class F, class W>
  static void forward(F& f, const W& w) {
    const ModelConfig& c = f.config();  // this rank's slice under tensor parallelism
    const int64_t H = c.hidden_size, I = c.intermediate_size;
    auto x = f.act(H);                              // block input / output
    auto res = f.act(H);                            // the residual stream
    auto qkv = f.act(c.qkv_size());
    auto mid = f.act(std::max<int64_t>(c.q_size(), I));  // attention output, then SwiGLU output
    auto gate_up = f.act(2 * I);
    f.embed(w.embed_tokens, x);                     // vocab-parallel gather + all-reduce under TP
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const auto& L = w.layers[l];
      // res += x (res = x in layer 0); x = rmsnorm(res); qkv = x·Wqkvᵀ (+ bias)
      f.norm_linear(x, res, L.input_layernorm, l == 0, L.qkv_proj, L.qkv_bias, qkv);
      f.prefetch(L.o_proj, L.gate_up_proj);         // read after RoPE + attention, which leave DRAM idle
      f.qk_norm_rope(qkv, L.q_norm, L.k_norm);      // norms empty: RoPE only
      auto attn = f.reuse(mid, c.q_size());
      f.attention(l, qkv, attn);                    // K/V into the paged cache, then attend
      f.linear(attn, L.o_proj, {}, x);
      f.all_reduce(x);                              // row-parallel o_proj
      f.norm_linear(x, res, L.post_attention_layernorm, false, L.gate_up_proj, {}, gate_up);
      auto act = f.reuse(mid, I);
      f.silu_and_mul(gate_up, act);
      f.linear(act, L.down_proj, {}, x);
      f.all_reduce(x);                              // row-parallel down_proj
    }
    f.add_rms_norm(x, res, w.norm, c.num_hidden_layers == 0);
    f.logits(x, w.lm_head);                         // sampled rows only; all-gathered under TP
  }
};

/// \brief Shared part of the three named models: weights type, forward, architecture check.
template <class Derived>
struct DecoderFamily : DecoderForward {
  template <class T>
  using Weights = model::Weights<T>;

  /// Throws pie::Error when `c` (config.json) is not this model's architecture, naming the
  /// model that runs it.
  static void check_config(const ModelConfig& c) {
    PIE_CHECK(c.architecture == Derived::kArchitecture, "model ", Derived::kName, " runs ",
              architecture_name(Derived::kArchitecture), " checkpoints; this config.json is ", c.architecture_name,
              ": use pie::", model_for(c.architecture), " (or make_engine(), which picks by config.json)");
  }

 private:
  static const char* model_for(Architecture a) {
    switch (a) {
      case Architecture::Qwen3: return "Qwen3";
      case Architecture::Qwen2: return "Qwen2";
      case Architecture::Llama: return "Llama";
      case Architecture::Custom: break;
    }
    return "(none: write a model of its own, model/model_concept.hpp)";
  }
};

/// \brief Any of the family's three architectures, for code that runs whichever checkpoint it is
/// given (tests over the transformers fixtures; make_engine() uses the named models).
struct AnyDecoder : DecoderForward {
  template <class T>
  using Weights = model::Weights<T>;
  static constexpr std::string_view kName = "qwen3-family";
  static void check_config(const ModelConfig&) {}
};

}  // namespace model

/// \brief Qwen3ForCausalLM: per-head q/k RMSNorm (q/k/v biases when config.json says so).
struct Qwen3 : model::DecoderFamily<Qwen3> {
  static constexpr std::string_view kName = "qwen3";
  static constexpr model::Architecture kArchitecture = model::Architecture::Qwen3;
};

/// \brief Qwen2ForCausalLM: q/k/v biases, no q/k norm.
struct Qwen2 : model::DecoderFamily<Qwen2> {
  static constexpr std::string_view kName = "qwen2";
  static constexpr model::Architecture kArchitecture = model::Architecture::Qwen2;
};

/// \brief LlamaForCausalLM (and Llama-3's scaled RoPE): neither q/k norm nor biases.
struct Llama : model::DecoderFamily<Llama> {
  static constexpr std::string_view kName = "llama";
  static constexpr model::Architecture kArchitecture = model::Architecture::Llama;
};

}  // namespace pie
