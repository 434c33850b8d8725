#pragma once
/// \file fp8_gemv_w8a16_rows.cuh
/// \brief The weight-only fp8 GEMV for 2–4 rows: y [M, N] = x·dq(W)ᵀ (+ bias) with each row of x
/// scaled by its own power of two into half, as fp8_gemv_w8a16 does for one row.
///
/// Why: above one row Fp8Gemm runs cuBLASLt's fp8 matmul, whose block-scaled algorithm has a
/// floor of ~22–25 µs a product at decode sizes (docs/architecture.md), while the weights of
/// Qwen3-8B's o_proj stream in ~6 µs. At 2–4 rows the product is still the weights' bytes: each
/// 16-byte weight chunk is converted to half once and multiplied into every row (8 conversions
/// and 8·M HFMA2 a chunk), so the conversions that bound the one-row kernel are shared.
///
/// Layout as fp8_gemv_rows_kernel's variant 10 (c2u4-nw8-persist): 8 warps, 2 weight rows a
/// warp, a resident grid walking the row groups, the first chunks loaded before
/// griddepcontrol.wait. Each output row's arithmetic, chunk order and reduction are the one-row
/// kernel's, so row m of the result is bit-identical to fp8_gemv_w8a16 on row m alone.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "pie/core/env_switch.hpp"
#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/flat_walk.cuh"
#include "pie/ops/cuda/fp8_gemv.cuh"

