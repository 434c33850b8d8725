#pragma once
/// \file attention_decode_ring.cuh
/// \brief What the decode attention kernels share: their launch parameters, the shared-memory
/// ring that one warp fills with a (sequence, KV head)'s pages by 1-D bulk copies, and the
/// cross-warp merge that ends a CTA. Private to ops/cuda (attention_decode.cuh and
/// attention_decode_mma.cuh).
#include <cooperative_groups.h>

#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/bulk_copy.cuh"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/rope.cuh"

namespace pie::ops::cuda {

/// \brief q/k RMSNorm and RoPE of the step's rows done inside decode attention (decode_attention's
/// `rope`; attention_decode_rope.cuh): q is then the raw (unrotated) projection, and k_new / v_new
/// the raw K and V rows of the same tokens, which the kernel writes into the cache itself.
template <class T>
struct DecodeRopeArgs {
  const int32_t* positions = nullptr;  ///< device [batch]: the position of each row's token
  const T* q_norm = nullptr;           ///< [head_dim] or null (no q/k norm: plain RoPE)
  const T* k_norm = nullptr;
  float eps = 1e-6f;
  RopeParams rope;
  T* k_new = nullptr;  ///< [batch] rows (stride row_stride) of num_kv_heads·head_dim raw K
  T* v_new = nullptr;  ///< the same for V
  int64_t row_stride = 0;
};

}  // namespace pie::ops::cuda

