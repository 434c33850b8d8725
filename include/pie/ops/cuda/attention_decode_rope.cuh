#pragma once
/// \file attention_decode_rope.cuh
/// \brief The q/k RMSNorm + RoPE kernel and the KV write folded into decode attention (the CUDA-core
/// kernel's MODE bit kDecodeRope): at batch 1 they are two links of the chain of dependent small
/// kernels between the qkv and o projections (docs/kernels.md, "RoPE inside decode attention").
///
/// Each CTA of (sequence b, KV head kvh, split) rotates its GROUP query heads from the raw qkv row
/// into shared memory (qk_norm_rope_head: the RoPE kernel's own device code, so q is the same
/// bytes); the one CTA whose split holds the query's position (the *owner*) also rotates the KV
/// head's K row, converts K and V as kv_write does (× 1/scale, then the store's rounding), writes
/// the rotated q and k back into qkv (what the RoPE kernel leaves there), and, once its ring stage
/// holding that row has landed, puts the row into the stage and into the cache. The rest of the
/// kernel is unchanged, so the output is the separate kernels' bit for bit.
///
/// Who may read what, and when: q is read raw by every split CTA of the pair in its prologue and
/// written back rotated by the owner, so the owner writes it back only once no CTA of the pair can
/// still read it — at once with one split, after the cluster merge's first barrier with several
/// (decode_attention refuses other plans). The cache row of the query's position is written after
/// the owner's bulk copy of that stage completed (a copy racing a store to the same bytes would
/// read either), and no other CTA reads it.
///
/// With group parts (DecodePlan::group_parts: two CTAs per KV head, each of half its query heads)
/// every owner part rotates the K row for its own stage, but only the lead part writes the cache
/// row and the rotated K back; the parts of a pair are one cluster, so the write-back waits for
/// the cluster barrier that every part's prologue precedes (one split: a barrier of its own).
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/attention_decode_ring.cuh"
#include "pie/ops/cuda/rope.cuh"
#include "pie/ops/cuda/rope_kv.cuh"

