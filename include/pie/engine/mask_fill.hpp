#pragma once
/// \file mask_fill.hpp
/// \brief Filling a step's token bitmasks on the host, in parallel: one task per request (a
/// request's processor keeps per-sequence state and is not thread-safe; different requests
/// share nothing), spread over a small pool of worker threads. The CUDA runner calls this while
/// the device runs the step's forward (CudaRunner::execute_sample_masked).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "pie/engine/step_outputs.hpp"
#include "pie/sched/logits_processor.hpp"
#include "pie/sched/scheduler.hpp"

namespace pie::engine {

/// \brief A fixed set of worker threads running index ranges (see file comment).
class TaskPool {
 public:
  explicit TaskPool(int threads) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  ~TaskPool() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  /// Runs f(i) for every i in [0, n) on the workers and the calling thread; returns when all
  /// have run, rethrowing the first exception.
  void run(int n, const std::function<void(int)>& f) {
    if (n <= 0) return;
    {
      std::lock_guard lk(mu_);
      f_ = &f;
      n_ = n;
      next_.store(0);
      left_ = n;
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    drain();
    std::unique_lock lk(mu_);
    done_cv_.wait(lk, [&] { return left_ == 0; });
    f_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }
  int size() const { return static_cast<int>(workers_.size()); }

 private:
  void drain() {
    for (;;) {
      const int i = next_.fetch_add(1);
      if (i >= n_) return;
      try {
        (*f_)(i);
      } catch (...) {
        std::lock_guard lk(mu_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard lk(mu_);
      if (--left_ == 0) done_cv_.notify_all();
    }
  }
  void work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      drain();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* f_ = nullptr;
  int n_ = 0, left_ = 0;
  std::atomic<int> next_{0};
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

/// Fills masks [draws][words] and flags [draws] for `plan`'s draws in sample order: a draw of a
/// request with a TokenMaskProcessor gets its processor's mask (flag 1 when it masks anything),
/// every other draw flag 0. Requests run in parallel on `pool` (null: inline).
inline void fill_step_masks(const sched::Scheduler& s, const sched::StepPlan& plan, int words, std::span<int32_t> masks,
                            std::span<int32_t> flags, TaskPool* pool) {
  struct Item {
    size_t draw;
    const sched::Sequence* seq;
    int index;
  };
  std::vector<std::vector<Item>> tasks;
  std::unordered_map<const sched::Request*, size_t> task_of;
  size_t draw = 0;
  for_each_draw(s, plan, [&](size_t, const sched::Sequence& seq, int index) {
    const size_t d = draw++;
    flags[d] = 0;
    if (!dynamic_cast<sched::TokenMaskProcessor*>(seq.request->params.logits_processor.get())) return;
    auto [it, added] = task_of.try_emplace(seq.request, tasks.size());
    if (added) tasks.emplace_back();
    tasks[it->second].push_back({d, &seq, index});
  });
  auto run = [&](int t) {
    for (const Item& it : tasks[static_cast<size_t>(t)]) {
      auto* p = static_cast<sched::TokenMaskProcessor*>(it.seq->request->params.logits_processor.get());
      flags[it.draw] = p->fill_mask(it.index, it.seq->prompt(), it.seq->output(),
                                    masks.subspan(it.draw * static_cast<size_t>(words), static_cast<size_t>(words)))
                           ? 1
                           : 0;
    }
  };
  if (pool && tasks.size() > 1) {
    pool->run(static_cast<int>(tasks.size()), run);
  } else {
    for (size_t t = 0; t < tasks.size(); ++t) run(static_cast<int>(t));
  }
}

}  // namespace pie::engine
