#pragma once
/// \file attention_decode_mma.cuh
/// \brief Decode attention on the tensor cores, over an fp8 (e4m3) or 16-bit KV cache. Private to
/// ops/cuda; decode_attention (attention_decode.cuh) takes it at head dims 64 and 128, GQA groups
/// up to 8.
///
/// Why: the CUDA-core kernel is bound by its issue slots (the FMAs of q·k and p·v, conversions,
/// softmax shuffles). An fp8 page holds twice the tokens of a bf16 one, so there it reached 53% of
/// the copy bandwidth on the H200 while moving the pages alone reached 99%; with 16-bit K/V it
/// fell short on short contexts (b512 × 140: 67% against 85% for the pages alone). Here q·k and
/// p·v are `mma.sync.m16n8k16` (f16 for fp8, which widens to f16 exactly, two per `cvt`; else the
/// KV type): ≈ 19 warp-instructions per token and KV head (SASS, fp8 at head dim 128).
///
/// Layout: the CTA's pages arrive through the same bulk-copy ring as the CUDA-core kernel's
/// (DecodeRing), 16 tokens per warp and stage (4 warps for fp8, 2 for 16-bit K/V: 16 KB stages at
/// head dim 128). Tokens are M and the GQA group is N (8 columns, of which GROUP are used), so no register holds padding rows: Sᵀ = K·Qᵀ (A = 16 tokens of K, B = Qᵀ,
/// resident), then Oᵀ += Vᵀ·Pᵀ (A = Vᵀ, 16 dims × 16 tokens; B = Pᵀ). The Sᵀ accumulators
/// (token rows, head columns) become Pᵀ's B fragment (head rows) by one `movmatrix.trans` per 8
/// tokens. Lane (r = lane/4, c = lane%4):
///   - K: lane (r, c) reads head dims [c·HD/4, (c+1)·HD/4) of tokens r and r + 8 and feeds them
///     to the 16-dim chunks j in order; the q·k sum runs over all dims, so Qᵀ's B fragments take
///     the same permutation (dims c·HD/4 + 4j + {0,1} are k = 2c, 2c+1; + {2,3} are 2c+8, 2c+9).
///   - V: Vᵀ's A fragment holds two consecutive tokens of one dim per register, so lane (r, c)
///     reads dims [r·HD/8, (r+1)·HD/8) of tokens 2c, 2c+1, 2c+8, 2c+9 (16-byte loads) and pairs
///     their bytes (fp8, before the conversion) or halves (16-bit) with `prmt`; m-tile mt's rows r
///     and r + 8 are dims r·HD/8 + 2mt and + 2mt + 1, so lane (r, c) ends holding heads 2c, 2c+1
///     of dims [r·HD/8, (r+1)·HD/8).
/// The scale (sm_scale · the KV head's k_scale · log2 e) is applied to S in f32, so q enters the MMA unscaled
/// (for fp8, bf16 → f16 is exact over f16's normal range; larger magnitudes saturate at ±65504).
/// P enters the P·V MMA in the MMA type (bf16 for a bf16 cache, as FlashAttention does).
#include <cuda_fp16.h>

#include "pie/ops/cuda/attention_decode_ring.cuh"
#include "pie/ops/cuda/mma.cuh"

