#pragma once
/// \file engine.hpp
/// \brief Engine<Model, Policy>: continuous-batching generation. add_request() queues, step()
/// runs one iteration (schedule → block ops + forward → sample → update) and returns what each
/// request produced, generate() runs a batch of prompts to completion.
///
/// Not thread-safe: one thread owns an Engine (the server drives it from its engine thread).
/// Determinism: with greedy sampling, or with a seed, a sequence's tokens do not depend on what
/// else is in the batch, on chunking, on prefix-cache hits or on preemption (the CPU ops sum in
/// fixed orders; the sampler's randomness is keyed by (seed, sequence index, step)).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/cuda/sample_specs.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/engine/model_runner.hpp"
#include "pie/engine/request_output.hpp"
#include "pie/engine/sampler.hpp"
#include "pie/engine/step_outputs.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/load.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/ops/cpu/parallel.hpp"
#include "pie/sched/scheduler.hpp"

namespace pie {

/// \brief The inference engine.
/// \tparam Model  model tag (pie::Qwen3: Qwen3/Qwen2/Llama checkpoints)
/// \tparam Policy EnginePolicy (block size, dtypes, attention variant, backend)
template <class Model, class Policy = CpuF32>
class Engine {
 public:
  using T = typename Policy::dtype;
  using Runner = ModelRunner<Model, Policy>;
  /// The runner loads the model and sizes its KV cache from EngineOptions (the CUDA runner).
  static constexpr bool kBuildsFromOptions = [] {
    if constexpr (requires { Runner::kBuildsFromOptions; }) return Runner::kBuildsFromOptions;
    else return false;
  }();
  /// The runner samples on the device: execute(plan, specs) → ids; execute_logits(plan, specs)
  /// → host logits, one row per draw, for parameters the device sampler cannot honour.
  static constexpr bool kSamplesOnDevice = [] {
    if constexpr (requires { Runner::kSamplesOnDevice; }) return Runner::kSamplesOnDevice;
    else return false;
  }();

  /// Loads the model (or the embedded default), sizes the KV cache, builds the scheduler.
  /// Throws pie::Error naming what is wrong (files, flags, cache too small for max_model_len).
  /// A runner with kBuildsFromOptions (the CUDA one) loads the model and sizes its cache itself
  /// (memory plan from gpu_memory_utilization; swap pool from swap_space_gib).
  explicit Engine(EngineOptions opt) : opt_(std::move(opt)) {
    sched::SchedulerConfig sc = opt_.sched;
    int blocks = 0, host_blocks = opt_.num_host_blocks;
    if constexpr (kBuildsFromOptions) {
      if (!opt_.model_dir.empty()) {
        const auto c = model::load_model_config(opt_.model_dir);
        if (c.max_position_embeddings > 0)
          sc.max_model_len = static_cast<int>(std::min<int64_t>(sc.max_model_len, c.max_position_embeddings));
      }
      opt_.sched = sc;
      runner_ = std::make_unique<Runner>(opt_);
      cfg_ = runner_->config();
      gen_ = runner_->generation_config();
      blocks = runner_->num_blocks();
      host_blocks = runner_->num_host_blocks();
    } else {
      unsigned threads = opt_.num_threads > 0 ? static_cast<unsigned>(opt_.num_threads)
                                              : std::max(1u, std::thread::hardware_concurrency());
      ops::cpu::set_num_threads(static_cast<int>(threads));
      model::LoadOptions lo;
      lo.threads = threads;
      auto loaded = model::load_model<T>(opt_.model_dir, model::parse_load_format(opt_.load_format),
                                         opt_.seed, lo);
      cfg_ = loaded.weights.config;
      gen_ = loaded.generation;
      kv::KVLayout layout{cfg_.num_hidden_layers, cfg_.num_key_value_heads, cfg_.head_dim,
                          Policy::block_size, DTypeTraits<typename Policy::kv_dtype>::dtype};
      blocks = opt_.num_kv_blocks > 0 ? opt_.num_kv_blocks
                                      : static_cast<int>(layout.blocks_for_budget(opt_.kv_cache_bytes));
      PIE_CHECK(blocks > 0, "kv_cache_bytes (", opt_.kv_cache_bytes, ") holds no KV block of ",
                layout.bytes_per_block(), " bytes");
      runner_ = std::make_unique<Runner>(std::move(loaded.weights), blocks, opt_.num_host_blocks);
    }
    eos_ = engine::eos_ids(gen_, cfg_);
    if (cfg_.max_position_embeddings > 0)
      sc.max_model_len = static_cast<int>(std::min<int64_t>(sc.max_model_len, cfg_.max_position_embeddings));
    scheduler_ = std::make_unique<sched::Scheduler>(sc, blocks, Policy::block_size, host_blocks);
  }

