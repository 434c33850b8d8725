#pragma once
/// \file attention_decode.cuh
/// \brief Paged decode attention (one query token per sequence), GQA-aware flash-decoding.
///
/// One CTA owns (sequence, KV head, split): it reads each K/V page of its token range exactly
/// once and serves all GROUP query heads of that KV head from it, so KV bytes — the whole cost
/// of decode — are read once. A row of head_dim elements is spread over head_dim/8 lanes
/// (16-byte loads); each lane group works through its own tokens with online softmax, several
/// tokens in flight. Long contexts with few sequences are split over CTAs (plan_decode_attention)
/// and merged by log-sum-exp in a second kernel.
#include <algorithm>
#include <cmath>

#include "pie/core/attention_variants.hpp"
#include "pie/core/dispatch.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

/// \brief Host-side work partition of one decode launch (FlashInfer-style plan/run split).
struct DecodePlan {
  int batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int num_splits = 1;         ///< CTAs per (sequence, KV head) along the context
  int tokens_per_split = 0;   ///< context tokens each split covers
  size_t workspace_bytes = 0; ///< device scratch the launch needs (0 when num_splits == 1)
  /// CTA shape: 4 warps × 4 tokens in flight per lane group (2 at GQA groups ≥ 8) for grids
  /// that fit the card at once (< 16 CTAs per SM), where each CTA's latency is the step's;
  /// 2 warps × 2 tokens for wider grids, where fewer registers and threads per CTA let more
  /// CTAs share an SM.
  /// Measured (H100, BM_DecodeShape, docs/data/gpu_engine/kernel_bench_decode_shape.txt): b512
  /// ctx140 65% → 74% of copy bandwidth, b256 ctx660 77% → 80%, b64 ctx4096 82% either way.
  int warps = 4;
};

/// \brief Chooses the split count from the batch shape and the longest context. CTAs are of
/// equal length, so a grid of few waves loses its last partial wave (512 CTAs on 396 slots run
/// as 2 waves at 65% use); about 32 CTAs per SM (≥ 8 waves) bounds that loss near 5%. Splits
/// stay ≥ 256 tokens (≥ 64 when the unsplit grid has fewer CTAs than SMs): the partial outputs
/// (splits·batch·heads·head_dim floats, written and read once) then cost a few percent of the
/// KV bytes.
inline DecodePlan plan_decode_attention(int batch, int num_q_heads, int num_kv_heads, int head_dim,
                                        int max_seq_len, int sm_count = 0) {
  PIE_CHECK(batch >= 0 && num_kv_heads > 0 && num_q_heads % num_kv_heads == 0,
            "plan_decode_attention: query heads must be a multiple of KV heads");
  if (sm_count <= 0) sm_count = num_sms();
  DecodePlan p;
  p.batch = batch;
  p.num_q_heads = num_q_heads;
  p.num_kv_heads = num_kv_heads;
  p.head_dim = head_dim;
  max_seq_len = std::max(max_seq_len, 1);
  int64_t ctas = int64_t{batch} * num_kv_heads;
  int64_t target = int64_t{32} * sm_count;
  int splits = ctas >= target || ctas == 0 ? 1 : static_cast<int>((target + ctas - 1) / ctas);
  // Fewer CTAs than SMs (batch 1–16 at 8 KV heads) leave the card mostly idle and each CTA
  // latency-bound (a 192-token context took 16 µs on 8 CTAs): there splits go down to 64 tokens,
  // a merge launch being cheaper than the idle SMs.
  const int min_split_tokens = ctas < sm_count ? 64 : 256;
  splits = std::min(splits, std::max(1, max_seq_len / min_split_tokens));
  p.tokens_per_split = (max_seq_len + splits - 1) / splits;
  p.tokens_per_split = (p.tokens_per_split + 63) / 64 * 64;
  p.num_splits = (max_seq_len + p.tokens_per_split - 1) / p.tokens_per_split;
  if (p.num_splits > 1)
    p.workspace_bytes = size_t(p.num_splits) * batch * num_q_heads * (head_dim + 1) * sizeof(float);
  p.warps = ctas * p.num_splits >= int64_t{16} * sm_count ? 2 : 4;
  return p;
}

namespace detail {

inline constexpr float kLog2e = 1.4426950408889634f;

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
};

