#pragma once
/// \file fusion_switches.hpp
/// \brief The GPU forward's opt-in kernel fusions at op boundaries, read from the environment
/// when a runner is built (its CUDA graphs capture the path chosen then). Off by default until
/// measured on the GPU (docs/gpu_engine.md, "Fusions at the op boundaries of the decode step");
/// each fused path is bit-identical to the separate kernels it replaces.
#include <cstdlib>
#include <string_view>

#include "pie/core/error.hpp"

namespace pie::engine {

/// A 0/1 environment switch: unset, empty or "0" → false, "1" → true; anything else is
/// refused with a message naming the variable.
inline bool env_switch(const char* name, const char* value) {
  if (value == nullptr) return false;
  const std::string_view v(value);
  PIE_CHECK(v == "0" || v == "1" || v.empty(), name, " must be 0 or 1, got '", v, "'");
  return v == "1";
}

/// \brief Which fusions the GPU forward context takes.
struct FusionSwitches {
  /// PIE_FUSED_ROPE_KV: the q/k-norm + RoPE kernel writes the layer's K/V into the paged cache
  /// and attention() launches no kv_write (ops/cuda/rope_kv.cuh, engine/kv_write_fusion.hpp).
  bool rope_kv = false;
  /// PIE_FUSED_FINAL_NORM: at batch 1 with one sampled row, the final residual add + RMSNorm
  /// runs in the lm_head GEMV's prologue (ops::cuda::add_rms_norm_gemv, float logits).
  bool final_norm = false;

  static FusionSwitches from_env() {
    FusionSwitches f;
    f.rope_kv = env_switch("PIE_FUSED_ROPE_KV", std::getenv("PIE_FUSED_ROPE_KV"));
    f.final_norm = env_switch("PIE_FUSED_FINAL_NORM", std::getenv("PIE_FUSED_FINAL_NORM"));
    return f;
  }
};

}  // namespace pie::engine
