#pragma once
/// \file persist_decoder.cuh
/// \brief The persistent batch-1 decoder layer without its attention (issue 15; docs/gpu_engine.md,
/// "Next: a persistent decode-layer kernel for batch 1", the step after the one-layer prototype of
/// persist_layer.cuh). Bench only: nothing in the engine includes it.
///
/// One kernel P per layer on the resident CTAs, five phases behind four grid-wide barriers:
///   A. o = T(x·Woᵀ)                                          (o_proj; x = the attention output)
///   B. r1 = T(o + r0); gu = T(rmsnorm(r1)·nw_post·Wguᵀ), act = silu_and_mul(gu) in the epilogue
///   C. dn = T(act·Wdᵀ)                                        (down)
///   D. r2 = T(dn + r1); qkv = T(rmsnorm(r2)·nw_in·Wqkvᵀ)      (the next layer's input norm + qkv)
///   E. q/k RMSNorm + RoPE in place in qkv, K and V into their paged-cache slot (3 CTAs; the rest
///      of the grid arrives at the last barrier and exits, so the next launch can take their SMs)
/// The decode attention then runs as its own launch, and the next layer's P follows it. The chain
/// it replaces: gemv → add_rms_norm_gemv → silu_and_mul → gemv → add_rms_norm_gemv → qk_norm_rope
/// → kv_write (or, with the engine's fusion switches, swiglu_gemv for the middle two and
/// qk_norm_rope_kv for the last two: 5 kernels, the 4 boundaries P removes).
///
/// Barrier k: every CTA arrives (fence + atomicAdd on a reset-free 64-bit counter), then issues
/// the next phase's first weight step (kEarly = 1; the weights do not depend on the activations),
/// then waits. A phase's activations written by other CTAs are read through L2 only
/// (ld.global.cg) into shared memory, never through the non-coherent path.
///
/// Bits: the GEMVs are persist_layer.cuh's WarpStream (gemv_kernel's per-column arithmetic: a
/// lane's chunks in increasing k, fmaf over 8, the warp butterfly; independent of U and of the
/// column's warp), the norms norm.cuh's rms_norm_row_to with the fused GEMV's thread count,
/// SwiGLU activation.cuh's swiglu8, and phase E repeats rope.cuh's qk_norm_rope_token (whose CTA
/// split is blockIdx.y, which a 1-D persistent grid does not have) and rope_kv.cuh's K/V stores
/// with the CTA index as a parameter. Identity is checked (persist_decoder_check.cuh), not assumed.
#include "persist_layer.cuh"
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/rope.cuh"

