#pragma once
/// \file gemv.cuh
/// \brief Skinny linear layer for decode steps: y [M, N] = x [M, K]·w [N, K]ᵀ (+ bias [N]) for
/// 1 ≤ M ≤ kGemvMaxRows, f16/bf16 operands, f32 accumulation, output in the operand type or
/// float.
///
/// Why not cuBLASLt: at M of a few rows a linear layer is a pass over its weights, and the
/// heuristic's tensor-core kernels streamed them at 1.8–2.1 TB/s on the Qwen3-8B shapes
/// (qkv_proj, o_proj) against the card's 2.99 TB/s copy bandwidth (docs/gpu_engine.md).
///
/// How: one warp owns C adjacent output columns; each lane streams 16-byte weight vectors
/// (L1 bypassed: read once) U chunks of 256 elements ahead, double-buffered, so a warp keeps
/// U·C·512 bytes in flight; x rows come from L1/L2 (every warp reads them). The first U chunks
/// are loaded before `pdl_wait()`: launched with programmatic dependent launch, the kernel
/// starts streaming its weights while the kernel that writes x (norm, attention, SwiGLU) is
/// still finishing.
///
/// Reduction order: a lane sums its chunks in increasing k, then the warp reduces by a fixed
/// butterfly; nothing depends on M, so a row's result is bit-identical whatever other rows
/// share the launch (batch invariance for every M ≤ kGemvMaxRows).
#include <algorithm>
#include <cstdlib>

#include "pie/core/env_switch.hpp"
#include "pie/ops/cuda/activation.cuh"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/flat_walk.cuh"
#include "pie/ops/cuda/norm.cuh"

