#pragma once
/// \file stop_strings.hpp
/// \brief Stop strings over a sequence's detokenized text, streaming-safe: text that may still
/// become the start of a stop string is held back, so a streamed delta is never cut later.
/// (pie/server/stop_strings.hpp does the same for the server; pie::text code cannot depend on
/// the server layer, hence this copy of the rule.)
#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pie::llm {

/// \brief Per-sequence stop-string state: push() text deltas, get back the text safe to emit.
class StopStrings {
 public:
  StopStrings() = default;
  StopStrings(std::vector<std::string> stops, bool include_stop) : stops_(std::move(stops)), include_(include_stop) {
    for (const auto& s : stops_) max_len_ = std::max(max_len_, s.size());
  }

  /// Appends `delta`; returns what may be emitted. After a match the result ends at the cut
  /// (before the stop string, or after it with include_stop) and later calls return nothing.
  std::string push(std::string_view delta) {
    if (matched_) return {};
    const size_t old_len = text_.size();
    text_.append(delta);
    if (stops_.empty()) return take(text_.size());
    // A new match ends inside the new text, so it starts at most max_len-1 bytes before it.
    const size_t from = old_len >= max_len_ - 1 ? old_len - (max_len_ - 1) : 0;
    size_t best = std::string::npos, best_len = 0;
    for (const auto& s : stops_)
      if (const size_t p = text_.find(s, from); p != std::string::npos && p < best) best = p, best_len = s.size();
    if (best != std::string::npos) {
      matched_ = true;
      matched_str_ = text_.substr(best, best_len);
      text_.resize(include_ ? best + best_len : best);
      return take(text_.size());
    }
    // Hold back the longest suffix that is a proper prefix of a stop string.
    size_t hold = 0;
    for (const auto& s : stops_)
      for (size_t k = std::min(s.size() - 1, text_.size()); k > hold; --k)
        if (std::string_view(text_).substr(text_.size() - k) == std::string_view(s).substr(0, k)) {
          hold = k;
          break;
        }
    return take(text_.size() - hold);
  }

  /// Releases the held-back text (the sequence ended for another reason).
  std::string flush() { return matched_ ? std::string{} : take(text_.size()); }

  bool matched() const { return matched_; }
  const std::string& matched_string() const { return matched_str_; }
  /// The sequence's text so far (after a match: up to the cut).
  const std::string& text() const { return text_; }

 private:
  std::string take(size_t upto) {
    if (upto <= sent_) return {};
    std::string out = text_.substr(sent_, upto - sent_);
    sent_ = upto;
    return out;
  }

  std::vector<std::string> stops_;
  bool include_ = false;
  size_t max_len_ = 0;
  std::string text_;
  size_t sent_ = 0;
  bool matched_ = false;
  std::string matched_str_;
};

}  // namespace pie::llm
