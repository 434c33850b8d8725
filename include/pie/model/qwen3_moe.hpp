#pragma once
/// \file qwen3_moe.hpp
/// \brief Qwen3-MoE (transformers' Qwen3MoeForCausalLM, e.g. Qwen3-30B-A3B) as a model of the
/// engine's Model concept (model/model_concept.hpp): Qwen3's attention (per-head q/k RMSNorm,
/// fused QKV, no biases) and, in its sparse layers, a routed mixture of SwiGLU experts without a
/// shared expert.
///
/// Which layers are sparse is transformers' rule: layer l is a MoE block unless l is in
/// `mlp_only_layers`, when num_experts > 0 and (l + 1) % decoder_sparse_step == 0; the other
/// layers are the dense Qwen3 MLP of `intermediate_size`. The router `mlp.gate.weight` is
/// [E, H]; the experts, one tensor each in the checkpoint (`mlp.experts.<e>.{gate,up,down}_proj`),
/// are fused at load into one [E, 2·I_moe, H] gate_up tensor (per expert its gate rows, then its
/// up rows) and one [E, H, I_moe] down tensor per layer. The block itself is one op of the
/// forward context: f.moe(x, router, gate_up, down, top_k, norm_topk_prob, out).
///
/// The MoE fields of config.json (MoeConfig) are parsed here, not by config_io, and travel in
/// the weights. Backends: the CPU (exact fp32 reference) and CUDA (ops/cuda/moe.cuh through
/// CudaForward::moe), both listed by registry/make_engine.hpp, with dummy weights
/// (--load-format dummy; on the GPU generated on the device). Tensor parallelism: shard() cuts a
/// rank's weights (experts by their intermediate dimension); tested on the CPU's simulated ranks.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pie/core/error.hpp"
#include "pie/core/tensor.hpp"
#include "pie/model/config.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/loader.hpp"
#include "pie/model/tp_plan.hpp"

namespace pie {

namespace model {

/// \brief The mixture-of-experts fields of a Qwen3-MoE config.json.
struct MoeConfig {
  int num_experts = 0;            ///< `num_experts` (transformers 5 writes `num_local_experts`)
  int num_experts_per_tok = 0;    ///< top-k
  int moe_intermediate_size = 0;  ///< each expert's intermediate size
  bool norm_topk_prob = false;    ///< renormalise the k chosen probabilities to sum to 1
  int decoder_sparse_step = 1;
  std::vector<int> mlp_only_layers;

  /// Whether layer `l` is a MoE block (transformers' Qwen3MoeDecoderLayer rule).
  bool sparse(int l) const {
    return std::find(mlp_only_layers.begin(), mlp_only_layers.end(), l) == mlp_only_layers.end() &&
           num_experts > 0 && (l + 1) % decoder_sparse_step == 0;
  }
};

/// Parses the MoE fields of config.json object `j` (`src` names the file in errors) for a
/// model of `num_layers` layers. num_experts, num_experts_per_tok and moe_intermediate_size are
/// required; the others default as in transformers' Qwen3MoeConfig.
inline MoeConfig parse_moe_config(const nlohmann::json& j, const std::string& src, int num_layers) {
  using detail::get_or;
  MoeConfig m;
  const char* experts_key = detail::has(j, "num_experts") ? "num_experts" : "num_local_experts";
  m.num_experts = detail::required_int(j, experts_key, src);
  m.num_experts_per_tok = detail::required_int(j, "num_experts_per_tok", src);
  m.moe_intermediate_size = detail::required_int(j, "moe_intermediate_size", src);
  m.norm_topk_prob = get_or<bool>(j, "norm_topk_prob", false, src);
  m.decoder_sparse_step = detail::has(j, "decoder_sparse_step") ? detail::required_int(j, "decoder_sparse_step", src) : 1;
  m.mlp_only_layers = get_or<std::vector<int>>(j, "mlp_only_layers", {}, src);
  PIE_CHECK(m.num_experts_per_tok <= m.num_experts, src, ": num_experts_per_tok ", m.num_experts_per_tok,
            " exceeds the ", m.num_experts, " experts");
  for (int l : m.mlp_only_layers)
    PIE_CHECK(l >= 0 && l < num_layers, src, ": mlp_only_layers entry ", l, " is not a layer of [0, ", num_layers, ")");
  PIE_CHECK(get_or<int>(j, "shared_expert_intermediate_size", 0, src) == 0, src,
            ": a shared expert (shared_expert_intermediate_size) is not part of Qwen3-MoE");
  return m;
}

/// Reads the MoE fields of `dir`/config.json.
inline MoeConfig load_moe_config(const std::string& dir, int num_layers) {
  const std::string file = (std::filesystem::path(dir) / "config.json").string();
  return parse_moe_config(detail::read_json(file), file, num_layers);
}

}  // namespace model

/// \brief Qwen3MoeForCausalLM (see file comment).
struct Qwen3Moe {
  static constexpr std::string_view kName = "qwen3_moe";
  static constexpr std::string_view kArchitectureName = "Qwen3MoeForCausalLM";