namespace pie::ops::cuda {

/// Largest M gemv() takes.
inline constexpr int kGemvMaxRows = 8;
/// Largest M for which Gemm picks the GEMV by default. Measured on an H100 (docs/kernels.md,
/// bench BM_SkinnyLinear): at M = 1 the GEMV is as fast as cuBLASLt or faster on every Qwen3-8B
/// projection (o_proj 19.1 vs 23.6 µs, lm_head 403 vs 444 µs); from M = 2 on its CUDA-core FMAs
/// fall behind cuBLASLt's tensor cores (M = 8 gate_up: 143 vs 82 µs).
inline constexpr int kGemvDefaultMaxRows = 1;

namespace detail {

/// What a one-row GEMV computes into shared memory before its dot products (x is then read
/// from there): nothing, the residual add + RMSNorm (add_rms_norm_gemv), or SwiGLU over the
/// [gate | up] row (swiglu_gemv).
enum GemvPrologue : int { kGemvPlain = 0, kGemvAddRmsNorm = 1, kGemvSwiGLU = 2 };

template <class T, class TY>
struct GemvParams {
  const T* x; int64_t ldx;
  const T* w; int64_t ldw;
  const T* bias;
  TY* y; int64_t ldy;
  int n, k;
  // Fused residual add + RMSNorm prologue (kGemvAddRmsNorm): x is the block output to add to
  // norm_r_in. With kGemvSwiGLU x is the [gate | up] row, 2·k wide.
  const T* norm_r_in = nullptr;
  /// Written by CTA 0 (never norm_r_in: other CTAs still read it): the new residual with
  /// kGemvAddRmsNorm; with kGemvSwiGLU the SwiGLU row, when not null.
  T* norm_r_out = nullptr;
  /// kGemvAddRmsNorm, when not null: CTA 0 also writes the normalised row there (the bytes
  /// add_rms_norm would have left in x), for later kernels that read it (the MoE experts).
  T* norm_x_out = nullptr;
  const T* norm_w = nullptr;
  float norm_eps = 0.f;
  int norm_first = 0;
  int norm_threads = 0;
  /// Before its wait, each warp also moves the rest of its rows (past the chunks it loads into
  /// registers) into L2: for a GEMV whose predecessor leaves DRAM idle (o_proj after a batch-1
  /// decode attention that lets it launch after its K/V stages: FusionSwitches::gemv_l2_ahead).
  int l2_ahead = 0;
};

/// M rows, C columns per warp, U chunks in flight per column, NW warps per CTA. Pro (one row
/// only): kGemvAddRmsNorm — every CTA first computes r = x + r_in, T(rmsnorm(r))·norm_w into
/// shared memory (the standalone norm kernel's arithmetic and reduction order, norm.cuh);
/// kGemvSwiGLU — every CTA first computes T(silu(gate))·up of the row into shared memory
/// (silu_and_mul's); the dot products then read x from there. kFlat (one row): a grid of resident
/// CTAs whose warps walk units of C columns (warp w of W takes units w, w + W, …), both register
/// buffers requested before the wait and refilled across unit boundaries — fp8_gemv.cuh's
/// kFp8GridFlat, for the same reasons: the prologue runs once per resident CTA, and the rounds
/// even out at the warp (Qwen3-8B's qkv: 6,144 columns of C = 1 over ~2,100 warps). The same
/// arithmetic in the same order: bit-identical to the other grids.
template <int M, int C, int U, int NW, int MINB, int Pro, class T, class TY, bool kFlat = false>
__global__ void __launch_bounds__(NW * 32, MINB) gemv_kernel(const __grid_constant__ GemvParams<T, TY> p) {
  constexpr bool kPro = Pro != kGemvPlain;
  static_assert(!kPro || M == 1, "the fused prologues are for one row");
  static_assert(!kFlat || M == 1, "the flat walk is for one row");
  constexpr int kChunk = 32 * 8;  // elements a warp covers per 16-byte load per lane
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int n0 = (blockIdx.x * NW + warp) * C;
  const bool active = n0 < p.n;
  if (!kPro && !active) return;  // writes nothing (with a prologue every thread joins it)
  const T* wrow[C];
#pragma unroll
  for (int c = 0; c < C; ++c) wrow[c] = p.w + int64_t(min(n0 + c, p.n - 1)) * p.ldw;  // past N: recompute the last

  uint4 wa[U][C], wb[U][C];
  auto fetch = [&](uint4 (&dst)[U][C], int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kChunk + lane * 8;
#pragma unroll
      for (int c = 0; c < C; ++c) dst[u][c] = k < p.k ? load16_stream(wrow[c] + k) : make_uint4(0, 0, 0, 0);
    }
  };
  float acc[M][C];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int c = 0; c < C; ++c) acc[m][c] = 0.f;
  const T* xsrc = p.x;
  auto consume = [&](const uint4 (&src)[U][C], int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kChunk + lane * 8;
      if (k >= p.k) break;  // chunks past K are the tail of the last step only
      float wf[C][8];
#pragma unroll
      for (int c = 0; c < C; ++c) widen8(*reinterpret_cast<const Pack8<T>*>(&src[u][c]), wf[c]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[8];
        load8(xsrc + m * p.ldx + k, xf);
#pragma unroll
        for (int c = 0; c < C; ++c)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[m][c] = fmaf(xf[j], wf[c][j], acc[m][c]);
      }
    }
  };

  constexpr int kStep = U * kChunk;
  fetch(wa, 0);  // weights only: may run before the predecessor finishes
  // The flat walk (kFlat, flat_walk.cuh): wa holds this warp's first unit's first step, wb the
  // position after it, requested here too.
  [[maybe_unused]] FlatWalk walk((p.n + C - 1) / C, (p.k + kStep - 1) / kStep, int(gridDim.x) * NW,
                                 int(blockIdx.x) * NW + warp);
  auto fetch_at = [&](uint4 (&dst)[U][C], int uu, int ss) {  // wrow is this fetch's scratch
#pragma unroll
    for (int c = 0; c < C; ++c) wrow[c] = p.w + int64_t(min(uu * C + c, p.n - 1)) * p.ldw;
    fetch(dst, ss * kStep);
  };
  if constexpr (kFlat) {
    if (walk.bu < walk.units) fetch_at(wb, walk.bu, walk.bs);
  }
  if (!kFlat && p.l2_ahead != 0 && active && kStep < p.k) {
    // Lanes c, c + C, … split row n0 + c's bytes past the first U chunks into 16-byte multiples.
    constexpr int kPieces = 32 / C;
    const int c = lane % C, piece = lane / C;
    const int64_t bytes = int64_t(p.k - kStep) * int64_t(sizeof(T));
    const int64_t per = ((bytes + kPieces - 1) / kPieces + 15) / 16 * 16, off = per * piece;
    if (n0 + c < p.n && off < bytes)
      prefetch_l2(reinterpret_cast<const char*>(wrow[c] + kStep) + off, uint32_t(per < bytes - off ? per : bytes - off));
  }
  extern __shared__ __align__(16) unsigned char gemv_smem[];
  // The norm's weight does not depend on the predecessor either: into shared memory before the
  // wait (gemv_prologue_smem's last k elements), so the norm's second pass waits for no load.
  if constexpr (Pro == kGemvAddRmsNorm)
    stage_norm_weight(p.norm_w, reinterpret_cast<T*>(gemv_smem + size_t(p.k) * sizeof(T) + 32 * sizeof(float)), p.k,
                      p.norm_threads);
  pdl_launch_dependents();
  pdl_wait();
  if constexpr (kPro) {
    T* xs = reinterpret_cast<T*>(gemv_smem);
    if constexpr (Pro == kGemvAddRmsNorm) {
      float* red = reinterpret_cast<float*>(gemv_smem + size_t(p.k) * sizeof(T));
      rms_norm_row_to<true>(p.x, p.norm_r_in, blockIdx.x == 0 ? p.norm_r_out : nullptr,
                            reinterpret_cast<const T*>(red + 32), xs, p.k, p.norm_eps, p.norm_first != 0, red,
                            p.norm_threads, /*w_staged=*/true);
    } else {
      // Two vectors' loads before their stores: the row comes from L2, and a store to global
      // memory (CTA 0's copy) between loads would keep the compiler from overlapping them.
      constexpr int kStride = NW * 32 * 8, kBatch = MINB >= 8 ? 1 : 2;  // the lean CTAs: ≤ 64 registers
      for (int i0 = threadIdx.x * 8; i0 < p.k; i0 += kBatch * kStride) {
        float g[kBatch][8], u[kBatch][8];
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int i = i0 + b * kStride;
          if (i >= p.k) break;
          load8(p.x + i, g[b]);
          load8(p.x + p.k + i, u[b]);
        }
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int i = i0 + b * kStride;
          if (i >= p.k) break;
          float o[8];
          swiglu8<T>(g[b], u[b], o);  // silu_and_mul_kernel's arithmetic (activation.cuh)
          store8(xs + i, o);
          if (blockIdx.x == 0 && p.norm_r_out != nullptr) store8(p.norm_r_out + i, o);
        }
      }
    }
    __syncthreads();
    if constexpr (Pro == kGemvAddRmsNorm) {
      if (blockIdx.x == 0 && p.norm_x_out != nullptr)
        for (int i = threadIdx.x * 8; i < p.k; i += NW * 32 * 8)
          *reinterpret_cast<uint4*>(p.norm_x_out + i) = *reinterpret_cast<const uint4*>(xs + i);
    }
    if (!active) return;
    xsrc = xs;
  }
  auto store_rows = [&] {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int c = 0; c < C; ++c) acc[m][c] = warp_sum(acc[m][c]);
    // Every lane holds every sum; lane m·C + c (mod 32) stores (m, c).
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int c = 0; c < C; ++c) {
        if (lane != (m * C + c) % 32 || n0 + c >= p.n) continue;
        float v = acc[m][c];
        if (p.bias) v += to_f32(p.bias[n0 + c]);
        p.y[m * p.ldy + n0 + c] = from_f32<TY>(v);
      }
  };
  if constexpr (kFlat) {
    walk.run([&](int s) { consume(wa, s * kStep); }, [&](int s) { consume(wb, s * kStep); },
             [&](int u, int s) { fetch_at(wa, u, s); }, [&](int u, int s) { fetch_at(wb, u, s); }, store_rows,
             [&](int u) {  // the columns of the unit consumed next
               n0 = u * C;
#pragma unroll
               for (int c = 0; c < C; ++c) acc[0][c] = 0.f;
             });
  } else {
    for (int k0 = 0; k0 < p.k; k0 += 2 * kStep) {
      if (k0 + kStep < p.k) fetch(wb, k0 + kStep);
      consume(wa, k0);
      if (k0 + kStep >= p.k) break;
      if (k0 + 2 * kStep < p.k) fetch(wa, k0 + 2 * kStep);
      consume(wb, k0 + kStep);
    }
    store_rows();
  }
}

