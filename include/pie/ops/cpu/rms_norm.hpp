#pragma once
/// \file rms_norm.hpp
/// \brief RMSNorm (HF LlamaRMSNorm numerics: float32 mean of squares, x·rsqrt(ms + eps)·w),
/// its residual-fused form, and the per-head form Qwen3 applies to q and k.
#include <cmath>
#include <cstdint>

#include "pie/core/dtype.hpp"
#include "pie/ops/cpu/parallel.hpp"
#include "pie/ops/cpu/round.hpp"

namespace pie::ops::cpu {

namespace detail {
/// Normalises one row of `dim` floats from `in` into `out` (may alias). Fixed summation order.
/// `round` is applied where transformers rounds: x·inv, then its product with the weight.
template <class T, class R = Exact>
inline void rms_norm_row(const float* in, float* out, const T* w, int dim, float eps, R round = {}) {
  constexpr int L = 8;  // independent lanes: vectorisable without reassociation
  float acc[L] = {};
  int i = 0;
  for (; i + L <= dim; i += L)
    for (int l = 0; l < L; ++l) acc[l] += in[i + l] * in[i + l];
  for (int l = 0; l < dim - i; ++l) acc[l & 7] += in[i + l] * in[i + l];
  float ss = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
  for (int j = 0; j < dim; ++j) out[j] = round(to_float(w[j]) * round(in[j] * inv));
}
}  // namespace detail

/// \brief x[t] = rmsnorm(x[t])·w for n rows of `dim` (row stride `stride`, default dim).
/// `round`: the rounding points (round.hpp).
template <class T, class R = Exact>
inline void rms_norm(float* x, const T* w, int n, int dim, float eps, int64_t stride = 0, R round = {}) {
  if (stride == 0) stride = dim;
  parallel_for(n, [&](int64_t t) { detail::rms_norm_row(x + t * stride, x + t * stride, w, dim, eps, round); }, 4 * dim);
}

/// \brief Residual-fused RMSNorm, in place: residual += x; x = rmsnorm(residual)·w.
/// With `first` the residual is initialised (residual = x) instead of added to, which is what
/// the first layer needs (HF: residual = embeddings). `round` is also applied to the residual
/// (a 16-bit forward stores it in T).
template <class T, class R = Exact>
inline void add_rms_norm(float* x, float* residual, const T* w, int n, int dim, float eps,
                         bool first = false, R round = {}) {
  parallel_for(n, [&](int64_t t) {
    float* xr = x + t * dim;
    float* rr = residual + t * dim;
    if (first) for (int i = 0; i < dim; ++i) rr[i] = round(xr[i]);
    else for (int i = 0; i < dim; ++i) rr[i] = round(rr[i] + xr[i]);
    detail::rms_norm_row(rr, xr, w, dim, eps, round);
  }, 5 * dim);
}

/// \brief Per-head RMSNorm (Qwen3 q_norm / k_norm): for each of n rows (stride `row_stride`),
/// heads [0, num_heads) of `head_dim` floats starting at the row pointer are normalised with w.
template <class T, class R = Exact>
inline void head_rms_norm(float* x, int64_t row_stride, int n, int num_heads, int head_dim,
                          const T* w, float eps, R round = {}) {
  parallel_for(n, [&](int64_t t) {
    for (int h = 0; h < num_heads; ++h) {
      float* p = x + t * row_stride + static_cast<int64_t>(h) * head_dim;
      detail::rms_norm_row(p, p, w, head_dim, eps, round);
    }
  }, int64_t{4} * num_heads * head_dim);
}

}  // namespace pie::ops::cpu
