#pragma once
/// \file auth.hpp
/// \brief API-key check for the /v1 routes: `Authorization: Bearer <key>` compared in constant
/// time, so response timing leaks neither the key's length nor how many leading bytes matched.
#include <cstdint>
#include <string>
#include <string_view>

namespace pie::server {

/// True when a and b are equal. Runs over max(|a|, |b|) bytes whatever they contain; the
/// length difference is folded into the result instead of returning early.
inline bool constant_time_equal(std::string_view a, std::string_view b) {
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  // volatile keeps the compiler from turning the loop into an early-exit memcmp.
  volatile uint8_t diff = static_cast<uint8_t>(a.size() != b.size());
  for (size_t i = 0; i < n; ++i) {
    const uint8_t x = i < a.size() ? static_cast<uint8_t>(a[i]) : 0;
    const uint8_t y = i < b.size() ? static_cast<uint8_t>(b[i]) : 0;
    diff = static_cast<uint8_t>(diff | (x ^ y));
  }
  return diff == 0;
}

/// \brief The configured key (empty = no auth) and the check of one Authorization header.
class ApiKeyAuth {
 public:
  explicit ApiKeyAuth(std::string key = {}) : key_(std::move(key)) {}

  bool enabled() const { return !key_.empty(); }

  /// True when auth is off or `authorization` is "Bearer <the key>" (scheme case-insensitive,
  /// as RFC 7235 says).
  bool allows(std::string_view authorization) const {
    if (!enabled()) return true;
    constexpr std::string_view kScheme = "bearer ";
    bool scheme_ok = authorization.size() >= kScheme.size();
    for (size_t i = 0; scheme_ok && i < kScheme.size(); ++i) {
      char c = authorization[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      scheme_ok = c == kScheme[i];
    }
    std::string_view token = scheme_ok ? authorization.substr(kScheme.size()) : std::string_view{};
    while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
    while (!token.empty() && (token.back() == ' ' || token.back() == '\r')) token.remove_suffix(1);
    // Always compare, even on a bad scheme, so the two failures take the same time.
    const bool key_ok = constant_time_equal(token, key_);
    return scheme_ok && key_ok;
  }

 private:
  std::string key_;
};

}  // namespace pie::server
