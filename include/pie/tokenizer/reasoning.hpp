#pragma once
/// \file reasoning.hpp
/// \brief Separates a reasoning model's `<think>...</think>` from its answer, incrementally
/// (for streamed `reasoning_content` deltas) or in one shot. Output follows the Qwen3 chat
/// template's own reading of a turn: reasoning is the text between the tags with surrounding
/// newlines stripped, content is what follows `</think>` with leading newlines stripped.
#include <string>
#include <string_view>

namespace pie::tokenizer {

/// \brief Streaming `<think>` splitter. Text that might be the start of a tag (or newlines that
/// might be stripped) is held back until the next feed() or finish() decides it.
class ReasoningParser {
 public:
  /// What one feed()/finish() releases.
  struct Delta {
    std::string reasoning_delta;
    std::string content_delta;
  };
  /// A complete output, split.
  struct Split {
    std::string reasoning;
    std::string content;
  };

  /// `starts_in_reasoning`: the prompt already opened `<think>` (templates that prefill it), so
  /// output is reasoning until `</think>`. Otherwise reasoning only if the output begins with
  /// `<think>` (after optional whitespace); text without it is all content.
  explicit ReasoningParser(bool starts_in_reasoning = false, std::string open_tag = "<think>",
                           std::string close_tag = "</think>")
      : open_(std::move(open_tag)), close_(std::move(close_tag)),
        state_(starts_in_reasoning ? State::ReasoningStart : State::Start) {}

  Delta feed(std::string_view text) {
    buf_.append(text);
    Delta d;
    process(d, false);
    return d;
  }
  /// End of output: releases anything held back.
  Delta finish() {
    Delta d;
    process(d, true);
    return d;
  }
  /// One-shot split of a complete output.
  static Split split(std::string_view text, bool starts_in_reasoning = false) {
    ReasoningParser p(starts_in_reasoning);
    Delta a = p.feed(text), b = p.finish();
    return {a.reasoning_delta + b.reasoning_delta, a.content_delta + b.content_delta};
  }

 private:
  enum class State { Start, ReasoningStart, Reasoning, ContentStart, Content };

  static bool is_prefix_of(std::string_view s, std::string_view tag) { return tag.substr(0, s.size()) == s; }

  void process(Delta& d, bool final) {
    for (;;) {
      switch (state_) {
        case State::Start: {
          const std::size_t ws = buf_.find_first_not_of(" \t\r\n");
          if (ws == std::string::npos) {
            if (!final) return;
            d.content_delta += buf_;  // whitespace-only output
            buf_.clear();
            return;
          }
          const std::string_view rest = std::string_view(buf_).substr(ws);
          if (rest.size() >= open_.size() && rest.substr(0, open_.size()) == open_) {
            buf_.erase(0, ws + open_.size());
            state_ = State::ReasoningStart;
            continue;
          }
          if (!final && is_prefix_of(rest, open_)) return;  // may still become <think>
          state_ = State::Content;
          continue;
        }
        case State::ReasoningStart: {
          const std::size_t nl = buf_.find_first_not_of('\n');
          if (nl == std::string::npos) {
            buf_.clear();
            if (!final) return;
            state_ = State::Reasoning;
            continue;
          }
          buf_.erase(0, nl);
          state_ = State::Reasoning;
          continue;
        }
        case State::Reasoning: {
          const std::size_t end = buf_.find(close_);
          if (end != std::string::npos) {
            std::string r = buf_.substr(0, end);
            while (!r.empty() && r.back() == '\n') r.pop_back();
            // Held newlines were interior if more text follows them; else they precede the tag.
            if (!r.empty()) d.reasoning_delta += std::string(held_nl_, '\n') + r;
            held_nl_ = 0;
            buf_.erase(0, end + close_.size());
            state_ = State::ContentStart;
            continue;
          }
          if (final) {
            d.reasoning_delta += std::string(held_nl_, '\n') + buf_;  // unterminated: all reasoning
            held_nl_ = 0;
            buf_.clear();
            return;
          }
          // Emit all but a possible tag prefix and trailing newlines (stripped if the tag follows).
          std::size_t keep = 0;
          for (std::size_t k = std::min(buf_.size(), close_.size() - 1); k > 0; --k)
            if (is_prefix_of(std::string_view(buf_).substr(buf_.size() - k), close_)) {
              keep = k;
              break;
            }
          std::size_t emit = buf_.size() - keep;
          std::size_t nl = 0;
          while (emit > 0 && buf_[emit - 1] == '\n') --emit, ++nl;
          if (emit > 0) {
            d.reasoning_delta += std::string(held_nl_, '\n') + buf_.substr(0, emit);
            held_nl_ = 0;
          }
          held_nl_ += nl;
          buf_.erase(0, emit + nl);
          return;
        }
        case State::ContentStart: {
          const std::size_t nl = buf_.find_first_not_of('\n');
          if (nl == std::string::npos) {
            buf_.clear();
            return;
          }
          buf_.erase(0, nl);
          state_ = State::Content;
          continue;
        }
        case State::Content:
          d.content_delta += buf_;
          buf_.clear();
          return;
      }
    }
  }
  std::string open_, close_;
  State state_;
  std::string buf_;
  std::size_t held_nl_ = 0;  // trailing reasoning newlines not yet known to precede </think>
};

}  // namespace pie::tokenizer
