#pragma once
/// \file cpu_runner.hpp
/// \brief CpuRunner<Model, Policy>: one rank of a model on the CPU backend — its weights (the
/// whole model, or its tensor-parallel shard), its paged KV cache (device pool + host swap pool,
/// laid out with the rank's KV heads) and the CpuForward context that runs Model::forward over
/// each StepPlan. The engine's executor drives one per rank.
///
/// KV storage is one host array per pool laid out [layer][block][2][kv_heads][block_size]
/// [head_dim], so layer l's PagedKV pool starts at l·num_blocks·block_elems and a block copy
/// is one memcpy per layer.
///
/// Asynchronous scheduling (launch_ahead/collect): the step runs on the rank's StepWorker thread, which
/// fills the plan's feed rows from the previous launched step's sampled ids (kept by the worker,
/// as a GPU keeps them on the device), runs the forward and samples every draw from its
/// SampleSpec with pie::Sampler, so the host can plan the next step meanwhile. Every rank
/// samples (each holds the whole vocabulary's logits), so every rank can feed its next step.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/cpu/cpu_forward.hpp"
#include "pie/engine/cpu/step_worker.hpp"
#include "pie/engine/sample_specs.hpp"
#include "pie/engine/sampler.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/engine/rank_group.hpp"
#include "pie/kv/kv_layout.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/fp8_weights.hpp"
#include "pie/model/load.hpp"
#include "pie/model/model_concept.hpp"
#include "pie/model/shard_loader.hpp"
#include "pie/model/tp_plan.hpp"
#include "pie/ops/cpu/parallel.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::engine::cpu {

/// \brief One CPU rank (see file comment). The executor builds, uses and destroys it on one thread.
template <class Model, class Policy>
class CpuRunner {
 public:
  using T = typename Policy::dtype;
  using KVT = typename Policy::kv_dtype;
  using Variant = typename Policy::attention_variant;
  using Forward = CpuForward<T, KVT, Variant>;
  static_assert(!Policy::backend_type::kIsCuda, "CpuRunner: the policy's backend must be backend::Cpu");
  /// Logits come back one row per sampled sequence (its n draws share it).
  static constexpr bool kLogitsPerDraw = false;
  static constexpr bool kSamplesOnDevice = false;
  /// launch_ahead()/collect(): steps run ahead of the host (asynchronous scheduling).
  static constexpr bool kRunsAhead = true;

  /// Loads the model (or rank `spec.rank`'s shard of it: only its slices of a checkpoint are
  /// read; dummy and embedded weights are generated whole and cut, so every TP size of one seed
  /// is the same model). `kv_budget` is this rank's KV bytes (0 → opt.kv_cache_bytes).
  CpuRunner(const EngineOptions& opt, RankSpec spec, size_t kv_budget = 0)
      : budget_(kv_budget ? kv_budget : opt.kv_cache_bytes), num_kv_blocks_(opt.num_kv_blocks) {
    const unsigned threads = opt.num_threads > 0 ? static_cast<unsigned>(opt.num_threads)
                                                 : std::max(1u, std::thread::hardware_concurrency());
    if (spec.rank == 0) ops::cpu::set_num_threads(static_cast<int>(threads));
    op_threads_ = spec.rank == 0 ? static_cast<int>(threads) : 0;
    if (spec.size() > 1) comm_ = spec.group->make_comm(spec.rank, nullptr);  // joins first: nothing fails before
    if (spec.size() > 1) on_failure_ = spec.group->abort;
    if constexpr (Policy::fp8_weights) {
      load_fp8(opt, spec, threads);
    } else if constexpr (model::uses_family_weights<Model, T>) {
      load_family(opt, spec, threads);
    } else {
      load_custom(opt, spec, threads);
    }
    const model::ModelConfig& c = shard_ ? shard_->local : global_;
    layout_ = kv::KVLayout{c.num_hidden_layers, c.num_key_value_heads, c.head_dim, Policy::block_size,
                           DTypeTraits<KVT>::dtype};
    block_elems_ = layout_.block_elems_per_layer();
    fwd_ = std::make_unique<Forward>(c, Variant{}, shard_ ? &*shard_ : nullptr, comm_.get());
  }

