#pragma once
/// \file nccl_group.cuh
/// \brief nccl_group(): the RankGroup of `tp_size` GPU ranks of this process over NCCL (vLLM's
/// `--tensor-parallel-size N` on one host, one thread per GPU instead of one process per GPU).
/// One NCCL unique id is made here and shared by the ranks; their handles go into one
/// NcclAbortGroup, the group's abort(). Each rank's communicator enqueues on its runner's
/// stream, so collectives are ordered with the kernels and captured into the same CUDA graphs.
#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/engine/rank_group.hpp"
#include "pie/parallel/nccl_communicator.cuh"

namespace pie::parallel {

namespace detail {
/// A rank's NcclCommunicator registered with the group's abort: after ncclCommAbort freed the
/// handle from another thread it is released, not destroyed.
class GroupNcclCommunicator final : public Communicator {
 public:
  GroupNcclCommunicator(int size, int rank, const ncclUniqueId& id, int device, cudaStream_t stream,
                        std::shared_ptr<NcclAbortGroup> abort)
      : c_(size, rank, id, device, stream), abort_(std::move(abort)) {
    abort_->add(c_.comm());
  }
  ~GroupNcclCommunicator() override {
    if (abort_->aborted()) c_.release();
  }
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  bool device_memory() const override { return true; }
  void all_reduce_sum(void* data, size_t count, DType dtype) override { c_.all_reduce_sum(data, count, dtype); }
  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    c_.all_gather(send, recv, count, dtype);
  }
  void synchronize() override { c_.synchronize(); }

 private:
  NcclCommunicator c_;
  std::shared_ptr<NcclAbortGroup> abort_;
};
}  // namespace detail

/// Number of GPUs this process sees (0 when the driver or the device is missing).
inline int visible_gpus() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

/// The group of `tp_size` ranks on GPUs `devices[r]` (default 0..tp_size−1). Throws, naming the
/// counts, when fewer GPUs are visible.
inline engine::RankGroup nccl_group(int tp_size, std::vector<int> devices = {}) {
  PIE_CHECK(tp_size >= 1, "tensor parallel size must be >= 1, got ", tp_size);
  if (devices.empty())
    for (int r = 0; r < tp_size; ++r) devices.push_back(r);
  PIE_CHECK(static_cast<int>(devices.size()) == tp_size, "nccl_group: ", devices.size(), " devices for ", tp_size,
            " ranks");
  const int visible = visible_gpus();
  for (int d : devices)
    PIE_CHECK(d >= 0 && d < visible, "tensor parallel size ", tp_size, " needs GPU ", d, " but ", visible,
              " are visible");
  engine::RankGroup g;
  g.size = tp_size;
  g.devices = devices;
  if (tp_size == 1) return g;
  const ncclUniqueId id = nccl_unique_id();
  auto abort = std::make_shared<NcclAbortGroup>();
  g.make_comm = [=](int rank, void* stream) -> std::unique_ptr<Communicator> {
    return std::make_unique<detail::GroupNcclCommunicator>(tp_size, rank, id, devices[rank],
                                                           static_cast<cudaStream_t>(stream), abort);
  };
  g.abort = [abort] { abort->abort(); };
  return g;
}

}  // namespace pie::parallel