/// Device body. HD: head dim; GROUP: query heads per KV head; NW: warps per CTA; UO: tokens in
/// flight per lane group (0: the default below).
template <int HD, int GROUP, int NW, int UO, class T, class KV, class Variant>
__device__ __forceinline__ void decode_body(const DecodeParams<T, KV, Variant>& p, float* smem) {
  constexpr int LPT = HD / 8;          // lanes per token row
  constexpr int TG = 32 / LPT;         // token groups per warp
  constexpr int NG = NW * TG;          // token groups per CTA
  // Tokens in flight per lane group (2·U loads). Doubling U for fp8 (8-byte loads) cost 24% in
  // a measurement (221 registers: 2 CTAs per SM instead of 3), so it stays at 4.
  constexpr int U = UO > 0 ? UO : GROUP >= 8 ? 2 : 4;
  const int kvh = blockIdx.x, b = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int tg = lane / LPT, sub = lane % LPT;
  const int nq = p.kv.num_kv_heads * GROUP;

  const int len = p.kv.seq_len(b);
  const int qpos = len - 1;
  int t_begin = split * p.tokens_per_split;
  int t_end = min(len, t_begin + p.tokens_per_split);
  if constexpr (Variant::kWindowLeft > 0) t_begin = max(t_begin, qpos - Variant::kWindowLeft + 1);

  float q[GROUP][8];
#pragma unroll
  for (int g = 0; g < GROUP; ++g) load8(p.q + b * p.q_stride + int64_t(kvh * GROUP + g) * HD + sub * 8, q[g]);
  float m[GROUP], l[GROUP], acc[GROUP][8];
#pragma unroll
  for (int g = 0; g < GROUP; ++g) {
    m[g] = -INFINITY; l[g] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
  }
  const float score_scale = p.sm_scale * (is_fp8_v<KV> ? p.kv.kv_scale : 1.f);
  // Page ids are read from the table in the loop (L1-resident). Staging a split's ids in shared
  // memory first measured no better (−7% … +3%, within the run-to-run spread) and was dropped.
  const int32_t* pages = p.kv.indices + p.kv.indptr[b];
  const int bs_mask = (1 << p.bs_shift) - 1;
  const int64_t head_off = int64_t(kvh) * (HD << p.bs_shift);
  const int64_t v_off = int64_t(p.kv.num_kv_heads) * (HD << p.bs_shift);
  const int64_t bstride = 2 * v_off;

  // The loop bound is warp-uniform (base is per warp) so the shuffles below see full warps.
  for (int base = t_begin + warp * TG; base < t_end; base += NG * U) {
    Pack8<KV> kp[U], vp[U];
    int64_t addr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int t = base + tg + u * NG;
      addr[u] = t < t_end ? int64_t(pages[t >> p.bs_shift]) * bstride + head_off + int64_t(t & bs_mask) * HD + sub * 8 : -1;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (addr[u] >= 0) {
        kp[u] = *reinterpret_cast<const Pack8<KV>*>(p.kv.data + addr[u]);
        vp[u] = *reinterpret_cast<const Pack8<KV>*>(p.kv.data + addr[u] + v_off);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) { kp[u].v[j] = from_f32<KV>(0.f); vp[u].v[j] = from_f32<KV>(0.f); }
      }
    }
    float s[GROUP][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float k[8];
      widen8(kp[u], k);
#pragma unroll
      for (int g = 0; g < GROUP; ++g) {
        float d = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) d = fmaf(q[g][j], k[j], d);
        s[g][u] = d;
      }
    }
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
        int t = base + tg + u * NG;
        float x = p.variant.logits(s[g][u] * score_scale) * kLog2e;
        bool keep = t < t_end && p.variant.mask(qpos, t);
        s[g][u] = keep ? x : -INFINITY;
        mx = fmaxf(mx, s[g][u]);
      }
      float m_use = mx == -INFINITY ? 0.f : mx;
      float corr = exp2f(m[g] - m_use);
      l[g] *= corr;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] *= corr;
      m[g] = mx;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float pr = exp2f(s[g][u] - m_use);
        l[g] += pr;
        float v[8];
        widen8(vp[u], v);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(pr, v[j], acc[g][j]);
      }
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
  // Cross-warp merge through shared memory: [NW][GROUP][HD] acc, then [NW][GROUP] m and l.
  float* s_acc = smem;
  float* s_m = smem + NW * GROUP * HD;
  float* s_l = s_m + NW * GROUP;
  if (tg == 0) {
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
#pragma unroll
      for (int j = 0; j < 8; ++j) s_acc[(warp * GROUP + g) * HD + sub * 8 + j] = acc[g][j];
      if (sub == 0) { s_m[warp * GROUP + g] = m[g]; s_l[warp * GROUP + g] = l[g]; }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < GROUP * HD; i += NW * 32) {
    int g = i / HD, d = i % HD;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) mm = fmaxf(mm, s_m[w * GROUP + g]);
    float ll = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      float sc = safe_scale(s_m[w * GROUP + g], mm);
      ll += s_l[w * GROUP + g] * sc;
      o += s_acc[(w * GROUP + g) * HD + d] * sc;
    }
    float out = ll > 0.f ? o / ll : 0.f;
    if constexpr (is_fp8_v<KV>) out *= p.kv.kv_scale;
    const int h = kvh * GROUP + g;
    if (p.num_splits == 1) {
      p.out[b * p.out_stride + int64_t(h) * HD + d] = from_f32<T>(out);
    } else {
      int64_t row = (int64_t(split) * p.kv.batch_size + b) * nq + h;
      p.part_o[row * HD + d] = out;
      if (d == 0) p.part_lse[row] = ll > 0.f ? mm + log2f(ll) : -INFINITY;
    }
  }
}

