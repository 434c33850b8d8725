#pragma once
/// \file attention_decode.cuh
/// \brief Paged decode attention (one query token per sequence), GQA-aware flash-decoding.
///
/// One CTA owns (sequence, KV head, split): it reads each K/V page of its token range exactly
/// once and serves all GROUP query heads of that KV head from it, so KV bytes — the whole cost
/// of decode — are read once. Pages reach shared memory through a ring of STAGES buffers filled
/// by 1-D bulk copies (`cp.async.bulk`, the TMA engine; a page's K rows of one head are one
/// contiguous run, as are its V rows), each buffer completing on its own mbarrier, so a CTA
/// keeps up to STAGES·(16 KB) of the cache in flight while it computes on the oldest buffer.
/// From shared memory a row of head_dim elements is spread over head_dim/8 lanes; each lane
/// group works through its own tokens with online softmax. The GROUP·U partial dot products of
/// a stage are reduce-scattered over the row's lanes (each lane ends with one or a few complete
/// scores, exponentiates only those, and the probabilities are broadcast back for P·V), which
/// halves the shuffles and cuts the exponentials by the row width: the arithmetic, not the
/// copies, bounds this kernel. Long contexts with few sequences are split over CTAs
/// (plan_decode_attention) and merged by log-sum-exp in a second, short kernel, or (opt-in,
/// DecodePlan::fused_merge) by the last CTA of each (sequence, KV head). An fp8 cache at
/// head dims 64 and 128 (GQA groups ≤ 8) takes the tensor-core kernel of attention_decode_mma.cuh
/// instead (same ring, plan and merge), since fp8 brings twice the tokens per byte to this
/// kernel's arithmetic. 16-bit caches take it at GQA groups 4 and 8 when the plan has the
/// batch-invariant split (DecodePlan::fixed_split; the engine asks for it at group 8 on wide grids
/// by default, and as `PIE_DECODE_MMA_WIDE` says): splits fixed by the context, run in turn by the
/// plan's CTAs per (sequence, KV head); see kDecodeMmaWide.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "pie/core/attention_variants.hpp"
#include "pie/core/dispatch.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/attention_decode_mma.cuh"
#include "pie/ops/cuda/attention_decode_plan.hpp"
#include "pie/ops/cuda/attention_decode_ring.cuh"
#include "pie/ops/cuda/attention_decode_rope.cuh"
#include "pie/ops/cuda/bulk_copy.cuh"
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

/// \brief plan_decode_split on this device's SM count (sm_count ≤ 0), with the merge options of the
/// environment by default (`PIE_DECODE_FUSED_MERGE=1`: the fused merge; see DecodePlanOptions).
inline DecodePlan plan_decode_attention(int batch, int num_q_heads, int num_kv_heads, int head_dim,
                                        int max_seq_len, int sm_count = 0,
                                        const DecodePlanOptions& opt = DecodePlanOptions::from_env()) {
  return plan_decode_split(batch, num_q_heads, num_kv_heads, head_dim, max_seq_len,
                           sm_count > 0 ? sm_count : num_sms(), opt);
}