namespace pie::bench::persist {

template <class T>
struct DecoderParams {
  // A: o [hidden] = x [q_dim]·wo [hidden, q_dim]ᵀ
  const T* x;
  const T* wo;
  T* o;
  int hidden, q_dim;
  // B: r1 = T(o + r0) (CTA 0 stores it), gu [2·inter], act [inter]
  const T* r0;
  T* r1;
  const T* post_norm_w;
  const T* wgu;
  T* gu;
  T* act;
  int inter;
  // C: dn [hidden] = act·wd [hidden, inter]ᵀ
  const T* wd;
  T* dn;
  // D: r2 = T(dn + r1) (CTA 0), qkv [(nq + 2 nkv)·HD] = T(rmsnorm(r2)·in_norm_w)·wqkvᵀ
  T* r2;
  const T* in_norm_w;
  const T* wqkv;
  T* qkv;
  float eps;
  int norm_threads;  ///< oc::detail::norm_threads(hidden)
  // E: q/k norm + RoPE, K/V to the cache
  const T* q_norm;
  const T* k_norm;
  const int32_t* position;  ///< device [1]
  const int64_t* slot;      ///< device [1]; < 0: nothing written to the cache
  oc::RopeParams rope;
  kv::PagedKV<T> cache;
  int nq, nkv;
  /// [0]: the arrival counter (a multiple of gridDim.x between launches); [1]: barrier timeouts.
  unsigned long long* bar;
};

/// CTAs of phase E: rope.cuh's split at one token (rope_split: ceil(heads / heads per CTA)).
template <int HD>
__host__ __device__ constexpr int rope_ctas(int heads) {
  constexpr int hpb = oc::detail::kRopeThreads / (HD / 16);
  return (heads + hpb - 1) / hpb;
}

namespace dec {

/// Grid-wide barrier, split: arrive() returns the target the counter must reach (thread 0 only).
__device__ __forceinline__ unsigned long long arrive(unsigned long long* bar) {
  __syncthreads();  // every store of this CTA's phase is before thread 0's fence
  unsigned long long target = 0;
  if (threadIdx.x == 0) {
    const unsigned long long g = gridDim.x;
    __threadfence();
    const unsigned long long old = atomicAdd(bar, 1ull);
    target = (old / g + 1) * g;
  }
  return target;
}
__device__ __forceinline__ void wait(unsigned long long* bar, unsigned long long target) {
  if (threadIdx.x == 0) {
    // A CTA that never arrives (a grid larger than the resident one) would hang the bench: after
    // ~2 s of spinning, count a timeout in bar[1] and go on (the outputs then differ: reported).
    const long long t0 = clock64();
    for (unsigned i = 1; load_acquire(bar) < target; ++i)
      if (i % 1024 == 0 && clock64() - t0 > (1ll << 32)) {
        atomicAdd(bar + 1, 1ull);
        break;
      }
    __threadfence();
  }
  __syncthreads();
}

/// n elements (a multiple of 8) from global memory written by this grid into shared memory,
/// through L2; four 16-byte loads in flight per thread before their stores.
template <class T>
__device__ __forceinline__ void stage(T* dst, const T* src, int n) {
  constexpr int kStride = kWarps * 32 * 8;
  for (int i0 = threadIdx.x * 8; i0 < n; i0 += 4 * kStride) {
    uint4 v[4];
#pragma unroll
    for (int b = 0; b < 4; ++b)
      if (i0 + b * kStride < n) v[b] = load16_cg(src + i0 + b * kStride);
#pragma unroll
    for (int b = 0; b < 4; ++b)
      if (i0 + b * kStride < n) *reinterpret_cast<uint4*>(dst + i0 + b * kStride) = v[b];
  }
}

template <class T>
__device__ __forceinline__ void load8_cg(const T* p, float (&f)[8]) {
  const uint4 v = load16_cg(p);
  oc::widen8(*reinterpret_cast<const oc::Pack8<T>*>(&v), f);
}

/// rope.cuh's qk_norm_rope_token for one token, heads [by·HPB, …) step HPB·gy, with the K heads'
/// rotated values and V written into the cache as rope_kv.cuh's kernel writes them. The head
/// values come through L2 (other CTAs of this grid wrote them).
template <int HD, class T>
__device__ __forceinline__ void rope_kv_token(const DecoderParams<T>& p, int by, int gy) {
  T* row = p.qkv;
  const int nq = p.nq, nkv = p.nkv, heads = nq + nkv;
  const int64_t slot = *p.slot;
  if (slot >= 0) {  // V, as qk_norm_rope_kv_kernel copies it (16-bit cache: no scale)
    const T* v = row + int64_t{nq + nkv} * HD;
    for (int i = by * oc::detail::kRopeThreads + threadIdx.x; i < nkv * (HD / 8); i += oc::detail::kRopeThreads * gy) {
      const int h = i / (HD / 8), c = (i % (HD / 8)) * 8;
      float f[8];
      load8_cg(v + h * HD + c, f);
      oc::store8(p.cache.v_at_slot(slot, h) + c, f);
    }
  }
  constexpr int TPH = HD / 16, HPB = oc::detail::kRopeThreads / TPH;
  const int sub = threadIdx.x % TPH, hs = threadIdx.x / TPH;
  const int pos = *p.position;
  const oc::RopeParams& rp = p.rope;
  float c[8], sn[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    int i = sub * 8 + j;
    float f = rp.inv_freq ? rp.inv_freq[i] : powf(rp.theta, -2.f * i / HD);
    sincosf(static_cast<float>(pos) * f, &sn[j], &c[j]);
    c[j] = oc::to_f32(oc::from_f32<T>(c[j] * rp.mscale));
    sn[j] = oc::to_f32(oc::from_f32<T>(sn[j] * rp.mscale));
  }
  for (int h0 = by * HPB; h0 < heads; h0 += HPB * gy) {
    const int h = min(h0 + hs, heads - 1);
    T* head = row + static_cast<int64_t>(h) * HD;
    const T* norm_w = h < nq ? p.q_norm : p.k_norm;
    float a[8], b[8];
    load8_cg(head + sub * 8, a);
    load8_cg(head + HD / 2 + sub * 8, b);
    if (norm_w != nullptr) {
      float ss = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += a[j] * a[j] + b[j] * b[j];
#pragma unroll
      for (int o = TPH / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      float inv = rsqrtf(ss / HD + p.eps);
      float wa[8], wb[8];
      oc::load8(norm_w + sub * 8, wa);
      oc::load8(norm_w + HD / 2 + sub * 8, wb);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        a[j] = oc::to_f32(oc::from_f32<T>(wa[j] * oc::to_f32(oc::from_f32<T>(a[j] * inv))));
        b[j] = oc::to_f32(oc::from_f32<T>(wb[j] * oc::to_f32(oc::from_f32<T>(b[j] * inv))));
      }
    }
    float oa[8], ob[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      auto r = [](float v) { return oc::to_f32(oc::from_f32<T>(v)); };
      oa[j] = r(a[j] * c[j]) - r(b[j] * sn[j]);
      ob[j] = r(b[j] * c[j]) + r(a[j] * sn[j]);
    }
    if (h0 + hs < heads) {
      oc::store8(head + sub * 8, oa);
      oc::store8(head + HD / 2 + sub * 8, ob);
      if (h >= nq && slot >= 0) {  // RopeKvSink: K as stored in T (store8 rounds once, as there)
        T* k = p.cache.k_at_slot(slot, h - nq);
        oc::store8(k + sub * 8, oa);
        oc::store8(k + HD / 2 + sub * 8, ob);
      }
    }
  }
}

}  // namespace dec

/// Shared memory: the staged row of the widest phase (max(hidden, inter)), r1 for phase D, the
/// norm's reduction scratch.
inline size_t decoder_smem_bytes(int hidden, int inter, size_t elem) {
  return size_t(std::max(hidden, inter)) * elem + size_t(hidden) * elem + 32 * sizeof(float);
}

template <int U, int kEarly, int HD, class T>
__global__ void __launch_bounds__(kWarps * 32, 4) persist_decoder_kernel(const __grid_constant__ DecoderParams<T> p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gw = blockIdx.x * kWarps + warp, GW = gridDim.x * kWarps;
  extern __shared__ __align__(16) unsigned char persist_smem[];
  T* xs = reinterpret_cast<T*>(persist_smem);
  T* rs = xs + (p.hidden > p.inter ? p.hidden : p.inter);
  float* red = reinterpret_cast<float*>(rs + p.hidden);
  uint4 wa[U][kCols], wb[U][kCols];
  auto units_of = [&](int units) { return gw < units ? (units - 1 - gw) / GW + 1 : 0; };
  using WS = WarpStream<U, T>;
  auto steps_of = [](int k) { return (k + WS::kStep - 1) / WS::kStep; };
  // Plain column units of C adjacent columns (past N: recompute the last, store nothing).
  auto plain_cols = [](int n) {
    return [n](int u, int (&col)[kCols]) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) col[c] = min(u * kCols + c, n - 1);
    };
  };
  auto plain_store = [&](T* y, int n) {
    return [y, n, lane](int u, const float (&acc)[kCols]) {
#pragma unroll
      for (int c = 0; c < kCols; ++c)
        if (lane == c && u * kCols + c < n) y[u * kCols + c] = oc::from_f32<T>(acc[c]);
    };
  };
  // The first weight step of a phase into wa: issued before the barrier's wait.
  auto first_step = [&](const WS& s, int total, auto cols) {
    if (total > 0) {
      int col[kCols];
      cols(gw, col);
      s.fetch(wa, col, 0);
    }
  };
  auto barrier = [&](auto issue_next) {
    const unsigned long long target = dec::arrive(p.bar);
    if constexpr (kEarly > 0) issue_next();
    dec::wait(p.bar, target);
    if constexpr (kEarly == 0) issue_next();
  };

  // ---- A: o_proj ----
  const WS sa{p.wo, p.q_dim, steps_of(p.q_dim), lane};
  const int ta = units_of((p.hidden + kCols - 1) / kCols) * sa.steps;
  const auto cols_a = plain_cols(p.hidden);
  first_step(sa, ta, cols_a);  // weights only: may run before the predecessor finishes
  oc::pdl_launch_dependents();
  oc::pdl_wait();
  run_phase(sa, p.x, wa, wb, ta, gw, GW, cols_a, plain_store(p.o, p.hidden));

  // ---- B: add + norm + gate_up, SwiGLU in the epilogue (warp owns gate u and up u) ----
  const WS sb{p.wgu, p.hidden, steps_of(p.hidden), lane};
  const int tb = units_of(p.inter) * sb.steps;
  const int inter = p.inter;
  auto cols_b = [inter](int u, int (&col)[kCols]) {
    col[0] = u;
    col[1] = inter + u;
  };
  barrier([&] { first_step(sb, tb, cols_b); });
  dec::stage(xs, p.o, p.hidden);
  __syncthreads();
  oc::detail::rms_norm_row_to<true>(xs, p.r0, blockIdx.x == 0 ? p.r1 : nullptr, p.post_norm_w, xs, p.hidden, p.eps,
                                    false, red, p.norm_threads);
  __syncthreads();
  run_phase(sb, xs, wa, wb, tb, gw, GW, cols_b, [&](int u, const float (&acc)[kCols]) {
    const T g = oc::from_f32<T>(acc[0]), up = oc::from_f32<T>(acc[1]);
    if (lane == 0) p.gu[u] = g;
    if (lane == 1) p.gu[inter + u] = up;
    if (lane == 2) {  // silu_and_mul's arithmetic on the rounded gate and up (swiglu8, one lane of 8)
      float gf[8], uf[8], o[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) gf[j] = oc::to_f32(g), uf[j] = oc::to_f32(up);
      oc::detail::swiglu8<T>(gf, uf, o);
      p.act[u] = oc::from_f32<T>(o[0]);
    }
  });

  // ---- C: down ----
  const WS sc{p.wd, p.inter, steps_of(p.inter), lane};
  const int tc = units_of((p.hidden + kCols - 1) / kCols) * sc.steps;
  const auto cols_c = plain_cols(p.hidden);
  barrier([&] { first_step(sc, tc, cols_c); });
  dec::stage(xs, p.act, p.inter);
  __syncthreads();
  run_phase(sc, xs, wa, wb, tc, gw, GW, cols_c, plain_store(p.dn, p.hidden));

  // ---- D: add + the next layer's input norm + qkv ----
  const int nqkv = (p.nq + 2 * p.nkv) * HD;
  const WS sd{p.wqkv, p.hidden, steps_of(p.hidden), lane};
  const int td = units_of((nqkv + kCols - 1) / kCols) * sd.steps;
  const auto cols_d = plain_cols(nqkv);
  barrier([&] { first_step(sd, td, cols_d); });  // its __syncthreads: phase C's reads of xs are done
  dec::stage(xs, p.dn, p.hidden);
  dec::stage(rs, p.r1, p.hidden);  // r1: CTA 0's store of phase B
  __syncthreads();
  oc::detail::rms_norm_row_to<true>(xs, rs, blockIdx.x == 0 ? p.r2 : nullptr, p.in_norm_w, xs, p.hidden, p.eps, false,
                                    red, p.norm_threads);
  __syncthreads();
  run_phase(sd, xs, wa, wb, td, gw, GW, cols_d, plain_store(p.qkv, nqkv));

  // ---- E: q/k norm + RoPE, K/V to the cache, on rope_ctas CTAs; the others arrive and exit ----
  const int ne = min(rope_ctas<HD>(p.nq + p.nkv), static_cast<int>(gridDim.x));  // a grid below it: fewer, more heads each
  const unsigned long long target = dec::arrive(p.bar);
  if (static_cast<int>(blockIdx.x) >= ne) return;
  dec::wait(p.bar, target);
  dec::rope_kv_token<HD>(p, blockIdx.x, ne);
}

/// Resident CTAs of the instantiation on this device (the persistent grid).
template <int U, int kEarly, int HD, class T>
int decoder_resident_ctas(size_t smem) {
  auto kern = persist_decoder_kernel<U, kEarly, HD, T>;
  if (smem > 48 * 1024) PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int per_sm = 0;
  PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kWarps * 32, smem));
  return std::max(per_sm, 1) * oc::num_sms();
}

/// Launches on `grid` CTAs with `mode` (persist_layer.cuh's LaunchMode bits).
template <int U, int kEarly, int HD, class T>
cudaError_t launch_decoder(const DecoderParams<T>& p, int grid, int mode, cudaStream_t stream) {
  const size_t smem = decoder_smem_bytes(p.hidden, p.inter, sizeof(T));
  auto kern = persist_decoder_kernel<U, kEarly, HD, T>;
  if (smem > 48 * 1024) PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(grid));
  cfg.blockDim = dim3(kWarps * 32);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (mode & kCoop) {
    attr[n].id = cudaLaunchAttributeCooperative;
    attr[n++].val.cooperative = 1;
  }
  if (mode & kPdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kern, p);
}

}  // namespace pie::bench::persist
