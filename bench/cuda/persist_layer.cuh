#pragma once
/// \file persist_layer.cuh
/// \brief Prototype of the persistent batch-1 decode-layer kernel (issue 15; docs/gpu_engine.md,
/// "Next: a persistent decode-layer kernel for batch 1", its first step). Bench only: nothing in
/// the engine includes it.
///
/// One kernel on the resident CTAs runs two phases of a decoder layer at batch 1:
///   A. o = T(x·Woᵀ)                                 (the o_proj GEMV),
///   B. r_out = T(o + r_in); y = T(rmsnorm(r_out)·nw·Wguᵀ)   (add + norm + gate_up GEMV),
///      and with kSwiGLU also act = T(T(silu(gate))·up)      (silu_and_mul, in the epilogue),
/// separated by a grid-wide arrival counter instead of a kernel boundary. The chain the engine
/// runs today is gemv() then add_rms_norm_gemv() (then silu_and_mul()).
///
/// Why it may beat the chain: at the chain's boundary the gate_up kernel cannot stream its weights
/// until griddepcontrol.wait returns, i.e. until the o_proj grid has drained. Here every warp
/// arrives at the counter, then issues its first phase-B weight chunks (they do not depend on o),
/// and only then waits: DRAM keeps streaming through the barrier (kEarly = 1 step of U chunks, 2:
/// two steps). kEarly = 0 issues them after the barrier, to separate the barrier's cost from the
/// early issue's gain.
///
/// Bits: each output column is computed as gemv_kernel computes it (one warp, C = 2 columns,
/// a lane's 16-byte chunks k = lane·8 + 256·i in increasing i, fmaf over the 8 elements, the warp
/// butterfly), the norm is norm.cuh's rms_norm_row_to with the same thread count, SwiGLU is
/// activation.cuh's swiglu8: the outputs equal the chain's byte for byte (bench_persist.cu checks).
///
/// Work: warp w of the GW resident warps takes units w, w + GW, … of C columns; a warp's steps
/// (U chunks of 256 elements per column) run back to back across its units, double-buffered, so
/// the next unit's weights stream while the current one is reduced.
///
/// The barrier is reset-free: `bar` only grows (64 bits: never wraps); an arrival that reads
/// `old` waits for the next multiple of the grid size above it. The host zeroes `bar` once per
/// grid size; graph replays then need nothing.
#include "pie/ops/cuda/activation.cuh"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/norm.cuh"

namespace pie::bench::persist {
namespace oc = pie::ops::cuda;

/// Warps per CTA (norm.cuh's block_sum over 4 warps: the fused norm GEMV's CTA, same bits).
inline constexpr int kWarps = 4;
/// Columns per warp (gemv's default configuration).
inline constexpr int kCols = 2;

template <class T>
struct Params {
  // Phase A: o [na] = x [ka]·wo [na, ka]ᵀ.
  const T* x;
  const T* wo;
  T* o;
  int na, ka;
  // Phase B: r_out = T(o + r_in) (CTA 0 stores it); gu [nb] = T(rmsnorm(r_out)·norm_w)·wgu [nb, na]ᵀ;
  // with SwiGLU act [nb / 2] = silu_and_mul(gu).
  const T* r_in;
  T* r_out;
  const T* norm_w;
  float eps;
  int norm_threads;  ///< oc::detail::norm_threads(na)
  const T* wgu;
  T* gu;
  T* act;
  int nb;
  /// [0]: the arrival counter, a multiple of gridDim.x between launches; [1]: barrier timeouts.
  unsigned long long* bar;
};

/// 16-byte load through L2 only: o was written by other CTAs of this grid (never the
/// non-coherent path).
__device__ __forceinline__ uint4 load16_cg(const void* p) {
  uint4 r;
  asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

__device__ __forceinline__ unsigned long long load_acquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

/// One warp's column GEMV over a sequence of units (gemv_kernel's arithmetic, M = 1).
template <int U, class T>
struct WarpStream {
  static constexpr int kChunk = 32 * 8, kStep = U * kChunk;
  const T* w;
  int k;      ///< row length (K)
  int steps;  ///< steps per unit: ceil(K / kStep)
  int lane;

  __device__ __forceinline__ void fetch(uint4 (&dst)[U][kCols], const int (&col)[kCols], int k0) const {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * kChunk + lane * 8;
#pragma unroll
      for (int c = 0; c < kCols; ++c)
        dst[u][c] = kk < k ? oc::load16_stream(w + int64_t(col[c]) * k + kk) : make_uint4(0, 0, 0, 0);
    }
  }
  __device__ __forceinline__ void consume(const uint4 (&src)[U][kCols], const T* x, int k0,
                                          float (&acc)[kCols]) const {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * kChunk + lane * 8;
      if (kk >= k) break;
      float wf[kCols][8];
#pragma unroll
      for (int c = 0; c < kCols; ++c) oc::widen8(*reinterpret_cast<const oc::Pack8<T>*>(&src[u][c]), wf[c]);
      float xf[8];
      oc::load8(x + kk, xf);
#pragma unroll
      for (int c = 0; c < kCols; ++c)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[c] = fmaf(xf[j], wf[c][j], acc[c]);
    }
  }
};

