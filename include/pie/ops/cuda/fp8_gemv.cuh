#pragma once
/// \file fp8_gemv.cuh
/// \brief Batch-1 fp8 linear: y [1, N] = q(x)·(W8·scale)ᵀ (+ bias), the activation's dynamic
/// quantization fused into the GEMV's prologue. Decode at batch 1 is bound by the weight stream,
/// so this kernel exists to read the fp8 bytes at memory speed; a separate quantization kernel
/// (and its launch) would cost more than the row it quantizes. fp8_gemv_w8a16 (the engine's
/// default at batch 1 since 2026-12-07) goes further and does not quantize x at all.
///
/// Each CTA quantizes x itself (the same rule and arithmetic as fp8_quant.cuh) into shared memory
/// as half codes scaled by 2⁻⁸, then its warps stream weight rows 16 bytes per lane. A 16-byte
/// chunk lies inside one 128-column group, so its 16 products (exact in half: e4m3 × e4m3·2⁻⁸
/// has 8 significant bits and stays in half's range) are summed with HFMA2 and the partial sum is
/// scaled once by x's and W's group scales into a float accumulator: the tensor cores' order
/// (block products, then scales), at 1.5 instructions per weight byte.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/flat_walk.cuh"
#include "pie/ops/cuda/fp8_quant.cuh"
#include "pie/ops/cuda/norm.cuh"

namespace pie::ops::cuda {

namespace detail {

template <class T>
struct Fp8GemvParams {
  const T* x;
  const uint8_t* w;      // [N, K] e4m3
  const float* ws;       // weight scales
  int64_t ws_ld;         // block: row stride of the [N/128] × ld block scales; per channel: 1
  int block_n;           // 128, or 1 (per channel: ws[n])
  int per_token;         // activation scale per row (per-channel weights) instead of per group
  const T* bias;
  T* y;
  int N, K;
  // Prequantized x (fp8_gemv_rows_kernel<…, kFp8SrcPre>): row 0's codes and scales in fp8_quantize's
  // layouts, group g's scale at xsc[g · xs_ld] (per token: xsc[0]).
  const uint8_t* xq = nullptr;
  const float* xsc = nullptr;
  int xs_ld = 0;
  // Rows of x and y (fp8_gemv_w8a16_rows.cuh: 2–4 rows; row strides in elements).
  int64_t ldx = 0, ldy = 0;
  // Residual add + RMSNorm in the prologue (kSrc == kFp8SrcNorm; gemv.cuh's GemvParams alike):
  // x is the block output to add to norm_r_in; CTA 0 writes the new residual to norm_r_out.
  const T* norm_r_in = nullptr;
  T* norm_r_out = nullptr;
  const T* norm_w = nullptr;
  float norm_eps = 0.f;
  int norm_first = 0;
  int norm_threads = 0;
};

/// Byte offset of the normalised row in fp8_gemv_rows_kernel's shared memory (after the half
/// codes and the two float arrays; 16-byte aligned for Pack8 stores).
__host__ __device__ constexpr size_t fp8_rows_smem_xn(int K) {
  return (size_t(K) * 2 + 2 * size_t((K + kFp8Block - 1) / kFp8Block) * sizeof(float) + 15) / 16 * 16;
}

/// Where fp8_gemv_rows_kernel takes x from: quantized in every CTA, prequantized by the
/// producer, normalised (residual add + RMSNorm) and then quantized in every CTA, or (kFp8SrcW8A16)
/// not rounded to e4m3 at all: x's 16-bit values times a power of two into half (weight-only
/// fp8, fp8_gemv_w8a16).
inline constexpr int kFp8SrcX = 0, kFp8SrcPre = 1, kFp8SrcNorm = 2, kFp8SrcW8A16 = 3;
/// The weight-only GEMV with the residual add + RMSNorm in its prologue (every CTA normalises the
/// row, CTA 0 writes the new residual; then x is scaled as kFp8SrcW8A16's).
inline constexpr int kFp8SrcW8A16Norm = 4;
/// Whether a source leaves x unquantized (the weight-only GEMV's prologue).
__host__ __device__ constexpr bool fp8_src_w8a16(int src) { return src == kFp8SrcW8A16 || src == kFp8SrcW8A16Norm; }
/// Shared memory of fp8_gemv_rows_kernel for a source at K.
constexpr size_t fp8_rows_smem_bytes(int src, int64_t K, size_t t_bytes) {
  return src == kFp8SrcNorm || src == kFp8SrcW8A16Norm
             ? fp8_rows_smem_xn(int(K)) + size_t(K) * t_bytes
             : size_t(K) * 2 + 2 * size_t((K + kFp8Block - 1) / kFp8Block) * sizeof(float);
}
/// The weight-only GEMV's row scale: x is stored in half as x·2⁻ᵉ with the row's |x| maximum
/// landing in [4, 8), so that a weight code (≤ 448) times it stays below 3,584 and the 8 products
/// a half lane of fp8_chunk_dot sums stay below half's 65,504; e = 0 for an all-zero row. The
/// scaling is exact (a power of two) and half holds bf16's 8-bit mantissa exactly in its normal
/// range (values under 2⁻¹⁶ of the maximum lose bits; they weigh less than half's own rounding
/// of the sum). Unlike the e4m3 codes, the products are not exact in half: the sum rounds.
__device__ __forceinline__ int fp8_w8a16_exponent(float amax) { return amax > 0.0f ? ilogbf(amax) - 2 : 0; }

/// A 16-byte weight chunk's 16 e4m3 codes in half (exact), as 8 pairs in k order.
__device__ __forceinline__ void fp8_chunk_to_half(const uint4& w, __half2 (&wh)[8]) {
  const __nv_fp8x2_storage_t* w2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&w);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(w2[i], __NV_E4M3);
    wh[i] = *reinterpret_cast<const __half2*>(&r);
  }
}

