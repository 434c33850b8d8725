#pragma once
/// \file moe.cuh
/// \brief The sparse mixture-of-experts block on the GPU (Qwen3-MoE; the CPU op is
/// ops/cpu/moe.hpp): routing, grouped expert GEMMs and the weighted un-permute, with no host
/// synchronisation, so the whole block can be captured into a CUDA graph.
///
/// Steps, for n tokens, E experts, top-k, hidden H, expert width I:
/// 1. Router logits [n, E] in fp32 (the caller: a GEMM with float output).
/// 2. moe_route: one warp per token rounds its logits to T (as a bf16 router linear's output),
///    then does softmax → top-k (ties to the lower id, as the CPU op)
///    → optional renormalisation, and counts tokens per expert with atomics; the last CTA to
///    finish (a ticket counter) scans the counts into per-expert row offsets, M-tile offsets and
///    the ascending list of non-empty experts, scatters every (token, slot) pair to its row of
///    the expert-grouped order, and resets the counters for the next call. The grid's shape
///    depends only on n, so a graph replays it with any routing.
/// 3. Two grouped products over the grouped rows: gate_up with SwiGLU fused (a tile's weight
///    rows interleave gate and up rows 8 by 8, so each thread holds gate and up of the same
///    element) writing act [n·k, I], then down writing y [n·k, H]. The token rows are gathered
///    through the permutation inside the first product (no permuted copy of x). Two kernels:
///    - mma (tensor cores, mma.sync m16n8k16, 3-stage cp.async): a grid of the worst-case
///      number of 64-row tiles (n·k/64 + min(E, n·k)); each CTA finds its expert by binary
///      search over the tile offsets and exits when past the last tile;
///    - gemv (decode, n ≤ kMoeGemvMaxTokens): one CTA row per non-empty expert slot (at most
///      min(E, n·k)), warps streaming weight rows once, 16 bytes per lane, L1 bypassed: the
///      active experts' bytes are the whole cost.
/// 4. moe_unpermute: out[t] = Σ_j w[t, j]·y[row(t, j)], summed in fp32 in ascending expert id
///    (the CPU op's order).
/// Every kernel is launched with programmatic dependent launch (common.cuh) and waits for its
/// predecessor first thing: only the launch latency overlaps the kernel before.
///
/// Batch invariance: a grouped row's products depend on that row only (fixed K order, no
/// split-K, whatever tile or CTA it lands in), and the un-permute's order is fixed, so with the
/// mma path a token's output does not depend on its batch. The gemv path is the same per row
/// too, but sums in another order than the mma path: the engine's batch-invariant mode uses the
/// mma path for every batch.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/core/tensor.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/mma.cuh"

