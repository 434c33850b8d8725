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
///
/// Decode sizes, fused (moe_decode.cuh; the engine takes it with PIE_MOE_DECODE=fused): steps
/// 1 + 2 in one kernel (moe_router_route) and the down product + step 4 in one
/// (MoeExperts::down_unpermute), with the bits of the unfused gemv path.
///
/// Headers: moe_routing.cuh (step 2 and the workspace), moe_grouped_gemm.cuh (3),
/// moe_unpermute.cuh (4), moe_decode.cuh (the fused decode kernels); this one plans and
/// launches the experts' stages.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "pie/core/error.hpp"
#include "pie/core/tensor.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/moe_decode.cuh"
#include "pie/ops/cuda/moe_decode_plan.hpp"
#include "pie/ops/cuda/moe_grouped_gemm.cuh"
#include "pie/ops/cuda/moe_routing.cuh"
#include "pie/ops/cuda/moe_unpermute.cuh"

namespace pie::ops::cuda {

namespace detail {
/// The grouped-product launches of one call: the parameters of both products, and which path.
template <class T>
struct MoePlan {
  MoeGemmParams<device_t<T>> gu, dn;
  int n, rows, slots, E, H, I;
  bool gemv;
  int gate_up_u;  ///< the gate_up GEMV's chunks in flight: 4, 2, or 0 (pick by wave count)
  int down_c;     ///< the down GEMV's columns per warp: 2, 4 (n ≤ 2), or 0 (pick by wave count)
  bool x_ahead;   ///< n ≤ 2: the GEMVs load row chunks with the weights (moe_gemv_ahead_kernel)
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
                    n, rows, std::min(E, rows), E, H, I, use_gemv && n <= kMoeGemvMaxTokens, 4, 2, false};
}

/// CTAs of the 128-thread kernel `Kernel` (no dynamic shared memory) resident per SM, at least 1
/// (cached per kernel): what the grouped GEMVs' wave counts are computed from.
template <auto Kernel>
int moe_kernel_ctas_per_sm() {
  static const int v = [] {
    int c = 0;
    PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&c, Kernel, 128, 0));
    return std::max(c, 1);
  }();
  return v;
}
/// moe_kernel_ctas_per_sm of the kernel launch_moe_gemv_shape takes: moe_gemv_kernel<R, C, U, kUp,
/// kUp>, or with `ahead` moe_gemv_ahead_kernel (R ≤ 2).
template <int R, int C, int U, bool kUp, class D>
int moe_gemv_ctas_per_sm(bool ahead) {
  if constexpr (R <= 2) {
    if (ahead) return moe_kernel_ctas_per_sm<moe_gemv_ahead_kernel<R, C, U, kUp, kUp, D>>();
  }
  return moe_kernel_ctas_per_sm<moe_gemv_kernel<R, C, U, kUp, kUp, D>>();
}

