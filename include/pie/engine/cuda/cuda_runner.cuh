#pragma once
/// \file cuda_runner.cuh
/// \brief CudaRunner<Model, Policy>: one rank of a model on one GPU — the whole model, or its
/// tensor-parallel shard; the same code for both, TP=1 being the group of one. The engine's
/// executor drives one per rank (engine/executor.hpp); including this header makes
/// Engine<Model, CudaPolicy> use it (RunnerOf's CUDA specialisation).
///
/// Per step: the plan and sample specs go to the device in ONE pinned async copy
/// (StepBuffers); the plan's block operations run (KVCache); Model::forward runs over a
/// CudaForward context covering every scheduled token; logits are computed only for the rows
/// that sample; rank 0 samples on the device and only the sampled ids come back. Pure decode
/// steps replay a CUDA graph of their batch bucket — collectives included under TP (NCCL ≥ 2.9
/// records them as graph nodes; every rank captures the same buckets in lockstep and replays the
/// same bucket each step, so the graphs' collectives pair up). Unless PIE_DECODE_GRAPH_CONTEXTS=0 a
/// bucket has a graph per context class (engine/decode_context_classes.hpp), each with the decode
/// attention planned for its bound, and a step replays the class of its longest context (the
/// same on every rank: one plan). A step with prompt_logprobs rows
/// (always a prefill, so eager) then scores those rows on the device — lm_head over chunks of
/// rows, log_softmax, rank and top-20 (ops/cuda/prompt_logprobs.cuh) — and copies back one
/// small record per row (prompt_logprob_rows()); other steps do none of it.
///
/// Asynchronous scheduling (launch_ahead/collect, one rank): the step is queued and the call
/// returns; its feed rows take the previous step's sampled ids from the device buffer the
/// sampler wrote (ops/cuda/feed_tokens.cuh, a kernel before the forward or graph replay); its
/// ids come back into one of two pinned buffers with an event, so the host waits for step N's
/// ids only after step N+1 is queued behind it. Under TP only rank 0 holds the sampled ids, so
/// the other ranks could not feed: runs_ahead() is false there (a broadcast is not written).
///
/// Construction follows vLLM: join the group (NCCL init blocks until every rank calls it and
/// cannot be aborted, so nothing that may fail runs before it) → weights resident → activation
/// peak profiled at max_num_batched_tokens → KV blocks from gpu_memory_utilization
/// (memory_plan.cuh; the executor takes the group's minimum) → cache allocated → graphs.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/communicator.hpp"
#include "pie/core/env_switch.hpp"
#include "pie/core/error.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/cuda/cuda_forward.cuh"
#include "pie/engine/cuda/cuda_graphs.cuh"
#include "pie/engine/decode_context_classes.hpp"
#include "pie/ops/cuda/feed_tokens.cuh"
#include "pie/engine/cuda/device_copy.cuh"
#include "pie/engine/cuda/device_fp8_weights.cuh"
#include "pie/engine/cuda/device_weights.cuh"
#include "pie/engine/cuda/kv_cache.cuh"
#include "pie/engine/cuda/logits_gemm.cuh"
#include "pie/engine/cuda/memory_plan.cuh"
#include "pie/engine/cuda/step_buffers.cuh"
#include "pie/engine/cuda/step_gap_timer.cuh"
#include "pie/engine/cuda/step_profiler.cuh"
#include "pie/engine/device_draws.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/engine/model_runner.hpp"
#include "pie/engine/nano_split.hpp"
#include "pie/engine/rank_group.hpp"
#include "pie/engine/sample_specs.hpp"
#include "pie/kv/kv_layout.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/fp8_weights.hpp"
#include "pie/model/kv_scale_loader.hpp"
#include "pie/model/load.hpp"
#include "pie/model/model_concept.hpp"
#include "pie/model/shard_loader.hpp"
#include "pie/model/tp_plan.hpp"
#include "pie/ops/cpu/rope.hpp"
#include "pie/ops/cuda/sampling.cuh"
#include "pie/ops/cuda/token_bitmask.cuh"
#include "pie/sched/logits_processor.hpp"
#include "pie/sched/prompt_logprob_row.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::engine::cuda {

/// \brief Counters of what the runner did (bench and tests read them).
struct RunnerStats {
  int64_t steps = 0;
  int64_t graph_steps = 0;
  int64_t ctx_graph_steps = 0;  ///< of them, replays of a context class below max_model_len
  int64_t eager_steps = 0;
  double graph_capture_s = 0;
  double profile_s = 0;
  int64_t masked_steps = 0;  ///< steps with token-masked draws (execute_sample_masked)
  int64_t full_sample_steps = 0;  ///< steps drawn by the full device sampler (execute_sample_full)
  double mask_fill_s = 0;    ///< host time filling their masks (overlapping the forward)
  int64_t nano_steps = 0;    ///< steps run as two overlapped nano-batches (graph replays included)
  int64_t nano_graphs = 0;   ///< split decode graphs captured
};

/// \brief One GPU rank (see file comment). The executor builds, uses and destroys it on one thread.
template <class Model, class Policy>
class CudaRunner {
 public:
  using T = typename Policy::dtype;
  using KV = typename Policy::kv_dtype;
  using Variant = typename Policy::attention_variant;
  using Forward = CudaForward<T, KV, Variant>;
  using HostWeights = typename Model::template Weights<T>;
  /// The Qwen3 family's weights have the engine's own loaders, dummy fill and shards.
  static constexpr bool kFamily = model::uses_family_weights<Model, T>;
  using Weights = std::conditional_t<Policy::fp8_weights, DeviceFp8Weights<T>,
                                     std::conditional_t<kFamily, DeviceWeights<T>, DeviceCopy<HostWeights, T>>>;
  static_assert(!Policy::fp8_weights || kFamily, "CudaRunner: fp8 weights are the Qwen3 family's");
  static_assert(Policy::backend_type::kIsCuda, "CudaRunner: the policy's backend must be backend::Cuda");
  /// One logits row per draw (StepBuffers repeats a row for an n > 1 prefill).
  static constexpr bool kLogitsPerDraw = true;
  static constexpr bool kSamplesOnDevice = true;
  static constexpr bool kSamplesMasked = true;  ///< has execute_sample_masked (token bitmasks)
  /// has execute_sample_full (penalties, logit_bias, min_tokens, logprobs on the device); taken
  /// while samples_full() (see there)
  static constexpr bool kSamplesFull = true;
  /// launch_ahead()/collect() (asynchronous scheduling), on one rank: see runs_ahead().
  static constexpr bool kRunsAhead = true;
  /// Fills the token bitmasks of a step's draws on the host: masks [draws][words], flags [draws]
  /// (1: apply that row's mask; 0: the row is unconstrained).
  using MaskFill = std::function<void(std::span<int32_t> masks, std::span<int32_t> flags)>;