/// Runs `total` steps of one warp (units gw, gw + GW, …; `steps` steps each) with step 0 already
/// in wa (and step 1 in wb when wb_ready). cols(unit, col[]) names a unit's weight rows;
/// done(unit, acc) gets the warp-reduced sums.
template <int U, class T, class Cols, class Done>
__device__ __forceinline__ void run_phase(const WarpStream<U, T>& s, const T* x, uint4 (&wa)[U][kCols],
                                          uint4 (&wb)[U][kCols], int total, int gw, int GW, Cols cols, Done done,
                                          bool wb_ready = false) {
  float acc[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) acc[c] = 0.f;
  auto fetch_step = [&](uint4 (&dst)[U][kCols], int t) {
    int col[kCols];
    cols(gw + (t / s.steps) * GW, col);
    s.fetch(dst, col, (t % s.steps) * WarpStream<U, T>::kStep);
  };
  auto consume_step = [&](const uint4 (&src)[U][kCols], int t) {
    const int i = t % s.steps;
    s.consume(src, x, i * WarpStream<U, T>::kStep, acc);
    if (i == s.steps - 1) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[c] = oc::warp_sum(acc[c]);
      done(gw + (t / s.steps) * GW, acc);
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[c] = 0.f;
    }
  };
  for (int t = 0; t < total; t += 2) {
    if (t + 1 < total && !(t == 0 && wb_ready)) fetch_step(wb, t + 1);
    consume_step(wa, t);
    if (t + 1 >= total) break;
    if (t + 2 < total) fetch_step(wa, t + 2);
    consume_step(wb, t + 1);
  }
}