namespace detail {

#if defined(PIE_DECODE_TIMELINE)
/// Bench only (-DPIE_DECODE_TIMELINE: bench/cuda/bench_decode_timeline.cu, pie_bench_timeline):
/// thread 0 of each decode CTA stamps %globaltimer at kDecodeMarks points of the kernel into
/// DecodeParams::timeline, so that a CTA's time can be placed without hardware counters: 0 entry,
/// 1 early pages issued, 2 wait returned, 3 ring started (page table read, q loaded, RoPE done),
/// 4 first stage landed, 5 stages done, 6 the CTA's warps merged, 7 partials stored or merged.
inline constexpr int kDecodeMarks = 8, kDecodeTimelineCtas = 1024;
/// Host: the [kDecodeTimelineCtas][kDecodeMarks] device buffer decode_attention() passes to its
/// kernels (null: none); one variable for every translation unit (`inline`), set before kernels
/// are launched or captured.
inline unsigned long long* g_decode_timeline = nullptr;
template <class P>
__device__ __forceinline__ void decode_mark(const P& p, int i) {
  if (threadIdx.x != 0 || p.timeline == nullptr) return;
  const unsigned cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (cta >= unsigned(kDecodeTimelineCtas)) return;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  p.timeline[cta * kDecodeMarks + i] = t;
}
#define PIE_DECODE_MARK(i) ::pie::ops::cuda::detail::decode_mark(p, i)
/// Host: allocates (once) and zeroes the timeline buffer and points g_decode_timeline at it.
inline void decode_timeline_start() {
  if (g_decode_timeline == nullptr)
    PIE_CUDA_CHECK(cudaMalloc(&g_decode_timeline, sizeof(unsigned long long) * kDecodeTimelineCtas * kDecodeMarks));
  PIE_CUDA_CHECK(cudaMemset(g_decode_timeline, 0, sizeof(unsigned long long) * kDecodeTimelineCtas * kDecodeMarks));
}
/// Host: prints the marks of the last decode launch that stamped them (every launch overwrites
/// its CTAs' rows): for each mark, the earliest and latest CTA from the grid's first entry, µs.
inline void decode_timeline_print(const char* tag) {
  if (g_decode_timeline == nullptr) return;
  std::vector<unsigned long long> t(size_t(kDecodeTimelineCtas) * kDecodeMarks);
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  PIE_CUDA_CHECK(cudaMemcpy(t.data(), g_decode_timeline, t.size() * sizeof(t[0]), cudaMemcpyDeviceToHost));
  // The last launch's CTAs: entries within 50 µs of the latest (rows past its grid keep an
  // earlier, wider launch's stamps).
  unsigned long long last = 0, t0 = ~0ull;
  for (int c = 0; c < kDecodeTimelineCtas; ++c) last = std::max(last, t[size_t(c) * kDecodeMarks]);
  auto in_last = [&](int c) { return t[size_t(c) * kDecodeMarks] != 0 && t[size_t(c) * kDecodeMarks] + 50000 >= last; };
  int ctas = 0;
  for (int c = 0; c < kDecodeTimelineCtas; ++c)
    if (in_last(c)) t0 = std::min(t0, t[size_t(c) * kDecodeMarks]), ++ctas;
  std::printf("%s: decode CTA timeline of the last launch (%d CTAs), us from the first entry:\n", tag, ctas);
  static const char* kName[] = {"0 entry", "1 early", "2 waited", "3 ring", "4 stage0", "5 stages", "6 cta", "7 out"};
  for (int m = 0; m < kDecodeMarks && ctas > 0; ++m) {
    double lo = 1e30, hi = -1;
    for (int c = 0; c < kDecodeTimelineCtas; ++c) {
      const unsigned long long v = t[size_t(c) * kDecodeMarks + m];
      if (v == 0 || !in_last(c) || v < t0) continue;
      lo = std::min(lo, double(v - t0) * 1e-3);
      hi = std::max(hi, double(v - t0) * 1e-3);
    }
    if (hi >= 0) std::printf("%s:   %-9s first %7.2f  last %7.2f\n", tag, kName[m], lo, hi);
  }
}
#else
#define PIE_DECODE_MARK(i) ((void)0)
#endif

/// One level of the reduce-scatter of decode_body per recursion, sizes as template arguments so
/// every index is a constant (a run-time index would move `v` to local memory): lanes `o` apart
/// exchange halves; the lane with bit `o` set keeps the upper half.
template <int HALF, int O, int NV, int N>
__device__ __forceinline__ void reduce_scatter(float (&v)[N], int sub) {
  if constexpr (HALF >= NV && O >= 1) {
    const bool upper = sub & O;
#pragma unroll
    for (int i = 0; i < HALF; ++i) {
      const float send = upper ? v[i] : v[i + HALF];
      const float keep = upper ? v[i + HALF] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    reduce_scatter<HALF / 2, O / 2, NV>(v, sub);
  }
}

/// Compile-time shape of one CTA. A stage holds TOK tokens: K rows [TOK][HD] then V rows.
template <int HD, int GROUP, int NW, int STAGES, class KV>
struct DecodeShape {
  static constexpr int LPT = HD / 8;                // lanes per token row
  static constexpr int TG = 32 / LPT;               // token groups per warp
  static constexpr int NG = NW * TG;                // token groups per CTA
  static constexpr int U = decode_unroll(GROUP) < 64 / NG ? decode_unroll(GROUP) : 64 / NG;  // tokens per lane group and stage
  static constexpr int TOK = NG * U;                // tokens per stage (divides 64)
  static constexpr int STAGE_ELEMS = 2 * TOK * HD;
  static constexpr size_t RING_BYTES = size_t(STAGES) * STAGE_ELEMS * sizeof(KV);
  static constexpr size_t MERGE_BYTES = kDecodeClusterMergeBytes<HD, GROUP, NW>;  // ⊇ the cross-warp merge
  static constexpr size_t SMEM = RING_BYTES > MERGE_BYTES ? RING_BYTES : MERGE_BYTES;
  static_assert(64 % TOK == 0, "stages must tile the 64-token split granularity");
};

/// Device body. HD: head dim; GROUP: query heads per KV head; NW: warps per CTA; STAGES: ring
/// depth. MODE (benchmarks only): 1 streams the pages without the attention arithmetic, 2 uses
/// the all-reduce softmax (each score summed over its row's lanes by log2(LPT) shuffles and
/// exponentiated in every lane) instead of the reduce-scatter one.
/// `issued`: ring stages warp 0 issued before the kernel's wait (decode_issue_early_pages).
/// With the kDecodeRope bit, q comes rotated from `rsm` (a DecodeRopeSmem) and the owner's new
/// K/V row goes into its stage (decode_rope_prologue, decode_rope_inject).
template <int HD, int GROUP, int NW, int STAGES, int FMODE, class T, class KV, class Variant, class RopeSmem>
__device__ __forceinline__ void decode_body(const DecodeParams<T, KV, Variant>& p, unsigned char* smem,
                                            uint64_t* bars, int issued, RopeSmem& rsm, const DecodeRopeOwner& own) {
  constexpr int MODE = FMODE & ~(kDecodeFusedMerge | kDecodeRope);  // the benchmark mode
  constexpr bool FUSED = (FMODE & kDecodeFusedMerge) != 0;
  constexpr bool ROPE = (FMODE & kDecodeRope) != 0;
  using S = DecodeShape<HD, GROUP, NW, STAGES, KV>;
  constexpr int LPT = S::LPT, TG = S::TG, NG = S::NG, U = S::U, TOK = S::TOK;
  // vh: the CTA's part of its KV head's query heads (DecodeParams::group_shift), or the KV head.
  const int vh = blockIdx.x, kvh = decode_kv_head(p, vh), b = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int tg = lane / LPT, sub = lane % LPT, ng = warp * TG + tg;
  KV* ring_base = reinterpret_cast<KV*>(smem);

  const auto [qpos, t_begin, t_end, t_lo, n_stages] = decode_span<TOK, Variant>(p.kv, b, split, p.tokens_per_split);

  DecodeRing<TOK, HD, STAGES, KV> ring(p.kv, b, kvh, p.bs_shift, t_lo, t_end, n_stages, ring_base, bars, lane);
  int32_t next_page = 0;  // warp 0: page id of this lane's first copy of stage it + STAGES
  if (warp == 0) next_page = ring.start(issued);
  PIE_DECODE_MARK(3);

  // Scores are q·k·sm_scale in the log2 domain: folded into q unless the variant transforms
  // the scaled logit (soft-cap), which then sees it unscaled by log2(e).
  const float score_scale = p.sm_scale * (is_fp8_v<KV> ? p.kv.k_scale_of(kvh) : 1.f);
  const float q_scale = Variant::kSoftCap ? 1.f : score_scale * kLog2e;
  float q[GROUP][8];
#pragma unroll
  for (int g = 0; g < GROUP; ++g) {
    if constexpr (ROPE)
      load8(rsm.q + g * HD + sub * 8, q[g]);
    else
      load8(p.q + b * p.q_stride + int64_t(vh * GROUP + g) * HD + sub * 8, q[g]);
#pragma unroll
    for (int j = 0; j < 8; ++j) q[g][j] *= q_scale;
  }
  float m[GROUP], l[GROUP], acc[GROUP][8];
#pragma unroll
  for (int g = 0; g < GROUP; ++g) {
    m[g] = -INFINITY; l[g] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
  }
  // Reduce-scatter softmax state: this lane's HH heads (or its share of one head, SHARE lanes).
  constexpr int N = GROUP * U, LOG_LPT = __builtin_ctz(LPT), LOG_N = __builtin_ctz(N);
  constexpr int R = LOG_LPT < LOG_N ? LOG_LPT : LOG_N;  // halving levels
  constexpr int NV = N >> R, SH = LOG_LPT - R;           // scores per lane; lanes holding the same ones: 2^SH
  constexpr int HH = NV >= U ? NV / U : 1, SHARE = NV >= U ? 1 : U / NV;
  float m_own[HH], l_own[HH];
#pragma unroll
  for (int h = 0; h < HH; ++h) { m_own[h] = -INFINITY; l_own[h] = 0.f; }

  for (int it = 0; it < n_stages; ++it) {
    const int slot = it % STAGES;
    mbar_wait(&bars[slot], (it / STAGES) & 1);
    if (it == 0) PIE_DECODE_MARK(4);
    const KV* sk = ring_base + slot * S::STAGE_ELEMS;
    const KV* sv = sk + TOK * HD;
    const int ts = t_lo + it * TOK;
    if constexpr (ROPE)
      decode_rope_inject<HD, TOK, NW>(p, own, rsm, ring_base + slot * S::STAGE_ELEMS,
                                      ring_base + slot * S::STAGE_ELEMS + TOK * HD, ts, vh);
    if constexpr (MODE == 1) {  // benchmark only: the pages' movement without the arithmetic
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const Pack8<KV> kp = *reinterpret_cast<const Pack8<KV>*>(sk + (ng + u * NG) * HD + sub * 8);
        const Pack8<KV> vp = *reinterpret_cast<const Pack8<KV>*>(sv + (ng + u * NG) * HD + sub * 8);
        acc[0][u & 7] += to_f32(kp.v[u & 7]) + to_f32(vp.v[7 - (u & 7)]);
      }
      l[0] = 1.f; m[0] = 0.f;
      __syncthreads();
      if (warp == 0 && it + STAGES < n_stages) {
        ring.issue(it + STAGES, slot, next_page);
        next_page = ring.page_of(it + STAGES + 1);
      }
      continue;
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
    __syncthreads();  // every warp is done with this slot
    if (warp == 0 && it + STAGES < n_stages) {
      ring.issue(it + STAGES, slot, next_page);
      next_page = ring.page_of(it + STAGES + 1);
    }
  }
  PIE_DECODE_MARK(5);
  if (p.late_dependents) pdl_launch_dependents();  // (DecodePlan::late_dependents) after the stages
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
  // Cross-warp merge through shared memory (the ring is idle now: the loop ended on a barrier
  // and every copy issued was waited for): [NW][GROUP][HD] acc, then [NW][GROUP] m and l.
  float* s_acc = reinterpret_cast<float*>(smem);
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
  __syncthreads();
  PIE_DECODE_MARK(6);
  if constexpr (ROPE) {
    decode_store_merged<HD, GROUP, NW, FUSED>(p, s_acc, vh, b, split, p.num_splits, [&] {
      if (own.owner) decode_rope_write_back<HD, GROUP, NW>(p, b, vh, rsm);
    });
  } else {
    decode_store_merged<HD, GROUP, NW, FUSED>(p, s_acc, vh, b, split, p.num_splits);
  }
  PIE_DECODE_MARK(7);
}

template <int HD, int GROUP, int NW, int STAGES, int MODE, class T, class KV, class Variant>
__global__ void __launch_bounds__(NW * 32, decode_ctas_per_sm(GROUP) * 4 / NW > 0 ? decode_ctas_per_sm(GROUP) * 4 / NW : 1)
    decode_kernel(const __grid_constant__ DecodeParams<T, KV, Variant> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ uint64_t bars[STAGES];
  PIE_DECODE_MARK(0);
  if (threadIdx.x == 0)
    for (int s = 0; s < STAGES; ++s) mbar_init(&bars[s], 1);
  __syncthreads();
  // The pushing cluster merge's first phase: once every CTA arrived, all run (decode_store_merged
  // waits for it before writing into split 0's shared memory).
  if (kDecodeLatencyPaths && p.cluster_push_offset > 0) decode_cluster_arrive_relaxed();
  if (!p.late_dependents) pdl_launch_dependents();  // the merge (or o_proj's GEMV) may start streaming now
  int issued = 0;
  if (kDecodeLatencyPaths && p.early_pages && threadIdx.x < 32)
    issued = decode_issue_early_pages<DecodeShape<HD, GROUP, NW, STAGES, KV>::TOK, HD, STAGES>(p, smem, bars,
                                                                                             int(blockIdx.z));
  PIE_DECODE_MARK(1);
  if constexpr ((MODE & kDecodeRope) != 0) {
    __shared__ DecodeRopeSmem<HD, GROUP, T, KV> rsm;  // the fused RoPE's rotated q and new K/V row
    // Owner, slot, cos/sin and norm weights before the wait: none depends on the predecessor.
    const auto pre = decode_rope_prepare<HD, GROUP, NW>(p, int(blockIdx.y), int(blockIdx.z));
    pdl_wait();
    PIE_DECODE_MARK(2);
    const DecodeRopeOwner own = decode_rope_prologue<HD, GROUP, NW>(p, int(blockIdx.y), int(blockIdx.x), pre, rsm);
    decode_body<HD, GROUP, NW, STAGES, MODE>(p, smem, bars, issued, rsm, own);
  } else {
    pdl_wait();
    PIE_DECODE_MARK(2);
    DecodeRopeNone none;
    decode_body<HD, GROUP, NW, STAGES, MODE>(p, smem, bars, issued, none, DecodeRopeOwner{});
  }
}

/// Merges split partials (decode_merge_rows): one CTA of 128 threads per (sequence, head) row.
/// seq_splits (split_loop launches): sequence b has its own decode_seq_splits splits, read from
/// its page count and last page (a sequence of one split was written by the decode kernel).
template <int HD, class T>
__global__ void __launch_bounds__(128) decode_merge_kernel(const float* __restrict__ part_o,
                                                           const float* __restrict__ part_lse, int num_splits,
                                                           int batch, int nq, T* __restrict__ out,
                                                           int64_t out_stride, const int32_t* __restrict__ indptr,
                                                           const int32_t* __restrict__ last_page_len,
                                                           int block_size, int tokens_per_split, bool seq_splits) {
  pdl_launch_dependents();
  pdl_wait();
  constexpr int SL = kDecodeMergeSplitLanes<HD>;
  const int64_t row[1] = {blockIdx.x}, plane = int64_t(batch) * nq;
  const int c[1] = {int(threadIdx.x) / SL * 8}, sl = int(threadIdx.x) % SL;
  const int b = int(row[0] / nq), h = int(row[0] % nq);
  if (seq_splits) {
    const int pages = indptr[b + 1] - indptr[b];
    num_splits = min(num_splits,
                     decode_seq_splits(pages == 0 ? 0 : (pages - 1) * block_size + last_page_len[b], tokens_per_split));
    if (num_splits == 1) return;
  }
  T* const dst[1] = {out + int64_t(b) * out_stride + int64_t(h) * HD};
  decode_merge_rows<HD, 1>(DecodeGlobalPartials<HD, false>{part_o, part_lse, plane}, num_splits, row, c, sl, dst);
}

/// Launches one decode kernel (NW warps, `smem` bytes of dynamic shared memory) and, for several
/// splits, the merge. The kernel is a template argument so that each kernel has its own
/// `smem_set` below (a function-pointer type would share it between kernels of one signature).
/// FUSED: the kernel merges the splits itself (MODE has kDecodeFusedMerge), no merge kernel.
/// grid_splits > 0: the grid's split dimension (split_loop launches), else num_splits.
/// smem_max: the most `smem` any launch of this kernel asks for (the attribute is set once), at
/// least smem.
template <int HD, int GROUP, int NW, bool FUSED, auto Kern, class T, class KV, class Variant>
void launch_decode_kernel(size_t smem, const DecodeParams<T, KV, Variant>& p, int batch, cudaStream_t stream,
                          int grid_splits = 0, size_t smem_max = 0) {
  auto kern = Kern;
  // Raised even under 48 KB (the static barriers count against the default too), once per
  // kernel and device (the attribute is per device: tensor-parallel runners drive several).
  static std::atomic<uint64_t> smem_set{0};
  int device = 0;
  PIE_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = uint64_t{1} << (device & 63);
  const int parts = kDecodeLatencyPaths ? 1 << p.group_shift : 1;  // CTAs per (sequence, KV head) and split
  const bool cluster_merge = kDecodeLatencyPaths && p.cluster_merge;
  const bool wide_cluster = parts * (cluster_merge ? p.num_splits : 1) > kDecodeMaxClusterSplits;
  if (!(smem_set.load(std::memory_order_relaxed) & bit)) {
    PIE_CUDA_CHECK(
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_max > smem ? smem_max : smem)));
    smem_set.fetch_or(bit, std::memory_order_relaxed);
  }
  if constexpr (kDecodeLatencyPaths) {  // clusters of group parts past the portable 8 CTAs (kDecodeMaxClusterCtas)
    static std::atomic<uint64_t> wide_set{0};
    if (wide_cluster && !(wide_set.load(std::memory_order_relaxed) & bit)) {
      PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      wide_set.fetch_or(bit, std::memory_order_relaxed);
    }
  }
  dim3 grid(unsigned(p.kv.num_kv_heads * parts), batch, grid_splits > 0 ? grid_splits : p.num_splits);
  // One cluster per (sequence, KV head): its splits merge in shared memory (cluster_merge), and its
  // parts order the fused RoPE's write-back after every part's prologue (group parts).
  if (cluster_merge || parts > 1)
    launch_pdl_cluster(kern, grid, dim3(NW * 32), smem, stream,
                       dim3(unsigned(parts), 1, cluster_merge ? unsigned(p.num_splits) : 1u), p);
  else
    launch_pdl(kern, grid, dim3(NW * 32), smem, stream, p);
  if (!FUSED && !cluster_merge && p.num_splits > 1) {
    const int nq = p.kv.num_kv_heads * parts * GROUP;
    launch_pdl(decode_merge_kernel<HD, T>, dim3(unsigned(int64_t(batch) * nq)), dim3(128), 0, stream,
               static_cast<const float*>(p.part_o), static_cast<const float*>(p.part_lse), p.num_splits, batch, nq,
               p.out, p.out_stride, p.kv.indptr, p.kv.last_page_len,
               p.kv.block_size, p.tokens_per_split, p.split_loop);
  }
}

