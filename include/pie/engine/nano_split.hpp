#pragma once
/// \file nano_split.hpp
/// \brief Nano-batch overlap inside a step (NanoFlow's idea, issue 15): the GPU runner may cut
/// a large step into two nano-batches of whole sequences that run the same forward on two
/// streams, so that the memory-bound decode attention of one runs under the compute-bound GEMMs
/// of the other. This header is the host side: whether a step is worth splitting (a cost model
/// over the step's FLOPs and bytes against the card's ceilings) and where it is cut (which
/// sequences go to which half). The CUDA runner (engine/cuda/cuda_runner.cuh) runs the halves.
///
/// The cut: half A takes the first `a` decode sequences, half B the rest — the remaining decodes
/// and every prefill chunk, so a chunk always stays whole in one half. Samples stay in plan
/// order (A's draws first), so the halves' logits land in disjoint, consecutive rows of the
/// step's logits and the sampler runs once over the step, unchanged.
#include <algorithm>
#include <cstdint>
#include <optional>

#include "pie/core/error.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::engine {

/// \brief The work of one step as the cost model sees it.
struct NanoStepCost {
  double flops_per_row = 0;       ///< 2·(linear weights) (+ lm_head for a sampled row): FLOPs of one token row
  double weight_bytes = 0;        ///< bytes of the weights every forward streams once
  double kv_bytes_per_token = 0;  ///< K/V bytes attention reads per context token (all layers)
};

/// \brief The switch and the ceilings the split is chosen against.
struct NanoSplitOptions {
  int nano_batches = 1;        ///< 1: never split; 2: split steps the cost model (or min_rows) accepts
  /// > 0: split every step with at least this many decode rows, whatever the cost model says
  /// (tests and A/B runs); 0: the cost model decides.
  int min_rows = 0;
  double gemm_flops = 8.1e14;  ///< FLOP/s (an H200's measured bf16 GEMM ceiling, docs/benchmarks.md)
  double copy_bw = 4.2e12;     ///< bytes/s (its measured copy ceiling)
  /// A split must promise at least this fraction less time than the serial step: the ideal
  /// below ignores the halves' smaller, less efficient GEMMs.
  double min_gain = 0.10;
};

/// \brief Predicted step seconds (ideal, each resource at its ceiling) of `rows` token rows over
/// `kv_tokens` context tokens, unsplit and split into two overlapped halves.
struct NanoPrediction {
  double serial = 0;  ///< max(GEMM FLOPs / peak, weights / BW) + K/V / BW: today's order
  double split = 0;   ///< max(GEMM FLOPs / peak, (2 · weights + K/V) / BW): both halves overlapped
};

inline NanoPrediction predict_nano(const NanoStepCost& c, const NanoSplitOptions& o, int64_t rows, int64_t kv_tokens) {
  const double compute = c.flops_per_row * static_cast<double>(rows) / o.gemm_flops;
  const double weights = c.weight_bytes / o.copy_bw;
  const double kv = c.kv_bytes_per_token * static_cast<double>(kv_tokens) / o.copy_bw;
  NanoPrediction p;
  p.serial = std::max(compute, weights) + kv;
  p.split = std::max(compute, 2 * weights + kv);
  return p;
}

/// Whether a step of `rows` token rows with `decode_rows` decodes over `kv_tokens` context
/// tokens is worth two nano-batches (see NanoSplitOptions).
inline bool nano_worth_splitting(const NanoStepCost& c, const NanoSplitOptions& o, int64_t rows, int64_t decode_rows,
                                 int64_t kv_tokens) {
  if (o.nano_batches < 2 || decode_rows < 2) return false;
  if (o.min_rows > 0) return decode_rows >= o.min_rows;
  const NanoPrediction p = predict_nano(c, o, rows, kv_tokens);
  return p.split < (1 - o.min_gain) * p.serial;
}

/// Decode rows of half A for a step of `rows` token rows of which `decodes` decode: about half
/// the rows (from 32 rows a multiple of 8: GEMM tiles), at least 1 and leaving half B at least
/// one row (all `decodes` when B holds prefill rows enough). 0 when the step cannot be cut (fewer
/// than two rows, or no decode).
inline int nano_rows_a(int rows, int decodes) {
  if (decodes < 1 || rows < 2) return 0;
  int a = rows >= 32 ? (rows / 2 + 7) / 8 * 8 : rows / 2;
  a = std::min(a, decodes);
  if (a >= rows) a = rows - 1;  // an all-decode step: B keeps at least one row
  return std::max(a, 1);
}