template <int HD, int GROUP, int NW, int UO, class T, class KV, class Variant>
__global__ void __launch_bounds__(NW * 32) decode_kernel(const __grid_constant__ DecodeParams<T, KV, Variant> p) {
  extern __shared__ float smem[];
  pdl_launch_dependents();  // o_proj's GEMV may start streaming its weights now
  pdl_wait();
  decode_body<HD, GROUP, NW, UO>(p, smem);
}

/// Merges split partials: out = Σ_s 2^(lse_s − M)·o_s / Σ_s 2^(lse_s − M). One thread per 8 dims;
/// both loops over the splits have independent loads (unrolled), so a long split list (128 for
/// one 32K sequence) is a few memory latencies, not one per split. Empty splits carry lse = −inf
/// and o = 0, so they weigh nothing.
template <int HD, class T>
__global__ void decode_merge_kernel(const float* __restrict__ part_o, const float* __restrict__ part_lse,
                                    int num_splits, int batch, int nq, T* __restrict__ out, int64_t out_stride) {
  pdl_launch_dependents();
  pdl_wait();
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(batch) * nq * (HD / 8)) return;
  const int64_t row = i / (HD / 8), plane = int64_t(batch) * nq;
  const int c = int(i % (HD / 8)) * 8;
  const int b = int(row / nq), h = int(row % nq);
  float mm = -INFINITY;
#pragma unroll 8
  for (int s = 0; s < num_splits; ++s) mm = fmaxf(mm, part_lse[s * plane + row]);
  float acc[8] = {}, den = 0.f;
#pragma unroll 4
  for (int s = 0; s < num_splits; ++s) {
    const float w = safe_scale(part_lse[s * plane + row], mm);
    const float4* src = reinterpret_cast<const float4*>(part_o + (s * plane + row) * HD + c);
    const float4 a = src[0], bb = src[1];
    den += w;
    acc[0] += w * a.x; acc[1] += w * a.y; acc[2] += w * a.z; acc[3] += w * a.w;
    acc[4] += w * bb.x; acc[5] += w * bb.y; acc[6] += w * bb.z; acc[7] += w * bb.w;
  }
  const float inv = den > 0.f ? 1.f / den : 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] *= inv;
  store8(out + int64_t(b) * out_stride + int64_t(h) * HD + c, acc);
}

template <int HD, int GROUP, int NW, int UO, class T, class KV, class Variant>
void launch_decode(const DecodeParams<T, KV, Variant>& p, int batch, cudaStream_t stream) {
  static_assert(NW > 0, "launch_decode: warps per CTA");
  size_t smem = size_t(NW) * GROUP * (HD + 2) * sizeof(float);
  auto kern = decode_kernel<HD, GROUP, NW, UO, T, KV, Variant>;
  if (smem > 48 * 1024) PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dim3 grid(p.kv.num_kv_heads, batch, p.num_splits);
  launch_pdl(kern, grid, dim3(NW * 32), smem, stream, p);
  if (p.num_splits > 1) {
    int64_t n = int64_t(batch) * p.kv.num_kv_heads * GROUP * (HD / 8);
    launch_pdl(decode_merge_kernel<HD, T>, dim3(unsigned((n + 255) / 256)), dim3(256), 0, stream,
               static_cast<const float*>(p.part_o), static_cast<const float*>(p.part_lse), p.num_splits, batch,
               p.kv.num_kv_heads * GROUP, p.out, p.out_stride);
  }
}
}  // namespace detail