/// The CUDA-core kernel (any KV type and head dim).
/// With `push` (DecodePlan::cluster_push) a cluster merge of several splits pushes its partials
/// into split 0's shared memory, past the kernel's own (DecodeParams::cluster_push_offset).
template <int HD, int GROUP, int NW, int STAGES, int MODE = 0, class T, class KV, class Variant>
void launch_decode(const DecodeParams<T, KV, Variant>& p, int batch, cudaStream_t stream, bool push = false) {
  static_assert(NW > 0 && STAGES > 0, "launch_decode: warps and stages");
  constexpr size_t kBase = (DecodeShape<HD, GROUP, NW, STAGES, KV>::SMEM + 15) / 16 * 16;
  constexpr size_t kMax = kDecodeLatencyPaths ? kBase + decode_pushed_bytes<HD, GROUP>(kDecodeMaxClusterSplits) : kBase;
  DecodeParams<T, KV, Variant> q = p;
  size_t smem = DecodeShape<HD, GROUP, NW, STAGES, KV>::SMEM;
  q.cluster_push_offset = 0;
  if (kDecodeLatencyPaths && push && p.cluster_merge && p.num_splits > 1 && (MODE & kDecodeFusedMerge) == 0) {
    q.cluster_push_offset = int(kBase);
    smem = kBase + decode_pushed_bytes<HD, GROUP>(p.num_splits);
  }
  launch_decode_kernel<HD, GROUP, NW, (MODE & kDecodeFusedMerge) != 0,
                       decode_kernel<HD, GROUP, NW, STAGES, MODE, T, KV, Variant>>(smem, q, batch, stream, 0, kMax);
}