namespace pie::ops::cuda::detail {

/// Whether decode_attention takes the tensor-core kernel for this head dim, group and KV type
/// (fp8 or 16-bit K/V; head dim 256 and larger groups take the CUDA-core kernel).
template <int HD, int GROUP, class KV>
inline constexpr bool kDecodeMma = (is_fp8_v<KV> || sizeof(KV) == 2) && (HD == 64 || HD == 128) && GROUP <= 8;
/// Whether the tensor-core kernel is decode_attention's default whatever the plan: for fp8 K/V
/// only. For 16-bit K/V it is faster in the kernel benchmark (H200, % of copy: b512 ctx140 78 vs
/// 67, b8 ctx8192 85 vs 80, b64 ctx4096 99 vs 98) but it rounds P to bf16 per split, so with the
/// cost model's split (which follows the batch) a sequence's output follows its batch: as the
/// default that way, the engine's preemption check fell from 63/64 to 61/64 sequences
/// (2026-12-04). So 16-bit K/V take it only with the batch-invariant split (kDecodeMmaWide).
template <int HD, int GROUP, class KV>
inline constexpr bool kDecodeMmaDefault = is_fp8_v<KV> && kDecodeMma<HD, GROUP, KV>;
/// Whether a 16-bit cache takes the tensor-core kernel in decode_attention's default mode when the
/// plan has the batch-invariant split (DecodePlan::fixed_split: splits of a fixed number of tokens
/// from position 0, merged in split order), which makes the kernel's per-split rounding of P a
/// function of the sequence's context alone. Groups 4 and 8 only: the CUDA-core kernel's FMAs per
/// KV byte grow with the group (Qwen3-30B-A3B's group 8 is where it loses most: 15.4 of a 51 ms
/// batch-1024 step against a 4.6 ms KV-read floor), and other groups would add instantiations to
/// every engine translation unit for shapes no served model has.
/// Compiled only with PIE_DECODE_FIXED_SPLIT (CMake -DPIE_DECODE_FIXED_SPLIT=ON; the decode and
/// runner tests likewise): its 12 extra kernels per 16-bit engine instantiation (head dims 64/128 ×
/// groups 4/8 × merge kernel or fused × 2 ring depths) cost CI's compile budget, and the path is
/// opt-in until it has run on a GPU.
template <int HD, int GROUP, class KV>
inline constexpr bool kDecodeMmaWide =
#if defined(PIE_DECODE_FIXED_SPLIT)
    !is_fp8_v<KV> && sizeof(KV) == 2 && kDecodeMma<HD, GROUP, KV> && (GROUP == 4 || GROUP == 8);
#else
    false;
#endif
/// Warps per CTA of the tensor-core kernel: 4 for fp8 (64-token stages of 16 KB at head dim 128),
/// 2 for 16-bit K/V (32-token stages of 16 KB; 4 warps' 32 KB stages allow only 3 CTAs per SM and
/// measured 78% against 99% at b64 ctx4096 on the H200).
template <class KV>
inline constexpr int kDecodeMmaWarps = is_fp8_v<KV> ? 4 : 2;
/// Warps of the 16-bit tensor-core CTA on wide grids of one-split sequences at GQA group 8
/// (DecodePlan::mma_wide_ctas): 64-token stages of 32 KB, 2 of them.
inline constexpr int kDecodeMmaWideGridWarps = 4;
/// The MMA operand type for a KV type: f16 for fp8 (e4m3 widens to it exactly), else KV itself.
template <class KV>
using MmaElem = std::conditional_t<is_fp8_v<KV>, __half, KV>;
/// Ring depth of the tensor-core kernel: 2 stages of 64 tokens (16 KB of fp8 K and V at head dim
/// 128), the bytes in flight of the bf16 kernel's 2 stages.
inline constexpr int kDecodeMmaStages = 2;
/// Ring depth of the 16-bit tensor-core kernel on a narrow grid with the batch-invariant split
/// (DecodePlan::deep_ring): 6 stages (96 KB at head dim 128, 2 CTAs per SM), so that one CTA per
/// (KV head, split) — batch 1 — keeps 6 pages in flight instead of 2. The split cannot follow
/// the batch there (it must be fixed by the context), so the ring depth is what adapts.
inline constexpr int kDecodeMmaDeepStages = 6;

/// Four e4m3 in a word → two f16x2 (bytes 0, 1 → lo; bytes 2, 3 → hi), exact.
__device__ __forceinline__ void e4m3x4_to_f16x4(uint32_t w, uint32_t& lo, uint32_t& hi) {
  asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}"
      : "=r"(lo), "=r"(hi)
      : "r"(w));
}

/// Transposes an 8×8 matrix of 16-bit elements held one row pair per lane (lane i: row i/4,
/// columns 2(i%4), 2(i%4)+1) across the warp.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

/// Two floats → two E, saturated to f16's finite range when E is f16 (bf16 queries may exceed it).
template <class E>
__device__ __forceinline__ uint32_t pack_sat(float lo, float hi) {
  if constexpr (std::is_same_v<E, __half>) {
    constexpr float kMax = 65504.f;
    return pack2<__half>(fminf(fmaxf(lo, -kMax), kMax), fminf(fmaxf(hi, -kMax), kMax));
  } else {
    return pack2<E>(lo, hi);
  }
}

