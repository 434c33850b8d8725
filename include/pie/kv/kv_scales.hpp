#pragma once
/// \file kv_scales.hpp
/// \brief KvScales: the fp8 KV cache's dequantisation scales, one per (layer, kv head) for K and
/// one for V (the cache stores x / scale; attention multiplies back), and where they come from:
/// a checkpoint's per-tensor `k_scale` / `v_scale` (model/kv_scale_loader.hpp), the first
/// forward's amax per head (`--calculate-kv-scales`), or 1 (vLLM's default).
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/core/host_device.hpp"

namespace pie::kv {

/// e4m3's largest finite magnitude.
inline constexpr float kFp8E4m3Max = 448.0f;

/// \brief Headroom of `--calculate-kv-scales`: a head's scale maps the first forward's amax to
/// 448 / margin, so later tokens may reach `margin` times that amax before they saturate. vLLM
/// maps K's amax to 200 and V's to 100 (its K_SCALE_CONSTANT / V_SCALE_CONSTANT), margins of 2.24
/// and 4.48. A larger margin costs nothing in e4m3's normal range (3 mantissa bits at every
/// binade) and only moves the subnormal threshold up: 2⁻⁶ · amax · margin / 448. With margin 4,
/// values under amax / 7168 (0.014% of the amax) are subnormal, against 1/64 absolute at scale 1.
inline constexpr float kKvScaleMargin = 4.0f;

/// The scale that maps |x| ≤ amax to at most 448 / margin; 1 for an all-zero (or non-finite)
/// amax, which gives nothing to calibrate on.
PIE_HD float kv_scale_from_amax(float amax, float margin) {
  return amax > 0.0f && amax < 3.0e38f ? amax * margin / kFp8E4m3Max : 1.0f;
}

/// \brief Per (layer, kv head) K and V scales of an fp8 KV cache, layer-major ([layers][kv_heads]).
struct KvScales {
  int num_layers = 0;
  int num_kv_heads = 0;
  std::vector<float> k, v;

  /// Every scale 1 (vLLM's default without a calibrated checkpoint).
  static KvScales ones(int layers, int kv_heads) {
    KvScales s;
    s.num_layers = layers;
    s.num_kv_heads = kv_heads;
    s.k.assign(static_cast<size_t>(layers) * kv_heads, 1.0f);
    s.v = s.k;
    return s;
  }
  const float* k_of(int layer) const { return k.data() + static_cast<size_t>(layer) * num_kv_heads; }
  const float* v_of(int layer) const { return v.data() + static_cast<size_t>(layer) * num_kv_heads; }

  /// Throws unless every scale is positive and finite and the sizes match; `what` names the
  /// source (a checkpoint file, "--calculate-kv-scales") in the message.
  void check(const std::string& what) const {
    const size_t n = static_cast<size_t>(num_layers) * num_kv_heads;
    PIE_CHECK(k.size() == n && v.size() == n, what, ": want ", n, " K and V scales (", num_layers, " layers × ",
              num_kv_heads, " kv heads), got ", k.size(), " and ", v.size());
    for (size_t i = 0; i < n; ++i)
      for (int kv = 0; kv < 2; ++kv) {
        const float s = kv == 0 ? k[i] : v[i];
        PIE_CHECK(std::isfinite(s) && s > 0.0f, what, ": layer ", i / num_kv_heads, " kv head ", i % num_kv_heads,
                  kv == 0 ? " k_scale " : " v_scale ", s, " is not a positive finite number");
      }
  }
};

/// Per-head amax of `rows` rows of one layer's K (or V), row r's head h at
/// x + r·row_stride + h·head_dim; rows whose slot is < 0 (padding) are skipped. Host memory.
inline void head_amax(const float* x, int64_t row_stride, int rows, const int64_t* slots, int num_kv_heads,
                      int head_dim, float* amax) {
  for (int h = 0; h < num_kv_heads; ++h) amax[h] = 0.0f;
  for (int r = 0; r < rows; ++r) {
    if (slots != nullptr && slots[r] < 0) continue;
    for (int h = 0; h < num_kv_heads; ++h) {
      const float* p = x + r * row_stride + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < head_dim; ++i) amax[h] = std::fmax(amax[h], std::fabs(p[i]));
    }
  }
}

}  // namespace pie::kv
