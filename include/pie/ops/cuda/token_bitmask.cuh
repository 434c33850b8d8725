#pragma once
/// \file token_bitmask.cuh
/// \brief Applies packed token bitmasks (a grammar's allowed tokens, XGrammar's layout: bit t%32
/// of word t/32) to logits rows on the GPU: a clear bit sets the logit to −∞. Rows whose flag
/// is 0 are left alone (unconstrained rows in a batch with constrained ones). One thread per
/// (row, token): a warp reads one mask word (one transaction) and writes 32 consecutive logits.
/// The CPU twin is sched::apply_token_bitmask (sched/logits_processor.hpp).
#include <cmath>
#include <cstdint>
#include <limits>

#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

namespace detail {
static __global__ void token_bitmask_kernel(float* __restrict__ logits, int vocab, const int32_t* __restrict__ masks,
                                            int words, const int32_t* __restrict__ flags) {
  const int r = blockIdx.y;
  if (flags[r] == 0) return;
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= vocab) return;
  const uint32_t bits = static_cast<uint32_t>(masks[static_cast<size_t>(r) * words + (t >> 5)]);
  if (!((bits >> (t & 31)) & 1u)) logits[static_cast<size_t>(r) * vocab + t] = -INFINITY;
}
}  // namespace detail

/// logits [rows][vocab] (device), masks [rows][words] with words = (vocab + 31) / 32 (device),
/// flags [rows] (device; 0 → row untouched).
inline void apply_token_bitmask(float* logits, int rows, int vocab, const int32_t* masks, const int32_t* flags,
                                cudaStream_t stream = nullptr) {
  if (rows == 0 || vocab == 0) return;
  constexpr int kThreads = 256;
  const dim3 grid((vocab + kThreads - 1) / kThreads, rows);
  detail::token_bitmask_kernel<<<grid, kThreads, 0, stream>>>(logits, vocab, masks, (vocab + 31) / 32, flags);
  PIE_CUDA_CHECK_LAUNCH();
}

}  // namespace pie::ops::cuda