/// The wide CUDA-core CTAs (DecodePlan::warps 8 or 16, DecodePlanOptions::wide_warps) where the plan
/// asks for them and this instantiation has them (head dim 128, at most 4 heads a CTA, 16-bit K/V,
/// no fused merge): launches them and returns true; otherwise false, and the caller launches its
/// default CTA shape.
template <int HD, int GROUP, int MODE, class T, class KV, class Variant>
bool launch_decode_wide(const DecodePlan& plan, const DecodeParams<T, KV, Variant>& p, int batch,
                        cudaStream_t stream) {
  if constexpr (kDecodeLatencyPaths && HD == 128 && GROUP <= 4 && sizeof(KV) == 2 && (MODE & kDecodeFusedMerge) == 0) {
    if (plan.warps == 8) {
      launch_decode<HD, GROUP, 8, 2, MODE>(p, batch, stream, plan.cluster_push);
      return true;
    }
    if (plan.warps == 16) {
      launch_decode<HD, GROUP, 16, 2, MODE>(p, batch, stream, plan.cluster_push);
      return true;
    }
  }
  return false;
}

/// The tensor-core kernel (fp8 K/V, kDecodeMma).
template <int HD, int GROUP, int NW, int STAGES, int MODE = 0, class T, class KV, class Variant>
void launch_decode_mma(const DecodeParams<T, KV, Variant>& p, int batch, cudaStream_t stream, int grid_splits = 0) {
  static_assert(NW > 0 && STAGES > 0, "launch_decode_mma: warps and stages");
  launch_decode_kernel<HD, GROUP, NW, (MODE & kDecodeFusedMerge) != 0,
                       decode_mma_kernel<HD, GROUP, NW, STAGES, MODE, T, KV, Variant>>(
      DecodeMmaShape<HD, GROUP, NW, STAGES, KV>::SMEM, p, batch, stream, grid_splits);
}
/// Host count of persistent launches, so that a test can tell that a plan took the kernel (its
/// output bits are the one-item kernel's by design).
inline std::atomic<int64_t> g_decode_persistent_launches{0};