  using Weights = typename Model::template Weights<T>;

  const model::ModelConfig& global_config() const { return global_; }
  const model::GenerationConfig& generation_config() const { return gen_; }
  const kv::KVLayout& layout() const { return layout_; }
  /// The rank's shard (empty for a group of one).
  const std::optional<parallel::TpShard>& shard() const { return shard_; }

  /// KV blocks this rank's budget holds in its own layout (its KV heads only), or the fixed count.
  int max_kv_blocks() const {
    return num_kv_blocks_ > 0 ? num_kv_blocks_ : static_cast<int>(layout_.blocks_for_budget(budget_));
  }
  /// Host swap blocks this rank would like (the CPU has none unless EngineOptions asks).
  int wanted_host_blocks(const EngineOptions& opt) const { return opt.num_host_blocks; }

  /// Allocates the pools; every rank of a group gets the same counts (the group's minimum).
  void allocate_kv(int num_blocks, int num_host_blocks) {
    PIE_CHECK(num_blocks > 0, "the KV cache needs at least one block, got ", num_blocks);
    blocks_ = num_blocks;
    host_blocks_ = num_host_blocks;
    const size_t L = static_cast<size_t>(layout_.num_layers);
    device_ = HostBuffer<KVT>(block_elems_ * num_blocks * L);
    if (num_host_blocks > 0) host_ = HostBuffer<KVT>(block_elems_ * num_host_blocks * L);
    pools_.clear();
    for (size_t l = 0; l < L; ++l) pools_.push_back(device_.data() + l * num_blocks * block_elems_);
  }
  int num_blocks() const { return blocks_; }

  /// Block operations (swap in, swap out, copy-on-write, in the plan's order), then the forward.
  /// Returns logits [plan.logits_rows.size()][global vocab] (every rank has them), valid until
  /// the next call.
  std::span<const float> execute(const sched::StepPlan& plan) {
    const std::optional<double> gap = open_span();
    const std::span<const float> logits = run_plan(plan);
    close_span();
    last_gap_ = gap;
    return logits;
  }
  /// Seconds the rank sat idle between the previous step's work and the last completed step's
  /// (execute(), or a collected launch_ahead(): the feed, forward and draws on the worker), by
  /// the host clock — the CPU's counterpart of CudaRunner::last_idle_s; empty before a second
  /// step.
  std::optional<double> last_idle_s() const { return last_gap_; }

  /// Queues `plan` (copied) on the worker: block operations, feed rows from the previous
  /// launched step's draws, forward, then one draw per spec (sample order). Returns at once.
  void launch_ahead(const sched::StepPlan& plan, std::span<const SampleSpec> specs) {
    PIE_CHECK(blocks_ > 0, "CpuRunner: launch_ahead before allocate_kv");
    PIE_CHECK(static_cast<int32_t>(specs.size()) == plan.num_sampled_tokens(), "CpuRunner::launch_ahead: ", specs.size(),
              " specs for ", plan.num_sampled_tokens(), " draws");
    PIE_CHECK(plan.feed_rows.empty() || have_prev_, "CpuRunner::launch_ahead: feed rows but the previous step was not launched");
    if (!worker_) {
      worker_ = std::make_unique<StepWorker>(on_failure_);
      worker_->submit([this] {
        worker_thread_ = std::this_thread::get_id();
        ops::cpu::set_num_threads(op_threads_);  // OpenMP's count is per thread (0: its default)
      });
      worker_->wait();
    }
    PIE_CHECK(worker_->in_flight() < 2, "CpuRunner::launch_ahead: two steps are already in flight");
    Ahead& a = ahead_[launched_ & 1];
    const Ahead* prev = have_prev_ ? &ahead_[(launched_ & 1) ^ 1] : nullptr;
    ++launched_;
    a.plan = plan;  // reuses a's capacity: no allocation per step once grown
    a.specs.assign(specs.begin(), specs.end());
    have_prev_ = true;
    worker_->submit([this, &a, prev] { run_ahead(a, prev); });
  }
  /// Waits for the oldest launched step; its draws' ids in sample order (valid until the
  /// launch after next). Rethrows what the step threw.
  std::span<const int32_t> collect() {
    PIE_CHECK(worker_ && collected_ < launched_, "CpuRunner::collect: no step in flight");
    const Ahead& a = ahead_[collected_++ & 1];
    worker_->wait();
    last_gap_ = a.gap;
    return a.ids;
  }

