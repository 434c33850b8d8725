#pragma once
/// \file moe_routing.cuh
/// \brief The MoE block's routing on the GPU (moe.cuh has the whole block): the routing record,
/// its device workspace, and moe_route — softmax, top-k, renormalisation and the expert-grouped
/// order, built on the device without a host round trip (see moe.cuh's file comment, step 2).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/moe_decode_plan.hpp"

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

/// Step 2 for one token (one warp): its logits l [E] rounded to L, softmax, top-k (ties to the
/// lower id), optional renormalisation; writes ids/weights of token t, with kCount counts its
/// experts in the global counts (moe_group_rows scans them), and returns, in lane j < k, the
/// expert of slot j. kPerLane·32 ≥ E. Every routing kernel (moe_route_kernel, the one-CTA
/// moe_route_cta_kernel without kCount, the fused decode router of moe_decode.cuh) routes
/// through it, so all route bit for bit alike. kCoherent: the logits were written by other CTAs
/// of the same grid (the fused router), so they are read through L2 (ld.global.cg), not the
/// read-only path. write = false: nothing is written (a warp that only needs the experts, as the
/// gate_up GEMV's CTAs that route their token themselves: moe_route_single_token).
template <int kPerLane, class L, bool kCoherent = false, bool kCount = true>
__device__ __forceinline__ int moe_route_token(const float* __restrict__ l, int t, int E, int k, int norm,
                                               const MoeRouting& r, bool write = true) {
  const int lane = threadIdx.x & 31;
  float v[kPerLane];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    float x = -INFINITY;
    if (e < E) x = to_f32(from_f32<L>(kCoherent ? __ldcg(&l[e]) : l[e]));
    v[i] = x;
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
  for (int i = 0; i < kPerLane; ++i) {
    // taken/absent: −1. A NaN probability (a NaN router logit: a broken checkpoint) counts as 0,
    // so the top-k still picks k distinct experts in range: a NaN would lose every comparison
    // below and leave the id at 0x7fffffff, an out-of-bounds count that kills the CUDA context.
    const float p = v[i] / sum;
    v[i] = lane + 32 * i < E ? (isnan(p) ? 0.f : p) : -1.f;
  }
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
  if (write && lane < k) {
    const int64_t i = static_cast<int64_t>(t) * k + lane;
    r.ids[i] = my_id;
    r.weights[i] = norm ? my_w / chosen : my_w;
    if constexpr (kCount) atomicAdd(&r.counts[my_id], 1);
  }
  return my_id;
}

/// The routing of a call's one token (n = 1) inside every CTA of a grid (the gate_up GEMV's
/// prologue: moe_gemv_routed_kernel), without a routing kernel before it: every warp routes the
/// token from its logits as moe_route_cta_kernel does (moe_route_token: the same ids and
/// weights), ranks its k distinct experts by id, and returns the expert of grouped slot `slot`
/// (the slot-th smallest id: the routing's active[slot]), or −1 when slot ≥ k. With `write` (one
/// CTA of the grid; uniform over the CTA) it also writes the whole record that
/// moe_route_cta_kernel writes for n = 1, so the kernels after it (down, un-permute) read the
/// same routing: ids and weights (warp 0), offsets and tile offsets (slot rank: one row and one
/// tile per chosen expert), the active list and its count, perm (every row is token 0) and inv.
/// The counts and ticket are not touched (they stay zero). Every thread of the CTA calls it.
template <int kPerLane, class L>
__device__ __forceinline__ int moe_route_single_token(const float* __restrict__ logits, int E, int k, int norm,
                                                      const MoeRouting& r, int slot, bool write) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int id = moe_route_token<kPerLane, L, false, false>(logits, 0, E, k, norm, r, write && warp == 0);
  int rank = 0;  // lane j < k: slots of smaller id (the ids are distinct)
  for (int m = 0; m < k; ++m) rank += __shfl_sync(0xffffffffu, id, m) < id;
  const unsigned hit = __ballot_sync(0xffffffffu, lane < k && rank == slot);
  const int e = hit ? __shfl_sync(0xffffffffu, id, __ffs(hit) - 1) : -1;
  if (write) {
    if (warp == 0 && lane < k) {
      r.active[rank] = id;
      r.perm[rank] = 0;
      r.inv[lane] = rank;
    }
    for (int base = 0; base <= E; base += blockDim.x) {  // uniform trips: every lane shuffles
      const int x = base + static_cast<int>(threadIdx.x);
      int below = 0;
      for (int m = 0; m < k; ++m) below += __shfl_sync(0xffffffffu, id, m) < x;
      if (x <= E) {
        r.offsets[x] = below;
        r.tile_offsets[x] = below;
      }
    }
    if (threadIdx.x == 0) r.active[E] = k;
  }
  return e;
}

