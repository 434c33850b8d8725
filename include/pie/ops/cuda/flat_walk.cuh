#pragma once
/// \file flat_walk.cuh
/// \brief FlatWalk: one warp's walk over its (unit, step) positions in a one-row GEMV whose
/// resident CTAs' warps take units of rows (warp w of W: units w, w + W, …) and the K steps of
/// each, with two register buffers that run on across unit boundaries. The fp8 GEMV
/// (fp8_gemv.cuh, kFp8GridFlat) and the bf16 one (gemv.cuh, kFlat) walk the same way; the
/// buffers, loads and arithmetic stay theirs (the callbacks).
///
/// Why: dealt by row groups of a CTA, a GEMV whose N is not a multiple of the resident grid's
/// rows runs a last round with few CTAs busy (Qwen3-8B's qkv: 384 groups of 16 rows on ~264
/// CTAs), and a warp drains its buffers at every row group. Dealt by units of a warp, the rounds
/// even out, and the next unit's first chunks are in flight while the last unit's are consumed.

namespace pie::ops::cuda {

/// \brief Buffer A's and buffer B's positions along one warp's units (see the file comment).
struct FlatWalk {
  int units, steps, warps;  // units of the whole GEMV, K steps a unit, warps of the grid (W)
  int au, as, bu, bs;       // buffer A's (unit, step) and buffer B's, the position after A's

  /// Starts at unit `first` step 0 (A), B at the position after it.
  __device__ __forceinline__ FlatWalk(int units_, int steps_, int warps_, int first)
      : units(units_), steps(steps_), warps(warps_), au(first), as(0), bu(first), bs(0) {
    advance(bu, bs);
  }
  __device__ __forceinline__ void advance(int& u, int& s) const {
    if (++s == steps) s = 0, u += warps;
  }
  /// The walk, once both buffers hold their first positions (requested before the wait):
  /// consume_a(step) / consume_b(step) use a buffer, fetch_a(unit, step) / fetch_b(unit, step)
  /// refill one as soon as it is consumed with the position after the other's, store() ends a
  /// unit after its last step, enter(unit) starts one. A unit's steps are consumed in order, so
  /// each row sums its chunks in k order as any other walk would.
  template <class ConsumeA, class ConsumeB, class FetchA, class FetchB, class Store, class Enter>
  __device__ __forceinline__ void run(ConsumeA&& consume_a, ConsumeB&& consume_b, FetchA&& fetch_a, FetchB&& fetch_b,
                                      Store&& store, Enter&& enter) {
    if (au < units) enter(au);
    while (au < units) {
      consume_a(as);
      if (as == steps - 1) store();
      int nu = bu, ns = bs;  // A's next position: the one after B's
      advance(nu, ns);
      if (nu < units) fetch_a(nu, ns);
      if (bu >= units) break;
      if (bs == 0) enter(bu);
      consume_b(bs);
      if (bs == steps - 1) store();
      au = nu, as = ns, bu = nu, bs = ns;
      advance(bu, bs);
      if (bu < units) fetch_b(bu, bs);
      if (au < units && as == 0) enter(au);
    }
  }
};

}  // namespace pie::ops::cuda
