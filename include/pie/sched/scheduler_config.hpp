#pragma once
/// \file scheduler_config.hpp
/// \brief The scheduler's knobs, spelled as vLLM spells them.
#include <algorithm>
#include <cstdint>

#include "pie/core/error.hpp"

namespace pie::sched {

/// \brief What to do with a sequence's KV blocks when the pool runs out.
enum class PreemptionMode { Recompute, Swap };

/// \brief Scheduler configuration (vLLM's flags of the same names).
struct SchedulerConfig {
  int max_num_seqs = 256;             ///< sequences running at once
  int max_num_batched_tokens = 8192;  ///< tokens computed per step (decodes + prefill chunks)
  int max_model_len = 4096;           ///< prompt + output tokens of one sequence
  bool enable_chunked_prefill = true; ///< split long prompts across steps
  /// vLLM's long_prefill_token_threshold: a sequence computes at most this many prompt tokens
  /// per step (0: no cap). Keeps one long prompt from taking a whole step.
  int long_prefill_token_threshold = 0;
  /// Decode-first budget (pie's own knob, vLLM has none): a step that carries running decodes
  /// adds at most this many prefill tokens (0: up to max_num_batched_tokens, vLLM's behaviour;
  /// kAutoPrefillBudget: scaled with the decodes, see prefill_budget_with_decodes()).
  /// A prefill token costs about as much compute as a decode token but stalls every running
  /// stream for the length of the step, so capping it bounds the inter-token latency spikes that
  /// new arrivals cause; steps without decodes still take the whole max_num_batched_tokens.
  int max_prefill_tokens_with_decodes = 0;
  /// max_prefill_tokens_with_decodes' "auto": the budget follows the number of running decodes.
  static constexpr int kAutoPrefillBudget = -1;
  /// auto's floor, in tokens. Below roughly the GEMM ridge (about 190 tokens for bf16 weights on
  /// an H200: 790 TFLOP/s over 4.2 TB/s, 2 FLOP per 2-byte weight) a step costs the weight stream
  /// whatever its token count, so prefill tokens up to there are nearly free for the decodes.
  int auto_prefill_budget_floor = 256;
  bool enable_prefix_caching = true;  ///< reuse full blocks by content hash
  PreemptionMode preemption_mode = PreemptionMode::Recompute;
  /// vLLM's async_scheduling: schedule() may run once more before the last plan's update(), so
  /// the host plans step N+1 while step N runs. A decode of N+1 whose token N has not been
  /// sampled yet gets a placeholder row (StepPlan::feed_rows) that the runner fills on the
  /// device from step N's sampled ids. Off: a second schedule() before update() is an error.
  bool async_scheduling = false;

  void validate() const {
    PIE_CHECK(max_num_seqs >= 1, "max_num_seqs must be at least 1, got ", max_num_seqs);
    PIE_CHECK(max_model_len >= 1, "max_model_len must be at least 1, got ", max_model_len);
    PIE_CHECK(max_num_batched_tokens >= max_num_seqs, "max_num_batched_tokens (", max_num_batched_tokens,
              ") must be at least max_num_seqs (", max_num_seqs, ")");
    PIE_CHECK(long_prefill_token_threshold >= 0, "long_prefill_token_threshold must not be negative, got ",
              long_prefill_token_threshold);
    PIE_CHECK(max_prefill_tokens_with_decodes >= 0 || max_prefill_tokens_with_decodes == kAutoPrefillBudget,
              "max_prefill_tokens_with_decodes must be 0 (off), positive, or auto (", kAutoPrefillBudget, "), got ",
              max_prefill_tokens_with_decodes);
    PIE_CHECK(auto_prefill_budget_floor >= 1, "auto_prefill_budget_floor must be at least 1, got ",
              auto_prefill_budget_floor);
    PIE_CHECK(enable_chunked_prefill || max_num_batched_tokens >= max_model_len,
              "without chunked prefill, max_num_batched_tokens (", max_num_batched_tokens,
              ") must be at least max_model_len (", max_model_len, ")");
  }

  /// The prefill tokens a step with `decodes` running decodes may add (0: no cap).
  /// Auto: max(floor, 3·decodes/2). In the compute-bound regime a step of D decodes plus P prompt
  /// tokens takes about (D + P)/D of the decode-only step plus its attention, so P ≈ D keeps the
  /// spike near 2× the median; a closed loop with prompt/output length ratio r needs r·D prompt
  /// tokens per step on average to keep its seats full, so 3D/2 leaves room for r = 1 without
  /// starving admission. Measured on the H200 in docs/benchmarks.md (issue 15).
  int prefill_budget_with_decodes(int decodes) const {
    if (max_prefill_tokens_with_decodes != kAutoPrefillBudget) return max_prefill_tokens_with_decodes;
    return std::max(auto_prefill_budget_floor, decodes + decodes / 2);
  }
};

}  // namespace pie::sched
