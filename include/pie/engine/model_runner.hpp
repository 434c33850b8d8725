#pragma once
/// \file model_runner.hpp
/// \brief ModelRunner<Model, Policy>: the runner type of one rank for a (model, backend) pair —
/// CpuRunner on the CPU (engine/cpu/cpu_runner.hpp), CudaRunner on a GPU
/// (engine/cuda/cuda_runner.cuh, which specialises RunnerOf for backend::Cuda: include it
/// before instantiating an Engine with a CUDA policy). Every runner runs the model's one
/// forward (Model::forward) over its backend's forward context.
///
/// Runner interface (what engine/executor.hpp and engine/engine.hpp use):
///   Runner(const EngineOptions&, RankSpec, size_t kv_budget)   on the rank's own thread
///   global_config(), generation_config(), max_kv_blocks(), wanted_host_blocks(opt),
///   allocate_kv(blocks, host_blocks), num_blocks()
///   execute(plan) → host float logits of the sampled rows (read on rank 0)
///   kLogitsPerDraw: one logits row per draw (n > 1 prefills repeat a row), else per sequence
///   kSamplesOnDevice: also execute_sample(plan, specs) → sampled ids (rank 0) and
///                     execute_logits(plan, specs) → host logits
#include "pie/core/policy.hpp"
#include "pie/engine/cpu/cpu_runner.hpp"

namespace pie {

/// \brief Maps (Model, Policy, Backend) to the runner type. The primary template is an error.
template <class Model, class Policy, class Backend = typename Policy::backend_type>
struct RunnerOf {
  static_assert(sizeof(Model) == 0,
                "RunnerOf: no runner for this backend (include pie/engine/cuda/cuda_runner.cuh for backend::Cuda)");
};

/// \brief The CPU backend.
template <class Model, class Policy>
struct RunnerOf<Model, Policy, backend::Cpu> {
  using type = engine::cpu::CpuRunner<Model, Policy>;
};

template <class Model, class Policy>
using ModelRunner = typename RunnerOf<Model, Policy>::type;

}  // namespace pie
