#pragma once
/// \file activation.hpp
/// \brief SwiGLU: out[t, i] = silu(gate[t, i])·up[t, i], reading the fused [gate | up] rows
/// the gate_up GEMM produces.
#include <cmath>
#include <cstdint>

#include "pie/ops/cpu/parallel.hpp"
#include "pie/ops/cpu/round.hpp"

namespace pie::ops::cpu {

/// \brief silu(x) = x·sigmoid(x), in float.
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

/// \brief out[t] = silu(gate_up[t, :inter])·gate_up[t, inter:] for n rows.
/// \param gate_up [n, 2·inter]; \param out [n, inter] (may not alias gate_up)
/// \param round   rounding points (round.hpp): silu(gate), then the product
template <class R = Exact>
inline void silu_and_mul(const float* gate_up, int n, int inter, float* out, R round = {}) {
  parallel_for(n, [&](int64_t t) {
    const float* g = gate_up + t * 2 * inter;
    const float* u = g + inter;
    float* o = out + t * inter;
    for (int i = 0; i < inter; ++i) o[i] = round(round(silu(g[i])) * u[i]);
  }, 8 * inter);
}

}  // namespace pie::ops::cpu
