#pragma once
/// \file kv_scale_loader.hpp
/// \brief load_kv_scales: a checkpoint's fp8 KV cache scales, under vLLM's names
/// `model.layers.N.self_attn.k_scale` / `.v_scale`. vLLM's calibrated checkpoints store one
/// per-tensor scale per layer (shape [] or [1]); a [num_kv_heads] tensor (one per kv head) is
/// read as well. Either every layer has both tensors or none has any; every value must be a
/// positive finite number. Errors name the file and the tensor.
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/kv/kv_scales.hpp"
#include "pie/model/config.hpp"
#include "pie/model/safetensors.hpp"

namespace pie::model {

/// The checkpoint tensor name of layer `l`'s K (`which` = "k_scale") or V ("v_scale") scale.
inline std::string kv_scale_tensor(int l, const char* which) {
  return "model.layers." + std::to_string(l) + ".self_attn." + which;
}

/// The K/V scales of `ckpt` for `cfg` ([layers][kv_heads], a per-tensor scale repeated over the
/// heads), or nothing when the checkpoint has no k_scale / v_scale tensor at all.
inline std::optional<kv::KvScales> load_kv_scales(const Checkpoint& ckpt, const ModelConfig& cfg) {
  const int L = cfg.num_hidden_layers, H = cfg.num_key_value_heads;
  int found = 0;
  for (int l = 0; l < L; ++l)
    for (const char* w : {"k_scale", "v_scale"}) found += ckpt.contains(kv_scale_tensor(l, w));
  if (found == 0) return std::nullopt;
  kv::KvScales s = kv::KvScales::ones(L, H);
  for (int l = 0; l < L; ++l)
    for (const char* w : {"k_scale", "v_scale"}) {
      const std::string name = kv_scale_tensor(l, w);
      PIE_CHECK(ckpt.contains(name), ckpt.source(), ": tensor '", name, "' not found: the checkpoint has ", found,
                " of the ", 2 * L, " k_scale/v_scale tensors of its ", L, " layers (all or none)");
      const TensorInfo& t = ckpt.at(name);
      const int64_t n = t.numel();
      PIE_CHECK(t.shape.size() <= 1 && (n == 1 || n == H), t.file, ": tensor '", name, "': shape ",
                shape_string(t.shape), ", want [] or [1] (per tensor) or [", H, "] (per kv head)");
      std::vector<float> v(static_cast<size_t>(n));
      read_elements(t, 0, v.size(), v.data());
      float* dst = (w[0] == 'k' ? s.k.data() : s.v.data()) + static_cast<size_t>(l) * H;
      for (int h = 0; h < H; ++h) {
        const float x = v[n == 1 ? 0 : h];
        PIE_CHECK(std::isfinite(x) && x > 0.0f, t.file, ": tensor '", name, "': value ", x,
                  n == 1 ? std::string() : " of kv head " + std::to_string(h), " is not a positive finite scale");
        dst[h] = x;
      }
    }
  return s;
}

/// load_kv_scales over the checkpoint directory `dir`.
inline std::optional<kv::KvScales> load_kv_scales(const std::string& dir, const ModelConfig& cfg) {
  const Checkpoint ckpt(dir);
  return load_kv_scales(ckpt, cfg);
}

}  // namespace pie::model
