#pragma once
/// \file attention_decode_multi_item.cuh
/// \brief Multi-item CTAs of the CUDA-core decode kernel (kDecodeMultiItem, opt-in): for launches
/// without splits, a grid of as many CTAs as the device holds at once, each walking several
/// (sequence, KV head) items through one continuous shared-memory ring, so that the next item's
/// pages are copied while the current item's last stage and epilogue run. Each item gets the
/// one-item kernel's arithmetic (decode_body in attention_decode.cuh) in the same order, so the
/// outputs are bit-identical. Private to ops/cuda (attention_decode.cuh launches it).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/attention_decode_ring.cuh"
#include "pie/ops/cuda/attention_decode_shape.cuh"
#include "pie/ops/cuda/bulk_copy.cuh"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/mma.cuh"

namespace pie::ops::cuda::detail {

/// \brief The (sequence, KV head) items of one multi-item CTA (kDecodeMultiItem). Item k of the
/// launch is sequence k / num_kv_heads, KV head k % num_kv_heads; CTA c runs items c, c + G, c + 2G, …
/// (G = gridDim.x), its local items 0, 1, …, n − 1. Strided rather than a contiguous chunk: the KV
/// heads of one sequence (equal lengths) go to different CTAs, so a long sequence's work is spread
/// over the grid instead of stacked on one CTA, and every CTA's first items are the launch's first
/// items, as in the one-item grid's order. The table (warp 0's, for the ring's producer) holds the
/// length and page-table offset of 32 local items, lane j those of local item window + j: an item's
/// metadata is then a shuffle, and the loads' latency is paid once per 32 items, not per item.
struct DecodeItemTable {
  int n;            ///< local items of this CTA
  int window = -32; ///< first local item of the table (none loaded yet)
  int len = 0;      ///< this lane's item's sequence length
  int page_base = 0;///< this lane's item's first page-table entry (kv.indptr[b])

  template <class KV>
  __device__ __forceinline__ explicit DecodeItemTable(const kv::PagedKV<KV>& kv) {
    const int total = kv.batch_size * kv.num_kv_heads, c = int(blockIdx.x), g = int(gridDim.x);
    n = c < total ? (total - c + g - 1) / g : 0;
  }
  /// Warp-uniform j < n: item j's (sequence length, page base); loads the next window when j leaves it.
  template <class KV>
  __device__ __forceinline__ int2 get(const kv::PagedKV<KV>& kv, int j) {
    if (j >= window + 32) {
      window = j;
      const int i = j + int(threadIdx.x % 32);
      if (i < n) {
        const int b = (int(blockIdx.x) + i * int(gridDim.x)) / kv.num_kv_heads;
        len = kv.seq_len(b);
        page_base = kv.indptr[b];
      }
    }
    return {__shfl_sync(0xffffffffu, len, j - window), __shfl_sync(0xffffffffu, page_base, j - window)};
  }
};

/// \brief Warp 0's side of a multi-item CTA's ring: the concatenation of the CTA's items' stages
/// is one stream, global stage i going to slot i % STAGES, so the next item's first stages are
/// copied while the current item's last ones are computed and its epilogue (cross-warp merge and
/// output) runs. Items without tokens (empty sequences) add no stage. As in DecodeRing, the page
/// id of a lane's first copy of the next stage is loaded one issue ahead, across item boundaries
/// too; an item's metadata comes from a DecodeItemTable of warp 0's own. Registers are what the
/// CTA is short of (4 per SM at ≤ 128 each): the ring's t_lo and n_stages advance with each
/// issued stage instead of a stage counter.
template <int TOK, int HD, int STAGES, class KV, class Variant>
struct DecodeItemStream {
  DecodeItemTable tab;
  DecodeRing<TOK, HD, STAGES, KV> ring;  ///< of local item j, from its next stage to issue on
  int j = -1;        ///< item of the next stage to issue (tab.n: none left)
  int32_t page = 0;  ///< ring.page_of(0)

