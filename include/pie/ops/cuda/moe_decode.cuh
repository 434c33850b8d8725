#pragma once
/// \file moe_decode.cuh
/// \brief The MoE block's fused decode kernels (n ≤ kMoeGemvMaxTokens; opt-in in the engine,
/// PIE_MOE_DECODE=fused, until measured): router GEMV + routing in one launch, and the down
/// GEMV with the weighted un-permute fused. Each gives the bits of the unfused pair it replaces
/// (router gemv() + moe_route; moe_gemv_kernel down + moe_unpermute_kernel), so the choice
/// changes only time. At batch 1 the MoE block is five dependent launches (router, route,
/// gate_up, down, un-permute); these make it three (docs/kernels.md, the MoE block).
///
/// 1. moe_router_route_kernel: warp w of CTA b computes router row b·8 + w for all n tokens in
///    gemv_kernel's reduction order (a lane sums its 16-byte chunks in increasing k with fmaf,
///    then the warp butterfly: gemv.cuh), so the fp32 logits equal gemv()'s bit for bit, and
///    writes them to the workspace. Its weight loads are issued before griddepcontrol.wait (the
///    router does not depend on the predecessor). The last CTA to arrive (threadfence + ticket,
///    reset by the grouping, so graph replays need no memset) routes the n tokens, one warp each,
///    with moe_route's own device code (moe_route_token, moe_group_rows).
/// 2. moe_down_unpermute_kernel: CTA (x, t) owns output columns [x·4·C, (x+1)·4·C) of token t;
///    each warp walks the token's k experts in ascending id (the un-permute's order) and, per
///    expert, its K chunks as one flat stream with D items of loads in flight (weights streamed,
///    the act row from L1/L2), summing each (expert, column) dot like moe_gemv_kernel (lane
///    chunks in increasing k, warp butterfly), rounding it to T as the y store would, and adding
///    w·y in fp32 with fmaf as moe_unpermute_kernel does. No y buffer, no un-permute launch.
///    With n > 1 an expert shared by two tokens is streamed by both tokens' CTAs (the second
///    mostly from L2: all CTAs run in one wave).
#include <cuda_runtime.h>

#include <cstdint>

#include "pie/core/error.hpp"
#include "pie/core/tensor.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/moe_routing.cuh"

