#pragma once
/// \file outputs.hpp
/// \brief What LLM::generate and LLM::chat return (vLLM's RequestOutput / CompletionOutput) and
/// what their streaming callback receives.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pie/engine/request_output.hpp"

namespace pie::llm {

/// \brief One generated sequence of a prompt.
struct CompletionOutput {
  int index = 0;                         ///< 0..n-1 within its prompt
  std::string text;                      ///< detokenized, cut at a matched stop string
  std::vector<int32_t> token_ids;        ///< every generated id (the one completing a stop string included)
  std::string finish_reason;             ///< "stop", "length" or "abort" (OpenAI's spelling)
  std::string stop_string;               ///< the stop string that matched, if one did
  int32_t stop_token = -1;               ///< the EOS / stop_token_ids id that finished it, if one did
  std::optional<double> cumulative_logprob;  ///< sum of logprobs[i].logprob, when logprobs were asked
  std::vector<TokenLogprob> logprobs;    ///< parallel to token_ids, when logprobs were asked
};

/// \brief Everything one prompt produced.
struct PromptOutput {
  std::string prompt;                    ///< the prompt text (chat: the rendered template); empty for id prompts
  std::vector<int32_t> prompt_token_ids;
  int32_t num_cached_tokens = 0;         ///< prompt tokens served from the prefix cache
  std::vector<CompletionOutput> outputs; ///< n of them, by index
};

/// \brief What the streaming callback receives each time a sequence makes progress. The
/// text and token deltas of a sequence concatenate to its final text and token_ids.
struct Delta {
  size_t prompt = 0;                     ///< index into the prompts (or conversations) given
  int sequence = 0;                      ///< 0..n-1
  std::string_view text;                 ///< new text (may be empty: held back, or half a character)
  std::span<const int32_t> token_ids;    ///< new ids
  std::string_view finish_reason;        ///< empty until the sequence finishes, then as in CompletionOutput
};

}  // namespace pie::llm