namespace pie::ops::cuda {

inline constexpr int kMoeMaxExperts = 256;  ///< one thread per expert in the routing's scan
inline constexpr int kMoeMaxTopK = 32;      ///< one lane per chosen expert
inline constexpr int kMoeTileM = 64;        ///< rows of one mma tile
inline constexpr int kMoeGemvMaxTokens = 8; ///< largest n of the gemv path

/// \brief The routing of one call, on the device (every pointer sized for the workspace's
/// largest n; see MoeWorkspace).
struct MoeRouting {
  int32_t* ids = nullptr;           ///< [n·k] expert of (t, j), by descending probability
  float* weights = nullptr;         ///< [n·k] its weight
  int32_t* counts = nullptr;        ///< [E] scratch, zero between calls
  unsigned* ticket = nullptr;       ///< [1] scratch, zero between calls
  int32_t* offsets = nullptr;       ///< [E + 1] first grouped row of each expert
  int32_t* tile_offsets = nullptr;  ///< [E + 1] first kMoeTileM-row tile of each expert
  int32_t* active = nullptr;        ///< [E + 1] the non-empty experts ascending; their count at [E]
  int32_t* perm = nullptr;          ///< [n·k] token of each grouped row
  int32_t* inv = nullptr;           ///< [n·k] grouped row of (t, j)
};

namespace detail {

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/// Exclusive prefix sum over a 256-thread block; `total` gets the sum. s holds 8 ints.
__device__ __forceinline__ int block_exclusive_scan256(int v, int* s, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) s[warp] = x;
  __syncthreads();
  int base = 0;
  total = 0;
#pragma unroll
  for (int w = 0; w < 8; ++w) {
    const int sw = s[w];
    if (w < warp) base += sw;
    total += sw;
  }
  __syncthreads();  // s may be reused by the next scan
  return base + x - v;
}

/// Step 2 (see file comment). 256 threads, one warp per token; kPerLane·32 ≥ E. The logits are
/// first rounded to L, the activation type (see moe_route).
template <int kPerLane, class L>
__global__ void __launch_bounds__(256) moe_route_kernel(const float* __restrict__ logits, int n, int E, int k,
                                                        int norm, MoeRouting r) {
  __shared__ int s_cursor[kMoeMaxExperts];
  __shared__ int s_scan[8];
  __shared__ bool s_last;
  pdl_wait();  // the logits are the predecessor's
  pdl_launch_dependents();  // a small grid: let the next kernel's launch overlap it
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int t = blockIdx.x * 8 + warp;
  if (t < n) {
    const float* l = logits + static_cast<int64_t>(t) * E;
    float v[kPerLane];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + 32 * i;
      v[i] = e < E ? to_f32(from_f32<L>(l[e])) : -INFINITY;
      mx = fmaxf(mx, v[i]);
    }
    mx = warp_max(mx);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      v[i] = lane + 32 * i < E ? expf(v[i] - mx) : 0.f;
      sum += v[i];
    }
    sum = warp_sum(sum);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) v[i] = lane + 32 * i < E ? v[i] / sum : -1.f;  // taken/absent: −1
    int my_id = 0;
    float my_w = 0.f, chosen = 0.f;
    for (int j = 0; j < k; ++j) {
      float best = -1.f;
      int be = 0x7fffffff;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i)
        if (v[i] > best) { best = v[i]; be = lane + 32 * i; }  // ascending e per lane: ties keep the lower
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oe = __shfl_xor_sync(0xffffffffu, be, o);
        if (ob > best || (ob == best && oe < be)) { best = ob; be = oe; }
      }
      if ((be & 31) == lane) {
#pragma unroll
        for (int i = 0; i < kPerLane; ++i)
          if (i == (be >> 5)) v[i] = -1.f;
      }
      if (lane == j) { my_id = be; my_w = best; }
      chosen += best;
    }
    if (lane < k) {
      const int64_t i = static_cast<int64_t>(t) * k + lane;
      r.ids[i] = my_id;
      r.weights[i] = norm ? my_w / chosen : my_w;
      atomicAdd(&r.counts[my_id], 1);
    }
  }
  // The last CTA groups the rows (every other CTA's ids and counts are visible to it).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(r.ticket, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const int e = threadIdx.x;
  const int cnt = e < E ? __ldcg(&r.counts[e]) : 0;
  int total_rows = 0, total_tiles = 0, total_active = 0;
  const int off = block_exclusive_scan256(cnt, s_scan, total_rows);
  const int toff = block_exclusive_scan256((cnt + kMoeTileM - 1) / kMoeTileM, s_scan, total_tiles);
  const int aoff = block_exclusive_scan256(cnt > 0 ? 1 : 0, s_scan, total_active);
  if (e < E) {
    r.offsets[e] = off;
    r.tile_offsets[e] = toff;
    if (cnt > 0) r.active[aoff] = e;
    s_cursor[e] = off;
    r.counts[e] = 0;  // ready for the next call
  }
  if (e == 0) {
    r.offsets[E] = total_rows;
    r.tile_offsets[E] = total_tiles;
    r.active[E] = total_active;
    *r.ticket = 0u;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n * k; i += blockDim.x) {
    const int ex = __ldcg(&r.ids[i]);
    const int pos = atomicAdd(&s_cursor[ex], 1);
    r.perm[pos] = i / k;
    r.inv[i] = pos;
  }
}

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
/// C up rows), K in steps of U·256 with U·W 16-byte weight loads in flight per lane.
template <int R, int C, int U, bool kGather, bool kSwiGLU, class T>
__global__ void __launch_bounds__(128) moe_gemv_kernel(const __grid_constant__ MoeGemmParams<T> p) {
  constexpr int W = kSwiGLU ? 2 * C : C;
  constexpr int kChunk = 32 * 8;
  pdl_wait();  // the routing and the rows are the predecessors'
  const int slot = blockIdx.y;
  if (slot >= __ldg(&p.active[p.num_experts])) return;
  const int e = __ldg(&p.active[slot]);
  const int g0 = __ldg(&p.offsets[e]);
  const int cnt = min(R, __ldg(&p.offsets[e + 1]) - g0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * 4 + warp) * C;
  if (n0 >= p.n_out) return;
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
    const int64_t src = kGather ? __ldg(&p.perm[g0 + rr]) : g0 + rr;
    xrow[r] = p.a + src * p.lda;
  }
  float acc[R][W];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int w = 0; w < W; ++w) acc[r][w] = 0.f;
  for (int k0 = 0; k0 < p.k; k0 += U * kChunk) {
    uint4 wv[U][W];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * kChunk + lane * 8;
#pragma unroll
      for (int w = 0; w < W; ++w) wv[u][w] = kk < p.k ? load16_stream(wrow[w] + kk) : make_uint4(0, 0, 0, 0);
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
        load8(xrow[r] + kk, xf);
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
}