/// Dynamic shared memory of gemv_kernel's prologue Pro at K = k: the normalised row, the norm's
/// reduction slots and its staged weight (stage_norm_weight), the SwiGLU row, or nothing.
template <int Pro, class T>
size_t gemv_prologue_smem(int k) {
  return Pro == kGemvAddRmsNorm ? 2 * size_t(k) * sizeof(T) + 32 * sizeof(float)
         : Pro == kGemvSwiGLU   ? size_t(k) * sizeof(T)
                                : 0;
}

template <int M, int C, int U, int MINB, int Pro = kGemvPlain, int NW = 4, class T, class TY>
void launch_gemv_cfg(const GemvParams<T, TY>& p, cudaStream_t stream) {
  auto kern = gemv_kernel<M, C, U, NW, MINB, Pro, T, TY>;
  const int64_t warps = (int64_t(p.n) + C - 1) / C;
  const size_t smem = gemv_prologue_smem<Pro, T>(p.k);
  launch_pdl(kern, dim3(unsigned((warps + NW - 1) / NW)), dim3(NW * 32), smem, stream, p);
}

/// Whether one-row GEMVs take the flat walk (gemv_kernel's kFlat), and its layout: 0 no, 1 one
/// column a warp with 8 chunks in flight, 2 two columns with 4 each (the fp8 GEMV's winning
/// layout), 3 the layout of 1 where the matrix has a side of at most kGemvFlatSmallSide (2,048)
/// elements; PIE_GEMV_FLAT=n, read once (tests set it through the reference); unset:
/// kGemvFlatDefault (docs/kernels.md, "The bf16 flat walk where a matrix side is small").
/// Why mode 3: 8 chunks of 16 bytes a lane are 2,048 elements, so where K ≤ 2,048 a warp's first
/// two columns are requested whole before `griddepcontrol.wait`, and where N ≤ 2,048 a warp has
/// about one column, which its two buffers cover up to K = 4,096. One H100 (2026-12-07): mode 1
/// took Qwen3-30B-A3B's batch-1 ITL 3.595 → 3.525 ms (all its one-row GEMVs have such a side:
/// qkv and router K = 2,048, o_proj N = 2,048, lm_head K = 2,048) and Qwen3-8B's 5.92 → 6.12 ms
/// (no such side: every GEMV is ≥ 4,096 both ways); mode 3 takes each model's better one.
inline constexpr int kGemvFlatSmallSide = 8 * 32 * 8;  // U · (32 lanes · 8 elements)
inline constexpr int kGemvFlatDefault = 3;
inline int& gemv_flat_flag() {
  static int on = [] {
    const int n = env_count("PIE_GEMV_FLAT", std::getenv("PIE_GEMV_FLAT"), kGemvFlatDefault);
    PIE_CHECK(n <= 3, "PIE_GEMV_FLAT must be a mode from 0 to 3, got ", n);
    return n;
  }();
  return on;
}
/// Whether a one-row GEMV of an [n, k] matrix takes the flat walk (gemv_flat_flag's mode).
inline bool gemv_flat(int n, int k) {
  const int mode = gemv_flat_flag();
  return mode == 3 ? std::min(n, k) <= kGemvFlatSmallSide : mode != 0;
}