  /// config.json: the shared decoder fields (the MoE ones are read by load()).
  static model::ModelConfig load_config(const std::string& dir) {
    return model::load_model_config(dir, /*any_architecture=*/true);
  }
  static void check_config(const model::ModelConfig& c) {
    PIE_CHECK(c.architecture_name == kArchitectureName, "model ", kName, " runs ", kArchitectureName,
              " checkpoints; this config.json is ", c.architecture_name);
    PIE_CHECK(!c.attention_bias, "model ", kName, ": attention_bias = true is not supported");
  }

  /// The tensors, fused as the forward wants them.
  template <class T>
  struct Weights {
    using Tensor = TensorView<T>;
    struct Layer {
      Tensor input_layernorm;           ///< [H]
      Tensor qkv_proj;                  ///< [(nq + 2 nkv)·hd, H]
      Tensor q_norm, k_norm;            ///< [hd]
      Tensor o_proj;                    ///< [H, nq·hd]
      Tensor post_attention_layernorm;  ///< [H]
      Tensor gate_up_proj, down_proj;   ///< dense layers: [2·I, H], [H, I]; empty in MoE layers
      Tensor router;                    ///< MoE layers: [E, H]; empty in dense layers
      Tensor experts_gate_up;           ///< [E, 2·I_moe, H]
      Tensor experts_down;              ///< [E, H, I_moe]
      bool sparse() const { return router.data != nullptr; }
    };
    model::ModelConfig config;
    model::MoeConfig moe;
    Tensor embed_tokens, norm, lm_head;  // lm_head aliases embed_tokens when tied
    std::vector<Layer> layers;
    model::TensorStore<T> store;  // host storage the views point into (null on a GPU copy)

    template <class F>
    void for_each(F&& f) {
      f(embed_tokens);
      f(norm);
      f(lm_head);
      for (auto& L : layers)
        for (Tensor* t : {&L.input_layernorm, &L.qkv_proj, &L.q_norm, &L.k_norm, &L.o_proj,
                          &L.post_attention_layernorm, &L.gate_up_proj, &L.down_proj, &L.router, &L.experts_gate_up,
                          &L.experts_down})
          f(*t);
    }
  };

  /// The checkpoint in `dir` (its config.json's MoE fields, its safetensors).
  template <class T>
  static Weights<T> load(const std::string& dir, const model::ModelConfig& c, const model::LoadOptions& opt) {
    model::CheckpointReader<T> r(dir);
    return declare<T>(r, c, model::load_moe_config(dir, c.num_hidden_layers), opt);
  }
  /// Random weights of the checkpoint's shape (--load-format dummy; only config.json is read).
  template <class T>
  static Weights<T> dummy(const std::string& dir, const model::ModelConfig& c, uint64_t seed,
                          const model::LoadOptions& opt) {
    model::DummyReader<T> r(seed);
    return declare<T>(r, c, model::load_moe_config(dir, c.num_hidden_layers), opt);
  }