/// A chunk's 16 products with x's 16 halves (xa, xb: the 16-byte halves at the chunk's k), summed
/// in half with HFMA2 in k order, returned as the pair's float sum.
__device__ __forceinline__ float half_chunk_dot(const __half2 (&wh)[8], const uint4& xa, const uint4& xb) {
  const __half2* x2a = reinterpret_cast<const __half2*>(&xa);
  const __half2* x2b = reinterpret_cast<const __half2*>(&xb);
  __half2 h = __float2half2_rn(0.0f);
#pragma unroll
  for (int i = 0; i < 8; ++i) h = __hfma2(wh[i], i < 4 ? x2a[i] : x2b[i - 4], h);
  const float2 f = __half22float2(h);
  return f.x + f.y;
}

/// The 16 products of one 16-byte weight chunk with x's 16 half codes (xa, xb: the 16-byte
/// halves at the chunk's k), summed in half with HFMA2 (exact: see the file comment), returned as
/// the pair's float sum. Both GEMV kernels call it, so their arithmetic and its order are one
/// piece of code; the caller loads x once for all the rows that share it. The same products and
/// order as fp8_chunk_to_half then half_chunk_dot (the multi-row kernel's split, which converts a
/// chunk once for several rows); kept interleaved here because the split schedules differently
/// (other SASS, sm_90a, CUDA 13) and this form is the one measured.
__device__ __forceinline__ float fp8_chunk_dot(const uint4& w, const uint4& xa, const uint4& xb) {
  const __half2* x2a = reinterpret_cast<const __half2*>(&xa);
  const __half2* x2b = reinterpret_cast<const __half2*>(&xb);
  const __nv_fp8x2_storage_t* w2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&w);
  __half2 h = __float2half2_rn(0.0f);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(w2[i], __NV_E4M3);
    h = __hfma2(*reinterpret_cast<const __half2*>(&r), i < 4 ? x2a[i] : x2b[i - 4], h);
  }
  const float2 f = __half22float2(h);
  return f.x + f.y;
}

/// The weight-only GEMVs' prologue for MR rows of x (row stride ldx; K % 4 == 0, rows 8-byte
/// aligned): every row's |x| maximum over the CTA (NW warps; `red` ≥ NW · MR floats, free), then
/// row m as x_m·2^-e_m in half at xh + m · K (fp8_w8a16_exponent); e[m] in every thread (the
/// row's scale is 2^e_m). Ends without a barrier after the stores: the caller syncs before
/// reading xh.
template <int MR, int NW, class T>
__device__ __forceinline__ void fp8_w8a16_rows_to_half(const T* x, int64_t ldx, int K, __half* xh, float* red,
                                                       int (&e)[MR]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float a[MR];
#pragma unroll
  for (int m = 0; m < MR; ++m) a[m] = 0.0f;
  for (int k = threadIdx.x * 4; k < K; k += NW * 32 * 4) {
#pragma unroll
    for (int m = 0; m < MR; ++m) {
      const uint2 u = *reinterpret_cast<const uint2*>(x + m * ldx + k);
      const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int j = 0; j < 4; ++j) a[m] = fmaxf(a[m], fabsf(to_f32(h[j])));
    }
  }
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    a[m] = warp_max(a[m]);
    if (lane == 0) red[warp * MR + m] = a[m];
  }
  __syncthreads();
  float down[MR];
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    float am = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; ++w) am = fmaxf(am, red[w * MR + m]);
    e[m] = fp8_w8a16_exponent(am);
    down[m] = ldexpf(1.0f, -e[m]);
  }
  for (int k = threadIdx.x * 4; k < K; k += NW * 32 * 4) {
#pragma unroll
    for (int m = 0; m < MR; ++m) {
      const uint2 u = *reinterpret_cast<const uint2*>(x + m * ldx + k);
      const T* h = reinterpret_cast<const T*>(&u);
      __half hv[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) hv[j] = __float2half_rn(to_f32(h[j]) * down[m]);
      *reinterpret_cast<uint2*>(xh + size_t(m) * K + k) = *reinterpret_cast<const uint2*>(hv);
    }
  }
}

inline constexpr int kFp8GemvWarps = 16;
inline constexpr int kFp8GemvUnroll = 4;

