#pragma once
/// \file moe.hpp
/// \brief The sparse mixture-of-experts block (Qwen3-MoE, transformers' Qwen3MoeSparseMoeBlock)
/// in fp32: router logits → softmax → top-k → (renormalise) → for each token the weighted sum
/// of its k experts' SwiGLU MLPs.
///
/// Batch invariance: a token's result depends on its own row only. The router is ops::cpu::
/// linear (fixed-order dot products); the experts run as one linear per expert over the rows
/// routed to it (a row's dot products do not depend on the rows beside it), and each token adds
/// its experts' outputs in ascending expert id (transformers' order too), starting from zero.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/ops/cpu/activation.hpp"
#include "pie/ops/cpu/linear.hpp"

namespace pie::ops::cpu {

/// \brief Routing of n tokens: ids[t·k + j] is token t's j-th expert (by descending
/// probability, ties to the lower id), weights[t·k + j] its weight (softmax probability over all
/// experts, divided by the sum of the k chosen when `norm_topk_prob`).
/// \param x [n, hidden] (row stride x_stride, 0 → hidden); \param router [num_experts, hidden]
template <class T>
inline void moe_route(const float* x, int64_t x_stride, int n, int hidden, const T* router, int num_experts,
                      int top_k, bool norm_topk_prob, int32_t* ids, float* weights) {
  PIE_CHECK(top_k >= 1 && top_k <= num_experts, "moe: top_k ", top_k, " not in [1, ", num_experts, "]");
  std::vector<float> logits(static_cast<size_t>(n) * num_experts);
  linear(x, n, hidden, router, num_experts, static_cast<const T*>(nullptr), logits.data(), x_stride);
  std::vector<float> p(num_experts);
  std::vector<char> taken(num_experts);
  for (int t = 0; t < n; ++t) {
    const float* l = logits.data() + static_cast<size_t>(t) * num_experts;
    float mx = l[0];
    for (int e = 1; e < num_experts; ++e) mx = std::max(mx, l[e]);
    float sum = 0;
    for (int e = 0; e < num_experts; ++e) sum += (p[e] = std::exp(l[e] - mx));
    for (int e = 0; e < num_experts; ++e) p[e] /= sum;
    std::fill(taken.begin(), taken.end(), 0);
    int32_t* id = ids + static_cast<size_t>(t) * top_k;
    float* w = weights + static_cast<size_t>(t) * top_k;
    float chosen = 0;
    for (int j = 0; j < top_k; ++j) {
      int best = -1;
      for (int e = 0; e < num_experts; ++e)
        if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
      taken[best] = 1;
      id[j] = best;
      w[j] = p[best];
      chosen += p[best];
    }
    if (norm_topk_prob)
      for (int j = 0; j < top_k; ++j) w[j] /= chosen;
  }
}

/// \brief out[t] = Σ_j weights[t·k + j]·down_e(silu(gate_e·x[t])·(up_e·x[t])) over token t's
/// experts e = ids[t·k + j], added in ascending e.
/// \param gate_up [num_experts, 2·inter, hidden] (gate rows, then up rows, per expert)
/// \param down    [num_experts, hidden, inter]
/// \param out     [n, hidden] (row stride out_stride, 0 → hidden); must not alias x
template <class T>
inline void moe_experts(const float* x, int64_t x_stride, int n, int hidden, const T* gate_up, const T* down,
                        int num_experts, int inter, int top_k, const int32_t* ids, const float* weights, float* out,
                        int64_t out_stride = 0) {
  if (x_stride == 0) x_stride = hidden;
  if (out_stride == 0) out_stride = hidden;
  for (int t = 0; t < n; ++t) std::fill(out + t * out_stride, out + t * out_stride + hidden, 0.0f);
  // Tokens per expert (in token order), with the weight each gives it.
  std::vector<std::vector<std::pair<int, float>>> routed(num_experts);
  for (int t = 0; t < n; ++t)
    for (int j = 0; j < top_k; ++j) {
      const int32_t e = ids[static_cast<size_t>(t) * top_k + j];
      PIE_CHECK(e >= 0 && e < num_experts, "moe: expert id ", e, " out of [0, ", num_experts, ")");
      routed[e].emplace_back(t, weights[static_cast<size_t>(t) * top_k + j]);
    }
  std::vector<float> xs, gu, act, y;
  for (int e = 0; e < num_experts; ++e) {
    const auto& rows = routed[e];
    const int m = static_cast<int>(rows.size());
    if (m == 0) continue;
    xs.resize(static_cast<size_t>(m) * hidden);
    for (int i = 0; i < m; ++i) std::copy_n(x + rows[i].first * x_stride, hidden, xs.data() + static_cast<size_t>(i) * hidden);
    gu.resize(static_cast<size_t>(m) * 2 * inter);
    act.resize(static_cast<size_t>(m) * inter);
    y.resize(static_cast<size_t>(m) * hidden);
    const T* wgu = gate_up + static_cast<size_t>(e) * 2 * inter * hidden;
    const T* wd = down + static_cast<size_t>(e) * hidden * inter;
    linear(xs.data(), m, hidden, wgu, 2 * inter, static_cast<const T*>(nullptr), gu.data());
    silu_and_mul(gu.data(), m, inter, act.data());
    linear(act.data(), m, inter, wd, hidden, static_cast<const T*>(nullptr), y.data());
    for (int i = 0; i < m; ++i) {
      float* o = out + rows[i].first * out_stride;
      const float* yi = y.data() + static_cast<size_t>(i) * hidden;
      const float w = rows[i].second;
      for (int h = 0; h < hidden; ++h) o[h] += yi[h] * w;
    }
  }
}

/// \brief The whole block: moe_route, then moe_experts.
template <class T>
inline void moe(const float* x, int64_t x_stride, int n, int hidden, const T* router, const T* gate_up, const T* down,
                int num_experts, int inter, int top_k, bool norm_topk_prob, float* out, int64_t out_stride = 0) {
  if (x_stride == 0) x_stride = hidden;
  std::vector<int32_t> ids(static_cast<size_t>(n) * top_k);
  std::vector<float> w(static_cast<size_t>(n) * top_k);
  moe_route(x, x_stride, n, hidden, router, num_experts, top_k, norm_topk_prob, ids.data(), w.data());
  moe_experts(x, x_stride, n, hidden, gate_up, down, num_experts, inter, top_k, ids.data(), w.data(), out, out_stride);
}

}  // namespace pie::ops::cpu