/// Compile-time shape of the tensor-core CTA: NW warps of 16 tokens per stage.
template <int HD, int GROUP, int NW, int STAGES, class KV>
struct DecodeMmaShape {
  static constexpr int TOK = NW * 16;  // tokens per stage
  static constexpr size_t RING_BYTES = size_t(STAGES) * 2 * TOK * HD * sizeof(KV);
  // ⊇ the cross-warp merge area and the cluster merge's partials
  static constexpr size_t SMEM = RING_BYTES > kDecodeClusterMergeBytes<HD, GROUP, NW> ? RING_BYTES
                                                                                        : kDecodeClusterMergeBytes<HD, GROUP, NW>;
  static_assert(64 % TOK == 0, "stages must tile the 64-token split granularity");
};

/// Qᵀ's B fragments of (sequence b, KV head kvh) for lane (r, c): head r (zero for r ≥ GROUP), (k lo,
/// k hi) of each 16-dim chunk, in the K fragments' dim permutation (see the file comment).
template <int HD, int GROUP, class T, class KV, class Variant>
__device__ __forceinline__ void decode_mma_load_q(const DecodeParams<T, KV, Variant>& p, int b, int kvh, int r, int c,
                                                  uint32_t (&qb)[HD / 16][2]) {
  using E = MmaElem<KV>;
  float qf[HD / 4];
  if (r < GROUP) {
    const T* qp = p.q + b * p.q_stride + int64_t(kvh * GROUP + r) * HD + c * (HD / 4);
#pragma unroll
    for (int i = 0; i < HD / 32; ++i) {
      float t8[8];
      load8(qp + 8 * i, t8);
#pragma unroll
      for (int e = 0; e < 8; ++e) qf[8 * i + e] = t8[e];
    }
  } else {
#pragma unroll
    for (int i = 0; i < HD / 4; ++i) qf[i] = 0.f;
  }
#pragma unroll
  for (int j = 0; j < HD / 16; ++j) {
    qb[j][0] = pack_sat<E>(qf[4 * j], qf[4 * j + 1]);
    qb[j][1] = pack_sat<E>(qf[4 * j + 2], qf[4 * j + 3]);
  }
}

/// One (sequence b, KV head kvh)'s inputs to the tensor-core warps: Qᵀ's fragments
/// (decode_mma_load_q) and the scores' scales — in the log2 domain, scale · log2 e applied to the
/// f32 accumulators (s_scale), unless the variant transforms the scaled logit (soft-cap:
/// score_scale). Per-item state of the one-item body and the persistent kernel alike.
template <int HD>
struct DecodeMmaQuery {
  uint32_t qb[HD / 16][2];
  float score_scale, s_scale;
};
template <int HD, int GROUP, class T, class KV, class Variant>
__device__ __forceinline__ DecodeMmaQuery<HD> decode_mma_query(const DecodeParams<T, KV, Variant>& p, int b, int kvh,
                                                               int r, int c) {
  DecodeMmaQuery<HD> q;
  decode_mma_load_q<HD, GROUP>(p, b, kvh, r, c, q.qb);
  q.score_scale = p.sm_scale * (is_fp8_v<KV> ? p.kv.k_scale_of(kvh) : 1.f);
  q.s_scale = q.score_scale * kLog2e;
  return q;
}

/// The running state of one warp of the tensor-core CTA: Oᵀ (rows r, r + 8 of each m-tile,
/// columns — heads — 2c, 2c + 1), and heads 2c, 2c + 1's running max and this lane's sum.
template <int HD>
struct DecodeMmaAcc {
  float o[HD / 16][4];
  float m[2], l[2];
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int n = 0; n < HD / 16; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
  }
};