template <class T>
__global__ void __launch_bounds__(kFp8GemvWarps * 32) fp8_gemv_kernel(const __grid_constant__ Fp8GemvParams<T> p) {
  extern __shared__ __align__(16) unsigned char fp8_gemv_smem[];
  __half* xh = reinterpret_cast<__half*>(fp8_gemv_smem);                       // [K] codes · 2⁻⁸
  float* xs = reinterpret_cast<float*>(fp8_gemv_smem + size_t(p.K) * 2);      // [groups] scale · 2⁸
  __shared__ float red[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int K = p.K, groups = (K + kFp8Block - 1) / kFp8Block;
  // The weights do not depend on the predecessor: pull the first row's into L2 while it finishes.
  const int64_t row0 = int64_t(blockIdx.x) * kFp8GemvWarps + warp;
  if (row0 < p.N)
    for (int k = lane * 128; k < K; k += 32 * 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p.w + row0 * K + k));
  pdl_wait();
  // ---- prologue: quantize x (group maxima, then codes) ----
  for (int g = warp; g < groups; g += kFp8GemvWarps) {
    float a = 0.0f;
    for (int j = 0; j < 4; ++j) {
      const int k = g * kFp8Block + lane * 4 + j;
      if (k < K) a = fmaxf(a, fabsf(to_f32(p.x[k])));
    }
    a = warp_max(a);
    if (lane == 0) xs[g] = a;
  }
  __syncthreads();
  if (p.per_token) {
    float a = 0.0f;
    for (int g = lane; g < groups; g += 32) a = fmaxf(a, xs[g]);
    a = warp_max(a);
    if (warp == 0 && lane == 0) red[0] = a;
    __syncthreads();
    for (int g = threadIdx.x; g < groups; g += blockDim.x) xs[g] = red[0];
    __syncthreads();
  }
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const float sc = fp8_group_scale(xs[k / kFp8Block]);
    const __nv_fp8_e4m3 c = from_f32<__nv_fp8_e4m3>(__fdiv_rn(to_f32(p.x[k]), sc));
    xh[k] = __float2half_rn(static_cast<float>(c) * (1.0f / 256.0f));  // exact: e4m3 ⊂ half, 2⁻⁸ a power of 2
  }
  __syncthreads();
  for (int g = threadIdx.x; g < groups; g += blockDim.x) xs[g] = fp8_group_scale(xs[g]) * 256.0f;
  __syncthreads();
  // ---- main loop: one warp per output row ----
  const int64_t rows_stride = int64_t(gridDim.x) * kFp8GemvWarps;
  for (int64_t n = row0; n < p.N; n += rows_stride) {
    const uint8_t* wr = p.w + n * K;
    const float* wsr = p.block_n == 1 ? p.ws + n : p.ws + (n / kFp8Block) * p.ws_ld;
    float acc = 0.0f;
    for (int base = lane * 16; base < K; base += 32 * 16 * kFp8GemvUnroll) {
      uint4 wv[kFp8GemvUnroll];
#pragma unroll
      for (int u = 0; u < kFp8GemvUnroll; ++u) {
        const int k = base + u * 32 * 16;
        wv[u] = k < K ? load16_stream(wr + k) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kFp8GemvUnroll; ++u) {
        const int k = base + u * 32 * 16;
        if (k >= K) break;
        const uint4 xa = *reinterpret_cast<const uint4*>(xh + k);
        const uint4 xb = *reinterpret_cast<const uint4*>(xh + k + 8);
        const int g = k / kFp8Block;
        acc = fmaf(fp8_chunk_dot(wv[u], xa, xb), xs[g] * (p.block_n == 1 ? wsr[0] : wsr[g]), acc);
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      if (p.bias) acc += to_f32(p.bias[n]);
      p.y[n] = from_f32<T>(acc);
    }
  }
  pdl_launch_dependents();
}

/// A warp's C weight rows in a row-group GEMV (fp8_gemv_w8a16_rows.cuh; fp8_gemv_rows_kernel has the
/// same walk inline: on this helper its SASS changes (bench/sass_same.py, CUDA 13), so it keeps the
/// form that was measured until a GPU run can check the helper):
/// rows n0 … n0 + C − 1 of row group `group` (past N the last row is recomputed, nothing stored),
/// their code and scale pointers, and the loads of U 16-byte chunks a row from k0 (lane's chunk
/// at k0 + u · 512 + lane · 16; zeros past K).
template <int C, int U>
struct Fp8WeightRows {
  const uint8_t* row[C];
  const float* scale[C];
  int n0 = 0;
  template <class P>
  __device__ __forceinline__ void set(const P& p, int group, int warps, int warp) {
    n0 = (group * warps + warp) * C;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int n = min(n0 + c, p.N - 1);
      row[c] = p.w + int64_t(n) * p.K;
      scale[c] = p.block_n == 1 ? p.ws + n : p.ws + int64_t(n / kFp8Block) * p.ws_ld;
    }
  }
  __device__ __forceinline__ void fetch(uint4 (&dst)[U][C], int k0, int K, int lane) const {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * 32 * 16 + lane * 16;
#pragma unroll
      for (int c = 0; c < C; ++c) dst[u][c] = k < K ? load16_stream(row[c] + k) : make_uint4(0, 0, 0, 0);
    }
  }
};

/// How fp8_gemv_rows_kernel deals its rows out. kFp8GridRowGroups: a CTA per row group (NW · C
/// rows). kFp8GridPersist: the resident CTAs walk the row groups, so x is prepared once per CTA
/// whatever N is — but a CTA is the unit, so N = 6,144 (Qwen3-8B's qkv) makes 384 groups of 16
/// rows for ~264 resident CTAs: a second round with under half of them busy. kFp8GridFlat: the
/// resident CTAs' warps walk units of C rows (warp w of W takes units w, w + W, …), so the rounds
/// even out at the warp (6,144 rows of C = 1 over ~2,100 warps: 3 rounds, the last one 90% busy),
/// and a warp's two register buffers run on across its units: the next unit's first chunks are
/// requested before the current unit's last ones are consumed, where the other grids wait out a
/// load latency at every row group. kFp8GridFlatOnePerSm: the same with one CTA per SM, which
/// leaves room for the successor's CTAs to start their weight stream under this grid.
inline constexpr int kFp8GridRowGroups = 0, kFp8GridPersist = 1, kFp8GridFlat = 2, kFp8GridFlatOnePerSm = 3;
/// Whether a grid kind deals units of C rows to warps (the flat walk).
__host__ __device__ constexpr bool fp8_grid_flat(int g) { return g == kFp8GridFlat || g == kFp8GridFlatOnePerSm; }

/// The CTAs per SM fp8_gemv_rows_kernel asks the compiler to fit: the variant's MINB, and at least
/// two for the 8-warp weight-only kernels with the norm, which left alone take 132 registers
/// (sm_90a, CUDA 13: the staged norm weight's addresses; one CTA an SM) and fit 128 unspilled.
__host__ __device__ constexpr int fp8_gemv_min_blocks(int nw, int minb, int src) {
  return src == kFp8SrcW8A16Norm && nw == 8 && minb < 2 ? 2 : minb;
}