namespace pie::ops::cuda::detail {

inline constexpr float kLog2e = 1.4426950408889634f;

/// Orders this thread's generic-proxy shared-memory accesses before later async-proxy (bulk copy)
/// writes to the same bytes (a split_loop CTA refills the ring that its merge area aliased).
__device__ __forceinline__ void decode_fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ float safe_scale(float m_old, float m_new) {
  return m_old == -INFINITY ? 0.f : exp2f(m_old - m_new);
}

/// Parameters of one decode launch, passed by value (__grid_constant__).
template <class T, class KV, class Variant>
struct DecodeParams {
  const T* q; int64_t q_stride;  ///< [batch, nq, hd], token stride q_stride
  T* out; int64_t out_stride;    ///< [batch, nq, hd]
  float* part_o;                 ///< [splits, batch, nq, hd] (num_splits > 1)
  float* part_lse;               ///< [splits, batch, nq], log2 domain
  kv::PagedKV<KV> kv;
  int bs_shift;                  ///< log2(block_size)
  int tokens_per_split;
  int num_splits;
  float sm_scale;
  Variant variant;
  unsigned* counters;            ///< [batch][num_kv_heads] arrivals (fused merge), zero between launches
  /// The batch-invariant split's launch (DecodePlan::fixed_split, tensor-core kernel): sequence b
  /// has its own decode_seq_splits(len, tokens_per_split) splits, and CTA z of a (sequence, KV
  /// head) runs splits z, z + gridDim.z, … of them; num_splits only sizes the partials.
  bool split_loop;
  /// The launch is one cluster of num_splits CTAs per (sequence, KV head), which merge their
  /// partials in distributed shared memory (DecodePlan::cluster_merge): no part_o / part_lse.
  bool cluster_merge;
  /// Warp 0 issues the first ring stages of pages older than the query before the kernel waits
  /// for its predecessor (DecodePlan::early_pages; decode_issue_early_pages).
  bool early_pages;
  /// q/k norm + RoPE and the KV write inside the kernel (MODE kDecodeRope; attention_decode_rope.cuh).
  DecodeRopeArgs<T> rope;
  /// log2 of the CTAs per (sequence, KV head) (DecodePlan::group_parts): the grid's x is the
  /// *part* ("virtual KV head") vh = kvh · parts + part, serving query heads [vh · GROUP,
  /// (vh + 1) · GROUP) of the KV head kvh = vh >> group_shift; the parts of a pair are one cluster.
  int group_shift;
  /// The CUDA-core kernel calls griddepcontrol.launch_dependents after its stages, not at its start
  /// (DecodePlan::late_dependents); the tensor-core kernel always calls it at its start.
  bool late_dependents;
  /// The cluster merge pushes (DecodePlan::cluster_push): every CTA writes its partial rows into
  /// split 0's shared memory at this byte offset (past everything else the kernel keeps there) and
  /// only split 0 merges them, from its own memory (decode_store_merged). 0: off. Set by the
  /// CUDA-core kernel's launch alone (launch_decode), which sizes the shared memory for it.
  int cluster_push_offset;
#if defined(PIE_DECODE_TIMELINE)
  /// Bench only: [CTA][kDecodeMarks] %globaltimer stamps of thread 0 (attention_decode.cuh).
  unsigned long long* timeline;
#endif
};

/// Splits of a sequence of `len` tokens in a split_loop launch: its own, at least one (a CTA of
/// an empty sequence writes its zero output).
__host__ __device__ __forceinline__ int decode_seq_splits(int len, int tokens_per_split) {
  return len <= tokens_per_split ? 1 : (len + tokens_per_split - 1) / tokens_per_split;
}

/// Bit of the decode kernels' MODE template argument that fuses the split merge into the kernel
/// (decode_store_merged); the low bits are the benchmark modes (0: attention).
inline constexpr int kDecodeFusedMerge = 8;
/// Bit of the CUDA-core decode kernel's MODE that folds q/k norm + RoPE and the KV write into it
/// (attention_decode_rope.cuh); compiled only with PIE_DECODE_LATENCY (its kernels are a second
/// set of instantiations, and the prologue's registers would otherwise weigh on the default ones).
inline constexpr int kDecodeRope = 16;

/// Whether this build has the latency paths (-DPIE_DECODE_LATENCY=ON: DecodePlan::cluster_merge,
/// DecodePlan::early_pages, kDecodeRope). Without them their flags are compile-time false in the
/// kernels, whose machine code is then what it was before the paths existed.
#if defined(PIE_DECODE_LATENCY)
inline constexpr bool kDecodeLatencyPaths = true;
#else
inline constexpr bool kDecodeLatencyPaths = false;
#endif

/// The KV head of a decode CTA's part vh (DecodeParams::group_shift; vh itself without the latency
/// paths, which alone launch parts).
template <class T, class KV, class Variant>
__device__ __forceinline__ int decode_kv_head(const DecodeParams<T, KV, Variant>& p, int vh) {
  return kDecodeLatencyPaths ? vh >> p.group_shift : vh;
}
/// Whether part vh is the first of its KV head's parts: the one that writes what the parts share
/// (the fused RoPE's cache row and rotated K).
template <class T, class KV, class Variant>
__device__ __forceinline__ bool decode_lead_part(const DecodeParams<T, KV, Variant>& p, int vh) {
  return !kDecodeLatencyPaths || (vh & ((1 << p.group_shift) - 1)) == 0;
}

/// \brief The tokens one decode CTA attends to: split `split` of sequence b, narrowed to the
/// variant's window, and the TOK-token stages that cover them. Stages start at multiples of TOK
/// (split starts are multiples of 64), so tokens in [t_lo, t_begin) of the first stage are
/// outside the window: the kernels' masks drop them.
struct DecodeSpan {
  int qpos;      ///< the query's position: the sequence's last token
  int t_begin;   ///< first token attended
  int t_end;     ///< one past the last
  int t_lo;      ///< first token of the first stage (t_begin rounded down to TOK)
  int n_stages;  ///< stages of TOK tokens from t_lo (0: nothing to attend)
};
template <int TOK, class Variant, class KV>
__device__ __forceinline__ DecodeSpan decode_span(const kv::PagedKV<KV>& kv, int b, int split, int tokens_per_split) {
  const int len = kv.seq_len(b);
  const int qpos = len - 1;
  int t_begin = split * tokens_per_split;
  const int t_end = min(len, t_begin + tokens_per_split);
  if constexpr (Variant::kWindowLeft > 0) t_begin = max(t_begin, qpos - Variant::kWindowLeft + 1);
  const int t_lo = t_begin & ~(TOK - 1);
  return {qpos, t_begin, t_end, t_lo, t_begin < t_end ? (t_end - t_lo + TOK - 1) / TOK : 0};
}

/// \brief The ring of STAGES shared-memory stages of TOK tokens (K rows [TOK][HD], then V rows)
/// through which one CTA streams the pages of tokens [t_lo, t_end) of one sequence and KV head.
/// Warp 0 fills a slot: lane 0 announces the bytes on the slot's mbarrier, then each lane copies
/// K or V runs (copy i of a stage is run i/2, K for even i, V for odd). The page id of a lane's
/// first copy is loaded one stage ahead (`page_of`), so the issue after each stage's barrier
/// waits for no load; further copies (block sizes under TOK/16) read theirs in place.
template <int TOK, int HD, int STAGES, class KV>
struct DecodeRing {
  static constexpr int STAGE_ELEMS = 2 * TOK * HD;
  KV* ring;
  const KV* data;
  const int32_t* pages;
  uint64_t* bars;
  int t_lo, t_end, n_stages, bs_shift, bs_mask, seg_shift, lane;
  uint32_t seg_bytes;
  int64_t head_off, v_off, bstride;

