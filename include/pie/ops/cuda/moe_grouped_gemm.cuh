#pragma once
/// \file moe_grouped_gemm.cuh
/// \brief The MoE block's grouped expert products on the GPU (moe.cuh has the whole block and
/// its file comment, step 3): the tensor-core kernel over 64-row tiles of each expert's token
/// group, and the GEMV kernel for decode-sized calls; gate_up with SwiGLU fused, rows gathered
/// through the routing's permutation.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/mma.cuh"
#include "pie/ops/cuda/moe_routing.cuh"

namespace pie::ops::cuda::detail {

/// Operands of the grouped products.
template <class T>
struct MoeGemmParams {
  const T* a;              ///< kGather: x [n, K] (row stride lda), rows through perm; else [rows, K]
  int64_t lda;
  const T* w;              ///< experts' weights: expert e's [N_w, K] at w + e·w_stride, rows of K
  int64_t w_stride;
  T* out;                  ///< [rows, n_out] (row stride ldo)
  int64_t ldo;
  const int32_t* perm;
  const int32_t* offsets;
  const int32_t* tile_offsets;
  const int32_t* active;
  int n_out;               ///< output columns (I with SwiGLU: gate rows [0, I), up rows [I, 2I))
  int k;                   ///< K (a multiple of 8)
  int num_experts;
};

/// What the gate_up GEMV needs to route its call's one token itself (moe_gemv_routed_kernel):
/// the router logits [1, E] (fp32) and the record that its CTA (0, 0) writes.
struct MoeGemvRoute {
  const float* logits;
  MoeRouting r;
  int k;     ///< top-k
  int norm;  ///< renormalise the chosen weights (norm_topk_prob)
};

/// What the down GEMV of a one-token call needs to un-permute in its last CTAs
/// (moe_gemv_down_tail_kernel): the routing's weights and grouped rows of the token's k slots,
/// one ticket per column block (zero between calls: the last CTA resets its own) and the output.
template <class T>
struct MoeDownTail {
  const int32_t* inv;
  const float* weights;
  int k;
  int* tickets;  ///< [column blocks]
  T* out;        ///< [1, n_out]
  int dependents_at_start;  ///< launch the dependent grid at the start, not after the products
};

__device__ __forceinline__ float silu_f(float g) { return g / (1.f + expf(-g)); }

/// SwiGLU of one element from the fp32 accumulators of its gate and up rows, rounded where
/// transformers (and the dense path, activation.cuh) round: gate and up are T outputs of the
/// linear layer, and silu(gate) is a T tensor before it multiplies up.
template <class T>
__device__ __forceinline__ float swiglu_rounded(float g, float u) {
  const float gr = to_f32(from_f32<T>(g)), ur = to_f32(from_f32<T>(u));
  return to_f32(from_f32<T>(silu_f(gr))) * ur;
}

/// The grouped tensor-core product (see file comment): 64×128 tiles (with SwiGLU, 128 weight
/// rows = 64 gate + 64 up, interleaved by 8, for 64 output columns), 4 warps of 32×64, K in
/// steps of 32 through a 3-stage cp.async pipeline.
template <bool kGather, bool kSwiGLU, class T>
__global__ void __launch_bounds__(128) moe_mma_kernel(const __grid_constant__ MoeGemmParams<T> p) {
  constexpr int BM = kMoeTileM, BN = 128, BK = 32, LD = BK + 8, STAGES = 3;
  __shared__ __align__(16) T As[STAGES][BM][LD];
  __shared__ __align__(16) T Bs[STAGES][BN][LD];
  pdl_wait();  // the routing and the rows are the predecessors'
  const int tile = blockIdx.y;
  if (tile >= __ldg(&p.tile_offsets[p.num_experts])) return;
  int lo = 0, hi = p.num_experts;  // the largest e with tile_offsets[e] ≤ tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (__ldg(&p.tile_offsets[mid]) <= tile) lo = mid; else hi = mid - 1;
  }
  const int e = lo;
  const int g0 = __ldg(&p.offsets[e]), g1 = __ldg(&p.offsets[e + 1]);
  const int r0 = g0 + (tile - __ldg(&p.tile_offsets[e])) * BM;
  const int rows = min(BM, g1 - r0);
  const T* we = p.w + static_cast<int64_t>(e) * p.w_stride;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  // Each thread copies A chunks tid, tid + 128 (row c/4, 8 columns (c%4)·8) and B chunks
  // tid + 128·i, i < 4, per stage.
  const T* arow[2];
  bool avalid[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = (tid + 128 * i) >> 2;
    avalid[i] = row < rows;
    int64_t src = 0;
    if (avalid[i]) src = kGather ? __ldg(&p.perm[r0 + row]) : r0 + row;
    arow[i] = p.a + src * p.lda;
  }
  const T* brow[4];
  bool bvalid[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int j = (tid + 128 * i) >> 2;  // tile row
    int wr;
    if constexpr (kSwiGLU) {
      const int col = blockIdx.x * 64 + (j >> 4) * 8 + (j & 7);  // output column of this row
      bvalid[i] = col < p.n_out;
      wr = ((j >> 3) & 1) ? p.n_out + col : col;
    } else {
      wr = blockIdx.x * BN + j;
      bvalid[i] = wr < p.n_out;
    }
    brow[i] = we + static_cast<int64_t>(bvalid[i] ? wr : 0) * p.k;
  }
  const int kc = (tid & 3) * 8;
  auto load = [&](int stage, int k0) {
    const int kk = k0 + kc;
    const bool kin = kk < p.k;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      cp_async16(smem_u32(&As[stage][(tid + 128 * i) >> 2][kc]), arow[i] + kk, avalid[i] && kin);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      cp_async16(smem_u32(&Bs[stage][(tid + 128 * i) >> 2][kc]), brow[i] + kk, bvalid[i] && kin);
  };