/// The batch-1 fp8 GEMV laid out as the bf16 one (gemv.cuh): a warp owns C adjacent rows, a lane
/// streams 16-byte chunks U at a time, double-buffered; the first U chunks of every row are
/// requested before `griddepcontrol.wait` and (kEarly) dependents are released right after, so
/// the weights are in flight while the predecessor finishes and x is quantized. x is quantized
/// once per CTA (a warp per group, one 8-byte load per lane per pass; both passes' loads issued
/// a batch of groups at a time), or (kFp8SrcPre) copied from the codes a producer wrote, or
/// (kFp8SrcNorm) quantized from the residual add + RMSNorm that every CTA computes first. A lane visits
/// its chunks in the legacy kernel's order with its arithmetic, so the result is bit-identical
/// to it. NW warps per CTA: small CTAs let a successor's CTAs find room on an SM while this
/// grid's last ones still run; large ones quantize x fewer times per SM. kGrid (Fp8GemvGrid) says
/// how the rows are dealt out.
template <int C, int U, int NW, int MINB, bool kEarly, int kSrc, int kGrid, class T>
__global__ void __launch_bounds__(NW * 32, fp8_gemv_min_blocks(NW, MINB, kSrc))
    fp8_gemv_rows_kernel(const __grid_constant__ Fp8GemvParams<T> p) {
  constexpr int kChunk = 32 * 16, kStep = U * kChunk, kBatch = 8;
  extern __shared__ __align__(16) unsigned char fp8_rows_smem[];
  const int K = p.K, groups = (K + kFp8Block - 1) / kFp8Block;
  __half* xh = reinterpret_cast<__half*>(fp8_rows_smem);                   // [K] codes · 2⁻⁸
  float* xs = reinterpret_cast<float*>(fp8_rows_smem + size_t(K) * 2);     // [groups] scale · 2⁸
  float* gmax = xs + groups;                                                // [groups] |x| maxima
  // [K]: the normalised x (kFp8SrcNorm, kFp8SrcW8A16Norm)
  T* xn = reinterpret_cast<T*>(fp8_rows_smem + fp8_rows_smem_xn(K));
  __shared__ float red[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // kFp8GridPersist: a grid of resident CTAs walks the row groups (NW · C rows each), so x is
  // quantized once per CTA whatever N is; kFp8GridRowGroups: one CTA per row group. The flat grids
  // start at unit (blockIdx.x · NW + warp), i.e. the same rows (see the walk after the prologue).
  const int row_groups = (p.N + NW * C - 1) / (NW * C);
  int rg = blockIdx.x, n0 = 0;
  const uint8_t* wrow[C];
  const float* wsr[C];
  // The C rows from u · C: their scales, and (with_codes) their codes. The flat walk's fetches
  // point at the codes themselves (fetch_at), so its units need the scales only.
  auto set_unit = [&](int u, bool with_codes) {
    n0 = u * C;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int n = min(n0 + c, p.N - 1);  // past N: recompute the last row, store nothing
      if (with_codes) wrow[c] = p.w + int64_t(n) * K;
      wsr[c] = p.block_n == 1 ? p.ws + n : p.ws + int64_t(n / kFp8Block) * p.ws_ld;
    }
  };
  auto set_rows = [&] { set_unit(rg * NW + warp, true); };  // this warp's rows of row group rg
  set_rows();
  uint4 wa[U][C], wb[U][C];
  auto fetch = [&](uint4 (&dst)[U][C], int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kChunk + lane * 16;
#pragma unroll
      for (int c = 0; c < C; ++c) dst[u][c] = k < K ? load16_stream(wrow[c] + k) : make_uint4(0, 0, 0, 0);
    }
  };
  fetch(wa, 0);  // weights only: may run before the predecessor finishes
  // The flat walk (fp8_grid_flat, flat_walk.cuh): wa holds this warp's first unit's first step,
  // and wb the position after it, requested before the wait too, so that twice the bytes are in
  // flight while the predecessor ends and x is prepared.
  [[maybe_unused]] FlatWalk walk((p.N + C - 1) / C, (K + kStep - 1) / kStep, int(gridDim.x) * NW, rg * NW + warp);
  auto fetch_at = [&](uint4 (&dst)[U][C], int uu, int ss) {  // wrow is this fetch's scratch
#pragma unroll
    for (int c = 0; c < C; ++c) wrow[c] = p.w + int64_t(min(uu * C + c, p.N - 1)) * K;
    fetch(dst, ss * kStep);
  };
  if constexpr (fp8_grid_flat(kGrid)) {
    if (walk.bu < walk.units) fetch_at(wb, walk.bu, walk.bs);
  }
  // The weight-only norm's weight does not depend on the predecessor either: into shared memory
  // before the wait (the halves' bytes, written only after the norm), so the norm's second pass
  // waits for no load.
  if constexpr (kSrc == kFp8SrcW8A16Norm) stage_norm_weight(p.norm_w, reinterpret_cast<T*>(xh), K, p.norm_threads);
  if constexpr (kEarly) pdl_launch_dependents();
  pdl_wait();
  if constexpr (kSrc == kFp8SrcW8A16Norm) {
    // norm.cuh's arithmetic (as kFp8SrcNorm), its weight read from the halves' bytes; then
    // fp8_w8a16_rows_to_half's with each thread on its own elements: the row's largest |value|
    // (exact in any order) from the norm's registers, one block reduction (whose barriers also end
    // every read of the staged weight), the halves from the thread's own normalised values. The
    // same bits as the norm into shared memory followed by fp8_w8a16_rows_to_half, without the
    // latter's two passes over the whole row.
    float a = 0.0f;
    rms_norm_row_emit<true>(p.x, p.norm_r_in, blockIdx.x == 0 ? p.norm_r_out : nullptr,
                            reinterpret_cast<const T*>(xh), /*w_staged=*/true, K, p.norm_eps, p.norm_first != 0, red,
                            p.norm_threads, [&](int i, const float (&o)[8]) {
                              store8(xn + i * 8, o);
#pragma unroll
                              for (int j = 0; j < 8; ++j) a = fmaxf(a, fabsf(to_f32(from_f32<T>(o[j]))));
                            });
    const int e = fp8_w8a16_exponent(block_max(a, red));
    const float down = ldexpf(1.0f, -e);
#pragma unroll
    for (int k = 0; k < kNormVecsPerThread; ++k)
      if (norm_row_owns(k, K, p.norm_threads)) {
        const int64_t i = (int64_t(threadIdx.x) + k * p.norm_threads) * 8;
        float f[8];
        load8(xn + i, f);
        __align__(16) __half hv[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) hv[j] = __float2half_rn(f[j] * down);
        *reinterpret_cast<uint4*>(xh + i) = *reinterpret_cast<const uint4*>(hv);
      }
    for (int g = threadIdx.x; g < groups; g += NW * 32) xs[g] = ldexpf(1.0f, e);
  } else if constexpr (kSrc == kFp8SrcW8A16) {  // one max reduction and a scaling pass: no division, no e4m3
    int e[1];
    fp8_w8a16_rows_to_half<1, NW>(p.x, 0, K, xh, red, e);
    for (int g = threadIdx.x; g < groups; g += NW * 32) xs[g] = ldexpf(1.0f, e[0]);
  } else if constexpr (kSrc == kFp8SrcPre) {
    const __half2 inv256 = __float2half2_rn(1.0f / 256.0f);
    for (int k = threadIdx.x * 16; k < K; k += NW * 32 * 16) {
      const uint4 cv = *reinterpret_cast<const uint4*>(p.xq + k);
      const __nv_fp8x2_storage_t* c2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&cv);
      uint4 h[2];
      __half2* h2 = reinterpret_cast<__half2*>(h);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(c2[i], __NV_E4M3);
        h2[i] = __hmul2(*reinterpret_cast<const __half2*>(&r), inv256);  // exact: a power of 2, no underflow
      }
      *reinterpret_cast<uint4*>(xh + k) = h[0];
      *reinterpret_cast<uint4*>(xh + k + 8) = h[1];
    }
    for (int g = threadIdx.x; g < groups; g += NW * 32)
      xs[g] = (p.per_token ? p.xsc[0] : p.xsc[int64_t(g) * p.xs_ld]) * 256.0f;
  } else {
    const T* src = p.x;
    if constexpr (kSrc == kFp8SrcNorm) {  // norm.cuh's arithmetic and reduction order
      rms_norm_row_to<true>(p.x, p.norm_r_in, blockIdx.x == 0 ? p.norm_r_out : nullptr, p.norm_w, xn, K, p.norm_eps,
                            p.norm_first != 0, red, p.norm_threads);
      __syncthreads();
      src = xn;
    }
    auto load4 = [&](int g, float (&v)[4]) {
      const int k = g * kFp8Block + lane * 4;  // K % 16 == 0: all 4 in range or none
      uint2 u = make_uint2(0, 0);
      if (g < groups && k < K) u = *reinterpret_cast<const uint2*>(src + k);
      const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = to_f32(h[j]);
    };
    for (int g0 = warp; g0 < groups; g0 += NW * kBatch) {
      float v[kBatch][4];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) load4(g0 + i * NW, v[i]);
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        float a = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) a = fmaxf(a, fabsf(v[i][j]));
        a = warp_max(a);
        if (lane == 0 && g0 + i * NW < groups) gmax[g0 + i * NW] = a;
      }
    }
    __syncthreads();
    float tok = 0.0f;
    if (p.per_token)
      for (int g = 0; g < groups; ++g) tok = fmaxf(tok, gmax[g]);
    for (int g0 = warp; g0 < groups; g0 += NW * kBatch) {
      float v[kBatch][4];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) load4(g0 + i * NW, v[i]);
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int g = g0 + i * NW, k = g * kFp8Block + lane * 4;
        if (g >= groups) break;
        const float sc = fp8_group_scale(p.per_token ? tok : gmax[g]);
        if (k < K) {
          __half hv[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const __nv_fp8_e4m3 c = from_f32<__nv_fp8_e4m3>(__fdiv_rn(v[i][j], sc));
            hv[j] = __float2half_rn(static_cast<float>(c) * (1.0f / 256.0f));
          }
          *reinterpret_cast<uint2*>(xh + k) = *reinterpret_cast<const uint2*>(hv);
        }
        if (lane == 0) xs[g] = sc * 256.0f;
      }
    }
  }
  __syncthreads();

  float acc[C];
  auto consume = [&](const uint4 (&src)[U][C], int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kChunk + lane * 16;
      if (k >= K) break;  // chunks past K are the tail of the last step only
      const uint4 xa = *reinterpret_cast<const uint4*>(xh + k);
      const uint4 xb = *reinterpret_cast<const uint4*>(xh + k + 8);
      const int g = k / kFp8Block;
      const float xg = xs[g];
#pragma unroll
      for (int c = 0; c < C; ++c)
        acc[c] = fmaf(fp8_chunk_dot(src[u][c], xa, xb), xg * (p.block_n == 1 ? __ldg(wsr[c]) : __ldg(wsr[c] + g)),
                      acc[c]);
    }
  };
  // y for the C rows from n0: the lanes' sums reduced over the warp, lane c storing row c.
  auto store_rows = [&] {
#pragma unroll
    for (int c = 0; c < C; ++c) acc[c] = warp_sum(acc[c]);
#pragma unroll
    for (int c = 0; c < C; ++c) {
      if (lane != c || n0 + c >= p.N) continue;
      float v = acc[c];
      if (p.bias) v += to_f32(p.bias[n0 + c]);
      p.y[n0 + c] = from_f32<T>(v);
    }
  };
  if constexpr (fp8_grid_flat(kGrid)) {
    walk.run([&](int s) { consume(wa, s * kStep); }, [&](int s) { consume(wb, s * kStep); },
             [&](int u, int s) { fetch_at(wa, u, s); }, [&](int u, int s) { fetch_at(wb, u, s); }, store_rows,
             [&](int u) {  // the rows and scales of the unit consumed next
               set_unit(u, false);
#pragma unroll
               for (int c = 0; c < C; ++c) acc[c] = 0.0f;
             });
  } else {
    while (n0 < p.N) {  // wa holds the row group's first U chunks
#pragma unroll
      for (int c = 0; c < C; ++c) acc[c] = 0.0f;
      for (int k0 = 0; k0 < K; k0 += 2 * kStep) {
        if (k0 + kStep < K) fetch(wb, k0 + kStep);
        consume(wa, k0);
        if (k0 + kStep >= K) break;
        if (k0 + 2 * kStep < K) fetch(wa, k0 + 2 * kStep);
        consume(wb, k0 + kStep);
      }
      store_rows();
      if (kGrid != kFp8GridPersist) break;
      rg += gridDim.x;
      if (rg >= row_groups) break;
      set_rows();
      fetch(wa, 0);
    }
  }
  if constexpr (!kEarly) pdl_launch_dependents();
}

