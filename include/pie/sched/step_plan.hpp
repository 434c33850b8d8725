#pragma once
/// \file step_plan.hpp
/// \brief StepPlan: one engine iteration flattened into the arrays the model runner copies to
/// the device once. Produced by Scheduler::schedule(), consumed by the model runner.
///
/// Ordering: decode sequences first (query_len 1), then prefill chunks. Tokens of sequence i are
/// rows [cu_query_lens[i], cu_query_lens[i+1]) of every per-token array.
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "pie/kv/block_copy.hpp"

namespace pie::sched {

using SeqId = uint64_t;

/// Block copies are a kv concept (the block manager emits them); plans carry them.
using kv::BlockCopy;

/// \brief One iteration's work, flattened.
struct StepPlan {
  // ---- per token (num_tokens) ----
  std::vector<int32_t> token_ids;     ///< input token of each row
  std::vector<int32_t> positions;     ///< absolute position of each row in its sequence
  std::vector<int64_t> slot_mapping;  ///< KV slot written by each row: block·block_size + offset

  // ---- per sequence (num_seqs) ----
  std::vector<SeqId> seq_ids;
  std::vector<int32_t> query_lens;    ///< tokens computed this step
  std::vector<int32_t> context_lens;  ///< tokens in KV after this step (cached prefix + query)
  std::vector<int32_t> cu_query_lens; ///< [num_seqs + 1] prefix sum of query_lens
  std::vector<int32_t> kv_indptr;     ///< [num_seqs + 1] into kv_indices
  std::vector<int32_t> kv_indices;    ///< block ids of each sequence's table, concatenated
  std::vector<int32_t> kv_last_page_len;  ///< [num_seqs] tokens in the last block (after this step)
  /// Sequences that sample a token this step (decodes, and prefills whose last chunk this is):
  /// index into the per-sequence arrays; logits_rows[j] is the token row whose logits it uses.
  std::vector<int32_t> sample_seqs;
  std::vector<int32_t> logits_rows;
  /// Parallel to sample_seqs: tokens that sample yields. 1, except for the last prompt chunk of
  /// a request with n > 1 (prefilled once): n, one per sequence the request forks into. The
  /// tokens handed to Scheduler::update() are sum(sample_counts) in sample order, sample j's
  /// consecutive; its k-th goes to the request's sequence index k (its first sequence is index 0,
  /// the seq_ids entry). All k draw from the same logits row, each with its own randomness.
  std::vector<int32_t> sample_counts;
  /// prompt_logprobs rows: logits_rows[sample_seqs.size() + k] is the token row of prompt
  /// position prompt_logprob_positions[k] of sequence prompt_logprob_seqs[k] (an index into the
  /// per-sequence arrays); its logits score prompt_logprob_tokens[k], the prompt token at that
  /// position + 1 (which may lie in the next chunk). The CPU runner computes logits for every
  /// logits_rows entry; the GPU runner scores the extra rows on the device
  /// (sched::PromptLogprobRow). Only the first sample_seqs.size() rows are sampled.
  std::vector<int32_t> prompt_logprob_seqs;
  std::vector<int32_t> prompt_logprob_positions;
  std::vector<int32_t> prompt_logprob_tokens;
  int32_t num_decode_seqs = 0;        ///< the first num_decode_seqs sequences are decodes
  /// Asynchronous scheduling: token rows whose input id is not known when the plan is built
  /// (token_ids holds kPlaceholderToken there). Row feed_rows[k] takes draw feed_draws[k] of
  /// the previous plan (its sampled ids in sample order), which the runner reads where that
  /// step left them (the device, or the CPU runner's worker), not from the host's token lists.
  std::vector<int32_t> feed_rows;
  std::vector<int32_t> feed_draws;
  /// token_ids of a feed row until the runner (or Engine, when the step falls back to a
  /// synchronous one) fills it: out of every vocabulary, so a row left unfilled fails loudly.
  static constexpr int32_t kPlaceholderToken = -1;

  // ---- block operations to run before the forward pass, in this order ----
  std::vector<BlockCopy> swap_in;     ///< host block → device block
  std::vector<BlockCopy> swap_out;    ///< device block → host block (run before blocks are reused)
  std::vector<BlockCopy> copy_blocks; ///< device → device (copy-on-write)

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_seqs() const { return static_cast<int32_t>(seq_ids.size()); }
  bool empty() const { return token_ids.empty(); }
  /// Draws of sample j. The scheduler always fills sample_counts; a hand-built plan (tests,
  /// benches) may leave it empty, which means one draw per sampled sequence.
  int32_t draws_of(std::size_t j) const { return sample_counts.empty() ? 1 : sample_counts[j]; }
  /// Tokens update() expects: the sum of draws_of(j) over the samples.
  int32_t num_sampled_tokens() const {
    int32_t n = 0;
    for (std::size_t j = 0; j < sample_seqs.size(); ++j) n += draws_of(j);
    return n;
  }
};

}  // namespace pie::sched