  __device__ __forceinline__ DecodeRing(const kv::PagedKV<KV>& kv, int b, int kvh, int bs_shift_, int t_lo_,
                                        int t_end_, int n_stages_, KV* ring_, uint64_t* bars_, int lane_)
      : ring(ring_), data(kv.data), pages(kv.indices + kv.indptr[b]), bars(bars_), t_lo(t_lo_), t_end(t_end_),
        n_stages(n_stages_), bs_shift(bs_shift_), bs_mask((1 << bs_shift_) - 1), lane(lane_) {
    head_off = int64_t(kvh) * (HD << bs_shift);
    v_off = int64_t(kv.num_kv_heads) * (HD << bs_shift);
    bstride = 2 * v_off;
    // A stage is TOK/seg runs of `seg` rows (whole pages, or a slice of a page larger than TOK).
    seg_shift = min(bs_shift, __ffs(TOK) - 1);
    seg_bytes = uint32_t(HD * sizeof(KV)) << seg_shift;
  }
  /// Page id of this lane's first copy of `stage` (0 past the end).
  __device__ __forceinline__ int32_t page_of(int stage) const {
    const int t = t_lo + stage * TOK + ((lane >> 1) << seg_shift);
    return stage < n_stages && t < t_end ? pages[t >> bs_shift] : 0;
  }
  /// Warp 0: fills `slot` with `stage`; page0 = page_of(stage).
  __device__ __forceinline__ void issue(int stage, int slot, int32_t page0) const {
    const int ts = t_lo + stage * TOK;
    const int nseg = min(TOK >> seg_shift, (t_end - ts + (1 << seg_shift) - 1) >> seg_shift);
    if (lane == 0) mbar_arrive_expect_tx(&bars[slot], 2u * nseg * seg_bytes);
    __syncwarp();
    KV* dst = ring + slot * STAGE_ELEMS;
    for (int i = lane; i < 2 * nseg; i += 32) {
      const int k = i >> 1, t = ts + (k << seg_shift);
      const int32_t page = i == lane ? page0 : pages[t >> bs_shift];
      const int64_t src = int64_t(page) * bstride + head_off + int64_t(t & bs_mask) * HD + ((i & 1) ? v_off : 0);
      bulk_copy_g2s(dst + (i & 1) * TOK * HD + (k << seg_shift) * HD, data + src, seg_bytes, &bars[slot]);
    }
  }
  /// Warp 0: fills the ring with stages `done` to STAGES − 1 (the first `done` were filled by
  /// start_old, or by the previous item of a persistent CTA); stage s goes to slot (base + s) mod
  /// STAGES, base being the stages the CTA consumed before (0 for a one-item CTA). Returns
  /// page_of(STAGES), the next stage's first page.
  __device__ __forceinline__ int32_t start(int done = 0, uint32_t base = 0) const {
    int32_t first[STAGES];
#pragma unroll
    for (int s = 0; s < STAGES; ++s) first[s] = s >= done ? page_of(s) : 0;
#pragma unroll
    for (int s = 0; s < STAGES; ++s)
      if (s >= done && s < n_stages) issue(s, int((base + s) % STAGES), first[s]);
    return page_of(STAGES);
  }
  /// Warp 0, before the kernel waits for its predecessor: fills the first slots whose stages hold
  /// only tokens before `qpos` (K/V rows of earlier steps; the query's own row is written by this
  /// step's KV write), in order, and returns how many it filled (start's `done`).
  __device__ __forceinline__ int start_old(int qpos) const {
    int n = 0;
    for (; n < STAGES && n < n_stages; ++n) {
      if (min(t_lo + (n + 1) * TOK, t_end) > qpos) break;  // the stage holds the query's row
      issue(n, n, page_of(n));
    }
    return n;
  }
};

/// \brief Warp 0 of a decode CTA for split `split` of (sequence blockIdx.y, KV head blockIdx.x),
/// before `griddepcontrol.wait`: issues the ring stages that DecodeRing::start_old may (pages of
/// earlier steps only: the page table and lengths were uploaded before the step's first kernel,
/// and no kernel of a step writes K/V rows other than its new tokens'). Returns the stages
/// issued, for the body's DecodeRing::start.
template <int TOK, int HD, int STAGES, class Variant, class T, class KV>
__device__ __forceinline__ int decode_issue_early_pages(const DecodeParams<T, KV, Variant>& p, unsigned char* smem,
                                                        uint64_t* bars, int split) {
  const int b = blockIdx.y, kvh = decode_kv_head(p, int(blockIdx.x));
  const DecodeSpan sp = decode_span<TOK, Variant>(p.kv, b, split, p.tokens_per_split);
  DecodeRing<TOK, HD, STAGES, KV> ring(p.kv, b, kvh, p.bs_shift, sp.t_lo, sp.t_end, sp.n_stages,
                                       reinterpret_cast<KV*>(smem), bars, int(threadIdx.x) % 32);
  return ring.start_old(sp.qpos);
}

/// Shared memory of the cross-warp merge: [NW][GROUP][HD] accumulators, then [NW][GROUP] m and l.
template <int HD, int GROUP, int NW>
inline constexpr size_t kDecodeMergeBytes = size_t(NW) * GROUP * (HD + 2) * sizeof(float);

/// A load of split partials: plain for the merge kernel (an earlier grid wrote them), through L2
/// for the fused merge (other CTAs of this grid wrote them, and this SM's L1 may hold a stale line
/// of them, e.g. lse values of other heads that an earlier last CTA on this SM read).
template <bool L2>
__device__ __forceinline__ float4 load_partial4(const float* p) {
  if constexpr (L2)
    return __ldcg(reinterpret_cast<const float4*>(p));
  else
    return *reinterpret_cast<const float4*>(p);
}
template <bool L2>
__device__ __forceinline__ float load_partial(const float* p) {
  if constexpr (L2)
    return __ldcg(p);
  else
    return *p;
}

/// Lanes over the splits per 8-dim chunk of the split merge (SL below).
template <int HD>
inline constexpr int kDecodeMergeSplitLanes = 128 / (HD / 8);  // SL: lanes over the splits per chunk

/// Split partials in global memory, [splits][plane] rows of HD floats and one lse each (the merge
/// kernel; the fused merge reads them through L2).
template <int HD, bool L2>
struct DecodeGlobalPartials {
  const float* o;
  const float* lse;
  int64_t plane;  ///< rows per split
  __device__ __forceinline__ float lse_of(int s, int64_t row) const { return load_partial<L2>(lse + (s * plane + row)); }
  /// Dims c..c+3 (half 0) or c+4..c+7 (half 1) of split s's row.
  __device__ __forceinline__ float4 o4(int s, int64_t row, int c, int half) const {
    return load_partial4<L2>(o + (s * plane + row) * HD + c + 4 * half);
  }
};

/// Split partials in the shared memory of the cluster's CTAs (the cluster merge): split s is CTA
/// rank s of the cluster; its partial rows ([GROUP][HD] floats, then [GROUP] lse) sit at the same
/// offset in every CTA, reached through distributed shared memory. Rows are heads of the pair.
/// With group parts (DecodeParams::group_shift) a cluster holds every part of every split, x
/// fastest: split s of this CTA's part is rank part + s · parts.
template <int HD>
struct DecodeClusterPartials {
  float* o;    ///< this CTA's [GROUP][HD]
  float* lse;  ///< this CTA's [GROUP]
  int part = 0, shift = 0;  ///< this CTA's part, log2 of the parts
  __device__ __forceinline__ unsigned rank(int s) const { return unsigned(part + (s << shift)); }
  __device__ __forceinline__ float lse_of(int s, int64_t row) const {
    return *cooperative_groups::this_cluster().map_shared_rank(lse + row, rank(s));
  }
  __device__ __forceinline__ float4 o4(int s, int64_t row, int c, int half) const {
    return *reinterpret_cast<const float4*>(
        cooperative_groups::this_cluster().map_shared_rank(o + row * HD + c + 4 * half, rank(s)));
  }
};

/// Split partials pushed into split 0's shared memory (the pushing cluster merge,
/// DecodeParams::cluster_push_offset): [splits][GROUP][HD] floats, then [splits][GROUP] lse.
template <int HD, int GROUP>
struct DecodePushedPartials {
  const float* o;
  const float* lse;
  __device__ __forceinline__ float lse_of(int s, int64_t row) const { return lse[s * GROUP + row]; }
  __device__ __forceinline__ float4 o4(int s, int64_t row, int c, int half) const {
    return *reinterpret_cast<const float4*>(o + (s * GROUP + row) * HD + c + 4 * half);
  }
};
/// Bytes of the pushed partials of `splits` splits (16-byte multiple: the rows are read as float4).
template <int HD, int GROUP>
constexpr size_t decode_pushed_bytes(int splits) {
  return (size_t(splits) * GROUP * (HD + 1) * sizeof(float) + 15) / 16 * 16;
}

/// Cluster barrier halves (sm_90): every thread of every CTA of the cluster arrives once per phase;
/// wait returns once every thread that has not exited arrived. CTA-uniform (`.aligned`).
__device__ __forceinline__ void decode_cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void decode_cluster_arrive_release() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void decode_cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }

/// \brief Merges split partials into NR output rows: out = Σ_s 2^(lse_s − M)·o_s / Σ_s 2^(lse_s − M),
/// row r (index row[r] of the partials in `src`, a DecodeGlobalPartials or DecodeClusterPartials)
/// written at dst[r]. A row is served by 128 virtual lanes, HD/8 chunks of 8 dims × SL = 128·8/HD
/// lanes over the splits (sl: this thread's; c[r]: the first dim of its chunk of row r), combined
/// by shuffles among the SL lanes of a chunk; so 50 splits cost a few loads per thread, all
/// independent. Empty splits carry lse = −inf and o = 0, so they weigh nothing. The merge kernel
/// takes one row per CTA (NR = 1); the fused merge walks a (sequence, KV head)'s GROUP rows with
/// the CTA's threads, NR rows at a time so their loads overlap; the cluster merge one row at a
/// time, spread over the cluster's CTAs. Each row sees the same operations in the same order every
/// way, so the paths agree bit for bit.
template <int HD, int NR, int UNROLL = 1, class Src, class T>
__device__ __forceinline__ void decode_merge_rows(const Src& src, int num_splits, const int64_t (&row)[NR],
                                                  const int (&c)[NR], int sl, T* const (&dst)[NR]) {
  constexpr int SL = kDecodeMergeSplitLanes<HD>;
  static_assert(SL >= 1 && SL <= 32 && (SL & (SL - 1)) == 0, "decode merge: head dim");
  float mm[NR], acc[NR][8], den[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    mm[r] = -INFINITY;
    den[r] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[r][j] = 0.f;
  }
  auto add = [&](int r, float lse, const float4& a, const float4& bb) {
    const float w = safe_scale(lse, mm[r]);
    den[r] += w;
    acc[r][0] += w * a.x; acc[r][1] += w * a.y; acc[r][2] += w * a.z; acc[r][3] += w * a.w;
    acc[r][4] += w * bb.x; acc[r][5] += w * bb.y; acc[r][6] += w * bb.z; acc[r][7] += w * bb.w;
  };
  auto max_over_lanes = [&] {
#pragma unroll
    for (int o = SL / 2; o > 0; o >>= 1)
#pragma unroll
      for (int r = 0; r < NR; ++r) mm[r] = fmaxf(mm[r], __shfl_xor_sync(0xffffffffu, mm[r], o));
  };
  if (num_splits <= SL) {
    // At most one split per lane (batch-1 plans: 2 to 8 splits): its lse and o are loaded together,
    // before the maximum is known, so the merge waits for one round of loads (through distributed
    // shared memory for the cluster merge), not two. The same operations in the same order.
    const bool mine = sl < num_splits;
    float lse[NR];
    float4 a[NR], bb[NR];
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      if (!mine) continue;
      lse[r] = src.lse_of(sl, row[r]);
      a[r] = src.o4(sl, row[r], c[r], 0);
      bb[r] = src.o4(sl, row[r], c[r], 1);
      mm[r] = fmaxf(mm[r], lse[r]);
    }
    max_over_lanes();
#pragma unroll
    for (int r = 0; r < NR; ++r)
      if (mine) add(r, lse[r], a[r], bb[r]);
  } else {
    for (int s = sl; s < num_splits; s += SL)
#pragma unroll
      for (int r = 0; r < NR; ++r) mm[r] = fmaxf(mm[r], src.lse_of(s, row[r]));
    max_over_lanes();
    auto accumulate = [&](int s) {
#pragma unroll
      for (int r = 0; r < NR; ++r) add(r, src.lse_of(s, row[r]), src.o4(s, row[r], c[r], 0), src.o4(s, row[r], c[r], 1));
    };
    if constexpr (UNROLL == 1) {  // the compiler's choice (by 4 for the merge kernel's one row)
      for (int s = sl; s < num_splits; s += SL) accumulate(s);
    } else {  // it does not unroll NR rows' body: UNROLL splits' loads in flight; each sum keeps its order
#pragma unroll UNROLL
      for (int s = sl; s < num_splits; s += SL) accumulate(s);
    }
  }