  /// Declares every tensor with reader `r` (model::CheckpointReader or model::DummyReader), then
  /// reads them.
  template <class T, class R>
  static Weights<T> declare(R& r, const model::ModelConfig& c, const model::MoeConfig& moe,
                            const model::LoadOptions& opt) {
    Weights<T> w;
    w.config = c;
    w.moe = moe;
    const model::MoeConfig& m = w.moe;
    const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_size(), KV = c.kv_size(), hd = c.head_dim;
    const int64_t E = m.num_experts, Im = m.moe_intermediate_size;
    w.embed_tokens = r.matrix("model.embed_tokens.weight", c.vocab_size, H);
    for (int i = 0; i < c.num_hidden_layers; ++i) {
      auto n = [i](const std::string& rest) { return model::layer_tensor(i, rest.c_str()); };
      typename Weights<T>::Layer L;
      L.input_layernorm = r.vector(n("input_layernorm.weight"), H);
      L.qkv_proj = r.stacked({{n("self_attn.q_proj.weight"), Q}, {n("self_attn.k_proj.weight"), KV},
                              {n("self_attn.v_proj.weight"), KV}}, H);
      L.q_norm = r.vector(n("self_attn.q_norm.weight"), hd);
      L.k_norm = r.vector(n("self_attn.k_norm.weight"), hd);
      L.o_proj = r.matrix(n("self_attn.o_proj.weight"), H, Q);
      L.post_attention_layernorm = r.vector(n("post_attention_layernorm.weight"), H);
      if (m.sparse(i)) {
        L.router = r.matrix(n("mlp.gate.weight"), E, H);
        std::vector<std::pair<std::string, int64_t>> gate_up, down;
        for (int64_t e = 0; e < E; ++e) {
          const std::string x = "mlp.experts." + std::to_string(e) + ".";
          gate_up.emplace_back(n(x + "gate_proj.weight"), Im);
          gate_up.emplace_back(n(x + "up_proj.weight"), Im);
          down.emplace_back(n(x + "down_proj.weight"), H);
        }
        L.experts_gate_up = TensorView<T>(r.stacked(std::move(gate_up), H).data, {E, 2 * Im, H});
        L.experts_down = TensorView<T>(r.stacked(std::move(down), Im).data, {E, H, Im});
      } else {
        L.gate_up_proj = r.stacked({{n("mlp.gate_proj.weight"), I}, {n("mlp.up_proj.weight"), I}}, H);
        L.down_proj = r.matrix(n("mlp.down_proj.weight"), H, I);
      }
      w.layers.push_back(L);
    }
    w.norm = r.vector("model.norm.weight", H);
    w.lm_head = c.tie_word_embeddings ? w.embed_tokens : r.matrix("lm_head.weight", c.vocab_size, H);
    w.store = r.read(opt);
    return w;
  }

  /// Rank s.rank's tensor-parallel shard of full weights `w` (model/tp_plan.hpp's layout):
  /// attention heads, the dense MLP's intermediate features and the vocab as for Qwen3, the
  /// router replicated, and every expert sharded by its intermediate dimension (its gate and up
  /// rows of the rank's slice, its down columns of the same slice), so each rank's MoE output is
  /// a partial sum that the forward's all_reduce completes. config = s.local.
  template <class T>
  static Weights<T> shard(const Weights<T>& w, const parallel::TpShard& s) {
    using parallel::Range;
    const model::ModelConfig& g = s.global;
    const int64_t H = g.hidden_size, I = g.intermediate_size, Q = g.q_size(), KV = g.kv_size();
    const int64_t E = w.moe.num_experts, Im = w.moe.moe_intermediate_size;
    PIE_CHECK(Im % s.tp_size == 0, "model ", kName, ": moe_intermediate_size ", Im, " does not split into ",
              s.tp_size, " tensor-parallel ranks");
    const Range im{Im / s.tp_size * s.rank, Im / s.tp_size * (s.rank + 1)};
    Weights<T> out;
    out.config = s.local;
    out.moe = w.moe;
    out.moe.moe_intermediate_size = static_cast<int>(im.size());
    // [Σ row blocks (+ pad zero rows), cols c] from the rows and columns [c.begin, c.end) of a
    // row-major source of `ld` columns.
    auto cut = [&](const TensorView<T>& src, int64_t ld, const std::vector<Range>& rows, Range c,
                   int64_t pad = 0) {
      int64_t n = pad;
      for (const Range& r : rows) n += r.size();
      TensorView<T> t = out.store.allocate({n, c.size()});
      T* dst = t.data;
      for (const Range& r : rows)
        for (int64_t i = r.begin; i < r.end; ++i, dst += c.size())
          std::copy_n(src.data + i * ld + c.begin, c.size(), dst);
      std::fill(dst, dst + pad * c.size(), T{});
      return t;
    };
    auto copy = [&](const TensorView<T>& v) {
      if (v.data == nullptr) return v;
      TensorView<T> t = v;  // same shape (the source views are contiguous)
      t.data = out.store.allocate({v.numel()}).data;
      std::copy_n(v.data, v.numel(), t.data);
      return t;
    };
    const Range all_h{0, H}, vocab_pad{0, s.vocab_per_rank - s.vocab.size()};
    out.embed_tokens = cut(w.embed_tokens, H, {s.vocab}, all_h, vocab_pad.end);
    out.norm = copy(w.norm);
    out.lm_head = w.lm_head.data == w.embed_tokens.data ? out.embed_tokens
                                                        : cut(w.lm_head, H, {s.vocab}, all_h, vocab_pad.end);
    const Range q = s.q_rows(), kv = s.kv_rows(), inter = s.intermediate;
    for (const auto& L : w.layers) {
      typename Weights<T>::Layer o;
      o.input_layernorm = copy(L.input_layernorm);
      o.post_attention_layernorm = copy(L.post_attention_layernorm);
      o.q_norm = copy(L.q_norm);
      o.k_norm = copy(L.k_norm);
      o.qkv_proj = cut(L.qkv_proj, H, {q, {Q + kv.begin, Q + kv.end}, {Q + KV + kv.begin, Q + KV + kv.end}}, all_h);
      o.o_proj = cut(L.o_proj, Q, {{0, H}}, q);
      if (L.sparse()) {
        o.router = copy(L.router);
        std::vector<Range> gu;
        for (int64_t e = 0; e < E; ++e) {
          gu.push_back({e * 2 * Im + im.begin, e * 2 * Im + im.end});            // its gate rows
          gu.push_back({e * 2 * Im + Im + im.begin, e * 2 * Im + Im + im.end});  // its up rows
        }
        o.experts_gate_up = TensorView<T>(cut(L.experts_gate_up, H, gu, all_h).data, {E, 2 * im.size(), H});
        o.experts_down = TensorView<T>(cut(L.experts_down, Im, {{0, E * H}}, im).data, {E, H, im.size()});
      } else {
        o.gate_up_proj = cut(L.gate_up_proj, H, {inter, {I + inter.begin, I + inter.end}}, all_h);
        o.down_proj = cut(L.down_proj, I, {{0, H}}, inter);
      }
      out.layers.push_back(o);
    }
    return out;
  }