/// The persistent tensor-core kernel (DecodePlan::persistent): one CTA per resident slot (SMs ×
/// the kernel's CTAs per SM, found once per device), at most one per (sequence, KV head) pair.
template <int HD, int GROUP, int NW, int STAGES, class T, class KV, class Variant>
void launch_decode_mma_persistent(const DecodeParams<T, KV, Variant>& p, int batch, cudaStream_t stream) {
  auto kern = decode_mma_persistent_kernel<HD, GROUP, NW, STAGES, T, KV, Variant>;
  constexpr size_t kSmem = kDecodeMmaPersistentSmem<HD, GROUP, NW, STAGES, KV>;
  static std::atomic<int> slots_of[64];  // per device; 0: not yet known
  int device = 0;
  PIE_CUDA_CHECK(cudaGetDevice(&device));
  int slots = slots_of[device & 63].load(std::memory_order_relaxed);
  if (slots == 0) {
    PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)));
    int per_sm = 0, sms = 0;
    PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, NW * 32, kSmem));
    PIE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    slots = std::max(1, per_sm) * std::max(1, sms);
    slots_of[device & 63].store(slots, std::memory_order_relaxed);
  }
  const int n_items = batch * p.kv.num_kv_heads;
  if (n_items == 0) return;
  launch_pdl(kern, dim3(unsigned(std::min(n_items, slots))), dim3(NW * 32), kSmem, stream, p, n_items);
  g_decode_persistent_launches.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace detail