/// Step 4: CTA (t, c) writes elements [c·1024, (c+1)·1024) of token t, 8 per thread. Lanes
/// 0..k−1 read the token's k slots at once and place each by its rank among the token's
/// (distinct) expert ids, so the sum runs in ascending expert id (the CPU op's order); then each
/// thread issues its k row loads 8 at a time before using any (one CTA per token with a serial
/// sort and dependent loads took 6.3 µs at batch 1 on the H200, mostly load latency).
template <class T>
__global__ void __launch_bounds__(128) moe_unpermute_kernel(const T* __restrict__ y, int64_t ldy,
                                                            const int32_t* __restrict__ ids,
                                                            const float* __restrict__ weights,
                                                            const int32_t* __restrict__ inv, int k, int H, T* out,
                                                            int64_t ldo) {
  static_assert(sizeof(Pack8<T>) == sizeof(uint4), "8 elements of T are one 16-byte load");
  __shared__ int s_id[kMoeMaxTopK];
  __shared__ int s_pos[kMoeMaxTopK];
  __shared__ float s_w[kMoeMaxTopK];
  pdl_wait();
  pdl_launch_dependents();
  const int t = blockIdx.x, j = threadIdx.x;
  int my_id = 0, my_pos = 0;
  float my_w = 0.f;
  if (j < k) {
    const int64_t i = static_cast<int64_t>(t) * k + j;
    my_id = ids[i];
    my_pos = inv[i];
    my_w = weights[i];
    s_id[j] = my_id;
  }
  __syncthreads();
  if (j < k) {
    int rank = 0;
    for (int m = 0; m < k; ++m) rank += s_id[m] < my_id;
    s_pos[rank] = my_pos;
    s_w[rank] = my_w;
  }
  __syncthreads();
  const int h = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
  if (h >= H) return;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int j0 = 0; j0 < k; j0 += 8) {
    uint4 raw[8];
#pragma unroll
    for (int u = 0; u < 8; ++u)
      if (j0 + u < k) raw[u] = *reinterpret_cast<const uint4*>(y + static_cast<int64_t>(s_pos[j0 + u]) * ldy + h);
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      if (j0 + u >= k) break;
      float v[8];
      widen8(*reinterpret_cast<const Pack8<T>*>(&raw[u]), v);
      const float w = s_w[j0 + u];
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[q] += v[q] * w;
    }
  }
  store8(out + static_cast<int64_t>(t) * ldo + h, acc);
}

}  // namespace detail