/// The flat walk's launch (one row): C columns a warp, U chunks in flight, 4 warps a CTA, as many
/// CTAs as are resident at once with this prologue's shared memory (at most one a unit of NW warps).
template <int Pro, int C, int U, class T, class TY>
void launch_gemv_flat(const GemvParams<T, TY>& p, cudaStream_t stream) {
  constexpr int NW = 4;
  auto kern = gemv_kernel<1, C, U, NW, 1, Pro, T, TY, true>;
  const size_t smem = gemv_prologue_smem<Pro, T>(p.k);
  int per_sm = 0;
  PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, NW * 32, smem));
  const int64_t ctas =
      std::min<int64_t>((int64_t(p.n) + NW * C - 1) / (NW * C), int64_t(std::max(per_sm, 1)) * num_sms());
  launch_pdl(kern, dim3(unsigned(ctas)), dim3(NW * 32), smem, stream, p);
}

/// CTAs of gemv_kernel<M, C, U, 4 warps, MINB> resident per SM (cached per instantiation).
template <int M, int C, int U, int MINB, class T, class TY>
int gemv_ctas_per_sm() {
  static const int n = [] {
    int v = 0;
    PIE_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, gemv_kernel<M, C, U, 4, MINB, kGemvPlain, T, TY>, 4 * 32, 0));
    return std::max(v, 1);
  }();
  return n;
}

