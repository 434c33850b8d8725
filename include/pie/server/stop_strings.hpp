#pragma once
/// \file stop_strings.hpp
/// \brief Stop-string matching on detokenized text, streaming-safe. Text that could still turn
/// out to be the start of a stop string is held back, so a client never receives part of a stop
/// string that is later cut off (vLLM's behaviour). A match cuts the text before the stop
/// string, or after it with include_stop_str_in_output.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pie::server {

/// \brief Per-sequence stop-string state: feed text deltas, get what may be sent.
class StopStringMatcher {
 public:
  StopStringMatcher() = default;
  StopStringMatcher(std::vector<std::string> stops, bool include_stop)
      : stops_(std::move(stops)), include_(include_stop) {
    for (const auto& s : stops_) max_len_ = std::max(max_len_, s.size());
  }

  /// Appends `delta`; returns the text now safe to send. After a match, matched() is true and
  /// the returned text ends at the cut; later calls return nothing.
  std::string push(std::string_view delta) {
    if (matched_) return {};
    const size_t old_len = text_.size();
    text_.append(delta);
    if (!stops_.empty()) {
      // A new match must end inside the new text, so it starts at most max_len-1 bytes before it.
      const size_t from = old_len >= max_len_ - 1 ? old_len - (max_len_ - 1) : 0;
      size_t best = std::string::npos, best_len = 0;
      for (const auto& s : stops_) {
        const size_t p = text_.find(s, from);
        if (p != std::string::npos && p < best) best = p, best_len = s.size();
      }
      if (best != std::string::npos) {
        matched_ = true;
        matched_str_ = text_.substr(best, best_len);
        const size_t cut = include_ ? best + best_len : best;
        text_.resize(cut);
        return take(cut);
      }
    }
    // Hold back the longest suffix that is a proper prefix of some stop string.
    size_t hold = 0;
    for (const auto& s : stops_)
      for (size_t k = std::min(s.size() - 1, text_.size()); k > hold; --k)
        if (std::string_view(text_).substr(text_.size() - k) == std::string_view(s).substr(0, k)) {
          hold = k;
          break;
        }
    return take(text_.size() - hold);
  }

  /// The text held back, released when the sequence ends for another reason.
  std::string flush() { return matched_ ? std::string{} : take(text_.size()); }

  bool matched() const { return matched_; }
  const std::string& matched_string() const { return matched_str_; }
  /// All text of the sequence so far (after a match: up to the cut).
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

}  // namespace pie::server