  __device__ __forceinline__ DecodeItemStream(const kv::PagedKV<KV>& kv, int bs_shift, KV* ring_base, uint64_t* bars,
                                              int lane)
      : tab(kv), ring(kv, kv.indices, 0, bs_shift, 0, 0, 0, ring_base, bars, lane) {}
  __device__ __forceinline__ bool more() const { return j < tab.n; }
  /// Moves to the first stage of the next item that has one.
  __device__ __forceinline__ void seek(const kv::PagedKV<KV>& kv, int tokens_per_split) {
    while (++j < tab.n) {
      const int2 e = tab.get(kv, j);
      const DecodeSpan sp = decode_span_of_len<TOK, Variant>(e.x, 0, tokens_per_split);
      if (sp.n_stages > 0) {
        const int kvh = (int(blockIdx.x) + j * int(gridDim.x)) % kv.num_kv_heads;
        ring = DecodeRing<TOK, HD, STAGES, KV>(kv, kv.indices + e.y, kvh, ring.bs_shift, sp.t_lo, sp.t_end,
                                               sp.n_stages, ring.ring, ring.bars, ring.lane);
        return;
      }
    }
  }
  /// Warp 0, more(): copies the next stage into `slot` (free: its previous stage was consumed, or
  /// none yet) and moves on.
  __device__ __forceinline__ void issue_next(const kv::PagedKV<KV>& kv, int tokens_per_split, int slot) {
    ring.issue(0, slot, page);
    ring.t_lo += TOK;
    if (--ring.n_stages == 0) seek(kv, tokens_per_split);
    page = more() ? ring.page_of(0) : 0;
  }
  /// Warp 0: finds the first item and fills the first STAGES slots.
  __device__ __forceinline__ void start(const kv::PagedKV<KV>& kv, int tokens_per_split) {
    seek(kv, tokens_per_split);
    page = more() ? ring.page_of(0) : 0;
#pragma unroll 1
    for (int i = 0; i < STAGES && more(); ++i) issue_next(kv, tokens_per_split, i);
  }
};

/// \brief One thread's share of a CUDA-core decode CTA's work on one (sequence, KV head) item: its
/// slice of the GROUP queries, their online-softmax state and accumulators, the arithmetic of one
/// ring stage, and the fold of the state into the cross-warp merge area, for the multi-item CTAs
/// (decode_multi_item_body), which run several items in turn. Each item must see the operations of
/// decode_body's one-item CTA in the same order, so that the two agree bit for bit (the decode
/// test compares them): this is decode_body's arithmetic, cut at its stage loop. MODE: as there.
template <int HD, int GROUP, int NW, int STAGES, int MODE, class T, class KV, class Variant>
struct DecodeItemState {
  using S = DecodeShape<HD, GROUP, NW, STAGES, KV>;
  static constexpr int LPT = S::LPT, TG = S::TG, NG = S::NG, U = S::U, TOK = S::TOK;
  // Reduce-scatter softmax state: this lane's HH heads (or its share of one head, SHARE lanes).
  static constexpr int N = GROUP * U, LOG_LPT = __builtin_ctz(LPT), LOG_N = __builtin_ctz(N);
  static constexpr int R = LOG_LPT < LOG_N ? LOG_LPT : LOG_N;  // halving levels
  static constexpr int NV = N >> R, SH = LOG_LPT - R;           // scores per lane; lanes holding the same ones: 2^SH
  static constexpr int HH = NV >= U ? NV / U : 1, SHARE = NV >= U ? 1 : U / NV;
  int warp, lane, tg, sub, ng;
  float score_scale;
  float q[GROUP][8];
  float m[GROUP], l[GROUP], acc[GROUP][8];
  float m_own[HH], l_own[HH];

  __device__ __forceinline__ DecodeItemState()
      : warp(int(threadIdx.x) / 32), lane(int(threadIdx.x) % 32), tg(lane / LPT), sub(lane % LPT),
        ng(warp * TG + tg) {}

