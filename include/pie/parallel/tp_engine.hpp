#pragma once
/// \file tp_engine.hpp
/// \brief TpEngine<Rank>: continuous batching over a tensor-parallel group in one process —
/// one worker thread per rank (RankWorkers), each rank owning its runner and its KV pools, and
/// ONE scheduler, driven from the caller's thread ("rank 0's" control plane, as vLLM's driver
/// worker).
///
/// Each step: schedule() fills the engine's StepPlan; RankWorkers publishes one job under a new
/// epoch and every rank executes that same plan object in place (shared memory: no per-rank
/// copy beyond what a runner stages for its device), the ranks meeting in their Communicator's
/// all-reduces / all-gathers; when all ranks are done, rank 0's gathered logits are sampled on
/// the host (engine/sampler.hpp, same seeds as pie::Engine) and the scheduler is updated.
///
/// KV blocks are counted per rank: every rank reports how many blocks of ITS layout (its KV
/// heads) fit its budget, and the scheduler gets the minimum, which every rank then allocates,
/// so a block id means the same slot on every rank.
///
/// A rank that throws (load, allocation, forward) aborts the group's communicator, so ranks
/// blocked in a collective throw instead of waiting, and the step (or constructor) throws one
/// pie::Error naming the rank; the engine is unusable afterwards.
///
/// Rank interface (TpCpuRank, CudaTpRank): kBlockSize, global_config(), generation_config(),
/// max_kv_blocks(), allocate_kv(blocks, host_blocks), execute(plan) → host logits
/// [plan.logits_rows.size()][vocab] (read on rank 0 only; one row per draw instead when the
/// rank declares kLogitsPerDraw, as the GPU runner's StepBuffers lay them out).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/engine/cuda/sample_specs.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/engine/request_output.hpp"
#include "pie/engine/step_outputs.hpp"
#include "pie/ops/cpu/parallel.hpp"
#include "pie/parallel/rank_workers.hpp"
#include "pie/parallel/tp_cpu_rank.hpp"
#include "pie/parallel/tp_world.hpp"
#include "pie/sched/scheduler.hpp"

namespace pie::parallel {

/// \brief Tensor-parallel engine over `Rank`s (see file comment).
template <class Rank>
class TpEngine {
 public:
  /// Tokens per KV block: the ranks' (the scheduler must page exactly as they do).
  static constexpr int BlockSize = Rank::kBlockSize;
  /// Builds every rank on its own thread, sizes the KV cache to the smallest rank, builds the
  /// scheduler. opt.num_kv_blocks > 0 fixes the count instead (each rank must hold it).
  TpEngine(EngineOptions opt, TpWorld<Rank> world)
      : opt_(std::move(opt)), ranks_(world.size),
        workers_(std::make_unique<RankWorkers>(world.size, world.abort)) {
    if (opt_.num_threads > 0) ops::cpu::set_num_threads(opt_.num_threads);
    rank_blocks_.assign(size(), 0);
    // Capacity is asked on the rank's own thread: its device is current there.
    workers_->run([&](int r) {
      ranks_[r] = world.make_rank(r);
      rank_blocks_[r] = ranks_[r]->max_kv_blocks();
    });
    cfg_ = ranks_[0]->global_config();
    gen_ = ranks_[0]->generation_config();
    for (int r = 0; r < size(); ++r) {
      PIE_CHECK(ranks_[r]->global_config().vocab_size == cfg_.vocab_size, "TpEngine: rank ", r,
                " loaded a different model than rank 0");
    }
    blocks_ = opt_.num_kv_blocks > 0 ? opt_.num_kv_blocks
                                     : *std::min_element(rank_blocks_.begin(), rank_blocks_.end());
    PIE_CHECK(blocks_ > 0, "TpEngine: the smallest rank's KV budget holds no block (per rank: ",
              join(rank_blocks_), ")");
    for (int r = 0; r < size(); ++r)
      PIE_CHECK(blocks_ <= rank_blocks_[r], "TpEngine: num_kv_blocks ", blocks_, " exceeds what rank ", r,
                " can hold (", rank_blocks_[r], ")");
    workers_->run([&](int r) { ranks_[r]->allocate_kv(blocks_, opt_.num_host_blocks); });

    eos_ = engine::eos_ids(gen_, cfg_);
    sched::SchedulerConfig sc = opt_.sched;
    if (cfg_.max_position_embeddings > 0)
      sc.max_model_len = static_cast<int>(std::min<int64_t>(sc.max_model_len, cfg_.max_position_embeddings));
    scheduler_ = std::make_unique<sched::Scheduler>(sc, blocks_, BlockSize, opt_.num_host_blocks);
  }
  TpEngine(const TpEngine&) = delete;
  TpEngine& operator=(const TpEngine&) = delete;
  ~TpEngine() {
    // Ranks are destroyed on their own threads (device contexts, communicators are theirs).
    if (workers_ && !workers_->failed()) {
      try { workers_->run([&](int r) { ranks_[r].reset(); }); } catch (...) {}
    }
  }

  int size() const { return static_cast<int>(ranks_.size()); }
  /// The rank can sample on its device (CudaTpRank::execute_sample) and return only ids.
  static constexpr bool kRankSamplesOnDevice = [] {
    if constexpr (requires { Rank::kSamplesOnDevice; }) return Rank::kSamplesOnDevice;
    else return false;
  }();
  /// The rank returns one logits row per draw (n > 1 prefills repeat a row), not per sample.
  static constexpr bool kLogitsPerDraw = [] {
    if constexpr (requires { Rank::kLogitsPerDraw; }) return Rank::kLogitsPerDraw;
    else return false;
  }();