  /// One step over the backend's forward context `f`: Qwen3's pre-norm blocks, with the MoE
  /// block in the sparse layers.
  template <class F, class W>
  static void forward(F& f, const W& w) {
    const model::ModelConfig& c = f.config();
    const int64_t H = c.hidden_size, Q = c.q_size();
    int64_t I = 0;  // the widest dense MLP (0 when every layer is sparse)
    for (const auto& L : w.layers)
      if (!L.sparse()) I = c.intermediate_size;
    auto x = f.act(H);    // block input / output
    auto res = f.act(H);  // the residual stream
    auto y = f.act(H);    // the MoE block's output
    auto qkv = f.act(c.qkv_size());
    auto mid = f.act(std::max<int64_t>(Q, I));  // attention output, then the dense SwiGLU output
    auto gate_up = f.act(std::max<int64_t>(2 * I, 1));
    f.embed(w.embed_tokens, x);
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const auto& L = w.layers[l];
      f.norm_linear(x, res, L.input_layernorm, l == 0, L.qkv_proj, {}, qkv);
      // read after RoPE + attention, which leave DRAM idle
      f.prefetch(L.o_proj, L.sparse() ? L.router : L.gate_up_proj);
      f.qk_norm_rope(qkv, L.q_norm, L.k_norm);
      auto attn = f.reuse(mid, Q);
      f.attention(l, qkv, attn);
      f.linear(attn, L.o_proj, {}, x);
      f.all_reduce(x);
      if (L.sparse()) {
        f.norm_moe(x, res, L.post_attention_layernorm, false, L.router, L.experts_gate_up, L.experts_down,
                   w.moe.num_experts_per_tok, w.moe.norm_topk_prob, y);
        f.all_reduce(y);
        std::swap(x, y);  // views: the block's output is x from here on
      } else {
        f.norm_linear(x, res, L.post_attention_layernorm, false, L.gate_up_proj, {}, gate_up);
        auto act = f.reuse(mid, I);
        f.silu_and_mul(gate_up, act);
        f.linear(act, L.down_proj, {}, x);
        f.all_reduce(x);
      }
    }
    f.add_rms_norm(x, res, w.norm, c.num_hidden_layers == 0);
    f.logits(x, w.lm_head);
  }
};

}  // namespace pie
