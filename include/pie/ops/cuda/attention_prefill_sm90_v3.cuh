#pragma once
/// \file attention_prefill_sm90_v3.cuh
/// \brief Hopper prefill attention v3 (opt-in: `PIE_PREFILL_SM90=3`; v2 stays the default until
/// a GPU call has checked and timed this one). Same tile, warpgroups, softmax and ping-pong as
/// v2 (attention_prefill_sm90.cuh); the changes are to the loads, in the order of v2's fit:
///  1. One TMA box per page (a 5-D map, `plan::Box::kPage`) instead of one per 64-column half,
///     and the boxes issued by all four producer warps (warp w takes pages w, w + 4, ...; one
///     lane per page), not one lane of one warp.
///  2. Separate K and V rings with their own `empty` barriers: K(t) is released as soon as S(t)
///     retires (before the softmax and P·V), V(t) when P(t)·V(t) retires; the producer loads
///     K(t), V(t−1), K(t+1), ... in the order the consumers use them.
///  3. Three stages at head dim 128 (Q 32 KB + 3 × 64 KB), six at 64.
/// Two more grids, opt-ins within the opt-in: "3p", a persistent grid, one CTA per SM walking
/// the row tiles heaviest first in a snake, the rings running on across tiles; "3c", 2-CTA
/// clusters over neighbouring row tiles that multicast each K/V tile to both CTAs (half the L2
/// reads).
/// Two kernel shapes of the one-CTA-per-tile grid, opt-ins too (Shape; docs/kernels.md "Prefill
/// v3 at head dim 64"): "3w", three consumer warpgroups over 192-row tiles at head dim 64, and
/// "3e", part of the softmax's exps on the FMA pipe; "3we" both.
/// The 5-D map has a stride smaller than the one below it (halves 128 B apart inside 256-byte
/// token rows). Should the driver refuse it, the launch falls back to v2's one box per half
/// (`Box::kHalves`) and says so once on stderr; the rest of v3 is unchanged.
#ifndef PIE_PREFILL_SM90_ALL
#define PIE_PREFILL_SM90_ALL 0  // see attention_prefill.cuh
#endif
#ifndef PIE_PREFILL_SM90_HD64
// The shape v3 takes at head dim 64 by default (the engine's, and the test's plain run): 0 (2
// consumer warpgroups), 1 "3w", 2 "3e", 3 "3we" (Shape). The CMake option of the same name sets
// it. 1 since the H100 call of 2026-12-05 (docs/kernels.md): causal 8K, GQA 32/8, 3w ran at
// 466-481 TFLOP/s against 2 warpgroups' 393-409 and cuDNN's 399 in the same call; 3e and 3we lost
// to 3w; the hd-64 tests, memcheck and racecheck passed on every shape.
#define PIE_PREFILL_SM90_HD64 1
#endif
#ifndef PIE_PREFILL_SM90_EMU_SWEEP
#define PIE_PREFILL_SM90_EMU_SWEEP 0  // bench_prefill: exp2 emulation periods 3 and 8 beside 5
#endif
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "pie/ops/cuda/attention_prefill_sm90.cuh"
#include "pie/ops/cuda/prefill_sm90_plan.hpp"