namespace pie::ops::cuda {

namespace detail {

inline constexpr int kFp8RowsWarps = 8;

/// Which walks of the multi-row GEMV's weight rows take the flat walk (the one-row default's:
/// units of two rows dealt to warps, both buffers requested before the wait; flat_walk.cuh)
/// instead of the row groups of a CTA. The same bits either way. Modes of PIE_FP8_ROWS_FLAT (read
/// once; tests and the bench set it through the reference): 0 never, 1 always, 2 where the weight
/// is wider than deep (N > K: Qwen3-8B's qkv and gate_up; the rows bench, one H100, 2026-12-07,
/// had the flat walk ahead there and behind on o_proj and down), 3 at 3–4 rows. Unset:
/// kFp8RowsFlatDefault.
inline constexpr int kFp8RowsFlatDefault = 3;  // one H100, 2026-12-07, Qwen3-8B per-channel fp8
                                               // decode step: batch 4 5.07 → 4.97 ms, batch 2
                                               // 4.17 → 4.24 (so batch 2 keeps the row groups)
inline int& fp8_rows_flat_flag() {
  static int mode = [] {
    const int n = env_count("PIE_FP8_ROWS_FLAT", std::getenv("PIE_FP8_ROWS_FLAT"), kFp8RowsFlatDefault);
    PIE_CHECK(n <= 3, "PIE_FP8_ROWS_FLAT must be a mode from 0 to 3, got ", n);
    return n;
  }();
  return mode;
}
/// Whether fp8_rows_flat_flag()'s mode puts an [M, K] × [N, K]ᵀ product on the flat walk.
inline bool fp8_rows_flat(int mode, int64_t M, int64_t N, int64_t K) {
  switch (mode) {
    case 0: return false;
    case 2: return N > K;
    case 3: return M >= 3;
    default: return true;
  }
}

/// MR rows of x (2–4), U 16-byte chunks in flight per weight row (see the file comment); kFlat:
/// the flat walk (fp8_rows_flat_flag). kNorm: x is the block output, and each row is first
/// r_m = T(x_m + r_in,m) (x_m when norm_first; CTA 0 stores it to norm_r_out) and T(rmsnorm(r_m))·
/// norm_w (norm.cuh's arithmetic and reduction order, rows in parallel by groups of the CTA's
/// threads, into shared memory after the halves), the rows' residuals and norm_r_in / norm_r_out
/// rows K elements apart.
template <int MR, int U, bool kFlat, bool kNorm, class T>
__global__ void __launch_bounds__(kFp8RowsWarps * 32, kNorm ? 2 : 1)  // kNorm: 2 rows flat took 155 alone
    fp8_gemv_w8a16_rows_kernel(const __grid_constant__ Fp8GemvParams<T> p) {
  constexpr int C = 2, NW = kFp8RowsWarps, kChunk = 32 * 16, kStep = U * kChunk;
  static_assert(NW * MR <= 32, "the row maxima share one 32-float array");
  extern __shared__ __align__(16) unsigned char fp8_wrows_smem[];
  __half* xh = reinterpret_cast<__half*>(fp8_wrows_smem);  // [MR][K]: row m is x_m·2^-e_m
  __shared__ float red[32];
  // kNorm: the norm's weight does not depend on the predecessor: into the halves' bytes (written
  // only after every row's norm) before the wait, so the norms' second passes wait for no load.
  if constexpr (kNorm) stage_norm_weight(p.norm_w, reinterpret_cast<T*>(xh), p.K, p.norm_threads);
  const int K = p.K;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row_groups = (p.N + NW * C - 1) / (NW * C);
  int rg = blockIdx.x;
  Fp8WeightRows<C, U> wr;  // fp8_gemv.cuh
  wr.set(p, rg, NW, warp);
  uint4 wa[U][C], wb[U][C];
  wr.fetch(wa, 0, K, lane);  // weights only: may run before the predecessor finishes
  // The flat walk: units of C rows, this warp's first unit is its first row group's rows.
  [[maybe_unused]] FlatWalk walk((p.N + C - 1) / C, (K + kStep - 1) / kStep, int(gridDim.x) * NW, rg * NW + warp);
  [[maybe_unused]] auto fetch_at = [&](uint4 (&dst)[U][C], int u, int s) {
    Fp8WeightRows<C, U> at;
    at.set(p, 0, 1, u);  // rows u·C … (set's row group 0 of one warp, that warp being u)
    at.fetch(dst, s * kStep, K, lane);
  };
  if constexpr (kFlat) {
    if (walk.bu < walk.units) fetch_at(wb, walk.bu, walk.bs);
  }
  pdl_launch_dependents();
  pdl_wait();
  // ---- prologue: (kNorm: the rows' residual add + RMSNorm into xn,) every row's |x| maximum,
  // then x_m·2^-e_m in half (fp8_gemv.cuh) ----
  const T* src = p.x;
  int64_t ld_src = p.ldx;
  if constexpr (kNorm) {
    // The rows in parallel: the CTA's threads form groups of norm_threads (2 at K = 4,096, 4 at
    // 2,048), group g normalising rows g, g + G, … with its own reduction slots and named barrier
    // (NormGroupSum: the standalone kernel's reduction order, so its bits).
    __shared__ float group_red[4 * 32];
    T* xn = reinterpret_cast<T*>(fp8_wrows_smem + size_t(MR) * K * 2);  // [MR][K] normalised rows
    const int nt = p.norm_threads, groups = min(MR, NW * 32 / nt), g = int(threadIdx.x) / nt;
    if (g < groups) {
#pragma unroll 1
      for (int m = g; m < MR; m += groups)
        rms_norm_row_emit<true>(p.x + m * p.ldx, p.norm_first ? nullptr : p.norm_r_in + int64_t(m) * K,
                                blockIdx.x == 0 ? p.norm_r_out + int64_t(m) * K : nullptr,
                                reinterpret_cast<const T*>(xh), /*w_staged=*/true, K, p.norm_eps, p.norm_first != 0,
                                int(threadIdx.x) - g * nt, nt, NormGroupSum{group_red + g * 32, g, nt},
                                [&](int i, const float (&o)[8]) { store8(xn + int64_t(m) * K + i * 8, o); });
    }
    __syncthreads();  // the rows are read across threads below, and red is reused
    src = xn;
    ld_src = K;
  }
  int e[MR];
  fp8_w8a16_rows_to_half<MR, NW>(src, ld_src, K, xh, red, e);
  float xsc[MR];  // 2^e_m
#pragma unroll
  for (int m = 0; m < MR; ++m) xsc[m] = ldexpf(1.0f, e[m]);
  __syncthreads();

  float acc[MR][C];
  auto consume = [&](const uint4 (&src)[U][C], int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kChunk + lane * 16;
      if (k >= K) break;  // chunks past K are the tail of the last step only
      const int g = k / kFp8Block;
      uint4 xa[MR], xb[MR];
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        xa[m] = *reinterpret_cast<const uint4*>(xh + size_t(m) * K + k);
        xb[m] = *reinterpret_cast<const uint4*>(xh + size_t(m) * K + k + 8);
      }
#pragma unroll
      for (int c = 0; c < C; ++c) {
        __half2 wh[8];  // the chunk's codes in half once, then every row (fp8_chunk_dot's pieces)
        fp8_chunk_to_half(src[u][c], wh);
        const float wsc = p.block_n == 1 ? __ldg(wr.scale[c]) : __ldg(wr.scale[c] + g);
#pragma unroll
        for (int m = 0; m < MR; ++m) acc[m][c] = fmaf(half_chunk_dot(wh, xa[m], xb[m]), xsc[m] * wsc, acc[m][c]);
      }
    }
  };
  auto store_rows = [&] {  // y for the C weight rows from wr.n0, every row of x
#pragma unroll
    for (int m = 0; m < MR; ++m)
#pragma unroll
      for (int c = 0; c < C; ++c) acc[m][c] = warp_sum(acc[m][c]);
#pragma unroll
    for (int m = 0; m < MR; ++m)
#pragma unroll
      for (int c = 0; c < C; ++c) {
        if (lane != m * C + c || wr.n0 + c >= p.N) continue;
        float v = acc[m][c];
        if (p.bias) v += to_f32(p.bias[wr.n0 + c]);
        p.y[m * p.ldy + wr.n0 + c] = from_f32<T>(v);
      }
  };
  auto zero = [&] {
#pragma unroll
    for (int m = 0; m < MR; ++m)
#pragma unroll
      for (int c = 0; c < C; ++c) acc[m][c] = 0.0f;
  };
  if constexpr (kFlat) {
    walk.run([&](int s) { consume(wa, s * kStep); }, [&](int s) { consume(wb, s * kStep); },
             [&](int u, int s) { fetch_at(wa, u, s); }, [&](int u, int s) { fetch_at(wb, u, s); }, store_rows,
             [&](int u) {  // the rows and scales of the unit consumed next
               wr.set(p, 0, 1, u);
               zero();
             });
  } else {
    while (wr.n0 < p.N) {  // wa holds the row group's first U chunks
      zero();
      for (int k0 = 0; k0 < K; k0 += 2 * kStep) {
        if (k0 + kStep < K) wr.fetch(wb, k0 + kStep, K, lane);
        consume(wa, k0);
        if (k0 + kStep >= K) break;
        if (k0 + 2 * kStep < K) wr.fetch(wa, k0 + 2 * kStep, K, lane);
        consume(wb, k0 + kStep);
      }
      store_rows();
      rg += gridDim.x;
      if (rg >= row_groups) break;
      wr.set(p, rg, NW, warp);
      wr.fetch(wa, 0, K, lane);
    }
  }
}

