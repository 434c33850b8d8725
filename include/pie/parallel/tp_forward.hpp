#pragma once
/// \file tp_forward.hpp
/// \brief TpQwen3Cpu: one rank's CPU forward pass of the Qwen3 family under tensor parallelism,
/// over its shard (shard_loader.hpp) and a Communicator. It is Qwen3Cpu (model/qwen3.hpp) with
/// the four communication points of the Megatron layout and the same ops of ops/cpu:
///
///   embedding  vocab-parallel gather (rows of other ranks' ids are zero) → all-reduce
///   attention  local heads: qkv GEMM, q/k norm, RoPE, this rank's KV cache, paged attention
///   o_proj     partial sum over the local heads' columns → all-reduce
///   MLP        local gate/up rows, SwiGLU, down_proj partial sum → all-reduce
///   lm_head    this rank's vocab slice of the logits → all-gather → [rows, vocab]
///
/// Norms and residuals are replicated: every rank holds the full hidden state after each
/// all-reduce, and the CPU communicator gives every rank the same bits, so the ranks stay in
/// lockstep. Each rank's KV cache holds only its KV heads (TpShard::local.num_key_value_heads).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "pie/attention/variants.hpp"
#include "pie/core/error.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/model/weights.hpp"
#include "pie/ops/cpu/ops.hpp"
#include "pie/parallel/communicator.hpp"
#include "pie/parallel/tp_plan.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::parallel {

/// \brief One tensor-parallel rank's CPU forward over a StepPlan.
/// \tparam T       weight storage type (float, f16, bf16)
/// \tparam KVT     KV-cache storage type
/// \tparam Variant attention hook struct (attention/variants.hpp)
template <class T, class KVT, class Variant = attention::Causal>
class TpQwen3Cpu {
 public:
  /// `shard` (this rank's weights, config == s.local) and `comm` (host memory, rank s.rank of
  /// s.tp_size) must outlive this object.
  TpQwen3Cpu(const model::Weights<T>& shard, const TpShard& s, Communicator& comm, Variant variant = {})
      : w_(shard), s_(s), cfg_(s.local), comm_(comm), variant_(variant),
        rope_(ops::cpu::rope_inv_freq(cfg_.head_dim, cfg_.rope_theta, cfg_.rope_scaling,
                                      cfg_.max_position_embeddings)) {
    PIE_CHECK(comm.size() == s.tp_size && comm.rank() == s.rank, "TpQwen3Cpu: communicator is rank ",
              comm.rank(), " of ", comm.size(), ", shard is rank ", s.rank, " of ", s.tp_size);
    PIE_CHECK(!comm.device_memory(), "TpQwen3Cpu: the CPU forward needs a host-memory communicator");
    PIE_CHECK(shard.config.num_attention_heads == cfg_.num_attention_heads &&
                  shard.config.num_key_value_heads == cfg_.num_key_value_heads &&
                  shard.config.intermediate_size == cfg_.intermediate_size &&
                  shard.config.vocab_size == cfg_.vocab_size,
              "TpQwen3Cpu: weights are not this rank's shard (heads ", shard.config.num_attention_heads,
              ", kv heads ", shard.config.num_key_value_heads, ", intermediate ",
              shard.config.intermediate_size, ", vocab ", shard.config.vocab_size, ")");
    PIE_CHECK(static_cast<int>(shard.layers.size()) == cfg_.num_hidden_layers, "TpQwen3Cpu: weights have ",
              shard.layers.size(), " layers, config says ", cfg_.num_hidden_layers);
  }

  const TpShard& shard() const { return s_; }