  /// Starts an item of KV head kvh: scaled queries, empty state. q_of(g): this lane's 8 elements
  /// of query head g of the item (in global memory, or a copy in shared memory).
  template <class QOf>
  __device__ __forceinline__ void begin(const DecodeParams<T, KV, Variant>& p, int kvh, QOf q_of) {
    // Scores are q·k·sm_scale in the log2 domain: folded into q unless the variant transforms
    // the scaled logit (soft-cap), which then sees it unscaled by log2(e).
    score_scale = p.sm_scale * (is_fp8_v<KV> ? p.kv.k_scale_of(kvh) : 1.f);
    const float q_scale = Variant::kSoftCap ? 1.f : score_scale * kLog2e;
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
      load8(q_of(g), q[g]);
#pragma unroll
      for (int j = 0; j < 8; ++j) q[g][j] *= q_scale;
    }
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
      m[g] = -INFINITY; l[g] = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
    }
#pragma unroll
    for (int h = 0; h < HH; ++h) { m_own[h] = -INFINITY; l_own[h] = 0.f; }
  }

  /// The stage of tokens [ts, ts + TOK) in shared memory at sk (K rows, then V rows).
  __device__ __forceinline__ void stage(const DecodeParams<T, KV, Variant>& p, const KV* sk, int ts,
                                        const DecodeSpan& span) {
    const int qpos = span.qpos, t_begin = span.t_begin, t_end = span.t_end;
    const KV* sv = sk + TOK * HD;
    if constexpr (MODE == 1) {  // benchmark only: the pages' movement without the arithmetic
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const Pack8<KV> kp = *reinterpret_cast<const Pack8<KV>*>(sk + (ng + u * NG) * HD + sub * 8);
        const Pack8<KV> vp = *reinterpret_cast<const Pack8<KV>*>(sv + (ng + u * NG) * HD + sub * 8);
        acc[0][u & 7] += to_f32(kp.v[u & 7]) + to_f32(vp.v[7 - (u & 7)]);
      }
      l[0] = 1.f; m[0] = 0.f;
      return;
    }
    float s[GROUP][U];
    float sv_[N];  // the same scores flat, idx = g·U + u (reduce-scatter path)
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const Pack8<KV> kp = *reinterpret_cast<const Pack8<KV>*>(sk + (ng + u * NG) * HD + sub * 8);
      float k[8];
      widen8(kp, k);
#pragma unroll
      for (int g = 0; g < GROUP; ++g) {
        float d = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) d = fmaf(q[g][j], k[j], d);
        s[g][u] = d;
        sv_[g * U + u] = d;
      }
    }
    bool live[U];
#pragma unroll
    for (int u = 0; u < U; ++u) live[u] = ts + ng + u * NG < t_end;
    if constexpr (MODE == 2) {  // benchmarks only: the all-reduce softmax (every lane all scores)
#pragma unroll
      for (int g = 0; g < GROUP; ++g)
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
          for (int o = LPT / 2; o > 0; o >>= 1) s[g][u] += __shfl_xor_sync(0xffffffffu, s[g][u], o);
#pragma unroll
      for (int g = 0; g < GROUP; ++g) {
        float mx = m[g];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int t = ts + ng + u * NG;
          const float x = Variant::kSoftCap ? p.variant.logits(s[g][u] * score_scale) * kLog2e : s[g][u];
          s[g][u] = live[u] && t >= t_begin && p.variant.mask(qpos, t) ? x : -INFINITY;
          mx = fmaxf(mx, s[g][u]);
        }
        if (mx > m[g]) {  // rescale only when the running maximum moves
          const float corr = safe_scale(m[g], mx);
          l[g] *= corr;
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[g][j] *= corr;
          m[g] = mx;
        }
#pragma unroll
        for (int u = 0; u < U; ++u) s[g][u] = m[g] == -INFINITY ? 0.f : exp2f(s[g][u] - m[g]);
      }
      // Rows past the context end hold stale shared memory (never copied): skip them, as 0·NaN
      // would poison the sum.
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (!live[u]) continue;
        const Pack8<KV> vp = *reinterpret_cast<const Pack8<KV>*>(sv + (ng + u * NG) * HD + sub * 8);
        float v[8];
        widen8(vp, v);
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
          l[g] += s[g][u];
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(s[g][u], v[j], acc[g][j]);
        }
      }
    } else {
      // Reduce-scatter of the N = GROUP·U partial dot products over the LPT lanes of a row:
      // each level sends half of the values still held and keeps the other half, so after R
      // levels lane `sub` holds NV complete scores, indices (sub >> SH)·NV + i (idx = g·U + u):
      // ~N shuffles instead of N·log2(LPT), and each lane exponentiates NV scores, not N.
      reduce_scatter<N / 2, LPT / 2, NV>(sv_, sub);
#pragma unroll
      for (int o = (LPT >> R) >> 1; o > 0; o >>= 1)
#pragma unroll
        for (int i = 0; i < NV; ++i) sv_[i] += __shfl_xor_sync(0xffffffffu, sv_[i], o);
      const int base = (sub >> SH) * NV;
      float mx[HH];
#pragma unroll
      for (int h = 0; h < HH; ++h) mx[h] = m_own[h];
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        const int u = NV >= U ? i % U : base % U + i;
        const int t = ts + ng + u * NG;
        const float x = Variant::kSoftCap ? p.variant.logits(sv_[i] * score_scale) * kLog2e : sv_[i];
        sv_[i] = t < t_end && t >= t_begin && p.variant.mask(qpos, t) ? x : -INFINITY;
        mx[i / U] = fmaxf(mx[i / U], sv_[i]);
      }