/// Largest dynamic shared memory the kernel is given: 4 rows of 16,384 halves (the rule's
/// n · K ≤ 65,536, core/fp8_weight.hpp); with the norm, the halves and the normalised rows of
/// n · K ≤ 32,768.
inline constexpr size_t kFp8RowsMaxSmem = size_t(65536) * 2;

template <int MR, int U, bool kFlat, bool kNorm, class T>
void launch_fp8_gemv_w8a16_rows(const Fp8GemvParams<T>& p, cudaStream_t stream) {
  auto kern = fp8_gemv_w8a16_rows_kernel<MR, U, kFlat, kNorm, T>;
  static const bool attr = [&] {
    PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kFp8RowsMaxSmem)));
    return true;
  }();
  (void)attr;
  const size_t smem = size_t(MR) * size_t(p.K) * 2 * (kNorm ? 2 : 1);
  int per_sm = 0;
  PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kFp8RowsWarps * 32, smem));
  const int64_t groups = (p.N + kFp8RowsWarps * 2 - 1) / (kFp8RowsWarps * 2);
  const int64_t ctas = std::min<int64_t>(groups, int64_t(std::max(per_sm, 1)) * num_sms());
  launch_pdl(kern, dim3(static_cast<unsigned>(ctas)), dim3(kFp8RowsWarps * 32), smem, stream, p);
}

/// The launch for M rows (2–4) on the walk fp8_rows_flat's mode picks.
template <bool kNorm, class T>
void launch_fp8_gemv_w8a16_rows_for(const Fp8GemvParams<T>& p, int64_t M, cudaStream_t stream) {
  const bool flat = fp8_rows_flat(fp8_rows_flat_flag(), M, p.N, p.K);
  switch (M) {
    case 2:
      return flat ? launch_fp8_gemv_w8a16_rows<2, 4, true, kNorm>(p, stream)
                  : launch_fp8_gemv_w8a16_rows<2, 4, false, kNorm>(p, stream);
    case 3:
      return flat ? launch_fp8_gemv_w8a16_rows<3, 2, true, kNorm>(p, stream)
                  : launch_fp8_gemv_w8a16_rows<3, 2, false, kNorm>(p, stream);
    default:
      return flat ? launch_fp8_gemv_w8a16_rows<4, 2, true, kNorm>(p, stream)
                  : launch_fp8_gemv_w8a16_rows<4, 2, false, kNorm>(p, stream);
  }
}

}  // namespace detail