template <int C, int U, int NW, int MINB, bool kEarly, int kSrc, int kGrid = kFp8GridRowGroups, class T>
void launch_fp8_gemv_rows(const Fp8GemvParams<T>& p, cudaStream_t stream) {
  auto kern = fp8_gemv_rows_kernel<C, U, NW, MINB, kEarly, kSrc, kGrid, T>;
  static const bool attr = [&] {
    PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(fp8_rows_smem_bytes(kSrc, 32768, sizeof(T)))));
    return true;
  }();
  (void)attr;
  const int groups = (p.K + kFp8Block - 1) / kFp8Block;
  const size_t smem = fp8_rows_smem_bytes(kSrc, p.K, sizeof(T));
  const int64_t rows_per_cta = int64_t(NW) * C;
  int64_t ctas = (p.N + rows_per_cta - 1) / rows_per_cta;
  if constexpr (kGrid == kFp8GridPersist || kGrid == kFp8GridFlat) {
    // the CTAs resident at once (occupancy at this K's shared memory)
    int per_sm = 0;
    PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, NW * 32, smem));
    ctas = std::min<int64_t>(ctas, int64_t(std::max(per_sm, 1)) * num_sms());
  } else if constexpr (kGrid == kFp8GridFlatOnePerSm) {
    ctas = std::min<int64_t>(ctas, num_sms());
  }
  launch_pdl(kern, dim3(static_cast<unsigned>(ctas)), dim3(NW * 32), smem, stream, p);
}

