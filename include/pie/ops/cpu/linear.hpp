#pragma once
/// \file linear.hpp
/// \brief y = x·Wᵀ (+ b) over all tokens of a step, W row-major [out, in] as in the checkpoint.
///
/// Why not Eigen's GEMM: Eigen picks its blocking and its remainder micro-kernels from the
/// matrix shape, so the float sum that produces y[t, o] depends on how many rows the step has
/// and where row t falls in them. A token's logits would then change with the batch around it,
/// and greedy decoding would not be batch invariant. Here every y[t, o] is one dot product in
/// a fixed order (8 interleaved partial sums over k, reduced as a fixed tree), whatever the
/// number of rows, the tile a row lands in, or the thread count. Tiles of 4 rows × 2 outputs
/// (16 accumulator vectors of 4 lanes, measured fastest of 1..8 × 1..4 with baseline SSE2: about
/// Eigen's own GEMM speed) keep x and W in registers/L1; threads split the output features.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "pie/core/dtype.hpp"
#include "pie/ops/cpu/parallel.hpp"

namespace pie::ops::cpu {

namespace detail {
constexpr int kLanes = 8;

inline float reduce_lanes(const float* a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/// y[r, c] for R rows of x and C rows of W; each element summed as lane l ← k ≡ l (mod 8).
template <int R, int C, class T>
inline void dot_tile(const float* const* xr, const T* const* wr, int k, float (*out)[C]) {
  float acc[R][C][kLanes] = {};
  float wf[C][kLanes];
  int i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    for (int c = 0; c < C; ++c)
      for (int l = 0; l < kLanes; ++l) wf[c][l] = to_float(wr[c][i + l]);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c)
        for (int l = 0; l < kLanes; ++l) acc[r][c][l] += xr[r][i + l] * wf[c][l];
  }
  for (int l = 0; i < k; ++i, ++l)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c][l & (kLanes - 1)] += xr[r][i] * to_float(wr[c][i]);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r][c] = reduce_lanes(acc[r][c]);
}

template <int R, int C, class T>
inline void linear_tile(const float* x, int64_t x_stride, int t0, const T* w, int64_t in, int o0,
                        const T* bias, float* y, int64_t y_stride) {
  const float* xr[R];
  const T* wr[C];
  for (int r = 0; r < R; ++r) xr[r] = x + (t0 + r) * x_stride;
  for (int c = 0; c < C; ++c) wr[c] = w + (o0 + c) * in;
  float out[R][C];
  dot_tile<R, C>(xr, wr, static_cast<int>(in), out);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      y[(t0 + r) * y_stride + o0 + c] = bias ? out[r][c] + to_float(bias[o0 + c]) : out[r][c];
}

template <int C, class T>
inline void linear_rows(const float* x, int64_t x_stride, int n, const T* w, int64_t in, int o0,
                        const T* bias, float* y, int64_t y_stride) {
  int t = 0;
  for (; t + 4 <= n; t += 4) linear_tile<4, C>(x, x_stride, t, w, in, o0, bias, y, y_stride);
  for (; t < n; ++t) linear_tile<1, C>(x, x_stride, t, w, in, o0, bias, y, y_stride);
}
}  // namespace detail

/// \brief y[t, o] = Σ_k x[t, k]·W[o, k] (+ bias[o]) for t < n, o < out.
/// \tparam T weight element type (float, f16, bf16); accumulation is float.
/// \param x [n, in] float, row stride x_stride (0 → in)
/// \param w [out, in] row-major
/// \param bias [out] or nullptr
/// \param y [n, out] float, row stride y_stride (0 → out); must not alias x
template <class T>
inline void linear(const float* x, int n, int in, const T* w, int out, const T* bias, float* y,
                   int64_t x_stride = 0, int64_t y_stride = 0) {
  if (x_stride == 0) x_stride = in;
  if (y_stride == 0) y_stride = out;
  if (n == 0 || out == 0) return;
  // Output-feature chunks: even, so every chunk but the last uses full tiles; sized
  // so each thread gets several chunks (load balance) while W rows stay streamed once per chunk.
  constexpr int kChunk = 64;
  int64_t chunks = (out + kChunk - 1) / kChunk;
  parallel_for(chunks, [&](int64_t ci) {
    int o0 = static_cast<int>(ci * kChunk);
    int o1 = std::min(out, o0 + kChunk);
    int o = o0;
    for (; o + 2 <= o1; o += 2) detail::linear_rows<2>(x, x_stride, n, w, in, o, bias, y, y_stride);
    for (; o < o1; ++o) detail::linear_rows<1>(x, x_stride, n, w, in, o, bias, y, y_stride);
  }, int64_t{2} * n * in * kChunk);
}

}  // namespace pie::ops::cpu
