#pragma once
/// \file logits_processor.hpp
/// \brief LogitsProcessor: the engine's seam for editing a request's logits before sampling —
/// structured outputs (a grammar's token mask), banned words, research hooks. A request carries
/// one (SamplingParams::logits_processor); each draw of each of its sequences calls process()
/// with that sequence's tokens so far and its logits row, which the processor edits in place
/// (−∞ forbids a token). Then the sampler applies the request's penalties, bias and temperature
/// as usual. Steps with such a request sample on the host (the device sampler returns only ids).
///
/// One processor serves all n sequences of its request: keep per-sequence state keyed by
/// `seq_index`. It is called on the engine's thread, once per draw, in sample order.
#include <cstdint>
#include <span>

namespace pie::sched {

/// \brief Edits logits before sampling (see file comment).
class LogitsProcessor {
 public:
  virtual ~LogitsProcessor() = default;
  /// `prompt` and `output` are the sequence's prompt and generated tokens so far; `logits` its
  /// row over the whole vocabulary.
  virtual void process(int seq_index, std::span<const int32_t> prompt, std::span<const int32_t> output,
                       std::span<float> logits) = 0;
};

}  // namespace pie::sched