/// \brief Device scratch of the MoE block for up to `max_tokens` tokens: the routing, and the
/// grouped activations act [max_tokens·k, I] and y [max_tokens·k, H]. Counters start at zero and
/// every moe_route leaves them at zero.
template <class T>
class MoeWorkspace {
 public:
  MoeWorkspace() = default;
  MoeWorkspace(int max_tokens, int num_experts, int top_k, int hidden, int inter)
      : max_tokens_(max_tokens), E_(num_experts), k_(top_k), H_(hidden), I_(inter) {
    PIE_CHECK(num_experts >= 1 && num_experts <= kMoeMaxExperts, "moe (cuda): ", num_experts,
              " experts; the routing kernel takes 1..", kMoeMaxExperts);
    PIE_CHECK(top_k >= 1 && top_k <= std::min(num_experts, kMoeMaxTopK), "moe (cuda): top_k ", top_k, " not in [1, ",
              std::min(num_experts, kMoeMaxTopK), "]");
    PIE_CHECK(hidden % 8 == 0 && inter % 8 == 0, "moe (cuda): hidden ", hidden, " and expert width ", inter,
              " must be multiples of 8");
    const size_t rows = static_cast<size_t>(max_tokens) * top_k;
    ints_ = DeviceBuffer<int32_t>(3 * rows + 4 * (size_t(num_experts) + 1) + 1);
    weights_ = DeviceBuffer<float>(rows);
    logits_ = DeviceBuffer<float>(static_cast<size_t>(max_tokens) * num_experts);
    act_ = DeviceBuffer<T>(rows * inter);
    y_ = DeviceBuffer<T>(rows * hidden);
    PIE_CUDA_CHECK(cudaMemset(ints_.data(), 0, ints_.size() * sizeof(int32_t)));
    PIE_CUDA_CHECK(cudaDeviceSynchronize());  // the counters are zero before any stream uses them
    int32_t* q = ints_.data();
    auto take = [&](size_t n) { int32_t* p = q; q += n; return p; };
    r_.ids = take(rows);
    r_.perm = take(rows);
    r_.inv = take(rows);
    r_.counts = take(num_experts + 1);
    r_.offsets = take(num_experts + 1);
    r_.tile_offsets = take(num_experts + 1);
    r_.active = take(num_experts + 1);
    r_.ticket = reinterpret_cast<unsigned*>(take(1));
    r_.weights = weights_.data();
  }
  bool fits(int tokens, int num_experts, int top_k, int hidden, int inter) const {
    return tokens <= max_tokens_ && num_experts == E_ && top_k == k_ && hidden == H_ && inter == I_;
  }
  size_t bytes() const {
    return ints_.size() * 4 + weights_.size() * 4 + logits_.size() * 4 + (act_.size() + y_.size()) * sizeof(T);
  }
  const MoeRouting& routing() const { return r_; }
  float* logits() { return logits_.data(); }
  T* act() { return act_.data(); }
  T* y() { return y_.data(); }
  int num_experts() const { return E_; }
  int top_k() const { return k_; }
  int hidden() const { return H_; }
  int inter() const { return I_; }

 private:
  int max_tokens_ = 0, E_ = 0, k_ = 0, H_ = 0, I_ = 0;
  DeviceBuffer<int32_t> ints_;
  DeviceBuffer<float> weights_, logits_;
  DeviceBuffer<T> act_, y_;
  MoeRouting r_;
};