/// One warp's 16 tokens of a ring stage (sk: their K rows, sv: their V rows; tw: the first
/// token's position): Sᵀ = K·Qᵀ, mask, scale, the online softmax of heads 2c, 2c + 1, and
/// Oᵀ += Vᵀ·Pᵀ. MODE 1 (benchmarks only) reads the bytes without the arithmetic.
template <int HD, int MODE, class T, class KV, class Variant>
__device__ __forceinline__ void decode_mma_tokens(const DecodeParams<T, KV, Variant>& p, const unsigned char* sk,
                                                  const unsigned char* sv, int tw, int t_begin, int t_end, int qpos,
                                                  const DecodeMmaQuery<HD>& qy, int r, int c, DecodeMmaAcc<HD>& acc) {
  using E = MmaElem<KV>;
  constexpr bool F8 = is_fp8_v<KV>;
  constexpr int RB = HD * int(sizeof(KV));  // bytes of a K or V row
  constexpr int KW = RB / 16;               // words of K per lane and token (HD/4 elements)
  constexpr int VW = RB / 32;               // words of V per lane and token (HD/8 elements)
  constexpr int MT = HD / 16;               // m-tiles (16 dims) of Oᵀ
  auto& o = acc.o;
  auto& m = acc.m;
  auto& l = acc.l;
  const auto& qb = qy.qb;
  const float score_scale = qy.score_scale, s_scale = qy.s_scale;
  if constexpr (MODE == 1) {  // benchmark only: read the pages, no attention arithmetic
    const uint4 kk = *reinterpret_cast<const uint4*>(sk + r * RB + c * (RB / 4));
    const uint2 vv = *reinterpret_cast<const uint2*>(sv + (2 * c) * RB + r * (RB / 8));
    o[0][0] += __uint_as_float((kk.x ^ vv.y) & 0x3f800000u);
    m[0] = 0.f; l[0] = 1.f;
  } else if (tw < t_end && tw + 16 > t_begin) {  // warp-uniform: this warp holds a live token
    // Sᵀ = K·Qᵀ: rows tokens tw + r and tw + r + 8, columns heads 2c, 2c + 1.
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    {
      const uint4* k0 = reinterpret_cast<const uint4*>(sk + r * RB + c * (RB / 4));
      const uint4* k1 = reinterpret_cast<const uint4*>(sk + (r + 8) * RB + c * (RB / 4));
#pragma unroll
      for (int i = 0; i < KW / 4; ++i) {
        const uint4 x0 = k0[i], x1 = k1[i];
        const uint32_t w0[4] = {x0.x, x0.y, x0.z, x0.w}, w1[4] = {x1.x, x1.y, x1.z, x1.w};
        if constexpr (F8) {  // a word is 4 dims: one chunk
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            uint32_t a[4];
            e4m3x4_to_f16x4(w0[e], a[0], a[2]);
            e4m3x4_to_f16x4(w1[e], a[1], a[3]);
            mma16816<E>(s, a, qb[4 * i + e][0], qb[4 * i + e][1]);
          }
        } else {  // a word is 2 dims: two words per chunk
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const uint32_t a[4] = {w0[2 * e], w1[2 * e], w0[2 * e + 1], w1[2 * e + 1]};
            mma16816<E>(s, a, qb[2 * i + e][0], qb[2 * i + e][1]);
          }
        }
      }
    }
    // Mask, scale, and the online softmax of heads 2c, 2c + 1 over the warp's 16 tokens.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = tw + r + (i >> 1) * 8;
      const float v = Variant::kSoftCap ? p.variant.logits(s[i] * score_scale) * kLog2e : s[i] * s_scale;
      s[i] = t < t_end && t >= t_begin && p.variant.mask(qpos, t) ? v : -INFINITY;
    }
    float mx[2] = {fmaxf(s[0], s[2]), fmaxf(s[1], s[3])};
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      mx[0] = fmaxf(mx[0], __shfl_xor_sync(0xffffffffu, mx[0], off));
      mx[1] = fmaxf(mx[1], __shfl_xor_sync(0xffffffffu, mx[1], off));
    }
    const float mn[2] = {fmaxf(m[0], mx[0]), fmaxf(m[1], mx[1])};
    if (__any_sync(0xffffffffu, mn[0] > m[0] || mn[1] > m[1])) {  // rescale only when a maximum moves
      const float c0 = safe_scale(m[0], mn[0]), c1 = safe_scale(m[1], mn[1]);
      l[0] *= c0; l[1] *= c1;
#pragma unroll
      for (int n = 0; n < MT; ++n) { o[n][0] *= c0; o[n][1] *= c1; o[n][2] *= c0; o[n][3] *= c1; }
    }
    m[0] = mn[0]; m[1] = mn[1];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      s[i] = m[i & 1] == -INFINITY ? 0.f : exp2f(s[i] - m[i & 1]);
      l[i & 1] += s[i];
    }
    // Pᵀ's B fragment (head r; tokens 2c, 2c+1 and 2c+8, 2c+9) from the accumulator layout.
    const uint32_t pb0 = movmatrix_trans(pack2<E>(s[0], s[1]));
    const uint32_t pb1 = movmatrix_trans(pack2<E>(s[2], s[3]));
    // Vᵀ: tokens 2c, 2c+1, 2c+8, 2c+9 (relative to tw), dims [r·HD/8, (r+1)·HD/8). Rows past
    // the context end hold stale shared memory (a page's unwritten tail, or an earlier stage):
    // they are zeroed, as 0·NaN would poison the sum.
    uint32_t vw[4][VW];