/// Two configurations, chosen by wave count. The default (2 columns per warp, 4 chunks in
/// flight, ~106 registers: 4 CTAs per SM) keeps the most bytes in flight per warp; but a grid
/// just past one wave of it (qkv_proj of Qwen3-8B: 768 CTAs on 528 slots) idles most SMs in
/// its second wave, and there the lean one (2 chunks, ≤ 64 registers: 8 CTAs per SM) runs in
/// one wave. Measured at batch 1 in the engine (docs/gpu_engine.md): qkv_proj 81% → 92% of copy
/// bandwidth with the lean kernel, o_proj and down_proj 94%/92% → 80%/88%, so each keeps its own.
template <int M, int Pro = kGemvPlain, class T, class TY>
void launch_gemv(const GemvParams<T, TY>& p, cudaStream_t stream, int norm_warps = 4) {
  if constexpr (M == 1) {
    if (gemv_flat(p.n, p.k) && p.l2_ahead == 0)
      return gemv_flat_flag() == 2 ? launch_gemv_flat<Pro, 2, 4>(p, stream) : launch_gemv_flat<Pro, 1, 8>(p, stream);
  }
  if constexpr (Pro == kGemvAddRmsNorm) {
    // Every CTA normalises the row (x, r_in and norm_w read from L2): 16 warps per CTA do it a
    // quarter as often per SM (opt-in, gemv_norm_warps()).
    if (norm_warps == 16) return launch_gemv_cfg<M, 2, 4, 1, Pro, 16>(p, stream);
  }
  if constexpr (M == 1) {
    const int64_t ctas = (int64_t(p.n) + 7) / 8;  // 2 columns per warp, 4 warps per CTA
    const int64_t wave = int64_t(gemv_ctas_per_sm<M, 2, 4, 1, T, TY>()) * num_sms();
    if (ctas > wave && ctas <= 2 * wave) return launch_gemv_cfg<M, 2, 2, 8, Pro>(p, stream);
  }
  launch_gemv_cfg<M, 2, 4, 1, Pro>(p, stream);
}

}  // namespace detail

/// \brief True when gemv() takes these operands: 1 ≤ M ≤ kGemvMaxRows, K a multiple of 8,
/// rows of x and w 16-byte aligned.
template <class T>
inline bool gemv_supported(int64_t m, int64_t k, const T* x, int64_t ldx, const T* w, int64_t ldw) {
  return m >= 1 && m <= kGemvMaxRows && k % 8 == 0 && ldx % 8 == 0 && ldw % 8 == 0 && vec8_aligned(x) &&
         vec8_aligned(w);
}

/// \brief y [M, N] = x [M, K]·w [N, K]ᵀ (+ bias) for M ≤ kGemvMaxRows (see the file comment).
/// Launched with programmatic dependent launch: the weight prefetch overlaps the predecessor.
/// `l2_ahead`: the weights past the first chunks also go to L2 before the wait (GemvParams::l2_ahead;
/// the same result).
template <class TY, class T>
void gemv(TensorView<TY> y, TensorView<T> x, TensorView<T> w, const T* bias = nullptr,
          cudaStream_t stream = nullptr, bool l2_ahead = false) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "gemv: f16 or bf16 operands");
  static_assert(std::is_same_v<TY, T> || std::is_same_v<TY, float>, "gemv: output is the operand type or float");
  PIE_CHECK(x.rank == 2 && w.rank == 2 && y.rank == 2, "gemv: x, w, y must be matrices");
  PIE_CHECK(x.shape[1] == w.shape[1] && y.shape[0] == x.shape[0] && y.shape[1] == w.shape[0],
            "gemv: shapes do not chain: x [", x.shape[0], ",", x.shape[1], "], w [", w.shape[0], ",", w.shape[1],
            "], y [", y.shape[0], ",", y.shape[1], "]");
  PIE_CHECK(x.stride[1] == 1 && w.stride[1] == 1 && y.stride[1] == 1, "gemv: rows must be contiguous");
  const int64_t M = x.shape[0];
  PIE_CHECK(gemv_supported(M, x.shape[1], x.data, x.stride[0], w.data, w.stride[0]), "gemv: M=", M,
            " (1..", kGemvMaxRows, "), K=", x.shape[1], " and strides must be multiples of 8, rows 16-byte aligned");
  using D = device_t<T>;
  using DY = std::conditional_t<std::is_same_v<TY, float>, float, D>;
  detail::GemvParams<D, DY> p{dev(x.data), x.stride[0], dev(w.data), w.stride[0], dev(bias),
                              reinterpret_cast<DY*>(y.data), y.stride[0], static_cast<int>(w.shape[0]),
                              static_cast<int>(x.shape[1])};
  p.l2_ahead = l2_ahead ? 1 : 0;
  switch (M) {
    case 1: detail::launch_gemv<1>(p, stream); break;
    case 2: detail::launch_gemv<2>(p, stream); break;
    case 3: detail::launch_gemv<3>(p, stream); break;
    case 4: detail::launch_gemv<4>(p, stream); break;
    case 5: detail::launch_gemv<5>(p, stream); break;
    case 6: detail::launch_gemv<6>(p, stream); break;
    case 7: detail::launch_gemv<7>(p, stream); break;
    default: detail::launch_gemv<8>(p, stream); break;
  }
}

