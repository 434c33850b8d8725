#pragma once
/// \file engine.hpp
/// \brief Engine<Model, Policy>: the one continuous-batching engine. add_request() queues,
/// step() runs one iteration (schedule → block ops + forward on every rank → sample → update)
/// and returns what each request produced, generate() runs a batch of prompts to completion.
/// The same loop drives the CPU backend, one GPU and a tensor-parallel group of N ranks: what
/// differs is the executor's runner (ModelRunner<Model, Policy>) and its RankGroup.
///
/// Not thread-safe: one thread owns an Engine (the server drives it from its engine thread).
/// Determinism: with greedy sampling, or with a seed, a sequence's tokens do not depend on what
/// else is in the batch, on chunking, on prefix-cache hits or on preemption (the CPU ops sum in
/// fixed orders; the sampler's randomness is keyed by (seed, sequence index, step); the GPU is
/// bitwise batch-invariant with --batch-invariant). One seeding rule for every backend:
/// an unseeded request r draws with seed·φ + r + 1.
///
/// Asynchronous scheduling (EngineOptions::sched.async_scheduling, vLLM's --async-scheduling;
/// runners with launch_ahead()/collect()): step() plans step N+1 while step N computes — schedule
/// N+1 with a placeholder per decode whose token N samples, launch it (the runner feeds N's
/// sampled ids to N+1 where N left them), then wait for N's ids and update — and returns N's
/// outputs, so one step is always in flight between calls. While any live request needs the
/// host after its forward (needs_host_sampling: penalties, logit_bias, min_tokens, logprobs,
/// a logits processor or token mask; or prompt_logprobs), steps run synchronously: step()
/// first finishes the step in flight. Tokens, finish reasons and logprobs do not change.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/engine/executor.hpp"
#include "pie/engine/mask_fill.hpp"
#include "pie/engine/model_runner.hpp"
#include "pie/engine/rank_group.hpp"
#include "pie/engine/request_output.hpp"
#include "pie/engine/sample_specs.hpp"
#include "pie/engine/sampler.hpp"
#include "pie/engine/step_outputs.hpp"
#include "pie/model/qwen3.hpp"  // the models pie ships (Engine<pie::Qwen3, P>)
#include "pie/sched/scheduler.hpp"

namespace pie {

/// \brief Timing of one step (seconds), for benchmarks and the step observer.
struct StepTiming {
  double host_s = 0;   ///< schedule + sample specs + update + host sampling (the GPU idles meanwhile)
  double total_s = 0;  ///< wall time of the whole step
  /// Parts of host_s, so that a benchmark can say where the host's time goes (issue 15's
  /// host-time target): the scheduler's plans made during this step (with asynchronous
  /// scheduling also the next step's, made while this one runs on the device), and applying the
  /// sampled tokens (apply_draws: the scheduler's update and the request outputs). The rest of
  /// host_s is the sample specs, staging and launching (asynchronous scheduling), host sampling.
  double schedule_s = 0;
  double apply_s = 0;
  /// What the host time cost the device: how long rank 0's device sat idle between the end of
  /// the previous step's work and the start of this step's (timing events on a GPU, the host
  /// clock around the CPU runner's step work). Under asynchronous scheduling most of host_s
  /// runs while the device computes, and this is the part that did not. Empty for the first
  /// step and for runners that do not measure it.
  std::optional<double> device_idle_s;
};

/// \brief The inference engine.
/// \tparam Model  a model (pie::Qwen3, pie::Qwen2, pie::Llama, or a user's: model_concept.hpp)
/// \tparam Policy EnginePolicy (block size, dtypes, attention variant, backend)
template <class Model, class Policy = CpuF32>
class Engine {
 public:
  using T = typename Policy::dtype;
  using Runner = ModelRunner<Model, Policy>;
  /// Called after every step that ran with the plan and its timing (bench, tracing).
  using StepObserver = std::function<void(const sched::StepPlan&, const StepTiming&)>;

