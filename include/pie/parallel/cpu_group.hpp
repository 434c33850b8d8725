#pragma once
/// \file cpu_group.hpp
/// \brief cpu_group(): the RankGroup of `tp_size` CPU ranks of one process, meeting in one
/// CpuCommGroup. Tensor parallelism on the CPU exists to check the engine's multi-rank control
/// flow and the sharded numerics without GPUs: Engine<Model, CpuPolicy>(opt, cpu_group(4)) is
/// the same engine as on one rank, every rank running the same forward over its shard.
#include <memory>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/engine/rank_group.hpp"
#include "pie/parallel/cpu_communicator.hpp"

namespace pie::parallel {

/// The group of `tp_size` CPU ranks. `rank_kv_budgets[r]` (bytes), when given, replaces
/// EngineOptions::kv_cache_bytes for rank r (uneven budgets model GPUs with different free
/// memory: the group then holds the smallest rank's block count).
inline engine::RankGroup cpu_group(int tp_size, std::vector<size_t> rank_kv_budgets = {}) {
  PIE_CHECK(tp_size >= 1, "tensor parallel size must be >= 1, got ", tp_size);
  PIE_CHECK(rank_kv_budgets.empty() || static_cast<int>(rank_kv_budgets.size()) == tp_size, "cpu_group: ",
            rank_kv_budgets.size(), " KV budgets for ", tp_size, " ranks");
  auto group = std::make_shared<CpuCommGroup>(tp_size);
  engine::RankGroup g;
  g.size = tp_size;
  g.kv_budgets = std::move(rank_kv_budgets);
  // The communicator keeps the group alive (the lambda's copy is shared by every rank).
  g.make_comm = [group](int rank, void*) -> std::unique_ptr<Communicator> {
    struct Owned final : CpuCommunicator {
      Owned(std::shared_ptr<CpuCommGroup> g, int r) : CpuCommunicator(*g, r), keep(std::move(g)) {}
      std::shared_ptr<CpuCommGroup> keep;
    };
    return std::make_unique<Owned>(group, rank);
  };
  g.abort = [group] { group->abort(); };
  return g;
}

}  // namespace pie::parallel
