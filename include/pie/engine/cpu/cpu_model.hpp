#pragma once
/// \file cpu_model.hpp
/// \brief CpuModel<Model, T, KVT>: a model's forward on the CPU over StepPlans built by hand —
/// the weights (or one tensor-parallel rank's shard and its communicator) and a CpuForward
/// context, without an engine, a scheduler or a cache of its own (the caller passes the KV
/// pools). For tests and research code that drive plans directly; CpuRunner does the same
/// inside the engine.
#include <span>
#include <utility>

#include "pie/core/attention_variants.hpp"
#include "pie/core/communicator.hpp"
#include "pie/engine/cpu/cpu_forward.hpp"
#include "pie/model/tp_plan.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::engine::cpu {

/// \brief Model::forward on the CPU over caller-built plans (see file comment).
template <class Model, class T, class KVT = T, class Variant = attention::Causal>
class CpuModel {
 public:
  using Weights = typename Model::template Weights<T>;

  /// `weights` (and `shard`, `comm` under TP: this rank's) must outlive this object.
  explicit CpuModel(const Weights& weights, const parallel::TpShard* shard = nullptr,
                    parallel::Communicator* comm = nullptr, Variant variant = {})
      : w_(weights), fwd_(shard ? shard->local : weights.config, variant, shard, comm) {
    Model::check_config(shard ? shard->global : weights.config);
  }

  const model::ModelConfig& config() const { return fwd_.config(); }
  /// The forward context (its switches: round_activations, the fp8 KV scales).
  CpuForward<T, KVT, Variant>& context() { return fwd_; }

  /// Runs the step: embeds plan.token_ids, writes every layer's K/V at plan.slot_mapping,
  /// attends through the plan's block tables, and writes the logits of plan.logits_rows.
  /// \param layer_pools one pointer per layer to its pool [blocks][2][kv_heads][block_size][head_dim]
  /// \param logits      [plan.logits_rows.size()][global vocab], float
  void forward(const sched::StepPlan& plan, std::span<KVT* const> layer_pools, int block_size, float* logits) {
    if (plan.num_tokens() == 0) return;
    fwd_.begin(plan, layer_pools, block_size, logits);
    Model::forward(fwd_, w_);
  }

 private:
  const Weights& w_;
  CpuForward<T, KVT, Variant> fwd_;
};

}  // namespace pie::engine::cpu