  /// Loads the model (or the embedded default) on every rank of `group` (one rank by default),
  /// sizes the KV cache, builds the scheduler. Throws pie::Error naming what is wrong (files,
  /// flags, cache too small for max_model_len).
  explicit Engine(EngineOptions opt, engine::RankGroup group = {}) : opt_(std::move(opt)) {
    PIE_CHECK(!opt_.sched.async_scheduling || kRunsAhead,
              "--async-scheduling is not supported by this backend's runner (it has no launch_ahead()/collect())");
    exec_ = std::make_unique<engine::Executor<Runner>>(opt_, std::move(group));
    if constexpr (requires(const Runner& r) { r.runs_ahead(); })
      PIE_CHECK(!opt_.sched.async_scheduling || exec_->rank(0).runs_ahead(),
                "--async-scheduling is not supported with --tensor-parallel-size ", exec_->size(),
                " on this backend (only rank 0 holds the sampled ids)");
    cfg_ = exec_->rank(0).global_config();
    gen_ = exec_->rank(0).generation_config();
    eos_ = engine::eos_ids(gen_, cfg_);
    sched::SchedulerConfig sc = opt_.sched;
    if (cfg_.max_position_embeddings > 0)
      sc.max_model_len = static_cast<int>(std::min<int64_t>(sc.max_model_len, cfg_.max_position_embeddings));
    scheduler_ = std::make_unique<sched::Scheduler>(sc, exec_->num_blocks(), Policy::block_size,
                                                    exec_->num_host_blocks());
  }

  /// Queues a prompt; returns its request id. Throws pie::Error naming the bad field.
  uint64_t add_request(std::vector<int32_t> prompt, sched::SamplingParams params) {
    engine::check_request(prompt, params, cfg_.vocab_size);
    const uint64_t id = next_id_++;
    const bool sync = engine::needs_host_sampling(params) || params.prompt_logprobs.has_value();
    scheduler_->add_request(id, std::move(prompt), std::move(params), eos_);
    if (sync) needs_sync_.insert(id);
    return id;
  }

  /// One iteration on every rank. Returns, per request that produced tokens, its new tokens
  /// (and logprobs) and finish state. Empty when nothing could run.
  std::vector<RequestOutput> step() {
    const auto t0 = clock::now();
    schedule_time_ = apply_time_ = {};  // this call's phases (observe)
    std::vector<RequestOutput> outs;
    if constexpr (kRunsAhead) {
      if (opt_.sched.async_scheduling) outs = step_ahead(t0);
      else outs = step_sync(t0);
    } else {
      outs = step_sync(t0);
    }
    if (!needs_sync_.empty())
      for (const auto& o : outs)
        if (o.finished) needs_sync_.erase(o.request_id);
    return outs;
  }

  /// Finishes every sequence of the request (reason Abort) and frees its KV blocks.
  void abort(uint64_t request_id) {
    scheduler_->abort(request_id);
    prompt_logprobs_.erase(request_id);
    needs_sync_.erase(request_id);
  }
  /// A stop string matched by the caller: sequence `index` finishes with reason Stop.
  void finish_sequence(uint64_t request_id, int index) {
    scheduler_->finish_sequence(request_id, index, sched::FinishReason::Stop);
    if (const sched::Request* r = scheduler_->find_request(request_id); r && r->finished())
      needs_sync_.erase(request_id);
  }
  bool has_unfinished() const { return scheduler_->has_unfinished() || in_flight_; }
  /// Asynchronous scheduling: steps scheduled while the previous one was still computing
  /// (before its update) — the overlap the mode exists for (tests, bench).
  uint64_t steps_scheduled_ahead() const { return steps_ahead_; }

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
  const EngineOptions& options() const { return opt_; }

  /// \brief Scheduler and cache counters, and what each rank's budget alone would hold.
  struct Stats : engine::EngineStats {
    std::vector<int> rank_max_kv_blocks;
  };
  Stats stats() const {
    Stats s;
    engine::fill_stats(*scheduler_, exec_->num_blocks(), s);
    s.rank_max_kv_blocks = exec_->rank_max_kv_blocks();
    s.steps_scheduled_ahead = steps_ahead_;
    return s;
  }

  /// The scheduler (read-only: tests, metrics, the server's token lookups).
  const sched::Scheduler& scheduler() const { return *scheduler_; }
  /// Tensor-parallel size (1: one rank).
  int num_ranks() const { return exec_->size(); }
  /// Rank r's runner (tests, bench: memory plan, profiler; not while a step runs).
  Runner& runner(int r = 0) { return exec_->rank(r); }
  void set_observer(StepObserver f) { observer_ = std::move(f); }

 private:
  using clock = std::chrono::steady_clock;

  /// Whether step() may run ahead: the option is on and every live request samples on the
  /// runner without the host (needs_sync_ is empty).
  bool may_run_ahead() const { return opt_.sched.async_scheduling && needs_sync_.empty(); }

