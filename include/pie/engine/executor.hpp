#pragma once
/// \file executor.hpp
/// \brief Executor<Runner>: the ranks an Engine drives — one runner (the CPU, or one GPU) run on
/// the caller's thread, or the N runners of a tensor-parallel group, one persistent worker
/// thread each (RankWorkers), executing the same StepPlan in lockstep and meeting in their
/// communicators' collectives.
///
/// KV blocks are counted per rank: every rank reports how many blocks of ITS layout (its KV
/// heads) fit its budget, and the group holds the minimum, which every rank then allocates, so
/// a block id means the same slot on every rank.
///
/// A rank that throws (load, allocation, forward) aborts the group's communicators, so ranks
/// blocked in a collective throw instead of waiting, and the call throws one pie::Error naming
/// the rank; the executor is unusable afterwards.
#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/engine/rank_group.hpp"
#include "pie/engine/rank_workers.hpp"

namespace pie::engine {

/// \brief One runner, or a tensor-parallel group of them (see file comment).
template <class Runner>
class Executor {
 public:
  /// Builds every rank (concurrently, each on its own thread, when group.size > 1), sizes the KV
  /// cache to the smallest rank (or opt.num_kv_blocks) and allocates it on every rank.
  Executor(const EngineOptions& opt, RankGroup group) : group_(std::move(group)), ranks_(group_.size) {
    PIE_CHECK(group_.size >= 1, "tensor parallel size must be >= 1, got ", group_.size);
    PIE_CHECK(group_.size == 1 || group_.make_comm, "a tensor-parallel group of ", group_.size,
              " ranks needs communicators (parallel/groups.hpp)");
    if (group_.size > 1) workers_ = std::make_unique<RankWorkers>(group_.size, group_.abort);
    rank_blocks_.assign(group_.size, 0);
    // Capacity is asked on the rank's own thread: its device is current there.
    run([&](int r) {
      ranks_[r] = std::make_unique<Runner>(opt, RankSpec{r, group_.size > 1 ? &group_ : nullptr},
                                           group_.kv_budget_of(r));
      rank_blocks_[r] = ranks_[r]->max_kv_blocks();
    });
    for (int r = 1; r < size(); ++r)
      PIE_CHECK(ranks_[r]->global_config().vocab_size == ranks_[0]->global_config().vocab_size, "rank ", r,
                " loaded a different model than rank 0");
    blocks_ = opt.num_kv_blocks > 0 ? opt.num_kv_blocks : *std::min_element(rank_blocks_.begin(), rank_blocks_.end());
    PIE_CHECK(blocks_ > 0, "the KV cache holds no block: kv_cache_bytes (", opt.kv_cache_bytes,
              ") or the GPU memory left is smaller than one block (per rank: ", join(rank_blocks_), ")");
    for (int r = 0; r < size(); ++r)
      PIE_CHECK(blocks_ <= rank_blocks_[r], "num_kv_blocks ", blocks_, " exceeds what rank ", r, " can hold (",
                rank_blocks_[r], ")");
    host_blocks_ = ranks_[0]->wanted_host_blocks(opt);
    for (int r = 1; r < size(); ++r) host_blocks_ = std::min(host_blocks_, ranks_[r]->wanted_host_blocks(opt));
    // Allocation may capture CUDA graphs, whose warm-up runs collectives: all ranks at once.
    run([&](int r) { ranks_[r]->allocate_kv(blocks_, host_blocks_); });
  }
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;
  ~Executor() {
    // Ranks are destroyed on their own threads (device contexts and communicators are theirs).
    if (workers_ && !workers_->failed()) {
      try { run([&](int r) { ranks_[r].reset(); }); } catch (...) {}
    }
  }

  int size() const { return group_.size; }
  Runner& rank(int r) { return *ranks_.at(r); }
  const Runner& rank(int r) const { return *ranks_.at(r); }
  int num_blocks() const { return blocks_; }
  int num_host_blocks() const { return host_blocks_; }
  /// What each rank's budget alone would hold.
  const std::vector<int>& rank_max_kv_blocks() const { return rank_blocks_; }

  /// Runs job(r) on every rank (its own thread under TP, inline for one rank) and waits.
  void run(const std::function<void(int)>& job) {
    if (!workers_) { job(0); return; }
    workers_->run(job);
  }

 private:
  static std::string join(const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s;
  }

  RankGroup group_;
  std::vector<std::unique_ptr<Runner>> ranks_;
  std::unique_ptr<RankWorkers> workers_;  // declared after ranks_: joined before ranks_ die
  std::vector<int> rank_blocks_;
  int blocks_ = 0, host_blocks_ = 0;
};

}  // namespace pie::engine
