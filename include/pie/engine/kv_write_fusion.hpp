#pragma once
/// \file kv_write_fusion.hpp
/// \brief KvWriteFusion: a forward context's bookkeeping for writing a layer's K/V into the
/// paged cache from the q/k-norm + RoPE kernel instead of from attention() (the GPU context's
/// PIE_FUSED_ROPE_KV, docs/gpu_engine.md). Host logic only, so that it is tested on the CPU.
///
/// A model calls qk_norm_rope(qkv) and then attention(l, qkv) (model_concept.hpp); the rope
/// op does not name the layer, so the context takes the layer after the last attention() of
/// the step (0 first), which is right for every model that runs its layers in order. What
/// attention() then learns:
/// - the K/V of this qkv are in layer l's cache already (nothing ran between): skip kv_write;
/// - another op ran in between (it may have changed qkv) or another buffer comes: kv_write
///   again, into the same layer, which rewrites the same slots with the current values;
/// - another layer comes: refused with a message, since the rope kernel wrote this step's slots
///   of a layer the model did not mean (a model that runs its layers out of order needs
///   PIE_FUSED_ROPE_KV=0).
#include <cstdint>

#include "pie/core/error.hpp"

namespace pie::engine {

/// \brief See the file comment. One per forward context; begin_step() at every step.
class KvWriteFusion {
 public:
  KvWriteFusion(bool enabled, int num_layers) : enabled_(enabled), layers_(num_layers) {}

  bool enabled() const { return enabled_; }
  void begin_step() {
    next_layer_ = 0;
    pending_ = {};
  }
  /// qk_norm_rope over `qkv` is about to run: the layer whose cache it should also write, or −1
  /// for the separate kernels (fusion off, or no layer left).
  int on_rope(const void* qkv) {
    pending_ = {};
    if (!enabled_ || next_layer_ >= layers_) return -1;
    pending_ = {qkv, next_layer_};
    return next_layer_;
  }
  /// Any other op ran: a write into qkv after the rope is possible, so attention() rewrites K/V.
  void on_other_op() { pending_.qkv = nullptr; }
  /// attention(l, qkv): true when its K/V are in the cache already (the caller skips kv_write).
  /// Throws when the rope kernel wrote another layer's cache.
  bool on_attention(int l, const void* qkv) {
    const Pending p = pending_;
    pending_ = {};
    next_layer_ = l + 1;
    if (p.layer < 0) return false;
    PIE_CHECK(p.layer == l, "PIE_FUSED_ROPE_KV=1: the q/k RoPE kernel wrote K/V into layer ", p.layer,
              "'s cache (the layer after the last attention), but attention runs layer ", l,
              "; a model that runs its layers out of order needs PIE_FUSED_ROPE_KV=0");
    return p.qkv != nullptr && p.qkv == qkv;
  }

 private:
  struct Pending {
    const void* qkv = nullptr;  ///< null: nothing written, or an op ran since
    int layer = -1;             ///< the layer the rope kernel wrote (−1: none)
  };
  bool enabled_;
  int layers_;
  int next_layer_ = 0;
  Pending pending_;
};

}  // namespace pie::engine
