#pragma once
/// \file logits_processor.hpp
/// \brief LogitsProcessor: the engine's seam for editing a request's logits before sampling —
/// structured outputs (a grammar's token mask), banned words, research hooks. A request carries
/// one (SamplingParams::logits_processor); each draw of each of its sequences calls process()
/// with that sequence's tokens so far and its logits row, which the processor edits in place
/// (−∞ forbids a token). Then the sampler applies the request's penalties, bias and temperature
/// as usual. Steps with such a request sample on the host (the device sampler returns only ids),
/// except a TokenMaskProcessor's (below): its mask is applied where the row is sampled.
///
/// One processor serves all n sequences of its request: keep per-sequence state keyed by
/// `seq_index`. It is called on the engine's thread, once per draw, in sample order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace pie::sched {

/// \brief Edits logits before sampling (see file comment).
class LogitsProcessor {
 public:
  virtual ~LogitsProcessor() = default;
  /// `prompt` and `output` are the sequence's prompt and generated tokens so far; `logits` its
  /// row over the whole vocabulary.
  virtual void process(int seq_index, std::span<const int32_t> prompt, std::span<const int32_t> output,
                       std::span<float> logits) = 0;
  /// False while the processor is still being prepared (its grammar compiling on another
  /// thread); process()/fill_mask() then wait for it. The scheduler starts such a request only
  /// when no running sequence would wait with it (Scheduler::schedule, step 4). Thread-safe.
  virtual bool ready() const { return true; }
};

/// Words of a packed token bitmask over `vocab_size` tokens: bit (t % 32) of word t / 32 is set
/// when token t is allowed (XGrammar's layout).
inline int bitmask_words(int vocab_size) { return (vocab_size + 31) / 32; }

/// Sets every logit whose bit in `mask` is clear to −∞ (the CPU twin of the CUDA kernel in
/// ops/cuda/token_bitmask.cuh).
inline void apply_token_bitmask(std::span<float> logits, std::span<const int32_t> mask) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const size_t v = logits.size();
  for (size_t w = 0; w < mask.size() && w * 32 < v; ++w) {
    const uint32_t bits = static_cast<uint32_t>(mask[w]);
    if (bits == 0xffffffffu) continue;
    const size_t end = std::min(v, w * 32 + 32);
    for (size_t t = w * 32; t < end; ++t)
      if (!((bits >> (t - w * 32)) & 1u)) logits[t] = ninf;
  }
}

/// \brief A LogitsProcessor whose whole edit is a token mask (a grammar's allowed tokens). The
/// engine may ask for the mask alone (fill_mask) and apply it wherever the row is sampled, so a
/// masked request keeps the device sampler; process() applies it on the host.
class TokenMaskProcessor : public LogitsProcessor {
 public:
  /// Fills `mask` (bitmask_words(vocab) words) for the next draw of sequence `seq_index`;
  /// returns false when nothing is masked this draw (mask left unspecified).
  virtual bool fill_mask(int seq_index, std::span<const int32_t> prompt, std::span<const int32_t> output,
                         std::span<int32_t> mask) = 0;
  void process(int seq_index, std::span<const int32_t> prompt, std::span<const int32_t> output,
               std::span<float> logits) override {
    scratch_.resize(static_cast<size_t>(bitmask_words(static_cast<int>(logits.size()))));
    if (fill_mask(seq_index, prompt, output, scratch_)) apply_token_bitmask(logits, scratch_);
  }

 private:
  std::vector<int32_t> scratch_;
};

}  // namespace pie::sched
