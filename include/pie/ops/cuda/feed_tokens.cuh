#pragma once
/// \file feed_tokens.cuh
/// \brief Asynchronous scheduling's device half: writes the previous step's sampled ids into
/// this step's input token ids, token_ids[rows[k]] = ids[draws[k]], so a decode planned before
/// its token was known (a StepPlan feed row) reads it where the sampler left it, with no trip
/// through the host. One thread per feed row. The CPU runner does the same loop on its worker
/// (engine/cpu/cpu_runner.hpp); tests/cuda/test_sampling.cu checks the kernel against it.
#include <cstdint>

#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

namespace detail {
static __global__ void feed_tokens_kernel(int32_t* __restrict__ token_ids, const int32_t* __restrict__ rows,
                                          const int32_t* __restrict__ draws, int n, const int32_t* __restrict__ ids) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k < n) token_ids[rows[k]] = ids[draws[k]];
}
}  // namespace detail

/// token_ids, rows [n], draws [n], ids: device. Stream-ordered after the step that wrote `ids`
/// and before the forward that reads `token_ids`.
inline void feed_tokens(int32_t* token_ids, const int32_t* rows, const int32_t* draws, int n, const int32_t* ids,
                        cudaStream_t stream = nullptr) {
  if (n == 0) return;
  constexpr int kThreads = 128;
  detail::feed_tokens_kernel<<<(n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(token_ids, rows, draws, n, ids);
  PIE_CUDA_CHECK_LAUNCH();
}

}  // namespace pie::ops::cuda