#pragma unroll
  for (int o = SL / 2; o > 0; o >>= 1) {
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      den[r] += __shfl_xor_sync(0xffffffffu, den[r], o);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[r][j] += __shfl_xor_sync(0xffffffffu, acc[r][j], o);
    }
  }
  if (sl != 0) return;
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    const float inv = den[r] > 0.f ? 1.f / den[r] : 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[r][j] *= inv;
    store8(dst[r] + c[r], acc[r]);
  }
}

/// Shared memory of the cluster merge, after the cross-warp merge area (16-byte aligned): this
/// CTA's partial rows [GROUP][HD] floats, then [GROUP] lse (DecodeClusterPartials).
template <int HD, int GROUP, int NW>
inline constexpr size_t kDecodeClusterPartOffset = (kDecodeMergeBytes<HD, GROUP, NW> + 15) / 16 * 16;
/// The end of the merge areas a CTA needs: the cross-warp merge's, and with the latency paths the
/// cluster merge's partials after it (inside the ring for every default shape).
template <int HD, int GROUP, int NW>
inline constexpr size_t kDecodeClusterMergeBytes =
    kDecodeLatencyPaths ? kDecodeClusterPartOffset<HD, GROUP, NW> + size_t(GROUP) * (HD + 1) * sizeof(float)
                        : kDecodeMergeBytes<HD, GROUP, NW>;