/// Token t's k routing slots in ascending expert id (its ids are distinct), the order in which
/// the un-permute sums them: threads j < k read slot j and write its grouped row (`inv`) and
/// weight at their rank into s_pos / s_w, and with kIds its expert id into s_id too (s_id holds
/// the unsorted ids otherwise). Every thread of the block calls it (barriers).
template <bool kIds>
__device__ __forceinline__ void moe_token_slots_by_expert(const int32_t* __restrict__ ids,
                                                          const float* __restrict__ weights,
                                                          const int32_t* __restrict__ inv, int t, int k, int* s_id,
                                                          int* s_pos, float* s_w) {
  const int j = threadIdx.x;
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
  int rank = 0;
  if (j < k)
    for (int m = 0; m < k; ++m) rank += s_id[m] < my_id;
  if constexpr (kIds) __syncthreads();  // every rank is read before s_id is rewritten
  if (j < k) {
    if constexpr (kIds) s_id[rank] = my_id;
    s_pos[rank] = my_pos;
    s_w[rank] = my_w;
  }
  __syncthreads();
}

/// Step 2's grouping, by the last CTA of a routing grid (256 threads; every token's ids and
/// counts visible to it): scans the counts into offsets, tile offsets and the active list,
/// scatters the (token, slot) pairs to their grouped rows, and resets counts and ticket.
__device__ __forceinline__ void moe_group_rows(int n, int E, int k, const MoeRouting& r, int* s_cursor, int* s_scan) {
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
  const int warp = threadIdx.x >> 5;
  const int t = blockIdx.x * 8 + warp;
  if (t < n) moe_route_token<kPerLane, L>(logits + static_cast<int64_t>(t) * E, t, E, k, norm, r);
  // The last CTA groups the rows (every other CTA's ids and counts are visible to it).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(r.ticket, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!s_last) return;
  moe_group_rows(n, E, k, r, s_cursor, s_scan);
}