namespace pie::ops::cuda::sm90::v3 {

template <int HD> inline constexpr int kStages = HD <= 64 ? 6 : 3;
constexpr int kProducerWarps = 4;
/// NC consumer warpgroups of 64 rows each: the row tile is BM = 64·NC (2: 128 rows, the default;
/// 3: 192 rows, head dim 64 only, the "3w" shape).
template <int HD, int NC = 2> constexpr size_t smem_bytes() {
  return size_t(64 * NC * HD + 2 * kStages<HD> * kBN * HD) * 2 + 1024 /*align*/ + 256 /*barriers*/;
}
// The opt-in limit of an H100/H200 CTA: 227 KB.
static_assert(smem_bytes<128>() <= 232448 && smem_bytes<64>() <= 232448 && smem_bytes<64, 3>() <= 232448,
              "v3 stages exceed shared memory");

/// \brief A v3 kernel shape beside the grid: consumer warpgroups (2, or 3 for 192-row tiles at
/// head dim 64) and the exp2 emulation period (0: every exp on MUFU; E: every E-th 4-element
/// group of a thread's unmasked tile on the FMA pipe, plan::ex2_poly). nc 0: the build's default
/// (kDefaultShape). Chosen by PIE_PREFILL_SM90 ("3w", "3e", "3we") where PIE_PREFILL_SM90_ALL
/// compiles them; the engine compiles the default only.
struct Shape {
  int nc = 0;
  int emu = 0;
};
constexpr int kEmuPeriod = 5;  // 3 of a thread's 16 groups at BN 128: 19% of the exps
/// Where 3 consumer warpgroups compile: head dim 64, plain causal (or not) masks. At 160 registers
/// the soft-cap and sliding-window consumers spill (84–184 bytes, ptxas, CUDA 13): they keep 2.
template <int HD, class Variant>
inline constexpr bool kThreeWarpgroups = HD == 64 && !Variant::kSoftCap && Variant::kWindowLeft <= 0;
/// The default shape (PIE_PREFILL_SM90_HD64 at head dim 64; 2 warpgroups without emulation
/// elsewhere, and 2 warpgroups where kThreeWarpgroups does not hold).
template <int HD, class Variant>
inline constexpr Shape kDefaultShape{
    HD == 64 && (PIE_PREFILL_SM90_HD64 & 1) && kThreeWarpgroups<HD, Variant> ? 3 : 2,
    HD == 64 && (PIE_PREFILL_SM90_HD64 & 2) ? kEmuPeriod : 0};
/// The shape `launch` takes for `want` on `grid`: the default for nc 0, 3 warpgroups only where
/// kThreeWarpgroups and on the kTile grid, the emulation only on kTile, and only the default
/// where PIE_PREFILL_SM90_ALL does not compile the others (the engine).
template <int HD, class Variant>
Shape effective_shape(Shape want, plan::Grid grid) {
#if PIE_PREFILL_SM90_ALL
  if (want.nc == 0) want = kDefaultShape<HD, Variant>;
  if (!kThreeWarpgroups<HD, Variant> || grid != plan::Grid::kTile) want.nc = 2;
  if (grid != plan::Grid::kTile) want.emu = 0;
#if PIE_PREFILL_SM90_EMU_SWEEP  // the bench's sweep of the emulated share: periods 3, 5, 8
  if (want.emu > 0 && want.emu != 3 && want.emu != 8) want.emu = kEmuPeriod;
#else
  if (want.emu > 0) want.emu = kEmuPeriod;
#endif
  return want;
#else
  (void)want, (void)grid;
  return kDefaultShape<HD, Variant>;  // the kTile grid: the engine compiles no other
#endif
}
static_assert(4 * 8 * kStages<128> <= 256 && 4 * 8 * kStages<64> <= 256, "barriers exceed their 256 bytes");

/// 5-D TMA tile load into shared memory, completing on an mbarrier (byte count).
__device__ __forceinline__ void tma_load5(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3, int c4,
                                          uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5, "
      "%6}], [%7];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(bar)
      : "memory");
}

/// \brief The geometry of one work item: a BM-row tile of one sequence and KV head, its keys
/// and its 128-key tiles under the variant's mask.
struct Item {
  int b, kvh, m0, q_begin, nrows, page_beg, npages, kv_len, q_off, first_tok, kv_begin, n_tiles;
};
/// Fills `it` for row tile `tile` of sequence b, KV head kvh; false when the tile is past the chunk.
template <class Variant, int BM = kBM, class P>
__device__ __forceinline__ bool resolve(const P& p, int b, int kvh, int tile, Item& it) {
  it.b = b, it.kvh = kvh, it.m0 = tile * BM;
  it.q_begin = p.cu_q[b];
  it.nrows = (p.cu_q[b + 1] - it.q_begin) * p.group;
  it.n_tiles = 0;
  if (it.m0 >= it.nrows) return false;  // (the cluster grid reads kv_len and pages of such a tile: below)
  const int qlen = it.nrows / p.group;
  it.page_beg = p.indptr[b], it.npages = p.indptr[b + 1] - it.page_beg;
  it.kv_len = it.npages == 0 ? 0 : (it.npages - 1) * p.block_size + p.last_page_len[b];
  it.q_off = it.kv_len - qlen;
  it.first_tok = it.m0 / p.group;
  const int last_tok = (min(it.m0 + BM, it.nrows) - 1) / p.group;
  const int kv_end = Variant::kCausal ? min(it.kv_len, it.q_off + last_tok + 1) : it.kv_len;
  it.kv_begin = 0;
  if constexpr (Variant::kWindowLeft > 0)
    it.kv_begin = max(0, it.q_off + it.first_tok - Variant::kWindowLeft + 1) / kBN * kBN;
  it.n_tiles = max(0, (kv_end - it.kv_begin + kBN - 1) / kBN);
  return true;
}

/// The sequence's pages and keys only (a cluster's helper CTA whose own tile is past the chunk).
template <class P>
__device__ __forceinline__ void resolve_pages(const P& p, int b, int kvh, Item& it) {
  it.b = b, it.kvh = kvh;
  it.page_beg = p.indptr[b], it.npages = p.indptr[b + 1] - it.page_beg;
  it.kv_len = it.npages == 0 ? 0 : (it.npages - 1) * p.block_size + p.last_page_len[b];
  it.kv_begin = 0, it.q_off = 0, it.first_tok = 0, it.n_tiles = 0;
}

