#pragma once
/// \file step_buffers.cuh
/// \brief The device copy of one StepPlan: every array the forward pass and the sampler read,
/// packed into one pinned host blob at fixed offsets and sent with ONE async H→D copy per step.
/// Offsets never move, so CUDA graphs captured against these device pointers stay valid; a
/// decode step padded to a graph bucket fills the extra rows with slot −1 (nothing written) and
/// empty block tables (attention reads nothing). A step with prompt_logprobs rows also stages
/// their token rows and scored tokens (stage_prompt_rows) in a region after the block table,
/// with a second copy that other steps never make.
///
/// Asynchronous scheduling stages step N+1 while step N may still be queued: stage() first
/// waits for the event recorded after the previous staging copies (they run at the start of
/// the step, so this is a short wait, not a wait for the step), then overwrites the blob. The
/// plan's feed rows and draws travel in the same copy (the runner's feed kernel reads them).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/engine/sample_specs.hpp"
#include "pie/ops/cuda/sampling.cuh"
#include "pie/sched/step_plan.hpp"

namespace pie::engine::cuda {

/// \brief Capacities the blob is laid out for.
struct StepCapacity {
  int max_tokens = 0;       ///< max_num_batched_tokens
  int max_seqs = 0;         ///< max_num_seqs (decode graphs pad up to this)
  int max_blocks = 0;       ///< block-table entries in one step
  int max_samples = 0;      ///< tokens sampled in one step (n > 1 draws several per row)
  // prompt_logprobs rows are token rows of the step: at most max_tokens.
};

/// \brief Fixed-offset pinned + device copies of a step's arrays.
class StepBuffers {
 public:
  StepBuffers() = default;
  explicit StepBuffers(const StepCapacity& c) : cap_(c) {
    size_t off = 0;
    auto take = [&](size_t bytes) { off = (off + 15) / 16 * 16; size_t o = off; off += bytes; return o; };
    // Per-sequence and per-token arrays first, the block table last: the copy of one step
    // stops at the end of its used block-table entries.
    o_cu_ = take(sizeof(int32_t) * (c.max_seqs + 1));
    o_cu_prefill_ = take(sizeof(int32_t) * (c.max_seqs + 1));
    o_indptr_ = take(sizeof(int32_t) * (c.max_seqs + 1));
    o_last_ = take(sizeof(int32_t) * c.max_seqs);
    o_rows_ = take(sizeof(int32_t) * c.max_samples);
    o_spec_ = take(sizeof(ops::cuda::SamplingRow) * c.max_samples);
    o_tokens_ = take(sizeof(int32_t) * c.max_tokens);
    o_pos_ = take(sizeof(int32_t) * c.max_tokens);
    o_slots_ = take(sizeof(int64_t) * c.max_tokens);
    o_feed_rows_ = take(sizeof(int32_t) * c.max_seqs);  // feed rows are decodes: at most one per sequence
    o_feed_draws_ = take(sizeof(int32_t) * c.max_seqs);
    o_indices_ = take(sizeof(int32_t) * c.max_blocks);
    o_prompt_rows_ = take(sizeof(int32_t) * c.max_tokens);
    o_prompt_tokens_ = take(sizeof(int32_t) * c.max_tokens);
    bytes_ = (off + 15) / 16 * 16;
    host_ = PinnedBuffer<std::byte>(bytes_);
    hbase_ = host_.data();
    dev_ = DeviceBuffer<std::byte>(bytes_);
    std::memset(host_.data(), 0, bytes_);
    PIE_CUDA_CHECK(cudaMemset(dev_.data(), 0, bytes_));
    cudaEvent_t e = nullptr;
    PIE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    staged_ = std::shared_ptr<CUevent_st>(e, [](cudaEvent_t x) { cudaEventDestroy(x); });
  }

  const StepCapacity& capacity() const { return cap_; }

