#pragma once
/// \file batch_defaults_of_device.cuh
/// \brief sched::batch_defaults (vLLM's max_num_seqs / max_num_batched_tokens by card) for the
/// current CUDA device: its total memory and name as the runtime reports them.
#include <cuda_runtime.h>

#include "pie/core/buffer.hpp"  // PIE_CUDA_CHECK
#include "pie/sched/batch_defaults.hpp"

namespace pie::engine::cuda {

/// The defaults an unset --max-num-seqs / --max-num-batched-tokens takes on the current device.
inline sched::BatchDefaults batch_defaults_of_device(sched::EntryPoint entry) {
  int dev = 0;
  PIE_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  PIE_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  return sched::batch_defaults(entry, p.totalGlobalMem, p.name);
}

}  // namespace pie::engine::cuda
