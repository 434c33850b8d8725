#pragma once
/// \file rank_group.hpp
/// \brief RankGroup: how an Engine's executor gets the communicators of a tensor-parallel group
/// without the engine layer knowing their kind. The group's builder (parallel/groups.hpp: CPU
/// threads or NCCL) fills it; a group of size 1 needs nothing.
#include <functional>
#include <memory>
#include <vector>

#include "pie/core/communicator.hpp"

namespace pie::engine {

/// \brief The ranks of one tensor-parallel group in this process, one thread each.
struct RankGroup {
  int size = 1;
  /// Rank r's communicator, called on rank r's thread once its device is current; `stream` is
  /// the runner's stream (NCCL enqueues there, so collectives are captured into its graphs), or
  /// null on the CPU. Joining may block until every rank has called it (NCCL's init).
  std::function<std::unique_ptr<parallel::Communicator>(int rank, void* stream)> make_comm;
  /// Wakes every rank blocked in a collective after one rank failed (CpuCommGroup::abort,
  /// ncclCommAbort); may be called from a failing rank's thread mid-collective.
  std::function<void()> abort;
  /// Per-rank KV byte budgets (empty: EngineOptions::kv_cache_bytes for all; CPU ranks only):
  /// uneven budgets model GPUs with different free memory, where the group holds the smallest.
  std::vector<size_t> kv_budgets;
  /// The GPU of each rank (empty: rank r on GPU r). Ignored on the CPU.
  std::vector<int> devices;

  int device_of(int rank) const { return devices.empty() ? rank : devices.at(rank); }
  size_t kv_budget_of(int rank) const { return kv_budgets.empty() ? 0 : kv_budgets.at(rank); }
};

/// \brief What one rank is told when it is built.
struct RankSpec {
  int rank = 0;
  const RankGroup* group = nullptr;  ///< null: a group of one
  int size() const { return group ? group->size : 1; }
};

}  // namespace pie::engine