/// \brief Decode attention over the paged cache: out[b, h] = softmax(q[b, h]·Kᵀ·sm_scale)·V over
/// the cache.seq_len(b) tokens of sequence b (its query is the last of them).
/// \param q     [batch, nq, head_dim] (token rows may be strided, heads contiguous)
/// \param cache this layer's PagedKV with device indptr/indices/last_page_len, batch_size = batch
/// \param out   [batch, nq, head_dim]
/// \param plan  from plan_decode_attention (same batch/heads, max_seq_len ≥ every seq_len)
/// \param workspace device scratch of plan.workspace_bytes (may be null when 0)
/// \tparam Warps, Unroll CTA shape and tokens in flight per lane group, for benchmarks (0: the
/// plan's, DecodePlan::warps)
template <int Warps = 0, int Unroll = 0, class T, class KV, class Variant = attention::Causal>
void decode_attention(TensorView<T> q, kv::PagedKV<KV> cache, TensorView<T> out, const DecodePlan& plan,
                      void* workspace, float sm_scale, Variant variant = {}, cudaStream_t stream = nullptr) {
  PIE_CHECK(q.rank == 3 && out.rank == 3, "decode_attention: q and out must be [batch, heads, head_dim]");
  check_rows8(q, "decode_attention q");
  check_rows8(out, "decode_attention out");
  const int batch = static_cast<int>(q.shape[0]), nq = static_cast<int>(q.shape[1]);
  PIE_CHECK(q.stride[1] == cache.head_dim && out.stride[1] == cache.head_dim && q.shape[2] == cache.head_dim,
            "decode_attention: heads must be contiguous rows of head_dim");
  PIE_CHECK(plan.batch == batch && plan.num_q_heads == nq && plan.num_kv_heads == cache.num_kv_heads &&
                plan.head_dim == cache.head_dim && cache.batch_size == batch,
            "decode_attention: the plan was made for another shape");
  PIE_CHECK(plan.num_splits == 1 || workspace != nullptr, "decode_attention: the plan needs a workspace of ",
            plan.workspace_bytes, " bytes");
  PIE_CHECK(cache.block_size > 0 && (cache.block_size & (cache.block_size - 1)) == 0,
            "decode_attention: block size must be a power of two");
  if (batch == 0) return;
  using D = device_t<T>;
  using DKV = device_t<KV>;
  detail::DecodeParams<D, DKV, Variant> p{};
  p.q = dev(q.data); p.q_stride = q.stride[0];
  p.out = dev(out.data); p.out_stride = out.stride[0];
  p.part_o = static_cast<float*>(workspace);
  p.part_lse = p.part_o ? p.part_o + size_t(plan.num_splits) * batch * nq * cache.head_dim : nullptr;
  p.kv = kv::PagedKV<DKV>{dev(cache.data), cache.num_kv_heads, cache.head_dim, cache.block_size, cache.batch_size,
                          cache.indptr, cache.indices, cache.last_page_len, cache.kv_scale};
  p.bs_shift = __builtin_ctz(static_cast<unsigned>(cache.block_size));
  p.tokens_per_split = plan.tokens_per_split;
  p.num_splits = plan.num_splits;
  p.sm_scale = sm_scale;
  p.variant = variant;
  PIE_DISPATCH_HEAD_DIM(cache.head_dim, HD, [&] {
    PIE_DISPATCH_GQA_GROUP(nq / cache.num_kv_heads, GROUP, [&] {
      if constexpr (Warps > 0)
        detail::launch_decode<HD, GROUP, Warps, Unroll>(p, batch, stream);
      else if (plan.warps == 2)
        detail::launch_decode<HD, GROUP, 2, 2>(p, batch, stream);
      else
        detail::launch_decode<HD, GROUP, 4, 0>(p, batch, stream);
    });
  });
}

}  // namespace pie::ops::cuda
