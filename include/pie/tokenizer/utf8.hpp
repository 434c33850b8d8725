#pragma once
/// \file utf8.hpp
/// \brief UTF-8 helpers shared by the tokenizer, the detokenizer and the template engine:
/// code-point decode/encode, validation, and the lossy repair that replaces each maximal
/// invalid subpart with U+FFFD (the rule of Python's `errors="replace"` and Rust's
/// `from_utf8_lossy`, so our decode matches Hugging Face byte for byte).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pie::tokenizer::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

/// Appends code point `cp` encoded as UTF-8.
inline void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

/// Length of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there are not a
/// complete valid sequence. `*maximal` (optional) receives the length of the maximal subpart
/// of an ill-formed sequence (>= 1) — how many bytes one U+FFFD replaces — or, when the input
/// ends inside a sequence that is valid so far, the number of bytes left (`*truncated` = true).
inline std::size_t sequence_length(std::string_view s, std::size_t i, std::size_t* maximal = nullptr,
                                   bool* truncated = nullptr) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (truncated) *truncated = false;
  if (maximal) *maximal = 1;
  if (b0 < 0x80) return 1;
  std::size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;        // no overlongs
    if (b0 == 0xED) hi = 0x9F;        // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;        // <= U+10FFFF
  } else {
    return 0;
  }
  for (std::size_t k = 1; k < need; ++k) {
    if (i + k >= s.size()) {
      if (maximal) *maximal = k;
      if (truncated) *truncated = true;
      return 0;
    }
    const auto b = static_cast<unsigned char>(s[i + k]);
    const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) {
      if (maximal) *maximal = k;
      return 0;
    }
  }
  return need;
}

/// Decodes the code point of a valid sequence of length `len` at s[i].
inline char32_t decode_at(std::string_view s, std::size_t i, std::size_t len) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data() + i);
  switch (len) {
    case 1: return p[0];
    case 2: return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    case 3: return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    default:
      return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
  }
}

/// True when `s` is entirely valid UTF-8. ASCII runs take the 8-bytes-at-a-time path.
inline bool is_valid(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    while (i + 8 <= s.size()) {
      std::uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= s.size()) break;
    const std::size_t n = sequence_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

/// Replaces every maximal ill-formed subpart (and a truncated tail) with U+FFFD.
inline std::string repair(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t maximal;
    const std::size_t n = sequence_length(s, i, &maximal);
    if (n) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out.append(kReplacement);
      i += maximal;
    }
  }
  return out;
}

/// Length of the longest prefix of `s` whose lossy decoding can no longer change when more
/// bytes are appended: everything except a trailing sequence that is valid so far but
/// incomplete. Streaming decoders emit `repair(s.substr(0, stable_prefix(s)))` and keep the rest.
inline std::size_t stable_prefix(std::string_view s) {
  // A valid-so-far incomplete sequence is at most 3 bytes long, so only the tail matters.
  const std::size_t from = s.size() > 3 ? s.size() - 3 : 0;
  for (std::size_t i = from; i < s.size(); ++i) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0xC2 || b > 0xF4) continue;  // not a lead byte
    std::size_t maximal;
    bool truncated;
    // Lead bytes are never continuation bytes, so no earlier sequence can swallow this one.
    if (sequence_length(s, i, &maximal, &truncated) == 0 && truncated) return i;
  }
  return s.size();
}

}  // namespace pie::tokenizer::utf8
