#pragma once
/// \file tp_forward.hpp
/// \brief TpQwen3Cpu: one rank's CPU forward pass of the Qwen3 family under tensor parallelism,
/// over its shard (shard_loader.hpp) and a Communicator. It is Qwen3Cpu (model/qwen3.hpp) with a
/// hook (TpHooks) at the four communication points of the Megatron layout:
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
#include <cstdint>
#include <vector>

#include "pie/attention/variants.hpp"
#include "pie/core/error.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/model/weights.hpp"
#include "pie/ops/cpu/ops.hpp"
#include "pie/parallel/communicator.hpp"
#include "pie/parallel/tp_plan.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::parallel {

/// \brief Qwen3Cpu's hook for one tensor-parallel rank: vocab-parallel embedding and lm_head,
/// all-reduce of the row-parallel o_proj / down_proj partial sums.
template <class T>
struct TpHooks {
  static constexpr const char* kWho = "TpQwen3Cpu::forward";
  TpShard s;
  Communicator* comm = nullptr;
  std::vector<float> part, gathered;  // this rank's logits slice, all ranks' slices

  /// Vocab-parallel embedding: rows of this rank's ids, zero rows for the others' ids (the
  /// all-reduce then adds exactly one non-zero row per token: no rounding).
  void embed(const model::Weights<T>& w, const model::ModelConfig& c, const int32_t* ids, int n, float* h) {
    const int H = c.hidden_size;
    for (int t = 0; t < n; ++t) {
      const int32_t id = ids[t];
      PIE_CHECK(id >= 0 && id < s.global.vocab_size, "embedding: token id ", id, " out of [0, ",
                s.global.vocab_size, ")");
      float* o = h + static_cast<size_t>(t) * H;
      if (!s.vocab.contains(id)) { std::fill(o, o + H, 0.0f); continue; }
      const T* row = w.embed_tokens.data + (id - s.vocab.begin) * H;
      for (int i = 0; i < H; ++i) o[i] = to_float(row[i]);
    }
    comm->all_reduce_sum(h, static_cast<size_t>(n) * H);
  }
  void reduce(float* h, size_t count) { comm->all_reduce_sum(h, count); }
  /// This rank's vocab slice of the logits, then all ranks' slices side by side.
  void lm_head(const model::Weights<T>& w, const model::ModelConfig& c, const float* x, int m, float* logits) {
    const int per = static_cast<int>(s.vocab_per_rank), N = s.tp_size;
    part.resize(static_cast<size_t>(m) * per);
    gathered.resize(static_cast<size_t>(N) * m * per);
    ops::cpu::linear(x, m, c.hidden_size, w.lm_head.data, per, static_cast<const T*>(nullptr), part.data());
    comm->all_gather(part.data(), gathered.data(), part.size());
    const int V = s.global.vocab_size;
    for (int j = 0; j < m; ++j)
      for (int r = 0; r < N; ++r) {
        const int v0 = r * per, cnt = std::max(0, std::min(per, V - v0));
        std::copy_n(gathered.data() + (static_cast<size_t>(r) * m + j) * per, cnt,
                    logits + static_cast<size_t>(j) * V + v0);
      }
  }
};

/// \brief One tensor-parallel rank's CPU forward over a StepPlan: Qwen3Cpu over the rank's
/// shard with TpHooks. forward(plan, layer_pools, block_size, logits) runs the step on this
/// rank (every rank must call it with the same plan), writes this rank's K/V heads into
/// `layer_pools` ([blocks][2][local kv heads][block][hd] per layer) and the full logits of
/// plan.logits_rows into `logits` ([rows][global vocab], same on every rank).
/// \tparam T       weight storage type (float, f16, bf16)
/// \tparam KVT     KV-cache storage type
/// \tparam Variant attention hook struct (attention/variants.hpp)
template <class T, class KVT, class Variant = attention::Causal>
class TpQwen3Cpu : public model::Qwen3Cpu<T, KVT, Variant, TpHooks<T>> {
  using Base = model::Qwen3Cpu<T, KVT, Variant, TpHooks<T>>;

 public:
  /// `shard` (this rank's weights, config == s.local) and `comm` (host memory, rank s.rank of
  /// s.tp_size) must outlive this object.
  TpQwen3Cpu(const model::Weights<T>& shard, const TpShard& s, Communicator& comm, Variant variant = {})
      : Base(checked(shard, s, comm), s.local, variant, TpHooks<T>{s, &comm, {}, {}}) {}

  const TpShard& shard() const { return this->hooks().s; }

 private:
  // Runs before Base's constructor, so a mismatched shard is reported as such.
  static const model::Weights<T>& checked(const model::Weights<T>& shard, const TpShard& s, Communicator& comm) {
    const model::ModelConfig& cfg = s.local;
    PIE_CHECK(comm.size() == s.tp_size && comm.rank() == s.rank, "TpQwen3Cpu: communicator is rank ",
              comm.rank(), " of ", comm.size(), ", shard is rank ", s.rank, " of ", s.tp_size);
    PIE_CHECK(!comm.device_memory(), "TpQwen3Cpu: the CPU forward needs a host-memory communicator");
    PIE_CHECK(shard.config.num_attention_heads == cfg.num_attention_heads &&
                  shard.config.num_key_value_heads == cfg.num_key_value_heads &&
                  shard.config.intermediate_size == cfg.intermediate_size &&
                  shard.config.vocab_size == cfg.vocab_size,
              "TpQwen3Cpu: weights are not this rank's shard (heads ", shard.config.num_attention_heads,
              ", kv heads ", shard.config.num_key_value_heads, ", intermediate ",
              shard.config.intermediate_size, ", vocab ", shard.config.vocab_size, ")");
    PIE_CHECK(static_cast<int>(shard.layers.size()) == cfg.num_hidden_layers, "TpQwen3Cpu: weights have ",
              shard.layers.size(), " layers, config says ", cfg.num_hidden_layers);
    return shard;
  }
};

}  // namespace pie::parallel
