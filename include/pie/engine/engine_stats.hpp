#pragma once
/// \file engine_stats.hpp
/// \brief EngineStats: the counters every engine's stats() reports (Engine, TpEngine, and
/// AnyEngine for the server), in one dependency-free header.
#include <cstdint>

namespace pie::engine {

/// \brief Scheduler and cache counters of an engine's stats().
struct EngineStats {
  int num_running = 0, num_waiting = 0;
  double kv_usage = 0;
  uint64_t prefix_cache_queries = 0, prefix_cache_hits = 0;
  int num_swapped = 0;            ///< sequences whose blocks are on the host
  uint64_t num_preemptions = 0;   ///< since construction
  int num_kv_blocks = 0;          ///< device blocks of the cache (on every rank under TP)
  /// Asynchronous scheduling: steps planned while the previous one was still computing.
  uint64_t steps_scheduled_ahead = 0;
};

}  // namespace pie::engine
