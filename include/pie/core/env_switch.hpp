#pragma once
/// \file env_switch.hpp
/// \brief env_switch: a 0/1 switch read from the environment (and env_count, a count), the one
/// parser of pie's run-time switches (the GPU forward's fusions, decode attention's plan options, the decode graphs'
/// context classes), so that every switch takes the same values and refuses others the same way.
#include <cstdlib>
#include <string>
#include <string_view>

#include "pie/core/error.hpp"

namespace pie {

/// Whether an environment value leaves its switch at the default: unset or empty.
inline bool env_unset(const char* value) { return value == nullptr || *value == '\0'; }

/// A 0/1 environment switch: unset or empty → `unset` (off unless a switch is on by default),
/// "0" → false, "1" → true; anything else is refused with a message naming the variable.
inline bool env_switch(const char* name, const char* value, bool unset = false) {
  if (env_unset(value)) return unset;
  const std::string_view v(value);
  PIE_CHECK(v == "0" || v == "1", name, " must be 0 or 1, got '", v, "'");
  return v == "1";
}

/// A count from the environment: unset or empty → `unset`; a whole number from 0 to 2^20 written
/// in decimal digits alone; anything else is refused with a message naming the variable.
inline int env_count(const char* name, const char* value, int unset) {
  if (env_unset(value)) return unset;
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  PIE_CHECK(*value >= '0' && *value <= '9' && *end == '\0' && n >= 0 && n <= (1L << 20), name,
            " must be a non-negative whole number, got '", std::string(value), "'");
  return static_cast<int>(n);
}

}  // namespace pie