/// \brief True when add_rms_norm_gemv() takes a hidden size of k: the norm's thread layout
/// must fit one GEMV CTA (k ≤ 4096, a multiple of 8).
inline bool add_rms_norm_gemv_supported(int64_t k) {
  return k % 8 == 0 && k > 0 && detail::norm_threads(static_cast<int>(k)) <= 4 * 32;
}

/// Warps per CTA of add_rms_norm_gemv() by default (4 or 16; 16 is opt-in until measured).
inline constexpr int kGemvNormWarpsDefault = 4;
/// kGemvNormWarpsDefault, or PIE_GEMV_NORM_WARPS=4/16 (read once).
inline int gemv_norm_warps() {
  static const int w = [] {
    const int n = env_count("PIE_GEMV_NORM_WARPS", std::getenv("PIE_GEMV_NORM_WARPS"), kGemvNormWarpsDefault);
    PIE_CHECK(n == 4 || n == 16, "PIE_GEMV_NORM_WARPS must be 4 or 16, got ", n);
    return n;
  }();
  return w;
}

/// \brief Batch-1 residual add + RMSNorm fused into the linear layer that reads it:
/// r_out = T(x + r_in) (x when `first`); y [1, N] = (T(rmsnorm(r_out))·norm_w)·w [N, K]ᵀ (+ bias).
/// Bit-identical to add_rms_norm(x, r, norm_w, eps, first) followed by gemv(y, x, w, bias), but
/// x is left as it was and the residual goes to another buffer: every CTA normalises the row
/// itself, so r_in must not be written while they read it (ping-pong r_in/r_out across calls).
/// It saves the norm kernel and its launch between two weight streams. y is in T, or float
/// (the final norm inside lm_head, the MoE router: float logits, as gemv's float output).
/// `x_out` (may be null, must not be x): CTA 0 also writes the normalised row there, the bytes the
/// separate norm would have left in x, for later readers (the MoE experts after the router).
template <class TY, class T>
void add_rms_norm_gemv(TensorView<TY> y, TensorView<T> x, const T* r_in, T* r_out, const T* norm_w, float eps,
                       bool first, TensorView<T> w, const T* bias = nullptr, cudaStream_t stream = nullptr,
                       int warps = 0, T* x_out = nullptr) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "add_rms_norm_gemv: f16 or bf16");
  static_assert(std::is_same_v<TY, T> || std::is_same_v<TY, float>, "add_rms_norm_gemv: output is T or float");
  PIE_CHECK(x.rank == 2 && w.rank == 2 && y.rank == 2 && x.shape[0] == 1 && y.shape[0] == 1,
            "add_rms_norm_gemv: one row: x [1, K], y [1, N], w [N, K]");
  PIE_CHECK(x.shape[1] == w.shape[1] && y.shape[1] == w.shape[0], "add_rms_norm_gemv: shapes do not chain");
  PIE_CHECK(add_rms_norm_gemv_supported(x.shape[1]), "add_rms_norm_gemv: hidden size ", x.shape[1],
            " must be a multiple of 8 and at most 4096");
  PIE_CHECK(gemv_supported(1, x.shape[1], x.data, x.stride[0], w.data, w.stride[0]) && x.stride[1] == 1 &&
                y.stride[1] == 1,
            "add_rms_norm_gemv: rows must be contiguous and 16-byte aligned");
  PIE_CHECK(r_out != nullptr && norm_w != nullptr && (first || r_in != nullptr),
            "add_rms_norm_gemv: needs r_out, norm_w and (unless first) r_in");
  PIE_CHECK(r_in != r_out, "add_rms_norm_gemv: r_in and r_out must differ (every CTA reads r_in)");
  PIE_CHECK(vec8_aligned(r_out) && vec8_aligned(norm_w) && (r_in == nullptr || vec8_aligned(r_in)),
            "add_rms_norm_gemv: residual and norm weight must be 16-byte aligned");
  PIE_CHECK(x_out == nullptr || (vec8_aligned(x_out) && x_out != x.data && x_out != r_in && x_out != r_out),
            "add_rms_norm_gemv: x_out must be 16-byte aligned and differ from x and the residuals (CTAs read them)");
  using D = device_t<T>;
  using DY = std::conditional_t<std::is_same_v<TY, float>, float, D>;
  const int K = static_cast<int>(x.shape[1]);
  detail::GemvParams<D, DY> p{dev(x.data), x.stride[0], dev(w.data), w.stride[0], dev(bias),
                              reinterpret_cast<DY*>(y.data), y.stride[0], static_cast<int>(w.shape[0]), K};
  p.norm_r_in = dev(r_in);
  p.norm_r_out = dev(r_out);
  p.norm_w = dev(norm_w);
  p.norm_eps = eps;
  p.norm_first = first ? 1 : 0;
  p.norm_threads = detail::norm_threads(K);
  p.norm_x_out = dev(x_out);
  if (warps == 0) warps = gemv_norm_warps();
  PIE_CHECK(warps == 4 || warps == 16, "add_rms_norm_gemv: 4 or 16 warps per CTA, not ", warps);
  detail::launch_gemv<1, detail::kGemvAddRmsNorm>(p, stream, warps);
}