/// \brief One half of a split step.
struct NanoHalf {
  sched::StepPlan plan;  ///< the half's sequences, rows and block table (no block operations)
  int sample_begin = 0;  ///< its first draw among the step's draws (its logits' first row)
  int num_samples = 0;   ///< its draws
};

/// \brief A step cut in two (split_plan).
struct NanoSplit {
  NanoHalf half[2];
};

namespace detail {
/// Sequences [s0, s1) of `p` as a plan of their own (rows, block table and samples rebased;
/// feed draws kept: they index the previous step's draws).
inline NanoHalf slice_plan(const sched::StepPlan& p, int s0, int s1, int sample_begin) {
  NanoHalf h;
  sched::StepPlan& q = h.plan;
  const int r0 = p.cu_query_lens[s0], r1 = p.cu_query_lens[s1];
  const int b0 = p.kv_indptr[s0], b1 = p.kv_indptr[s1];
  q.token_ids.assign(p.token_ids.begin() + r0, p.token_ids.begin() + r1);
  q.positions.assign(p.positions.begin() + r0, p.positions.begin() + r1);
  q.slot_mapping.assign(p.slot_mapping.begin() + r0, p.slot_mapping.begin() + r1);
  q.seq_ids.assign(p.seq_ids.begin() + s0, p.seq_ids.begin() + s1);
  q.query_lens.assign(p.query_lens.begin() + s0, p.query_lens.begin() + s1);
  q.context_lens.assign(p.context_lens.begin() + s0, p.context_lens.begin() + s1);
  q.kv_last_page_len.assign(p.kv_last_page_len.begin() + s0, p.kv_last_page_len.begin() + s1);
  for (int i = s0; i <= s1; ++i) {
    q.cu_query_lens.push_back(p.cu_query_lens[i] - r0);
    q.kv_indptr.push_back(p.kv_indptr[i] - b0);
  }
  q.kv_indices.assign(p.kv_indices.begin() + b0, p.kv_indices.begin() + b1);
  q.num_decode_seqs = std::clamp(p.num_decode_seqs - s0, 0, s1 - s0);
  for (size_t j = 0; j < p.sample_seqs.size(); ++j) {
    const int s = p.sample_seqs[j];
    if (s < s0 || s >= s1) continue;
    q.sample_seqs.push_back(s - s0);
    q.logits_rows.push_back(p.logits_rows[j] - r0);
    if (!p.sample_counts.empty()) q.sample_counts.push_back(p.sample_counts[j]);
  }
  for (size_t k = 0; k < p.feed_rows.size(); ++k) {
    const int r = p.feed_rows[k];
    if (r < r0 || r >= r1) continue;
    q.feed_rows.push_back(r - r0);
    q.feed_draws.push_back(p.feed_draws[k]);
  }
  h.sample_begin = sample_begin;
  h.num_samples = q.num_sampled_tokens();
  return h;
}
}  // namespace detail

/// Cuts `p` after its first `a` decode sequences (nano_rows_a picks `a`). std::nullopt when it
/// cannot be cut that way: a out of [1, decodes], nothing left for half B, prompt_logprobs rows
/// (they are scored over the whole step's hidden states), or samples not in sequence order.
inline std::optional<NanoSplit> split_plan(const sched::StepPlan& p, int a) {
  const int S = p.num_seqs(), D = p.num_decode_seqs;
  if (a < 1 || a > D || a >= S) return std::nullopt;
  if (!p.prompt_logprob_tokens.empty() || p.logits_rows.size() != p.sample_seqs.size()) return std::nullopt;
  if (!std::is_sorted(p.sample_seqs.begin(), p.sample_seqs.end())) return std::nullopt;
  PIE_CHECK(static_cast<int>(p.cu_query_lens.size()) == S + 1 && static_cast<int>(p.kv_indptr.size()) == S + 1,
            "split_plan: a plan of ", S, " sequences with ", p.cu_query_lens.size(), " cu_query_lens and ",
            p.kv_indptr.size(), " kv_indptr entries");
  NanoSplit s;
  s.half[0] = detail::slice_plan(p, 0, a, 0);
  s.half[1] = detail::slice_plan(p, a, S, s.half[0].num_samples);
  return s;
}

}  // namespace pie::engine