/// Remote arrive on the mbarrier at the same offset in cluster CTA `rank`.
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t rank) {
  asm volatile(
      "{\n.reg .b32 r;\nmapa.shared::cluster.u32 r, %0, %1;\n"
      "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [r];\n}\n" ::"r"(bar),
      "r"(rank)
      : "memory");
}
/// 5-D / 4-D TMA tile loads multicast to the CTAs of `mask` (same smem offset, same mbarrier offset).
__device__ __forceinline__ void tma_load5_mc(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                             int c4, uint32_t bar, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, "
      "{%2, %3, %4, %5, %6}], [%7], %8;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(bar), "h"(mask)
      : "memory");
}
__device__ __forceinline__ void tma_load4_mc(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                             uint32_t bar, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, "
      "{%2, %3, %4, %5}], [%6], %7;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar), "h"(mask)
      : "memory");
}
/// All threads of both CTAs (the warp reconverged first: the instructions are .aligned).
__device__ __forceinline__ void cluster_sync() {
  __syncwarp();
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

/// GRID kTile: one item per CTA. kPersistent: a grid of at most one CTA per SM walks the work
/// items heaviest first in a snake (plan::persistent_item); the K/V rings run on across items
/// (the producer loads the next item's first tiles while the consumers finish the last one).
/// kCluster: CTA pairs (a 2-CTA cluster) over neighbouring row tiles of one sequence and KV head;
/// each producer loads half of every K/V tile's pages and multicasts them to both CTAs, so L2
/// serves each tile once per pair. Both CTAs load the longer of the two tiles' key ranges; the
/// shorter one waits for and releases the tiles it does not use, and a CTA whose tile is past
/// the chunk still loads its half. Every `empty` barrier counts the consumer warps of both CTAs.
/// NC, EMU: Shape's consumer warpgroups and exp2 emulation period (only on the kTile grid; NC 3
/// where kThreeWarpgroups). With NC = 3 the registers are split as FlashAttention-3 splits them at 3 consumer
/// warpgroups: 32 for the producer, 160 for each consumer thread (32·128 + 160·384 = 65536).
template <int HD, class T, class Variant, plan::Box BOX, plan::Grid GRID, int NC = 2, int EMU = 0>
__global__ void __launch_bounds__(128 * (1 + NC), 1) prefill_kernel(const __grid_constant__ Params<T, Variant> p) {
#if PIE_SM90A_DEVICE
  static_assert(NC == 2 || (NC == 3 && kThreeWarpgroups<HD, Variant> && GRID == plan::Grid::kTile),
                "3 consumer warpgroups: head dim 64, no soft cap or window, kTile grid");
  constexpr int BM = 64 * NC;
  constexpr plan::ConsumerBars NB{NC};  // the consumers' named barriers
  constexpr int NH = HD / 64;
  constexpr int S = kStages<HD>;
  constexpr int TILE = kBN * HD;  // elements of one K (or V) stage
  constexpr plan::StageLayout L = plan::stage_layout(BOX, kBN, HD);
  using R = plan::Ring<S>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  T* sq = reinterpret_cast<T*>(base);  // [NH][BM][64]
  T* sk = sq + BM * HD;                // S stages of K, layout L
  T* sv = sk + S * TILE;               // S stages of V, layout L
  uint64_t* bars = reinterpret_cast<uint64_t*>(sv + S * TILE);
  const uint32_t kfull = smem_u32(bars), vfull = kfull + 8 * S, kempty = vfull + 8 * S, vempty = kempty + 8 * S;

  constexpr bool PERSIST = GRID == plan::Grid::kPersistent, CL = GRID == plan::Grid::kCluster;
  static_assert(!CL || Variant::kWindowLeft <= 0, "the cluster grid loads keys from 0: no sliding window");
  const uint32_t rank = blockIdx.x & 1, peer = rank ^ 1;  // kCluster: cluster dims (2, 1, 1)
  // Work item k of this CTA (false: none left / empty item).
  const int W = p.m_tiles * p.num_kv_heads * p.num_seqs;
  auto item = [&](int k, Item& it, bool& done) {
    if constexpr (CL) {
      done = k > 0;
      if (done) return false;
      if (!resolve<Variant, BM>(p, blockIdx.z, blockIdx.y, gridDim.x - 1 - blockIdx.x, it))
        resolve_pages(p, blockIdx.z, blockIdx.y, it);  // n_tiles 0: it only helps load
      return true;
    } else if constexpr (PERSIST) {
      const int w = plan::persistent_item(blockIdx.x, k, gridDim.x);
      done = w >= W;
      if (done) return false;
      const plan::Work wk = plan::work_at(w, p.m_tiles, p.num_kv_heads, p.num_seqs);
      return resolve<Variant, BM>(p, wk.b, wk.kvh, wk.tile, it);
    } else {
      done = k > 0;
      return !done && resolve<Variant, BM>(p, blockIdx.z, blockIdx.y, gridDim.x - 1 - blockIdx.x, it);  // heavy first
    }
  };
  if constexpr (GRID == plan::Grid::kTile) {
    Item it;
    bool done;
    if (!item(0, it, done)) return;  // the whole CTA, before any barrier
  }
  // kCluster: the pair loads the longer key range of its two tiles.
  int n_load = 0;
  if constexpr (CL) {
    Item a, b;
    resolve<Variant, BM>(p, blockIdx.z, blockIdx.y, gridDim.x - 1 - blockIdx.x, a);
    resolve<Variant, BM>(p, blockIdx.z, blockIdx.y, gridDim.x - 1 - (blockIdx.x ^ 1), b);
    n_load = max(a.n_tiles, b.n_tiles);
  }

  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128, warp = tid / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(kfull + 8 * s, kProducerWarps);  // one arrive.expect_tx per producer warp
      mbar_init(vfull + 8 * s, kProducerWarps);
      mbar_init(kempty + 8 * s, (CL ? 2 : 1) * 4 * NC);  // one arrival per consumer warp (of both CTAs)
      mbar_init(vempty + 8 * s, (CL ? 2 : 1) * 4 * NC);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  if constexpr (CL) cluster_sync();  // the peer's barriers exist before any remote arrival or copy
  else __syncthreads();

  if (wg == 0) {  // ---------------- producer: 4 warps, one lane per page ----------------
    if constexpr (NC == 2) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    else asm volatile("setmaxnreg.dec.sync.aligned.u32 32;\n");
    const int ppt = kBN >> p.bs_shift;  // pages per tile
    const int H = p.num_kv_heads;
    const uint32_t page_bytes = plan::box_bytes(BOX, HD, p.block_size) * plan::boxes_per_page(BOX, HD);
    // Pages of this warp (kCluster: of this CTA's half, pages rank, rank + 2, ...), and the bytes
    // this warp's arrival expects: its own pages, and under kCluster its twin's in the peer CTA.
    const int mine = CL ? plan::pages_of_warp(warp, kProducerWarps, plan::pages_of_warp(int(rank), 2, ppt))
                        : plan::pages_of_warp(warp, kProducerWarps, ppt);
    const int twin = CL ? plan::pages_of_warp(warp, kProducerWarps, plan::pages_of_warp(int(peer), 2, ppt)) : 0;
    const uint32_t my_bytes = uint32_t(mine + twin) * page_bytes;
    // Page of the tile this lane issues.
    const int my_page = CL ? int(rank) + 2 * (warp + kProducerWarps * lane) : warp + kProducerWarps * lane;
    int it0 = 0;  // ring position of this item's tile 0
    for (int k = 0;; ++k) {
      Item g;
      bool done;
      if (!item(k, g, done)) {
        if (done) break;
        continue;
      }
      if constexpr (CL) g.n_tiles = n_load;
      // This lane's page of tile t, clamped to the last page: a tile is always whole (keys past
      // the end are masked, and V's rows zeroed, by consumers).
      auto page_id = [&](int t) {
        const int pg = ((g.kv_begin + t * kBN) >> p.bs_shift) + my_page;
        return lane < mine && t < g.n_tiles ? p.indices[g.page_beg + min(pg, g.npages - 1)] : 0;
      };
      int id_next = page_id(0), id_k = 0, id_prev = 0;  // ids of tile (last K + 1), last K, last K − 1
      for (int i = 0; i < 2 * g.n_tiles; ++i) {
        const plan::Load ld = plan::load_at(i, g.n_tiles);
        int id;
        if (!ld.v) {
          id_prev = id_k;
          id_k = id_next;
          id = id_k;
        } else {
          id = i == 2 * g.n_tiles - 1 ? id_k : id_prev;  // V(n−1) follows K(n−1); V(t−1) follows K(t)
        }
        const int r = it0 + ld.tile, s = R::stage(r);
        const uint32_t full = (ld.v ? vfull : kfull) + 8 * s;
        if (R::waits_empty(r)) mbar_wait((ld.v ? vempty : kempty) + 8 * s, R::empty_parity(r));
        if (lane == 0) mbar_expect_tx(full, my_bytes);  // arrives; a warp with no pages arrives with 0
        __syncwarp();
        if (lane < mine) {
          const int row = id * 2 * H + g.kvh + (ld.v ? H : 0);
          const uint32_t dst = smem_u32((ld.v ? sv : sk) + s * TILE);
          if constexpr (BOX == plan::Box::kPage) {
            const uint32_t d = dst + plan::box_offset(BOX, kBN, HD, p.block_size, my_page, 0);
            if constexpr (CL) tma_load5_mc(d, &p.kv_map, 0, 0, 0, 0, row, full, uint16_t(3));
            else tma_load5(d, &p.kv_map, 0, 0, 0, 0, row, full);
          } else {
#pragma unroll
            for (int h = 0; h < NH; ++h) {
              const uint32_t d = dst + plan::box_offset(BOX, kBN, HD, p.block_size, my_page, h);
              if constexpr (CL) tma_load4_mc(d, &p.kv_map, h * 64, 0, 0, row, full, uint16_t(3));
              else tma_load4(d, &p.kv_map, h * 64, 0, 0, row, full);
            }
          }
        }
        if (!ld.v) id_next = page_id(ld.tile + 1);  // prefetched under the next V load
      }
      it0 += g.n_tiles;
    }
  } else {
  // ---------------- consumers (as v2, with K and V released separately) ----------------
  if constexpr (NC == 2) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  else asm volatile("setmaxnreg.inc.sync.aligned.u32 160;\n");
  const int cw = wg - 1;
  const uint32_t sq_u = smem_u32(sq) + cw * 64 * 128, sk_u = smem_u32(sk), sv_u = smem_u32(sv);
  const int r_lo = cw * 64 + warp * 16 + lane / 4, r_hi = r_lo + 8;  // tile rows of this thread
  // A stage read: this CTA's empty barrier, and under kCluster the peer's (its copies land here too).
  auto release = [&](uint32_t bar) {
    if (lane == 0) {
      mbar_arrive(bar);
      if constexpr (CL) mbar_arrive_cluster(bar, peer);
    }
  };
  int it0 = 0;
  for (int k = 0;; ++k) {
  Item g;
  bool done;
  if (!item(k, g, done)) {
    if (done) break;
    continue;
  }
  const int G = p.group, m0 = g.m0, nrows = g.nrows, n_tiles = g.n_tiles, kv_begin = g.kv_begin, kv_len = g.kv_len;
  // Q rows of this warpgroup → swizzled shared memory (cp.async, zero rows past the chunk). The
  // warpgroup's previous item read only its own rows, and its wgmmas have all retired.
  {
    const int c = tid % (HD / 8), h = c / 8, cc = c % 8;
#pragma unroll
    for (int i = tid / (HD / 8); i < 64; i += 128 / (HD / 8)) {
      const int row = cw * 64 + i, r = m0 + row;
      const bool valid = r < nrows;
      const int tok = valid ? r / G : 0, head = valid ? g.kvh * G + r - (r / G) * G : 0;
      const T* src = p.q + int64_t(g.q_begin + tok) * p.q_stride + int64_t(head) * HD + c * 8;
      detail::cp_async16(smem_u32(sq + h * BM * 64 + row * 64 + ((cc ^ (row & 7)) << 3)), src, valid);
    }
  }
  detail::cp_async_commit();
  detail::cp_async_wait_all();
  fence_proxy_async();
  named_bar_sync(NB.own(cw), 128);

  float o[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) o[i] = 0.f;
  SoftmaxState st;
  // An fp8 cache widened to T holds codes: its K scale joins the scores' (prefill_fp8_kv.cuh).
  const float sm_scale = p.k_scale != nullptr ? p.sm_scale * p.k_scale[g.kvh] : p.sm_scale;
  st.f = Variant::kSoftCap ? 1.f : sm_scale * 1.4426950408889634f;
  const int qpos_lo = g.q_off + (m0 + r_lo) / G, qpos_hi = g.q_off + (m0 + r_hi) / G;
  const int diag = g.q_off + g.first_tok;  // tiles whose last key is past this need the causal mask

  auto issue_s = [&](float (&sacc)[kBN / 2], int s) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      const uint64_t da = desc_sw128(sq_u + (kk / 4) * BM * 128 + (kk % 4) * 32, 16, 1024);
      const uint64_t db = desc_sw128(sk_u + s * TILE * 2 + plan::k_desc_offset(L, kk), 16, L.group_stride);
      Wgmma<kBN, T>::ss(sacc, da, db, kk > 0);
    }
  };
  auto issue_pv = [&](const uint32_t (&pf)[kBN / 16][4], int s) {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {  // keys 16kk .. 16kk + 15: two 8-key groups
      const uint64_t db = desc_sw128(sv_u + s * TILE * 2 + plan::v_desc_offset(L, kk), L.half_stride, L.group_stride);
      Wgmma<HD, T>::rs_t(o, pf[kk], db);
    }
  };
  auto softmax = [&](float (&sacc)[kBN / 2], int n0) {
    const bool need_mask = (Variant::kCausal && n0 + kBN - 1 > diag) || n0 + kBN > kv_len ||
                           Variant::kWindowLeft > 0 || !Variant::kCausal;
    if (need_mask)
      softmax_tile<true, T, kBN>(sacc, st, n0 + (lane % 4) * 2, qpos_lo, qpos_hi, kv_len, sm_scale, p.variant);
    else
      softmax_tile<false, T, kBN, EMU>(sacc, st, n0 + (lane % 4) * 2, qpos_lo, qpos_hi, kv_len, sm_scale,
                                       p.variant);
  };
  // Ping-pong (as v2): the consumer warpgroups take turns issuing their GEMMs, round robin
  // (plan::ConsumerBars), so one's softmax runs while the others' MMAs hold the tensor cores.
  auto pp_sync = [&] { named_bar_sync(NB.turn(cw), 256); };
  auto pp_arrive = [&] { named_bar_arrive(NB.next(cw), 256); };
  if (cw == NB.first_giver()) named_bar_arrive(NB.turn(0), 256);

  uint32_t pf[kBN / 16][4];
  if (n_tiles > 0) {  // tile 0: S, softmax → P (O is still zero)
    const int s = R::stage(it0);
    float sacc[kBN / 2];
    mbar_wait(kfull + 8 * s, R::full_parity(it0));
    pp_sync();
    wgmma_fence();
    issue_s(sacc, s);
    wgmma_commit();
    pp_arrive();
    wgmma_wait<0>();
    fence_regs(sacc);
    release(kempty + 8 * s);  // K(0) read
    softmax(sacc, kv_begin);
    pack_p<T, kBN>(sacc, pf);
  }
  // Tile t: S(t) and P(t−1)·V(t−1) in flight together; K(t) released as soon as S(t) retires.
  for (int t = 1; t < n_tiles; ++t) {
    const int s = R::stage(it0 + t), sp = R::stage(it0 + t - 1);
    const int n0 = kv_begin + t * kBN;
    float sacc[kBN / 2];
    mbar_wait(kfull + 8 * s, R::full_parity(it0 + t));
    mbar_wait(vfull + 8 * sp, R::full_parity(it0 + t - 1));
    pp_sync();
    wgmma_fence();
    issue_s(sacc, s);
    wgmma_commit();
    wgmma_fence();
    issue_pv(pf, sp);
    wgmma_commit();
    pp_arrive();
    wgmma_wait<1>();  // S(t) retired: K(t) may be refilled while P(t−1)·V(t−1) runs
    fence_regs(sacc);
    release(kempty + 8 * s);
    softmax(sacc, n0);
    wgmma_wait<0>();
    fence_regs(o);
    release(vempty + 8 * sp);
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) {
      o[4 * j] *= st.corr[0]; o[4 * j + 1] *= st.corr[0];
      o[4 * j + 2] *= st.corr[1]; o[4 * j + 3] *= st.corr[1];
    }
    pack_p<T, kBN>(sacc, pf);
  }
  if (cw == 0) named_bar_sync(NB.turn(0), 256);  // the last warpgroup's last hand-over
  if (n_tiles > 0) {  // P(last)·V(last)
    const int t = n_tiles - 1, s = R::stage(it0 + t), n0 = kv_begin + t * kBN;
    mbar_wait(vfull + 8 * s, R::full_parity(it0 + t));
    if (n0 + kBN > kv_len) {
      // Keys past the context end hold whatever the pool held (maybe NaN) and P is 0 there, but
      // 0·NaN is not 0: zero those V rows (both warpgroups write the same zeros). A row is 128
      // contiguous bytes per half in either layout, so the swizzle does not matter here.
      const int first = max(0, kv_len - n0);
      unsigned char* v = reinterpret_cast<unsigned char*>(sv + s * TILE);
      for (int i = first * 8 + tid; i < kBN * 8; i += 128) {
        const int key = i / 8, chunk = i % 8;
#pragma unroll
        for (int h = 0; h < NH; ++h)
          *reinterpret_cast<uint4*>(v + L.offset(key, h * 64) + chunk * 16) = make_uint4(0, 0, 0, 0);
      }
      fence_proxy_async();  // also orders the zeros before the stage's next TMA fill
      named_bar_sync(NB.own(cw), 128);
    }
    wgmma_fence();
    issue_pv(pf, s);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(o);
    release(vempty + 8 * s);  // the ring runs on into the next item
  }
  if constexpr (CL) {  // the pair's tiles past this CTA's own: wait for their copies, release them
    for (int t = n_tiles; t < n_load; ++t) {
      const int s = R::stage(it0 + t);
      mbar_wait(kfull + 8 * s, R::full_parity(it0 + t));
      release(kempty + 8 * s);
      mbar_wait(vfull + 8 * s, R::full_parity(it0 + t));
      release(vempty + 8 * s);
    }
  }

  float l_r[2] = {st.l[0], st.l[1]};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 1);
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 2);
  }
  const float vs = p.v_scale != nullptr ? p.v_scale[g.kvh] : 1.f;  // and its V scale the output's
  const float inv[2] = {l_r[0] > 0.f ? vs / l_r[0] : 0.f, l_r[1] > 0.f ? vs / l_r[1] : 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m0 + (r == 0 ? r_lo : r_hi);
    if (row >= nrows) continue;
    T* dst = p.out + int64_t(g.q_begin + row / G) * p.out_stride + int64_t(g.kvh * G + row % G) * HD + (lane % 4) * 2;
#pragma unroll
    for (int j = 0; j < HD / 8; ++j)
      *reinterpret_cast<uint32_t*>(dst + j * 8) = pack2<T>(o[4 * j + 2 * r] * inv[r], o[4 * j + 2 * r + 1] * inv[r]);
  }
  it0 += n_tiles;
  // Both warpgroups leave the item before either starts the next: WG2's first ping-pong arrival
  // of the next item must not meet barrier 3 before WG1 has taken this item's last one.
  if constexpr (PERSIST) named_bar_sync(NB.items(), 128 * NC);
  }  // items
  }  // consumers
  // kCluster: no CTA leaves while its peer may still arrive on its barriers (every copy into
  // it has landed: its consumers waited for all of them).
  if constexpr (CL) cluster_sync();
