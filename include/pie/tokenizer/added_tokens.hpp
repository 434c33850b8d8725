#pragma once
/// \file added_tokens.hpp
/// \brief Added (and special) tokens: matched in the raw text before normalization and BPE,
/// leftmost-longest like Hugging Face's Aho-Corasick pass, and never split.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pie::tokenizer {

/// \brief One added token of tokenizer.json's `added_tokens`.
struct AddedToken {
  std::string content;
  std::int32_t id = -1;
  bool special = false;     ///< skipped by decode(skip_special_tokens=true)
  bool normalized = false;  ///< matched against normalized text rather than the raw input
};

/// \brief Finds added tokens in text. The token set is small (tens), so a first-byte filter
/// and a direct compare beat a general automaton on the text sizes a server sees.
class AddedTokenMatcher {
 public:
  void add(std::string content, std::int32_t id) {
    if (content.empty()) return;
    first_[static_cast<unsigned char>(content[0])] = true;
    tokens_.push_back({std::move(content), id});
  }
  bool empty() const { return tokens_.empty(); }

  /// Calls `f(piece, id)` over `text` in order: id >= 0 for an added token, -1 for plain text.
  template <class F>
  void split(std::string_view text, F&& f) const {
    if (tokens_.empty()) {
      if (!text.empty()) f(text, -1);
      return;
    }
    std::size_t start = 0, i = 0;
    while (i < text.size()) {
      if (!first_[static_cast<unsigned char>(text[i])]) {
        ++i;
        continue;
      }
      const Entry* best = nullptr;
      for (const auto& t : tokens_)
        if (t.content.size() <= text.size() - i &&
            text.compare(i, t.content.size(), t.content) == 0 &&
            (!best || t.content.size() > best->content.size()))
          best = &t;
      if (!best) {
        ++i;
        continue;
      }
      if (i > start) f(text.substr(start, i - start), -1);
      f(text.substr(i, best->content.size()), best->id);
      i += best->content.size();
      start = i;
    }
    if (start < text.size()) f(text.substr(start), -1);
  }

 private:
  struct Entry {
    std::string content;
    std::int32_t id;
  };
  std::vector<Entry> tokens_;
  std::array<bool, 256> first_{};
};

}  // namespace pie::tokenizer
