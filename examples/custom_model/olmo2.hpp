#pragma once
/// \file olmo2.hpp
/// \brief OLMo-2 (transformers' Olmo2ForCausalLM) written as a user's model: one struct, in its
/// own file, that Engine<Olmo2, Policy> runs on the CPU or a GPU with paged KV, continuous
/// batching, prefix caching and CUDA graphs — nothing under include/pie changes for it.
///
/// What differs from Llama, and so what this file is about:
/// - the norms come AFTER attention and the MLP (`h = h + norm(attn(h))`), not before;
/// - q and k are RMS-normalised over the whole projection (q_norm is [heads·head_dim]), before
///   RoPE, instead of per head.
#include <string>
#include <string_view>

#include "pie/core/error.hpp"
#include "pie/core/tensor.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/loader.hpp"

namespace example {

struct Olmo2 {
  static constexpr std::string_view kName = "olmo2";

  /// config.json: the decoder fields pie parses for any architecture.
  static pie::model::ModelConfig load_config(const std::string& dir) {
    return pie::model::load_model_config(dir, /*any_architecture=*/true);
  }
  static void check_config(const pie::model::ModelConfig& c) {
    PIE_CHECK(c.architecture_name == "Olmo2ForCausalLM", "Olmo2 runs Olmo2ForCausalLM checkpoints, not ",
              c.architecture_name);
    PIE_CHECK(!c.attention_bias, "Olmo2 with attention_bias is not written here");
  }

  /// The tensors, fused as the forward wants them (q/k/v → qkv, gate/up → gate_up).
  template <class T>
  struct Weights {
    using Tensor = pie::TensorView<T>;
    struct Layer {
      Tensor qkv, o, q_norm, k_norm, post_attention_norm, gate_up, down, post_feedforward_norm;
    };
    pie::model::ModelConfig config;
    Tensor embed_tokens, norm, lm_head;
    std::vector<Layer> layers;
    pie::model::TensorStore<T> store;  // host storage the views point into (null on a GPU copy)

    template <class F>
    void for_each(F&& f) {
      f(embed_tokens);
      f(norm);
      f(lm_head);
      for (auto& L : layers)
        for (Tensor* t : {&L.qkv, &L.o, &L.q_norm, &L.k_norm, &L.post_attention_norm, &L.gate_up, &L.down,
                          &L.post_feedforward_norm})
          f(*t);
    }
  };

  template <class T>
  static Weights<T> load(const std::string& dir, const pie::model::ModelConfig& c,
                         const pie::model::LoadOptions& opt) {
    pie::model::CheckpointReader<T> r(dir);
    const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_size(), KV = c.kv_size();
    Weights<T> w;
    w.config = c;
    w.embed_tokens = r.matrix("model.embed_tokens.weight", c.vocab_size, H);
    for (int i = 0; i < c.num_hidden_layers; ++i) {
      auto n = [i](const char* rest) { return "model.layers." + std::to_string(i) + "." + rest; };
      typename Weights<T>::Layer L;
      L.qkv = r.stacked({{n("self_attn.q_proj.weight"), Q}, {n("self_attn.k_proj.weight"), KV},
                         {n("self_attn.v_proj.weight"), KV}}, H);
      L.q_norm = r.vector(n("self_attn.q_norm.weight"), Q);
      L.k_norm = r.vector(n("self_attn.k_norm.weight"), KV);
      L.o = r.matrix(n("self_attn.o_proj.weight"), H, Q);
      L.post_attention_norm = r.vector(n("post_attention_layernorm.weight"), H);
      L.gate_up = r.stacked({{n("mlp.gate_proj.weight"), I}, {n("mlp.up_proj.weight"), I}}, H);
      L.down = r.matrix(n("mlp.down_proj.weight"), H, I);
      L.post_feedforward_norm = r.vector(n("post_feedforward_layernorm.weight"), H);
      w.layers.push_back(L);
    }
    w.norm = r.vector("model.norm.weight", H);
    w.lm_head = c.tie_word_embeddings ? w.embed_tokens : r.matrix("lm_head.weight", c.vocab_size, H);
    w.store = r.read(opt);
    return w;
  }

  /// One step over the backend's forward context `f` (pie's model concept).
  template <class F, class W>
  static void forward(F& f, const W& w) {
    const auto& c = f.config();
    const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_size();
    auto h = f.act(H);        // the residual stream
    auto x = f.act(H);        // a block's output
    auto qkv = f.act(c.qkv_size());
    auto mid = f.act(std::max<int64_t>(Q, I));
    auto gate_up = f.act(2 * I);
    f.embed(w.embed_tokens, h);
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const auto& L = w.layers[l];
      f.linear(h, L.qkv, {}, qkv);
      f.rms_norm(f.cols(qkv, 0, Q), L.q_norm);              // over all heads at once
      f.rms_norm(f.cols(qkv, Q, c.kv_size()), L.k_norm);
      f.rope(qkv);
      auto attn = f.reuse(mid, Q);
      f.attention(l, qkv, attn);
      f.linear(attn, L.o, {}, x);
      f.all_reduce(x);
      f.rms_norm(x, L.post_attention_norm);                 // h = h + norm(attn(h))
      f.add(h, x);
      f.linear(h, L.gate_up, {}, gate_up);
      auto act = f.reuse(mid, I);
      f.silu_and_mul(gate_up, act);
      f.linear(act, L.down, {}, x);
      f.all_reduce(x);
      f.rms_norm(x, L.post_feedforward_norm);               // h = h + norm(mlp(h))
      f.add(h, x);
    }
    f.rms_norm(h, w.norm);
    f.logits(h, w.lm_head);
  }
};

}  // namespace example
