#pragma once
/// \file embedded.hpp
/// \brief The embedded default tokenizer: 512 ids, no files. Ids 0..255 are the byte symbols
/// in GPT-2 ByteLevel order, 256..499 the first 244 Qwen3 merges (so ids 0..499 coincide with
/// Qwen3's), 500..508 ChatML / reasoning / tool special tokens, 509..511 reserved. It uses the
/// Qwen3 NFC + Split pipeline, so it behaves like a Qwen3 tokenizer with a tiny vocabulary.
#include <string>

#include "pie/tokenizer/embedded_vocab.hpp"
#include "pie/tokenizer/tokenizer_class.hpp"

namespace pie::tokenizer {

/// \brief Ids of the embedded tokenizer's special tokens.
struct EmbeddedIds {
  static constexpr std::int32_t kEndOfText = 500, kImStart = 501, kImEnd = 502, kThink = 503,
                                kThinkEnd = 504, kToolCall = 505, kToolCallEnd = 506,
                                kToolResponse = 507, kToolResponseEnd = 508, kVocabSize = 512;
};

inline Tokenizer Tokenizer::embedded() {
  static const Tokenizer tok = [] {
    TokenizerSpec s;
    // GPT-2 order: the 188 printable bytes ascending, then the other 68 ascending.
    std::int32_t id = 0;
    for (int pass = 0; pass < 2; ++pass)
      for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        if (printable == (pass == 0)) s.model.add_token(std::string(1, static_cast<char>(b)), id++);
      }
    for (const auto& m : embedded_data::kMerges) {
      s.model.add_token(s.model.bytes_of(m[0]) + s.model.bytes_of(m[1]), id++);
      s.model.add_merge(m[0], m[1]);
    }
    const struct {
      const char* text;
      bool special;
    } added[] = {{"<|endoftext|>", true}, {"<|im_start|>", true},    {"<|im_end|>", true},
                 {"<think>", false},      {"</think>", false},       {"<tool_call>", false},
                 {"</tool_call>", false}, {"<tool_response>", false}, {"</tool_response>", false},
                 {"<|reserved_0|>", true}, {"<|reserved_1|>", true},  {"<|reserved_2|>", true}};
    for (const auto& a : added) s.added.push_back({a.text, id++, a.special, false});
    s.nfc = true;
    s.split_patterns.push_back(kQwenSplitPattern);
    return Tokenizer(std::move(s));
  }();
  return tok;
}

}  // namespace pie::tokenizer
