#pragma once
/// \file nfc.hpp
/// \brief Unicode NFC normalization (canonical decomposition, canonical ordering, canonical
/// composition) over tables generated from Python's unicodedata (unicode_nfc_data.hpp).
/// Most text is already NFC: a scan for code points that could change it returns early.
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pie/tokenizer/unicode_nfc_data.hpp"
#include "pie/tokenizer/utf8.hpp"

namespace pie::tokenizer::nfc {

namespace detail {
inline constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
inline constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                     kSCount = kLCount * kNCount;

/// One bit per code point for the flagged set, built once from the range table (136 KiB).
inline const std::vector<std::uint64_t>& flagged_bits() {
  static const std::vector<std::uint64_t> bits = [] {
    std::vector<std::uint64_t> b(0x110000 / 64, 0);
    for (const auto& r : nfc_data::kFlagged)
      for (std::uint32_t c = r.first; c <= r.last; ++c) b[c >> 6] |= 1ull << (c & 63);
    return b;
  }();
  return bits;
}

inline std::uint8_t ccc(char32_t c) {
  if (c < 0x300) return 0;
  const auto* end = std::end(nfc_data::kCcc);
  const auto* it = std::upper_bound(std::begin(nfc_data::kCcc), end, c,
                                    [](char32_t v, const auto& r) { return v < r.first; });
  if (it == std::begin(nfc_data::kCcc)) return 0;
  --it;
  return c <= it->last ? it->ccc : 0;
}

inline void decompose(char32_t c, std::vector<char32_t>& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const int s = static_cast<int>(c - kSBase);
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto* end = std::end(nfc_data::kDecomp);
  const auto* it = std::lower_bound(std::begin(nfc_data::kDecomp), end, c,
                                    [](const auto& d, char32_t v) { return d.cp < v; });
  if (it == end || it->cp != c) {
    out.push_back(c);
    return;
  }
  decompose(it->a, out);
  if (it->b) decompose(it->b, out);
}

/// The primary composite of (a, b), or 0.
inline char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const std::uint64_t key = (std::uint64_t(a) << 21) | b;
  const auto* end = std::end(nfc_data::kCompose);
  const auto* it = std::lower_bound(std::begin(nfc_data::kCompose), end, key,
                                    [](const auto& p, std::uint64_t k) { return p.key < k; });
  return it != end && it->key == key ? it->cp : 0;
}
}  // namespace detail

/// True when `c` may change a string under NFC (non-zero ccc, or NFC_QC No/Maybe).
inline bool is_flagged(char32_t c) {
  if (c < 0x300) return false;
  return (detail::flagged_bits()[c >> 6] >> (c & 63)) & 1;
}

/// True when `s` (valid UTF-8) contains no flagged code point, so NFC(s) == s.
inline bool quick_check(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0xCC) {  // every code point below U+0300 is safe
      i += b < 0x80 ? 1 : 2;
      continue;
    }
    const std::size_t n = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    if (is_flagged(utf8::decode_at(s, i, n))) return false;
    i += n;
  }
  return true;
}

namespace detail {
/// Full NFC (decompose, reorder, compose) of a segment.
inline void normalize_segment(std::string_view s, std::string& r) {
  std::vector<char32_t> cps;
  cps.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8::sequence_length(s, i);
    detail::decompose(utf8::decode_at(s, i, n), cps);
    i += n;
  }
  // Canonical ordering: stable sort each run of non-starters by combining class.
  for (std::size_t i = 0; i < cps.size();) {
    if (detail::ccc(cps[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < cps.size() && detail::ccc(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](char32_t a, char32_t b) { return detail::ccc(a) < detail::ccc(b); });
    i = j;
  }
  // Canonical composition: each character joins the last starter unless blocked.
  std::vector<char32_t> out;
  out.reserve(cps.size());
  std::ptrdiff_t starter = -1;
  int last_ccc = -1;
  for (char32_t c : cps) {
    const int cc = detail::ccc(c);
    if (starter >= 0) {
      const bool blocked = !out.empty() && static_cast<std::ptrdiff_t>(out.size()) - 1 != starter &&
                           (last_ccc == 0 || last_ccc >= cc);
      if (!blocked) {
        if (char32_t p = detail::compose(out[starter], c)) {
          out[starter] = p;
          continue;
        }
      }
    }
    if (cc == 0) {
      starter = static_cast<std::ptrdiff_t>(out.size());
      last_ccc = -1;
    } else {
      last_ccc = cc;
    }
    out.push_back(c);
  }
  for (char32_t c : out) utf8::append(r, c);
}
}  // namespace detail

/// NFC of the valid UTF-8 string `s`. Only the segments around flagged code points are
/// normalized: a code point that is not flagged (ccc 0, NFC_QC Yes) never interacts with what
/// precedes it, so the text splits there without changing the result.
inline std::string normalize(std::string_view s) {
  if (quick_check(s)) return std::string(s);
  std::string r;
  r.reserve(s.size() + 8);
  std::size_t done = 0, last_safe = 0, i = 0;
  while (i < s.size()) {
    const std::size_t n = utf8::sequence_length(s, i);
    if (!is_flagged(utf8::decode_at(s, i, n))) {
      last_safe = i;
      i += n;
      continue;
    }
    // The segment runs from the last safe starter (it may compose) to the next safe code point.
    std::size_t end = i + n;
    while (end < s.size()) {
      const std::size_t m = utf8::sequence_length(s, end);
      if (!is_flagged(utf8::decode_at(s, end, m))) break;
      end += m;
    }
    const std::size_t begin = std::max(done, last_safe);
    r.append(s.substr(done, begin - done));
    detail::normalize_segment(s.substr(begin, end - begin), r);
    done = i = end;
  }
  r.append(s.substr(done));
  return r;
}

}  // namespace pie::tokenizer::nfc