#pragma unroll
    for (int q4 = 0; q4 < 4; ++q4) {
      const int row = 2 * c + (q4 & 1) + (q4 >> 1) * 8;
      const unsigned char* src = sv + row * RB + r * (RB / 8);
      if constexpr (VW == 8) {
        const uint4 v4 = *reinterpret_cast<const uint4*>(src), v5 = *reinterpret_cast<const uint4*>(src + 16);
        vw[q4][0] = v4.x; vw[q4][1] = v4.y; vw[q4][2] = v4.z; vw[q4][3] = v4.w;
        vw[q4][4] = v5.x; vw[q4][5] = v5.y; vw[q4][6] = v5.z; vw[q4][7] = v5.w;
      } else if constexpr (VW == 4) {
        const uint4 v4 = *reinterpret_cast<const uint4*>(src);
        vw[q4][0] = v4.x; vw[q4][1] = v4.y; vw[q4][2] = v4.z; vw[q4][3] = v4.w;
      } else {
        const uint2 v2 = *reinterpret_cast<const uint2*>(src);
        vw[q4][0] = v2.x; vw[q4][1] = v2.y;
      }
      if (tw + row >= t_end) {
#pragma unroll
        for (int i = 0; i < VW; ++i) vw[q4][i] = 0u;
      }
    }
    if constexpr (!F8) {
      // Word i holds dims 2i, 2i+1 of each token: m-tile i takes dim 2i (row r) and 2i+1 (row
      // r+8); the halves of tokens (2c, 2c+1) and (2c+8, 2c+9) pair up.
#pragma unroll
      for (int i = 0; i < VW; ++i) {
        const uint32_t a[4] = {__byte_perm(vw[0][i], vw[1][i], 0x5410), __byte_perm(vw[0][i], vw[1][i], 0x7632),
                               __byte_perm(vw[2][i], vw[3][i], 0x5410), __byte_perm(vw[2][i], vw[3][i], 0x7632)};
        mma16816<E>(o[i], a, pb0, pb1);
      }
    } else {
#pragma unroll
      for (int i = 0; i < VW; ++i) {
        // Word i holds dims 4i..4i+3 of each token: m-tile 2i takes dims 4i (row r), 4i+1 (row
        // r+8); m-tile 2i+1 takes 4i+2, 4i+3. Bytes of tokens (2c, 2c+1) and (2c+8, 2c+9) pair up.
        uint32_t a0[4], a1[4];
        e4m3x4_to_f16x4(__byte_perm(vw[0][i], vw[1][i], 0x5140), a0[0], a0[1]);
        e4m3x4_to_f16x4(__byte_perm(vw[2][i], vw[3][i], 0x5140), a0[2], a0[3]);
        e4m3x4_to_f16x4(__byte_perm(vw[0][i], vw[1][i], 0x7362), a1[0], a1[1]);
        e4m3x4_to_f16x4(__byte_perm(vw[2][i], vw[3][i], 0x7362), a1[2], a1[3]);
        mma16816<E>(o[2 * i], a0, pb0, pb1);
        mma16816<E>(o[2 * i + 1], a1, pb0, pb1);
      }
    }
  }
}