/// \brief Routes n tokens from their router logits (ws.logits(), [n, E], accumulated in fp32):
/// each logit rounded to T, then softmax in fp32, top-k, renormalisation when
/// `norm_topk_prob`, and the expert-grouped order (see the file comment).
///
/// Why round: a bf16 model's router is a bf16 linear layer in transformers (and vLLM), so its
/// logits reach the softmax rounded to bf16. Routing from the unrounded fp32 logits picks
/// another expert wherever the k-th and (k+1)-th logits lie within a bf16 step, a few percent
/// of token-layers on random checkpoints, and each such swap moves that token's output by a
/// whole expert's contribution (docs/kernels.md, the MoE block's accuracy).
template <class T>
void moe_route(int n, bool norm_topk_prob, MoeWorkspace<T>& ws, cudaStream_t stream) {
  if (n == 0) return;
  using D = device_t<T>;
  const int E = ws.num_experts();
  const dim3 grid((n + 7) / 8);
  const float* logits = ws.logits();
  const int k = ws.top_k(), norm = norm_topk_prob ? 1 : 0;
  if (E <= 32) launch_pdl(detail::moe_route_kernel<1, D>, grid, dim3(256), 0, stream, logits, n, E, k, norm, ws.routing());
  else if (E <= 128) launch_pdl(detail::moe_route_kernel<4, D>, grid, dim3(256), 0, stream, logits, n, E, k, norm, ws.routing());
  else launch_pdl(detail::moe_route_kernel<8, D>, grid, dim3(256), 0, stream, logits, n, E, k, norm, ws.routing());
}

namespace detail {
/// The grouped-product launches of one call: the parameters of both products, and which path.
template <class T>
struct MoePlan {
  MoeGemmParams<device_t<T>> gu, dn;
  int n, rows, slots, E, H, I;
  bool gemv;
};

template <class T>
MoePlan<T> moe_plan(TensorView<T> x, TensorView<T> gate_up, TensorView<T> down, MoeWorkspace<T>& ws,
                    TensorView<T> out, bool use_gemv) {
  const int n = static_cast<int>(x.shape[0]);
  const int E = ws.num_experts(), k = ws.top_k(), H = ws.hidden(), I = ws.inter();
  PIE_CHECK(x.rank == 2 && x.shape[1] == H && out.rank == 2 && out.shape[0] == n && out.shape[1] == H &&
                gate_up.rank == 3 && gate_up.shape[0] == E && gate_up.shape[1] == 2 * I && gate_up.shape[2] == H &&
                down.rank == 3 && down.shape[0] == E && down.shape[1] == H && down.shape[2] == I,
            "moe_experts: x [n, H], gate_up [E, 2I, H], down [E, H, I], out [n, H] do not agree with the workspace (E ",
            E, ", H ", H, ", I ", I, ")");
  check_rows8(x, "moe_experts: x");
  check_rows8(out, "moe_experts: out");
  PIE_CHECK(gate_up.contiguous() && down.contiguous() && vec8_aligned(gate_up.data) && vec8_aligned(down.data),
            "moe_experts: expert weights must be contiguous and 16-byte aligned");
  const MoeRouting& r = ws.routing();
  const int rows = n * k;
  return MoePlan<T>{{dev(x.data), x.stride[0], dev(gate_up.data), int64_t{2} * I * H, dev(ws.act()), I, r.perm,
                     r.offsets, r.tile_offsets, r.active, I, H, E},
                    {dev(ws.act()), I, dev(down.data), int64_t{H} * I, dev(ws.y()), H, r.perm, r.offsets,
                     r.tile_offsets, r.active, H, I, E},
                    n, rows, std::min(E, rows), E, H, I, use_gemv && n <= kMoeGemvMaxTokens};
}

template <int R, bool kUp, class D>
void launch_moe_gemv(const MoeGemmParams<D>& p, int slots, cudaStream_t s) {
  launch_pdl(moe_gemv_kernel<R, 2, 4, kUp, kUp, D>, dim3((p.n_out + 7) / 8, slots), dim3(128), 0, s, p);
}

/// One grouped product: gate_up (+SwiGLU, rows gathered through perm) or down.
template <bool kUp, class T>
void moe_product(const MoePlan<T>& pl, cudaStream_t s) {
  using D = device_t<T>;
  const MoeGemmParams<D>& p = kUp ? pl.gu : pl.dn;
  if (pl.gemv) {
    if (pl.n == 1) launch_moe_gemv<1, kUp>(p, pl.slots, s);
    else if (pl.n == 2) launch_moe_gemv<2, kUp>(p, pl.slots, s);
    else if (pl.n <= 4) launch_moe_gemv<4, kUp>(p, pl.slots, s);
    else launch_moe_gemv<8, kUp>(p, pl.slots, s);
  } else {
    const unsigned tiles = static_cast<unsigned>(pl.rows / kMoeTileM + std::min(pl.E, pl.rows));
    const int cols = kUp ? (pl.I + 63) / 64 : (pl.H + 127) / 128;
    launch_pdl(moe_mma_kernel<kUp, kUp, D>, dim3(cols, tiles), dim3(128), 0, s, p);
  }
}
}  // namespace detail

