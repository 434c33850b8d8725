#pragma once
/// \file detokenizer.hpp
/// \brief Streaming detokenization: feed generated ids one at a time, get back only text that
/// can no longer change — never half a UTF-8 character. The concatenation of all push()
/// results and flush() equals decode() of the same ids, including the U+FFFD that decode()
/// puts in place of invalid bytes.
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "pie/tokenizer/tokenizer.hpp"
#include "pie/tokenizer/utf8.hpp"

namespace pie::tokenizer {

/// \brief Incremental id -> text for one sequence. Byte-level BPE tokens are byte strings, so
/// the only state is the (at most 3-byte) tail of an unfinished UTF-8 sequence.
class IncrementalDetokenizer {
 public:
  /// `prompt_ids` (optional): when the prompt ends inside a UTF-8 sequence (a character split
  /// across the prompt/completion boundary), those trailing bytes are carried so the first
  /// generated token can complete the character instead of yielding U+FFFD.
  IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens,
                         std::span<const std::int32_t> prompt_ids = {})
      : tok_(tok), skip_special_(skip_special_tokens) {
    std::string tail;
    // Only the last few tokens can hold an unfinished sequence.
    const std::size_t from = prompt_ids.size() > 4 ? prompt_ids.size() - 4 : 0;
    for (std::size_t i = from; i < prompt_ids.size(); ++i) tok_.append_token_bytes(prompt_ids[i], skip_special_, tail);
    const std::size_t stable = utf8::stable_prefix(tail);
    if (stable < tail.size()) pending_ = tail.substr(stable);
  }

  /// Adds one generated id; returns the text completed by it (possibly empty).
  std::string push(std::int32_t id) {
    tok_.append_token_bytes(id, skip_special_, pending_);
    const std::size_t stable = utf8::stable_prefix(pending_);
    if (stable == 0) return {};
    std::string out = utf8::is_valid(std::string_view(pending_).substr(0, stable))
                          ? pending_.substr(0, stable)
                          : utf8::repair(std::string_view(pending_).substr(0, stable));
    pending_.erase(0, stable);
    return out;
  }

  /// Ends the stream: an unfinished trailing sequence becomes U+FFFD.
  std::string flush() {
    std::string out = utf8::repair(pending_);
    pending_.clear();
    return out;
  }

  /// Bytes held back because they may be the start of a character.
  std::size_t pending_bytes() const { return pending_.size(); }

 private:
  Tokenizer tok_;  // a shared handle: copying is cheap and avoids dangling references
  bool skip_special_;
  std::string pending_;
};

}  // namespace pie::tokenizer