/// Merges heads first, first + step, … (< GROUP) of the pair (sequence b, part vh) from the split
/// partials `src` into the output with decode_merge_rows (the merge kernel's bits): 128 virtual
/// lanes per head, as in the merge kernel's CTA, over the CTA's threads; bounds are warp-uniform
/// (128 = 4 warps).
template <int HD, int GROUP, int NW, class Src, class T, class KV, class Variant>
__device__ __forceinline__ void decode_merge_pair_heads(const DecodeParams<T, KV, Variant>& p, const Src& src,
                                                        int nsplit, int vh, int b, int first, int step) {
  constexpr int SL = kDecodeMergeSplitLanes<HD>, PASS = NW * 32;
  const int heads = (GROUP - first + step - 1) / step;
  for (int v0 = 0; v0 < heads * 128; v0 += PASS) {
    const int v = v0 + int(threadIdx.x);
    if (v < heads * 128) {
      const int g = first + v / 128 * step;
      const int64_t row[1] = {g};
      const int c[1] = {v % 128 / SL * 8};
      T* const dst[1] = {p.out + b * p.out_stride + int64_t(vh * GROUP + g) * HD};
      decode_merge_rows<HD, 1>(src, nsplit, row, c, v % SL, dst);
    }
  }
}

/// \brief The cluster merge's second half (DecodePlan::cluster_merge): after every CTA of the
/// cluster (split s = CTA rank s of `nsplit`) wrote its partial rows into its own shared memory
/// (`src`), a cluster barrier; then this CTA merges heads split, split + nsplit, … of the pair from
/// every CTA's partials through distributed shared memory, with decode_merge_rows' arithmetic (so
/// the output is the merge kernel's, bit for bit). A second barrier keeps every CTA's shared memory
/// alive until the others have read it. Every thread of every CTA of the cluster calls it;
/// `after_barrier()` runs right after the first barrier. vh: the CTA's part (its KV head without
/// group parts), whose GROUP query heads it writes.
template <int HD, int GROUP, int NW, class T, class KV, class Variant, class AfterBarrier>
__device__ __forceinline__ void decode_cluster_merge(const DecodeParams<T, KV, Variant>& p,
                                                     const DecodeClusterPartials<HD>& src, int vh, int b, int split,
                                                     int nsplit, const AfterBarrier& after_barrier) {
  auto cluster = cooperative_groups::this_cluster();
  cluster.sync();  // release this CTA's partials, acquire the others'
  after_barrier();  // every CTA of the pair is past its prologue (the fused RoPE's write-back)
  decode_merge_pair_heads<HD, GROUP, NW>(p, src, nsplit, vh, b, split, nsplit);  // heads split, split + nsplit, …
  cluster.sync();  // no CTA exits while another may still read its shared memory
}