/// \brief The three stages of the experts of a routed call, launched one by one so that a
/// profiler can time each (moe_experts runs them in a row): gate_up(+SwiGLU) → act, down → y,
/// and the weighted un-permute y → out. moe_route ran on the same stream before.
/// \param x       [n, H] (rows 16-byte aligned)
/// \param gate_up [E, 2·I, H]: per expert its I gate rows, then its I up rows
/// \param down    [E, H, I]
/// \param use_gemv take the gemv path when n ≤ kMoeGemvMaxTokens (off: mma for every n)
template <class T>
class MoeExperts {
 public:
  MoeExperts(TensorView<T> x, TensorView<T> gate_up, TensorView<T> down, MoeWorkspace<T>& ws, TensorView<T> out,
             bool use_gemv)
      : ws_(ws), out_(out), plan_(detail::moe_plan(x, gate_up, down, ws, out, use_gemv)) {}
  void gate_up(cudaStream_t s) const { if (plan_.n > 0) detail::moe_product<true>(plan_, s); }
  void down(cudaStream_t s) const { if (plan_.n > 0) detail::moe_product<false>(plan_, s); }
  void unpermute(cudaStream_t s) const {
    if (plan_.n == 0) return;
    using D = device_t<T>;
    const MoeRouting& r = ws_.routing();
    launch_pdl(detail::moe_unpermute_kernel<D>, dim3(plan_.n, (plan_.H + 1023) / 1024), dim3(128), 0, s,
               static_cast<const D*>(dev(ws_.y())), int64_t{plan_.H}, static_cast<const int32_t*>(r.ids),
               static_cast<const float*>(r.weights), static_cast<const int32_t*>(r.inv), ws_.top_k(), plan_.H,
               dev(out_.data), out_.stride[0]);
  }

 private:
  MoeWorkspace<T>& ws_;
  TensorView<T> out_;
  detail::MoePlan<T> plan_;
};

/// \brief The experts of a routed call: out [n, H] = Σ_j w·down_e(silu(gate_e·x)·up_e·x) over
/// each token's experts (moe_route ran on the same stream before); MoeExperts' three stages.
template <class T>
void moe_experts(TensorView<T> x, TensorView<T> gate_up, TensorView<T> down, MoeWorkspace<T>& ws, TensorView<T> out,
                 bool use_gemv, cudaStream_t stream) {
  if (x.shape[0] == 0) return;
  const MoeExperts<T> ex(x, gate_up, down, ws, out, use_gemv);
  ex.gate_up(stream);
  ex.down(stream);
  ex.unpermute(stream);
}

}  // namespace pie::ops::cuda