/// The grouped GEMV. gate_up takes U = 2 chunks in flight instead of 4 when asked (u = 2), or
/// (u = 0) when that needs fewer waves: at batch 1 of Qwen3-30B-A3B its grid is 96 × 8 = 768
/// CTAs, and U = 4's 92 registers fit 5 CTAs per SM (660 on 132 SMs), so a second wave of 108
/// CTAs ran behind the first; U = 2's fewer registers fit the grid in one wave (gemv.cuh's lean
/// configuration, same reasoning). A lane sums its chunks in increasing k either way: same bits.
/// down takes 4 columns per warp with 2 chunks in flight instead of 2 with 4 when asked (c = 4)
/// or (c = 0) when that needs fewer waves, at n ≤ 2 only (n = 1: 2048 CTAs, 2 waves → 1024, 1;
/// moe_decode::down_columns); a column's sum does not depend on C: same bits.
/// With `ahead` (n ≤ 2) each takes moe_gemv_ahead_kernel of the same shape: row chunks loaded
/// with the weights (moe_grouped_gemm.cuh), the same bits; the wave counts are then the ahead
/// kernels' (more registers: at n = 2 gate_up U 2 holds 95 against 79).
template <int R, int C, int U, bool kUp, class D>
void launch_moe_gemv_shape(const MoeGemmParams<D>& p, dim3 grid, bool ahead, cudaStream_t s) {
  if constexpr (R <= 2) {  // the ahead kernels are instantiated for n ≤ 2 only
    if (ahead) return launch_pdl(moe_gemv_ahead_kernel<R, C, U, kUp, kUp, D>, grid, dim3(128), 0, s, p);
  }
  launch_pdl(moe_gemv_kernel<R, C, U, kUp, kUp, D>, grid, dim3(128), 0, s, p);
}
/// The variants (u ≠ 4, c ≠ 2, ahead) are compiled only with PIE_MOE_DECODE_VARIANTS
/// (moe_decode::kVariantsCompiled; MoeExperts refuses them otherwise): without it this is the
/// default kernel alone.
template <int R, bool kUp, class D>
void launch_moe_gemv(const MoeGemmParams<D>& p, int slots, int u, int c, bool ahead, cudaStream_t s) {
  const dim3 grid((p.n_out + 7) / 8, slots);
  if constexpr (!moe_decode::kVariantsCompiled) {
    (void)u, (void)c, (void)ahead;
    launch_pdl(moe_gemv_kernel<R, 2, 4, kUp, kUp, D>, grid, dim3(128), 0, s, p);
  } else {
    if constexpr (kUp) {
      if (u == 0) {
        u = moe_decode::gate_up_unroll(int64_t(grid.x) * grid.y, moe_gemv_ctas_per_sm<R, 2, 4, kUp, D>(ahead),
                                       moe_gemv_ctas_per_sm<R, 2, 2, kUp, D>(ahead), num_sms());
      }
      if (u == 2) return launch_moe_gemv_shape<R, 2, 2, kUp>(p, grid, ahead, s);
    } else if constexpr (R <= 2) {
      const dim3 grid4((p.n_out + 15) / 16, slots);
      if (c == 0) {
        c = moe_decode::down_columns(int64_t(grid.x) * grid.y, moe_gemv_ctas_per_sm<R, 2, 4, false, D>(ahead),
                                     int64_t(grid4.x) * grid4.y, moe_gemv_ctas_per_sm<R, 4, 2, false, D>(ahead),
                                     num_sms());
      }
      if (c == 4) return launch_moe_gemv_shape<R, 4, 2, false>(p, grid4, ahead, s);
    }
    launch_moe_gemv_shape<R, 2, 4, kUp>(p, grid, ahead, s);
  }
}

/// The gate_up GEMV with the routing inside (n = 1): U by wave count unless u is 2 or 4, as
/// launch_moe_gemv; kPerLane·32 ≥ E.
template <int kPerLane, class D>
void launch_moe_gemv_routed(const MoeGemmParams<D>& p, const MoeGemvRoute& q, int slots, int u, cudaStream_t s) {
  const dim3 grid((p.n_out + 7) / 8, slots);
  if (u == 0)
    u = moe_decode::gate_up_unroll(int64_t(grid.x) * grid.y,
                                   moe_kernel_ctas_per_sm<moe_gemv_routed_kernel<2, 4, kPerLane, D>>(),
                                   moe_kernel_ctas_per_sm<moe_gemv_routed_kernel<2, 2, kPerLane, D>>(), num_sms());
  if (u == 2) launch_pdl(moe_gemv_routed_kernel<2, 2, kPerLane, D>, grid, dim3(128), 0, s, p, q);
  else launch_pdl(moe_gemv_routed_kernel<2, 4, kPerLane, D>, grid, dim3(128), 0, s, p, q);
}