  /// Queues a prompt; returns its request id. Throws pie::Error naming the bad field.
  uint64_t add_request(std::vector<int32_t> prompt, sched::SamplingParams params) {
    engine::check_request(prompt, params, cfg_.vocab_size);
    const uint64_t id = next_id_++;
    scheduler_->add_request(id, std::move(prompt), std::move(params), eos_);
    return id;
  }

  /// One iteration on every rank. Returns, per request that produced tokens, its new tokens
  /// and finish state. Throws pie::Error if a rank failed.
  std::vector<RequestOutput> step() {
    scheduler_->schedule(plan_);
    const bool has_block_ops = !plan_.swap_in.empty() || !plan_.swap_out.empty() || !plan_.copy_blocks.empty();
    last_step_ran_ = !plan_.empty() || has_block_ops;
    if (!last_step_ran_) return {};
    if constexpr (kRankSamplesOnDevice) {
      // Rank 0 samples on its device and only the ids come back, unless a request needs the
      // host sampler (penalties, logit bias, min_tokens, logprobs): as pie::Engine does.
      auto seed_of = [this](uint64_t rid) { return default_seed(rid); };
      if (!engine::cuda::plan_needs_host_sampling(*scheduler_, plan_)) {
        const std::vector<engine::cuda::SampleSpec> specs = engine::cuda::sample_specs(*scheduler_, plan_, seed_of);
        std::span<const int32_t> ids;
        workers_->run([&](int r) {
          std::span<const int32_t> got = ranks_[r]->execute_sample(plan_, specs);
          if (r == 0) ids = got;
        });
        if (plan_.empty()) return {};
        PIE_CHECK(ids.size() == specs.size(), "TpEngine::step: rank 0 sampled ", ids.size(), " tokens for ",
                  specs.size(), " draws");
        engine::StepDraws draws;
        engine::add_sampled_ids(*scheduler_, plan_, ids, draws);
        return engine::apply_draws(*scheduler_, plan_, draws, "TpEngine");
      }
    }
    workers_->run([&](int r) {
      std::span<const float> l = ranks_[r]->execute(plan_);
      if (r == 0) logits_ = l;
    });
    if (plan_.empty()) return {};
    const size_t vocab = static_cast<size_t>(cfg_.vocab_size);
    const size_t rows = kLogitsPerDraw ? static_cast<size_t>(plan_.num_sampled_tokens()) : plan_.logits_rows.size();
    PIE_CHECK(logits_.size() == rows * vocab, "TpEngine::step: rank 0 returned ", logits_.size(), " logits for ",
              rows, " rows");

    engine::StepDraws draws;
    engine::sample_on_host(*scheduler_, plan_, logits_, vocab, kLogitsPerDraw,
                           [this](uint64_t rid) { return default_seed(rid); }, row_, draws);
    return engine::apply_draws(*scheduler_, plan_, draws, "TpEngine");
  }

  void abort(uint64_t request_id) { scheduler_->abort(request_id); }
  void finish_sequence(uint64_t request_id, int index) {
    scheduler_->finish_sequence(request_id, index, sched::FinishReason::Stop);
  }
  bool has_unfinished() const { return scheduler_->has_unfinished(); }

  /// \brief Tokens and finish reasons of one prompt's n sequences (as Engine::Result).
  using Result = engine::GenerateResult;
  /// Runs `prompts` to completion with the same params (steps any earlier requests too).
  std::vector<Result> generate(const std::vector<std::vector<int32_t>>& prompts, const sched::SamplingParams& params) {
    return engine::generate(*this, prompts, params, "TpEngine");
  }
  /// Whether the last step() ran anything (tokens or block operations): generate()'s stall check.
  bool last_step_ran() const { return last_step_ran_; }

  const model::ModelConfig& config() const { return cfg_; }
  const model::GenerationConfig& generation_config() const { return gen_; }
  /// Rank r's runner (tests; do not call it while a step runs).
  Rank& rank(int r) { return *ranks_.at(r); }

  /// \brief Scheduler and cache counters (Engine::Stats plus the per-rank KV capacity).
  struct Stats : engine::EngineStats {
    std::vector<int> rank_max_kv_blocks;  ///< what each rank's budget alone would hold
  };
  Stats stats() const {
    Stats s;
    engine::fill_stats(*scheduler_, blocks_, s);
    s.rank_max_kv_blocks = rank_blocks_;
    return s;
  }
  const sched::Scheduler& scheduler() const { return *scheduler_; }

 private:
  uint64_t default_seed(uint64_t request_id) const {  // pie::Engine's, so streams match
    return opt_.seed * 0x9e3779b97f4a7c15ull + request_id + 1;
  }
  static std::string join(const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s;
  }

  EngineOptions opt_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::unique_ptr<RankWorkers> workers_;  // declared after ranks_: joined before ranks_ die
  model::ModelConfig cfg_;
  model::GenerationConfig gen_;
  std::vector<int32_t> eos_;
  std::vector<int> rank_blocks_;
  int blocks_ = 0;
  std::unique_ptr<sched::Scheduler> scheduler_;
  sched::StepPlan plan_;  // the one plan every rank reads each step
  std::span<const float> logits_;
  std::vector<float> row_;
  uint64_t next_id_ = 0;
  bool last_step_ran_ = false;
};

/// A CPU tensor-parallel engine of `tp_size` TpCpuRank threads (tests, CI).
template <class T = float, class KVT = T>
using TpCpuEngine = TpEngine<TpCpuRank<T, KVT>>;

}  // namespace pie::parallel
