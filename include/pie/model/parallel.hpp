#pragma once
/// \file parallel.hpp
/// \brief parallel_items: the one work-sharing loop weight loading and dummy-weight generation
/// use. Items are claimed from an atomic counter, so uneven tensor sizes balance themselves and
/// the result never depends on the thread count.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace pie::model {

/// Threads for host-side weight work: all hardware threads (the GPU machine has 16, CI has 2).
inline unsigned weight_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

/// Runs fn(i) for every i in [0, n) on up to `threads` threads (the caller is one of them).
/// After each item the caller's thread invokes progress(items_done) so a progress bar is drawn
/// from one thread only. The first exception thrown by any fn stops the others' claiming of new
/// items and is rethrown here.
template <class Fn, class Progress>
void parallel_items(size_t n, Fn&& fn, Progress&& progress, unsigned threads = weight_threads()) {
  std::atomic<size_t> next{0}, done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&](bool caller) {
    for (size_t i; !failed.load(std::memory_order_relaxed) && (i = next.fetch_add(1)) < n;) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
      size_t d = done.fetch_add(1) + 1;
      if (caller) progress(d);
    }
  };
  size_t workers = std::min<size_t>(std::max(1u, threads), std::max<size_t>(n, 1));
  unsigned extra = static_cast<unsigned>(workers - 1);
  std::vector<std::thread> pool;
  pool.reserve(extra);
  for (unsigned t = 0; t < extra; ++t) pool.emplace_back(work, false);
  work(true);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  progress(done.load());
}

/// parallel_items without progress reporting.
template <class Fn>
void parallel_items(size_t n, Fn&& fn, unsigned threads = weight_threads()) {
  parallel_items(n, std::forward<Fn>(fn), [](size_t) {}, threads);
}

}  // namespace pie::model