/// Warps per CTA of variant v ≥ 1 (as launch_fp8_gemv_variant's table).
inline int fp8_gemv_variant_warps(int v) {
  return v == 7 || v == 10 || v == 13 || v == 14 || v == 16 ? 8 : v == 8 || v == 9 || v == 15 ? 16 : 4;
}

/// Variant v ≥ 1 of the table below, x from kSrc.
template <int kSrc, class T>
void launch_fp8_gemv_variant(int v, const Fp8GemvParams<T>& p, cudaStream_t stream) {
  switch (v) {
    case 1: return launch_fp8_gemv_rows<2, 4, 4, 1, true, kSrc>(p, stream);
    case 2: return launch_fp8_gemv_rows<2, 4, 4, 1, false, kSrc>(p, stream);
    case 3: return launch_fp8_gemv_rows<1, 8, 4, 1, true, kSrc>(p, stream);
    case 4: return launch_fp8_gemv_rows<4, 2, 4, 1, true, kSrc>(p, stream);
    case 5: return launch_fp8_gemv_rows<2, 2, 4, 8, true, kSrc>(p, stream);
    case 6: return launch_fp8_gemv_rows<1, 4, 4, 8, true, kSrc>(p, stream);
    case 7: return launch_fp8_gemv_rows<2, 4, 8, 1, true, kSrc>(p, stream);
    case 8: return launch_fp8_gemv_rows<2, 4, 16, 1, true, kSrc>(p, stream);
    case 9: return launch_fp8_gemv_rows<1, 8, 16, 1, true, kSrc>(p, stream);
    case 10: return launch_fp8_gemv_rows<2, 4, 8, 1, true, kSrc, kFp8GridPersist>(p, stream);
    case 11: return launch_fp8_gemv_rows<4, 2, 4, 1, true, kSrc, kFp8GridPersist>(p, stream);
    case 12: return launch_fp8_gemv_rows<2, 4, 4, 1, true, kSrc, kFp8GridPersist>(p, stream);
    case 13: return launch_fp8_gemv_rows<1, 8, 8, 1, true, kSrc, kFp8GridFlat>(p, stream);
    case 14: return launch_fp8_gemv_rows<2, 4, 8, 1, true, kSrc, kFp8GridFlat>(p, stream);
    case 15: return launch_fp8_gemv_rows<1, 8, 16, 1, true, kSrc, kFp8GridFlatOnePerSm>(p, stream);
    case 16: return launch_fp8_gemv_rows<1, 4, 8, 1, true, kSrc, kFp8GridFlat>(p, stream);
    default: PIE_CHECK(false, "fp8_gemv: no variant ", v);
  }
}

}  // namespace detail

/// Whether fp8_gemv() takes a K: 16-byte weight chunks (K % 16 == 0) and its row in shared memory.
inline bool fp8_gemv_supported(int64_t k) { return k > 0 && k % 16 == 0 && k <= 32768; }