/// Ends a CTA's split after every warp wrote its (m, l, unnormalised acc) per head into the merge
/// area and a barrier: combines the warps by log-sum-exp and writes the output (nsplit == 1) or
/// this split's partial row (several): to global memory for the merge kernel or the fused merge,
/// to this CTA's shared memory for the cluster merge (DecodeParams::cluster_merge, which then
/// merges: decode_cluster_merge). nsplit: the splits of this (sequence, KV head), the launch's
/// num_splits, or the sequence's own count in a split_loop launch. FUSED (several splits): then the
/// CTA counts its arrival on its (sequence, KV head)'s counter, and the last of the pair's nsplit
/// arrivals merges the pair's partials into the output as the merge kernel would (CTAs past a
/// sequence's end write empty partials and count too). atomicInc wraps the counter to 0 at that
/// last arrival, so every launch leaves the counters as it found them. `after_barrier` (cluster
/// merge only): see decode_cluster_merge. vh: the CTA's part (DecodeParams::group_shift; its KV
/// head without group parts): query heads [vh · GROUP, (vh + 1) · GROUP) are this CTA's rows.
struct DecodeNoOp {
  __device__ __forceinline__ void operator()() const {}
};
template <int HD, int GROUP, int NW, bool FUSED = false, class T, class KV, class Variant, class AfterBarrier = DecodeNoOp>
__device__ __forceinline__ void decode_store_merged(const DecodeParams<T, KV, Variant>& p, float* smem, int vh,
                                                    int b, int split, int nsplit,
                                                    const AfterBarrier& after_barrier = {}) {
  static_assert(NW >= 2, "decode_store_merged: the head sums take two rows of the merge area");
  const float* s_acc = smem;
  float* s_m = smem + NW * GROUP * HD;
  float* s_l = s_m + NW * GROUP;
  const int shift = kDecodeLatencyPaths ? p.group_shift : 0;
  [[maybe_unused]] const int kvh = vh >> shift;  // fp8 scales, the fused merge's counters
  const int nq = (p.kv.num_kv_heads << shift) * GROUP;
  const bool cluster = kDecodeLatencyPaths && p.cluster_merge && nsplit > 1;
  const bool push = cluster && p.cluster_push_offset > 0;
  float* c_o = smem + kDecodeClusterPartOffset<HD, GROUP, NW> / sizeof(float);  // cluster: [GROUP][HD]
  float* c_lse = c_o + GROUP * HD;                                               // cluster: [GROUP]
  float* const pushed = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(smem) + p.cluster_push_offset);
  if (push) {
    // The first phase (arrived at the kernel's start): every CTA of the cluster is running, so
    // split 0's shared memory may be written. This CTA's rows go there, at its split.
    decode_cluster_wait();
    const unsigned lead = unsigned(vh & ((1 << shift) - 1));  // split 0 of this part: rank part
    float* remote = cooperative_groups::this_cluster().map_shared_rank(pushed, lead);
    c_o = remote + split * GROUP * HD;
    c_lse = remote + nsplit * GROUP * HD + split * GROUP;
  }
  // A head's warp weights 2^(m_w − max) and its sum l, once per head (not per dim: HD times the
  // exponentials on the path to the output). Head g's column of s_m / s_l is read and rewritten by
  // its thread alone: s_m[w][g] becomes warp w's weight, s_l[0][g] the sum, s_l[1][g] the max.
  // The same operations in the same order as per dim: the same bits.
  for (int g = threadIdx.x; g < GROUP; g += NW * 32) {
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) mm = fmaxf(mm, s_m[w * GROUP + g]);
    float ll = 0.f, sc[NW];
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      sc[w] = safe_scale(s_m[w * GROUP + g], mm);
      ll += s_l[w * GROUP + g] * sc[w];
    }
#pragma unroll
    for (int w = 0; w < NW; ++w) s_m[w * GROUP + g] = sc[w];
    s_l[g] = ll;
    s_l[GROUP + g] = mm;
  }
  __syncthreads();
  constexpr int kPasses = (GROUP * HD + NW * 32 - 1) / (NW * 32);
