#pragma once
/// \file compile_trace.hpp
/// \brief CompileTrace: where a structured request's first-token time goes, from the moment
/// its grammar is asked for (Compiler::compile_async) to its first mask: the compile's wait in
/// the queue, the compile, when the first draw asked for the mask (the prefill and scheduling in
/// between run beside the compile), how long that draw waited for the grammar, and the matcher
/// plus first mask. Printed as one line on stderr when PIE_TRACE_STRUCTURED is set (read
/// once); `pie serve`'s benchmark (bench/device_structured.sh) sums these lines up.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace pie::structured {

/// \brief Time points of one request's grammar, from compile_async to its first mask.
struct CompileTrace {
  using Clock = std::chrono::steady_clock;
  std::string key;         ///< what was compiled (kind and the first bytes of its source)
  bool cached = false;     ///< compiled before: a cache lookup
  Clock::time_point asked;           ///< compile_async called
  Clock::time_point started;         ///< a worker took the compile
  Clock::time_point compiled;        ///< the compiled grammar is ready
  Clock::time_point draw_asked;      ///< the first draw asked for the mask
  Clock::time_point grammar_waited;  ///< ... and had the grammar
  Clock::time_point first_mask;      ///< ... and had the mask

  /// Whether PIE_TRACE_STRUCTURED is set (read once).
  static bool enabled() {
    static const bool on = [] {
      const char* v = std::getenv("PIE_TRACE_STRUCTURED");
      return v && *v && std::string(v) != "0";
    }();
    return on;
  }
  static double ms(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  }
  /// One line, every time relative to `asked`.
  std::string line() const {
    char b[512];
    std::snprintf(b, sizeof b,
                  "pie structured trace: %s queue %.2f ms, compile %.2f ms (done +%.2f), first draw asked +%.2f, "
                  "waited %.2f ms, matcher+first mask %.2f ms (done +%.2f)%s",
                  key.c_str(), ms(asked, started), ms(started, compiled), ms(asked, compiled), ms(asked, draw_asked),
                  ms(draw_asked, grammar_waited), ms(grammar_waited, first_mask), ms(asked, first_mask),
                  cached ? " [cached]" : "");
    return b;
  }
};

}  // namespace pie::structured
