#pragma once
/// \file rope.hpp
/// \brief Rotary position embedding, neox layout (rotate_half: pairs (i, i + d/2)), positions
/// taken per row from the step plan, and the inverse frequencies of every supported
/// `rope_scaling` (none, linear, llama3, yarn) computed as HF transformers computes them.
///
/// Numerics follow transformers in float32: inv_freq in float32, angle = float(inv_freq·pos),
/// cos/sin in float32, times the scaling's attention factor (yarn's mscale, else 1). Matching
/// those roundings is what keeps fp32 logits within 1e-4 of transformers at long positions.
#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/ops/cpu/parallel.hpp"
#include "pie/ops/cpu/round.hpp"
#include "pie/ops/rope_scaling.hpp"

namespace pie::ops::cpu {

/// \brief inv_freq[i] for i < rotary_dim/2 and the cos/sin multiplier of a RoPE configuration.
struct RopeTable {
  std::vector<float> inv_freq;
  float attention_factor = 1.0f;
};

/// \brief Inverse frequencies of RoPE for `rotary_dim`, `theta` and `scaling`
/// (transformers' _compute_{default,linear_scaling,llama3,yarn}_parameters).
/// `max_position_embeddings` is the fallback original context length of yarn.
inline RopeTable rope_inv_freq(int rotary_dim, double theta, const RopeScaling& scaling,
                               int64_t max_position_embeddings = 0) {
  using Type = RopeScaling::Type;
  PIE_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0, "rope: rotary dim must be even, got ", rotary_dim);
  const int half = rotary_dim / 2;
  RopeTable t;
  t.inv_freq.resize(half);
  // base ** (arange(0, dim, 2).float() / dim), in float32 as torch does.
  std::vector<float> pos_freq(half);
  for (int i = 0; i < half; ++i) {
    float expo = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
    pos_freq[i] = static_cast<float>(std::pow(theta, static_cast<double>(expo)));
    t.inv_freq[i] = 1.0f / pos_freq[i];
  }
  const double factor = scaling.factor;
  switch (scaling.type) {
    case Type::None: break;
    case Type::Linear:
      PIE_CHECK(factor > 0, "rope_scaling linear: factor must be positive, got ", factor);
      for (float& f : t.inv_freq) f = static_cast<float>(f / factor);
      break;
    case Type::Llama3: {
      PIE_CHECK(scaling.original_max_position_embeddings > 0,
                "rope_scaling llama3: original_max_position_embeddings is required");
      const double old_len = static_cast<double>(scaling.original_max_position_embeddings);
      const double lo = scaling.low_freq_factor, hi = scaling.high_freq_factor;
      const double low_wavelen = old_len / lo, high_wavelen = old_len / hi;
      for (float& f : t.inv_freq) {
        const double wavelen = 2.0 * std::numbers::pi / f;
        double v = wavelen > low_wavelen ? f / factor : f;
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
          const double smooth = (old_len / wavelen - lo) / (hi - lo);
          v = (1.0 - smooth) * v / factor + smooth * v;
        }
        f = static_cast<float>(v);
      }
      break;
    }
    case Type::Yarn: {
      const double orig = scaling.original_max_position_embeddings > 0
                              ? static_cast<double>(scaling.original_max_position_embeddings)
                              : static_cast<double>(max_position_embeddings);
      PIE_CHECK(orig > 0, "rope_scaling yarn: original_max_position_embeddings is required");
      t.attention_factor = scaling.attention_factor > 0
                               ? static_cast<float>(scaling.attention_factor)
                               : (factor <= 1 ? 1.0f : static_cast<float>(0.1 * std::log(factor) + 1.0));
      auto correction_dim = [&](double rotations) {
        return rotary_dim * std::log(orig / (rotations * 2 * std::numbers::pi)) / (2 * std::log(theta));
      };
      double low = std::max(std::floor(correction_dim(scaling.beta_fast)), 0.0);
      double high = std::min(std::ceil(correction_dim(scaling.beta_slow)), static_cast<double>(rotary_dim - 1));
      if (low == high) high += 0.001;
      for (int i = 0; i < half; ++i) {
        float ramp = static_cast<float>((static_cast<double>(i) - low) / (high - low));
        ramp = std::fmin(std::fmax(ramp, 0.0f), 1.0f);
        const float extrap = 1.0f - ramp;  // 1 → keep the original frequency
        const float f_inter = 1.0f / static_cast<float>(factor * pos_freq[i]);
        const float f_extra = 1.0f / pos_freq[i];
        t.inv_freq[i] = f_inter * (1.0f - extrap) + f_extra * extrap;
      }
      break;
    }
  }
  return t;
}

/// \brief Applies neox-layout RoPE in place to `num_heads` heads of each of n rows.
/// \param x          row t's head h starts at x + t·row_stride + h·head_dim
/// \param positions  [n] absolute positions
/// \param table      from rope_inv_freq(head_dim, ...)
/// \param round      rounding points (round.hpp): cos/sin, each product, each sum (transformers'
///                   q·cos + rotate_half(q)·sin in a 16-bit dtype)
template <class R = Exact>
inline void rope_neox(float* x, int64_t row_stride, int n, int num_heads, int head_dim,
                      const int32_t* positions, const RopeTable& table, R round = {}) {
  const int half = head_dim / 2;
  PIE_CHECK(static_cast<int>(table.inv_freq.size()) == half, "rope: table has ",
            table.inv_freq.size(), " frequencies, head_dim/2 = ", half);
  parallel_for(n, [&](int64_t t) {
    thread_local std::vector<float> cs;
    cs.resize(2 * half);
    const float pos = static_cast<float>(positions[t]);
    for (int i = 0; i < half; ++i) {
      const float a = table.inv_freq[i] * pos;  // float32 like transformers
      cs[i] = round(std::cos(a) * table.attention_factor);
      cs[half + i] = round(std::sin(a) * table.attention_factor);
    }
    for (int h = 0; h < num_heads; ++h) {
      float* p = x + t * row_stride + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float x1 = p[i], x2 = p[half + i];
        p[i] = round(round(x1 * cs[i]) - round(x2 * cs[half + i]));
        p[half + i] = round(round(x2 * cs[i]) + round(x1 * cs[half + i]));
      }
    }
  }, int64_t{40} * half + int64_t{6} * num_heads * half);
}

}  // namespace pie::ops::cpu