#pragma unroll
  for (int k = 0; k < kPasses; ++k) {
    const int i = int(threadIdx.x) + k * NW * 32;
    if ((GROUP * HD) % (NW * 32) != 0 && i >= GROUP * HD) break;  // (MHA at head dim 64: half the CTA)
    const int g = i / HD, d = i % HD;
    const float mm = s_l[GROUP + g], ll = s_l[g];
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) o += s_acc[(w * GROUP + g) * HD + d] * s_m[w * GROUP + g];
    float out = ll > 0.f ? o / ll : 0.f;
    if constexpr (is_fp8_v<KV>) out *= p.kv.v_scale_of(kvh);
    const int h = vh * GROUP + g;
    if (nsplit == 1) {
      p.out[b * p.out_stride + int64_t(h) * HD + d] = from_f32<T>(out);
    } else if (cluster) {
      c_o[g * HD + d] = out;
      if (d == 0) c_lse[g] = ll > 0.f ? mm + log2f(ll) : -INFINITY;
    } else {
      int64_t row = (int64_t(split) * p.kv.batch_size + b) * nq + h;
      p.part_o[row * HD + d] = out;
      if (d == 0) p.part_lse[row] = ll > 0.f ? mm + log2f(ll) : -INFINITY;
    }
  }
  if (push) {
    // Second phase: every CTA's rows are in split 0's memory once every CTA arrived (release /
    // acquire). No CTA reads another's memory any more, so the others exit after it; split 0
    // merges every head of the pair alone, from its own memory, with decode_merge_rows'
    // arithmetic (the merge kernel's bits).
    decode_cluster_arrive_release();
    decode_cluster_wait();
    after_barrier();  // every CTA of the pair is past its prologue (the fused RoPE's write-back)
    if (split != 0) return;
    const DecodePushedPartials<HD, GROUP> src{pushed, pushed + nsplit * GROUP * HD};
    decode_merge_pair_heads<HD, GROUP, NW>(p, src, nsplit, vh, b, 0, 1);  // every head
    return;
  }
  if (cluster) {
    decode_cluster_merge<HD, GROUP, NW>(p, DecodeClusterPartials<HD>{c_o, c_lse, vh & ((1 << shift) - 1), shift}, vh,
                                        b, split, nsplit, after_barrier);
    return;
  }
  if constexpr (FUSED) {
    if (nsplit == 1) return;  // (split_loop) written above; nothing to merge, nothing counted
    __shared__ unsigned s_last;
    __threadfence();  // this thread's partials reach L2 before the arrival is counted
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned n = unsigned(nsplit - 1);
      const unsigned prev = atomicInc(p.counters + (int64_t(b) * p.kv.num_kv_heads + kvh), n);
      if (prev > n) __trap();  // never past splits − 1 from zero: the workspace was not zeroed once
      s_last = prev == n;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();  // every arrival happened after its partials' fence: read them now
    // The pair's GROUP rows × 128 virtual lanes over the CTA's threads, NR rows per pass.
    constexpr int PASS = NW * 32, K = GROUP * 128 / PASS, NR = K < 4 ? K : 4;
    static_assert(128 % PASS == 0 && K % NR == 0, "fused decode merge: CTA shape");
    const int64_t plane = int64_t(p.kv.batch_size) * nq;
#pragma unroll 1
    for (int k0 = 0; k0 < K; k0 += NR) {
      constexpr int SL = kDecodeMergeSplitLanes<HD>;
      int64_t rows[NR];
      int c[NR];
      T* dst[NR];
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        const int v = (k0 + r) * PASS + int(threadIdx.x), h = vh * GROUP + v / 128;
        c[r] = v % 128 / SL * 8;
        rows[r] = int64_t(b) * nq + h;
        dst[r] = p.out + b * p.out_stride + int64_t(h) * HD;
      }
      // The lane over the splits: v % 128 % SL = lane % SL, the same for every row (SL divides 32).
      // Two splits' loads in flight per row, except in the 2-warp CTAs (at their 128-register
      // bound, where that spills).
      constexpr int kUnroll = NW >= 4 ? 2 : 1;
      decode_merge_rows<HD, NR, kUnroll>(DecodeGlobalPartials<HD, true>{p.part_o, p.part_lse, plane}, nsplit, rows,
                                         c, int(threadIdx.x) % SL, dst);
    }
  }
}

}  // namespace pie::ops::cuda::detail
