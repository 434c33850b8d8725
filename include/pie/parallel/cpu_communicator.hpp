#pragma once
/// \file cpu_communicator.hpp
/// \brief CpuCommGroup / CpuCommunicator: the Communicator over threads of one process, host
/// memory. It simulates a tensor-parallel group on the CPU (one thread per rank) so the sharded
/// forward can be checked against the unsharded model without GPUs.
///
/// Reductions add the ranks' values in rank order (0 + 1 + … + N−1) in float, so every rank
/// gets bit-identical results, as NCCL's all-reduce guarantees within one call; ranks that
/// diverged would sample different tokens.
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/core/communicator.hpp"

namespace pie::parallel {

class CpuCommunicator;

/// \brief The shared state of an in-process group of `size` ranks.
class CpuCommGroup {
 public:
  explicit CpuCommGroup(int size) : size_(size), send_(size, nullptr), recv_(size, nullptr) {
    PIE_CHECK(size >= 1, "CpuCommGroup: size must be >= 1, got ", size);
  }
  int size() const { return size_; }

  /// Runs fn(comm) for every rank on its own thread (rank 0 on the caller's) and waits for all.
  /// If a rank throws, the group is aborted (ranks blocked in a collective throw too, instead
  /// of waiting forever) and the first exception is rethrown here.
  void run(const std::function<void(CpuCommunicator&)>& fn);

  /// Wakes every rank blocked in a collective with a pie::Error; later collectives fail too.
  void abort() {
    std::lock_guard<std::mutex> lock(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  friend class CpuCommunicator;

  /// Blocks until all ranks arrive (a reusable generation barrier).
  void barrier() {
    std::unique_lock<std::mutex> lock(mu_);
    PIE_CHECK(!aborted_, "CpuCommGroup: aborted (another rank failed)");
    const uint64_t gen = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
    PIE_CHECK(!aborted_, "CpuCommGroup: aborted (another rank failed)");
  }

  int size_;
  std::vector<const void*> send_;
  std::vector<void*> recv_;
  std::vector<size_t> counts_ = std::vector<size_t>(size_, 0);
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
};

/// \brief Rank `rank` of a CpuCommGroup (host buffers, synchronous collectives).
class CpuCommunicator : public Communicator {
 public:
  CpuCommunicator(CpuCommGroup& group, int rank) : g_(group), rank_(rank) {
    PIE_CHECK(rank >= 0 && rank < group.size(), "CpuCommunicator: rank ", rank, " out of [0, ",
              group.size(), ")");
  }
  int rank() const override { return rank_; }
  int size() const override { return g_.size(); }
  bool device_memory() const override { return false; }

  void all_reduce_sum(void* data, size_t count, DType dtype) override {
    check_dtype(dtype);
    publish(data, nullptr, count);
    // Phase 1: every rank reads all inputs into its own scratch (nobody writes yet).
    sum_.assign(count, 0.0f);
    for (int r = 0; r < size(); ++r) {
      PIE_CHECK(g_.counts_[r] == count, "CpuCommunicator::all_reduce_sum: rank ", r, " passed ",
                g_.counts_[r], " elements, rank ", rank_, " passed ", count);
      const void* src = g_.send_[r];
      for (size_t i = 0; i < count; ++i) sum_[i] += load(src, i, dtype);
    }
    g_.barrier();
    // Phase 2: every rank writes its own buffer.
    for (size_t i = 0; i < count; ++i) store(data, i, dtype, sum_[i]);
    g_.barrier();
  }
  using Communicator::all_reduce_sum;

  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    check_dtype(dtype);
    publish(send, recv, count);
    const size_t es = dtype_size(dtype);
    for (int r = 0; r < size(); ++r) {
      PIE_CHECK(g_.counts_[r] == count, "CpuCommunicator::all_gather: rank ", r, " passed ",
                g_.counts_[r], " elements, rank ", rank_, " passed ", count);
      std::memcpy(static_cast<unsigned char*>(recv) + r * count * es, g_.send_[r], count * es);
    }
    g_.barrier();  // no rank may reuse its send buffer before all have copied it
  }
  using Communicator::all_gather;

 private:
  static void check_dtype(DType d) {
    PIE_CHECK(d == DType::F32 || d == DType::F16 || d == DType::BF16,
              "CpuCommunicator: dtype must be F32, F16 or BF16");
  }
  static float load(const void* p, size_t i, DType d) {
    switch (d) {
      case DType::F32: return static_cast<const float*>(p)[i];
      case DType::F16: return to_float(static_cast<const f16*>(p)[i]);
      default: return to_float(static_cast<const bf16*>(p)[i]);
    }
  }
  static void store(void* p, size_t i, DType d, float v) {
    switch (d) {
      case DType::F32: static_cast<float*>(p)[i] = v; break;
      case DType::F16: static_cast<f16*>(p)[i] = from_float<f16>(v); break;
      default: static_cast<bf16*>(p)[i] = from_float<bf16>(v); break;
    }
  }
  /// Posts this rank's buffers and waits until every rank has posted its own.
  void publish(const void* send, void* recv, size_t count) {
    {
      std::lock_guard<std::mutex> lock(g_.mu_);
      g_.send_[rank_] = send;
      g_.recv_[rank_] = recv;
      g_.counts_[rank_] = count;
    }
    g_.barrier();
  }

  CpuCommGroup& g_;
  int rank_;
  std::vector<float> sum_;
};

inline void CpuCommGroup::run(const std::function<void(CpuCommunicator&)>& fn) {
  std::exception_ptr first;
  std::mutex err_mu;
  auto body = [&](int r) {
    try {
      CpuCommunicator comm(*this, r);
      fn(comm);
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(err_mu);
        if (!first) first = std::current_exception();
      }
      abort();
    }
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < size_; ++r) threads.emplace_back(body, r);
  body(0);
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace pie::parallel