template <int U, int kEarly, bool kSwiGLU, class T>
__global__ void __launch_bounds__(kWarps * 32, 4) persist_layer_kernel(const __grid_constant__ Params<T> p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gw = blockIdx.x * kWarps + warp, GW = gridDim.x * kWarps;
  extern __shared__ __align__(16) unsigned char persist_smem[];
  T* xs = reinterpret_cast<T*>(persist_smem);
  float* red = reinterpret_cast<float*>(persist_smem + size_t(p.na) * sizeof(T));
  uint4 wa[U][kCols], wb[U][kCols];
  auto units_of = [&](int units) { return gw < units ? (units - 1 - gw) / GW + 1 : 0; };

  // ---- phase A: the o_proj GEMV ----
  const WarpStream<U, T> sa{p.wo, p.ka, (p.ka + WarpStream<U, T>::kStep - 1) / WarpStream<U, T>::kStep, lane};
  const int ua = (p.na + kCols - 1) / kCols, ta = units_of(ua) * sa.steps;
  auto cols_a = [&](int u, int (&col)[kCols]) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) col[c] = min(u * kCols + c, p.na - 1);  // past N: recompute the last
  };
  if (ta > 0) {
    int col[kCols];
    cols_a(gw, col);
    sa.fetch(wa, col, 0);  // weights only: may run before the predecessor finishes
  }
  oc::pdl_launch_dependents();
  oc::pdl_wait();
  run_phase(sa, p.x, wa, wb, ta, gw, GW, cols_a, [&](int u, const float (&acc)[kCols]) {
#pragma unroll
    for (int c = 0; c < kCols; ++c)
      if (lane == c && u * kCols + c < p.na) p.o[u * kCols + c] = oc::from_f32<T>(acc[c]);
  });

  // ---- the grid-wide barrier, phase B's first weights issued between arrival and wait ----
  const int kb = p.na, half = p.nb / 2;
  const WarpStream<U, T> sb{p.wgu, kb, (kb + WarpStream<U, T>::kStep - 1) / WarpStream<U, T>::kStep, lane};
  const int ub = kSwiGLU ? half : (p.nb + kCols - 1) / kCols, tb = units_of(ub) * sb.steps;
  auto cols_b = [&](int u, int (&col)[kCols]) {
    if constexpr (kSwiGLU) {  // gate u and up u in one warp: SwiGLU in the epilogue
      col[0] = u;
      col[1] = half + u;
    } else {
#pragma unroll
      for (int c = 0; c < kCols; ++c) col[c] = min(u * kCols + c, p.nb - 1);
    }
  };
  auto fetch_b0 = [&] {
    if (tb > 0) {
      int col[kCols];
      cols_b(gw, col);
      sb.fetch(wa, col, 0);
    }
    if (kEarly == 2 && tb > 1) {  // step 1 too: 8 KB a warp in flight through the barrier
      int col[kCols];
      cols_b(gw + (1 / sb.steps) * GW, col);
      sb.fetch(wb, col, (1 % sb.steps) * WarpStream<U, T>::kStep);
    }
  };
  __syncthreads();  // every o store of this CTA is before thread 0's fence
  unsigned long long target = 0;
  if (threadIdx.x == 0) {
    const unsigned long long g = gridDim.x;
    __threadfence();
    const unsigned long long old = atomicAdd(p.bar, 1ull);
    target = (old / g + 1) * g;
  }
  if constexpr (kEarly > 0) fetch_b0();  // weights only: stream while the grid arrives
  if (threadIdx.x == 0) {
    // A CTA that never arrives (a grid larger than the resident one) would hang the bench: after
    // ~2 s of spinning, count a timeout in bar[1] and go on (the outputs then differ: reported).
    const long long t0 = clock64();
    for (unsigned i = 1; load_acquire(p.bar) < target; ++i)
      if (i % 1024 == 0 && clock64() - t0 > (1ll << 32)) {
        atomicAdd(p.bar + 1, 1ull);
        break;
      }
    __threadfence();
  }
  __syncthreads();
  if constexpr (kEarly == 0) fetch_b0();

  // ---- phase B: add + RMSNorm into shared memory (every CTA), then the gate_up GEMV ----
  for (int i = threadIdx.x * 8; i < kb; i += kWarps * 32 * 8)
    *reinterpret_cast<uint4*>(xs + i) = load16_cg(p.o + i);
  __syncthreads();
  // In place (x == out): rms_norm_row_to reads every element before its thread writes it.
  oc::detail::rms_norm_row_to<true>(xs, p.r_in, blockIdx.x == 0 ? p.r_out : nullptr, p.norm_w, xs, kb, p.eps,
                                    false, red, p.norm_threads);
  __syncthreads();
  run_phase(sb, xs, wa, wb, tb, gw, GW, cols_b, [&](int u, const float (&acc)[kCols]) {
    if constexpr (kSwiGLU) {
      const T g = oc::from_f32<T>(acc[0]), up = oc::from_f32<T>(acc[1]);
      if (lane == 0) p.gu[u] = g;
      if (lane == 1) p.gu[half + u] = up;
      if (lane == 2) {  // silu_and_mul's arithmetic on the rounded gate and up (swiglu8, one lane of 8)
        float gf[8], uf[8], o[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) gf[j] = oc::to_f32(g), uf[j] = oc::to_f32(up);
        oc::detail::swiglu8<T>(gf, uf, o);
        p.act[u] = oc::from_f32<T>(o[0]);
      }
    } else {
#pragma unroll
      for (int c = 0; c < kCols; ++c)
        if (lane == c && u * kCols + c < p.nb) p.gu[u * kCols + c] = oc::from_f32<T>(acc[c]);
    }
  }, kEarly == 2);
}

/// Dynamic shared memory of the kernel: the normed row and the norm's reduction scratch.
inline size_t smem_bytes(int na, size_t elem) { return size_t(na) * elem + 32 * sizeof(float); }

/// Resident CTAs of the instantiation on this device (the persistent grid).
template <int U, int kEarly, bool kSwiGLU, class T>
int resident_ctas(size_t smem) {
  int per_sm = 0;
  PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persist_layer_kernel<U, kEarly, kSwiGLU, T>,
                                                               kWarps * 32, smem));
  return std::max(per_sm, 1) * oc::num_sms();
}

/// Launch mode bits: cooperative (co-residency checked by the driver), programmatic dependent
/// launch (the weight prefetch before pdl_wait overlaps the predecessor).
enum LaunchMode : int { kCoop = 1, kPdl = 2 };

/// Launches on `grid` CTAs; returns the launch's error instead of aborting (the bench falls back
/// to another mode when a graph cannot capture this one).
template <int U, int kEarly, bool kSwiGLU, class T>
cudaError_t launch(const Params<T>& p, int grid, int mode, cudaStream_t stream) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(grid));
  cfg.blockDim = dim3(kWarps * 32);
  cfg.dynamicSmemBytes = smem_bytes(p.na, sizeof(T));
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
  return cudaLaunchKernelEx(&cfg, persist_layer_kernel<U, kEarly, kSwiGLU, T>, p);
}

}  // namespace pie::bench::persist