/// Each head's sum over the lanes of its tokens, then this warp's rows of the cross-warp merge
/// area (s_acc: [NW][GROUP][HD] accumulators, then [NW][GROUP] m and l; decode_store_merged's).
template <int HD, int GROUP, int NW>
__device__ __forceinline__ void decode_mma_stash(DecodeMmaAcc<HD>& acc, float* s_acc, int warp, int r, int c) {
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) {
    acc.l[0] += __shfl_xor_sync(0xffffffffu, acc.l[0], off);
    acc.l[1] += __shfl_xor_sync(0xffffffffu, acc.l[1], off);
  }
  float* s_m = s_acc + NW * GROUP * HD;
  float* s_l = s_m + NW * GROUP;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int h = 2 * c + e;
    if (h < GROUP) {
      float* dst = s_acc + (warp * GROUP + h) * HD + r * (HD / 8);
#pragma unroll
      for (int n = 0; n < HD / 16; ++n) {
        dst[2 * n] = acc.o[n][e];
        dst[2 * n + 1] = acc.o[n][2 + e];
      }
      if (r == 0) { s_m[warp * GROUP + h] = acc.m[e]; s_l[warp * GROUP + h] = acc.l[e]; }
    }
  }
}

/// Device body of the tensor-core kernel (see the file comment) for one split of one (sequence,
/// KV head); nsplit: the pair's splits (decode_store_merged). phase: bit s is the parity offset of
/// ring slot s, i.e. how many phases (mod 2) its barrier completed in earlier splits of this CTA
/// (split_loop launches run several); updated on return. MODE 1 (benchmarks only) reads the
/// pages from shared memory without the attention arithmetic.
template <int HD, int GROUP, int NW, int STAGES, int FMODE, class T, class KV, class Variant>
__device__ __forceinline__ void decode_body_mma(const DecodeParams<T, KV, Variant>& p, unsigned char* smem,
                                                uint64_t* bars, int split, int nsplit, uint32_t& phase,
                                                int issued = 0) {
  constexpr int MODE = FMODE & ~kDecodeFusedMerge;  // the benchmark mode
  constexpr bool FUSED = (FMODE & kDecodeFusedMerge) != 0;
  static_assert(kDecodeMma<HD, GROUP, KV>, "decode_body_mma: fp8 or 16-bit K/V, head dim 64 or 128, group <= 8");
  constexpr int TOK = DecodeMmaShape<HD, GROUP, NW, STAGES, KV>::TOK;
  constexpr int RB = HD * int(sizeof(KV));  // bytes of a K or V row
  const int kvh = blockIdx.x, b = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 2, c = lane & 3;

  const auto [qpos, t_begin, t_end, t_lo, n_stages] = decode_span<TOK, Variant>(p.kv, b, split, p.tokens_per_split);

  KV* ring_base = reinterpret_cast<KV*>(smem);
  DecodeRing<TOK, HD, STAGES, KV> ring(p.kv, b, kvh, p.bs_shift, t_lo, t_end, n_stages, ring_base, bars, lane);
  int32_t next_page = 0;  // warp 0: page id of this lane's first copy of stage it + STAGES
  if (warp == 0) next_page = ring.start(issued);

  const DecodeMmaQuery<HD> qy = decode_mma_query<HD, GROUP>(p, b, kvh, r, c);
  DecodeMmaAcc<HD> acc;
  acc.clear();
  for (int it = 0; it < n_stages; ++it) {
    const int slot = it % STAGES;
    mbar_wait(&bars[slot], ((phase >> slot) ^ uint32_t(it / STAGES)) & 1u);
    const unsigned char* sk = reinterpret_cast<const unsigned char*>(ring_base + slot * 2 * TOK * HD) + warp * 16 * RB;
    decode_mma_tokens<HD, MODE>(p, sk, sk + TOK * RB, t_lo + it * TOK + warp * 16, t_begin, t_end, qpos, qy, r, c,
                                acc);
    __syncthreads();  // every warp is done with this slot
    if (warp == 0 && it + STAGES < n_stages) {
      ring.issue(it + STAGES, slot, next_page);
      next_page = ring.page_of(it + STAGES + 1);
    }
  }
  // Slot s served ceil((n_stages − s) / STAGES) stages: a phase each.
#pragma unroll
  for (int s = 0; s < STAGES; ++s)
    if (s < n_stages && (((n_stages - 1 - s) / STAGES) & 1) == 0) phase ^= 1u << s;
  // The cross-warp merge through shared memory (the ring is idle: the loop ended on a barrier and
  // every copy issued was waited for).
  float* s_acc = reinterpret_cast<float*>(smem);
  decode_mma_stash<HD, GROUP, NW>(acc, s_acc, warp, r, c);
  __syncthreads();
  decode_store_merged<HD, GROUP, NW, FUSED>(p, s_acc, kvh, b, split, nsplit);
}