/// \brief y [M, N] = x·dq(w)ᵀ (+ bias) for 2 ≤ M ≤ 4 rows, weight-only (see the file comment):
/// fp8_weight_only_rows(M, K) must hold apart from its row limit (n · K ≤ 65,536, K % 16 == 0);
/// rows of x 8-byte aligned (row strides multiples of 4 elements). Each row is bit-identical to
/// fp8_gemv_w8a16 on it alone; the CPU reference is ops::cpu::fp8_linear_w8a16.
template <class T>
void fp8_gemv_w8a16_rows(TensorView<T> y, TensorView<T> x, const Fp8Weight& w, const T* bias, cudaStream_t stream) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "fp8_gemv: f16 or bf16 activations");
  const int64_t M = x.shape[0], N = w.rows(), K = w.cols();
  PIE_CHECK(M >= 2 && M <= 4 && y.shape[0] == M && x.shape[1] == K && y.shape[1] == N,
            "fp8_gemv_w8a16_rows: x [M, K] with 2 ≤ M ≤ 4, w [N, K], y [M, N] do not chain");
  PIE_CHECK(K % 16 == 0 && M * K <= 65536, "fp8_gemv_w8a16_rows: K = ", K, " at M = ", M,
            " (K a multiple of 16, M · K ≤ 65,536)");
  PIE_CHECK(w.per_channel() || (w.block_n == kFp8Block && w.block_k == kFp8Block),
            "fp8_gemv_w8a16_rows: unknown weight blocks");
  PIE_CHECK(x.stride[1] == 1 && y.stride[1] == 1 && x.stride[0] % 4 == 0 &&
                reinterpret_cast<uintptr_t>(x.data) % 8 == 0,
            "fp8_gemv_w8a16_rows: rows of x must be contiguous and 8-byte aligned");
  auto p = detail::fp8_gemv_params<T>(x.data, w, bias, y.data);
  p.ldx = x.stride[0];
  p.ldy = y.stride[0];
  detail::launch_fp8_gemv_w8a16_rows_for<false>(p, M, stream);
}

/// \brief Whether fp8_add_rms_norm_gemv_rows() takes M rows of hidden size K: the weight-only
/// rows GEMV's shapes (fp8_weight_only_rows apart from its row limit), the norm's threads within
/// one CTA (K ≤ 8,192), and the halves and normalised rows within its shared memory (M · K ≤
/// 32,768).
inline bool fp8_add_rms_norm_gemv_rows_supported(int64_t M, int64_t K) {
  return M >= 2 && M <= 4 && K > 0 && K % 16 == 0 && M * K <= 32768 &&
         detail::norm_threads(static_cast<int>(K)) <= detail::kFp8RowsWarps * 32;
}

/// \brief The residual add + RMSNorm of 2–4 rows in the weight-only rows GEMV's prologue
/// (add_rms_norm then fp8_gemv_w8a16_rows, fused): r_out = T(x + r_in) (x when `first`), written
/// by CTA 0; y [M, N] = T(rmsnorm(r_out))·norm_w · dq(w)ᵀ (+ bias). x is left as it was; r_in and
/// r_out are [M, K] rows K apart, r_in != r_out. Bit-identical to add_rms_norm (rows of the
/// standalone kernel) then fp8_gemv_w8a16_rows.
template <class T>
void fp8_add_rms_norm_gemv_rows(TensorView<T> y, TensorView<T> x, const T* r_in, T* r_out, const T* norm_w, float eps,
                                bool first, const Fp8Weight& w, const T* bias, cudaStream_t stream) {
  static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "fp8_gemv: f16 or bf16 activations");
  const int64_t M = x.shape[0], N = w.rows(), K = w.cols();
  PIE_CHECK(y.shape[0] == M && x.shape[1] == K && y.shape[1] == N,
            "fp8_add_rms_norm_gemv_rows: x [M, K], w [N, K], y [M, N] do not chain");
  PIE_CHECK(fp8_add_rms_norm_gemv_rows_supported(M, K), "fp8_add_rms_norm_gemv_rows: ", M, " rows of K = ", K,
            " (2–4 rows, K a multiple of 16 and at most 8,192, M · K ≤ 32,768)");
  PIE_CHECK(w.per_channel() || (w.block_n == kFp8Block && w.block_k == kFp8Block),
            "fp8_add_rms_norm_gemv_rows: unknown weight blocks");
  PIE_CHECK(x.stride[1] == 1 && y.stride[1] == 1 && x.stride[0] % 8 == 0 && vec8_aligned(x.data) &&
                vec8_aligned(r_out) && vec8_aligned(norm_w) && (r_in == nullptr || vec8_aligned(r_in)),
            "fp8_add_rms_norm_gemv_rows: x, the residuals and the norm weight must be 16-byte aligned rows");
  PIE_CHECK(r_out != nullptr && norm_w != nullptr && (first || r_in != nullptr) && r_in != r_out,
            "fp8_add_rms_norm_gemv_rows: needs r_out, norm_w, r_in (unless first), and r_in != r_out");
  auto p = detail::fp8_gemv_params<T>(x.data, w, bias, y.data);
  p.ldx = x.stride[0];
  p.ldy = y.stride[0];
  detail::set_fp8_gemv_norm(p, r_in, r_out, norm_w, eps, first, K);
  detail::launch_fp8_gemv_w8a16_rows_for<true>(p, M, stream);
}

}  // namespace pie::ops::cuda
