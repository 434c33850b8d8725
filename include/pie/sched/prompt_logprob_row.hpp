#pragma once
/// \file prompt_logprob_row.hpp
/// \brief PromptLogprobRow: the fixed-size record a device runner returns for one
/// prompt_logprobs row of a StepPlan (StepPlan::prompt_logprob_*): the scored prompt token's
/// logprob and rank and the row's top kMaxLogprobs alternatives. Fixed size so the device writes
/// one record per row and the host reads them back in one copy; the engine keeps the first n
/// alternatives of each request (its SamplingParams::prompt_logprobs).
#include <cstdint>

#include "pie/sched/sampling_params.hpp"

namespace pie::sched {

/// \brief One prompt token's score (see file comment). Values are raw log_softmax of the fp32
/// logits; top is ordered by (logprob desc, id asc), an id of −1 past a vocabulary smaller than
/// kMaxLogprobs.
struct PromptLogprobRow {
  float logprob = 0.f;
  int32_t rank = 1;  ///< 1 + tokens with a larger logit, or an equal one and a lower id
  int32_t top_ids[kMaxLogprobs];
  float top_logprobs[kMaxLogprobs];
};

}  // namespace pie::sched