/// Step 2 for n ≤ kMoeGemvMaxTokens in one CTA (moe_route's one_cta): no global atomics,
/// threadfence or ticket. Warp t routes token t as moe_route_kernel does (moe_route_token
/// without kCount: the same ids and weights) and marks bit t of its experts' token masks in shared memory; then
/// thread e scans the masks' popcounts into the offsets, and lane j of warp t places its slot at
/// offsets[e] + (tokens before t that chose e): an expert's rows in token order. Each token takes
/// an expert at most once, so an expert has at most n ≤ 8 < kMoeTileM rows: one tile when it has
/// any, and the tile offsets equal the active list's offsets (one scan computes both, rows in the
/// low 16 bits, experts in the high). The counts and ticket are not touched (they stay zero).
template <int kPerLane, class L>
__global__ void __launch_bounds__(256) moe_route_cta_kernel(const float* __restrict__ logits, int n, int E, int k,
                                                            int norm, MoeRouting r) {
  static_assert(kMoeGemvMaxTokens <= 8 && kMoeGemvMaxTokens <= kMoeTileM, "a token mask per expert, one tile each");
  static_assert(kMoeMaxExperts == 256 && kMoeMaxTopK <= 32, "one thread per expert, one lane per slot");
  __shared__ unsigned s_tokens[kMoeMaxExperts];  // bit t: token t chose the expert
  __shared__ int s_off[kMoeMaxExperts];
  __shared__ int s_scan[8];
  pdl_wait();  // the logits are the predecessor's
  pdl_launch_dependents();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  s_tokens[threadIdx.x] = 0u;
  __syncthreads();
  int mine = 0;  // lane j < k of warp t < n: the expert of slot (t, j)
  if (warp < n) {
    mine = moe_route_token<kPerLane, L, false, false>(logits + static_cast<int64_t>(warp) * E, warp, E, k, norm, r);
    if (lane < k) atomicOr(&s_tokens[mine], 1u << warp);
  }
  __syncthreads();
  const int e = threadIdx.x;
  const int cnt = e < E ? __popc(s_tokens[e]) : 0;
  int total = 0;
  const int packed = block_exclusive_scan256(cnt | (cnt > 0 ? 1 << 16 : 0), s_scan, total);
  const int off = packed & 0xffff, aoff = packed >> 16;
  if (e < E) {
    r.offsets[e] = off;
    r.tile_offsets[e] = aoff;
    if (cnt > 0) r.active[aoff] = e;
    s_off[e] = off;
  }
  if (e == 0) {
    r.offsets[E] = total & 0xffff;
    r.tile_offsets[E] = total >> 16;
    r.active[E] = total >> 16;
  }
  __syncthreads();
  if (warp < n && lane < k) {
    const int pos = s_off[mine] + __popc(s_tokens[mine] & ((1u << warp) - 1u));
    r.perm[pos] = warp;
    r.inv[warp * k + lane] = pos;
  }
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
    tickets_ = DeviceBuffer<int32_t>(static_cast<size_t>(hidden + 7) / 8);
    PIE_CUDA_CHECK(cudaMemset(ints_.data(), 0, ints_.size() * sizeof(int32_t)));
    PIE_CUDA_CHECK(cudaMemset(tickets_.data(), 0, tickets_.size() * sizeof(int32_t)));
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
    return ints_.size() * 4 + tickets_.size() * 4 + weights_.size() * 4 + logits_.size() * 4 +
           (act_.size() + y_.size()) * sizeof(T);
  }
  /// One ticket per column block of the down GEMV ([(hidden + 7) / 8], zero between calls): the
  /// un-permute in down's last CTAs (MoeExperts::down_unpermute_in_last_ctas).
  int32_t* down_tickets() { return tickets_.data(); }
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
  DeviceBuffer<int32_t> ints_, tickets_;
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
///
/// one_cta (the engine's PIE_MOE_ROUTE=cta, opt-in until measured; compiled only with
/// PIE_MOE_DECODE_VARIANTS, moe_decode::kVariantsCompiled): n ≤ kMoeGemvMaxTokens
/// routes in one CTA with its counts in shared memory (detail::moe_route_cta_kernel) instead of
/// global atomics, a ticket and a re-read by the last CTA: the same ids, weights, offsets, tile
/// offsets and active list; an expert's grouped rows in token order, where moe_route_kernel
/// leaves them in the order its shared-memory atomics ran (no product depends on that order: a
/// grouped row's result depends on that row only, and the un-permute reads rows through inv).
template <class T>
void moe_route(int n, bool norm_topk_prob, MoeWorkspace<T>& ws, cudaStream_t stream, bool one_cta = false) {
  if (n == 0) return;
  using D = device_t<T>;
  const int E = ws.num_experts();
  const dim3 grid((n + 7) / 8);
  const float* logits = ws.logits();
  const int k = ws.top_k(), norm = norm_topk_prob ? 1 : 0;
  if constexpr (moe_decode::kVariantsCompiled) {  // an opt-in variant: compiled when asked for
    if (one_cta && n <= kMoeGemvMaxTokens) {
      auto* kernel = E <= 32    ? detail::moe_route_cta_kernel<1, D>
                     : E <= 128 ? detail::moe_route_cta_kernel<4, D>
                                : detail::moe_route_cta_kernel<8, D>;
      launch_pdl(kernel, dim3(1), dim3(256), 0, stream, logits, n, E, k, norm, ws.routing());
      return;
    }
  } else {
    PIE_CHECK(!one_cta, "moe_route: one_cta needs a build with -DPIE_MOE_DECODE_VARIANTS=ON");
  }
  if (E <= 32) launch_pdl(detail::moe_route_kernel<1, D>, grid, dim3(256), 0, stream, logits, n, E, k, norm, ws.routing());
  else if (E <= 128) launch_pdl(detail::moe_route_kernel<4, D>, grid, dim3(256), 0, stream, logits, n, E, k, norm, ws.routing());
  else launch_pdl(detail::moe_route_kernel<8, D>, grid, dim3(256), 0, stream, logits, n, E, k, norm, ws.routing());
}

}  // namespace pie::ops::cuda