template <int HD, int GROUP, int NW, int STAGES, int MODE, class T, class KV, class Variant>
__global__ void __launch_bounds__(NW * 32, 16 / NW)
    decode_mma_kernel(const __grid_constant__ DecodeParams<T, KV, Variant> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ uint64_t bars[STAGES];
  if (threadIdx.x == 0)
    for (int s = 0; s < STAGES; ++s) mbar_init(&bars[s], 1);
  __syncthreads();
  pdl_launch_dependents();  // the merge (or o_proj's GEMV) may start streaming now
  int issued = 0;  // the first split's stages warp 0 issued before the wait
  if (kDecodeLatencyPaths && p.early_pages && threadIdx.x < 32)
    issued = decode_issue_early_pages<DecodeMmaShape<HD, GROUP, NW, STAGES, KV>::TOK, HD, STAGES>(p, smem, bars,
                                                                                                int(blockIdx.z));
  pdl_wait();
  uint32_t phase = 0;
  if (!p.split_loop) {
    decode_body_mma<HD, GROUP, NW, STAGES, MODE>(p, smem, bars, int(blockIdx.z), p.num_splits, phase, issued);
    return;
  }
  // The batch-invariant split: this sequence's own splits, every gridDim.z-th from blockIdx.z,
  // one after another (each its own online softmax and partial, so a split's bits do not depend
  // on which CTA ran it or after what).
  const int b = blockIdx.y;
  // (At most num_splits: the workspace holds no more; a context longer than the plan's breaks
  // decode_attention's contract, and is cut rather than written past the partials.)
  const int nsplit = min(decode_seq_splits(p.kv.seq_len(b), p.tokens_per_split), p.num_splits);
  for (int split = blockIdx.z; split < nsplit; split += gridDim.z) {
    if (split != int(blockIdx.z)) {
      // The previous split's merge read and wrote the ring's bytes (generic proxy); the next
      // bulk copies (async proxy) may only overwrite them after every thread is done.
      decode_fence_proxy_async();
      __syncthreads();
    }
    decode_body_mma<HD, GROUP, NW, STAGES, MODE>(p, smem, bars, split, nsplit, phase,
                                                 split == int(blockIdx.z) ? issued : 0);
  }
}

/// Shared memory of the persistent tensor-core CTA: its ring, then a merge area of its own (the
/// next sequence's first pages stream into the ring while this one's warps merge).
template <int HD, int GROUP, int NW, int STAGES, class KV>
inline constexpr size_t kDecodeMmaPersistentSmem =
    DecodeMmaShape<HD, GROUP, NW, STAGES, KV>::RING_BYTES + kDecodeMergeBytes<HD, GROUP, NW>;