  float acc[2][8][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 8; ++b)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[a][b][q] = 0.f;

  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 64;
  const int ktiles = (p.k + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load(s, s * BK);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int nk = kt + STAGES - 1;
    if (nk < ktiles) load(nk % STAGES, nk * BK);
    cp_async_commit();
    const int st = kt % STAGES;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[2][4];
#pragma unroll
      for (int a = 0; a < 2; ++a)
        ldmatrix_x4(af[a], smem_u32(&As[st][wm + a * 16 + (lane & 15)][kk + (lane >> 4) * 8]));
#pragma unroll
      for (int b2 = 0; b2 < 4; ++b2) {
        uint32_t bf[4];
        ldmatrix_x4(bf, smem_u32(&Bs[st][wn + b2 * 16 + (lane & 7) + ((lane >> 4) << 3)][kk + ((lane >> 3) & 1) * 8]));
#pragma unroll
        for (int a = 0; a < 2; ++a) {
          mma16816<T>(acc[a][2 * b2], af[a], bf[0], bf[1]);
          mma16816<T>(acc[a][2 * b2 + 1], af[a], bf[2], bf[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  pdl_launch_dependents();

  const int g = lane >> 2, c2 = (lane & 3) * 2;
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = wm + a * 16 + g + h * 8;
      if (row >= rows) continue;
      T* o = p.out + static_cast<int64_t>(r0 + row) * p.ldo;
      if constexpr (kSwiGLU) {
#pragma unroll
        for (int pr = 0; pr < 4; ++pr) {
          const int col = blockIdx.x * 64 + (wn >> 1) + pr * 8 + c2;
          if (col >= p.n_out) continue;
          const float v0 = swiglu_rounded<T>(acc[a][2 * pr][2 * h], acc[a][2 * pr + 1][2 * h]);
          const float v1 = swiglu_rounded<T>(acc[a][2 * pr][2 * h + 1], acc[a][2 * pr + 1][2 * h + 1]);
          *reinterpret_cast<uint32_t*>(o + col) = pack2<T>(v0, v1);
        }
      } else {
#pragma unroll
        for (int b = 0; b < 8; ++b) {
          const int col = blockIdx.x * BN + wn + b * 8 + c2;
          if (col >= p.n_out) continue;
          *reinterpret_cast<uint32_t*>(o + col) = pack2<T>(acc[a][b][2 * h], acc[a][b][2 * h + 1]);
        }
      }
    }
}

/// The grouped GEMV (see file comment): CTA (x, slot) computes columns [x·4·C, (x+1)·4·C) of
/// the slot-th non-empty expert's rows (at most R), each warp C columns (with SwiGLU, C gate and
/// C up rows), K in steps of U·256 with U·W 16-byte weight loads in flight per lane. kXAhead
/// (moe_gemv_ahead_kernel): each step's row chunks are loaded with its weights, 16 bytes a
/// load, instead of one chunk at a time after them, and the active count with the slot's
/// expert — the same values, the same sums. The grid's y is at most E (MoePlan's slots), so
/// active[slot] is in bounds even past the active count. kRoutePerLane > 0 (n = 1, gate_up:
/// moe_gemv_routed_kernel): no routing ran before; each CTA routes the token from q's logits
/// (moe_route_single_token, kRoutePerLane·32 ≥ E), CTA (0, 0) writing the record for the kernels
/// after it; slot s's one row is grouped row s and token 0.
///
/// kTail (n = 1, down: moe_gemv_down_tail_kernel): after writing its y columns each CTA takes a
/// ticket of its column block; the last of the block's k CTAs (one per slot) sums the token's k
/// rows of those columns with their weights in ascending expert id, as moe_unpermute_kernel does
/// (fmaf from zero over the grouped rows 0..k−1, which at n = 1 are the ascending ids), and writes
/// out: the un-permute's bits without its kernel.
///
/// kEarly (down after a routing kernel: the routing's writes ended before the predecessor, the
/// gate_up GEMV, passed its own wait, so before this grid could launch): the routing record is
/// read and the first step's weights are loaded before griddepcontrol.wait — through L2
/// (ld.global.cg), since the record's addresses are rewritten every layer — so that the weight
/// stream overlaps gate_up's tail; only the rows (gate_up's act) wait. The same loads, the same
/// sums.
template <int R, int C, int U, bool kGather, bool kSwiGLU, bool kXAhead, class T, int kRoutePerLane = 0,
          bool kTail = false, bool kEarly = false>
__device__ __forceinline__ void moe_gemv_body(const MoeGemmParams<T>& p, const MoeGemvRoute* q = nullptr,
                                              const MoeDownTail<T>* tail = nullptr) {
  static_assert(!kTail || (R == 1 && !kSwiGLU && !kGather), "the un-permute in down's last CTAs: one token");
  static_assert(!kEarly || (kRoutePerLane == 0 && !kGather), "early weights: down, after a routing kernel");
  constexpr int W = kSwiGLU ? 2 * C : C;
  constexpr int kChunk = 32 * 8;
  if constexpr (kTail) {
    if (tail->dependents_at_start) pdl_launch_dependents();  // the next GEMV's early weights under ours
  }
  // the routing (or the logits) and the rows are the predecessors'; kEarly: the rows only
  if constexpr (!kEarly) pdl_wait();
  const auto ld_route = [](const int32_t* a) { return kEarly ? __ldcg(a) : __ldg(a); };
  const int slot = blockIdx.y;
  int e, g0, cnt;
  if constexpr (kRoutePerLane > 0) {
    static_assert(R == 1 && kGather, "routing inside the GEMV: one token, rows gathered");
    e = moe_route_single_token<kRoutePerLane, T>(q->logits, p.num_experts, q->k, q->norm, q->r, slot,
                                                 blockIdx.x == 0 && blockIdx.y == 0);
    if (e < 0) return;
    g0 = slot;
    cnt = 1;
  } else if constexpr (kXAhead) {  // both loads in one round trip: slot < gridDim.y ≤ E, in bounds
    const int active = ld_route(&p.active[p.num_experts]);
    e = ld_route(&p.active[slot]);  // stale past the active count, and then unused
    // e < 0 never holds below the count; testing it (not short-circuited) keeps ptxas from
    // sinking e's load below the exit test, a second dependent round trip.
    if ((slot >= active) | (e < 0)) {
      if constexpr (kEarly) pdl_wait();  // (no early exit past a grid dependency)
      return;
    }
  } else {
    if (slot >= ld_route(&p.active[p.num_experts])) {
      if constexpr (kEarly) pdl_wait();
      return;
    }
    e = ld_route(&p.active[slot]);
  }
  if constexpr (kRoutePerLane == 0) {
    g0 = ld_route(&p.offsets[e]);
    cnt = min(R, ld_route(&p.offsets[e + 1]) - g0);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * 4 + warp) * C;
  [[maybe_unused]] int tail_pos = 0;  // kTail, thread j < k: slot j's grouped row and weight
  [[maybe_unused]] float tail_w = 0.f;
  if constexpr (kTail) {
    if (threadIdx.x < static_cast<unsigned>(tail->k)) {
      tail_pos = kEarly ? __ldcg(&tail->inv[threadIdx.x]) : tail->inv[threadIdx.x];
      tail_w = kEarly ? __ldcg(&tail->weights[threadIdx.x]) : tail->weights[threadIdx.x];
    }
  } else {
    if (n0 >= p.n_out) {  // (kTail: every warp reaches the ticket's barrier; its columns clamp)
      if constexpr (kEarly) pdl_wait();
      return;
    }
  }
  const T* we = p.w + static_cast<int64_t>(e) * p.w_stride;
  const T* wrow[W];
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int col = min(n0 + c, p.n_out - 1);  // past N: recompute the last, never stored
    wrow[c] = we + static_cast<int64_t>(col) * p.k;
    if constexpr (kSwiGLU) wrow[C + c] = we + static_cast<int64_t>(p.n_out + col) * p.k;
  }
  const T* xrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int rr = r < cnt ? r : 0;
    int64_t src = g0 + rr;
    if constexpr (kRoutePerLane > 0) src = 0;  // the one token
    else if constexpr (kGather) src = __ldg(&p.perm[g0 + rr]);
    xrow[r] = p.a + src * p.lda;
  }
  float acc[R][W];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int w = 0; w < W; ++w) acc[r][w] = 0.f;
  uint4 wv[U][W];
  if constexpr (kEarly) {  // the first step's weights before the wait (see kEarly)
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = u * kChunk + lane * 8;
#pragma unroll
      for (int w = 0; w < W; ++w) wv[u][w] = kk < p.k ? load16_stream(wrow[w] + kk) : make_uint4(0, 0, 0, 0);
    }
    pdl_wait();
  }
  for (int k0 = 0; k0 < p.k; k0 += U * kChunk) {
    [[maybe_unused]] uint4 xv[kXAhead ? U : 1][kXAhead ? R : 1];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * kChunk + lane * 8;
      if (!kEarly || k0 > 0) {
#pragma unroll
        for (int w = 0; w < W; ++w) wv[u][w] = kk < p.k ? load16_stream(wrow[w] + kk) : make_uint4(0, 0, 0, 0);
      }
      if constexpr (kXAhead) {
#pragma unroll
        for (int r = 0; r < R; ++r)
          xv[u][r] = kk < p.k && r < cnt ? *reinterpret_cast<const uint4*>(xrow[r] + kk) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * kChunk + lane * 8;
      if (kk >= p.k) break;
      float wf[W][8];
#pragma unroll
      for (int w = 0; w < W; ++w) widen8(*reinterpret_cast<const Pack8<T>*>(&wv[u][w]), wf[w]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (r >= cnt) break;
        float xf[8];
        if constexpr (kXAhead) widen8(*reinterpret_cast<const Pack8<T>*>(&xv[u][r]), xf);
        else load8(xrow[r] + kk, xf);
#pragma unroll
        for (int w = 0; w < W; ++w)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[r][w] = fmaf(xf[j], wf[w][j], acc[r][w]);
      }
    }
  }
  pdl_launch_dependents();
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int w = 0; w < W; ++w) acc[r][w] = warp_sum(acc[r][w]);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r >= cnt) break;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      if (lane != (r * C + c) % 32 || n0 + c >= p.n_out) continue;
      const float v = kSwiGLU ? swiglu_rounded<T>(acc[r][c], acc[r][C + c]) : acc[r][c];
      p.out[static_cast<int64_t>(g0 + r) * p.ldo + n0 + c] = from_f32<T>(v);
    }
  }
  if constexpr (kTail) {
    __shared__ float s_w[kMoeMaxTopK];
    __shared__ int s_last;
    __threadfence();  // this CTA's y columns are visible before its ticket
    __syncthreads();
    if (threadIdx.x == 0) {
      const int t = atomicAdd(&tail->tickets[blockIdx.x], 1);
      s_last = t == static_cast<int>(gridDim.y) - 1;
      if (s_last) tail->tickets[blockIdx.x] = 0;  // every other CTA of the block has taken its ticket
    }
    if (threadIdx.x < static_cast<unsigned>(tail->k)) s_w[tail_pos] = tail_w;  // by grouped row
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const int col = blockIdx.x * 4 * C + static_cast<int>(threadIdx.x);
    if (threadIdx.x >= 4 * C || col >= p.n_out) return;
    float a = 0.f;
    for (int r = 0; r < tail->k; ++r) {  // other CTAs' rows: through L2 (ld.global.cg), not L1
      const unsigned short b = __ldcg(reinterpret_cast<const unsigned short*>(p.out + static_cast<int64_t>(r) * p.ldo + col));
      T v;
      memcpy(&v, &b, sizeof(T));
      a = fmaf(to_f32(v), s_w[r], a);
    }
    tail->out[col] = from_f32<T>(a);
  }
}