  CudaRunner(const EngineOptions& opt, RankSpec spec, size_t /*kv_budget: CPU ranks only*/ = 0)
      : opt_(opt), rank_(spec.rank), tp_(spec.size()), log_(opt.log && spec.rank == 0) {
    PIE_CUDA_CHECK(cudaSetDevice(spec.group ? spec.group->device_of(spec.rank) : 0));
    PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (tp_ > 1) {
      // NCCL: the communicator enqueues on this stream, so collectives are ordered with the
      // kernels and captured into the same graphs.
      comm_ = spec.group->make_comm(spec.rank, static_cast<void*>(stream_));
      PIE_CHECK(!opt.batch_invariant,
                "--batch-invariant is not available with --tensor-parallel-size > 1 on the GPU: NCCL's all-reduce "
                "splits its work by message size, so a row's sum depends on the batch");
    }
    load_weights();
    const auto& c = wconfig();
    PIE_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, "CudaRunner: query heads (", c.num_attention_heads,
              ") must be a multiple of KV heads (", c.num_key_value_heads, ")");
    max_tokens_ = std::max(opt.sched.max_num_batched_tokens, opt.sched.max_num_seqs);
    max_model_len_ = static_cast<int>(std::min<int64_t>(opt.sched.max_model_len, global_.max_position_embeddings));
    layout_ = kv::KVLayout{c.num_hidden_layers, c.num_key_value_heads, c.head_dim, Policy::block_size,
                           DTypeTraits<KV>::dtype};
    DeviceMemory m0 = DeviceMemory::query();
    const size_t baseline = m0.used() > w_.bytes() ? m0.used() - w_.bytes() : 0;
    allocate_workspaces();
    auto t0 = std::chrono::steady_clock::now();
    const size_t activation = profile();
    stats_.profile_s = seconds_since(t0);
    DeviceMemory m1 = DeviceMemory::query();
    // Graphs take a little memory of their own; keep 1% of the card (at least 256 MiB) back.
    size_t reserve = std::max<size_t>(size_t{256} << 20, m1.total / 100);
    if (opt.enforce_eager) reserve = size_t{64} << 20;
    int64_t fixed = opt.num_kv_blocks;
    if (fixed <= 0 && opt.kv_cache_memory_bytes > 0) {
      fixed = static_cast<int64_t>(layout_.blocks_for_budget(opt.kv_cache_memory_bytes));
      PIE_CHECK(fixed > 0, "--kv-cache-memory-bytes ", opt.kv_cache_memory_bytes, " holds no KV block of ",
                layout_.bytes_per_block(), " bytes");
    }
    plan_ = plan_kv_cache(layout_, m1.total, baseline, w_.bytes(), activation, m1.used(), opt.gpu_memory_utilization,
                          max_model_len_, opt.swap_space_gib, reserve, fixed);
  }
  CudaRunner(const CudaRunner&) = delete;
  CudaRunner& operator=(const CudaRunner&) = delete;
  ~CudaRunner() {
    if (stream_) cudaStreamSynchronize(stream_);  // a step launched ahead may still be running
    if (log_ && rank_ == 0 && stats_.masked_steps > 0)
      std::fprintf(stderr, "pie: token masks: %lld steps, host fill %.3f ms per step (overlapping the forward)\n",
                   static_cast<long long>(stats_.masked_steps), 1e3 * stats_.mask_fill_s / stats_.masked_steps);
    graphs_.clear();
    ctx_graphs_.clear();
    split_graphs_.clear();
    if (side_) cudaStreamSynchronize(side_);
    for (auto& h : nano_) h.fwd.reset();
    for (cudaEvent_t e : {fork_, join_, stagger_})
      if (e) cudaEventDestroy(e);
    for (cudaEvent_t e : pipe_events_) cudaEventDestroy(e);
    if (side_) cudaStreamDestroy(side_);
    fwd_.reset();
    comm_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  const model::ModelConfig& global_config() const { return global_; }
  /// The config this rank's forward runs with (its heads, intermediate and vocab slice).
  const model::ModelConfig& config() const { return wconfig(); }
  const model::GenerationConfig& generation_config() const { return gen_; }
  const kv::KVLayout& layout() const { return layout_; }
  const MemoryPlan& memory_plan() const { return plan_; }
  const RunnerStats& stats() const { return stats_; }
  const std::optional<parallel::TpShard>& shard() const { return shard_; }
  std::vector<int> graph_batch_sizes() const { return captured_; }
  /// The decode graphs' context classes (empty under PIE_DECODE_GRAPH_CONTEXTS=0, --enforce-eager
  /// or --batch-invariant).
  const DecodeContextClasses& graph_context_classes() const { return ctx_classes_; }
  cudaStream_t stream() const { return stream_; }
  KVCache<KV>& kv_cache() { return *kv_; }
  /// Per-op event timing of the following steps (eager while on); see step_profiler.cuh.
  StepProfiler& profiler() { return prof_; }
  /// The forward context (tests: its MoE routing observer).
  Forward& forward() { return *fwd_; }

  int max_kv_blocks() const { return static_cast<int>(plan_.num_blocks); }
  int wanted_host_blocks(const EngineOptions&) const { return static_cast<int>(plan_.num_swap_blocks); }
  int num_blocks() const { return kv_ ? static_cast<int>(kv_->num_blocks()) : 0; }

  /// Allocates the pools (the group's common counts) and captures the decode graphs; under TP
  /// the warm-up and capture run collectives, so every rank must be in here at once.
  void allocate_kv(int num_blocks, int num_host_blocks) {
    plan_.num_blocks = num_blocks;
    plan_.num_swap_blocks = num_host_blocks;
    plan_.kv_token_capacity = int64_t{num_blocks} * Policy::block_size;
    const int64_t per_seq = (max_model_len_ + Policy::block_size - 1) / Policy::block_size;
    plan_.max_concurrency = per_seq ? double(num_blocks) / double(per_seq) : 0;
    kv_ = std::make_unique<KVCache<KV>>(layout_, num_blocks, num_host_blocks);
    if (log_) std::fprintf(stderr, "%s\n", plan_.log_line(Policy::block_size).c_str());
    if (log_ && opt_.batch_invariant)
      std::fprintf(stderr, "pie: batch-invariant kernels: one GEMM algorithm per shape, decode rows through the "
                           "prefill attention kernel\n");
    if (log_) {
      const FusionSwitches f = FusionSwitches::from_env();
      if (f.rope_kv) std::fprintf(stderr, "pie: PIE_FUSED_ROPE_KV=1: the q/k RoPE kernel writes K/V into the cache\n");
      if (f.final_norm) std::fprintf(stderr, "pie: PIE_FUSED_FINAL_NORM=1: batch-1 final norm inside lm_head\n");
      if (f.swiglu) std::fprintf(stderr, "pie: PIE_FUSED_SWIGLU=1: batch-1 SwiGLU inside the down projection's GEMV\n");
      if (f.rope_attn)
        std::fprintf(stderr, "pie: q/k norm + RoPE and the KV write inside decode attention%s\n",
                     f.rope_attn_small_grids_only ? " at steps of small decode grids (PIE_FUSED_ROPE_ATTN=0: never)"
                                                  : " (PIE_FUSED_ROPE_ATTN=1)");
    }
    if (log_ && nano_on()) {
      if (nano_opt_.min_rows > 0)
        std::fprintf(stderr, "pie: nano-batch overlap: steps of >= %d decode rows run as 2 nano-batches (stagger %d ops, "
                     "GEMM SM target %d, layer pipeline %s)\n", nano_opt_.min_rows, nano_stagger_, nano_gemm_sms_,
                     nano_pipeline_ ? "on" : "off");
      else
        std::fprintf(stderr, "pie: nano-batch overlap: steps run as 2 nano-batches where the cost model predicts a "
                     "gain (stagger %d ops, GEMM SM target %d, layer pipeline %s)\n", nano_stagger_, nano_gemm_sms_,
                     nano_pipeline_ ? "on" : "off");
    }
    if (!opt_.enforce_eager) capture_graphs();
    fwd_->freeze();
    for (auto& h : nano_)
      if (h.fwd) h.fwd->freeze();
    set_kv_scales();  // after the capture: its warm-up forwards must not calculate them
  }
  /// Whether steps may run as two overlapped nano-batches (EngineOptions::nano_batches).
  bool nano_on() const { return nano_[0].fwd != nullptr; }

  /// Runs one step; rank 0 returns the sampled ids (one per spec, in sample order; valid until
  /// the next call), the other ranks nothing. A plan of block operations only runs them.
  std::span<const int32_t> execute_sample(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs) {
    launch(plan, specs, /*want_logits=*/false);
    score_prompt_rows(plan);
    complete_step();
    if (rank_ != 0) return {};
    return {ids_host_.data(), static_cast<size_t>(last_samples_)};
  }
  /// execute_sample for steps with token-masked draws (structured outputs): the step's forward is
  /// launched first and `fill` computes the masks on the host while the device runs it; then the
  /// masks go up, the bitmask kernel edits the flagged rows' logits and the sampler draws again
  /// over them (its first, in-graph draw over the unmasked logits is discarded: the sampler only
  /// reads the logits, and a second draw of the same rows costs microseconds, against a second
  /// set of captured graphs). Rank 0 only calls `fill`.
  std::span<const int32_t> execute_sample_masked(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs,
                                                 const MaskFill& fill) {
    launch(plan, specs, /*want_logits=*/false);
    const int n = last_samples_;
    if (rank_ == 0 && n > 0) {
      const int vocab = global_.vocab_size, words = sched::bitmask_words(vocab);
      const size_t cap = static_cast<size_t>(max_samples()) * words;
      if (mask_host_.size() < cap) {
        mask_host_ = PinnedBuffer<int32_t>(cap);
        mask_dev_ = DeviceBuffer<int32_t>(cap);
        flags_host_ = PinnedBuffer<int32_t>(max_samples());
        flags_dev_ = DeviceBuffer<int32_t>(max_samples());
      }
      const auto t0 = std::chrono::steady_clock::now();
      fill(std::span<int32_t>(mask_host_.data(), static_cast<size_t>(n) * words),
           std::span<int32_t>(flags_host_.data(), static_cast<size_t>(n)));
      stats_.mask_fill_s += seconds_since(t0);
      PIE_CUDA_CHECK(cudaMemcpyAsync(mask_dev_.data(), mask_host_.data(), sizeof(int32_t) * n * words,
                                     cudaMemcpyHostToDevice, stream_));
      PIE_CUDA_CHECK(cudaMemcpyAsync(flags_dev_.data(), flags_host_.data(), sizeof(int32_t) * n,
                                     cudaMemcpyHostToDevice, stream_));
      ops::cuda::apply_token_bitmask(fwd_->logits(), n, vocab, mask_dev_.data(), flags_dev_.data(), stream_);
      ops::cuda::SamplingInputs in;
      in.rows = step_.sampling_rows();
      ops::cuda::SamplingOutputs out;
      out.tokens = ids_.data();
      ops::cuda::sample(fwd_->logits(), n, vocab, in, out, stream_);
      PIE_CUDA_CHECK(cudaMemcpyAsync(ids_host_.data(), ids_.data(), sizeof(int32_t) * n, cudaMemcpyDeviceToHost,
                                     stream_));
      ++stats_.masked_steps;
    }
    score_prompt_rows(plan);  // after the masked draw: it reuses the logits buffer
    complete_step();
    if (rank_ != 0) return {};
    return {ids_host_.data(), static_cast<size_t>(n)};
  }
  /// execute_sample for steps whose draws need the sampler's full inputs (penalties, logit_bias,
  /// min_tokens, logprobs; `inputs`: one per draw, sample order, rank 0 reads them): the step
  /// runs as usual (graph replay included), then rank 0 draws every row again with
  /// ops::cuda::sample over the prompt/output tokens and bias pairs of SamplingBatchHost — the
  /// CPU Sampler's order and logprobs (tests/cuda/test_sampling.cu checks the kernels against
  /// it) — keeping each draw's randomness key (specs' step), so rows without such parameters draw
  /// the tokens they draw in any step. Only the ids, logprobs and top alternatives come back.
  /// Whether the engine sends full-input draws here (execute_sample_full) rather than to the host
  /// sampler: on unless PIE_FULL_DEVICE_SAMPLING=0. On the H200 (2026-12-05) the full device path
  /// gave the host sampler's greedy tokens for 20/20 sequences with penalties, bias, min_tokens,
  /// logprobs and n = 2, logprobs within 1e-6 (pie_gpu_test_device_sampling).
  bool samples_full() const { return samples_full_; }
  engine::DeviceDraws execute_sample_full(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs,
                                          std::span<const sched::SamplerInput> inputs) {
    launch(plan, specs, /*want_logits=*/false);
    const int n = last_samples_;
    int max_top = 0;
    if (rank_ == 0 && n > 0) {
      PIE_CHECK(static_cast<int>(inputs.size()) == n && static_cast<int>(specs.size()) == n,
                "CudaRunner::execute_sample_full: ", inputs.size(), " inputs and ", specs.size(), " specs for ", n,
                " draws");
      const int vocab = global_.vocab_size;
      ops::cuda::SamplingBatchHost batch;
      for (int i = 0; i < n; ++i) {
        batch.add(inputs[i], vocab);
        batch.rows.back().step = specs[i].step;  // the device sampler's key (the same in sync steps)
      }
      max_top = batch.max_top;
      const size_t tops = static_cast<size_t>(n) * std::max(max_top, 1);
      if (full_lp_host_.size() < static_cast<size_t>(n) || full_top_ids_host_.size() < tops) {
        const size_t rows = std::max<size_t>(static_cast<size_t>(max_samples()), static_cast<size_t>(n));
        const size_t cap = rows * static_cast<size_t>(sched::kMaxLogprobs);
        full_lp_host_ = PinnedBuffer<float>(rows);
        full_lp_dev_ = DeviceBuffer<float>(rows);
        full_top_ids_host_ = PinnedBuffer<int32_t>(cap);
        full_top_ids_dev_ = DeviceBuffer<int32_t>(cap);
        full_top_lp_host_ = PinnedBuffer<float>(cap);
        full_top_lp_dev_ = DeviceBuffer<float>(cap);
      }
      ops::cuda::SamplingInputs in;
      in.rows = upload_full(full_rows_dev_, batch.rows);
      in.prompt_tokens = upload_full(full_prompt_dev_, batch.prompt_tokens);
      in.output_tokens = upload_full(full_output_dev_, batch.output_tokens);
      in.bias_tokens = upload_full(full_bias_tok_dev_, batch.bias_tokens);
      in.bias_values = upload_full(full_bias_val_dev_, batch.bias_values);
      ops::cuda::SamplingOutputs out;
      out.tokens = ids_.data();
      out.logprobs = full_lp_dev_.data();
      out.top_ids = full_top_ids_dev_.data();
      out.top_logprobs = full_top_lp_dev_.data();
      out.max_top = max_top;
      ops::cuda::sample(fwd_->logits(), n, vocab, in, out, stream_);
      PIE_CUDA_CHECK(cudaMemcpyAsync(ids_host_.data(), ids_.data(), sizeof(int32_t) * n, cudaMemcpyDeviceToHost,
                                     stream_));
      PIE_CUDA_CHECK(cudaMemcpyAsync(full_lp_host_.data(), full_lp_dev_.data(), sizeof(float) * n,
                                     cudaMemcpyDeviceToHost, stream_));
      if (max_top > 0) {
        PIE_CUDA_CHECK(cudaMemcpyAsync(full_top_ids_host_.data(), full_top_ids_dev_.data(), sizeof(int32_t) * tops,
                                       cudaMemcpyDeviceToHost, stream_));
        PIE_CUDA_CHECK(cudaMemcpyAsync(full_top_lp_host_.data(), full_top_lp_dev_.data(), sizeof(float) * tops,
                                       cudaMemcpyDeviceToHost, stream_));
      }
      ++stats_.full_sample_steps;
    }
    score_prompt_rows(plan);  // after the full draw: it reuses the logits buffer
    complete_step();
    if (rank_ != 0) return {};
    engine::DeviceDraws dd;
    dd.ids = {ids_host_.data(), static_cast<size_t>(n)};
    dd.logprobs = {full_lp_host_.data(), n > 0 ? static_cast<size_t>(n) : 0};
    dd.max_top = max_top;
    if (max_top > 0) {
      dd.top_ids = {full_top_ids_host_.data(), static_cast<size_t>(n) * max_top};
      dd.top_logprobs = {full_top_lp_host_.data(), static_cast<size_t>(n) * max_top};
    }
    return dd;
  }
  /// Runs one step; rank 0 returns the float logits of every draw ([draws][vocab], host). The
  /// device sampler still runs; its ids are in last_ids().
  std::span<const float> execute_logits(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs) {
    launch(plan, specs, /*want_logits=*/true);
    score_prompt_rows(plan);  // after the logits copy (stream order): it reuses the logits buffer
    complete_step();
    if (rank_ != 0) return {};
    return {logits_host_.data(), static_cast<size_t>(last_samples_) * global_.vocab_size};
  }
  /// execute_logits with greedy specs (tests).
  std::span<const float> execute(const sched::StepPlan& plan) {
    specs_.assign(plan.num_sampled_tokens(), SampleSpec{});
    return execute_logits(plan, specs_);
  }
  std::span<const int32_t> last_ids() { return {ids_host_.data(), static_cast<size_t>(last_samples_)}; }

  /// Whether launch_ahead() works here: one rank (see the file comment).
  bool runs_ahead() const { return tp_ == 1; }
  /// Queues a step (block operations, feed rows from the previous launched step's device ids,
  /// forward or graph replay, sampling, the ids' copy back) and returns; at most two in flight.
  void launch_ahead(const sched::StepPlan& plan, std::span<const SampleSpec> specs) {
    PIE_CHECK(kv_, "CudaRunner: launch_ahead before allocate_kv");
    PIE_CHECK(runs_ahead(), "CudaRunner: asynchronous scheduling runs on one rank (tensor parallel size ", tp_, ")");
    PIE_CHECK(launched_ - collected_ < 2, "CudaRunner::launch_ahead: two steps are already in flight");
    PIE_CHECK(plan.feed_rows.empty() || launched_ > 0, "CudaRunner::launch_ahead: feed rows but no launched step");
    const int k = static_cast<int>(launched_ & 1);
    if (!ahead_done_[k]) {
      for (int i = 0; i < 2; ++i) {
        cudaEvent_t e = nullptr;
        PIE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        ahead_done_[i] = std::shared_ptr<CUevent_st>(e, [](cudaEvent_t x) { cudaEventDestroy(x); });
        ahead_ids_[i] = PinnedBuffer<int32_t>(max_samples());
      }
    }
    specs_.assign(specs.begin(), specs.end());
    ahead_step_[k] = gaps_.begun();
    gaps_.begin(stream_);
    if (plan.empty()) {
      kv_->apply(plan, stream_);
      last_samples_ = 0;
    } else {
      run_step(plan, specs_, *kv_, /*allow_graph=*/true, /*want_logits=*/false, ahead_ids_[k].data());
    }
    gaps_.end(stream_);
    ahead_n_[k] = last_samples_;
    PIE_CUDA_CHECK(cudaEventRecord(ahead_done_[k].get(), stream_));
    ++launched_;
  }
  /// Waits for the oldest launched step; its ids in sample order (valid until the launch after
  /// next).
  std::span<const int32_t> collect() {
    PIE_CHECK(collected_ < launched_, "CudaRunner::collect: no step in flight");
    const int k = static_cast<int>(collected_++ & 1);
    PIE_CUDA_CHECK(cudaEventSynchronize(ahead_done_[k].get()));
    last_completed_ = ahead_step_[k];
    return {ahead_ids_[k].data(), static_cast<size_t>(ahead_n_[k])};
  }
  /// Seconds the GPU sat idle between the previous step's stream work and the last completed
  /// step's (executed, or collected), measured with timing events (StepGapTimer); empty before
  /// a second step. Read from the events on the call (only an observer asks), so valid until the
  /// launch after next, as collect()'s ids.
  std::optional<double> last_idle_s() const {
    return last_completed_ ? gaps_.gap_before(*last_completed_) : std::nullopt;
  }
  /// Rank 0: the last step's prompt_logprobs rows, one per StepPlan::prompt_logprob_tokens entry
  /// (empty on other ranks and for steps without them; valid until the next step).
  std::span<const sched::PromptLogprobRow> prompt_logprob_rows() const {
    return {prompt_host_.data(), static_cast<size_t>(prompt_rows_)};
  }

 private:
  /// The end of a synchronous step: its end event, the wait, the profiler's spans.
  void complete_step() {
    gaps_.end(stream_);
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    prof_.collect();
    last_completed_ = gaps_.begun() - 1;
  }
  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  int max_samples() const { return opt_.sched.max_num_seqs + 128; }  // n > 1 prefills draw several per row
  /// Copies `h` into `d` (grown to fit; eager steps only: the buffer may move), stream-ordered;
  /// null for an empty `h`. Pageable source: the copy has read it when this returns.
  template <class U>
  const U* upload_full(DeviceBuffer<U>& d, const std::vector<U>& h) {
    if (h.empty()) return nullptr;
    if (d.size() < h.size()) d = DeviceBuffer<U>(std::max(h.size(), 2 * d.size()));
    PIE_CUDA_CHECK(cudaMemcpyAsync(d.data(), h.data(), sizeof(U) * h.size(), cudaMemcpyHostToDevice, stream_));
    return d.data();
  }

  // ---- setup ------------------------------------------------------------------------------------
  const model::ModelConfig& wconfig() const {
    if constexpr (kFamily) return w_.config;
    else return w_.views.config;
  }
  const auto& views() const {
    if constexpr (kFamily) return w_;
    else return w_.views;
  }

  void load_weights() {
    if constexpr (Policy::fp8_weights) load_fp8();
    else if constexpr (kFamily) load_family();
    else load_custom();
  }

  /// fp8 projection weights (model/fp8_weights.hpp), one GPU: a published fp8 checkpoint as it
  /// is, any other quantized per output channel at load; `--load-format dummy` filled on the
  /// device (128×128 blocks when config.json has an fp8 quantization_config, else per channel).
  void load_fp8() {
    PIE_CHECK(tp_ == 1, "--quantization fp8 runs on one GPU (tensor-parallel fp8 shards are not written yet)");
    PIE_CHECK(!opt_.batch_invariant, "--batch-invariant is not available with fp8 weights yet (cuBLASLt's FP8 "
              "algorithm is chosen per M)");
    const auto fmt = model::parse_load_format(opt_.load_format);
    model::LoadOptions lo;
    lo.progress = rank_ == 0;
    if (opt_.weights_as<model::Weights<T>>() != nullptr) {
      const auto given = std::static_pointer_cast<const model::Weights<T>>(opt_.weights);
      global_ = given->config;
      Model::check_config(global_);
      gen_ = opt_.generation;
      w_ = DeviceFp8Weights<T>::upload(model::quantize_weights<T>(given));
      return;
    }
    if (fmt == model::LoadFormat::Dummy && !opt_.model_dir.empty()) {
      global_ = model::load_model_config(opt_.model_dir);
      Model::check_config(global_);
      gen_ = model::load_generation_config(opt_.model_dir, global_);
      const bool block = model::checkpoint_quantization(opt_.model_dir) == model::CheckpointQuant::Fp8Block;
      w_ = DeviceFp8Weights<T>::dummy(global_, opt_.seed, block);
      return;
    }
    auto m = model::load_fp8_model<T>(opt_.model_dir, fmt, opt_.seed, lo);
    global_ = m.weights.config;
    Model::check_config(global_);
    gen_ = m.generation;
    w_ = DeviceFp8Weights<T>::upload(m.weights);
  }

  /// A user's model (model_concept.hpp): its own config and checkpoint reader; under tensor
  /// parallelism (a model that declares shard(), as the CPU runner does) every rank reads the
  /// whole model on the host and uploads its shard.
  void load_custom() {
    PIE_CHECK(tp_ == 1 || (model::has_tp_shard<Model, T>), "model ", Model::kName,
              " declares no tensor-parallel sharding (run it on one GPU)");
    auto place = [&](const HostWeights& full) {
      if constexpr (model::has_tp_shard<Model, T>) {
        if (tp_ > 1) {
          shard_ = parallel::make_tp_shard(global_, tp_, rank_);
          w_ = Weights::upload(Model::template shard<T>(full, *shard_));
          return;
        }
      }
      w_ = Weights::upload(full);
    };
    if (const HostWeights* given = opt_.weights_as<HostWeights>()) {
      global_ = given->config;
      Model::check_config(global_);
      gen_ = opt_.generation;
      place(*given);
      return;
    }
    model::LoadOptions lo;
    lo.progress = false;
    lo.defer_dummy_fill = tp_ == 1;  // one GPU: dummy weights generated on the device by DeviceCopy
    auto m = model::load_user_model<Model, T>(opt_.model_dir, model::parse_load_format(opt_.load_format), lo,
                                                 opt_.seed);
    global_ = m.config;
    gen_ = m.generation;
    place(m.weights);
  }

  /// The Qwen3 family: checkpoint, dummy (filled on the device at TP = 1), embedded or given.
  void load_family() {
    const auto fmt = model::parse_load_format(opt_.load_format);
    const bool from_checkpoint = !opt_.model_dir.empty() && fmt != model::LoadFormat::Dummy;
    model::LoadOptions lo;
    lo.progress = rank_ == 0;
    if (const model::Weights<T>* given = opt_.weights_as<model::Weights<T>>()) {
      global_ = given->config;
      Model::check_config(global_);
      gen_ = opt_.generation;
      if (tp_ == 1) {
        w_ = DeviceWeights<T>::upload(*given);
      } else {
        shard_ = parallel::make_tp_shard(global_, tp_, rank_);
        w_ = DeviceWeights<T>::upload(parallel::shard_weights<T>(*given, *shard_));
      }
      return;
    }
    if (from_checkpoint) {
      global_ = model::load_model_config(opt_.model_dir);
      Model::check_config(global_);
      gen_ = model::load_generation_config(opt_.model_dir, global_);
      if (tp_ == 1) {
        w_ = DeviceWeights<T>::upload(model::load_weights<T>(opt_.model_dir, global_, lo));
      } else {
        shard_ = parallel::make_tp_shard(global_, tp_, rank_);
        lo.progress = false;
        w_ = DeviceWeights<T>::upload(parallel::load_shard_weights<T>(opt_.model_dir, *shard_, lo));
      }
      return;
    }
    if (tp_ == 1 && !opt_.model_dir.empty()) {
      // --load-format dummy of a real shape: filled on the device (8B needs no 16 GB host copy).
      global_ = model::load_model_config(opt_.model_dir);
      Model::check_config(global_);
      gen_ = model::load_generation_config(opt_.model_dir, global_);
      w_ = DeviceWeights<T>::dummy(global_, opt_.seed);
      return;
    }
    // The embedded default, or dummy weights under TP: generated whole on the host and cut, so
    // every TP size of one seed is the same model.
    auto full = model::load_model<T>(opt_.model_dir, fmt, opt_.seed, lo);
    global_ = full.weights.config;
    Model::check_config(global_);
    gen_ = full.generation;
    if (tp_ == 1) {
      w_ = DeviceWeights<T>::upload(full.weights);
    } else {
      shard_ = parallel::make_tp_shard(global_, tp_, rank_);
      w_ = DeviceWeights<T>::upload(parallel::shard_weights<T>(full.weights, *shard_));
    }
  }

  void allocate_workspaces() {
    const auto& c = wconfig();
    decode_opts_ = make_decode_plan_options();
    ids_ = DeviceBuffer<int32_t>(max_samples());
    ids_host_ = PinnedBuffer<int32_t>(max_samples());
    StepCapacity cap;
    cap.max_tokens = max_tokens_;
    cap.max_seqs = opt_.sched.max_num_seqs;
    cap.max_blocks = opt_.sched.max_num_seqs * ((max_model_len_ + Policy::block_size - 1) / Policy::block_size + 1);
    cap.max_samples = max_samples();
    step_ = StepBuffers(cap);
    // Decode graphs per (bucket, context class) unless PIE_DECODE_GRAPH_CONTEXTS=0, each planned for
    // its class's bound (engine/decode_context_classes.hpp); else one per bucket, planned for
    // max_model_len. The ladder prices plans with the decode cost model on this card's SMs.
    // Not under --batch-invariant: its decode rows take the prefill kernel, no decode plan.
    if (decode_graph_contexts_from_env(std::getenv("PIE_DECODE_GRAPH_CONTEXTS")) && !opt_.enforce_eager &&
        !opt_.batch_invariant) {
      const int sms = ops::cuda::num_sms();
      ctx_classes_ = DecodeContextClasses(
          graph_buckets(opt_.sched.max_num_seqs), max_model_len_, [&](int b, int bound) { return decode_plan(b, bound); },
          [sms](const ops::cuda::DecodePlan& p, int ctx) { return ops::cuda::decode_plan_cost_us(p, ctx, sms); });
    }
    // Decode split-K scratch: the largest plan over every batch size at max_model_len, and over
    // every context class's graph (a shorter bound may split a bucket more finely).
    size_t dws = 0;
    for (int b = 1; b <= opt_.sched.max_num_seqs; ++b) dws = std::max(dws, decode_plan(b, max_model_len_).workspace_bytes);
    if (!ctx_classes_.empty())
      for (int b : graph_buckets(opt_.sched.max_num_seqs))
        for (int bound : ctx_classes_.bounds(b)) dws = std::max(dws, decode_plan(b, bound).workspace_bytes);
    decode_ws_ = DeviceBuffer<unsigned char>(std::max<size_t>(dws, 256));
    // Zeroed once: the fused split merge's arrival counters start at zero, and every launch
    // leaves them so (graph replays need no memset).
    PIE_CUDA_CHECK(cudaMemset(decode_ws_.data(), 0, decode_ws_.size()));
    // RoPE inverse frequencies as transformers computes them (scaled variants included).
    auto table = ops::cpu::rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings);
    inv_freq_ = DeviceBuffer<float>(table.inv_freq.size());
    PIE_CUDA_CHECK(cudaMemcpy(inv_freq_.data(), table.inv_freq.data(), sizeof(float) * table.inv_freq.size(),
                              cudaMemcpyHostToDevice));
    gemm_ = std::make_unique<ops::cuda::Gemm>();
    logits_gemm_ = std::make_unique<LogitsGemm>();
    if (opt_.batch_invariant) {
      gemm_->set_batch_invariant(true);
      logits_gemm_->set_batch_invariant(true);
    }
    if constexpr (Policy::fp8_weights) fp8_gemm_ = make_fp8_gemm(c);
    typename Forward::Parts p;
    p.config = c;
    p.fp8_gemm = fp8_gemm_.get();
    p.max_tokens = max_tokens_;
    p.max_samples = max_samples();
    p.step = &step_;
    p.gemm = gemm_.get();
    p.logits_gemm = logits_gemm_.get();
    p.profiler = &prof_;
    p.rope.theta = static_cast<float>(c.rope_theta);
    p.rope.inv_freq = inv_freq_.data();
    p.rope.mscale = table.attention_factor;
    p.decode_ws = decode_ws_.data();
    p.batch_invariant = opt_.batch_invariant;
    p.fusions = FusionSwitches::from_env();
#if !defined(PIE_DECODE_LATENCY)
    PIE_CHECK(!p.fusions.rope_attn, "PIE_FUSED_ROPE_ATTN=1: this build has no RoPE inside decode attention "
                                    "(configure with -DPIE_DECODE_LATENCY=ON)");
#endif
    // --calculate-kv-scales reads K/V where the separate kv_write does (after RoPE).
    if (opt_.calculate_kv_scales && p.fusions.rope_kv) {
      p.fusions.rope_kv = false;
      if (log_) std::fprintf(stderr, "pie: --calculate-kv-scales: PIE_FUSED_ROPE_KV ignored\n");
    }
    p.l2_prefetch = L2Prefetch::from_env(ops::cuda::l2_cache_bytes());
    // Read here, so that a variant this build lacks fails the engine's start (whatever the model).
    p.moe_decode = ops::cuda::moe_decode::switches_from_env();
    p.shard = shard_ ? &*shard_ : nullptr;
    p.comm = comm_.get();
    typename Forward::Parts nano_parts = p;  // the nano-batch halves keep the fp8 prefill below off
    // The fp8 cache's prefill through v3 (ops/cuda/prefill_fp8_kv.cuh; PIE_FP8_KV_PREFILL_STAGED):
    // staging for four activation slots' worth of context tokens and every sequence's partial page.
    // Not under --batch-invariant: its decode rows take the mma.sync kernel, and a token recomputed
    // inside a chunk must meet the same arithmetic there.
    if constexpr (ops::cuda::is_fp8_v<ops::cuda::device_t<KV>>) {
      if (ops::cuda::fp8_kv_prefill_staged_from_env() && !opt_.batch_invariant && ops::cuda::sm90::hopper_device()) {
        const int bs = Policy::block_size;
        const int64_t pages = int64_t{4} * max_tokens_ / bs + opt_.sched.max_num_seqs;
        fp8_kv_prefill_ = std::make_unique<ops::cuda::Fp8KvPrefillStaging<T>>(pages, c.num_key_value_heads, bs,
                                                                              c.head_dim, opt_.sched.max_num_seqs);
        p.fp8_kv_prefill = fp8_kv_prefill_.get();
      }
    }
    fwd_ = std::make_unique<Forward>(std::move(p));
    setup_nano(nano_parts, cap, std::max<size_t>(dws, 256));
  }

  /// An fp8 linear layer sized for every projection of `c` over a step of max_tokens_ rows.
  std::unique_ptr<ops::cuda::Fp8Gemm> make_fp8_gemm(const model::ModelConfig& c) const {
    const int64_t max_k = std::max<int64_t>({c.hidden_size, c.q_size(), c.intermediate_size});
    const int64_t max_n = std::max<int64_t>({c.qkv_size(), 2 * int64_t{c.intermediate_size}, c.hidden_size});
    return std::make_unique<ops::cuda::Fp8Gemm>(max_tokens_, max_k, max_n);
  }

  /// Nano-batch overlap (engine/nano_split.hpp): each half its own staged plan, GEMM handles
  /// (their workspaces must not be shared by two streams at once), decode scratch and forward
  /// context writing into the step's logits; one side stream and the fork/join events.
  void setup_nano(typename Forward::Parts p, const StepCapacity& cap, size_t decode_ws_bytes) {
    // A malformed value is refused (core/env_switch.hpp), not read as 0 the way atoi would.
    auto env_int = [](const char* name, int fallback) { return env_count(name, std::getenv(name), fallback); };
    nano_opt_.nano_batches = opt_.nano_batches > 0 ? opt_.nano_batches : env_int("PIE_NANO_BATCHES", 1);
    nano_opt_.min_rows = opt_.nano_min_rows > 0 ? opt_.nano_min_rows : env_int("PIE_NANO_MIN_ROWS", 0);
    nano_stagger_ = env_int("PIE_NANO_STAGGER", 0);
    // PIE_NANO_PIPELINE=1: the halves held half a layer apart at every layer (CudaForward::
    // set_pipeline), so that one's attention runs beside the other's GEMMs; a stagger at the start
    // alone did not keep them apart (docs/gpu_engine.md, "At 1,024 sequences").
    nano_pipeline_ = env_switch("PIE_NANO_PIPELINE", std::getenv("PIE_NANO_PIPELINE"));
    // PIE_NANO_GEMM_SMS=n: the halves' GEMMs aim at n SMs (cuBLASLt's SM count target), leaving
    // the rest to the other half's attention. Not under batch invariance (another SM count may
    // pick another algorithm than the unsplit step's).
    nano_gemm_sms_ = opt_.batch_invariant ? 0 : env_int("PIE_NANO_GEMM_SMS", 0);
    PIE_CHECK(nano_opt_.nano_batches >= 1 && nano_opt_.nano_batches <= 2, "--nano-batches ", nano_opt_.nano_batches,
              ": 1 (off) or 2");
    if (nano_opt_.nano_batches < 2) return;
    PIE_CHECK(tp_ == 1, "--nano-batches 2 runs on one GPU (tensor parallel size ", tp_,
              "): the halves' collectives would need communicators of their own");
    PIE_CHECK(!opt_.calculate_kv_scales, "--nano-batches 2 is not available with --calculate-kv-scales (the first "
              "forward that calculates them is the unsplit runner's)");
    const auto& c = wconfig();
    const double projections = static_cast<double>(c.num_hidden_layers) *
                               (double(c.qkv_size()) * c.hidden_size + double(c.q_size()) * c.hidden_size +
                                3.0 * c.intermediate_size * c.hidden_size);
    const double lm_head = double(c.vocab_size) * c.hidden_size;
    // fp8 projections: one byte a weight, and FP8 tensor cores at twice the bf16 rate (half the
    // bf16-equivalent FLOPs); lm_head stays 16-bit.
    constexpr double kProjFlopsPerWeight = Policy::fp8_weights ? 1.0 : 2.0;
    constexpr double kProjBytesPerWeight = Policy::fp8_weights ? 1.0 : double(sizeof(T));
    nano_cost_.flops_per_row = kProjFlopsPerWeight * projections + 2 * lm_head;
    nano_cost_.weight_bytes = kProjBytesPerWeight * projections + sizeof(T) * lm_head;
    nano_cost_.kv_bytes_per_token = static_cast<double>(layout_.bytes_per_block()) / Policy::block_size;
    for (auto& h : nano_) {
      h.step = StepBuffers(cap);
      h.gemm = std::make_unique<ops::cuda::Gemm>();
      h.logits_gemm = std::make_unique<LogitsGemm>();
      if (opt_.batch_invariant) {
        h.gemm->set_batch_invariant(true);
        h.logits_gemm->set_batch_invariant(true);
      }
      if (nano_gemm_sms_ > 0) h.gemm->set_sm_count_target(nano_gemm_sms_);
      if constexpr (Policy::fp8_weights) h.fp8_gemm = make_fp8_gemm(c);  // its own codes and cuBLASLt workspace
      h.ws = DeviceBuffer<unsigned char>(decode_ws_bytes);
      PIE_CUDA_CHECK(cudaMemset(h.ws.data(), 0, h.ws.size()));
      typename Forward::Parts q = p;
      q.step = &h.step;
      q.gemm = h.gemm.get();
      q.logits_gemm = h.logits_gemm.get();
      q.fp8_gemm = h.fp8_gemm.get();
      q.decode_ws = h.ws.data();
      q.profiler = nullptr;  // a split step is never profiled (the profiler times one stream)
      q.own_logits = false;
      h.fwd = std::make_unique<Forward>(std::move(q));
      h.fwd->set_logits_target(fwd_->logits());
    }
    PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
    for (cudaEvent_t* e : {&fork_, &join_, &stagger_}) PIE_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    if (nano_pipeline_) {
      pipe_events_.resize(static_cast<size_t>(c.num_hidden_layers));
      for (auto& e : pipe_events_) PIE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
  }
  /// Whether a step of `rows` rows (`decodes` of them decodes, `kv_tokens` context tokens) runs split.
  bool nano_worth(int rows, int decodes, int64_t kv_tokens) const {
    return nano_on() && nano_worth_splitting(nano_cost_, nano_opt_, rows, decodes, kv_tokens);
  }
  /// Whether a decode graph of `bucket` rows may ever run split: at some context length up to
  /// max_model_len (the gain first grows with the context, then falls: nano_split.hpp).
  bool nano_bucket(int bucket) const {
    if (!nano_on() || nano_rows_a(bucket, bucket) < 1) return false;
    for (int ctx = 16; ctx < 2 * max_model_len_; ctx *= 2)
      if (nano_worth(bucket, bucket, int64_t{bucket} * std::min(ctx, max_model_len_))) return true;
    return false;
  }

  /// The fp8 KV cache's scales: --calculate-kv-scales (the first real forward's amax per head,
  /// kv::kKvScaleMargin), else the checkpoint's k_scale / v_scale (model/kv_scale_loader.hpp;
  /// this rank's kv heads under TP), else 1. A 16-bit cache refuses --calculate-kv-scales and
  /// ignores checkpoint scales (as vLLM).
  void set_kv_scales() {
    constexpr bool fp8 = std::is_same_v<KV, fp8_e4m3>;
    PIE_CHECK(fp8 || !opt_.calculate_kv_scales, "--calculate-kv-scales needs --kv-cache-dtype fp8");
    if constexpr (fp8) {
      if (opt_.calculate_kv_scales) {
        fwd_->calculate_kv_scales(kv::kKvScaleMargin);
        if (log_)
          std::fprintf(stderr, "pie: fp8 KV scales: calculated from the first forward's amax per kv head (x%.0f)\n",
                       double(kv::kKvScaleMargin));
        return;
      }
      if (opt_.model_dir.empty() || model::parse_load_format(opt_.load_format) == model::LoadFormat::Dummy) return;
      auto s = model::load_kv_scales(opt_.model_dir, global_);
      if (!s) return;
      const auto& c = wconfig();
      kv::KvScales local = kv::KvScales::ones(c.num_hidden_layers, c.num_key_value_heads);
      const int h0 = shard_ ? static_cast<int>(shard_->kv_heads.begin) : 0;
      for (int l = 0; l < c.num_hidden_layers; ++l)
        for (int h = 0; h < c.num_key_value_heads; ++h) {
          local.k[size_t(l) * c.num_key_value_heads + h] = s->k_of(l)[h0 + h];
          local.v[size_t(l) * c.num_key_value_heads + h] = s->v_of(l)[h0 + h];
        }
      kv_->set_scales(local);
      if (log_) std::fprintf(stderr, "pie: fp8 KV scales: the checkpoint's k_scale / v_scale\n");
    }
  }

  /// The decode plans' options, read from the environment once, when the runner is built (as the
  /// fusions are: an eager step plans its decode attention with the same switches as the graphs).
  ops::cuda::DecodePlanOptions make_decode_plan_options() const {
    const auto& c = wconfig();
    // PIE_DECODE_FUSED_MERGE=1 fuses the split merge into the decode kernel; every batch size's
    // plan keeps its counters where max_num_seqs' plan does.
    // PIE_DECODE_MMA_WIDE=all (or 4, 8): 16-bit K/V at those GQA groups get the batch-invariant
    // split and the tensor-core kernel on every grid; unset, group 8 on wide grids in a build
    // with its kernels (decode_mma16_groups); 0: the cost model's split and the CUDA-core kernel.
    auto opt = ops::cuda::decode_plan_options(int(sizeof(KV)), c.num_attention_heads / c.num_key_value_heads,
                                              c.head_dim);
    opt.counter_batch = opt_.sched.max_num_seqs;
    // PIE_DECODE_CLUSTER_MERGE=1 / PIE_DECODE_EARLY_PAGES=1 / PIE_DECODE_SPLIT_GROUP=1: the latency
    // paths, compiled only with -DPIE_DECODE_LATENCY=ON (refused here, at the runner's start, in a
    // build without them).
    PIE_CHECK(ops::cuda::detail::kDecodeLatencyPaths ||
                  !(opt.cluster_merge || opt.early_pages || opt.split_groups || opt.split_group4),
              "PIE_DECODE_CLUSTER_MERGE / PIE_DECODE_EARLY_PAGES / PIE_DECODE_SPLIT_GROUP(4): this build has no "
              "decode latency paths (configure with -DPIE_DECODE_LATENCY=ON)");
    return opt;
  }
  ops::cuda::DecodePlan decode_plan(int batch, int max_len) const {
    const auto& c = wconfig();
    return ops::cuda::plan_decode_attention(batch, c.num_attention_heads, c.num_key_value_heads, c.head_dim, max_len,
                                            0, decode_opts_);
  }

  /// Runs the largest step the scheduler can produce (max_num_batched_tokens of prefill, and
  /// as many sampled rows as sequences) against a scratch KV cache; returns the activation
  /// bytes: everything the runner allocated beyond the weights, plus library scratch. Under TP
  /// every rank profiles at once (the step runs collectives).
  size_t profile() {
    const int bs = Policy::block_size;
    const int Tn = max_tokens_;
    // Sequences of max_model_len (the last one shorter) filling the token budget; a step never
    // holds more than max_num_seqs·max_model_len tokens, whatever the budget.
    sched::StepPlan p;
    p.cu_query_lens.push_back(0);
    p.kv_indptr.push_back(0);
    int32_t next_block = 0;
    for (int done = 0; done < Tn && p.num_seqs() < opt_.sched.max_num_seqs;) {
      const int len = std::min(max_model_len_, Tn - done);
      const int i = p.num_seqs();
      for (int t = 0; t < len; ++t) {
        p.token_ids.push_back((t * 7919 + i) % global_.vocab_size);
        p.positions.push_back(t);
        p.slot_mapping.push_back(int64_t(next_block + t / bs) * bs + t % bs);
      }
      const int nb = (len + bs - 1) / bs;
      for (int b = 0; b < nb; ++b) p.kv_indices.push_back(next_block + b);
      next_block += nb;
      p.seq_ids.push_back(i);
      p.query_lens.push_back(len);
      p.context_lens.push_back(len);
      p.cu_query_lens.push_back(p.cu_query_lens.back() + len);
      p.kv_indptr.push_back(static_cast<int32_t>(p.kv_indices.size()));
      p.kv_last_page_len.push_back(len - (nb - 1) * bs);
      p.sample_seqs.push_back(i);
      p.logits_rows.push_back(p.cu_query_lens.back() - 1);
      p.sample_counts.push_back(1);
      done += len;
    }
    std::vector<SampleSpec> specs(p.sample_seqs.size());
    for (auto& s : specs) { s.temperature = 1.f; s.top_p = 0.9f; s.top_k = 50; }
    KVCache<KV> scratch(layout_, next_block, 0);
    DeviceMemory with_scratch = DeviceMemory::query();
    run_step(p, specs, scratch, /*allow_graph=*/false, /*want_logits=*/false);
    size_t nano_bytes = 0;
    for (auto& h : nano_) {
      if (!h.fwd) continue;
      // Each nano-batch may hold a whole step's prefill: its activations at the same peak.
      h.step.stage(p, specs, 0, stream_);
      h.fwd->begin(eager_shape(p, h.step.num_samples()), scratch, stream_);
      Model::forward(*h.fwd, views());
      nano_bytes += h.fwd->bytes() + h.step.bytes() + h.ws.size() + (size_t{64} << 20) /* GEMM scratch */;
    }
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    DeviceMemory after = DeviceMemory::query();
    // Workspaces (activation slots included: the profile step allocated them) count explicitly.
    const size_t ws =
        fwd_->bytes() + step_.bytes() + decode_ws_.size() + (size_t{64} << 20) /* GEMM scratch */ + nano_bytes +
        (fp8_kv_prefill_ ? fp8_kv_prefill_->bytes() : 0);
    const size_t lib = with_scratch.free > after.free ? with_scratch.free - after.free : 0;  // handles, plans
    return ws + lib;
  }

  /// A representative decode plan of B sequences: each one token at position 0 of its own
  /// block 0, writing nothing into the live cache (slot −1).
  sched::StepPlan decode_plan_of(int B) const {
    sched::StepPlan p;
    p.cu_query_lens.push_back(0);
    p.kv_indptr.push_back(0);
    for (int i = 0; i < B; ++i) {
      p.token_ids.push_back(i % global_.vocab_size);
      p.positions.push_back(0);
      p.slot_mapping.push_back(-1);
      p.seq_ids.push_back(i);
      p.query_lens.push_back(1);
      p.context_lens.push_back(1);
      p.cu_query_lens.push_back(i + 1);
      p.kv_indices.push_back(0);
      p.kv_indptr.push_back(i + 1);
      p.kv_last_page_len.push_back(1);
      p.sample_seqs.push_back(i);
      p.logits_rows.push_back(i);
      p.sample_counts.push_back(1);
    }
    p.num_decode_seqs = B;
    return p;
  }

  void capture_graphs() {
    auto t0 = std::chrono::steady_clock::now();
    // Largest first: the cuBLASLt plan cache and the graph pool settle on the big shapes.
    std::vector<int> buckets = graph_buckets(opt_.sched.max_num_seqs);
    for (auto it = buckets.rbegin(); it != buckets.rend(); ++it) {
      const int B = *it;
      sched::StepPlan p = decode_plan_of(B);
      std::vector<SampleSpec> specs(B);
      step_.stage(p, specs, B, stream_);
      const StepShape shape = decode_shape(B);
      // Warm up eagerly (plans, cuBLASLt heuristics, NCCL channels) before capturing.
      body(shape, *kv_, stream_);
      PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      graphs_.capture(B, stream_, [&](cudaStream_t s) { body(shape, *kv_, s); });
      captured_.push_back(B);
      if (nano_bucket(B)) capture_split(B, p, specs);
      // The bucket's context classes below max_model_len (step_ still holds its plan), each warmed
      // up eagerly first: another split count may launch other kernels (the merge). None when the
      // classes are off (their ladder then has no bounds; it once gave {0}, and a bound-0 graph per
      // bucket was captured here and never replayed).
      for (int bound : ctx_classes_.bounds(B)) {
        if (bound >= max_model_len_) continue;
        const StepShape cs = decode_shape(B, bound);
        body(cs, *kv_, stream_);
        PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
        ctx_graphs_[bound].capture(B, stream_, [&](cudaStream_t s) { body(cs, *kv_, s); });
      }
    }
    std::reverse(captured_.begin(), captured_.end());
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    stats_.graph_capture_s = seconds_since(t0);
    if (log_) {
      size_t n = graphs_.size();
      for (const auto& [bound, g] : ctx_graphs_) n += g.size();
      std::string classes;
      for (int bound : ctx_classes_.lower_bounds()) classes += std::to_string(bound) + ", ";
      std::fprintf(stderr, "pie: captured %zu decode CUDA graphs (batch 1..%d; %zu context classes: %s%d; %zu of them "
                   "also split in two nano-batches) in %.1f s\n", n, opt_.sched.max_num_seqs,
                   ctx_classes_.lower_bounds().size() + 1, classes.c_str(), max_model_len_, split_graphs_.size(),
                   stats_.graph_capture_s);
    }
  }
  /// The split graph of bucket B (step_ already holds the padded plan `p`): halves of
  /// nano_rows_a(B, B) and the rest, both decode graphs' shapes. Planned for max_model_len only,
  /// also under PIE_DECODE_GRAPH_CONTEXTS: a split graph is taken where the nano-batch cost model
  /// says the overlap pays, and context classes for the halves would multiply the captures again.
  void capture_split(int B, const sched::StepPlan& p, const std::vector<SampleSpec>& specs) {
    const int a = nano_rows_a(B, B);
    std::optional<NanoSplit> sp = split_plan(p, a);
    PIE_CHECK(sp.has_value(), "CudaRunner: no nano split of the decode graph of batch ", B);
    for (int k = 0; k < 2; ++k) {
      const NanoHalf& h = sp->half[k];
      std::vector<SampleSpec> hs(specs.begin() + h.sample_begin, specs.begin() + h.sample_begin + h.num_samples);
      nano_[k].step.stage(h.plan, hs, 0, stream_);
    }
    const StepShape sa = decode_shape(a), sb = decode_shape(B - a);
    body_split(sa, sb, *kv_, stream_);  // warm-up: plans and heuristics of the halves' shapes
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    split_graphs_.capture(B, stream_, [&](cudaStream_t s) { body_split(sa, sb, *kv_, s); });
    ++stats_.nano_graphs;
  }
  /// A decode graph's shape: B rows, attention planned for contexts ≤ `max_len`.
  StepShape decode_shape(int B, int max_len = 0) const {
    StepShape sh;
    sh.tokens = sh.seqs = sh.decodes = sh.samples = B;
    sh.decode = decode_plan(B, max_len > 0 ? max_len : max_model_len_);
    return sh;
  }

  // ---- one step -----------------------------------------------------------------------------------
  /// The plan's prompt_logprobs rows, after the step's draws (see score_prompt_rows in
  /// cuda_forward.cuh): every rank runs the chunks (collectives under TP); rank 0 scores them and
  /// queues the copy of the records, read after the caller's synchronize.
  void score_prompt_rows(const sched::StepPlan& plan) {
    prompt_rows_ = 0;
    if (plan.empty() || plan.prompt_logprob_tokens.empty()) return;
    const int n = step_.num_prompt_rows();
    if (rank_ == 0 && prompt_dev_.size() < static_cast<size_t>(n)) {
      // First such step: records for a whole step's tokens (~170 B each), kept for later ones.
      prompt_dev_ = DeviceBuffer<sched::PromptLogprobRow>(max_tokens_);
      prompt_host_ = PinnedBuffer<sched::PromptLogprobRow>(max_tokens_);
    }
    fwd_->score_prompt_rows(rank_ == 0 ? prompt_dev_.data() : nullptr);
    if (rank_ != 0) return;
    PIE_CUDA_CHECK(cudaMemcpyAsync(prompt_host_.data(), prompt_dev_.data(), sizeof(sched::PromptLogprobRow) * n,
                                   cudaMemcpyDeviceToHost, stream_));
    prompt_rows_ = n;
  }

  void launch(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs, bool want_logits) {
    PIE_CHECK(kv_, "CudaRunner: execute before allocate_kv");
    gaps_.begin(stream_);
    if (plan.empty()) {
      // A plan with no tokens may still carry block operations (a swap-out that freed room for
      // nothing else this step): they must run before the scheduler reuses those blocks.
      kv_->apply(plan, stream_);
      last_samples_ = 0;
      return;
    }
    run_step(plan, specs, *kv_, /*allow_graph=*/true, want_logits);
  }

  /// `ids_dst`: pinned host buffer for the sampled ids (nullptr: ids_host_).
  void run_step(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs, KVCache<KV>& cache,
                bool allow_graph, bool want_logits, int32_t* ids_dst = nullptr) {
    const int S = plan.num_seqs(), D = plan.num_decode_seqs;
    const bool pure_decode = D == S;
    // A pending --calculate-kv-scales runs eagerly (its kernels are not in the graphs).
    const bool graphable =
        pure_decode && plan.prompt_logprob_tokens.empty() && !prof_.enabled() && !fwd_->kv_scales_pending();
    const int bucket = allow_graph && graphable ? graphs_.bucket_for(S) : 0;
    if (nano_on() && !prof_.enabled() && run_split(plan, specs, cache, bucket, want_logits, ids_dst)) return;
    if (prof_.enabled()) prof_.set_tag(pure_decode ? "decode@" + std::to_string(S) : std::string("mixed"));
    step_.stage(plan, specs, bucket, stream_);
    step_.stage_prompt_rows(plan, stream_);
    // Placeholder rows (asynchronous scheduling): the previous step's ids, still in ids_ —
    // stream order puts this after that step's sampler and before this step's overwrites them.
    ops::cuda::feed_tokens(step_.token_ids(), step_.feed_rows(), step_.feed_draws(), step_.num_feeds(), ids_.data(),
                           stream_);
    cache.apply(plan, stream_);
    const int nsamp = step_.num_samples();
    if (bucket > 0) {
      // The smallest context class ≥ the step's longest context (max_model_len without classes).
      const int bound = ctx_classes_.empty() ? max_model_len_ : ctx_classes_.bound_for(bucket, max_decode_context(plan));
      if (bound < max_model_len_) {
        ctx_graphs_.at(bound).launch(bucket, stream_);
        ++stats_.ctx_graph_steps;
      } else {
        graphs_.launch(bucket, stream_);
      }
      ++stats_.graph_steps;
    } else {
      body(eager_shape(plan, nsamp), cache, stream_);
      ++stats_.eager_steps;
    }
    finish_step(nsamp, want_logits, ids_dst);
  }

  /// The end of every step: counters, the sampled ids (and logits) back to the host.
  void finish_step(int nsamp, bool want_logits, int32_t* ids_dst) {
    ++stats_.steps;
    last_samples_ = nsamp;
    if (rank_ != 0) return;
    PIE_CUDA_CHECK(cudaMemcpyAsync(ids_dst ? ids_dst : ids_host_.data(), ids_.data(), sizeof(int32_t) * nsamp,
                                   cudaMemcpyDeviceToHost, stream_));
    if (want_logits) {
      const size_t n = static_cast<size_t>(nsamp) * global_.vocab_size;
      if (logits_host_.size() < n) logits_host_ = PinnedBuffer<float>(n);
      PIE_CUDA_CHECK(cudaMemcpyAsync(logits_host_.data(), fwd_->logits(), sizeof(float) * n, cudaMemcpyDeviceToHost,
                                     stream_));
    }
  }

  /// The longest context of the plan's decode rows (at least 1).
  static int max_decode_context(const sched::StepPlan& plan) {
    int max_ctx = 1;
    for (int i = 0; i < plan.num_decode_seqs; ++i) max_ctx = std::max(max_ctx, plan.context_lens[i]);
    return max_ctx;
  }
  StepShape eager_shape(const sched::StepPlan& plan, int nsamp) const {
    const int S = plan.num_seqs(), D = plan.num_decode_seqs;
    StepShape sh;
    sh.tokens = plan.num_tokens();
    sh.seqs = S;
    sh.decodes = D;
    sh.samples = nsamp;
    const int max_ctx = max_decode_context(plan);
    for (int i = D; i < S; ++i) sh.max_query = std::max(sh.max_query, plan.query_lens[i]);
    sh.prefill_row0 = plan.cu_query_lens[D];
    sh.decode = decode_plan(D, max_ctx);
    return sh;
  }

  /// Runs `plan` as two overlapped nano-batches when the planner takes it (a graph replay when
  /// `bucket` has a split graph); false: nothing was enqueued, run it whole.
  bool run_split(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs, KVCache<KV>& cache, int bucket,
                 bool want_logits, int32_t* ids_dst) {
    const int S = plan.num_seqs(), D = plan.num_decode_seqs, T = plan.num_tokens();
    int64_t kv_tokens = 0;  // K/V the step's attention reads
    for (int i = 0; i < S; ++i) kv_tokens += plan.context_lens[i];
    const bool graph = bucket > 0 && split_graphs_.bucket_for(bucket) == bucket;
    if (bucket > 0 && !graph) return false;  // the unsplit graph beats an eager split
    const int rows = graph ? bucket : T;
    if (!nano_worth(rows, graph ? bucket : D, kv_tokens)) return false;
    const int a = graph ? nano_rows_a(bucket, bucket) : nano_rows_a(T, D);
    std::optional<NanoSplit> sp = split_plan(plan, a);
    if (!sp) return false;
    step_.stage(plan, specs, bucket, stream_);  // the sampler's rows, padded as the unsplit graph's
    StepShape sh[2];
    for (int k = 0; k < 2; ++k) {
      const NanoHalf& h = sp->half[k];
      std::vector<SampleSpec> hs(specs.begin() + h.sample_begin, specs.begin() + h.sample_begin + h.num_samples);
      const int pad = graph && k == 1 ? bucket - a : 0;
      nano_[k].step.stage(h.plan, hs, pad, stream_);
      ops::cuda::feed_tokens(nano_[k].step.token_ids(), nano_[k].step.feed_rows(), nano_[k].step.feed_draws(),
                             nano_[k].step.num_feeds(), ids_.data(), stream_);
      if (!graph) sh[k] = eager_shape(h.plan, h.num_samples);
    }
    cache.apply(plan, stream_);
    const int nsamp = step_.num_samples();
    if (graph) {
      split_graphs_.launch(bucket, stream_);
      ++stats_.graph_steps;
    } else {
      body_split(sh[0], sh[1], cache, stream_);
      ++stats_.eager_steps;
    }
    ++stats_.nano_steps;
    finish_step(nsamp, want_logits, ids_dst);
    return true;
  }

  /// body() over two nano-batches: half A on `s`, half B on the side stream (forked from `s`,
  /// after A's first PIE_NANO_STAGGER ops when set), joined back into `s` before the sampler.
  /// Their logits are consecutive rows of the step's; graph-capturable like body().
  void body_split(const StepShape& a, const StepShape& b, KVCache<KV>& cache, cudaStream_t s) {
    PIE_CUDA_CHECK(cudaEventRecord(fork_, s));
    PIE_CUDA_CHECK(cudaStreamWaitEvent(side_, fork_, 0));
    Forward& fa = *nano_[0].fwd;
    Forward& fb = *nano_[1].fwd;
    const cudaEvent_t* pipe = nano_pipeline_ ? pipe_events_.data() : nullptr;
    fa.set_pipeline(Forward::PipeRole::kLead, pipe);
    fb.set_pipeline(Forward::PipeRole::kTrail, pipe);
    fa.begin(a, cache, s);
    fa.set_logits_target(fwd_->logits());
    fa.signal_after(nano_stagger_, stagger_);
    Model::forward(fa, views());
    if (nano_stagger_ > 0 && fa.ops() >= nano_stagger_) PIE_CUDA_CHECK(cudaStreamWaitEvent(side_, stagger_, 0));
    // The pipeline: B starts when A's first attention does (its qkv beside A's attention).
    if (pipe) PIE_CUDA_CHECK(cudaStreamWaitEvent(side_, pipe[0], 0));
    fb.begin(b, cache, side_);
    fb.set_logits_target(fwd_->logits() + static_cast<size_t>(a.samples) * global_.vocab_size);
    Model::forward(fb, views());
    PIE_CUDA_CHECK(cudaEventRecord(join_, side_));
    PIE_CUDA_CHECK(cudaStreamWaitEvent(s, join_, 0));
    sample_step(a.samples + b.samples, s);
  }

  /// The model's forward over the step and (rank 0) the device sampler: everything it reads
  /// lives at fixed device addresses, so it is graph-capturable.
  void body(const StepShape& shape, KVCache<KV>& cache, cudaStream_t s) {
    fwd_->begin(shape, cache, s);
    Model::forward(*fwd_, views());
    sample_step(shape.samples, s);
  }
  /// Rank 0: the device sampler over the step's logits (the staged sampling rows).
  void sample_step(int samples, cudaStream_t s) {
    if (rank_ != 0 || samples == 0) return;
    ops::cuda::SamplingInputs in;
    in.rows = step_.sampling_rows();
    ops::cuda::SamplingOutputs out;
    out.tokens = ids_.data();
    if (prof_.enabled()) prof_.begin("sample", s);
    ops::cuda::sample(fwd_->logits(), samples, global_.vocab_size, in, out, s);
    if (prof_.enabled()) prof_.end(s);
  }

  EngineOptions opt_;
  int rank_ = 0, tp_ = 1;
  bool log_ = true;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<parallel::Communicator> comm_;
  model::ModelConfig global_;
  model::GenerationConfig gen_;
  std::optional<parallel::TpShard> shard_;
  Weights w_;
  int max_tokens_ = 0, max_model_len_ = 0;
  kv::KVLayout layout_{};
  MemoryPlan plan_;
  RunnerStats stats_;
  std::unique_ptr<ops::cuda::Gemm> gemm_;
  std::unique_ptr<ops::cuda::Fp8Gemm> fp8_gemm_;  // fp8 weights only
  std::unique_ptr<LogitsGemm> logits_gemm_;
  std::unique_ptr<KVCache<KV>> kv_;
  StepBuffers step_;
  DecodeGraphs graphs_;  // by bucket, planned for max_model_len
  DecodeContextClasses ctx_classes_;           // empty: PIE_DECODE_GRAPH_CONTEXTS=0 (one class)
  std::map<int, DecodeGraphs> ctx_graphs_;     // by context class bound < max_model_len, then bucket
  StepProfiler prof_;
  std::vector<int> captured_;
  std::unique_ptr<Forward> fwd_;
  /// \brief One nano-batch's own state (setup_nano); fwd null: overlap off.
  struct NanoCtx {
    StepBuffers step;
    std::unique_ptr<ops::cuda::Gemm> gemm;
    std::unique_ptr<LogitsGemm> logits_gemm;
    std::unique_ptr<ops::cuda::Fp8Gemm> fp8_gemm;  // fp8 weights only
    DeviceBuffer<unsigned char> ws;
    std::unique_ptr<Forward> fwd;
  };
  std::array<NanoCtx, 2> nano_;
  NanoSplitOptions nano_opt_;
  NanoStepCost nano_cost_;
  int nano_stagger_ = 0;
  bool nano_pipeline_ = false;           // PIE_NANO_PIPELINE
  std::vector<cudaEvent_t> pipe_events_;  // one a layer: the lead half's attention started
  int nano_gemm_sms_ = 0;  // PIE_NANO_GEMM_SMS (0: every SM)
  cudaStream_t side_ = nullptr;
  cudaEvent_t fork_ = nullptr, join_ = nullptr, stagger_ = nullptr;
  DecodeGraphs split_graphs_;  // split decode graphs, by bucket (nano_bucket)
  DeviceBuffer<unsigned char> decode_ws_;
  std::unique_ptr<ops::cuda::Fp8KvPrefillStaging<T>> fp8_kv_prefill_;  // null: the fp8 prefill's default kernel
  ops::cuda::DecodePlanOptions decode_opts_;  ///< make_decode_plan_options(), read once
  DeviceBuffer<float> inv_freq_;
  DeviceBuffer<int32_t> ids_;
  PinnedBuffer<int32_t> ids_host_;
  PinnedBuffer<float> logits_host_;
  DeviceBuffer<sched::PromptLogprobRow> prompt_dev_;  // prompt_logprobs records (first such step)
  PinnedBuffer<sched::PromptLogprobRow> prompt_host_;
  int prompt_rows_ = 0;
  PinnedBuffer<int32_t> mask_host_, flags_host_;  // execute_sample_masked's bitmasks (allocated on first use)
  // execute_sample_full's inputs and outputs (allocated on first use, grown as needed)
  DeviceBuffer<ops::cuda::SamplingRow> full_rows_dev_;
  DeviceBuffer<int32_t> full_prompt_dev_, full_output_dev_, full_bias_tok_dev_, full_top_ids_dev_;
  DeviceBuffer<float> full_bias_val_dev_, full_lp_dev_, full_top_lp_dev_;
  PinnedBuffer<float> full_lp_host_, full_top_lp_host_;
  PinnedBuffer<int32_t> full_top_ids_host_;
  DeviceBuffer<int32_t> mask_dev_, flags_dev_;
  std::vector<SampleSpec> specs_;
  bool samples_full_ = [] {
    const char* v = std::getenv("PIE_FULL_DEVICE_SAMPLING");
    return v == nullptr || std::string(v) != "0";
  }();
  int last_samples_ = 0;
  // Asynchronous scheduling: per launched step (alternating), its ids' pinned copy and an event.
  PinnedBuffer<int32_t> ahead_ids_[2];
  std::shared_ptr<CUevent_st> ahead_done_[2];
  int ahead_n_[2] = {0, 0};
  uint64_t launched_ = 0, collected_ = 0;
  StepGapTimer gaps_;              ///< the GPU's idle gap before each step (last_idle_s)
  uint64_t ahead_step_[2] = {0, 0};  ///< gaps_'s step index of each launched-ahead slot
  std::optional<uint64_t> last_completed_;  ///< gaps_'s index of the last completed step
};

}  // namespace pie::engine::cuda

namespace pie {

/// \brief The CUDA backend: one GPU per rank.
template <class Model, class Policy>
struct RunnerOf<Model, Policy, backend::Cuda> {
  using type = engine::cuda::CudaRunner<Model, Policy>;
};

}  // namespace pie
