#pragma once
/// \file l2_prefetch.hpp
/// \brief L2Prefetch: which upcoming weights a small step moves into the GPU's L2 cache while
/// the ops before them leave DRAM idle, and how many of their bytes (the GPU forward's
/// `prefetch` op; PIE_L2_PREFETCH, opt-in). Host logic only, so that it is tested on the CPU.
///
/// Why: at batch 1 a decode step streams its weights at close to the copy bandwidth inside each
/// projection, but between the qkv projection and o_proj run q/k-norm + RoPE and decode
/// attention, which read a few hundred KB: ~14 µs a layer (Qwen3-8B shape, H200) in which DRAM
/// has nothing to do. A model names the weights that come after such a stretch
/// (`f.prefetch(L.o_proj, L.gate_up_proj)`, model_concept.hpp); the GPU context issues L2
/// prefetches for their first bytes right after the preceding projection ends, so that o_proj's
/// GEMV (and the start of gate_up's) reads L2 instead of DRAM. The arithmetic is unchanged: a
/// prefetch only moves bytes into a cache, so the logits are bit-identical with it on or off.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "pie/core/env_switch.hpp"  // env_count
#include "pie/core/error.hpp"
#include "pie/ops/l2_prefetch_range.hpp"

namespace pie::engine {

using ops::PrefetchRange;

/// \brief The prefetch policy of one forward context (see the file comment).
struct L2Prefetch {
  /// Steps of at most this many rows prefetch (0: never). Above a few rows the GEMMs are no
  /// longer a pure weight stream and decode attention itself reads the KV cache at full rate.
  int max_rows = 0;
  /// Bytes one prefetch call may move: what the stretch of idle DRAM can fill, and no more than
  /// the L2 keeps while the ops in between run: half the L2 unless PIE_L2_PREFETCH_MB says
  /// otherwise, never more than 3/4 of it (Hopper's L2 is two partitions; how much of it one
  /// GEMV sees is for the device run to tell, so the default is the cautious half).
  size_t budget = 0;

  static constexpr size_t kChunk = ops::kL2PrefetchChunk;

  /// PIE_L2_PREFETCH=N (rows; unset, empty or 0: off) and PIE_L2_PREFETCH_MB=M (optional, a
  /// positive number of MiB, capped at 3/4 of `l2_bytes`; unset: half of it). Anything else is
  /// refused naming the variable.
  static L2Prefetch from_env(size_t l2_bytes) {
    return parse(std::getenv("PIE_L2_PREFETCH"), std::getenv("PIE_L2_PREFETCH_MB"), l2_bytes);
  }
  static L2Prefetch parse(const char* rows, const char* mib, size_t l2_bytes) {
    L2Prefetch p;
    p.max_rows = env_count("PIE_L2_PREFETCH", rows, 0);
    const size_t cap = l2_bytes / 4 * 3;
    const int m = env_count("PIE_L2_PREFETCH_MB", mib, -1);
    PIE_CHECK(m != 0, "PIE_L2_PREFETCH_MB must be a positive number of MiB, got 0");
    p.budget = m < 0 ? l2_bytes / 2 : std::min(cap, static_cast<size_t>(m) << 20);
    if (p.budget == 0) p.max_rows = 0;  // no L2 to speak of: nothing to prefetch into
    return p;
  }

  /// Whether a step of `rows` rows prefetches.
  bool wants(int rows) const { return max_rows > 0 && rows > 0 && rows <= max_rows; }

  /// The parts of `upcoming` (in the order the step reads them) that one prefetch call moves:
  /// each range's start rounded up to 16 bytes and its length down to a multiple of 16 (the
  /// prefetch instruction's alignment), ranges taken whole in order until the budget, the last
  /// one cut at it; empty ranges dropped.
  std::vector<PrefetchRange> plan(const std::vector<PrefetchRange>& upcoming) const {
    std::vector<PrefetchRange> out;
    size_t left = budget;
    for (const PrefetchRange& r : upcoming) {
      if (left < 16) break;
      if (r.data == nullptr || r.bytes == 0) continue;
      const auto a = reinterpret_cast<uintptr_t>(r.data);
      const uintptr_t start = (a + 15) / 16 * 16;
      if (start - a >= r.bytes) continue;
      size_t n = std::min((r.bytes - (start - a)) / 16 * 16, left / 16 * 16);
      if (n == 0) continue;
      out.push_back({reinterpret_cast<const void*>(start), n});
      left -= n;
    }
    return out;
  }
};

}  // namespace pie::engine