namespace pie::ops::cuda {

namespace detail {

inline constexpr int kMoeRouterChunks = 8;  ///< 16-byte loads in flight per lane (a 2048-wide row)

/// Step 1 (see file comment). 256 threads; kPerLane·32 ≥ E; n ≤ kMoeGemvMaxTokens.
template <int kPerLane, class T>
__global__ void __launch_bounds__(256) moe_router_route_kernel(const T* __restrict__ x, int64_t ldx,
                                                               const T* __restrict__ w, int64_t ldw, int n, int K,
                                                               int E, int k, int norm, float* logits, MoeRouting r) {
  constexpr int kChunk = 32 * 8, U = kMoeRouterChunks, R = kMoeGemvMaxTokens;
  __shared__ int s_cursor[kMoeMaxExperts];
  __shared__ int s_scan[8];
  __shared__ bool s_last;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int col = blockIdx.x * 8 + warp;
  const T* wrow = w + static_cast<int64_t>(min(col, E - 1)) * ldw;
  uint4 wv[U];
  auto fetch = [&](int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * kChunk + lane * 8;
      wv[u] = kk < K ? load16_stream(wrow + kk) : make_uint4(0, 0, 0, 0);
    }
  };
  fetch(0);  // weights only: may run before the predecessor (the norm writing x) finishes
  pdl_launch_dependents();
  pdl_wait();
  float acc[R];
#pragma unroll
  for (int m = 0; m < R; ++m) acc[m] = 0.f;
  for (int k0 = 0; k0 < K; k0 += U * kChunk) {
    if (k0 > 0) fetch(k0);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = k0 + u * kChunk + lane * 8;
      if (kk >= K) break;
      float wf[8];
      widen8(*reinterpret_cast<const Pack8<T>*>(&wv[u]), wf);
#pragma unroll
      for (int m = 0; m < R; ++m) {
        if (m >= n) break;
        float xf[8];
        load8(x + m * ldx + kk, xf);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[m] = fmaf(xf[j], wf[j], acc[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < R; ++m) {
    if (m >= n) break;
    const float v = warp_sum(acc[m]);
    if (lane == 0 && col < E) logits[static_cast<int64_t>(m) * E + col] = v;
  }
  // The last CTA routes (every other CTA's logits are visible to it).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(r.ticket, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  if (warp < n) moe_route_token<kPerLane, T, true>(logits + static_cast<int64_t>(warp) * E, warp, E, k, norm, r);
  __threadfence();
  __syncthreads();
  moe_group_rows(n, E, k, r, s_cursor, s_scan);
}

/// Step 2 (see file comment): C columns per warp, D (expert, chunk) items of loads in flight.
template <int C, int D, class T>
__global__ void __launch_bounds__(128) moe_down_unpermute_kernel(const T* __restrict__ act, int64_t lda,
                                                                 const T* __restrict__ w, int64_t w_stride,
                                                                 const int32_t* __restrict__ ids,
                                                                 const float* __restrict__ weights,
                                                                 const int32_t* __restrict__ inv, int k, int H, int I,
                                                                 T* out, int64_t ldo) {
  constexpr int kChunk = 32 * 8;
  __shared__ int s_e[kMoeMaxTopK];
  __shared__ int s_pos[kMoeMaxTopK];
  __shared__ float s_w[kMoeMaxTopK];
  pdl_wait();  // act and the routing are the predecessors'
  pdl_launch_dependents();
  const int t = blockIdx.y, tid = threadIdx.x;
  moe_token_slots_by_expert<true>(ids, weights, inv, t, k, s_e, s_pos, s_w);  // ascending expert id
  const int warp = tid >> 5, lane = tid & 31;
  const int n0 = (blockIdx.x * 4 + warp) * C;
  if (n0 >= H) return;
  const int kc = (I + kChunk - 1) / kChunk;  // chunks per expert row
  const int S = k * kc;                      // items: (expert rank, chunk)
  uint4 wb[D][C], ab[D];
  auto fetch = [&](int d, int s) {
    if (s >= S) return;
    const int jj = s / kc;
    const int kk = (s - jj * kc) * kChunk + lane * 8;
    if (kk >= I) return;
    const T* we = w + static_cast<int64_t>(s_e[jj]) * w_stride + kk;
#pragma unroll
    for (int c = 0; c < C; ++c) wb[d][c] = load16_stream(we + static_cast<int64_t>(min(n0 + c, H - 1)) * I);
    ab[d] = *reinterpret_cast<const uint4*>(act + static_cast<int64_t>(s_pos[jj]) * lda + kk);
  };
  float part[C], acc[C];
#pragma unroll
  for (int c = 0; c < C; ++c) part[c] = acc[c] = 0.f;
#pragma unroll
  for (int d = 0; d < D; ++d) fetch(d, d);
  for (int base = 0; base < S; base += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int s = base + d;
      if (s >= S) break;
      const int jj = s / kc, ci = s - jj * kc;
      const int kk = ci * kChunk + lane * 8;
      if (kk < I) {
        float xf[8];
        widen8(*reinterpret_cast<const Pack8<T>*>(&ab[d]), xf);
#pragma unroll
        for (int c = 0; c < C; ++c) {
          float wf[8];
          widen8(*reinterpret_cast<const Pack8<T>*>(&wb[d][c]), wf);
#pragma unroll
          for (int j = 0; j < 8; ++j) part[c] = fmaf(xf[j], wf[j], part[c]);
        }
      }
      fetch(d, s + D);  // buffer d is free again
      if (ci == kc - 1) {  // the expert's last chunk: its y, rounded as stored, weighted in
        const float wt = s_w[jj];
#pragma unroll
        for (int c = 0; c < C; ++c) {
          const float y = to_f32(from_f32<T>(warp_sum(part[c])));
          acc[c] = fmaf(y, wt, acc[c]);
          part[c] = 0.f;
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < C; ++c)
    if (lane == c && n0 + c < H) out[static_cast<int64_t>(t) * ldo + n0 + c] = from_f32<T>(acc[c]);
}

}  // namespace detail

/// \brief True when moe_router_route() takes this call: n ≤ kMoeGemvMaxTokens, hidden a
/// multiple of 8, x and router rows 16-byte aligned.
template <class T>
bool moe_router_route_supported(TensorView<T> x, TensorView<T> router) {
  return x.rank == 2 && router.rank == 2 && x.shape[0] <= kMoeGemvMaxTokens && x.shape[1] % 8 == 0 &&
         x.stride[1] == 1 && router.stride[1] == 1 && x.stride[0] % 8 == 0 && router.stride[0] % 8 == 0 &&
         vec8_aligned(x.data) && vec8_aligned(router.data);
}

/// \brief Router logits (ws.logits(), fp32, as gemv() writes them) and the routing of n ≤
/// kMoeGemvMaxTokens tokens in one launch: the bits of gemv(logits, x, router) + moe_route
/// (see the file comment). x [n, H], router [E, H].
template <class T>
void moe_router_route(TensorView<T> x, TensorView<T> router, bool norm_topk_prob, MoeWorkspace<T>& ws,
                      cudaStream_t stream) {
  const int n = static_cast<int>(x.shape[0]);
  if (n == 0) return;
  const int E = ws.num_experts(), H = ws.hidden();
  PIE_CHECK(moe_router_route_supported(x, router) && x.shape[1] == H && router.shape[0] == E &&
                router.shape[1] == H,
            "moe_router_route: x [n ≤ ", kMoeGemvMaxTokens, ", ", H, "] and router [", E, ", ", H,
            "], rows contiguous and 16-byte aligned; got x [", x.shape[0], ", ", x.shape[1], "], router [",
            router.shape[0], ", ", router.shape[1], "]");
  using D = device_t<T>;
  const dim3 grid((E + 7) / 8);
  const int k = ws.top_k(), norm = norm_topk_prob ? 1 : 0;
  const D* xd = dev(x.data);
  const D* wd = dev(router.data);
  if (E <= 32)
    launch_pdl(detail::moe_router_route_kernel<1, D>, grid, dim3(256), 0, stream, xd, x.stride[0], wd,
               router.stride[0], n, H, E, k, norm, ws.logits(), ws.routing());
  else if (E <= 128)
    launch_pdl(detail::moe_router_route_kernel<4, D>, grid, dim3(256), 0, stream, xd, x.stride[0], wd,
               router.stride[0], n, H, E, k, norm, ws.logits(), ws.routing());
  else
    launch_pdl(detail::moe_router_route_kernel<8, D>, grid, dim3(256), 0, stream, xd, x.stride[0], wd,
               router.stride[0], n, H, E, k, norm, ws.logits(), ws.routing());
}

}  // namespace pie::ops::cuda