namespace pie::ops::cuda::detail {

/// Stands for DecodeRopeSmem in kernels without the fused RoPE (no shared memory).
struct DecodeRopeNone {};

/// \brief Shared memory of the fused RoPE: the rotated query heads (in T, as the RoPE kernel stores
/// them) and the owner's converted K and V rows (in the cache type).
template <int HD, int GROUP, class T, class KV>
struct __align__(16) DecodeRopeSmem {
  T q[GROUP * HD];  ///< then the owner's rotated K head in T, for the write-back into qkv
  T k[HD];
  KV kv[2 * HD];
};

/// What the prologue leaves the body: whether this CTA owns the query's cache row, and where.
struct DecodeRopeOwner {
  bool owner = false;  ///< the CTA that rotates K, writes the row and writes q/k back
  int qpos = -1;       ///< the query's position in the sequence (len − 1; −1: empty, nothing to write)
  int64_t slot = -1;   ///< its cache slot (page · block_size + offset)
};

/// The owner's rotated q heads and K head back into qkv (the RoPE kernel's in-place result), once
/// no CTA of the pair reads them raw any more. vh: the CTA's part (its KV head without group
/// parts); only the lead part writes K.
template <int HD, int GROUP, int NW, class T, class KV, class Variant>
__device__ __forceinline__ void decode_rope_write_back(const DecodeParams<T, KV, Variant>& p, int b, int vh,
                                                       const DecodeRopeSmem<HD, GROUP, T, KV>& sm) {
  T* q_row = const_cast<T*>(p.q) + b * p.q_stride + int64_t(vh) * GROUP * HD;
  T* k_row = p.rope.k_new + b * p.rope.row_stride + int64_t(decode_kv_head(p, vh)) * HD;
  constexpr int QW = GROUP * HD / 8;  // 16-byte words of q
  const int words = QW + (decode_lead_part(p, vh) ? HD / 8 : 0);
  for (int i = threadIdx.x; i < words; i += NW * 32) {
    const bool k = i >= QW;
    *reinterpret_cast<uint4*>(k ? k_row + (i - QW) * 8 : q_row + i * 8) =
        *reinterpret_cast<const uint4*>(k ? sm.k + (i - QW) * 8 : sm.q + i * 8);
  }
}

/// What the fused RoPE reads before the kernel's griddepcontrol.wait (decode_rope_prepare), none of
/// it written by a kernel of the step: the page table, lengths and positions were uploaded before
/// the step's first kernel (as the early pages rely on), the norm weights are the model's. After
/// the wait only the qkv row remains to be read: the chain of dependent loads (length → page →
/// slot; position → cos/sin) is off the path between the qkv projection and the attention.
template <int HD, int GROUP, int NW>
struct DecodeRopePre {
  static constexpr int TPH = HD / 16, HPB = NW * 32 / TPH;
  /// The pair's heads (GROUP q and the owner's K) fit one pass of the CTA's threads: a thread's
  /// head is then known before the wait, and so are its norm weights.
  static constexpr bool kOnePass = GROUP + 1 <= HPB;
  static_assert(HPB >= 1, "decode RoPE: too few threads for a head");
  DecodeRopeOwner own;
  float c[8], sn[8];   ///< this lane's cos/sin (rope_cos_sin)
  float wa[8], wb[8];  ///< kOnePass: its head's norm weights (rope_norm_weights)
};

/// The first half of the prologue, by every thread before griddepcontrol.wait (DecodeRopePre).
template <int HD, int GROUP, int NW, class T, class KV, class Variant>
__device__ __forceinline__ DecodeRopePre<HD, GROUP, NW> decode_rope_prepare(const DecodeParams<T, KV, Variant>& p,
                                                                             int b, int split) {
  using Pre = DecodeRopePre<HD, GROUP, NW>;
  const auto& r = p.rope;
  Pre pre;
  DecodeRopeOwner& o = pre.own;
  const int len = p.kv.seq_len(b);
  o.qpos = len - 1;
  // An empty sequence (a graph's padding row) has no cache row; split 0 still rotates its q/k as
  // the RoPE kernel rotates every row's.
  o.owner = len > 0 ? o.qpos / p.tokens_per_split == split : split == 0;
  if (o.owner && len > 0) {
    const int32_t page = p.kv.indices[p.kv.indptr[b] + (o.qpos >> p.bs_shift)];
    o.slot = (int64_t(page) << p.bs_shift) + (o.qpos & ((1 << p.bs_shift) - 1));
  }
  const int sub = int(threadIdx.x) % Pre::TPH, hslot = int(threadIdx.x) / Pre::TPH;
  rope_cos_sin<HD, T>(r.positions[b], r.rope, sub, pre.c, pre.sn);
  if constexpr (Pre::kOnePass) {
    const int heads = GROUP + (o.owner ? 1 : 0);
    rope_norm_weights<HD, T>(min(hslot, heads - 1) < GROUP ? r.q_norm : r.k_norm, sub, pre.wa, pre.wb);
  }
  return pre;
}

/// The prologue's second half, by every thread of the CTA after griddepcontrol.wait: rotates the
/// pair's GROUP q heads (and the owner's K head) into `sm`, converts the owner's K and V rows, and
/// with one split writes the rotated q and k back into qkv. Ends on a barrier. vh: the CTA's part
/// (its KV head without group parts); pre: decode_rope_prepare's.
template <int HD, int GROUP, int NW, class T, class KV, class Variant>
__device__ __forceinline__ DecodeRopeOwner decode_rope_prologue(const DecodeParams<T, KV, Variant>& p, int b, int vh,
                                                                const DecodeRopePre<HD, GROUP, NW>& pre,
                                                                DecodeRopeSmem<HD, GROUP, T, KV>& sm) {
  using Pre = DecodeRopePre<HD, GROUP, NW>;
  constexpr int TPH = Pre::TPH, HPB = Pre::HPB;
  const int kvh = decode_kv_head(p, vh);
  const auto& r = p.rope;
  const DecodeRopeOwner o = pre.own;
  const int sub = int(threadIdx.x) % TPH, hslot = int(threadIdx.x) / TPH;
  const T* q_row = p.q + b * p.q_stride + int64_t(vh) * GROUP * HD;
  const T* k_row = r.k_new + b * r.row_stride + int64_t(kvh) * HD;
  const int heads = GROUP + (o.owner ? 1 : 0);  // CTA-uniform: the norm's shuffles see full warps
  for (int h0 = 0; h0 < heads; h0 += HPB) {
    const int i = min(h0 + hslot, heads - 1);
    float oa[8], ob[8];
    const T* norm_w = i < GROUP ? r.q_norm : r.k_norm;
    if constexpr (Pre::kOnePass)
      qk_norm_rope_head_w<HD, T>(i < GROUP ? q_row + i * HD : k_row, norm_w != nullptr, pre.wa, pre.wb, r.eps, sub,
                                 pre.c, pre.sn, oa, ob);
    else
      qk_norm_rope_head<HD, T>(i < GROUP ? q_row + i * HD : k_row, norm_w, r.eps, sub, pre.c, pre.sn, oa, ob);
    if (h0 + hslot >= heads) continue;
    if (i < GROUP) {
      store8(sm.q + i * HD + sub * 8, oa);  // rounded to T, as the RoPE kernel stores q
      store8(sm.q + i * HD + HD / 2 + sub * 8, ob);
    } else {
      // kv_write reads K back from qkv (the value in T), scales it for fp8, and stores it.
      float a[8], bb[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        a[j] = to_f32(from_f32<T>(oa[j]));
        bb[j] = to_f32(from_f32<T>(ob[j]));
      }
      const float inv = is_fp8_v<KV> ? 1.f / p.kv.k_scale_of(kvh) : 1.f;
      kv_scale8<KV>(a, inv);
      kv_scale8<KV>(bb, inv);
      store8(sm.kv + sub * 8, a);
      store8(sm.kv + HD / 2 + sub * 8, bb);
      store8(sm.k + sub * 8, oa);
      store8(sm.k + HD / 2 + sub * 8, ob);
    }
  }
  if (o.owner) {  // V as it is (kv_write's conversion)
    const T* v_row = r.v_new + b * r.row_stride + int64_t(kvh) * HD;
    for (int i = threadIdx.x; i < HD / 8; i += NW * 32) {
      float f[8];
      load8(v_row + i * 8, f);
      kv_scale8<KV>(f, is_fp8_v<KV> ? 1.f / p.kv.v_scale_of(kvh) : 1.f);
      store8(sm.kv + HD + i * 8, f);
    }
  }
  __syncthreads();
  if (p.num_splits == 1) {
    // The parts of a pair read the raw K row: none writes it back before all have (cluster-uniform).
    if (kDecodeLatencyPaths && p.group_shift > 0) cooperative_groups::this_cluster().sync();
    if (o.owner) decode_rope_write_back<HD, GROUP, NW>(p, b, vh, sm);
  }
  return o;
}

/// The owner, after its ring stage [ts, ts + TOK) landed (mbar_wait) and before any warp reads it:
/// when the stage holds the query's row, puts the converted K and V rows there (over what the
/// copy brought: the cache row is not written yet) and, from the lead part only (group parts),
/// into the cache, then a barrier. CTA-uniform. vh: the CTA's part (its KV head without parts).
template <int HD, int TOK, int NW, class T, class KV, class Variant, int GROUP>
__device__ __forceinline__ void decode_rope_inject(const DecodeParams<T, KV, Variant>& p, const DecodeRopeOwner& o,
                                                   const DecodeRopeSmem<HD, GROUP, T, KV>& sm, KV* sk, KV* sv, int ts,
                                                   int vh) {
  if (!o.owner || o.qpos < ts || o.qpos >= ts + TOK) return;
  const int row = o.qpos - ts, kvh = decode_kv_head(p, vh);
  const bool lead = decode_lead_part(p, vh);
  KV* ck = p.kv.k_at_slot(o.slot, kvh);
  KV* cv = p.kv.v_at_slot(o.slot, kvh);
  constexpr int W = 16 / int(sizeof(KV));  // elements per 16-byte word
  for (int i = threadIdx.x; i < 2 * HD / W; i += NW * 32) {
    const bool v = i >= HD / W;
    const int e = (v ? i - HD / W : i) * W;
    const uint4 w = *reinterpret_cast<const uint4*>(sm.kv + (v ? HD : 0) + e);
    *reinterpret_cast<uint4*>((v ? sv : sk) + row * HD + e) = w;
    if (lead) *reinterpret_cast<uint4*>((v ? cv : ck) + e) = w;
  }
  __syncthreads();
}

}  // namespace pie::ops::cuda::detail