/// \brief The tensor-core kernel as a persistent grid over one-split plans (DecodePlan's
/// num_splits 1, no clusters, no group parts, no early pages): CTA i attends to the (sequence,
/// KV head) items i, i + gridDim.x, … (item = b · num_kv_heads + kvh), each as decode_body_mma
/// does — the same per-warp arithmetic in the same order (decode_mma_tokens, decode_mma_stash,
/// decode_store_merged), so the same bits — but its ring runs on across items: the slot of the
/// CTA's G-th stage is G mod STAGES (phase parity G / STAGES), and each slot an item frees once
/// its own stages are issued takes the next item's first stages.
///
/// Why: at short contexts and large batches (b512 × ctx140 with the fp8 cache: 3 stages a CTA)
/// every CTA of the one-item kernel pays its ring's fill latency and its merge with no copy in
/// flight; moving the pages alone through that CTA reached 80% of the copy bandwidth on an H100
/// (2026-12-06), against 96% at b1024 ctx192 and 99% at b64 ctx4096. Here only a CTA's first item
/// waits for an empty ring.
template <int HD, int GROUP, int NW, int STAGES, class T, class KV, class Variant>
__global__ void __launch_bounds__(NW * 32, 16 / NW)
    decode_mma_persistent_kernel(const __grid_constant__ DecodeParams<T, KV, Variant> p, int n_items) {
  static_assert(kDecodeMma<HD, GROUP, KV>, "decode_mma_persistent_kernel: the tensor-core kernel's shapes");
  using Shape = DecodeMmaShape<HD, GROUP, NW, STAGES, KV>;
  constexpr int TOK = Shape::TOK;
  constexpr int RB = HD * int(sizeof(KV));
  using Ring = DecodeRing<TOK, HD, STAGES, KV>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ uint64_t bars[STAGES];
  if (threadIdx.x == 0)
    for (int s = 0; s < STAGES; ++s) mbar_init(&bars[s], 1);
  __syncthreads();
  pdl_launch_dependents();  // o_proj may start streaming its weights now
  pdl_wait();
  int item = blockIdx.x;
  if (item >= n_items) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 2, c = lane & 3;
  const int nkv = p.kv.num_kv_heads;
  KV* ring_base = reinterpret_cast<KV*>(smem);
  float* s_acc = reinterpret_cast<float*>(smem + Shape::RING_BYTES);
  auto span_of = [&](int it) { return decode_span<TOK, Variant>(p.kv, it / nkv, 0, p.tokens_per_split); };
  auto ring_of = [&](int it, const DecodeSpan& sp) {
    return Ring(p.kv, it / nkv, it % nkv, p.bs_shift, sp.t_lo, sp.t_end, sp.n_stages, ring_base, bars, lane);
  };
  DecodeSpan sp = span_of(item);
  Ring ring = ring_of(item, sp);
  uint32_t g = 0;   // stages this CTA consumed before `item`
  int issued = 0;   // stages of `item` already in the ring (issued during the previous item)
  for (;;) {
    const int b = item / nkv, kvh = item % nkv;
    const int nxt = item + int(gridDim.x);
    const bool has_next = nxt < n_items;
    const DecodeSpan spn = has_next ? span_of(nxt) : DecodeSpan{0, 0, 0, 0, 0};
    const Ring ringn = ring_of(has_next ? nxt : item, spn);
    int issued_next = 0;      // stages of the next item in the ring
    int32_t next_page = 0;    // warp 0: page of this lane's first copy of this item's stage it + STAGES
    int32_t next_page_n = 0;  // warp 0: … of the next item's stage issued_next
    if (warp == 0) {
      next_page = ring.start(issued, g);
      // Slots this item never uses (fewer stages than the ring) take the next item's first stages.
      for (; sp.n_stages + issued_next < STAGES && issued_next < spn.n_stages; ++issued_next)
        ringn.issue(issued_next, int((g + sp.n_stages + issued_next) % STAGES), ringn.page_of(issued_next));
      next_page_n = ringn.page_of(issued_next);
    }
    const DecodeMmaQuery<HD> qy = decode_mma_query<HD, GROUP>(p, b, kvh, r, c);
    DecodeMmaAcc<HD> acc;
    acc.clear();
    for (int it = 0; it < sp.n_stages; ++it) {
      const uint32_t G = g + it;
      const int slot = int(G % STAGES);
      mbar_wait(&bars[slot], (G / STAGES) & 1u);
      const unsigned char* sk = reinterpret_cast<const unsigned char*>(ring_base + slot * 2 * TOK * HD) + warp * 16 * RB;
      decode_mma_tokens<HD, 0>(p, sk, sk + TOK * RB, sp.t_lo + it * TOK + warp * 16, sp.t_begin, sp.t_end, sp.qpos, qy,
                               r, c, acc);
      __syncthreads();  // every warp is done with this slot
      if (warp == 0) {
        if (it + STAGES < sp.n_stages) {
          ring.issue(it + STAGES, slot, next_page);
          next_page = ring.page_of(it + STAGES + 1);
        } else if (issued_next < spn.n_stages) {  // global stage G + STAGES: the next item's issued_next-th
          ringn.issue(issued_next, slot, next_page_n);
          ++issued_next;
          next_page_n = ringn.page_of(issued_next);
        }
      }
    }
    g += uint32_t(sp.n_stages);
    decode_mma_stash<HD, GROUP, NW>(acc, s_acc, warp, r, c);
    __syncthreads();
    decode_store_merged<HD, GROUP, NW, false>(p, s_acc, kvh, b, 0, 1);
    if (!has_next) break;
    __syncthreads();  // the merge area is read above before the next item's warps write it
    issued = issued_next;  // (warp 0's count; only warp 0 issues)
    item = nxt;
    sp = spn;
    ring = ringn;
  }
}

}  // namespace pie::ops::cuda::detail