 private:
  /// execute()'s work (also the worker's, under its own span).
  std::span<const float> run_plan(const sched::StepPlan& plan) {
    PIE_CHECK(blocks_ > 0, "CpuRunner: execute before allocate_kv");
    PIE_CHECK(plan.feed_rows.empty() || std::this_thread::get_id() == worker_thread_,
              "CpuRunner::execute: a plan with feed rows runs through launch_ahead()");
    if (std::this_thread::get_id() != worker_thread_) {
      PIE_CHECK(!worker_ || worker_->in_flight() == 0, "CpuRunner::execute while launched steps are in flight");
      have_prev_ = false;  // a later launch() has no launched step to feed from
    }
    for (const auto& c : plan.swap_in) copy(host_.data(), host_blocks_, c.src, device_.data(), blocks_, c.dst);
    for (const auto& c : plan.swap_out) copy(device_.data(), blocks_, c.src, host_.data(), host_blocks_, c.dst);
    for (const auto& c : plan.copy_blocks) copy(device_.data(), blocks_, c.src, device_.data(), blocks_, c.dst);
    logits_.resize(plan.logits_rows.size() * static_cast<size_t>(global_.vocab_size));
    if (plan.num_tokens() == 0) return logits_;
    fwd_->begin(plan, pools_, Policy::block_size, logits_.data());
    if constexpr (Policy::fp8_weights) Model::forward(*fwd_, *fp8_);
    else Model::forward(*fwd_, *w_);
    return logits_;
  }

