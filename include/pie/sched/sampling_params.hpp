#pragma once
/// \file sampling_params.hpp
/// \brief SamplingParams: everything that decides which tokens a request gets, validated.
/// Field meanings follow vLLM's SamplingParams.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/sched/logits_processor.hpp"
#include "pie/sched/structured_output.hpp"

namespace pie::sched {

/// The most logprobs / prompt_logprobs alternatives a request may ask for (vLLM's default
/// max_logprobs is larger; 20 is OpenAI's top_logprobs bound).
inline constexpr int kMaxLogprobs = 20;

/// \brief Sampling and stopping parameters of one request (all its n sequences).
struct SamplingParams {
  int n = 1;                         ///< sequences per request (share prompt blocks: copy-on-write)
  int max_tokens = 16;               ///< generated tokens at most
  int min_tokens = 0;                ///< EOS / stop ids suppressed before this many tokens
  float temperature = 1.0f;          ///< 0 → greedy
  float top_p = 1.0f;                ///< (0, 1]
  int top_k = 0;                     ///< 0 or -1 → off
  float min_p = 0.0f;                ///< [0, 1]
  std::optional<uint64_t> seed;      ///< per-request RNG seed; same seed → same tokens
  float presence_penalty = 0.0f;     ///< [-2, 2]
  float frequency_penalty = 0.0f;    ///< [-2, 2]
  float repetition_penalty = 1.0f;   ///< > 0; 1 → off
  std::map<int32_t, float> logit_bias;  ///< token id → bias added to its logit, [-100, 100]
  std::vector<int32_t> stop_token_ids;  ///< finish (reason stop) on any of these
  bool ignore_eos = false;           ///< keep generating past EOS
  std::optional<int> logprobs;       ///< return this many top logprobs (0 = only the chosen)
  /// Also report, for every prompt token after the first, its logprob and this many top
  /// alternatives (vLLM's prompt_logprobs: raw log_softmax of the model's logits). Such a
  /// request prefills its whole prompt (no prefix-cache hits) until they are computed.
  std::optional<int> prompt_logprobs;
  /// Edits the logits of every draw before sampling (logits_processor.hpp); null: none.
  std::shared_ptr<LogitsProcessor> logits_processor;
  /// The output must match this (a JSON schema, regex, choice, grammar); null: free text.
  /// pie::LLM and `pie serve` compile it into `logits_processor` (pie/structured/, XGrammar);
  /// an Engine driven directly refuses it without one (structured::Compiler::processor()).
  std::shared_ptr<const StructuredOutput> structured;

  /// Throws pie::Error naming the field and its allowed range.
  void validate(int vocab_size = 0) const {
    PIE_CHECK(n >= 1 && n <= 128, "n must be in [1, 128], got ", n);
    PIE_CHECK(max_tokens >= 1, "max_tokens must be at least 1, got ", max_tokens);
    PIE_CHECK(min_tokens >= 0 && min_tokens <= max_tokens,
              "min_tokens must be in [0, max_tokens=", max_tokens, "], got ", min_tokens);
    PIE_CHECK(temperature >= 0.0f && temperature <= 100.0f,
              "temperature must be in [0, 100], got ", temperature);
    PIE_CHECK(top_p > 0.0f && top_p <= 1.0f, "top_p must be in (0, 1], got ", top_p);
    PIE_CHECK(top_k >= -1, "top_k must be -1 (disable) or at least 1, got ", top_k);
    PIE_CHECK(min_p >= 0.0f && min_p <= 1.0f, "min_p must be in [0, 1], got ", min_p);
    PIE_CHECK(presence_penalty >= -2.0f && presence_penalty <= 2.0f,
              "presence_penalty must be in [-2, 2], got ", presence_penalty);
    PIE_CHECK(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f,
              "frequency_penalty must be in [-2, 2], got ", frequency_penalty);
    PIE_CHECK(repetition_penalty > 0.0f && repetition_penalty <= 2.0f,
              "repetition_penalty must be in (0, 2], got ", repetition_penalty);
    for (auto& [tok, bias] : logit_bias) {
      PIE_CHECK(bias >= -100.0f && bias <= 100.0f, "logit_bias for token ", tok,
                " must be in [-100, 100], got ", bias);
      PIE_CHECK(tok >= 0 && (vocab_size == 0 || tok < vocab_size), "logit_bias token id ", tok,
                " is out of the vocabulary [0, ", vocab_size, ")");
    }
    for (int32_t t : stop_token_ids)
      PIE_CHECK(t >= 0 && (vocab_size == 0 || t < vocab_size), "stop_token_ids: token id ", t,
                " is out of the vocabulary [0, ", vocab_size, ")");
    if (structured) {
      structured->validate();
      PIE_CHECK(logits_processor != nullptr,
                "structured_outputs: a StructuredOutput needs its compiled logits_processor "
                "(pie::structured::Compiler::processor(), which pie::LLM and pie serve call)");
    }
    if (logprobs)
      PIE_CHECK(*logprobs >= 0 && *logprobs <= kMaxLogprobs, "logprobs must be in [0, ", kMaxLogprobs, "], got ",
                *logprobs);
    if (prompt_logprobs)
      PIE_CHECK(*prompt_logprobs >= 0 && *prompt_logprobs <= kMaxLogprobs, "prompt_logprobs must be in [0, ",
                kMaxLogprobs, "], got ", *prompt_logprobs);
  }
  bool greedy() const { return temperature == 0.0f; }
};

}  // namespace pie::sched