  /// Asynchronous scheduling's step (see the file comment).
  std::vector<RequestOutput> step_ahead(clock::time_point t0) {
    if (!in_flight_) {
      sched::StepPlan& p = plans_[ahead_ ^ 1];
      schedule_timed(p);
      last_step_ran_ = !p.empty() || has_block_ops(p);
      if (!last_step_ran_) return {};
      if (!may_run_ahead()) return run_scheduled(p, t0);
      ahead_ ^= 1;
      launch(ahead_);
    }
    // Step N is in flight in plans_[ahead_]: plan and launch N+1 before waiting for N.
    const int cur = ahead_;
    bool launched = false;
    if (may_run_ahead()) {
      sched::StepPlan& next = plans_[cur ^ 1];
      schedule_timed(next);
      if (!next.empty() || has_block_ops(next)) {
        ++steps_ahead_;
        launch(cur ^ 1);
        launched = true;
      }
    }
    const auto w0 = clock::now();
    std::span<const int32_t> ids;
    exec_->run([&](int r) {
      std::span<const int32_t> got = exec_->rank(r).collect();
      if (r == 0) ids = got;
    });
    const clock::duration wait = clock::now() - w0;
    const sched::StepPlan& n = plans_[cur];
    engine::StepDraws& d = draws_[cur];
    std::vector<RequestOutput> outs;
    if (!n.empty()) {  // a plan of block operations only samples nothing and is not updated
      PIE_CHECK(ids.size() == d.sampled.size(), "Engine::step: rank 0 sampled ", ids.size(), " tokens for ",
                d.sampled.size(), " draws");
      for (size_t i = 0; i < ids.size(); ++i) d.sampled[i] = d.drawn[i].out.token = ids[i];
      const auto a0 = clock::now();
      outs = engine::apply_draws(*scheduler_, n, d, "Engine");
      apply_time_ += clock::now() - a0;
    }
    in_flight_ = launched;
    ahead_ = launched ? cur ^ 1 : cur;
    last_step_ran_ = true;
    observe(n, t0, wait);
    return outs;
  }

  /// Launches plans_[k] (the last scheduled plan) on every rank and records its draws' owners.
  void launch(int k) {
    const sched::StepPlan& p = plans_[k];
    auto seed_of = [this](uint64_t rid) { return default_seed(rid); };
    specs_ = engine::sample_specs(*scheduler_, p, seed_of);
    engine::StepDraws& d = draws_[k];
    d.drawn.clear();
    d.sampled.clear();
    engine::for_each_draw(*scheduler_, p, [&](size_t, const sched::Sequence& seq, int index) {
      d.add(seq.request->id, index, SamplerOutput{});
    });
    if constexpr (kRunsAhead) exec_->run([&](int r) { exec_->rank(r).launch_ahead(p, specs_); });
    in_flight_ = true;
  }

  static bool has_block_ops(const sched::StepPlan& p) {
    return !p.swap_in.empty() || !p.swap_out.empty() || !p.copy_blocks.empty();
  }

  /// The synchronous step: schedule, run, sample, update.
  std::vector<RequestOutput> step_sync(clock::time_point t0) {
    schedule_timed(plan_);
    // A plan without tokens may still carry block operations (a swap-out that made room for
    // nothing else this step): they must run before those blocks are reused.
    last_step_ran_ = !plan_.empty() || has_block_ops(plan_);
    if (!last_step_ran_) return {};
    return run_scheduled(plan_, t0);
  }

