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
#include <unordered_map>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/cuda/sample_specs.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/engine/model_runner.hpp"
#include "pie/engine/request_output.hpp"
#include "pie/engine/sampler.hpp"
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
    eos_ = gen_.eos_token_ids;
    for (int32_t id : cfg_.eos_token_ids)
      if (std::find(eos_.begin(), eos_.end(), id) == eos_.end()) eos_.push_back(id);
    if (cfg_.max_position_embeddings > 0)
      sc.max_model_len = static_cast<int>(std::min<int64_t>(sc.max_model_len, cfg_.max_position_embeddings));
    scheduler_ = std::make_unique<sched::Scheduler>(sc, blocks, Policy::block_size, host_blocks);
  }

  /// Queues a prompt; returns its request id. Throws pie::Error naming the bad field.
  uint64_t add_request(std::vector<int32_t> prompt, sched::SamplingParams params) {
    params.validate(cfg_.vocab_size);
    for (size_t i = 0; i < prompt.size(); ++i)
      PIE_CHECK(prompt[i] >= 0 && prompt[i] < cfg_.vocab_size, "prompt token ", i, " (id ", prompt[i],
                ") is out of the vocabulary [0, ", cfg_.vocab_size, ")");
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
    struct Drawn { uint64_t request; int index; SamplerOutput out; };
    std::vector<Drawn> drawn;
    std::vector<int32_t> sampled;
    std::span<const float> logits;
    bool on_host = true;  // sample from `logits` below
    if constexpr (kSamplesOnDevice) {
      // Device sampling: only the ids come back, unless a request's parameters need the host
      // sampler (penalties, logit bias, min_tokens, logprobs): then this step's sampled rows
      // come back as logits and every row is sampled on the host below.
      auto seed_of = [this](uint64_t rid) { return default_seed(rid); };
      std::vector<engine::cuda::SampleSpec> specs = engine::cuda::sample_specs(*scheduler_, plan, seed_of);
      bool host = false;
      for (size_t j = 0; j < plan.sample_seqs.size() && !host; ++j)
        host = engine::cuda::needs_host_sampling(scheduler_->plan_sequence(plan.sample_seqs[j]).request->params);
      if (!host) {
        on_host = false;
        std::span<const int32_t> ids = runner_->execute(plan, specs);
        if (plan.empty()) return {};
        PIE_CHECK(ids.size() == specs.size(), "Engine::step: the runner sampled ", ids.size(), " tokens for ",
                  specs.size(), " draws");
        size_t i = 0;
        for (size_t j = 0; j < plan.sample_seqs.size(); ++j) {
          const sched::Sequence& s = scheduler_->plan_sequence(plan.sample_seqs[j]);
          const int count = plan.sample_counts.empty() ? 1 : plan.sample_counts[j];
          for (int k = 0; k < count; ++k, ++i) {
            SamplerOutput o;
            o.token = ids[i];
            sampled.push_back(o.token);
            drawn.push_back({s.request->id, count > 1 ? k : s.index, std::move(o)});
          }
        }
      } else {
        logits = runner_->execute_logits(plan, specs);
      }
    } else {
      logits = runner_->execute(plan);
    }
    if (plan.empty()) return {};  // the scheduler expects no update() for an empty plan
    const size_t vocab = static_cast<size_t>(cfg_.vocab_size);

    size_t row = 0;  // logits row of the next draw on the device runner
    for (size_t j = 0; on_host && j < plan.sample_seqs.size(); ++j) {
      const sched::Sequence& s = scheduler_->plan_sequence(plan.sample_seqs[j]);
      const sched::Request& r = *s.request;
      const int count = plan.sample_counts.empty() ? 1 : plan.sample_counts[j];
      for (int k = 0; k < count; ++k) {
        // The CPU runner returns one logits row per sampled sequence (its n draws share it);
        // the device runner one row per draw.
        const size_t at = kSamplesOnDevice ? row++ : j;
        row_.assign(logits.begin() + at * vocab, logits.begin() + (at + 1) * vocab);
        SamplerInput in;
        in.params = &r.params;
        in.prompt = s.prompt();
        in.output = s.output();
        in.eos_ids = r.eos_token_ids;
        in.seed = r.params.seed ? *r.params.seed : default_seed(r.id);
        in.seq_index = count > 1 ? k : s.index;
        SamplerOutput o = Sampler::sample(row_, in);
        sampled.push_back(o.token);
        drawn.push_back({r.id, in.seq_index, std::move(o)});
      }
    }
    std::vector<sched::SequenceUpdate> ups = scheduler_->update(plan, sampled);

    std::vector<RequestOutput> outs;
    std::unordered_map<uint64_t, size_t> where;
    size_t d = 0;
    for (const auto& u : ups) {
      // Updates follow sample order, skipping sequences aborted since schedule().
      while (d < drawn.size() && !(drawn[d].request == u.request_id && drawn[d].index == u.index)) ++d;
      PIE_CHECK(d < drawn.size(), "Engine::step: update for request ", u.request_id, " matches no draw");
      auto [it, added] = where.try_emplace(u.request_id, outs.size());
      if (added) {
        RequestOutput ro;
        ro.request_id = u.request_id;
        if (const sched::Request* r = scheduler_->find_request(u.request_id)) {
          ro.prompt_tokens = r->num_prompt_tokens;
          ro.cached_prompt_tokens = r->cached_prompt_tokens;
        }
        outs.push_back(std::move(ro));
      }
      RequestOutput& ro = outs[it->second];
      auto so = std::find_if(ro.seqs.begin(), ro.seqs.end(), [&](auto& x) { return x.index == u.index; });
      if (so == ro.seqs.end()) { ro.seqs.push_back({}); so = ro.seqs.end() - 1; so->index = u.index; }
      so->new_tokens.push_back(u.token);
      if (drawn[d].out.has_logprob) so->logprobs.push_back(std::move(drawn[d].out.logprob));
      if (u.finish != sched::FinishReason::None) { so->finish = u.finish; so->stop_token = u.stop_token; }
      ro.finished = ro.finished || u.request_finished;
      ++d;
    }
    return outs;
  }

  /// Finishes every sequence of the request (reason Abort) and frees its KV blocks.
  void abort(uint64_t request_id) { scheduler_->abort(request_id); }
  /// A stop string matched by the caller: sequence `index` finishes with reason Stop.
  void finish_sequence(uint64_t request_id, int index) {
    scheduler_->finish_sequence(request_id, index, sched::FinishReason::Stop);
  }
  bool has_unfinished() const { return scheduler_->has_unfinished(); }

  /// \brief Tokens and finish reasons of one prompt's n sequences.
  struct Result {
    std::vector<std::vector<int32_t>> tokens;
    std::vector<sched::FinishReason> finish;
  };
  /// Runs `prompts` to completion with the same params (steps any earlier requests too).
  std::vector<Result> generate(const std::vector<std::vector<int32_t>>& prompts, const sched::SamplingParams& params) {
    std::vector<uint64_t> ids;
    for (const auto& p : prompts) ids.push_back(add_request(p, params));
    std::unordered_map<uint64_t, size_t> slot;
    std::vector<Result> res(prompts.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      slot[ids[i]] = i;
      res[i].tokens.resize(params.n);
      res[i].finish.assign(params.n, sched::FinishReason::None);
    }
    size_t open = ids.size();
    while (open > 0) {
      PIE_CHECK(has_unfinished(), "Engine::generate: the scheduler has no work but ", open, " prompts are open");
      auto outs = step();
      // A plan with neither tokens nor block operations changes no state: the next one would
      // be empty too.
      PIE_CHECK(last_step_ran_, "Engine::generate: the scheduler cannot schedule any of the ", open,
                " open prompts (KV cache too small?)");
      for (auto& ro : outs) {
        auto it = slot.find(ro.request_id);
        if (it == slot.end()) continue;
        Result& r = res[it->second];
        for (auto& so : ro.seqs) {
          auto& t = r.tokens[so.index];
          t.insert(t.end(), so.new_tokens.begin(), so.new_tokens.end());
          if (so.finish != sched::FinishReason::None) r.finish[so.index] = so.finish;
        }
        if (ro.finished) --open;
      }
    }
    return res;
  }

  const model::ModelConfig& config() const { return cfg_; }
  const model::GenerationConfig& generation_config() const { return gen_; }

  /// \brief Scheduler and cache counters.
  struct Stats {
    int num_running = 0, num_waiting = 0;
    double kv_usage = 0;
    uint64_t prefix_cache_queries = 0, prefix_cache_hits = 0;
    int num_swapped = 0;            ///< sequences whose blocks are on the host
    uint64_t num_preemptions = 0;   ///< since construction
    int num_kv_blocks = 0;          ///< device blocks of the cache
  };
  Stats stats() const {
    Stats s;
    s.num_running = scheduler_->num_running();
    s.num_waiting = scheduler_->num_waiting();
    s.kv_usage = scheduler_->kv_usage();
    s.prefix_cache_queries = static_cast<uint64_t>(scheduler_->prefix_cache_queries());
    s.prefix_cache_hits = static_cast<uint64_t>(scheduler_->prefix_cache_hits());
    s.num_swapped = scheduler_->num_swapped();
    s.num_preemptions = static_cast<uint64_t>(scheduler_->num_preemptions());
    s.num_kv_blocks = runner_->num_blocks();
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