#pragma unroll
      for (int o = 1 << SH; o < (SHARE << SH); o <<= 1) mx[0] = fmaxf(mx[0], __shfl_xor_sync(0xffffffffu, mx[0], o));
      bool moved = false;
      float corr[HH];
#pragma unroll
      for (int h = 0; h < HH; ++h) {
        corr[h] = 1.f;
        if (mx[h] > m_own[h]) {  // rescale only when the running maximum moves
          corr[h] = safe_scale(m_own[h], mx[h]);
          l_own[h] *= corr[h];
          m_own[h] = mx[h];
          moved = true;
        }
      }
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        sv_[i] = m_own[i / U] == -INFINITY ? 0.f : exp2f(sv_[i] - m_own[i / U]);
        l_own[i / U] += sv_[i];
      }
      const int row0 = lane & ~(LPT - 1);  // first lane of this row's lane group
      if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
          const float c = __shfl_sync(0xffffffffu, corr[(g * U % NV) / U], row0 + ((g * U / NV) << SH));
          if (c != 1.f) {
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[g][j] *= c;
          }
        }
      }
      float pb[GROUP][U];
#pragma unroll
      for (int g = 0; g < GROUP; ++g)
#pragma unroll
        for (int u = 0; u < U; ++u)
          pb[g][u] = __shfl_sync(0xffffffffu, sv_[(g * U + u) % NV], row0 + (((g * U + u) / NV) << SH));
      // Rows past the context end hold stale shared memory (never copied): skip them, as 0·NaN
      // would poison the sum.
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (!live[u]) continue;
        const Pack8<KV> vp = *reinterpret_cast<const Pack8<KV>*>(sv + (ng + u * NG) * HD + sub * 8);
        float v[8];
        widen8(vp, v);
#pragma unroll
        for (int g = 0; g < GROUP; ++g)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(pb[g][u], v[j], acc[g][j]);
      }
    }
  }

  /// After the item's last stage: the state of every lane merged over the warp, and each warp's
  /// (acc, m, l) per head written to `merge` ([NW][GROUP][HD] acc, then [NW][GROUP] m and l). The
  /// caller then needs a barrier before decode_store_merged reads it.
  __device__ __forceinline__ void finish(float* merge) {
    if constexpr (MODE == 0) {
      // Back to per-head state in every lane: l summed over the lanes sharing a head, then m and l
      // read from the lanes owning each head.
#pragma unroll
      for (int o = 1 << SH; o < (SHARE << SH); o <<= 1) l_own[0] += __shfl_xor_sync(0xffffffffu, l_own[0], o);
      const int row0 = lane & ~(LPT - 1);
#pragma unroll
      for (int g = 0; g < GROUP; ++g) {
        m[g] = __shfl_sync(0xffffffffu, m_own[(g * U % NV) / U], row0 + ((g * U / NV) << SH));
        l[g] = __shfl_sync(0xffffffffu, l_own[(g * U % NV) / U], row0 + ((g * U / NV) << SH));
      }
    }
    // l is per lane group but every lane of the group computed the same value: merge groups.
#pragma unroll
    for (int o = LPT; o < 32; o <<= 1) {
#pragma unroll
      for (int g = 0; g < GROUP; ++g) {
        float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
        float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
        float mn = fmaxf(m[g], mo);
        float a = safe_scale(m[g], mn), c = safe_scale(mo, mn);
        l[g] = l[g] * a + lo * c;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          float ao = __shfl_xor_sync(0xffffffffu, acc[g][j], o);
          acc[g][j] = acc[g][j] * a + ao * c;
        }
        m[g] = mn;
      }
    }
    float* s_acc = merge;
    float* s_m = s_acc + NW * GROUP * HD;
    float* s_l = s_m + NW * GROUP;
    if (tg == 0) {
#pragma unroll
      for (int g = 0; g < GROUP; ++g) {
#pragma unroll
        for (int j = 0; j < 8; ++j) s_acc[(warp * GROUP + g) * HD + sub * 8 + j] = acc[g][j];
        if (sub == 0) { s_m[warp * GROUP + g] = m[g]; s_l[warp * GROUP + g] = l[g]; }
      }
    }
  }
};

