#pragma once
/// \file qwen3.hpp
/// \brief The Qwen3 / Qwen2 / Llama decoder (one implementation: Qwen3 adds per-head q/k
/// RMSNorm, Qwen2 adds q/k/v biases, Llama has neither) run over a StepPlan on the CPU backend.
///
/// One forward pass covers every token of the step at once — decode rows and prefill chunks of
/// many sequences — so each projection is one GEMM over all rows; attention reads and writes
/// K/V only through the paged cache, so a chunk sees its cached prefix exactly as a decode does.
/// Activations are float; weights T and cache KVT are the policy's storage types. The CUDA
/// backend has its own runner; this one is the reference it is compared with.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "pie/attention/variants.hpp"
#include "pie/core/error.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/model/config.hpp"
#include "pie/model/weights.hpp"
#include "pie/ops/cpu/ops.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie {

/// \brief Model tag of the Qwen3 family (Qwen3ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM)
/// for Engine<Model, Policy>.
struct Qwen3 {};

}  // namespace pie

namespace pie::model {

/// \brief Qwen3Cpu's hook for an unsharded model: the whole embedding table and lm_head, no
/// communication. Tensor parallelism plugs in its own (parallel/tp_forward.hpp); the hook is a
/// template parameter, not a virtual interface, so this empty one compiles away.
struct Unsharded {
  /// Prefix of the forward's error messages.
  static constexpr const char* kWho = "forward";
  /// h[n][hidden] = the embeddings of ids.
  template <class T>
  void embed(const Weights<T>& w, const ModelConfig& c, const int32_t* ids, int n, float* h) {
    ops::cpu::embedding(w.embed_tokens.data, c.vocab_size, c.hidden_size, ids, n, h);
  }
  /// Completes a row-parallel projection's output (o_proj, down_proj): nothing to add here.
  void reduce(float*, size_t) {}
  /// logits[m][vocab] = x[m][hidden] · lm_headᵀ.
  template <class T>
  void lm_head(const Weights<T>& w, const ModelConfig& c, const float* x, int m, float* logits) {
    ops::cpu::linear(x, m, c.hidden_size, w.lm_head.data, c.vocab_size, static_cast<const T*>(nullptr), logits);
  }
};

/// \brief CPU forward pass of the Qwen3 family over a StepPlan.
/// \tparam T       weight storage type (float, f16, bf16)
/// \tparam KVT     KV-cache storage type
/// \tparam Variant attention hook struct (attention/variants.hpp)
/// \tparam Hooks   embedding / row-parallel reduction / lm_head hook (Unsharded, or a TP rank's)
template <class T, class KVT, class Variant = attention::Causal, class Hooks = Unsharded>
class Qwen3Cpu {
 public:
  /// `weights` must outlive this object.
  explicit Qwen3Cpu(const Weights<T>& weights, Variant variant = {})
      : Qwen3Cpu(weights, weights.config, variant, Hooks{}) {}
  /// Runs `weights` with config `cfg` (a TP rank's local slice) through `hooks`.
  Qwen3Cpu(const Weights<T>& weights, const ModelConfig& cfg, Variant variant, Hooks hooks)
      : w_(weights), cfg_(cfg), variant_(variant), hooks_(std::move(hooks)),
        rope_(ops::cpu::rope_inv_freq(cfg_.head_dim, cfg_.rope_theta, cfg_.rope_scaling,
                                      cfg_.max_position_embeddings)) {
    PIE_CHECK(cfg_.num_key_value_heads > 0 && cfg_.num_attention_heads % cfg_.num_key_value_heads == 0,
              "num_attention_heads (", cfg_.num_attention_heads, ") must be a multiple of num_key_value_heads (",
              cfg_.num_key_value_heads, ")");
    PIE_CHECK(static_cast<int>(weights.layers.size()) == cfg_.num_hidden_layers, "weights have ",
              weights.layers.size(), " layers, config says ", cfg_.num_hidden_layers);
  }

  const ModelConfig& config() const { return cfg_; }

