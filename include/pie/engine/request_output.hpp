#pragma once
/// \file request_output.hpp
/// \brief What Engine::step() returns: per request, the tokens each of its sequences produced
/// this step, their logprobs when asked, and whether it finished.
#include <cstdint>
#include <utility>
#include <vector>

#include "pie/sched/finish_reason.hpp"

namespace pie {

/// \brief Log-probability of one sampled token and the top-n alternatives (after penalties,
/// before temperature/top-k/top-p, as vLLM reports by default).
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.f;
  std::vector<std::pair<int32_t, float>> top;  ///< descending by logprob
};

/// \brief One prompt token's logprob (vLLM's prompt_logprobs entry): raw log_softmax of the
/// model's logits at the previous position, its 1-based rank in that distribution, and the top-n
/// alternatives (descending; ties by lower id).
struct PromptLogprob {
  int32_t token = 0;
  float logprob = 0.f;
  int32_t rank = 1;
  std::vector<std::pair<int32_t, float>> top;
};

/// \brief One sequence's progress in one step.
struct SequenceOutput {
  int index = 0;                          ///< 0..n-1 within its request
  std::vector<int32_t> new_tokens;        ///< tokens produced this step (usually one)
  std::vector<TokenLogprob> logprobs;     ///< parallel to new_tokens when logprobs were asked
  sched::FinishReason finish = sched::FinishReason::None;
  int32_t stop_token = -1;                ///< the stop/EOS id that finished it, if any
};

/// \brief One request's progress in one step.
struct RequestOutput {
  uint64_t request_id = 0;
  int32_t prompt_tokens = 0;
  int32_t cached_prompt_tokens = 0;       ///< prompt tokens served from the prefix cache
  std::vector<SequenceOutput> seqs;       ///< only sequences that changed this step
  /// SamplingParams::prompt_logprobs: prompt tokens 1.. (the first has no logprob), all in the
  /// request's first output.
  std::vector<PromptLogprob> prompt_logprobs;
  bool finished = false;                  ///< every sequence of the request has finished
};

}  // namespace pie
