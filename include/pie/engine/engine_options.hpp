#pragma once
/// \file engine_options.hpp
/// \brief EngineOptions: what an Engine is built from (model, load format, scheduler, KV cache
/// size, seed, threads). A plain struct, so the server and the `pie` program fill it from flags
/// without instantiating an engine.
#include <cstddef>
#include <cstdint>
#include <string>

#include <memory>
#include <typeinfo>

#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/model/config.hpp"
#include "pie/model/weights.hpp"
#include "pie/sched/scheduler_config.hpp"

namespace pie {

/// \brief Construction options of pie::Engine.
struct EngineOptions {
  std::string model_dir;             ///< empty → the embedded default model
  std::string load_format = "auto";  ///< auto | safetensors | dummy
  /// In-memory weights instead of model_dir (a model built in code, tests): a
  /// model::Weights<T> of the policy's dtype, shared by every rank (each cuts its shard).
  /// Set with set_weights(); its generation defaults are `generation`.
  std::shared_ptr<const void> weights;
  const std::type_info* weights_type = nullptr;
  model::GenerationConfig generation;
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
  /// GPU: > 0 fixes each rank's KV cache at this many bytes (vLLM's --kv-cache-memory-bytes)
  /// instead of the memory plan; num_kv_blocks, when set, wins.
  size_t kv_cache_memory_bytes = 0;
  bool enforce_eager = false;        ///< no CUDA graphs
  /// GPU: bitwise batch-invariant kernels (one GEMM algorithm per shape, decode rows through the
  /// prefill attention kernel: docs/gpu_engine.md). The CPU backend is
  /// batch-invariant whatever this says.
  bool batch_invariant = false;
  /// GPU, one rank: 2 runs large steps as two nano-batches on two streams, overlapping one's
  /// attention with the other's GEMMs (engine/nano_split.hpp); 1 never splits; 0 reads the
  /// environment (PIE_NANO_BATCHES, default 1). Off by default until measured.
  int nano_batches = 0;
  /// With nano_batches 2: > 0 splits every step of at least this many decode rows; 0 lets the
  /// cost model decide (PIE_NANO_MIN_ROWS when 0 here).
  int nano_min_rows = 0;
  bool log = true;                   ///< GPU runner: print the memory plan and graph capture

  // What make_engine() (pie/registry/make_engine.hpp) turns into an Engine type; an Engine<Model,
  // Policy> built directly has these fixed by its template arguments and ignores them.
  std::string device = "cpu";          ///< cpu | cuda
  std::string dtype = "auto";          ///< auto | float32 | bfloat16 (vLLM's --dtype)
  std::string kv_cache_dtype = "auto"; ///< auto | float32 | bfloat16 | fp8 (vLLM's --kv-cache-dtype)
  /// fp8 KV: scales from the first forward's K/V amax per kv head (vLLM's --calculate-kv-scales)
  /// instead of the checkpoint's k_scale / v_scale or 1 (kv/kv_scales.hpp).
  bool calculate_kv_scales = false;
  /// vLLM's --quantization: "" (auto: fp8 when config.json's quantization_config says so) | fp8
  /// (fp8 projection weights: a published fp8 checkpoint as is, any other quantized at load).
  std::string quantization;
  int block_size = 16;                 ///< tokens per KV block (vLLM's --block-size)
  int tensor_parallel_size = 1;        ///< ranks of the tensor-parallel group

  /// Runs `w` (see `weights`): model::Weights<T> for the Qwen3 family, a user model's own
  /// Weights<T> struct otherwise.
  template <class W>
  void set_weights(std::shared_ptr<const W> w, model::GenerationConfig gen = {}) {
    weights = std::move(w);
    weights_type = &typeid(W);
    generation = std::move(gen);
  }
  /// The in-memory weights as W, or null; throws when they are of another type (dtype).
  template <class W>
  const W* weights_as() const {
    if (!weights) return nullptr;
    PIE_CHECK(weights_type && *weights_type == typeid(W), "EngineOptions::weights are ",
              weights_type ? weights_type->name() : "?", ", the engine's model and policy read ", typeid(W).name());
    return static_cast<const W*>(weights.get());
  }
};

}  // namespace pie
