#pragma once
/// \file nccl_communicator.cuh
/// \brief NcclCommunicator: the Communicator over NCCL for one GPU per rank. Buffers are device
/// memory; collectives are enqueued on the communicator's stream (asynchronous: call
/// synchronize(), or order later work on the same stream). fp32, fp16 and bf16 map to NCCL's
/// own types, so the GPU runner all-reduces its bf16 activations without a cast.
///
/// NVLink multicast (NVLS) is forced off before every communicator is created
/// (NCCL_NVLS_ENABLE=0): NVLS-based all-reduce can take the shared host's GPUs out of service,
/// and at TP ≤ 8 on one host the ring/tree algorithms over NVLink are what vLLM uses anyway.
/// The variable is set with overwrite, so a caller's environment cannot turn it back on.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "pie/core/buffer.hpp"  // PIE_CUDA_CHECK
#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/core/communicator.hpp"

#define PIE_NCCL_CHECK(expr)                                                               \
  do {                                                                                     \
    ncclResult_t pie_nccl_r_ = (expr);                                                     \
    PIE_CHECK(pie_nccl_r_ == ncclSuccess, #expr, " failed: ", ncclGetErrorString(pie_nccl_r_)); \
  } while (0)

namespace pie::parallel {

/// Sets NCCL_NVLS_ENABLE=0 in this process (see the file comment); called before every
/// ncclCommInitRank / ncclGetUniqueId.
inline void nccl_disable_multicast() { ::setenv("NCCL_NVLS_ENABLE", "0", 1); }

/// A fresh NCCL unique id: rank 0 creates it and every rank passes the same bytes to its
/// NcclCommunicator (in one process by sharing the struct; across processes by any side channel).
inline ncclUniqueId nccl_unique_id() {
  nccl_disable_multicast();
  ncclUniqueId id;
  PIE_NCCL_CHECK(ncclGetUniqueId(&id));
  return id;
}

/// NCCL's element type for a pie dtype (fp8 has no reduction here).
inline ncclDataType_t nccl_dtype(DType d) {
  switch (d) {
    case DType::F32: return ncclFloat32;
    case DType::F16: return ncclFloat16;
    case DType::BF16: return ncclBfloat16;
    default: PIE_FAIL("NcclCommunicator: unsupported dtype (F32, F16, BF16 only)");
  }
}

/// \brief Rank `rank` of a `size`-rank NCCL group on CUDA device `device`.
class NcclCommunicator final : public Communicator {
 public:
  /// Joins the group: blocks until all `size` ranks have called it with the same `id` (ranks in
  /// one process must therefore construct theirs on different threads, or inside
  /// ncclGroupStart/End). `stream` null → the communicator creates and owns a stream.
  NcclCommunicator(int size, int rank, const ncclUniqueId& id, int device, cudaStream_t stream = nullptr)
      : size_(size), rank_(rank), device_(device), stream_(stream) {
    PIE_CHECK(size >= 1 && rank >= 0 && rank < size, "NcclCommunicator: rank ", rank, " of ", size);
    nccl_disable_multicast();
    PIE_CUDA_CHECK(cudaSetDevice(device));
    if (!stream_) {
      PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      own_stream_ = true;
    }
    ncclResult_t r = ncclCommInitRank(&comm_, size, id, rank);
    if (r != ncclSuccess) {
      if (own_stream_) cudaStreamDestroy(stream_);
      PIE_FAIL("ncclCommInitRank(rank ", rank, " of ", size, ", device ", device,
               ") failed: ", ncclGetErrorString(r));
    }
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
    if (own_stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool device_memory() const override { return true; }
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  ncclComm_t comm() const { return comm_; }

  void all_reduce_sum(void* data, size_t count, DType dtype) override {
    PIE_NCCL_CHECK(ncclAllReduce(data, data, count, nccl_dtype(dtype), ncclSum, comm_, stream_));
  }
  using Communicator::all_reduce_sum;

  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    PIE_NCCL_CHECK(ncclAllGather(send, recv, count, nccl_dtype(dtype), comm_, stream_));
  }
  using Communicator::all_gather;

  void synchronize() override { PIE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  /// Gives up ownership of the NCCL handle without destroying it (after ncclCommAbort freed
  /// it from another thread, see NcclAbortGroup); the communicator is unusable afterwards.
  ncclComm_t release() {
    ncclComm_t c = comm_;
    comm_ = nullptr;
    return c;
  }

 private:
  int size_, rank_, device_;
  cudaStream_t stream_ = nullptr;
  bool own_stream_ = false;
  ncclComm_t comm_ = nullptr;
};

/// \brief The NCCL handles of one in-process group, so that a failing rank's thread can abort
/// them all: ncclCommAbort makes kernels spinning on a dead peer return, so ranks blocked in a
/// collective (or in the stream synchronisation after it) come back with an error instead of
/// hanging. A rank must register its handle right after ncclCommInitRank and, if aborted(),
/// release() it instead of destroying it.
class NcclAbortGroup {
 public:
  void add(ncclComm_t c) {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_) ncclCommAbort(c);
    else comms_.push_back(c);
  }
  void abort() {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_) return;
    aborted_ = true;
    for (ncclComm_t c : comms_) ncclCommAbort(c);
  }
  bool aborted() {
    std::lock_guard<std::mutex> lock(mu_);
    return aborted_;
  }

 private:
  std::mutex mu_;
  std::vector<ncclComm_t> comms_;
  bool aborted_ = false;
};

}  // namespace pie::parallel