/// Copies the GROUP query rows of (sequence b, KV head kvh) to shared memory with cp.async (no
/// registers held while they travel); the caller commits and waits.
template <int HD, int GROUP, int NW, class T, class KV, class Variant>
__device__ __forceinline__ void decode_copy_q(const DecodeParams<T, KV, Variant>& p, int b, int kvh, T* dst) {
  const T* src = p.q + b * p.q_stride + int64_t(kvh * GROUP) * HD;
  for (int i = int(threadIdx.x); i < GROUP * HD / 8; i += NW * 32) cp_async16(smem_u32(dst + i * 8), src + i * 8, true);
  cp_async_commit();
}

/// Device body of a multi-item CTA (kDecodeMultiItem; launches without splits): the CTA runs its
/// items (DecodeItemTable: c, c + G, …) in turn through one continuous ring (DecodeItemStream,
/// warp 0), so the next item's first stages are in flight while this item's last stage is
/// computed and its epilogue runs. The next item's queries travel meanwhile too (cp.async into
/// the other half of a double buffer), and its length is loaded before this item's epilogue. Each
/// item sees the operations of decode_body's CTA in the same order (bit-identical output).
/// Shared memory: the ring, then the merge area (its own: the ring holds the next item's copies
/// while this one merges, and no generic write touches bytes that the bulk copies write, so no
/// proxy fence is needed), then the queries [2][GROUP][HD].
template <int HD, int GROUP, int NW, int STAGES, int MODE, class T, class KV, class Variant>
__device__ __forceinline__ void decode_multi_item_body(const DecodeParams<T, KV, Variant>& p, unsigned char* smem,
                                                       uint64_t* bars) {
  static_assert((MODE & (kDecodeFusedMerge | kDecodeMultiItem)) == 0, "multi-item CTAs: benchmark modes only");
  using St = DecodeItemState<HD, GROUP, NW, STAGES, MODE, T, KV, Variant>;
  using S = typename St::S;
  constexpr int TOK = S::TOK;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int nkv = p.kv.num_kv_heads, grid = int(gridDim.x);
  KV* ring_base = reinterpret_cast<KV*>(smem);
  float* merge = reinterpret_cast<float*>(smem + S::RING_BYTES);
  T* s_q = reinterpret_cast<T*>(smem + S::RING_BYTES + S::MERGE_BYTES);

  const int n = DecodeItemTable(p.kv).n;
  int len = 0;  // of the current item
  if (n > 0) {
    const int b0 = int(blockIdx.x) / nkv;
    decode_copy_q<HD, GROUP, NW>(p, b0, int(blockIdx.x) - b0 * nkv, s_q);
    len = p.kv.seq_len(b0);
  }
  DecodeItemStream<TOK, HD, STAGES, KV, Variant> stream(p.kv, p.bs_shift, ring_base, bars, lane);
  if (warp == 0) stream.start(p.kv, p.tokens_per_split);
  cp_async_wait_all();
  __syncthreads();  // the first item's queries
  St st;
  int g = 0;  // global stage: slot g % STAGES, phase g / STAGES
#pragma unroll 1
  for (int j = 0; j < n; ++j) {
    const int k = int(blockIdx.x) + j * grid, b = k / nkv, kvh = k - b * nkv;
    const DecodeSpan span = decode_span_of_len<TOK, Variant>(len, 0, p.tokens_per_split);
    const T* q_item = s_q + (j & 1) * GROUP * HD;
    st.begin(p, kvh, [&](int gq) { return q_item + gq * HD + st.sub * 8; });
    // The other half of the buffer was last read by the previous item's begin, before its
    // epilogue's barrier.
    if (j + 1 < n) {
      const int bn = (k + grid) / nkv;
      decode_copy_q<HD, GROUP, NW>(p, bn, k + grid - bn * nkv, s_q + ((j + 1) & 1) * GROUP * HD);
    }
    // The previous item's decode_store_merged read the merge area that this item's finish writes:
    // a stage's barrier lies between them, or this one for an item without stages.
    if (span.n_stages == 0) __syncthreads();
#pragma unroll 1
    for (int it = 0; it < span.n_stages; ++it, ++g) {
      const int slot = g % STAGES;
      mbar_wait(&bars[slot], (g / STAGES) & 1);
      st.stage(p, ring_base + slot * S::STAGE_ELEMS, span.t_lo + it * TOK, span);
      __syncthreads();  // every warp is done with this slot
      if (warp == 0 && stream.more()) stream.issue_next(p.kv, p.tokens_per_split, slot);
    }
    if (j + 1 < n) len = p.kv.seq_len((k + grid) / nkv);  // arrives during the epilogue
    st.finish(merge);
    cp_async_wait_all();
    __syncthreads();  // the merge area, and the next item's queries
    decode_store_merged<HD, GROUP, NW, false>(p, merge, kvh, b, 0, 1);
  }
}

