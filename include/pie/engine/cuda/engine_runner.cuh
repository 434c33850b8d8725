#pragma once
/// \file engine_runner.cuh
/// \brief ModelRunner<Qwen3, Policy, backend::Cuda>: the CUDA backend of pie::Engine. A thin
/// wrapper over CudaModelRunner that builds itself from EngineOptions (weights straight to the
/// device, `--load-format dummy` filled on the device; KV blocks from the memory plan, i.e.
/// gpu_memory_utilization, or num_kv_blocks when set; swap pool from swap_space_gib) and
/// samples on the device. Engine sees two capabilities (engine.hpp):
///   - kBuildsFromOptions: the runner loads the model and sizes the cache itself;
///   - kSamplesOnDevice: execute(plan, specs) returns sampled ids; execute_logits(plan, specs)
///     returns host float logits for steps whose parameters the device sampler cannot honour.
/// Include this header before instantiating Engine<Qwen3, CudaPolicy>.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "pie/core/policy.hpp"
#include "pie/engine/cuda/model_runner.cuh"
#include "pie/engine/cuda/sample_specs.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/engine/model_runner.hpp"
#include "pie/model/load.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie {

/// \brief The Qwen3 family on one GPU (see the file comment).
template <class Policy>
class ModelRunner<Qwen3, Policy, backend::Cuda> {
 public:
  using T = typename Policy::dtype;
  using Inner = engine::cuda::CudaModelRunner<Policy>;
  static constexpr bool kBuildsFromOptions = true;
  static constexpr bool kSamplesOnDevice = true;

  /// Loads the model onto the device and plans memory. `max_model_len` is the scheduler's
  /// (already clamped to the model's positions).
  explicit ModelRunner(const EngineOptions& opt) {
    model::ModelConfig cfg;
    engine::cuda::DeviceWeights<T> weights;
    if (opt.model_dir.empty()) {
      // The embedded default: tiny, so the host copy costs nothing.
      auto loaded = model::load_model<T>({}, model::LoadFormat::Auto, opt.seed);
      gen_ = loaded.generation;
      cfg = loaded.weights.config;
      weights = engine::cuda::DeviceWeights<T>::upload(loaded.weights);
    } else {
      cfg = model::load_model_config(opt.model_dir);
      gen_ = model::load_generation_config(opt.model_dir, cfg);
      if (model::parse_load_format(opt.load_format) == model::LoadFormat::Dummy) {
        weights = engine::cuda::DeviceWeights<T>::dummy(cfg, opt.seed);  // filled on the device
      } else {
        model::LoadOptions lo;
        weights = engine::cuda::DeviceWeights<T>::upload(model::load_weights<T>(opt.model_dir, cfg, lo));
      }
    }
    engine::cuda::RunnerOptions ro;
    ro.max_num_seqs = opt.sched.max_num_seqs;
    ro.max_num_batched_tokens = std::max(opt.sched.max_num_batched_tokens, opt.sched.max_num_seqs);
    ro.max_model_len = static_cast<int>(std::min<int64_t>(opt.sched.max_model_len, cfg.max_position_embeddings));
    ro.gpu_memory_utilization = opt.gpu_memory_utilization;
    ro.swap_space_gib = opt.swap_space_gib;
    ro.enforce_eager = opt.enforce_eager;
    ro.batch_invariant = opt.batch_invariant;
    ro.num_gpu_blocks_override = opt.num_kv_blocks;
    ro.log = opt.log;
    runner_ = std::make_unique<Inner>(std::move(weights), ro);
  }

  const model::ModelConfig& config() const { return runner_->config(); }
  const model::GenerationConfig& generation_config() const { return gen_; }
  const kv::KVLayout& layout() const { return runner_->layout(); }
  int num_blocks() const { return runner_->num_device_blocks(); }
  int num_host_blocks() const { return runner_->num_host_blocks(); }
  Inner& inner() { return *runner_; }

  /// One step with device sampling: the sampled ids, in sample order (one per spec). A plan
  /// with only block operations runs them and returns nothing (CudaModelRunner does that).
  std::span<const int32_t> execute(const sched::StepPlan& plan, const std::vector<engine::cuda::SampleSpec>& specs) {
    return runner_->execute(plan, specs);
  }

  /// One step whose sampled rows come back as host float logits ([specs.size()][vocab]).
  std::span<const float> execute_logits(const sched::StepPlan& plan,
                                        const std::vector<engine::cuda::SampleSpec>& specs) {
    return runner_->execute_logits(plan, specs);
  }

 private:
  model::GenerationConfig gen_;
  std::unique_ptr<Inner> runner_;
};

}  // namespace pie
