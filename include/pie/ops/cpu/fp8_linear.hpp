#pragma once
/// \file fp8_linear.hpp
/// \brief The CPU reference of the fp8 linear layer (core/fp8_weight.hpp): the scheme the GPU
/// runs, in fp32 arithmetic. Activations are quantized per token and group exactly as the GPU
/// quantizes them (same scale expression, e4m3 round-to-nearest-even with saturation), then
/// dequantized; weights are dequantized; the product is ops::cpu::linear's fixed-order fp32 GEMM.
/// Only the GEMM's summation order differs from the GPU, whose tensor cores sum each 128-wide
/// block and scale it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cpu/linear.hpp"

namespace pie::ops::cpu {

/// The e4m3 value of x / scale (what the GPU stores), as float.
inline float fp8_round(float x, float scale) { return fp8_e4m3::to_float(fp8_e4m3::from_float(x / scale)); }

/// Quantizes rows of x (n × K, row stride x_stride) per `group` columns: q[t, k] = e4m3(x / s),
/// s = fp8_group_scale(max |x| over the group). Writes the codes (n × K contiguous) and the
/// scales (n × ceil(K / group), row-major); either may be null.
inline void fp8_quantize_rows(const float* x, int64_t x_stride, int n, int K, int group, fp8_e4m3* q, float* scales) {
  PIE_CHECK(group > 0, "fp8_quantize_rows: group must be positive");
  const int groups = (K + group - 1) / group;
  for (int t = 0; t < n; ++t) {
    const float* r = x + t * x_stride;
    for (int g = 0; g < groups; ++g) {
      const int k0 = g * group, k1 = std::min(K, k0 + group);
      float amax = 0.0f;
      for (int k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(r[k]));
      const float s = fp8_group_scale(amax);
      if (scales) scales[static_cast<int64_t>(t) * groups + g] = s;
      if (q)
        for (int k = k0; k < k1; ++k) q[static_cast<int64_t>(t) * K + k] = fp8_e4m3(r[k] / s);
    }
  }
}

/// x quantized per `group` and dequantized: out[t, k] = float(e4m3(x / s))·s (n × K contiguous).
inline void fp8_fake_quantize_rows(const float* x, int64_t x_stride, int n, int K, int group, float* out) {
  const int groups = (K + group - 1) / group;
  std::vector<float> s(static_cast<size_t>(n) * groups);
  fp8_quantize_rows(x, x_stride, n, K, group, nullptr, s.data());
  for (int t = 0; t < n; ++t)
    for (int k = 0; k < K; ++k) {
      const float sc = s[static_cast<size_t>(t) * groups + k / group];
      out[static_cast<int64_t>(t) * K + k] = fp8_round(x[t * x_stride + k], sc) * sc;
    }
}

/// The dequantized weight, [N, K] float.
inline void fp8_dequantize(const Fp8Weight& w, float* out) {
  const int64_t N = w.rows(), K = w.cols();
  for (int64_t r = 0; r < N; ++r)
    for (int64_t k = 0; k < K; ++k) out[r * K + k] = to_float(w.q.data[r * K + k]) * w.scale_at(r, k);
}

/// \brief y[t, o] = Σ_k x[t, k]·dq(W)[o, k] (+ bias[o]): the weight-only scheme (W8A16), x as it
/// is — the reference of the GPU's fp8_gemv_w8a16, and fp8_linear's product once x is rounded.
/// x [n, K] float (row stride x_stride, 0 → K), y [n, N] (row stride y_stride). `ws` is scratch.
template <class TB>
inline void fp8_linear_w8a16(const float* x, int n, int K, const Fp8Weight& w, const TB* bias, float* y,
                             int64_t x_stride, int64_t y_stride, std::vector<float>& ws) {
  PIE_CHECK(w.cols() == K, "fp8 linear: x has ", K, " columns, the weight ", w.cols());
  if (x_stride == 0) x_stride = K;
  const int N = static_cast<int>(w.rows());
  if (y_stride == 0) y_stride = N;
  if (n == 0 || N == 0) return;
  ws.resize(static_cast<size_t>(N) * K);
  fp8_dequantize(w, ws.data());
  linear(x, n, K, ws.data(), N, static_cast<const float*>(nullptr), y, x_stride, y_stride);
  if (bias)
    for (int t = 0; t < n; ++t)
      for (int o = 0; o < N; ++o) y[t * y_stride + o] += to_float(bias[o]);
}

/// \brief y[t, o] = Σ_k dq(x)[t, k]·dq(W)[o, k] (+ bias[o]) for t < n: the reference of the GPU's
/// fp8 linear (x quantized per token and group). Arguments as fp8_linear_w8a16's; `xs` is scratch
/// too (grown as needed).
template <class TB>
inline void fp8_linear(const float* x, int n, int K, const Fp8Weight& w, const TB* bias, float* y,
                       int64_t x_stride, int64_t y_stride, std::vector<float>& xs, std::vector<float>& ws) {
  PIE_CHECK(w.cols() == K, "fp8_linear: x has ", K, " columns, the weight ", w.cols());
  if (x_stride == 0) x_stride = K;
  xs.resize(static_cast<size_t>(n) * K);
  fp8_fake_quantize_rows(x, x_stride, n, K, w.act_group(), xs.data());
  fp8_linear_w8a16(xs.data(), n, K, w, bias, y, K, y_stride, ws);
}

}  // namespace pie::ops::cpu
