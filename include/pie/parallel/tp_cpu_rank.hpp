#pragma once
/// \file tp_cpu_rank.hpp
/// \brief TpCpuRank: one tensor-parallel rank on the CPU — its weight shard, its TpQwen3Cpu
/// forward, its own paged KV cache (device pool + host swap pool, laid out with the rank's KV
/// heads) and its CpuCommunicator — with the Rank interface TpEngine drives (tp_engine.hpp).
/// cpu_tp_world() builds the N ranks of one in-process group; TP on the CPU exists to check the
/// engine's multi-rank control flow and the sharded numerics without GPUs.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/kv/kv_layout.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/load.hpp"
#include "pie/parallel/cpu_communicator.hpp"
#include "pie/parallel/shard_loader.hpp"
#include "pie/parallel/tp_forward.hpp"
#include "pie/parallel/tp_plan.hpp"
#include "pie/parallel/tp_world.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::parallel {

/// \brief One CPU rank (see file comment).
/// \tparam T weight type, \tparam KVT KV-cache type, \tparam BlockSize tokens per KV block.
template <class T, class KVT, int BlockSize = 16, class Variant = attention::Causal>
class TpCpuRank {
 public:
  /// Loads rank `rank`'s shard of `opt.model_dir` (only its slices, from the mmapped
  /// safetensors; dummy and embedded weights are generated whole and cut). `kv_budget` is the
  /// KV bytes this rank may use (0 → opt.kv_cache_bytes).
  TpCpuRank(const EngineOptions& opt, int tp_size, int rank, std::shared_ptr<CpuCommGroup> group,
            size_t kv_budget = 0)
      : group_(std::move(group)), comm_(*group_, rank), budget_(kv_budget ? kv_budget : opt.kv_cache_bytes) {
    const auto fmt = model::parse_load_format(opt.load_format);
    if (!opt.model_dir.empty() && fmt != model::LoadFormat::Dummy) {
      const model::ModelConfig cfg = model::load_model_config(opt.model_dir);
      gen_ = model::load_generation_config(opt.model_dir, cfg);
      shard_ = make_tp_shard(cfg, tp_size, rank);
      w_ = std::make_unique<model::Weights<T>>(load_shard_weights<T>(opt.model_dir, shard_, {.progress = false}));
    } else {
      auto full = model::load_model<T>(opt.model_dir, fmt, opt.seed);
      gen_ = full.generation;
      shard_ = make_tp_shard(full.weights.config, tp_size, rank);
      w_ = std::make_unique<model::Weights<T>>(shard_weights<T>(full.weights, shard_));
    }
    const auto& c = shard_.local;
    layout_ = kv::KVLayout{c.num_hidden_layers, c.num_key_value_heads, c.head_dim, BlockSize,
                           DTypeTraits<KVT>::dtype};
    block_elems_ = layout_.block_elems_per_layer();
    fwd_ = std::make_unique<TpQwen3Cpu<T, KVT, Variant>>(*w_, shard_, comm_);
  }

  static constexpr int kBlockSize = BlockSize;
  const TpShard& shard() const { return shard_; }
  const model::ModelConfig& global_config() const { return shard_.global; }
  const model::GenerationConfig& generation_config() const { return gen_; }
  const kv::KVLayout& layout() const { return layout_; }

  /// KV blocks this rank's budget holds with its own layout (its KV heads only).
  int max_kv_blocks() const { return static_cast<int>(layout_.blocks_for_budget(budget_)); }

  /// Allocates the pools; every rank gets the same counts (the group's minimum).
  void allocate_kv(int num_blocks, int num_host_blocks) {
    PIE_CHECK(num_blocks > 0, "TpCpuRank ", shard_.rank, ": the KV cache needs at least one block");
    blocks_ = num_blocks;
    host_blocks_ = num_host_blocks;
    const size_t L = static_cast<size_t>(layout_.num_layers);
    device_ = HostBuffer<KVT>(block_elems_ * num_blocks * L);
    if (num_host_blocks > 0) host_ = HostBuffer<KVT>(block_elems_ * num_host_blocks * L);
    pools_.clear();
    for (size_t l = 0; l < L; ++l) pools_.push_back(device_.data() + l * num_blocks * block_elems_);
  }
  int num_blocks() const { return blocks_; }