/// \brief True when swiglu_gemv() takes an expert width (K) of k: a multiple of 8 whose
/// SwiGLU row fits the default 48 KB of shared memory of one CTA.
template <class T>
inline bool swiglu_gemv_supported(int64_t k) {
  return k % 8 == 0 && k > 0 && k * int64_t{sizeof(T)} <= 48 * 1024;
}

/// \brief Batch-1 SwiGLU fused into the linear layer that reads it (the down projection):
/// y [1, N] = (T(silu(gate))·up)·w [N, K]ᵀ (+ bias), gate_up = [gate | up] of width 2·K.
/// Bit-identical to silu_and_mul(gate_up, x) followed by gemv(y, x, w, bias): every CTA computes
/// the SwiGLU row into shared memory with silu_and_mul's arithmetic (2·K elements read from L2
/// per CTA) instead of a kernel writing it between the two weight streams. `x_out` (may be null):
/// CTA 0 also writes the row there, the bytes silu_and_mul would have left in x, for any later
/// reader.
template <class T>
void swiglu_gemv(TensorView<T> y, TensorView<T> gate_up, TensorView<T> w, const T* bias = nullptr,
                 cudaStream_t stream = nullptr, T* x_out = nullptr) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "swiglu_gemv: f16 or bf16");
  PIE_CHECK(gate_up.rank == 2 && w.rank == 2 && y.rank == 2 && gate_up.shape[0] == 1 && y.shape[0] == 1,
            "swiglu_gemv: one row: gate_up [1, 2·K], y [1, N], w [N, K]");
  const int64_t K = w.shape[1];
  PIE_CHECK(gate_up.shape[1] == 2 * K && y.shape[1] == w.shape[0], "swiglu_gemv: shapes do not chain: gate_up [1, ",
            gate_up.shape[1], "], w [", w.shape[0], ",", K, "], y [1, ", y.shape[1], "]");
  PIE_CHECK(swiglu_gemv_supported<T>(K), "swiglu_gemv: K = ", K, " must be a multiple of 8 with 2·K bytes ≤ 48 KB");
  PIE_CHECK(gemv_supported(1, K, gate_up.data, gate_up.stride[0], w.data, w.stride[0]) && gate_up.stride[1] == 1 &&
                w.stride[1] == 1 && y.stride[1] == 1,
            "swiglu_gemv: rows must be contiguous and 16-byte aligned");
  using D = device_t<T>;
  detail::GemvParams<D, D> p{dev(gate_up.data), gate_up.stride[0], dev(w.data), w.stride[0], dev(bias),
                             reinterpret_cast<D*>(y.data), y.stride[0], static_cast<int>(w.shape[0]),
                             static_cast<int>(K)};
  PIE_CHECK(x_out == nullptr || vec8_aligned(x_out), "swiglu_gemv: x_out must be 16-byte aligned");
  p.norm_r_out = dev(x_out);
  detail::launch_gemv<1, detail::kGemvSwiGLU>(p, stream);
}

}  // namespace pie::ops::cuda