  /// Runs the step: embeds plan.token_ids, writes every layer's K/V at plan.slot_mapping,
  /// attends through the plan's block tables, and writes the logits of plan.logits_rows.
  /// \param layer_pools one pointer per layer to its pool [blocks][2][kv_heads][block_size][head_dim]
  /// \param logits      [plan.logits_rows.size()][vocab_size], float
  void forward(const sched::StepPlan& plan, std::span<KVT* const> layer_pools, int block_size,
               float* logits) {
    const int n = plan.num_tokens();
    if (n == 0) return;
    PIE_CHECK(static_cast<int>(layer_pools.size()) == cfg_.num_hidden_layers, Hooks::kWho, ": ",
              layer_pools.size(), " KV pools for ", cfg_.num_hidden_layers, " layers");
    PIE_CHECK(static_cast<int>(plan.cu_query_lens.size()) == plan.num_seqs() + 1 &&
                  plan.cu_query_lens.back() == n && static_cast<int>(plan.positions.size()) == n &&
                  static_cast<int>(plan.slot_mapping.size()) == n,
              Hooks::kWho, ": inconsistent StepPlan (", n, " tokens, ", plan.num_seqs(), " sequences)");
    const int H = cfg_.hidden_size, I = cfg_.intermediate_size, hd = cfg_.head_dim;
    const int nq = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads;
    const int qs = cfg_.q_size(), kvs = cfg_.kv_size(), qkv = cfg_.qkv_size();
    const float eps = static_cast<float>(cfg_.rms_norm_eps);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const size_t nH = static_cast<size_t>(n) * H;
    resize(n);

    namespace op = ops::cpu;
    hooks_.embed(w_, cfg_, plan.token_ids.data(), n, h_.data());
    for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
      const LayerWeights<T>& L = w_.layers[l];
      // residual += h (the previous MLP's output); h = norm(residual)
      op::add_rms_norm(h_.data(), res_.data(), L.input_layernorm.data, n, H, eps, l == 0);
      op::linear(h_.data(), n, H, L.qkv_proj.data, qkv, bias_or_null(L.qkv_bias), qkv_.data());
      float* q = qkv_.data();
      float* k = q + qs;
      float* v = k + kvs;
      if (cfg_.qk_norm) {
        op::head_rms_norm(q, qkv, n, nq, hd, L.q_norm.data, eps);
        op::head_rms_norm(k, qkv, n, nkv, hd, L.k_norm.data, eps);
      }
      op::rope_neox(q, qkv, n, nq, hd, plan.positions.data(), rope_);
      op::rope_neox(k, qkv, n, nkv, hd, plan.positions.data(), rope_);
      kv::PagedKV<KVT> kv{layer_pools[l], nkv, hd, block_size, plan.num_seqs(), plan.kv_indptr.data(),
                          plan.kv_indices.data(), plan.kv_last_page_len.data()};
      op::kv_write(kv, k, v, qkv, n, plan.slot_mapping.data());
      // Under TP, local head i reads local KV head i / local group: the same KV head as
      // unsharded because a rank's heads never straddle a GQA group.
      op::paged_attention(q, qkv, attn_.data(), qs, kv, plan.cu_query_lens.data(), nq, scale, variant_);
      op::linear(attn_.data(), n, qs, L.o_proj.data, H, static_cast<const T*>(nullptr), h_.data());
      hooks_.reduce(h_.data(), nH);  // row-parallel o_proj
      op::add_rms_norm(h_.data(), res_.data(), L.post_attention_layernorm.data, n, H, eps);
      op::linear(h_.data(), n, H, L.gate_up_proj.data, 2 * I, static_cast<const T*>(nullptr), gu_.data());
      op::silu_and_mul(gu_.data(), n, I, act_.data());
      op::linear(act_.data(), n, I, L.down_proj.data, H, static_cast<const T*>(nullptr), h_.data());
      hooks_.reduce(h_.data(), nH);  // row-parallel down_proj
    }
    // Final norm and lm_head only on the rows that sample.
    const int m = static_cast<int>(plan.logits_rows.size());
    if (m == 0) return;
    sel_.resize(static_cast<size_t>(m) * H);
    for (int j = 0; j < m; ++j) {
      const int r = plan.logits_rows[j];
      PIE_CHECK(r >= 0 && r < n, Hooks::kWho, ": logits row ", r, " out of [0, ", n, ")");
      const size_t src = static_cast<size_t>(r) * H, dst = static_cast<size_t>(j) * H;
      std::copy_n(h_.data() + src, H, sel_.data() + dst);
      std::copy_n(res_.data() + src, H, selr_.data() + dst);  // selr_ has ≥ n rows, m ≤ n
    }
    op::add_rms_norm(sel_.data(), selr_.data(), w_.norm.data, m, H, eps, cfg_.num_hidden_layers == 0);
    hooks_.lm_head(w_, cfg_, sel_.data(), m, logits);
  }

  /// The hook (a TP rank's shard plan and communicator).
  const Hooks& hooks() const { return hooks_; }

 private:
  static const T* bias_or_null(const TensorView<T>& b) { return b.numel() > 0 ? b.data : nullptr; }
  void resize(int n) {
    const size_t N = static_cast<size_t>(n);
    h_.resize(N * cfg_.hidden_size);
    res_.resize(N * cfg_.hidden_size);
    qkv_.resize(N * cfg_.qkv_size());
    attn_.resize(N * cfg_.q_size());
    gu_.resize(N * 2 * cfg_.intermediate_size);
    act_.resize(N * cfg_.intermediate_size);
    selr_.resize(N * cfg_.hidden_size);
  }

  const Weights<T>& w_;
  ModelConfig cfg_;
  Variant variant_;
  [[no_unique_address]] Hooks hooks_;
  ops::cpu::RopeTable rope_;
  std::vector<float> h_, res_, qkv_, attn_, gu_, act_, sel_, selr_;
};

}  // namespace pie::model