/// The grouped GEMV (moe_gemv_body), row chunks loaded after the weights.
template <int R, int C, int U, bool kGather, bool kSwiGLU, class T>
__global__ void __launch_bounds__(128) moe_gemv_kernel(const __grid_constant__ MoeGemmParams<T> p) {
  moe_gemv_body<R, C, U, kGather, kSwiGLU, false>(p);
}

/// moe_gemv_kernel with each step's row chunks loaded with its weights (kXAhead): with them
/// loaded after, a CTA waits one L2 round trip per 256-element chunk on top of the weights'
/// (the SASS of moe_gemv_kernel<1, 2, 4> issues the act loads of chunk u only after chunk u−1's
/// FMAs). Bench rows only until the device has timed it (bench_moe_decode.cu).
template <int R, int C, int U, bool kGather, bool kSwiGLU, class T>
__global__ void __launch_bounds__(128) moe_gemv_ahead_kernel(const __grid_constant__ MoeGemmParams<T> p) {
  moe_gemv_body<R, C, U, kGather, kSwiGLU, true>(p);
}

/// The gate_up(+SwiGLU) GEMV of a one-token call with the routing in its prologue
/// (moe_gemv_body's kRoutePerLane; row chunks loaded with the weights, as
/// moe_gemv_ahead_kernel): it replaces moe_route + the gate_up GEMV at n = 1, giving their bits
/// and their routing record. kPerLane·32 ≥ E.
template <int C, int U, int kPerLane, class T>
__global__ void __launch_bounds__(128) moe_gemv_routed_kernel(const __grid_constant__ MoeGemmParams<T> p,
                                                              const __grid_constant__ MoeGemvRoute q) {
  moe_gemv_body<1, C, U, true, true, true, T, kPerLane>(p, &q);
}

/// The down GEMV of a one-token call with the un-permute in its last CTAs (moe_gemv_body's
/// kTail; row chunks loaded with the weights, as moe_gemv_ahead_kernel): down + moe_unpermute's
/// bits in one kernel, y still written (the last CTAs read it back from L2).
/// kEarly: the routing came from a kernel before gate_up (moe_gemv_body's kEarly).
template <int C, int U, bool kEarly, class T>
__global__ void __launch_bounds__(128) moe_gemv_down_tail_kernel(const __grid_constant__ MoeGemmParams<T> p,
                                                                 const __grid_constant__ MoeDownTail<T> t) {
  moe_gemv_body<1, C, U, false, false, true, T, 0, true, kEarly>(p, nullptr, &t);
}

}  // namespace pie::ops::cuda::detail