#else
  __trap();  // built without sm_90a: never launched (see available())
#endif
}

/// Whether this build holds the v3 kernel for the current device.
template <int HD, class T, class Variant>
bool available() {
  static const bool ok = [] {
    if (!hopper_device()) return false;  // not v2's available(): that would instantiate v2's kernel
    cudaFuncAttributes a{};
    constexpr Shape d = kDefaultShape<HD, Variant>;  // the kernel every build compiles
    if (cudaFuncGetAttributes(&a, prefill_kernel<HD, T, Variant, plan::Box::kHalves, plan::Grid::kTile, d.nc, d.emu>) !=
        cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return a.binaryVersion == 90;
  }();
  return ok;
}

/// Encodes `p.kv_map` for `box` (plan::kv_map); the driver's result.
template <class T, class Variant>
CUresult encode_kv_map(Params<T, Variant>& p, const T* pool, int hd, plan::Box box) {
  const plan::KvMap m = plan::kv_map(box, hd, p.block_size);
  cuuint64_t dims[5];
  cuuint64_t strides[4];
  cuuint32_t box_dim[5];
  const cuuint32_t estr[5] = {1, 1, 1, 1, 1};
  for (int i = 0; i < m.rank; ++i) dims[i] = m.dims[i], box_dim[i] = m.box[i];
  for (int i = 0; i + 1 < m.rank; ++i) strides[i] = m.strides[i];
  return encode_fn()(&p.kv_map, std::is_same_v<T, __nv_bfloat16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                                  : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                     cuuint32_t(m.rank), const_cast<T*>(pool), dims, strides, box_dim, estr,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

/// Launches v3. `box`: kPage (one box per page; head dim 128 only, where a page has two halves)
/// or kHalves; a refused kPage map falls back to kHalves (said once on stderr). `grid`: one CTA
/// per row tile, the persistent grid, or 2-CTA clusters with K/V multicast (kCluster; variants
/// with a sliding window take kTile instead). `shape` (where PIE_PREFILL_SM90_ALL compiles it,
/// on the kTile grid; 3 consumer warpgroups only where kThreeWarpgroups): see Shape. Returns the box mode
/// it launched with.
template <int HD, class T, class Variant>
plan::Box launch(Params<T, Variant>& p, const T* pool, int num_seqs, int max_q_len, cudaStream_t stream,
                 plan::Box box = plan::Box::kPage, plan::Grid grid = plan::Grid::kTile, Shape shape = {}) {
  if constexpr (HD == 64) box = plan::Box::kHalves;  // one half: the 4-D map is already one box per page
  if constexpr (Variant::kWindowLeft > 0) {
    if (grid == plan::Grid::kCluster) grid = plan::Grid::kTile;
  }
  if (box == plan::Box::kPage && encode_kv_map(p, pool, HD, box) != CUDA_SUCCESS) {
    static bool said = false;
    if (!said)
      std::fprintf(stderr, "prefill_attention (sm90 v3): the 5-D page map was refused; one box per 64-column half\n");
    said = true;
    box = plan::Box::kHalves;
  }
  if (box == plan::Box::kHalves)
    PIE_CHECK(encode_kv_map(p, pool, HD, box) == CUDA_SUCCESS, "prefill_attention (sm90 v3): cuTensorMapEncodeTiled failed");
  shape = effective_shape<HD, Variant>(shape, grid);
  const int bm = 64 * shape.nc;
  const int64_t rows = int64_t(max_q_len) * p.group;
  p.m_tiles = int((rows + bm - 1) / bm);
  p.num_seqs = num_seqs;
  int sms = 0;
  if (grid == plan::Grid::kPersistent) {
    int dev = 0;
    PIE_CUDA_CHECK(cudaGetDevice(&dev));
    PIE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  }
  auto go = [&]<int NC>(auto kern, plan::Grid g) {
    constexpr size_t smem = smem_bytes<HD, NC>();
    // Every launch, as v2 does: the attribute is per device.
    PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const int64_t items = int64_t(p.m_tiles) * p.num_kv_heads * num_seqs;
    cudaLaunchConfig_t cfg{};
    cudaLaunchAttribute attr[1];
    cfg.blockDim = dim3(128 * (1 + NC));
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    if (g == plan::Grid::kPersistent) {
      cfg.gridDim = dim3(unsigned(std::min<int64_t>(items, sms)));
    } else if (g == plan::Grid::kCluster) {  // pairs of row tiles: the grid rounded up to even
      cfg.gridDim = dim3(unsigned((p.m_tiles + 1) / 2 * 2), unsigned(p.num_kv_heads), unsigned(num_seqs));
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = 2, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
    } else {
      cfg.gridDim = dim3(unsigned(p.m_tiles), unsigned(p.num_kv_heads), unsigned(num_seqs));
    }
    PIE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kern, p));
    PIE_CUDA_CHECK_LAUNCH();
  };
  // One instantiation per (box, grid) pair that can run: kPage only at head dim 128, kCluster
  // only without a sliding window.
  // The persistent and cluster grids are compiled only where PIE_PREFILL_SM90_ALL asks for them
  // (the kernel test and bench): the engine takes one grid, and each pair is another kernel in
  // every engine translation unit.
  auto with_box = [&]<plan::Box B>() {
    switch (grid) {
#if PIE_PREFILL_SM90_ALL
      case plan::Grid::kPersistent:
        go.template operator()<2>(prefill_kernel<HD, T, Variant, B, plan::Grid::kPersistent>, grid);
        break;
      case plan::Grid::kCluster:
        if constexpr (Variant::kWindowLeft <= 0)
          go.template operator()<2>(prefill_kernel<HD, T, Variant, B, plan::Grid::kCluster>, grid);
        break;
#endif
      default: {
#if PIE_PREFILL_SM90_ALL
        // The kTile grid's shapes: NC warpgroups, the emulation period (effective_shape: 0 or
        // kEmuPeriod, or under PIE_PREFILL_SM90_EMU_SWEEP, the bench's, also 3 and 8).
        auto kern = [&]<int NC, int E>() {
          go.template operator()<NC>(prefill_kernel<HD, T, Variant, B, plan::Grid::kTile, NC, E>, plan::Grid::kTile);
        };
        auto tile = [&]<int NC>() {
          switch (shape.emu) {
            case 0: kern.template operator()<NC, 0>(); break;
#if PIE_PREFILL_SM90_EMU_SWEEP
            case 3: kern.template operator()<NC, 3>(); break;
            case 8: kern.template operator()<NC, 8>(); break;
#endif
            default: kern.template operator()<NC, kEmuPeriod>(); break;
          }
        };
        if constexpr (kThreeWarpgroups<HD, Variant>) {
          if (shape.nc == 3) {
            tile.template operator()<3>();
            break;
          }
        }
        tile.template operator()<2>();
#else
        constexpr Shape d = kDefaultShape<HD, Variant>;
        go.template operator()<d.nc>(prefill_kernel<HD, T, Variant, B, plan::Grid::kTile, d.nc, d.emu>,
                                     plan::Grid::kTile);
#endif
        break;
      }
    }
  };
  if constexpr (HD == 128) {
    if (box == plan::Box::kPage) {
      with_box.template operator()<plan::Box::kPage>();
      return box;
    }
  }
  with_box.template operator()<plan::Box::kHalves>();
  return box;
}

/// The prefill kernel generation `prefill_attention` takes on Hopper: 3 (the default since it
/// passed on the H200 and beat cuDNN's SDPA there: docs/kernels.md), or 2 when the environment
/// sets PIE_PREFILL_SM90=2. PIE_PREFILL_SM90 also picks v3's shape for A/B runs: "3" one box per
/// page (the default), "3h" one box per 64-column half, "3p" the persistent grid, "3c" 2-CTA
/// clusters with K/V multicast, "3w" / "3e" / "3we" the shapes (requested_shape). v2, the 3p/3c
/// grids and the shapes are compiled only where PIE_PREFILL_SM90_ALL is 1 (the kernel test and
/// bench); elsewhere they fall back to the default.
inline const char* version_env() {
  static const char* e = std::getenv("PIE_PREFILL_SM90");
  return e == nullptr ? "" : e;
}
inline int version() {
  static const int v = std::strcmp(version_env(), "2") == 0 ? 2 : 3;
  return v;
}
inline plan::Box requested_box() {
  return std::strcmp(version_env(), "3h") == 0 ? plan::Box::kHalves : plan::Box::kPage;
}
/// "3w": 3 consumer warpgroups (192-row tiles, head dim 64; elsewhere 2); "3e": 2 warpgroups with
/// part of the exps on the FMA pipe; "3we": both.
inline Shape requested_shape() {
  const char* e = version_env();
  if (std::strcmp(e, "3w") == 0) return Shape{3, 0};
  if (std::strcmp(e, "3e") == 0) return Shape{2, kEmuPeriod};
  if (std::strcmp(e, "3we") == 0) return Shape{3, kEmuPeriod};
  return Shape{};  // the default
}
inline plan::Grid requested_grid() {
  if (std::strcmp(version_env(), "3p") == 0) return plan::Grid::kPersistent;
  if (std::strcmp(version_env(), "3c") == 0) return plan::Grid::kCluster;
  return plan::Grid::kTile;
}

}  // namespace pie::ops::cuda::sm90::v3
