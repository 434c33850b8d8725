#pragma once
/// \file communicator.hpp
/// \brief Communicator: the two collectives tensor parallelism needs — an in-place sum
/// all-reduce (after the row-parallel o_proj / down_proj and the vocab-parallel embedding) and
/// an all-gather (the vocab-parallel logits) — behind one interface, so the same TP forward runs
/// over NCCL on GPUs (nccl_communicator.cuh) or over threads of one process on the CPU
/// (cpu_communicator.hpp).
#include <cstddef>

#include "pie/core/dtype.hpp"

namespace pie::parallel {

/// \brief A group of `size()` ranks; this object is rank `rank()`. Every rank must call the
/// same collectives in the same order with the same counts (as with NCCL and MPI).
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// True when buffers passed to the collectives are device memory (NCCL), false for host
  /// memory (the CPU implementation); callers stage accordingly.
  virtual bool device_memory() const = 0;
  /// data[i] = Σ_ranks data[i] for i < count, in place. Every rank receives the same values.
  virtual void all_reduce_sum(void* data, size_t count, DType dtype) = 0;
  /// recv = [send of rank 0, send of rank 1, …]: size()·count elements, rank-major.
  virtual void all_gather(const void* send, void* recv, size_t count, DType dtype) = 0;
  /// Waits until every collective issued so far has completed (a no-op for synchronous ones).
  virtual void synchronize() {}

  void all_reduce_sum(float* data, size_t count) { all_reduce_sum(data, count, DType::F32); }
  void all_gather(const float* send, float* recv, size_t count) {
    all_gather(send, recv, count, DType::F32);
  }
};

}  // namespace pie::parallel
