#pragma once
/// \file l2_prefetch.cuh
/// \brief l2_prefetch: moves up to four device byte ranges into L2 without waiting for them
/// (the engine's L2Prefetch, engine/l2_prefetch.hpp, says when and why). Launched with programmatic dependent launch: its
/// CTAs let the next kernel be scheduled at once, then wait for the previous kernel to end
/// before they issue, so that the prefetches start when that kernel's own weight stream is over
/// (earlier they would share DRAM with it and be evicted by it), and this grid's completion still
/// implies its predecessor's (the next kernel's `pdl_wait` relies on that). Issuing takes well
/// under a microsecond; the bytes then arrive while the following kernels run.
#include <cstdint>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/ops/l2_prefetch_range.hpp"
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

/// \brief The ranges of one launch (16-byte aligned starts, lengths multiples of 16).
struct L2PrefetchArgs {
  static constexpr int kMaxRanges = 4;
  const char* data[kMaxRanges] = {};
  uint64_t bytes[kMaxRanges] = {};
};

namespace detail {

template <int = 0>  // a template: defined in every translation unit that launches it, once in the program
__global__ void __launch_bounds__(128) l2_prefetch_kernel(L2PrefetchArgs a) {
  pdl_launch_dependents();
  pdl_wait();
  constexpr uint64_t kChunk = pie::ops::kL2PrefetchChunk;
  const uint64_t first = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = uint64_t(gridDim.x) * blockDim.x;
#pragma unroll
  for (int r = 0; r < L2PrefetchArgs::kMaxRanges; ++r) {  // unrolled: the arguments stay in constant memory
    const uint64_t bytes = a.bytes[r];
    for (uint64_t off = first * kChunk; off < bytes; off += stride * kChunk)
      prefetch_l2(a.data[r] + off, static_cast<uint32_t>(bytes - off < kChunk ? bytes - off : kChunk));
  }
}

}  // namespace detail

/// Fills the launch's arguments from a plan (engine::L2Prefetch::plan): at most kMaxRanges
/// ranges, each 16-byte aligned with a length that is a multiple of 16 (checked).
inline L2PrefetchArgs l2_prefetch_args(const std::vector<pie::ops::PrefetchRange>& ranges) {
  PIE_CHECK(ranges.size() <= size_t(L2PrefetchArgs::kMaxRanges), "l2_prefetch: ", ranges.size(),
            " ranges, at most ", L2PrefetchArgs::kMaxRanges);
  L2PrefetchArgs a;
  for (size_t r = 0; r < ranges.size(); ++r) {
    PIE_CHECK(reinterpret_cast<uintptr_t>(ranges[r].data) % 16 == 0 && ranges[r].bytes % 16 == 0,
              "l2_prefetch: range ", r, " is not 16-byte aligned");
    a.data[r] = static_cast<const char*>(ranges[r].data);
    a.bytes[r] = ranges[r].bytes;
  }
  return a;
}

/// The current device's L2 size in bytes.
inline size_t l2_cache_bytes() {
  int dev = 0, v = 0;
  PIE_CUDA_CHECK(cudaGetDevice(&dev));
  PIE_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrL2CacheSize, dev));
  return static_cast<size_t>(v);
}

/// Prefetches `ranges` into L2 on `stream` (nothing launched when they are empty): a thread per
/// 4 KB chunk of the longest range, at most one CTA per SM, each thread also taking its chunks
/// of the other ranges, so that every SM's copy engine issues a few.
inline void l2_prefetch(const std::vector<pie::ops::PrefetchRange>& ranges, cudaStream_t stream) {
  const L2PrefetchArgs a = l2_prefetch_args(ranges);
  uint64_t longest = 0;  // bytes of the longest range: each thread walks every range
  for (uint64_t b : a.bytes) longest = b > longest ? b : longest;
  if (longest == 0) return;
  const uint64_t chunks = (longest + pie::ops::kL2PrefetchChunk - 1) / pie::ops::kL2PrefetchChunk;
  constexpr int kThreads = 128;
  const uint64_t want = (chunks + kThreads - 1) / kThreads;
  const unsigned ctas = static_cast<unsigned>(want < uint64_t(num_sms()) ? want : uint64_t(num_sms()));
  launch_pdl(detail::l2_prefetch_kernel<>, dim3(ctas), dim3(kThreads), 0, stream, a);
}

}  // namespace pie::ops::cuda
