#pragma once
/// \file error.hpp
/// \brief pie's one exception type and the PIE_CHECK macro that raises it.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace pie {

/// \brief Every error pie raises. The message names what was wrong (file, tensor, field, value).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
[[noreturn]] inline void raise(const char* file, int line, Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  (void)file;
  (void)line;
  throw Error(os.str());
}
}  // namespace detail

}  // namespace pie

/// PIE_CHECK(cond, "message ", value, ...): throws pie::Error with the streamed message.
#define PIE_CHECK(cond, ...)                                   \
  do {                                                         \
    if (!(cond)) ::pie::detail::raise(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

/// PIE_FAIL("message ", value, ...): throws pie::Error unconditionally.
#define PIE_FAIL(...) ::pie::detail::raise(__FILE__, __LINE__, __VA_ARGS__)