  /// Block operations, then this rank's share of the forward in lockstep with the others.
  /// Returns the full logits [plan.logits_rows.size()][global vocab] (every rank has them).
  std::span<const float> execute(const sched::StepPlan& plan) {
    PIE_CHECK(blocks_ > 0, "TpCpuRank ", shard_.rank, ": execute before allocate_kv");
    for (const auto& c : plan.swap_in) copy(host_.data(), host_blocks_, c.src, device_.data(), blocks_, c.dst);
    for (const auto& c : plan.swap_out) copy(device_.data(), blocks_, c.src, host_.data(), host_blocks_, c.dst);
    for (const auto& c : plan.copy_blocks) copy(device_.data(), blocks_, c.src, device_.data(), blocks_, c.dst);
    logits_.resize(plan.logits_rows.size() * static_cast<size_t>(shard_.global.vocab_size));
    fwd_->forward(plan, pools_, BlockSize, logits_.data());
    return logits_;
  }

 private:
  void copy(const KVT* a, int a_blocks, int32_t src, KVT* b, int b_blocks, int32_t dst) {
    PIE_CHECK(src >= 0 && src < a_blocks && dst >= 0 && dst < b_blocks, "TpCpuRank ", shard_.rank, ": block copy ",
              src, " → ", dst, " out of range (", a_blocks, " / ", b_blocks, " blocks)");
    for (int l = 0; l < layout_.num_layers; ++l)
      std::memcpy(b + (static_cast<size_t>(l) * b_blocks + dst) * block_elems_,
                  a + (static_cast<size_t>(l) * a_blocks + src) * block_elems_, block_elems_ * sizeof(KVT));
  }

  std::shared_ptr<CpuCommGroup> group_;  // shared by the ranks; outlives every communicator
  CpuCommunicator comm_;
  size_t budget_;
  TpShard shard_;
  model::GenerationConfig gen_;
  std::unique_ptr<model::Weights<T>> w_;  // stable address: fwd_ refers to it
  std::unique_ptr<TpQwen3Cpu<T, KVT, Variant>> fwd_;
  kv::KVLayout layout_{};
  size_t block_elems_ = 0;
  int blocks_ = 0, host_blocks_ = 0;
  HostBuffer<KVT> device_, host_;
  std::vector<KVT*> pools_;
  std::vector<float> logits_;
};

/// The `tp_size` CPU ranks of one in-process group over `opt`'s model. `rank_kv_budgets[r]`
/// (bytes), when given, replaces opt.kv_cache_bytes for rank r — uneven budgets model GPUs
/// with different free memory, where the group's KV block count is the smallest rank's.
template <class T, class KVT, int BlockSize = 16, class Variant = attention::Causal>
TpWorld<TpCpuRank<T, KVT, BlockSize, Variant>> cpu_tp_world(const EngineOptions& opt, int tp_size,
                                                            std::vector<size_t> rank_kv_budgets = {}) {
  using Rank = TpCpuRank<T, KVT, BlockSize, Variant>;
  PIE_CHECK(rank_kv_budgets.empty() || static_cast<int>(rank_kv_budgets.size()) == tp_size,
            "cpu_tp_world: ", rank_kv_budgets.size(), " KV budgets for ", tp_size, " ranks");
  auto group = std::make_shared<CpuCommGroup>(tp_size);
  TpWorld<Rank> w;
  w.size = tp_size;
  w.make_rank = [opt, tp_size, group, budgets = std::move(rank_kv_budgets)](int r) {
    return std::make_unique<Rank>(opt, tp_size, r, group, budgets.empty() ? 0 : budgets[r]);
  };
  w.abort = [group] { group->abort(); };
  return w;
}

}  // namespace pie::parallel