/// Kernel variants of the batch-1 fp8 GEMV (bench/cuda/bench_fp8_gemv.cu sweeps them): 0 is the
/// legacy kernel (16 warps per CTA, a row per warp, x quantized per CTA, dependents released at
/// the end); 1… are fp8_gemv_rows_kernel<C rows per warp, U chunks in flight, NW warps per CTA
/// (4 unless named), min CTAs per SM (lean: 8), early release unless named>; "persist" ones
/// (10–12) walk the row groups with the resident CTAs only; "flat" ones (13–16) deal units of C
/// rows to the resident CTAs' warps (kFp8GridFlat), "flat1" with one CTA per SM. Fp8Gemm's
/// default is 14 (kFp8GemvDefaultVariant); the fp8_gemv() entry keeps 0 unless asked.
inline constexpr int kFp8GemvVariants = 17;
inline const char* fp8_gemv_variant_name(int v) {
  static const char* names[kFp8GemvVariants] = {
      "legacy",    "c2u4",      "c2u4-late-release", "c1u8",          "c4u2",          "c2u2-lean",         "c1u4-lean",
      "c2u4-nw8",  "c2u4-nw16", "c1u8-nw16",         "c2u4-nw8-persist", "c4u2-persist", "c2u4-persist",
      "c1u8-nw8-flat", "c2u4-nw8-flat", "c1u8-nw16-flat1", "c1u4-nw8-flat"};
  return v >= 0 && v < kFp8GemvVariants ? names[v] : "?";
}

namespace detail {
/// The launch parameters every entry below starts from: x (device row, or null), w, bias, y.
template <class T>
Fp8GemvParams<device_t<T>> fp8_gemv_params(const T* x, const Fp8Weight& w, const T* bias, T* y) {
  return {dev(x), reinterpret_cast<const uint8_t*>(w.q.data), w.scale.data, w.scale_ld, w.block_n,
          w.per_channel() ? 1 : 0, dev(bias), dev(y), static_cast<int>(w.rows()), static_cast<int>(w.cols())};
}
/// The residual add + RMSNorm prologue's fields of p (fp8_add_rms_norm_gemv and its rows form).
template <class T>
void set_fp8_gemv_norm(Fp8GemvParams<device_t<T>>& p, const T* r_in, T* r_out, const T* norm_w, float eps, bool first,
                       int64_t K) {
  p.norm_r_in = dev(r_in);
  p.norm_r_out = dev(r_out);
  p.norm_w = dev(norm_w);
  p.norm_eps = eps;
  p.norm_first = first ? 1 : 0;
  p.norm_threads = norm_threads(static_cast<int>(K));
}
}  // namespace detail

/// y [1, N] = q(x)·dq(w)ᵀ (+ bias) (see the file comment). x, y device rows of T; w on the device.
/// `variant`: see kFp8GemvVariants (all bit-identical).
template <class T>
void fp8_gemv(TensorView<T> y, TensorView<T> x, const Fp8Weight& w, const T* bias, cudaStream_t stream,
              int variant = 0) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "fp8_gemv: f16 or bf16 activations");
  const int64_t N = w.rows(), K = w.cols();
  PIE_CHECK(x.shape[0] == 1 && y.shape[0] == 1 && x.shape[1] == K && y.shape[1] == N,
            "fp8_gemv: x [1, K], w [N, K], y [1, N] do not chain");
  PIE_CHECK(fp8_gemv_supported(K), "fp8_gemv: K = ", K, " must be a multiple of 16, at most 32768");
  PIE_CHECK(w.per_channel() || (w.block_n == kFp8Block && w.block_k == kFp8Block), "fp8_gemv: unknown weight blocks");
  using D = device_t<T>;
  auto p = detail::fp8_gemv_params<T>(x.data, w, bias, y.data);
  PIE_CHECK(variant >= 0 && variant < kFp8GemvVariants, "fp8_gemv: no variant ", variant);
  if (variant > 0) {
    PIE_CHECK(reinterpret_cast<uintptr_t>(x.data) % 8 == 0, "fp8_gemv: x must be 8-byte aligned");
    detail::launch_fp8_gemv_variant<detail::kFp8SrcX>(variant, p, stream);
    return;
  }
  const int groups = static_cast<int>((K + kFp8Block - 1) / kFp8Block);
  const size_t smem = size_t(K) * 2 + size_t(groups) * sizeof(float);
  static const bool attr = [] {
    PIE_CUDA_CHECK(cudaFuncSetAttribute(detail::fp8_gemv_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        32768 * 2 + kFp8MaxGroups * 4));
    return true;
  }();
  (void)attr;
  const int64_t ctas = std::min<int64_t>((N + detail::kFp8GemvWarps - 1) / detail::kFp8GemvWarps, 2 * num_sms());
  launch_pdl(detail::fp8_gemv_kernel<D>, dim3(static_cast<unsigned>(ctas)), dim3(detail::kFp8GemvWarps * 32), smem,
             stream, p);
}

/// y [1, N] = a·dq(w)ᵀ (+ bias) for an activation row already quantized by its producer into
/// fp8_quantize's layouts: codes xq [K] (16-byte aligned), scales xs (per group g at
/// xs[g · xs_ld]; per-channel weights: per token, xs[0]). `variant` ≥ 1 (kFp8GemvVariants).
/// Bit-identical to fp8_gemv() on the row the codes came from.
template <class T>
void fp8_gemv_prequantized(TensorView<T> y, const fp8_e4m3* xq, const float* xs, int64_t xs_ld, const Fp8Weight& w,
                           const T* bias, cudaStream_t stream, int variant) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "fp8_gemv: f16 or bf16 activations");
  const int64_t N = w.rows(), K = w.cols();
  PIE_CHECK(y.shape[0] == 1 && y.shape[1] == N, "fp8_gemv_prequantized: y must be [1, ", N, "]");
  PIE_CHECK(fp8_gemv_supported(K), "fp8_gemv_prequantized: K = ", K, " must be a multiple of 16, at most 32768");
  PIE_CHECK(w.per_channel() || (w.block_n == kFp8Block && w.block_k == kFp8Block),
            "fp8_gemv_prequantized: unknown weight blocks");
  PIE_CHECK(variant >= 1 && variant < kFp8GemvVariants, "fp8_gemv_prequantized: no variant ", variant);
  PIE_CHECK(reinterpret_cast<uintptr_t>(xq) % 16 == 0, "fp8_gemv_prequantized: codes must be 16-byte aligned");
  auto p = detail::fp8_gemv_params<T>(nullptr, w, bias, y.data);
  p.xq = reinterpret_cast<const uint8_t*>(xq);
  p.xsc = xs;
  p.xs_ld = static_cast<int>(xs_ld);
  detail::launch_fp8_gemv_variant<detail::kFp8SrcPre>(variant, p, stream);
}