/// The multi-item CTA (decode_multi_item_body): a 1-D grid of CTAs over the launch's items.
template <int HD, int GROUP, int NW, int STAGES, int MODE, class T, class KV, class Variant>
__global__ void __launch_bounds__(NW * 32, decode_ctas_per_sm(GROUP) * 4 / NW > 0 ? decode_ctas_per_sm(GROUP) * 4 / NW : 1)
    decode_multi_item_kernel(const __grid_constant__ DecodeParams<T, KV, Variant> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ uint64_t bars[STAGES];
  if (threadIdx.x == 0)
    for (int s = 0; s < STAGES; ++s) mbar_init(&bars[s], 1);
  __syncthreads();
  pdl_launch_dependents();
  pdl_wait();
  decode_multi_item_body<HD, GROUP, NW, STAGES, MODE>(p, smem, bars);
}

/// The multi-item CUDA-core kernel (kDecodeMultiItem; one split): `ctas` CTAs (0: as many as are
/// resident on the device at once, from the occupancy of this kernel), at most one per item.
template <int HD, int GROUP, int NW, int STAGES, int MODE = 0, class T, class KV, class Variant>
void launch_decode_multi_item(const DecodeParams<T, KV, Variant>& p, int batch, int ctas, cudaStream_t stream) {
  static_assert(NW > 0 && STAGES > 0, "launch_decode_multi_item: warps and stages");
  auto kern = decode_multi_item_kernel<HD, GROUP, NW, STAGES, MODE, T, KV, Variant>;
  constexpr size_t smem = DecodeShape<HD, GROUP, NW, STAGES, KV>::template multi_item_smem<T>();
  // Per kernel and device, as in launch_decode_kernel: the shared-memory attribute, then the
  // resident CTAs of the whole device (0: not yet asked).
  static std::atomic<uint64_t> smem_set{0};
  static std::atomic<int> resident[64];
  int device = 0;
  PIE_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (!(smem_set.load(std::memory_order_relaxed) & bit)) {
    PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    smem_set.fetch_or(bit, std::memory_order_relaxed);
  }
  int all = resident[device & 63].load(std::memory_order_relaxed);
  if (all == 0) {
    int per_sm = 0, sms = 0;
    PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, NW * 32, smem));
    PIE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    all = std::max(per_sm, 1) * sms;
    resident[device & 63].store(all, std::memory_order_relaxed);
  }
  const int64_t items = int64_t(batch) * p.kv.num_kv_heads;
  const int grid = int(std::min<int64_t>(items, ctas > 0 ? ctas : all));
  if (grid > 0) launch_pdl(kern, dim3(unsigned(grid)), dim3(NW * 32), smem, stream, p);
}

}  // namespace pie::ops::cuda::detail
