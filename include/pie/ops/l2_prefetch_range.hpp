#pragma once
/// \file l2_prefetch_range.hpp
/// \brief PrefetchRange: a span of device bytes for the L2 prefetch kernel (cuda/l2_prefetch.cuh),
/// and the bytes one prefetch instruction moves. Plain C++, so that the engine's host policy
/// (engine/l2_prefetch.hpp) and its CPU tests use them without CUDA.
#include <cstddef>

namespace pie::ops {

/// \brief A span of device bytes to prefetch.
struct PrefetchRange {
  const void* data = nullptr;
  size_t bytes = 0;
};

/// Bytes per prefetch instruction: small enough that a 30 MB weight spreads over every SM's copy
/// engine (~7,600 instructions), large enough that issuing them takes under a µs.
inline constexpr size_t kL2PrefetchChunk = 4096;

}  // namespace pie::ops