/// \brief Whether the engine's 16-bit decode launches at this GQA group take the tensor-core kernel
/// with the batch-invariant split on every grid (`PIE_DECODE_MMA_WIDE`, read once; see
/// decode_mma16_groups).
inline bool decode_mma_wide_enabled(int group) {
  const int mask = decode_mma16_env_groups();
  return decode_fixed_split_wanted(2, group, 128, mask) && (mask & kDecodeMmaWideGridsOnly) == 0;
}
/// \brief Whether they take it on wide grids only (DecodePlanOptions::fixed_split_wide_grids_only;
/// unset `PIE_DECODE_MMA_WIDE` at group 8 in a build with the fixed split's kernels).
inline bool decode_mma_wide_grids_only(int group) {
  const int mask = decode_mma16_env_groups();
  return decode_fixed_split_wanted(2, group, 128, mask) && (mask & kDecodeMmaWideGridsOnly) != 0;
}

/// \brief Decode attention over the paged cache: out[b, h] = softmax(q[b, h]·Kᵀ·sm_scale)·V over
/// the cache.seq_len(b) tokens of sequence b (its query is the last of them).
/// \param q     [batch, nq, head_dim] (token rows may be strided, heads contiguous)
/// \param cache this layer's PagedKV with device indptr/indices/last_page_len, batch_size = batch
/// \param out   [batch, nq, head_dim]
/// \param plan  from plan_decode_attention (same batch/heads, max_seq_len ≥ every seq_len)
/// \param workspace device scratch of plan.workspace_bytes (may be null when 0); with
/// plan.fused_merge its first plan.counter_bytes must be zero before the first launch (each launch
/// leaves them zero), and no two launches in flight at once may share it
/// \tparam Warps, Stages CTA shape (warps, ring depth) for benchmarks; 0: the plan's (the default
/// shape, DecodePlan::warps and DecodePlan::stages)
/// A plan with fixed_split (DecodePlanOptions::fixed_split_tokens) sends 16-bit K/V at GQA groups 4
/// and 8, head dims 64/128, to the tensor-core kernel; other plans to the CUDA-core kernel.
/// \tparam Mode 0; for benchmarks and tests only: 1 moves the pages without computing attention,
/// 2 takes the CUDA-core kernel with the all-reduce softmax (see decode_body), 3 the CUDA-core
/// kernel where the tensor-core one is the default (fp8 K/V), 4 the tensor-core kernel for 16-bit
/// K/V too (head dims 64 and 128, groups ≤ 8; see kDecodeMmaDefault for why it is not the default)
/// \param rope  non-null: q is the raw projection, and the kernel does q/k RMSNorm + RoPE and the KV
/// write of the step's rows itself (attention_decode_rope.cuh; decode_rope_supported says which
/// plans and caches take it), leaving qkv's q and k rotated as the RoPE kernel would
template <int Warps = 0, int Stages = 0, int Mode = 0, class T, class KV, class Variant = attention::Causal>
void decode_attention(TensorView<T> q, kv::PagedKV<KV> cache, TensorView<T> out, const DecodePlan& plan,
                      void* workspace, float sm_scale, Variant variant = {}, cudaStream_t stream = nullptr,
                      const DecodeRopeArgs<T>* rope = nullptr) {
  PIE_CHECK(q.rank == 3 && out.rank == 3, "decode_attention: q and out must be [batch, heads, head_dim]");
  check_rows8(q, "decode_attention q");
  check_rows8(out, "decode_attention out");
  const int batch = static_cast<int>(q.shape[0]), nq = static_cast<int>(q.shape[1]);
  PIE_CHECK(q.stride[1] == cache.head_dim && out.stride[1] == cache.head_dim && q.shape[2] == cache.head_dim,
            "decode_attention: heads must be contiguous rows of head_dim");
  PIE_CHECK(plan.batch == batch && plan.num_q_heads == nq && plan.num_kv_heads == cache.num_kv_heads &&
                plan.head_dim == cache.head_dim && cache.batch_size == batch,
            "decode_attention: the plan was made for another shape");
  PIE_CHECK(plan.num_splits == 1 || plan.cluster_merge || workspace != nullptr,
            "decode_attention: the plan needs a workspace of ", plan.workspace_bytes, " bytes");
  PIE_CHECK(detail::kDecodeLatencyPaths || !(plan.cluster_merge || plan.early_pages),
            "decode_attention: the cluster merge and the early pages need a build with -DPIE_DECODE_LATENCY=ON");
  PIE_CHECK(!plan.cluster_merge || (plan.num_splits >= 2 && plan.num_splits <= kDecodeMaxClusterSplits &&
                                    !plan.fused_merge && !plan.fixed_split),
            "decode_attention: a cluster merge needs 2 to ", kDecodeMaxClusterSplits,
            " splits and neither the fused merge nor a fixed split (got ", plan.num_splits, " splits)");
  PIE_CHECK(cache.block_size > 0 && (cache.block_size & (cache.block_size - 1)) == 0,
            "decode_attention: block size must be a power of two");
  PIE_CHECK(reinterpret_cast<uintptr_t>(cache.data) % 16 == 0, "decode_attention: the KV pool must be 16-byte aligned");
  PIE_CHECK(plan.tokens_per_split % 64 == 0 && int64_t{plan.num_splits} * plan.tokens_per_split > 0,
            "decode_attention: splits must be multiples of 64 tokens");
  PIE_CHECK(!plan.fused_merge || plan.num_splits == 1 ||
                plan.counter_bytes >= size_t(batch) * cache.num_kv_heads * sizeof(uint32_t),
            "decode_attention: the fused merge's plan has no counters for ", batch, " sequences");
#if !defined(PIE_DECODE_LATENCY)
  PIE_CHECK(rope == nullptr, "decode_attention: this build has no fused RoPE (configure with -DPIE_DECODE_LATENCY=ON)");
#endif
  PIE_CHECK(rope == nullptr || (Warps == 0 && Mode == 0 && decode_rope_supported(plan, int(sizeof(KV)))),
            "decode_attention: the fused RoPE needs a 16-bit cache and one split or a cluster merge (got ",
            plan.num_splits, " splits)");
  PIE_CHECK(rope == nullptr || (rope->positions != nullptr && rope->k_new != nullptr && rope->v_new != nullptr),
            "decode_attention: the fused RoPE needs positions and the K/V rows");
  const int parts = plan.group_parts;
  PIE_CHECK(parts == 1 || (detail::kDecodeLatencyPaths && parts == 2 &&
                           (nq == 8 * cache.num_kv_heads || nq == 4 * cache.num_kv_heads) &&
                           sizeof(KV) == 2 && Warps == 0 && (Mode == 0 || Mode == 1) && !plan.fixed_split &&
                           !plan.fused_merge &&
                           parts * (plan.cluster_merge ? plan.num_splits : 1) <= kDecodeMaxClusterCtas),
            "decode_attention: ", parts, " CTAs per KV head need a build with -DPIE_DECODE_LATENCY=ON, GQA group 4 or 8, "
            "a 16-bit cache, the CUDA-core kernel's default shape, neither a fixed split nor the fused merge, and ",
            kDecodeMaxClusterCtas, " CTAs at most per cluster (use_decode_group_parts)");
  if (batch == 0) return;
  using D = device_t<T>;
  using DKV = device_t<KV>;
  detail::DecodeParams<D, DKV, Variant> p{};
  p.q = dev(q.data); p.q_stride = q.stride[0];
  p.out = dev(out.data); p.out_stride = out.stride[0];
  const bool fused = plan.fused_merge && plan.num_splits > 1;
  if (workspace != nullptr) {
    const DecodeWorkspaceLayout ws = decode_workspace_layout(plan);
    unsigned char* base = static_cast<unsigned char*>(workspace);
    p.part_o = reinterpret_cast<float*>(base + ws.part_o);
    p.part_lse = reinterpret_cast<float*>(base + ws.part_lse);
    p.counters = fused ? reinterpret_cast<unsigned*>(base + ws.counters) : nullptr;
  }
  p.kv = kv::PagedKV<DKV>{dev(cache.data), cache.num_kv_heads, cache.head_dim, cache.block_size, cache.batch_size,
                          cache.indptr, cache.indices, cache.last_page_len, cache.k_scale, cache.v_scale};
  p.bs_shift = __builtin_ctz(static_cast<unsigned>(cache.block_size));
  p.tokens_per_split = plan.tokens_per_split;
  p.num_splits = plan.num_splits;
  p.sm_scale = sm_scale;
  p.variant = variant;
  p.cluster_merge = plan.cluster_merge;
  p.early_pages = plan.early_pages;
  p.group_shift = parts == 2 ? 1 : 0;
  p.late_dependents = plan.late_dependents;
#if defined(PIE_DECODE_TIMELINE)
  p.timeline = detail::g_decode_timeline;
#endif
  if (rope != nullptr) {
    p.rope.positions = rope->positions;
    p.rope.q_norm = dev(rope->q_norm);
    p.rope.k_norm = dev(rope->k_norm);
    p.rope.eps = rope->eps;
    p.rope.rope = rope->rope;
    p.rope.k_new = dev(rope->k_new);
    p.rope.v_new = dev(rope->v_new);
    p.rope.row_stride = rope->row_stride;
  }
  PIE_DISPATCH_HEAD_DIM(cache.head_dim, HD, [&] {
    PIE_DISPATCH_GQA_GROUP(nq / cache.num_kv_heads / parts, GROUP, [&] {
      constexpr bool kMma = (Mode == 4 ? detail::kDecodeMma<HD, GROUP, DKV> : detail::kDecodeMmaDefault<HD, GROUP, DKV>) &&
                            Mode != 2 && Mode != 3;
      constexpr int kBase = Mode == 3 || Mode == 4 ? 0 : Mode;
      auto launch = [&](auto fused_tag) {
        constexpr int kMode = kBase | (decltype(fused_tag)::value ? detail::kDecodeFusedMerge : 0);
        if constexpr (Warps > 0) {
          constexpr int kStages = Stages > 0 ? Stages : kMma ? detail::kDecodeMmaStages : detail::decode_stages(GROUP);
          if constexpr (kMma)
            detail::launch_decode_mma<HD, GROUP, Warps, kStages, kMode>(p, batch, stream);
          else
            detail::launch_decode<HD, GROUP, Warps, kStages, kMode>(p, batch, stream);
        } else {
          if constexpr (!kMma) {
            if (detail::launch_decode_wide<HD, GROUP, kMode>(plan, p, batch, stream)) return;
          }
          PIE_CHECK(plan.warps == 4 && plan.stages == detail::decode_stages(GROUP),
                    "decode_attention: the plan's CTA shape is not the default one");
          if constexpr (kMma) {
            if constexpr (kMode == 0) {
              if (plan.persistent) {  // (one split, no clusters, group parts or early pages: the plan's rule)
                detail::launch_decode_mma_persistent<HD, GROUP, detail::kDecodeMmaWarps<DKV>, detail::kDecodeMmaStages>(
                    p, batch, stream);
                return;
              }
            }
            detail::launch_decode_mma<HD, GROUP, detail::kDecodeMmaWarps<DKV>, detail::kDecodeMmaStages, kMode>(
                p, batch, stream);
          } else {
            // The batch-invariant split (DecodePlan::fixed_split): the tensor-core kernel, whose
            // per-split rounding of P is then fixed by the context alone.
            if constexpr (Mode == 0 && detail::kDecodeMmaWide<HD, GROUP, DKV>) {
              if (plan.fixed_split) {
                constexpr int kW = detail::kDecodeMmaWarps<DKV>;
                PIE_CHECK(plan.grid_splits >= 1 && plan.grid_splits <= plan.num_splits,
                          "decode_attention: the fixed split's grid must have 1 to num_splits splits");
                p.split_loop = true;
                // One split per sequence on a wide group-8 grid: the 4-warp CTA (no merge, so
                // only the unfused instantiation).
                if constexpr (GROUP == 8 && !decltype(fused_tag)::value) {
                  if (plan.mma_wide_ctas) {
                    detail::launch_decode_mma<HD, GROUP, detail::kDecodeMmaWideGridWarps, detail::kDecodeMmaStages,
                                              kMode>(p, batch, stream, plan.grid_splits);
                    return;
                  }
                }
                PIE_CHECK(!plan.mma_wide_ctas, "decode_attention: the 4-warp tensor-core CTA is for group 8 without a merge");
                if (plan.deep_ring)
                  detail::launch_decode_mma<HD, GROUP, kW, detail::kDecodeMmaDeepStages, kMode>(p, batch, stream,
                                                                                               plan.grid_splits);
                else
                  detail::launch_decode_mma<HD, GROUP, kW, detail::kDecodeMmaStages, kMode>(p, batch, stream,
                                                                                           plan.grid_splits);
                return;
              }
            }
            detail::launch_decode<HD, GROUP, 4, detail::decode_stages(GROUP), kMode>(p, batch, stream,
                                                                                  plan.cluster_push);
          }
        }
      };
#if defined(PIE_DECODE_LATENCY)
      if constexpr (!kMma && Warps == 0 && Mode == 0) {
        if (rope != nullptr) {  // checked above: the CUDA-core kernel, one split or a cluster merge
          if (detail::launch_decode_wide<HD, GROUP, detail::kDecodeRope>(plan, p, batch, stream)) return;
          detail::launch_decode<HD, GROUP, 4, detail::decode_stages(GROUP), detail::kDecodeRope>(p, batch, stream,
                                                                                                 plan.cluster_push);
          return;
        }
      }
#endif
      if (fused)
        launch(std::true_type{});
      else
        launch(std::false_type{});
    });
  });
}

}  // namespace pie::ops::cuda
