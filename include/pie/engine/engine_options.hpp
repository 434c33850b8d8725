#pragma once
/// \file engine_options.hpp
/// \brief EngineOptions: what an Engine is built from (model, load format, scheduler, KV cache
/// size, seed, threads). A plain struct, so the server and the `pie` program fill it from flags
/// without instantiating an engine.
#include <cstddef>
#include <cstdint>
#include <string>

#include "pie/sched/scheduler_config.hpp"

namespace pie {

/// \brief Construction options of pie::Engine.
struct EngineOptions {
  std::string model_dir;             ///< empty → the embedded default model
  std::string load_format = "auto";  ///< auto | safetensors | dummy
  sched::SchedulerConfig sched;      ///< max_model_len is clamped to the model's max positions
  int num_kv_blocks = 0;             ///< 0 → kv_cache_bytes / bytes per block
  size_t kv_cache_bytes = 256ull << 20;
  int num_host_blocks = 0;           ///< swap space, in blocks (preemption_mode swap)
  uint64_t seed = 0;                 ///< dummy weights, and the sampling seed of unseeded requests
  int num_threads = 0;               ///< 0 → hardware concurrency
  // GPU backend (ignored by the CPU runner): vLLM's sizing flags. There the KV cache is sized
  // by the memory plan (gpu_memory_utilization) unless num_kv_blocks is set, and the host swap
  // pool by swap_space_gib; kv_cache_bytes and num_host_blocks are not used.
  double gpu_memory_utilization = 0.9;
  double swap_space_gib = 4.0;
  bool enforce_eager = false;        ///< no CUDA graphs
  /// GPU: bitwise batch-invariant kernels (RunnerOptions::batch_invariant). The CPU backend is
  /// batch-invariant whatever this says.
  bool batch_invariant = false;
  bool log = true;                   ///< GPU runner: print the memory plan and graph capture
};

}  // namespace pie