  /// Runs the scheduled `plan` synchronously: forward on every rank, sampling, update.
  std::vector<RequestOutput> run_scheduled(sched::StepPlan& plan, clock::time_point t0) {
    PIE_CHECK(plan.feed_rows.empty(), "Engine::step: a plan with placeholders runs ahead only");
    auto seed_of = [this](uint64_t rid) { return default_seed(rid); };
    engine::StepDraws draws;
    clock::duration device{};
    bool sampled = false;
    if constexpr (Runner::kSamplesOnDevice) {
      // Rank 0 samples on its device and only the ids come back. Penalties, logit bias,
      // min_tokens and logprobs take the runner's full device sampler where it has one
      // (kSamplesFull; the logprobs come back with the ids). A logits processor needs the host:
      // then this step's sampled rows come back as logits and the rows that need it are sampled
      // on the host below. Token-masked draws (structured outputs) stay on the device: their
      // masks are filled on the host while the forward runs, then rank 0 (which holds the whole
      // vocabulary's logits and samples under TP too) applies them with the bitmask kernel.
      specs_ = engine::sample_specs(*scheduler_, plan, seed_of);
      const engine::SampleMode mode = engine::plan_sample_mode(*scheduler_, plan);
      bool masked = false, full = false;
      if constexpr (requires { Runner::kSamplesMasked; }) masked = mode == engine::SampleMode::DeviceMasked;
      if constexpr (kSamplesFull) {
        if constexpr (requires(Runner& rr) { rr.samples_full(); })
          full = mode == engine::SampleMode::DeviceFull && exec_->rank(0).samples_full();
        else
          full = mode == engine::SampleMode::DeviceFull;
      }
      if (mode == engine::SampleMode::Device || masked || full) {
        const auto d0 = clock::now();
        std::span<const int32_t> ids;
        engine::DeviceDraws full_draws;
        if (full) engine::sampler_inputs(*scheduler_, plan, seed_of, inputs_);
        exec_->run([&](int r) {
          std::span<const int32_t> got;
          if constexpr (kSamplesFull) {
            if (full) {
              engine::DeviceDraws dd = exec_->rank(r).execute_sample_full(plan, specs_, inputs_);
              got = dd.ids;
              if (r == 0) full_draws = dd;
            }
          }
          if constexpr (requires { Runner::kSamplesMasked; }) {
            if (masked) {
              got = exec_->rank(r).execute_sample_masked(
                  plan, specs_, [this, &plan](std::span<int32_t> masks, std::span<int32_t> flags) {
                    if (!mask_pool_)
                      mask_pool_ = std::make_unique<engine::TaskPool>(
                          static_cast<int>(std::clamp(std::thread::hardware_concurrency() / 2, 1u, 8u)) - 1);
                    engine::fill_step_masks(*scheduler_, plan, sched::bitmask_words(cfg_.vocab_size), masks, flags,
                                            mask_pool_.get());
                  });
            }
          }
          if (!masked && !full) got = exec_->rank(r).execute_sample(plan, specs_);
          if (r == 0) ids = got;
        });
        device = clock::now() - d0;
        if (plan.empty()) return {};  // the scheduler expects no update() for an empty plan
        PIE_CHECK(ids.size() == specs_.size(), "Engine::step: rank 0 sampled ", ids.size(), " tokens for ",
                  specs_.size(), " draws");
        if (full) engine::add_device_draws(*scheduler_, plan, full_draws, draws);
        else engine::add_sampled_ids(*scheduler_, plan, ids, draws);
        sampled = true;
      }
    }
    if (!sampled) {
      const auto d0 = clock::now();
      std::span<const float> logits;
      exec_->run([&](int r) {
        std::span<const float> l;
        if constexpr (Runner::kSamplesOnDevice) l = exec_->rank(r).execute_logits(plan, specs_);
        else l = exec_->rank(r).execute(plan);
        if (r == 0) logits = l;
      });
      device = clock::now() - d0;
      if (plan.empty()) return {};
      const size_t vocab = static_cast<size_t>(cfg_.vocab_size);
      const size_t rows = Runner::kLogitsPerDraw ? static_cast<size_t>(plan.num_sampled_tokens())
                                                 : plan.logits_rows.size();
      PIE_CHECK(logits.size() == rows * vocab, "Engine::step: rank 0 returned ", logits.size(), " logits for ",
                rows, " rows");
      // The device sampler ran too (a device runner's execute_logits): its ids stand for the
      // draws that need nothing of the host.
      std::span<const int32_t> device_ids;
      if constexpr (Runner::kSamplesOnDevice && requires(Runner& rr) { rr.last_ids(); })
        device_ids = exec_->rank(0).last_ids();
      engine::sample_on_host(*scheduler_, plan, logits, vocab, Runner::kLogitsPerDraw, seed_of, row_, draws,
                             device_ids);
      if constexpr (!kScoresPromptRows)
        if (!plan.prompt_logprob_seqs.empty())
          engine::collect_prompt_logprobs(*scheduler_, plan, logits, vocab, prompt_logprobs_);
    }
    if constexpr (kScoresPromptRows)  // the runner scored them on its device, whichever way it sampled
      if (!plan.prompt_logprob_seqs.empty())
        engine::collect_prompt_logprobs(*scheduler_, plan, exec_->rank(0).prompt_logprob_rows(), prompt_logprobs_);
    const auto a0 = clock::now();
    std::vector<RequestOutput> outs = engine::apply_draws(*scheduler_, plan, draws, "Engine");
    apply_time_ += clock::now() - a0;
    if (!prompt_logprobs_.empty())
      for (auto& o : outs)
        if (auto it = prompt_logprobs_.find(o.request_id); it != prompt_logprobs_.end()) {
          o.prompt_logprobs = std::move(it->second);
          prompt_logprobs_.erase(it);
        }
    observe(plan, t0, device);
    return outs;
  }

