#pragma once
/// \file cuda_engine.cuh
/// \brief CudaEngine: the scheduler driving CudaModelRunner, one iteration per step()
/// (schedule → block copies + forward + device sampling → update). What `pie bench` and the GPU
/// tests run. Requests whose parameters the device sampler cannot honour (penalties, logit
/// bias, min_tokens, logprobs) make their step sample on the host with pie::Sampler from the
/// copied-back logits, so every SamplingParams field keeps its meaning.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "pie/engine/cuda/model_runner.cuh"
#include "pie/engine/cuda/sample_specs.hpp"
#include "pie/engine/sampler.hpp"
#include "pie/sched/scheduler.hpp"

namespace pie::engine::cuda {

/// \brief Timing of one step, for benchmarks (seconds).
struct StepTiming {
  double host_s = 0;   ///< schedule + sample specs + update (the GPU idles meanwhile)
  double total_s = 0;  ///< wall time of the whole step
};

/// \brief Scheduler + CUDA runner. Not thread-safe.
template <class Policy>
class CudaEngine {
 public:
  using T = typename Policy::dtype;
  /// Called after every step with the plan that ran and its timing.
  using StepObserver = std::function<void(const sched::StepPlan&, const StepTiming&)>;

  CudaEngine(DeviceWeights<T> weights, RunnerOptions ropt, sched::SchedulerConfig scfg,
             std::vector<int32_t> eos_ids, uint64_t seed = 0)
      : eos_(std::move(eos_ids)), seed_(seed) {
    scfg.max_num_seqs = ropt.max_num_seqs;
    scfg.max_num_batched_tokens = ropt.max_num_batched_tokens;
    scfg.max_model_len = ropt.max_model_len;
    runner_ = std::make_unique<CudaModelRunner<Policy>>(std::move(weights), ropt);
    scheduler_ = std::make_unique<sched::Scheduler>(scfg, runner_->num_device_blocks(), Policy::block_size,
                                                    runner_->num_host_blocks());
  }

  CudaModelRunner<Policy>& runner() { return *runner_; }
  sched::Scheduler& scheduler() { return *scheduler_; }
  void set_observer(StepObserver f) { observer_ = std::move(f); }

  uint64_t add_request(std::vector<int32_t> prompt, sched::SamplingParams params) {
    const int vocab = runner_->config().vocab_size;
    params.validate(vocab);
    for (int32_t t : prompt)
      PIE_CHECK(t >= 0 && t < vocab, "prompt token id ", t, " is out of the vocabulary [0, ", vocab, ")");
    uint64_t id = next_id_++;
    scheduler_->add_request(id, std::move(prompt), std::move(params), eos_);
    return id;
  }
  bool has_unfinished() const { return scheduler_->has_unfinished(); }

  /// One iteration; returns what update() appended (empty when nothing could run).
  std::vector<sched::SequenceUpdate> step() {
    using clock = std::chrono::steady_clock;
    auto t0 = clock::now();
    sched::StepPlan plan = scheduler_->schedule();
    const bool has_block_ops = !plan.swap_in.empty() || !plan.swap_out.empty() || !plan.copy_blocks.empty();
    last_empty_ = plan.empty() && !has_block_ops;
    if (plan.empty()) {
      // Block operations alone (a swap-out that made room for nothing else) still run; the
      // scheduler expects no update() for a plan without tokens.
      if (has_block_ops) runner_->execute(plan, {});
      return {};
    }
    auto seed_of = [this](uint64_t rid) { return seed_ ^ (rid * 0x9e3779b97f4a7c15ull); };
    std::vector<SampleSpec> specs = sample_specs(*scheduler_, plan, seed_of);
    const bool host = plan_needs_host_sampling(*scheduler_, plan);
    auto t1 = clock::now();
    std::vector<int32_t> ids;
    if (!host) {
      auto s = runner_->execute(plan, specs);
      ids.assign(s.begin(), s.end());
    } else {
      ids = sample_on_host(plan, runner_->execute_logits(plan, specs), seed_of);
    }
    auto t2 = clock::now();
    std::vector<sched::SequenceUpdate> ups = scheduler_->update(plan, ids);
    auto t3 = clock::now();
    StepTiming tm;
    tm.host_s = std::chrono::duration<double>((t1 - t0) + (t3 - t2)).count();
    tm.total_s = std::chrono::duration<double>(t3 - t0).count();
    if (observer_) observer_(plan, tm);
    return ups;
  }

  /// Runs every queued request to completion; returns request id → output tokens of its
  /// sequence 0.
  std::unordered_map<uint64_t, std::vector<int32_t>> run() {
    std::unordered_map<uint64_t, std::vector<int32_t>> out;
    while (scheduler_->has_unfinished()) {
      auto ups = step();
      PIE_CHECK(!last_empty_, "CudaEngine::run: the scheduler produced no work while requests remain");
      for (const auto& u : ups)
        if (u.index == 0) out[u.request_id].push_back(u.token);
    }
    return out;
  }

 private:
  template <class SeedFn>
  std::vector<int32_t> sample_on_host(const sched::StepPlan& plan, std::span<const float> logits, SeedFn&& seed_of) {
    const size_t V = static_cast<size_t>(runner_->config().vocab_size);
    std::vector<int32_t> ids;
    size_t row = 0;
    for (size_t j = 0; j < plan.sample_seqs.size(); ++j) {
      const sched::Sequence& s = scheduler_->plan_sequence(plan.sample_seqs[j]);
      const sched::Request& r = *s.request;
      const int count = plan.sample_counts.empty() ? 1 : plan.sample_counts[j];
      for (int k = 0; k < count; ++k, ++row) {
        row_.assign(logits.begin() + row * V, logits.begin() + (row + 1) * V);
        SamplerInput in;
        in.params = &r.params;
        in.prompt = s.prompt();
        in.output = s.output();
        in.eos_ids = r.eos_token_ids;
        in.seed = r.params.seed ? *r.params.seed : seed_of(r.id);
        in.seq_index = count > 1 ? k : s.index;
        ids.push_back(Sampler::sample(row_, in).token);
      }
    }
    return ids;
  }

  std::vector<int32_t> eos_;
  uint64_t seed_ = 0;
  uint64_t next_id_ = 0;
  std::unique_ptr<CudaModelRunner<Policy>> runner_;
  std::unique_ptr<sched::Scheduler> scheduler_;
  StepObserver observer_;
  std::vector<float> row_;
  bool last_empty_ = false;
};

}  // namespace pie::engine::cuda
