#pragma once
/// \file pretokenizer.hpp
/// \brief The Split pre-tokenizer: a regex run with PCRE2 (UTF + UCP, JIT-compiled) that cuts
/// text into pre-tokens; with Hugging Face's "Isolated" behaviour every match and every gap
/// between matches is its own pre-token.
#include <pcre2.h>

#include <memory>
#include <string>
#include <string_view>

#include "pie/core/error.hpp"

namespace pie::tokenizer {

/// \brief A compiled Split regex. Thread-safe: each thread gets its own JIT stack and match data.
class RegexSplitter {
 public:
  /// Compiles `pattern` (Hugging Face / Oniguruma syntax restricted to what PCRE2 shares).
  explicit RegexSplitter(const std::string& pattern) : pattern_(adapt(pattern)) {
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern_.data()), pattern_.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      PIE_FAIL("tokenizer: pre-tokenizer regex does not compile with PCRE2 at offset ", off, ": ",
               reinterpret_cast<const char*>(msg), " (pattern ", pattern, ")");
    }
    code_.reset(code);
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }

  /// Calls `f(piece)` for each pre-token of valid UTF-8 `text`, in order, covering all of it.
  template <class F>
  void split(std::string_view text, F&& f) const {
    auto& tls = thread_state();
    auto* md = tls.match_data;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t pos = 0, gap = 0;
    while (pos < text.size()) {
      const int rc = jit_ ? pcre2_jit_match(code_.get(), subject, text.size(), pos, 0, md, tls.context)
                          : pcre2_match(code_.get(), subject, text.size(), pos, PCRE2_NO_UTF_CHECK,
                                        md, tls.context);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      PIE_CHECK(rc > 0, "tokenizer: PCRE2 match failed with code ", rc);
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const std::size_t s = ov[0], e = ov[1];
      if (s > gap) f(text.substr(gap, s - gap));
      if (e > s) {
        f(text.substr(s, e - s));
        pos = gap = e;
      } else {
        // An empty match produces no piece; step over one character to make progress.
        pos = s + 1;
        while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      }
    }
    if (gap < text.size()) f(text.substr(gap));
  }

  const std::string& pattern() const { return pattern_; }

  /// Rewrites constructs whose meaning differs between Oniguruma (Hugging Face) and PCRE2:
  /// - `\s` / `\S`: PCRE2 10.42 counts U+180E as space, Oniguruma uses Unicode White_Space;
  ///   spell White_Space out. (`\S` inside a class is left alone.)
  /// - `(?i:...)` over ASCII literals: PCRE2's Unicode caseless matching folds U+017F (long s)
  ///   and U+212A (Kelvin) onto s and k, Oniguruma's does not; spell the cases out as classes.
  static std::string adapt(const std::string& p) {
    static constexpr const char* kSpace =
        "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
    std::string out;
    bool in_class = false;
    for (std::size_t i = 0; i < p.size();) {
      const char c = p[i];
      if (c == '\\' && i + 1 < p.size()) {
        const char e = p[i + 1];
        if (e == 's') {
          out += in_class ? std::string(kSpace) : "[" + std::string(kSpace) + "]";
        } else if (e == 'S' && !in_class) {
          out += "[^" + std::string(kSpace) + "]";
        } else {
          out.append(p, i, 2);
        }
        i += 2;
        continue;
      }
      if (in_class) {
        in_class = c != ']';
        out.push_back(c);
        ++i;
        continue;
      }
      if (c == '[') {
        in_class = true;
        out.push_back(c);
        ++i;
        if (i < p.size() && p[i] == '^') out.push_back(p[i++]);
        if (i < p.size() && p[i] == ']') out.push_back(p[i++]);  // a literal ']' first
        continue;
      }
      if (p.compare(i, 4, "(?i:") == 0) {
        const std::size_t close = p.find(')', i);
        bool simple = close != std::string::npos;
        for (std::size_t k = i + 4; simple && k < close; ++k) {
          const char x = p[k];
          simple = (x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z') || x == '|' || x == '\'';
        }
        if (simple) {
          out.append("(?:");
          for (std::size_t k = i + 4; k < close; ++k) {
            const char x = p[k];
            if ((x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z')) {
              out += {'[', static_cast<char>(x | 0x20), static_cast<char>(x & ~0x20), ']'};
            } else {
              out.push_back(x);
            }
          }
          out.push_back(')');
          i = close + 1;
          continue;
        }
      }
      out.push_back(c);
      ++i;
    }
    return out;
  }

 private:
  struct CodeFree {
    void operator()(pcre2_code* c) const { pcre2_code_free(c); }
  };
  /// Per-thread JIT stack (deep backtracking on long whitespace runs) and match data.
  struct ThreadState {
    pcre2_match_data* match_data = pcre2_match_data_create(4, nullptr);
    pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    pcre2_match_context* context = pcre2_match_context_create(nullptr);
    ThreadState() { pcre2_jit_stack_assign(context, nullptr, stack); }
    ~ThreadState() {
      pcre2_match_context_free(context);
      pcre2_jit_stack_free(stack);
      pcre2_match_data_free(match_data);
    }
  };
  static ThreadState& thread_state() {
    thread_local ThreadState s;
    return s;
  }

  std::string pattern_;
  std::unique_ptr<pcre2_code, CodeFree> code_;
  bool jit_ = false;
};

}  // namespace pie::tokenizer