  /// Packs `plan` (padded to `pad_seqs` decode rows when > num_seqs) and the sample specs into
  /// the pinned blob and queues the one H→D copy on `stream`. The pinned blob is reused by the
  /// next call: the caller synchronises on the step's result before staging again.
  void stage(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs, int pad_seqs,
             cudaStream_t stream) {
    const int S = plan.num_seqs(), T = plan.num_tokens();
    const int Sp = std::max(S, pad_seqs), Tp = T + (Sp - S);
    const int D = plan.num_decode_seqs;
    const int R = static_cast<int>(plan.sample_seqs.size());  // logits_rows past R: prompt_logprobs rows
    const int nsamp = plan.num_sampled_tokens();
    PIE_CHECK(Tp <= cap_.max_tokens, "StepBuffers: ", Tp, " tokens exceed the capacity ", cap_.max_tokens);
    PIE_CHECK(Sp <= cap_.max_seqs, "StepBuffers: ", Sp, " sequences exceed the capacity ", cap_.max_seqs);
    PIE_CHECK(static_cast<int>(plan.kv_indices.size()) <= cap_.max_blocks, "StepBuffers: ", plan.kv_indices.size(),
              " block-table entries exceed the capacity ", cap_.max_blocks);
    PIE_CHECK(nsamp + (Sp - S) <= cap_.max_samples && static_cast<int>(specs.size()) == nsamp,
              "StepBuffers: ", specs.size(), " sample specs for ", nsamp, " sampled tokens (capacity ",
              cap_.max_samples, ")");
    PIE_CHECK(Sp == S || D == S, "StepBuffers: only an all-decode step can be padded");
    const int nfeed = static_cast<int>(plan.feed_rows.size());
    PIE_CHECK(nfeed <= cap_.max_seqs && plan.feed_draws.size() == plan.feed_rows.size(), "StepBuffers: ", nfeed,
              " feed rows (capacity ", cap_.max_seqs, ")");
    PIE_CUDA_CHECK(cudaEventSynchronize(staged_.get()));  // the last staging copy has read the blob
    std::byte* h = host_.data();
    auto i32 = [&](size_t o) { return reinterpret_cast<int32_t*>(h + o); };
    int32_t* cu = i32(o_cu_);
    int32_t* cup = i32(o_cu_prefill_);
    int32_t* ip = i32(o_indptr_);
    int32_t* last = i32(o_last_);
    std::copy(plan.cu_query_lens.begin(), plan.cu_query_lens.end(), cu);
    std::copy(plan.kv_indptr.begin(), plan.kv_indptr.end(), ip);
    std::copy(plan.kv_last_page_len.begin(), plan.kv_last_page_len.end(), last);
    for (int i = S; i < Sp; ++i) {  // padding rows: one query token each, no KV pages
      cu[i + 1] = cu[i] + 1;
      ip[i + 1] = ip[i];
      last[i] = 1;
    }
    for (int i = D; i <= S; ++i) cup[i - D] = cu[i] - cu[D];
    // Sampled rows, a row repeated once per token drawn from it (n > 1 prefill).
    int32_t* rows = i32(o_rows_);
    int k = 0;
    for (int j = 0; j < R; ++j) {
      int c = plan.draws_of(j);
      for (int r = 0; r < c; ++r) rows[k++] = plan.logits_rows[j];
    }
    ops::cuda::SamplingRow* sp = reinterpret_cast<ops::cuda::SamplingRow*>(h + o_spec_);
    for (int j = 0; j < nsamp; ++j) sp[j] = to_row(specs[j]);
    // Padding rows of a graph bucket sample greedily from their own (discarded) rows.
    for (int i = S; i < Sp; ++i) { rows[k] = i; sp[k] = to_row(SampleSpec{}); ++k; }
    int32_t* tok = i32(o_tokens_);
    int32_t* pos = i32(o_pos_);
    int64_t* slots = reinterpret_cast<int64_t*>(h + o_slots_);
    std::copy(plan.token_ids.begin(), plan.token_ids.end(), tok);
    std::copy(plan.positions.begin(), plan.positions.end(), pos);
    std::copy(plan.slot_mapping.begin(), plan.slot_mapping.end(), slots);
    for (int t = T; t < Tp; ++t) { tok[t] = 0; pos[t] = 0; slots[t] = -1; }
    std::copy(plan.kv_indices.begin(), plan.kv_indices.end(), i32(o_indices_));
    std::copy(plan.feed_rows.begin(), plan.feed_rows.end(), i32(o_feed_rows_));
    std::copy(plan.feed_draws.begin(), plan.feed_draws.end(), i32(o_feed_draws_));
    num_feeds_ = nfeed;
    num_seqs_ = Sp;
    num_tokens_ = Tp;
    num_decode_ = Sp == S ? D : Sp;
    num_samples_ = nsamp;
    size_t used = o_indices_ + sizeof(int32_t) * plan.kv_indices.size();
    PIE_CUDA_CHECK(cudaMemcpyAsync(dev_.data(), host_.data(), used, cudaMemcpyHostToDevice, stream));
    PIE_CUDA_CHECK(cudaEventRecord(staged_.get(), stream));
    num_prompt_rows_ = 0;
  }

