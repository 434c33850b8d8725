#pragma once
/// \file scheduler_config.hpp
/// \brief The scheduler's knobs, spelled as vLLM spells them.
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
  bool enable_prefix_caching = true;  ///< reuse full blocks by content hash
  PreemptionMode preemption_mode = PreemptionMode::Recompute;

  void validate() const {
    PIE_CHECK(max_num_seqs >= 1, "max_num_seqs must be at least 1, got ", max_num_seqs);
    PIE_CHECK(max_model_len >= 1, "max_model_len must be at least 1, got ", max_model_len);
    PIE_CHECK(max_num_batched_tokens >= max_num_seqs, "max_num_batched_tokens (", max_num_batched_tokens,
              ") must be at least max_num_seqs (", max_num_seqs, ")");
    PIE_CHECK(enable_chunked_prefill || max_num_batched_tokens >= max_model_len,
              "without chunked prefill, max_num_batched_tokens (", max_num_batched_tokens,
              ") must be at least max_model_len (", max_model_len, ")");
  }
};

}  // namespace pie::sched
