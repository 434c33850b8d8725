#pragma once
/// \file tp_world.hpp
/// \brief TpWorld: how TpEngine builds and tears down a group of ranks — a rank factory run on
/// each rank's own worker thread (all ranks concurrently: NCCL's init blocks until every rank
/// has joined) and an abort that wakes ranks blocked in a collective when one of them failed.
#include <functional>
#include <memory>

namespace pie::parallel {

/// \brief A group of `size` ranks of type Rank (TpCpuRank, CudaTpRank).
template <class Rank>
struct TpWorld {
  int size = 1;
  /// Builds rank r; called on rank r's worker thread.
  std::function<std::unique_ptr<Rank>(int rank)> make_rank;
  /// Wakes every rank blocked in a collective (CpuCommGroup::abort, NcclAbortGroup::abort);
  /// called from a failing rank's thread, possibly while other ranks are mid-collective.
  std::function<void()> abort;
};

}  // namespace pie::parallel
