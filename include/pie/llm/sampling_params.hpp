#pragma once
/// \file sampling_params.hpp
/// \brief pie::llm::SamplingParams: the engine's SamplingParams plus what only exists at the
/// text level (stop strings, special-token handling), as vLLM's SamplingParams carries them.
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/sched/sampling_params.hpp"

namespace pie::llm {

/// \brief Sampling parameters of LLM::generate / LLM::chat. Every engine field (n, max_tokens,
/// temperature, seed, logprobs, stop_token_ids, ...) is inherited with vLLM's meaning.
struct SamplingParams : sched::SamplingParams {
  std::vector<std::string> stop;            ///< finish (reason stop) when the text contains one
  bool include_stop_str_in_output = false;  ///< keep the matched stop string in the text
  bool skip_special_tokens = true;          ///< leave special tokens out of the text

  /// Throws pie::Error naming the field (the engine's checks, then the text-level ones).
  void validate(int vocab_size = 0) const {
    sched::SamplingParams::validate(vocab_size);
    for (size_t i = 0; i < stop.size(); ++i) PIE_CHECK(!stop[i].empty(), "stop: stop string ", i, " is empty");
  }
};

}  // namespace pie::llm