/// The down GEMV with the un-permute in its last CTAs (n = 1): 2 columns per warp with 4 chunks
/// in flight, or 4 with 2 when c is 4 or (c = 0) when that needs fewer waves, as launch_moe_gemv.
template <bool kEarly, class D>
void launch_moe_gemv_down_tail(const MoeGemmParams<D>& p, const MoeDownTail<D>& t, int slots, int c, cudaStream_t s) {
  const dim3 grid2((p.n_out + 7) / 8, slots), grid4((p.n_out + 15) / 16, slots);
  if (c == 0)
    c = moe_decode::down_columns(int64_t(grid2.x) * grid2.y,
                                 moe_kernel_ctas_per_sm<moe_gemv_down_tail_kernel<2, 4, kEarly, D>>(),
                                 int64_t(grid4.x) * grid4.y,
                                 moe_kernel_ctas_per_sm<moe_gemv_down_tail_kernel<4, 2, kEarly, D>>(), num_sms());
  if (c == 4) launch_pdl(moe_gemv_down_tail_kernel<4, 2, kEarly, D>, grid4, dim3(128), 0, s, p, t);
  else launch_pdl(moe_gemv_down_tail_kernel<2, 4, kEarly, D>, grid2, dim3(128), 0, s, p, t);
}

/// One grouped product: gate_up (+SwiGLU, rows gathered through perm) or down.
template <bool kUp, class T>
void moe_product(const MoePlan<T>& pl, cudaStream_t s) {
  using D = device_t<T>;
  const MoeGemmParams<D>& p = kUp ? pl.gu : pl.dn;
  if (pl.gemv) {
    const int u = pl.gate_up_u, c = pl.down_c;
    const bool a = pl.x_ahead;
    if (pl.n == 1) launch_moe_gemv<1, kUp>(p, pl.slots, u, c, a, s);
    else if (pl.n == 2) launch_moe_gemv<2, kUp>(p, pl.slots, u, c, a, s);
    else if (pl.n <= 4) launch_moe_gemv<4, kUp>(p, pl.slots, u, c, a, s);
    else launch_moe_gemv<8, kUp>(p, pl.slots, u, c, a, s);
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
/// \param gate_up_u the gate_up GEMV's chunks in flight per lane: 4 (the default), 2, or 0 to
/// pick by wave count (launch_moe_gemv); the bits are the same for all three
/// \param down_c the down GEMV's columns per warp: 2 (the default), 4 (n ≤ 2; above, 2), or 0
/// to pick by wave count at n ≤ 2 (launch_moe_gemv); the bits are the same for all three
/// \param x_ahead at n ≤ 2, both GEMVs load their row chunks with the weights
/// (moe_gemv_ahead_kernel); the same bits
template <class T>
class MoeExperts {
 public:
  MoeExperts(TensorView<T> x, TensorView<T> gate_up, TensorView<T> down, MoeWorkspace<T>& ws, TensorView<T> out,
             bool use_gemv, int gate_up_u = 4, int down_c = 2, bool x_ahead = false)
      : ws_(ws), out_(out), plan_(detail::moe_plan(x, gate_up, down, ws, out, use_gemv)) {
    PIE_CHECK(gate_up_u == 0 || gate_up_u == 2 || gate_up_u == 4, "moe_experts: gate_up_u is 0, 2 or 4, not ",
              gate_up_u);
    PIE_CHECK(down_c == 0 || down_c == 2 || down_c == 4, "moe_experts: down_c is 0, 2 or 4, not ", down_c);
    PIE_CHECK(moe_decode::kVariantsCompiled || (gate_up_u == 4 && down_c == 2 && !x_ahead),
              "moe_experts: gate_up_u ", gate_up_u, ", down_c ", down_c, ", x_ahead ", x_ahead,
              " need a build with -DPIE_MOE_DECODE_VARIANTS=ON");
    plan_.gate_up_u = gate_up_u;
    plan_.down_c = down_c;
    plan_.x_ahead = x_ahead;
  }
  void gate_up(cudaStream_t s) const { if (plan_.n > 0) detail::moe_product<true>(plan_, s); }
  /// Whether gate_up_routed() takes a call of n tokens and E experts: n = 1 on the GEMV path, in
  /// a build with the decode variants (moe_decode::kVariantsCompiled).
  static bool routed_gate_up_supported(int n, int E, bool use_gemv) {
    return moe_decode::kVariantsCompiled && n == 1 && use_gemv && E <= kMoeMaxExperts;
  }
  /// moe_route then gate_up() in one kernel for a one-token call (the engine's
  /// PIE_MOE_ROUTE=gate_up): every CTA of the gate_up GEMV routes the token from ws.logits()
  /// itself, and CTA (0, 0) writes the routing record moe_route(one_cta) writes, for down() and
  /// unpermute() after it — the same ids, weights, record and act bits
  /// (MoeRoute.InGateUpEqualsOneCta), one launch and one grid dependency fewer. The row chunks
  /// are loaded with the weights (x_ahead's kernel) whatever x_ahead says: the same bits.
  void gate_up_routed(bool norm_topk_prob, cudaStream_t s) const {
    PIE_CHECK(routed_gate_up_supported(plan_.n, plan_.E, plan_.gemv), "moe_experts: the routing inside gate_up takes "
              "one token on the GEMV path in a build with -DPIE_MOE_DECODE_VARIANTS=ON, not n ", plan_.n);
    if constexpr (moe_decode::kVariantsCompiled) {
      using D = device_t<T>;
      const detail::MoeGemvRoute q{ws_.logits(), ws_.routing(), ws_.top_k(), norm_topk_prob ? 1 : 0};
      if (plan_.E <= 128) detail::launch_moe_gemv_routed<4>(plan_.gu, q, plan_.slots, plan_.gate_up_u, s);
      else detail::launch_moe_gemv_routed<8>(plan_.gu, q, plan_.slots, plan_.gate_up_u, s);
    }
  }
  void down(cudaStream_t s) const { if (plan_.n > 0) detail::moe_product<false>(plan_, s); }
  /// Whether down_unpermute_in_last_ctas() takes a call of n tokens: as gate_up_routed (n = 1
  /// on the GEMV path, a build with the decode variants).
  static bool unpermute_in_down_supported(int n, bool use_gemv) {
    return moe_decode::kVariantsCompiled && n == 1 && use_gemv;
  }
  /// down() then unpermute() in one kernel for a one-token call (the engine's
  /// PIE_MOE_UNPERMUTE=down): the last of each column block's k CTAs sums the token's rows of its
  /// columns (moe_gemv_down_tail_kernel) — their bits (MoeExperts.UnpermuteInDownEqualsKernel),
  /// one launch and one grid dependency fewer. Row chunks loaded with the weights whatever
  /// x_ahead says; columns per warp as down() (down_c). `early_weights`: the routing came from
  /// moe_route (not gate_up_routed), so the kernel reads it and loads its first weights before
  /// its grid dependency on gate_up (moe_gemv_body's kEarly); the same bits.
  /// `dependents_at_start`: the next kernel (the next layer's qkv GEMV) may launch at this one's
  /// start instead of after its products.
  void down_unpermute_in_last_ctas(cudaStream_t s, bool early_weights = false, bool dependents_at_start = false) const {
    PIE_CHECK(unpermute_in_down_supported(plan_.n, plan_.gemv), "moe_experts: the un-permute in down's last CTAs "
              "takes one token on the GEMV path in a build with -DPIE_MOE_DECODE_VARIANTS=ON, not n ", plan_.n);
    if constexpr (moe_decode::kVariantsCompiled) {
      using D = device_t<T>;
      const MoeRouting& r = ws_.routing();
      const detail::MoeDownTail<D> t{r.inv, r.weights, ws_.top_k(), ws_.down_tickets(), dev(out_.data),
                                     dependents_at_start ? 1 : 0};
      if (early_weights) detail::launch_moe_gemv_down_tail<true>(plan_.dn, t, plan_.slots, plan_.down_c, s);
      else detail::launch_moe_gemv_down_tail<false>(plan_.dn, t, plan_.slots, plan_.down_c, s);
    }
  }
  /// The down GEMV with C output columns per warp and U 256-element chunks of K per load round
  /// (down() takes C = 2, U = 4), and with kXAhead the act chunks loaded with the weights
  /// (moe_gemv_ahead_kernel), for bench/cuda/bench_moe_decode.cu's variants. A column's sum is
  /// the same for every C, U and kXAhead (a lane adds its chunks in increasing k, then the warp
  /// butterfly), so the bits are down()'s. Gemv path only (n ≤ kMoeGemvMaxTokens).
  template <int C, int U, bool kXAhead = false>
  void down_cfg(cudaStream_t s) const { gemv_cfg<C, U, false, kXAhead>(s); }
  /// gate_up(+SwiGLU) GEMV with U chunks in flight and kXAhead (see down_cfg): gate_up()'s bits.
  template <int U, bool kXAhead>
  void gate_up_cfg(cudaStream_t s) const { gemv_cfg<2, U, true, kXAhead>(s); }
  /// Down and the un-permute in one kernel (moe_decode.cuh, step 2), for n ≤
  /// kMoeGemvMaxTokens: the bits of down(s) then unpermute(s) on the gemv path; y is not used.
  /// C output columns per warp, kD (expert, chunk) items of loads in flight (moe_decode.cuh);
  /// the default is 1 column, 8 items: 512 CTAs at H = 2048, n = 1 (about 4 per SM, 8 MB of
  /// weight loads in flight), where 2 columns give 256 CTAs (1 or 2 per SM). The bits do not
  /// depend on C or kD. bench/cuda/bench_moe_decode.cu times the others.
  static bool fused_down_supported(int n) { return n >= 0 && n <= kMoeGemvMaxTokens; }
  void down_unpermute(cudaStream_t s) const { down_unpermute_cfg<1, 8>(s); }
  template <int C, int kD>
  void down_unpermute_cfg(cudaStream_t s) const {
    if (plan_.n == 0) return;
    PIE_CHECK(fused_down_supported(plan_.n), "moe_experts: the fused down + un-permute takes n ≤ ",
              kMoeGemvMaxTokens, ", not ", plan_.n);
    using D = device_t<T>;
    const MoeRouting& r = ws_.routing();
    launch_pdl(detail::moe_down_unpermute_kernel<C, kD, D>,
               dim3(moe_decode::down_split(plan_.H, plan_.I, ws_.top_k(), C).ctas_x, plan_.n),
               dim3(128), 0, s, static_cast<const D*>(dev(ws_.act())), int64_t{plan_.I}, plan_.dn.w,
               plan_.dn.w_stride, static_cast<const int32_t*>(r.ids), static_cast<const float*>(r.weights),
               static_cast<const int32_t*>(r.inv), ws_.top_k(), plan_.H, plan_.I, dev(out_.data), out_.stride[0]);
  }
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
  template <int C, int U, bool kUp, bool kXAhead>
  void gemv_cfg(cudaStream_t s) const {
    if (plan_.n == 0) return;
    PIE_CHECK(plan_.gemv, "moe_experts: the GEMV variants are the GEMV path's (n ≤ ", kMoeGemvMaxTokens, "), not n ",
              plan_.n);
    using D = device_t<T>;
    const detail::MoeGemmParams<D>& p = kUp ? plan_.gu : plan_.dn;
    const dim3 grid((p.n_out + 4 * C - 1) / (4 * C), plan_.slots);
    auto pick = [&](auto r) {
      constexpr int R = decltype(r)::value;
      if constexpr (kXAhead) return detail::moe_gemv_ahead_kernel<R, C, U, kUp, kUp, D>;
      else return detail::moe_gemv_kernel<R, C, U, kUp, kUp, D>;
    };
    auto* kernel = plan_.n == 1   ? pick(std::integral_constant<int, 1>{})
                   : plan_.n == 2 ? pick(std::integral_constant<int, 2>{})
                   : plan_.n <= 4 ? pick(std::integral_constant<int, 4>{})
                                  : pick(std::integral_constant<int, 8>{});
    launch_pdl(kernel, grid, dim3(128), 0, s, p);
  }

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
