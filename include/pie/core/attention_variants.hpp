#pragma once
/// \file attention_variants.hpp
/// \brief Attention variants as hook structs (FlashInfer style). A kernel calls the hooks under
/// `if constexpr`; a user's new variant is one small struct with the same members.
///
/// They live in core, not in a layer of their own, because core/policy.hpp names them: an
/// EnginePolicy's Attention parameter is checked with is_variant_v and the shipped policies
/// pick Causal. The structs need nothing but PIE_HD, and every layer from ops up (kernels,
/// model, engine) reads them, so core is the lowest place all their users can reach.
///
/// Members every variant has:
///   static constexpr bool kCausal        mask keys after the query's position
///   static constexpr int  kWindowLeft    keys older than pos - kWindowLeft are masked (-1: none)
///   static constexpr bool kSoftCap       logits ← cap·tanh(logits / cap)
///   float logits_soft_cap                the cap, used when kSoftCap
///   PIE_HD bool mask(int q_pos, int k_pos) const   true = keep
///   PIE_HD float logits(float x) const             transform of one scaled logit
#include <cmath>
#include <concepts>

#include "pie/core/host_device.hpp"

namespace pie::attention {

/// \brief Plain causal attention (Qwen3, Llama).
struct Causal {
  static constexpr bool kCausal = true;
  static constexpr int kWindowLeft = -1;
  static constexpr bool kSoftCap = false;
  float logits_soft_cap = 0.f;
  PIE_HD bool mask(int q_pos, int k_pos) const { return k_pos <= q_pos; }
  PIE_HD float logits(float x) const { return x; }
};

/// \brief Causal attention over the last `Window` keys (Mistral-style sliding window).
template <int Window>
struct SlidingWindow {
  static_assert(Window > 0, "SlidingWindow: the window must be positive");
  static constexpr bool kCausal = true;
  static constexpr int kWindowLeft = Window;
  static constexpr bool kSoftCap = false;
  float logits_soft_cap = 0.f;
  PIE_HD bool mask(int q_pos, int k_pos) const { return k_pos <= q_pos && q_pos - k_pos < Window; }
  PIE_HD float logits(float x) const { return x; }
};

/// \brief Causal attention with logits soft-capping (Gemma-2 style): cap·tanh(x/cap).
struct SoftCap {
  static constexpr bool kCausal = true;
  static constexpr int kWindowLeft = -1;
  static constexpr bool kSoftCap = true;
  float logits_soft_cap = 50.f;
  PIE_HD bool mask(int q_pos, int k_pos) const { return k_pos <= q_pos; }
  PIE_HD float logits(float x) const { return logits_soft_cap * std::tanh(x / logits_soft_cap); }
};

template <class T> inline constexpr bool is_variant_v = requires(const T& v) {
  { T::kCausal } -> std::convertible_to<bool>;
  { T::kWindowLeft } -> std::convertible_to<int>;
  { T::kSoftCap } -> std::convertible_to<bool>;
  { v.mask(0, 0) } -> std::convertible_to<bool>;
  { v.logits(0.f) } -> std::convertible_to<float>;
};

}  // namespace pie::attention
