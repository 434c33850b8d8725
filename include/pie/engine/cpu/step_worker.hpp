#pragma once
/// \file step_worker.hpp
/// \brief StepWorker: one thread that runs a CPU rank's launched steps in launch order — the
/// CPU's stand-in for a GPU stream under asynchronous scheduling. submit() returns at once,
/// wait() blocks until the oldest submitted job has finished and rethrows what it threw.
///
/// Why a thread rather than running the job in wait(): the engine's protocol (plan step N+1
/// while step N computes, feed N's sampled ids to N+1 where N left them) is only tested if
/// step N really is still computing, on another thread, while the host plans N+1.
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

#include "pie/core/error.hpp"

namespace pie::engine::cpu {

/// \brief An in-order job queue with one worker thread (see file comment).
class StepWorker {
 public:
  /// `on_failure()` runs on the worker when a job throws (a tensor-parallel group's abort, so
  /// the other ranks' workers leave their collectives instead of waiting for this one).
  explicit StepWorker(std::function<void()> on_failure = {}) : on_failure_(std::move(on_failure)) {
    thread_ = std::thread([this] { loop(); });
  }
  StepWorker(const StepWorker&) = delete;
  StepWorker& operator=(const StepWorker&) = delete;
  ~StepWorker() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  /// Queues `job` after every job submitted before it.
  void submit(std::function<void()> job) {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back({std::move(job), false, nullptr});
    }
    cv_.notify_all();
  }
  /// Waits for the oldest unwaited job; rethrows its exception.
  void wait() {
    std::unique_lock lock(mu_);
    PIE_CHECK(!jobs_.empty(), "StepWorker::wait: no job was submitted");
    cv_.wait(lock, [&] { return jobs_.front().done; });
    std::exception_ptr e = jobs_.front().error;
    jobs_.pop_front();
    if (e) std::rethrow_exception(e);
  }
  /// Jobs submitted and not yet waited for.
  size_t in_flight() const {
    std::lock_guard lock(mu_);
    return jobs_.size();
  }

 private:
  struct Job {
    std::function<void()> run;
    bool done;
    std::exception_ptr error;
  };
  void loop() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || next_job() != nullptr; });
      Job* j = next_job();
      if (!j) return;  // stopping with nothing left to run
      std::function<void()> run = std::move(j->run);
      lock.unlock();
      std::exception_ptr err;
      try {
        run();
      } catch (...) {
        err = std::current_exception();
        if (on_failure_) on_failure_();
      }
      lock.lock();
      j = next_job();  // still the job just run: every job before it is done, it is not
      j->error = err;
      j->done = true;
      cv_.notify_all();
    }
  }
  /// The first job not yet run, or nullptr. Jobs before it are done (run in order).
  Job* next_job() {
    size_t next = 0;
    while (next < jobs_.size() && jobs_[next].done) ++next;
    return next < jobs_.size() ? &jobs_[next] : nullptr;
  }

  std::function<void()> on_failure_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace pie::engine::cpu