  /// Reports a step that ran to the observer: wall time since t0, of which `device` waited for
  /// the ranks (the rest is host time).
  /// With this call's phase times (StepTiming::schedule_s, apply_s: step() zeroes them).
  void observe(const sched::StepPlan& plan, clock::time_point t0, clock::duration device) const {
    const clock::duration sched = schedule_time_, apply = apply_time_;
    if (!observer_) return;
    StepTiming tm;
    tm.device_idle_s = rank0_idle();
    tm.total_s = std::chrono::duration<double>(clock::now() - t0).count();
    tm.host_s = tm.total_s - std::chrono::duration<double>(device).count();
    tm.schedule_s = std::chrono::duration<double>(sched).count();
    tm.apply_s = std::chrono::duration<double>(apply).count();
    observer_(plan, tm);
  }
  /// Rank 0's device idle gap before the step it completed last (StepTiming::device_idle_s).
  std::optional<double> rank0_idle() const {
    if constexpr (requires(Runner& r) { r.last_idle_s(); }) return exec_->rank(0).last_idle_s();
    else return std::nullopt;
  }
  /// scheduler_->schedule(p), its time added to the step's schedule phase (observe).
  void schedule_timed(sched::StepPlan& p) {
    const auto s0 = clock::now();
    scheduler_->schedule(p);
    schedule_time_ += clock::now() - s0;
  }

  /// Runners whose logits hold the draws' rows only (the GPU) score prompt_logprobs rows
  /// themselves and return sched::PromptLogprobRow records; the CPU returns every row's logits.
  static constexpr bool kScoresPromptRows = requires(const Runner& r) { r.prompt_logprob_rows(); };
  /// Runners that launch a step and collect its sampled ids later (asynchronous scheduling).
  static constexpr bool kRunsAhead = requires { Runner::kRunsAhead; };
  /// Device runners whose sampler takes penalties, logit_bias, min_tokens and logprobs
  /// (execute_sample_full): such steps stay on the device instead of copying logits back.
  static constexpr bool kSamplesFull = requires { Runner::kSamplesFull; };

  uint64_t default_seed(uint64_t request_id) const {
    return opt_.seed * 0x9e3779b97f4a7c15ull + request_id + 1;
  }

  EngineOptions opt_;
  std::unique_ptr<engine::Executor<Runner>> exec_;
  model::ModelConfig cfg_;
  model::GenerationConfig gen_;
  std::vector<int32_t> eos_;
  std::unique_ptr<sched::Scheduler> scheduler_;
  sched::StepPlan plan_;  // the one plan every rank reads each step
  // Asynchronous scheduling: the step in flight is plans_[ahead_] (its draws' owners in
  // in_flight_draws_); the other plan is scheduled while it computes.
  sched::StepPlan plans_[2];
  int ahead_ = 0;
  bool in_flight_ = false;
  engine::StepDraws draws_[2];  // parallel to plans_: each launched plan's draws
  uint64_t steps_ahead_ = 0;
  std::unordered_set<uint64_t> needs_sync_;  // live requests that need the host after the forward
  std::vector<engine::SampleSpec> specs_;
  std::vector<sched::SamplerInput> inputs_;  // execute_sample_full's per-draw inputs
  std::vector<float> row_;
  StepObserver observer_;
  clock::duration schedule_time_{}, apply_time_{};  ///< this step's phases so far (observe)
  // prompt_logprobs computed by prefill chunks, held until the request's first output.
  std::unordered_map<uint64_t, std::vector<PromptLogprob>> prompt_logprobs_;
  std::unique_ptr<engine::TaskPool> mask_pool_;  // fills token masks (structured outputs) in parallel
  uint64_t next_id_ = 0;
  bool last_step_ran_ = false;
};

}  // namespace pie