  /// A launched step: the plan (its feed rows filled on the worker), its specs, its draws.
  struct Ahead {
    sched::StepPlan plan;
    std::vector<SampleSpec> specs;
    std::vector<int32_t> ids;
    std::optional<double> gap;  ///< the idle gap before its work (open_span)
  };
  /// Starts a step's span of work: the seconds since the previous span closed (none before the
  /// first). The sync path and the worker never run at once (execute() checks), so the spans
  /// need no lock: the worker's job hand-off orders them.
  std::optional<double> open_span() const {
    if (!span_closed_) return std::nullopt;
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - *span_closed_).count();
  }
  void close_span() { span_closed_ = std::chrono::steady_clock::now(); }

  /// On the worker: what a GPU stream runs for a launched step.
  void run_ahead(Ahead& a, const Ahead* prev) {
    a.gap = open_span();
    for (size_t k = 0; k < a.plan.feed_rows.size(); ++k) {
      const int32_t d = a.plan.feed_draws[k];
      PIE_CHECK(prev && d >= 0 && static_cast<size_t>(d) < prev->ids.size(), "CpuRunner: feed row ", k,
                " reads draw ", d, " of a step with ", prev ? prev->ids.size() : 0, " draws");
      a.plan.token_ids[a.plan.feed_rows[k]] = prev->ids[d];
    }
    const std::span<const float> logits = run_plan(a.plan);
    const size_t vocab = static_cast<size_t>(global_.vocab_size);
    a.ids.clear();
    size_t d = 0;
    for (size_t j = 0; j < a.plan.sample_seqs.size(); ++j)
      for (int k = 0; k < a.plan.draws_of(j); ++k, ++d) {
        const SampleSpec& sp = a.specs[d];
        sched::SamplingParams p;
        p.temperature = sp.temperature;
        p.top_p = sp.top_p;
        p.top_k = sp.top_k;
        p.min_p = sp.min_p;
        sched::SamplerInput in;
        in.params = &p;
        in.seed = sp.seed;
        in.seq_index = sp.seq_index;
        in.step = sp.step;
        row_.assign(logits.begin() + j * vocab, logits.begin() + (j + 1) * vocab);
        a.ids.push_back(Sampler::sample(row_, in).token);
      }
    close_span();
  }


  /// The Qwen3 family's weights: checkpoint, dummy, embedded or given; whole or one shard.
  void load_family(const EngineOptions& opt, RankSpec spec, unsigned threads) {
    model::LoadOptions lo;
    lo.threads = threads;
    lo.progress = spec.rank == 0;
    const auto fmt = model::parse_load_format(opt.load_format);
    if (const model::Weights<T>* given = opt.weights_as<model::Weights<T>>()) {
      Model::check_config(given->config);
      global_ = given->config;
      gen_ = opt.generation;
      if (spec.size() == 1) {
        w_ = std::static_pointer_cast<const model::Weights<T>>(opt.weights);  // shared, not copied
      } else {
        shard_ = parallel::make_tp_shard(global_, spec.size(), spec.rank);
        w_ = std::make_shared<const model::Weights<T>>(parallel::shard_weights<T>(*given, *shard_, threads));
      }
    } else if (spec.size() == 1) {
      auto loaded = model::load_model<T>(opt.model_dir, fmt, opt.seed, lo);
      Model::check_config(loaded.weights.config);
      global_ = loaded.weights.config;
      gen_ = loaded.generation;
      w_ = std::make_shared<const model::Weights<T>>(std::move(loaded.weights));
    } else if (!opt.model_dir.empty() && fmt != model::LoadFormat::Dummy) {
      global_ = model::load_model_config(opt.model_dir);
      Model::check_config(global_);
      gen_ = model::load_generation_config(opt.model_dir, global_);
      shard_ = parallel::make_tp_shard(global_, spec.size(), spec.rank);
      lo.progress = false;
      w_ = std::make_shared<const model::Weights<T>>(parallel::load_shard_weights<T>(opt.model_dir, *shard_, lo));
    } else {
      auto full = model::load_model<T>(opt.model_dir, fmt, opt.seed, lo);
      Model::check_config(full.weights.config);
      global_ = full.weights.config;
      gen_ = full.generation;
      shard_ = parallel::make_tp_shard(global_, spec.size(), spec.rank);
      w_ = std::make_shared<const model::Weights<T>>(parallel::shard_weights<T>(full.weights, *shard_, threads));
    }
  }

  /// fp8 projection weights (the Qwen3 family, one rank): a published fp8 checkpoint as it is,
  /// anything else quantized per output channel at load (model/fp8_weights.hpp).
  void load_fp8(const EngineOptions& opt, RankSpec spec, unsigned threads) {
    static_assert(model::uses_family_weights<Model, T>, "CpuRunner: fp8 weights are the Qwen3 family's");
    PIE_CHECK(spec.size() == 1, "--quantization fp8 runs on one rank (tensor-parallel fp8 shards are not written yet)");
    if (const model::Weights<T>* given = opt.weights_as<model::Weights<T>>()) {
      Model::check_config(given->config);
      global_ = given->config;
      gen_ = opt.generation;
      fp8_ = std::make_shared<const model::Fp8Weights<T>>(
          model::quantize_weights<T>(std::static_pointer_cast<const model::Weights<T>>(opt.weights), threads));
      return;
    }
    model::LoadOptions lo;
    lo.threads = threads;
    lo.progress = spec.rank == 0;
    auto m = model::load_fp8_model<T>(opt.model_dir, model::parse_load_format(opt.load_format), opt.seed, lo);
    Model::check_config(m.weights.config);
    global_ = m.weights.config;
    gen_ = m.generation;
    fp8_ = std::make_shared<const model::Fp8Weights<T>>(std::move(m.weights));
  }

  /// A user's model (model_concept.hpp): its own config and checkpoint reader; under tensor
  /// parallelism (a model that declares shard()) every rank reads the whole model and keeps its
  /// shard, so every TP size of one checkpoint or seed is the same model.
  void load_custom(const EngineOptions& opt, RankSpec spec, unsigned threads) {
    PIE_CHECK(spec.size() == 1 || (model::has_tp_shard<Model, T>), "model ", Model::kName,
              " declares no tensor-parallel sharding (run it on one rank)");
    std::shared_ptr<const Weights> full;
    if (const Weights* given = opt.weights_as<Weights>()) {
      global_ = given->config;
      Model::check_config(global_);
      gen_ = opt.generation;
      full = std::static_pointer_cast<const Weights>(opt.weights);
    } else {
      model::LoadOptions lo;
      lo.threads = threads;
      lo.progress = false;
      auto m = model::load_user_model<Model, T>(opt.model_dir, model::parse_load_format(opt.load_format), lo, opt.seed);
      global_ = m.config;
      gen_ = m.generation;
      full = std::make_shared<const Weights>(std::move(m.weights));
    }
    if constexpr (model::has_tp_shard<Model, T>) {
      if (spec.size() > 1) {
        shard_ = parallel::make_tp_shard(global_, spec.size(), spec.rank);
        w_ = std::make_shared<const Weights>(Model::template shard<T>(*full, *shard_));
        return;
      }
    }
    w_ = std::move(full);
  }

  /// Copies block `src` of pool a (a_blocks blocks per layer) to block `dst` of pool b, every layer.
  void copy(const KVT* a, int a_blocks, int32_t src, KVT* b, int b_blocks, int32_t dst) {
    PIE_CHECK(src >= 0 && src < a_blocks && dst >= 0 && dst < b_blocks, "block copy ", src, " → ", dst,
              " out of range (", a_blocks, " / ", b_blocks, " blocks)");
    for (int l = 0; l < layout_.num_layers; ++l)
      std::memcpy(b + (static_cast<size_t>(l) * b_blocks + dst) * block_elems_,
                  a + (static_cast<size_t>(l) * a_blocks + src) * block_elems_, block_elems_ * sizeof(KVT));
  }

  size_t budget_;
  int num_kv_blocks_;
  std::unique_ptr<parallel::Communicator> comm_;
  model::ModelConfig global_;
  model::GenerationConfig gen_;
  std::optional<parallel::TpShard> shard_;
  std::shared_ptr<const Weights> w_;  // stable address for the forward
  std::shared_ptr<const model::Fp8Weights<T>> fp8_;  // instead of w_ with fp8 weights
  std::unique_ptr<Forward> fwd_;
  kv::KVLayout layout_{};
  size_t block_elems_ = 0;
  int blocks_ = 0, host_blocks_ = 0;
  HostBuffer<KVT> device_, host_;
  std::vector<KVT*> pools_;
  std::vector<float> logits_;
  // Asynchronous scheduling (launch_ahead/collect).
  std::function<void()> on_failure_;  // the group's abort (tensor parallel)
  Ahead ahead_[2];                    // the step in flight and the one before (its ids feed)
  uint64_t launched_ = 0, collected_ = 0;
  std::optional<std::chrono::steady_clock::time_point> span_closed_;  // the last step's work ended
  std::optional<double> last_gap_;                                   // last_idle_s
  bool have_prev_ = false;            // the last step run was launched: its ids can feed
  std::vector<float> row_;            // the worker's sampling scratch
  std::thread::id worker_thread_{};
  int op_threads_ = 0;
  std::unique_ptr<StepWorker> worker_;  // last: joined before anything it uses is destroyed
};

}  // namespace pie::engine::cpu