  /// Runs the step on this rank; every rank must call it with the same plan. Writes this rank's
  /// K/V heads into `layer_pools` (one pool per layer, [blocks][2][local kv heads][block][hd]) and
  /// the full logits of plan.logits_rows into `logits` ([rows][global vocab], same on every rank).
  void forward(const sched::StepPlan& plan, std::span<KVT* const> layer_pools, int block_size,
               float* logits) {
    const int n = plan.num_tokens();
    if (n == 0) return;
    PIE_CHECK(static_cast<int>(layer_pools.size()) == cfg_.num_hidden_layers, "TpQwen3Cpu::forward: ",
              layer_pools.size(), " KV pools for ", cfg_.num_hidden_layers, " layers");
    PIE_CHECK(static_cast<int>(plan.cu_query_lens.size()) == plan.num_seqs() + 1 &&
                  plan.cu_query_lens.back() == n && static_cast<int>(plan.positions.size()) == n &&
                  static_cast<int>(plan.slot_mapping.size()) == n,
              "TpQwen3Cpu::forward: inconsistent StepPlan (", n, " tokens, ", plan.num_seqs(), " sequences)");
    const int H = cfg_.hidden_size, I = cfg_.intermediate_size, hd = cfg_.head_dim;
    const int nq = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads;
    const int qs = cfg_.q_size(), kvs = cfg_.kv_size(), qkv = cfg_.qkv_size();
    const float eps = static_cast<float>(cfg_.rms_norm_eps);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const size_t nH = static_cast<size_t>(n) * H;
    resize(n);

    namespace op = ops::cpu;
    embed(plan.token_ids.data(), n);
    comm_.all_reduce_sum(h_.data(), nH);
    for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
      const model::LayerWeights<T>& L = w_.layers[l];
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
      // Local head i is global head q_heads.begin + i and reads local KV head i / local group:
      // the same KV head as unsharded because a rank's heads never straddle a GQA group.
      op::paged_attention(q, qkv, attn_.data(), qs, kv, plan.cu_query_lens.data(), nq, scale, variant_);
      op::linear(attn_.data(), n, qs, L.o_proj.data, H, static_cast<const T*>(nullptr), h_.data());
      comm_.all_reduce_sum(h_.data(), nH);  // row-parallel o_proj
      op::add_rms_norm(h_.data(), res_.data(), L.post_attention_layernorm.data, n, H, eps);
      op::linear(h_.data(), n, H, L.gate_up_proj.data, 2 * I, static_cast<const T*>(nullptr), gu_.data());
      op::silu_and_mul(gu_.data(), n, I, act_.data());
      op::linear(act_.data(), n, I, L.down_proj.data, H, static_cast<const T*>(nullptr), h_.data());
      comm_.all_reduce_sum(h_.data(), nH);  // row-parallel down_proj
    }
    const int m = static_cast<int>(plan.logits_rows.size());
    if (m == 0) return;
    sel_.resize(static_cast<size_t>(m) * H);
    for (int j = 0; j < m; ++j) {
      const int r = plan.logits_rows[j];
      PIE_CHECK(r >= 0 && r < n, "TpQwen3Cpu::forward: logits row ", r, " out of [0, ", n, ")");
      const size_t src = static_cast<size_t>(r) * H, dst = static_cast<size_t>(j) * H;
      std::copy_n(h_.data() + src, H, sel_.data() + dst);
      std::copy_n(res_.data() + src, H, selr_.data() + dst);
    }
    op::add_rms_norm(sel_.data(), selr_.data(), w_.norm.data, m, H, eps, cfg_.num_hidden_layers == 0);
    // This rank's vocab slice of the logits, then all ranks' slices side by side.
    const int per = static_cast<int>(s_.vocab_per_rank), N = s_.tp_size;
    part_.resize(static_cast<size_t>(m) * per);
    gathered_.resize(static_cast<size_t>(N) * m * per);
    op::linear(sel_.data(), m, H, w_.lm_head.data, per, static_cast<const T*>(nullptr), part_.data());
    comm_.all_gather(part_.data(), gathered_.data(), part_.size());
    const int V = s_.global.vocab_size;
    for (int j = 0; j < m; ++j)
      for (int r = 0; r < N; ++r) {
        const int v0 = r * per, cnt = std::max(0, std::min(per, V - v0));
        std::copy_n(gathered_.data() + (static_cast<size_t>(r) * m + j) * per, cnt,
                    logits + static_cast<size_t>(j) * V + v0);
      }
  }

 private:
  static const T* bias_or_null(const TensorView<T>& b) { return b.numel() > 0 ? b.data : nullptr; }

  /// Vocab-parallel embedding: rows of this rank's ids, zero rows for the others' ids (the
  /// all-reduce then adds exactly one non-zero row per token: no rounding).
  void embed(const int32_t* ids, int n) {
    const int H = cfg_.hidden_size;
    for (int t = 0; t < n; ++t) {
      const int32_t id = ids[t];
      PIE_CHECK(id >= 0 && id < s_.global.vocab_size, "embedding: token id ", id, " out of [0, ",
                s_.global.vocab_size, ")");
      float* o = h_.data() + static_cast<size_t>(t) * H;
      if (!s_.vocab.contains(id)) { std::fill(o, o + H, 0.0f); continue; }
      const T* row = w_.embed_tokens.data + (id - s_.vocab.begin) * H;
      for (int i = 0; i < H; ++i) o[i] = to_float(row[i]);
    }
  }

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

  const model::Weights<T>& w_;
  TpShard s_;
  model::ModelConfig cfg_;
  Communicator& comm_;
  Variant variant_;
  ops::cpu::RopeTable rope_;
  std::vector<float> h_, res_, qkv_, attn_, gu_, act_, sel_, selr_, part_, gathered_;
};

}  // namespace pie::parallel
