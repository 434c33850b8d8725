#pragma once
/// \file byte_level.hpp
/// \brief The GPT-2 ByteLevel byte <-> code point mapping: printable bytes map to themselves,
/// the other 68 bytes to U+0100 onward, so every byte string is a printable Unicode string.
/// Vocabularies spell tokens in this alphabet; pie converts them back to raw bytes at load
/// time and runs BPE on bytes.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "pie/tokenizer/utf8.hpp"

namespace pie::tokenizer::byte_level {

/// byte -> code point of its ByteLevel symbol.
inline const std::array<char32_t, 256>& byte_to_char() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

/// Code point -> byte, for code points below 324 (the mapping's range); -1 elsewhere.
inline const std::array<int, 324>& char_to_byte() {
  static const std::array<int, 324> table = [] {
    std::array<int, 324> t{};
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_to_char()[b]] = b;
    return t;
  }();
  return table;
}

/// Spells raw bytes in the ByteLevel alphabet (UTF-8 of the mapped code points).
inline std::string encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) utf8::append(out, byte_to_char()[b]);
  return out;
}

/// Maps a ByteLevel-alphabet string back to raw bytes; nullopt when a character lies outside
/// the alphabet (Hugging Face's decoder then keeps that token's UTF-8 as is).
inline std::optional<std::string> decode(std::string_view symbols) {
  std::string out;
  out.reserve(symbols.size());
  for (std::size_t i = 0; i < symbols.size();) {
    const std::size_t n = utf8::sequence_length(symbols, i);
    if (n == 0) return std::nullopt;
    const char32_t c = utf8::decode_at(symbols, i, n);
    if (c >= 324 || char_to_byte()[c] < 0) return std::nullopt;
    out.push_back(static_cast<char>(char_to_byte()[c]));
    i += n;
  }
  return out;
}

}  // namespace pie::tokenizer::byte_level