/// \brief Weight-only batch-1 fp8 linear (W8A16): y [1, N] = x·dq(w)ᵀ (+ bias) with x not rounded
/// to e4m3: every CTA takes the row's |x| maximum once and stores x·2⁻ᵉ in half (exact; the
/// maximum lands in [4, 8), fp8_w8a16_exponent), then runs fp8_gemv()'s loop (HFMA2 over each
/// 16-byte chunk, the sum scaled by 2ᵉ and the weight scale into a float accumulator). Against
/// fp8_gemv() the prologue drops the per-group maxima and the per-element division and e4m3
/// rounding; the products are no longer exact in half (x has 8 significant bits, not 4), so the
/// chunk sums round (~1e-3 relative) — far less than x's e4m3 rounding (2⁻⁴). Not fp8_gemv()'s
/// bits: the CPU reference is ops::cpu::fp8_linear_w8a16. (A first form widened x to float and
/// summed in float: 13% slower in the engine on an H100, bound by the conversions, 2026-12-07.)
/// `variant` ≥ 1 (kFp8GemvVariants: the same row layouts).
template <class T>
void fp8_gemv_w8a16(TensorView<T> y, TensorView<T> x, const Fp8Weight& w, const T* bias, cudaStream_t stream,
                    int variant) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "fp8_gemv: f16 or bf16 activations");
  const int64_t N = w.rows(), K = w.cols();
  PIE_CHECK(x.shape[0] == 1 && y.shape[0] == 1 && x.shape[1] == K && y.shape[1] == N,
            "fp8_gemv_w8a16: x [1, K], w [N, K], y [1, N] do not chain");
  PIE_CHECK(fp8_gemv_supported(K), "fp8_gemv_w8a16: K = ", K, " must be a multiple of 16, at most 32768");
  PIE_CHECK(w.per_channel() || (w.block_n == kFp8Block && w.block_k == kFp8Block),
            "fp8_gemv_w8a16: unknown weight blocks");
  PIE_CHECK(variant >= 1 && variant < kFp8GemvVariants, "fp8_gemv_w8a16: no variant ", variant);
  PIE_CHECK(reinterpret_cast<uintptr_t>(x.data) % 8 == 0, "fp8_gemv_w8a16: x must be 8-byte aligned");
  auto p = detail::fp8_gemv_params<T>(x.data, w, bias, y.data);
  detail::launch_fp8_gemv_variant<detail::kFp8SrcW8A16>(variant, p, stream);
}

/// Whether fp8_add_rms_norm_gemv() takes a hidden size of k with variant v: the norm's thread
/// layout must fit one CTA of the variant.
inline bool fp8_add_rms_norm_gemv_supported(int64_t k, int variant) {
  return variant >= 1 && variant < kFp8GemvVariants && fp8_gemv_supported(k) && k % 8 == 0 &&
         detail::norm_threads(static_cast<int>(k)) <= detail::fp8_gemv_variant_warps(variant) * 32;
}

/// \brief Batch-1 residual add + RMSNorm fused into the fp8 GEMV that reads it (gemv.cuh's
/// add_rms_norm_gemv, on fp8 weights): r_out = T(x + r_in) (x when `first`), written by CTA 0;
/// y [1, N] = q(T(rmsnorm(r_out))·norm_w)·dq(w)ᵀ (+ bias). x is left as it was and r_in must not
/// be r_out (every CTA reads r_in). Bit-identical to add_rms_norm then fp8_gemv.
/// `w8a16`: the weight-only GEMV (fp8_gemv_w8a16) on the normalised row instead, bit-identical to
/// add_rms_norm then fp8_gemv_w8a16.
template <class T>
void fp8_add_rms_norm_gemv(TensorView<T> y, TensorView<T> x, const T* r_in, T* r_out, const T* norm_w, float eps,
                           bool first, const Fp8Weight& w, const T* bias, cudaStream_t stream, int variant,
                           bool w8a16 = false) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "fp8_gemv: f16 or bf16 activations");
  const int64_t N = w.rows(), K = w.cols();
  PIE_CHECK(x.shape[0] == 1 && y.shape[0] == 1 && x.shape[1] == K && y.shape[1] == N,
            "fp8_add_rms_norm_gemv: x [1, K], w [N, K], y [1, N] do not chain");
  PIE_CHECK(fp8_add_rms_norm_gemv_supported(K, variant), "fp8_add_rms_norm_gemv: hidden size ", K,
            " with variant ", variant, " (the norm's threads must fit one CTA)");
  PIE_CHECK(w.per_channel() || (w.block_n == kFp8Block && w.block_k == kFp8Block),
            "fp8_add_rms_norm_gemv: unknown weight blocks");
  PIE_CHECK(r_out != nullptr && norm_w != nullptr && (first || r_in != nullptr) && r_in != r_out,
            "fp8_add_rms_norm_gemv: needs r_out, norm_w, r_in (unless first), and r_in != r_out");
  PIE_CHECK(vec8_aligned(x.data) && vec8_aligned(r_out) && vec8_aligned(norm_w) && (r_in == nullptr || vec8_aligned(r_in)),
            "fp8_add_rms_norm_gemv: x, residual and norm weight must be 16-byte aligned");
  auto p = detail::fp8_gemv_params<T>(x.data, w, bias, y.data);
  detail::set_fp8_gemv_norm(p, r_in, r_out, norm_w, eps, first, K);
  if (w8a16)
    detail::launch_fp8_gemv_variant<detail::kFp8SrcW8A16Norm>(variant, p, stream);
  else
    detail::launch_fp8_gemv_variant<detail::kFp8SrcNorm>(variant, p, stream);
}

}  // namespace pie::ops::cuda
