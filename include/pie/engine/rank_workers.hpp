#pragma once
/// \file rank_workers.hpp
/// \brief RankWorkers: one persistent thread per tensor-parallel rank, driven in lockstep by
/// one controlling thread. run(job) publishes `job` under a new epoch, every rank runs job(r)
/// on its own thread, and run() returns when all ranks are done.
///
/// Why persistent threads: a rank's GPU context, NCCL communicator and CUDA graphs are bound to
/// the thread that built them (ncclCommInitRank blocks until every rank joins, so ranks must be
/// constructed concurrently on distinct threads), and a step must not pay for thread creation.
///
/// Failure: a job that throws on rank r calls `on_failure` (which must wake every rank blocked
/// in a collective — CpuCommGroup::abort, ncclCommAbort) and run() then throws one pie::Error
/// naming each failed rank; the workers are poisoned and every later run() throws too, since
/// the ranks' states (KV caches, communicators) can no longer be assumed consistent.
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "pie/core/error.hpp"

namespace pie::engine {

/// \brief N worker threads executing the same job per epoch (see file comment).
class RankWorkers {
 public:
  /// `on_failure()` is called (from the failing rank's thread) when a job throws.
  RankWorkers(int size, std::function<void()> on_failure)
      : size_(size), on_failure_(std::move(on_failure)), errors_(size) {
    PIE_CHECK(size >= 1, "RankWorkers: size must be >= 1, got ", size);
    for (int r = 0; r < size; ++r) threads_.emplace_back([this, r] { loop(r); });
  }
  RankWorkers(const RankWorkers&) = delete;
  RankWorkers& operator=(const RankWorkers&) = delete;
  ~RankWorkers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      ++epoch_;
    }
    start_.notify_all();
    for (auto& t : threads_) t.join();
  }

  int size() const { return size_; }
  bool failed() const { return failed_; }

  /// Runs job(rank) on every rank's thread and waits for all of them. `job` is read in place
  /// (no copy per rank). Throws pie::Error if any rank threw (now or in an earlier run).
  void run(const std::function<void(int)>& job) {
    PIE_CHECK(!failed_, "tensor-parallel group unusable: ", failure_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      done_ = 0;
      ++epoch_;
    }
    start_.notify_all();
    {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, [&] { return done_ == size_; });
      job_ = nullptr;
    }
    std::ostringstream msg;
    for (int r = 0; r < size_; ++r)
      if (!errors_[r].empty()) {
        if (!failed_) msg << "tensor-parallel rank failure:";
        failed_ = true;
        msg << " [rank " << r << ": " << errors_[r] << "]";
      }
    if (failed_) {
      failure_ = msg.str();
      PIE_FAIL(failure_);
    }
  }

 private:
  void loop(int r) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        start_.wait(lock, [&] { return epoch_ != seen; });
        seen = epoch_;
        if (stop_) return;
        job = job_;
      }
      try {
        (*job)(r);
      } catch (const std::exception& e) {
        fail(r, e.what());
      } catch (...) {
        fail(r, "unknown exception");
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++done_;
      }
      done_cv_.notify_all();
    }
  }
  void fail(int r, std::string what) {
    errors_[r] = std::move(what);  // rank r's slot only; read by run() after done_ == size_
    if (on_failure_) on_failure_();
  }

  int size_;
  std::function<void()> on_failure_;
  std::vector<std::string> errors_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable start_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t epoch_ = 0;
  int done_ = 0;
  bool stop_ = false;
  bool failed_ = false;
  std::string failure_;
};

}  // namespace pie::engine