  /// Queues a prompt; returns its request id. Throws pie::Error naming the bad field.
  uint64_t add_request(std::vector<int32_t> prompt, sched::SamplingParams params) {
    engine::check_request(prompt, params, cfg_.vocab_size);
    const uint64_t id = next_id_++;
    scheduler_->add_request(id, std::move(prompt), std::move(params), eos_);
    return id;
  }

  /// One iteration. Returns, per request that produced tokens, its new tokens (and logprobs)
  /// and finish state. Empty when nothing could run.
  std::vector<RequestOutput> step() {
    sched::StepPlan plan = scheduler_->schedule();
    // A plan without tokens may still carry block operations (a swap-out that made room for
    // nothing else this step): they must run before those blocks are reused.
    const bool has_block_ops = !plan.swap_in.empty() || !plan.swap_out.empty() || !plan.copy_blocks.empty();
    last_step_ran_ = !plan.empty() || has_block_ops;
    if (!last_step_ran_) return {};
    engine::StepDraws draws;
    std::span<const float> logits;
    bool on_host = true;  // sample from `logits` below
    if constexpr (kSamplesOnDevice) {
      // Device sampling: only the ids come back, unless a request's parameters need the host
      // sampler (penalties, logit bias, min_tokens, logprobs): then this step's sampled rows
      // come back as logits and every row is sampled on the host below.
      auto seed_of = [this](uint64_t rid) { return default_seed(rid); };
      std::vector<engine::cuda::SampleSpec> specs = engine::cuda::sample_specs(*scheduler_, plan, seed_of);
      if (!engine::cuda::plan_needs_host_sampling(*scheduler_, plan)) {
        on_host = false;
        std::span<const int32_t> ids = runner_->execute(plan, specs);
        if (plan.empty()) return {};
        PIE_CHECK(ids.size() == specs.size(), "Engine::step: the runner sampled ", ids.size(), " tokens for ",
                  specs.size(), " draws");
        engine::add_sampled_ids(*scheduler_, plan, ids, draws);
      } else {
        logits = runner_->execute_logits(plan, specs);
      }
    } else {
      logits = runner_->execute(plan);
    }
    if (plan.empty()) return {};  // the scheduler expects no update() for an empty plan
    // The CPU runner returns one logits row per sampled sequence (its n draws share it);
    // the device runner one row per draw.
    if (on_host)
      engine::sample_on_host(*scheduler_, plan, logits, static_cast<size_t>(cfg_.vocab_size), kSamplesOnDevice,
                             [this](uint64_t rid) { return default_seed(rid); }, row_, draws);
    return engine::apply_draws(*scheduler_, plan, draws, "Engine");
  }

  /// Finishes every sequence of the request (reason Abort) and frees its KV blocks.
  void abort(uint64_t request_id) { scheduler_->abort(request_id); }
  /// A stop string matched by the caller: sequence `index` finishes with reason Stop.
  void finish_sequence(uint64_t request_id, int index) {
    scheduler_->finish_sequence(request_id, index, sched::FinishReason::Stop);
  }
  bool has_unfinished() const { return scheduler_->has_unfinished(); }

  /// \brief Tokens and finish reasons of one prompt's n sequences.
  using Result = engine::GenerateResult;
  /// Runs `prompts` to completion with the same params (steps any earlier requests too).
  std::vector<Result> generate(const std::vector<std::vector<int32_t>>& prompts, const sched::SamplingParams& params) {
    return engine::generate(*this, prompts, params, "Engine");
  }
  /// Whether the last step() ran anything (tokens or block operations): generate()'s stall check.
  bool last_step_ran() const { return last_step_ran_; }

  const model::ModelConfig& config() const { return cfg_; }
  const model::GenerationConfig& generation_config() const { return gen_; }

  /// \brief Scheduler and cache counters.
  using Stats = engine::EngineStats;
  Stats stats() const {
    Stats s;
    engine::fill_stats(*scheduler_, runner_->num_blocks(), s);
    return s;
  }

  /// The scheduler (read-only: tests, metrics, the server's token lookups).
  const sched::Scheduler& scheduler() const { return *scheduler_; }

 private:
  uint64_t default_seed(uint64_t request_id) const {
    return opt_.seed * 0x9e3779b97f4a7c15ull + request_id + 1;
  }

  EngineOptions opt_;
  model::ModelConfig cfg_;
  model::GenerationConfig gen_;
  std::vector<int32_t> eos_;
  std::unique_ptr<sched::Scheduler> scheduler_;
  std::unique_ptr<Runner> runner_;
  std::vector<float> row_;
  uint64_t next_id_ = 0;
  bool last_step_ran_ = false;
};

}  // namespace pie