  /// Stages the plan's prompt_logprobs rows (after stage(), same step): their token rows and
  /// the tokens they score, with one H→D copy each; none when the plan has no such rows.
  void stage_prompt_rows(const sched::StepPlan& plan, cudaStream_t stream) {
    const size_t base = plan.sample_seqs.size();
    const int n = static_cast<int>(plan.prompt_logprob_tokens.size());
    PIE_CHECK(plan.logits_rows.size() == base + n && plan.prompt_logprob_seqs.size() == static_cast<size_t>(n),
              "StepBuffers: ", plan.logits_rows.size() - base, " extra logits rows for ", n,
              " prompt_logprobs tokens");
    PIE_CHECK(n <= num_tokens_, "StepBuffers: ", n, " prompt_logprobs rows in a step of ", num_tokens_, " tokens");
    num_prompt_rows_ = n;
    if (n == 0) return;
    int32_t* rows = reinterpret_cast<int32_t*>(host_.data() + o_prompt_rows_);
    int32_t* toks = reinterpret_cast<int32_t*>(host_.data() + o_prompt_tokens_);
    std::copy(plan.logits_rows.begin() + base, plan.logits_rows.end(), rows);
    std::copy(plan.prompt_logprob_tokens.begin(), plan.prompt_logprob_tokens.end(), toks);
    PIE_CUDA_CHECK(cudaMemcpyAsync(dev_.data() + o_prompt_rows_, rows, sizeof(int32_t) * n, cudaMemcpyHostToDevice,
                                   stream));
    PIE_CUDA_CHECK(cudaMemcpyAsync(dev_.data() + o_prompt_tokens_, toks, sizeof(int32_t) * n,
                                   cudaMemcpyHostToDevice, stream));
    PIE_CUDA_CHECK(cudaEventRecord(staged_.get(), stream));
  }

  // ---- device pointers (fixed for the buffer's lifetime) ----
  int32_t* cu_query_lens() { return dptr<int32_t>(o_cu_); }
  int32_t* cu_prefill() { return dptr<int32_t>(o_cu_prefill_); }  ///< prefill part, rebased to 0
  int32_t* kv_indptr() { return dptr<int32_t>(o_indptr_); }
  int32_t* kv_last_page_len() { return dptr<int32_t>(o_last_); }
  int32_t* kv_indices() { return dptr<int32_t>(o_indices_); }
  int32_t* logits_rows() { return dptr<int32_t>(o_rows_); }
  ops::cuda::SamplingRow* sampling_rows() { return dptr<ops::cuda::SamplingRow>(o_spec_); }
  int32_t* token_ids() { return dptr<int32_t>(o_tokens_); }
  int32_t* positions() { return dptr<int32_t>(o_pos_); }
  int64_t* slot_mapping() { return dptr<int64_t>(o_slots_); }
  int32_t* prompt_rows() { return dptr<int32_t>(o_prompt_rows_); }      ///< token row of each prompt_logprobs row
  int32_t* prompt_tokens() { return dptr<int32_t>(o_prompt_tokens_); }  ///< the prompt token it scores
  int32_t* feed_rows() { return dptr<int32_t>(o_feed_rows_); }    ///< StepPlan::feed_rows
  int32_t* feed_draws() { return dptr<int32_t>(o_feed_draws_); }  ///< StepPlan::feed_draws
  /// Host copy of the cumulative query lengths of the last staged step (pinned, valid until
  /// the next stage()).
  const int32_t* host_cu_query_lens() const { return reinterpret_cast<const int32_t*>(hbase_ + o_cu_); }
  const int32_t* host_kv_indptr() const { return reinterpret_cast<const int32_t*>(hbase_ + o_indptr_); }

  // ---- shape of the last staged step (padding included) ----
  int num_seqs() const { return num_seqs_; }
  int num_tokens() const { return num_tokens_; }
  int num_decode() const { return num_decode_; }
  int num_samples() const { return num_samples_; }
  int num_prompt_rows() const { return num_prompt_rows_; }
  int num_feeds() const { return num_feeds_; }
  size_t bytes() const { return bytes_; }

 private:
  // No penalties, bias or logprobs on this path (needs_host_sampling() sends those to the host).
  static ops::cuda::SamplingRow to_row(const SampleSpec& s) {
    ops::cuda::SamplingRow r;
    r.temperature = s.temperature;
    r.top_p = s.top_p;
    r.min_p = s.min_p;
    r.top_k = s.top_k > 0 ? s.top_k : 0;
    r.num_logprobs = -1;
    r.seed = s.seed;
    r.step = s.step;
    r.seq_index = s.seq_index;
    return r;
  }
  template <class U> U* dptr(size_t o) { return reinterpret_cast<U*>(dev_.data() + o); }
  StepCapacity cap_{};
  size_t o_cu_ = 0, o_cu_prefill_ = 0, o_indptr_ = 0, o_last_ = 0, o_rows_ = 0, o_spec_ = 0, o_tokens_ = 0,
         o_pos_ = 0, o_slots_ = 0, o_feed_rows_ = 0, o_feed_draws_ = 0, o_indices_ = 0, o_prompt_rows_ = 0, o_prompt_tokens_ = 0, bytes_ = 0;
  int num_seqs_ = 0, num_tokens_ = 0, num_decode_ = 0, num_samples_ = 0, num_prompt_rows_ = 0, num_feeds_ = 0;
  PinnedBuffer<std::byte> host_;
  std::byte* hbase_ = nullptr;  // host_.data(), readable from const members
  DeviceBuffer<std::byte> dev_;
  std::shared_ptr<CUevent_st> staged_;  // recorded after each staging copy (see the file comment)
};

}  // namespace pie::engine::cuda
