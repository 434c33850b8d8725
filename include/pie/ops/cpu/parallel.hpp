#pragma once
/// \file parallel.hpp
/// \brief parallel_for over an index range for the CPU ops. Uses OpenMP when the translation
/// unit is compiled with it (link OpenMP::OpenMP_CXX) and runs serially otherwise, so the
/// header-only library needs no threading dependency. Every op splits work so that each output
/// element is computed by exactly one iteration in a fixed order: results never depend on the
/// thread count (batch invariance relies on it).
#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace pie::ops::cpu {

/// Threads the CPU ops may use (OpenMP's max, 1 without OpenMP).
inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Sets the thread count of later ops (n <= 0 leaves the OpenMP default).
inline void set_num_threads(int n) {
#if defined(_OPENMP)
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

/// Below this many scalar operations (~0.1 ms on one core) a loop runs serially: an OpenMP
/// team's fork/join costs microseconds, and on a loaded machine a descheduled team member
/// stalls the whole barrier (10-30 ms measured), so tiny models (the embedded default decodes
/// at hidden 128) run on one thread.
inline constexpr int64_t kMinParallelWork = int64_t{1} << 20;

/// Calls f(i) for i in [0, n). Iterations must be independent. `work_per_item` (scalar
/// operations per iteration, roughly) decides whether a thread team is worth starting.
template <class F>
inline void parallel_for(int64_t n, F&& f, int64_t work_per_item = 1) {
#if defined(_OPENMP)
  if (n >= 2 && n * work_per_item >= kMinParallelWork && max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#else
  (void)work_per_item;
#endif
  for (int64_t i = 0; i < n; ++i) f(i);
}

}  // namespace pie::ops::cpu
