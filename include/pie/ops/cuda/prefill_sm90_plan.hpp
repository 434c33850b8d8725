#pragma once
/// \file prefill_sm90_plan.hpp
/// \brief The host-checkable arithmetic of the Hopper prefill kernel v3
/// (attention_prefill_sm90_v3.cuh): the TMA map of the KV pool, the shared-memory layout of a
/// K/V stage and the wgmma descriptor strides read from it, the producer's load order, and the
/// stage/parity arithmetic of the K and V rings. Plain C++ (no CUDA types), so a CPU test
/// (tests/ops/test_prefill_sm90_plan.cpp) checks exactly what the kernel uses.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "pie/core/host_device.hpp"

namespace pie::ops::cuda::sm90::plan {

/// \brief How a K/V page reaches shared memory. Rows of 128 bytes (64 columns, 128-byte swizzle);
/// a stage holds BN keys × HD columns.
///  - `kHalves` (v2's map, 4-D): one TMA box per 64-column half of a page; the stage is
///    [half][BN keys][64]: 8-key groups 1 KB apart, halves BN·128 B apart.
///  - `kPage` (5-D map (64 cols, 8 tokens, halves, bs/8, rows)): one box per page, laid out
///    [bs/8][half][8][64]: 8-key groups NH KB apart, halves 1 KB apart.
enum class Box { kHalves, kPage };

/// \brief Byte strides of a K/V stage in shared memory (before the 128-byte swizzle, which only
/// permutes 16-byte chunks inside each 1 KB-aligned 8 × 128 B block).
struct StageLayout {
  uint32_t group_stride;  ///< between 8-key groups (the wgmma SBO of K and of V)
  uint32_t half_stride;   ///< between 64-column halves (V's wgmma LBO; K's per-k16 step past 64 columns)
  /// Byte offset of (key, column) in the stage, unswizzled.
  PIE_HD constexpr uint32_t offset(int key, int col) const {
    return uint32_t(key / 8) * group_stride + uint32_t(col / 64) * half_stride + uint32_t(key % 8) * 128 +
           uint32_t(col % 64) * 2;
  }
};

/// Layout of a stage of `bn` keys × `hd` columns of 2-byte elements.
PIE_HD constexpr StageLayout stage_layout(Box box, int bn, int hd) {
  return box == Box::kPage ? StageLayout{uint32_t(hd / 64) * 1024u, 1024u}
                           : StageLayout{1024u, uint32_t(bn) * 128u};
}

/// \brief wgmma shared-memory descriptors over a stage (128-byte swizzle). K is S = Q·Kᵀ's B
/// operand, K-major: k16 step kk starts at k_desc_offset(kk), 8-key groups SBO = group_stride
/// apart (LBO unused). V is P·V's B operand, MN-major (transposed): keys 16kk .. 16kk + 15 start
/// at v_desc_offset(kk), 8-key groups SBO = group_stride apart, 64-column halves LBO = half_stride.
PIE_HD constexpr uint32_t k_desc_offset(StageLayout l, int kk) {
  return uint32_t(kk / 4) * l.half_stride + uint32_t(kk % 4) * 32u;
}
PIE_HD constexpr uint32_t v_desc_offset(StageLayout l, int kk) { return uint32_t(kk) * 2u * l.group_stride; }

/// \brief Where a page's TMA box lands in the stage, and how many boxes it takes.
/// Page i of the tile holds keys i·bs .. i·bs + bs − 1.
PIE_HD constexpr int boxes_per_page(Box box, int hd) { return box == Box::kPage ? 1 : hd / 64; }
/// Destination byte offset of box `h` (a 64-column half for kHalves, 0 for kPage) of page `i`.
PIE_HD constexpr uint32_t box_offset(Box box, int bn, int hd, int bs, int i, int h) {
  return stage_layout(box, bn, hd).offset(i * bs, h * 64);
}
/// Bytes one box carries.
PIE_HD constexpr uint32_t box_bytes(Box box, int hd, int bs) {
  return uint32_t(bs) * uint32_t(box == Box::kPage ? hd : 64) * 2u;
}

/// \brief cuTensorMapEncodeTiled arguments for the pool [blocks][2 (K, V)][kv_heads][bs][hd]
/// of 2-byte elements, viewed as rows = block·2·kv_heads + kv·kv_heads + head.
struct KvMap {
  int rank;
  uint64_t dims[5];
  uint64_t strides[4];  ///< bytes, dims 1..rank−1
  uint32_t box[5];
};
PIE_HD constexpr KvMap kv_map(Box box, int hd, int bs) {
  const uint64_t row = uint64_t(hd) * 2, page = uint64_t(bs) * row, rows = uint64_t(1) << 31;
  if (box == Box::kPage)  // (64 cols, 8 tokens, halves, bs/8 groups, rows)
    return KvMap{5, {64, 8, uint64_t(hd / 64), uint64_t(bs / 8), rows}, {row, 128, 8 * row, page},
                 {64, 8, uint32_t(hd / 64), uint32_t(bs / 8), 1}};
  return KvMap{4, {uint64_t(hd), 8, uint64_t(bs / 8), rows, 1}, {row, 8 * row, page, 0},
               {64, 8, uint32_t(bs / 8), 1, 1}};
}

/// \brief The producer warpgroup's load order: K(0), then K(t), V(t−1) for t = 1 .. n−1, then
/// V(n−1) — the order the consumers need them (S(t) is issued with P(t−1)·V(t−1)).
struct Load {
  bool v;
  int tile;
};
PIE_HD constexpr Load load_at(int i, int n_tiles) {
  if (i == 0) return {false, 0};
  if (i == 2 * n_tiles - 1) return {true, n_tiles - 1};
  return (i % 2) ? Load{false, (i + 1) / 2} : Load{true, i / 2 - 1};
}

/// \brief A ring of S stages: tile t sits in stage t % S; its `full` wait is phase (t / S) & 1;
/// a load of tile t ≥ S first waits for the `empty` phase of tile t − S, ((t / S) − 1) & 1.
template <int S>
struct Ring {
  static PIE_HD constexpr int stage(int t) { return t % S; }
  static PIE_HD constexpr uint32_t full_parity(int t) { return uint32_t(t / S) & 1u; }
  static PIE_HD constexpr bool waits_empty(int t) { return t >= S; }
  static PIE_HD constexpr uint32_t empty_parity(int t) { return uint32_t(t / S - 1) & 1u; }
};

/// \brief The producer's pages spread over its warps: warp w issues pages w, w + warps, ...
/// of a tile; its `full` arrival carries those pages' bytes (a warp with none arrives with 0).
PIE_HD constexpr int pages_of_warp(int warp, int warps, int pages_per_tile) {
  return warp < pages_per_tile ? (pages_per_tile - warp + warps - 1) / warps : 0;
}

/// \brief The consumer warpgroups' named barriers (0 is __syncthreads), for `nc` consumer
/// warpgroups: own(c) = 1 .. nc, one per warpgroup (its Q rows staged, its zeroing of V rows past
/// the context); turn(c) = nc + 1 .. 2nc, the ping-pong; items() = 2nc + 1, across the consumers
/// between a persistent CTA's items. The ping-pong is a round robin: warpgroup c waits for its
/// turn on turn(c) (bar.sync over 256 threads: its own and the previous warpgroup's bar.arrive),
/// issues its GEMMs, and hands the turn on with bar.arrive on next(c) = turn((c + 1) % nc).
/// Before the first tile the last warpgroup hands warpgroup 0 its first turn; after the last,
/// warpgroup 0 takes the last hand-over, so every barrier is left empty. nc = 2: barriers 1, 2 /
/// 3, 4 / 5, as v2 numbers them.
struct ConsumerBars {
  int nc;
  PIE_HD constexpr int own(int c) const { return 1 + c; }
  PIE_HD constexpr int turn(int c) const { return 1 + nc + c; }
  PIE_HD constexpr int next(int c) const { return nc == 2 ? turn(1 - c) : turn((c + 1) % nc); }  // (as v2 at 2)
  PIE_HD constexpr int first_giver() const { return nc - 1; }
  PIE_HD constexpr int items() const { return 1 + 2 * nc; }
};

/// \brief 2^x on the FMA pipe, for x ≤ 0 (below −126: 2^−126, the least normal float, not 0;
/// from −127 on the exponent field would be 0 and drop p's leading 1): x = j + f with j = floor(x),
/// 2^f by a degree-3 polynomial on [0, 1) (relative error 8.8e-5, under bf16's 2^−9 rounding of
/// P), j added to the result's exponent bits. The kernel takes it for part of a tile's exps (v3's
/// Shape::emu): MUFU does 16 ex2 per clock per SM, at head dim 64 exactly the tensor cores' rate
/// of one exp per 256 FLOPs, and this moves some of them onto the FMA pipe at ~8 instructions
/// each (FlashAttention-4's trick). On the GPU the floor is a round-down add of 1.5·2^23 (whose low
/// mantissa bits then hold j); here std::floor gives the same sum exactly, so the test checks the
/// kernel's arithmetic.
PIE_HD float ex2_poly(float x) {
  constexpr float kMagic = 12582912.f;  // 1.5·2^23: bits 0x4B400000
  x = x > -126.f ? x : -126.f;
#ifdef __CUDA_ARCH__
  const float t = __fadd_rd(x, kMagic);
#else
  const float t = std::floor(x) + kMagic;
#endif
  const float f = x - (t - kMagic);  // [0, 1); both subtractions exact
  const float p = fmaf(fmaf(fmaf(0.077119089663028717f, f, 0.22756439447402954f), f, 0.69514614343643188f), f, 1.f);
#ifdef __CUDA_ARCH__
  return __int_as_float(__float_as_int(p) + ((__float_as_int(t) - 0x4B400000) << 23));
#else
  int32_t pb, tb;
  std::memcpy(&pb, &p, 4);
  std::memcpy(&tb, &t, 4);
  pb += int32_t(uint32_t(tb - 0x4B400000) << 23);
  float y;
  std::memcpy(&y, &pb, 4);
  return y;
#endif
}

/// \brief How v3's CTAs take work: one row tile each (kTile), a persistent grid of one CTA per
/// SM (kPersistent), or CTA pairs that multicast K/V to each other (kCluster).
enum class Grid { kTile, kPersistent, kCluster };

/// \brief Persistent grid (v3 with kPersistent): CTA c takes work items c, then the next round's in
/// reverse (a snake over rounds of `grid` items), so per-CTA sums even out when items are sorted
/// heaviest first; plain round-robin would give CTA 0 the heaviest item of every round.
PIE_HD constexpr int persistent_item(int cta, int round, int grid) {
  return round * grid + ((round & 1) ? grid - 1 - cta : cta);
}
/// A work item: one 128-row tile of sequence b, KV head kvh.
struct Work {
  int tile, kvh, b;
};
/// Item w of `m_tiles × heads × seqs` items, heaviest first: the last row tiles (most keys under
/// the causal mask) of every head and sequence come first.
PIE_HD constexpr Work work_at(int w, int m_tiles, int heads, int seqs) {
  const int per_tile = heads * seqs, r = w % per_tile;
  return Work{m_tiles - 1 - w / per_tile, r % heads, r / heads};
}

}  // namespace pie::ops::cuda::sm90::plan
