#pragma once
/// \file device_weights.cuh
/// \brief Model weights resident on the GPU in the policy dtype, in the fused layout of
/// model/weights.hpp (qkv_proj, gate_up_proj), all in one allocation. Built from host Weights
/// (a loaded checkpoint) or, for `--load-format dummy`, filled on the device from a small random
/// host pool so an 8B shape needs neither a checkpoint nor 16 GB of host memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/model/config.hpp"
#include "pie/model/weights.hpp"

namespace pie::engine::cuda {

/// \brief Device-resident weights; the views have Device::Cuda.
/// \tparam T element type (bf16 or f16)
template <class T>
struct DeviceWeights {
  model::ModelConfig config;
  TensorView<T> embed_tokens;
  std::vector<model::LayerWeights<T>> layers;
  TensorView<T> norm;
  TensorView<T> lm_head;
  DeviceBuffer<T> storage;

  size_t bytes() const { return storage.size() * sizeof(T); }

  /// Copies host weights (same dtype) to the device.
  static DeviceWeights upload(const model::Weights<T>& w) {
    DeviceWeights d;
    d.config = w.config;
    Layout lay(w.config, w.lm_head.data == nullptr || w.lm_head.data == w.embed_tokens.data);
    d.bind(lay);
    auto put = [&](const TensorView<T>& src, const TensorView<T>& dst) {
      if (dst.data == nullptr || dst.numel() == 0) return;
      PIE_CHECK(src.data != nullptr && src.numel() == dst.numel() && src.contiguous(),
                "DeviceWeights::upload: host tensor missing, of the wrong size or not contiguous");
      PIE_CUDA_CHECK(cudaMemcpy(dst.data, src.data, sizeof(T) * dst.numel(), cudaMemcpyHostToDevice));
    };
    put(w.embed_tokens, d.embed_tokens);
    put(w.norm, d.norm);
    if (!lay.tied) put(w.lm_head, d.lm_head);
    PIE_CHECK(w.layers.size() == d.layers.size(), "DeviceWeights::upload: ", w.layers.size(), " host layers, config has ",
              d.layers.size());
    for (size_t l = 0; l < d.layers.size(); ++l) {
      const auto& s = w.layers[l];
      auto& t = d.layers[l];
      put(s.input_layernorm, t.input_layernorm);
      put(s.qkv_proj, t.qkv_proj);
      put(s.qkv_bias, t.qkv_bias);
      put(s.q_norm, t.q_norm);
      put(s.k_norm, t.k_norm);
      put(s.o_proj, t.o_proj);
      put(s.post_attention_layernorm, t.post_attention_layernorm);
      put(s.gate_up_proj, t.gate_up_proj);
      put(s.down_proj, t.down_proj);
    }
    return d;
  }

  /// Random weights of the config's shape (vLLM's `--load-format dummy`): matrices uniform in
  /// ±1/sqrt(in_features)·scale, norm weights 1 + small noise, drawn from a 16 Mi-element random
  /// pool copied over the device (throughput does not depend on the values; finite, spread
  /// logits keep the sampler honest).
  static DeviceWeights dummy(const model::ModelConfig& cfg, uint64_t seed) {
    DeviceWeights d;
    d.config = cfg;
    Layout lay(cfg, cfg.tie_word_embeddings);
    d.bind(lay);
    constexpr size_t kPool = size_t{1} << 24;
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> uni(-1.f, 1.f);
    std::vector<float> pool(kPool);
    for (auto& v : pool) v = uni(rng);
    std::vector<T> scaled(kPool);
    DeviceBuffer<T> dpool(kPool);
    uint64_t salt = seed;
    // One kind of tensor at a time: scale the pool once, upload it once, then tile every
    // tensor of that kind with device-to-device copies starting at different offsets.
    auto fill_kind = [&](const std::vector<TensorView<T>>& ts, float scale, float offset) {
      bool any = false;
      for (const auto& t : ts) any |= t.data != nullptr && t.numel() > 0;
      if (!any) return;
      for (size_t i = 0; i < kPool; ++i) scaled[i] = T(offset + scale * pool[i]);
      PIE_CUDA_CHECK(cudaMemcpy(dpool.data(), scaled.data(), sizeof(T) * kPool, cudaMemcpyHostToDevice));
      for (const auto& t : ts) {
        if (t.data == nullptr || t.numel() == 0) continue;
        size_t n = static_cast<size_t>(t.numel()), start = (++salt * 7919u) % kPool, done = 0;
        while (done < n) {
          size_t c = std::min(n - done, kPool - start);
          PIE_CUDA_CHECK(cudaMemcpyAsync(t.data + done, dpool.data() + start, sizeof(T) * c, cudaMemcpyDeviceToDevice));
          done += c;
          start = 0;
        }
      }
      PIE_CUDA_CHECK(cudaDeviceSynchronize());  // dpool is refilled for the next kind
    };
    const float hid = 1.f / std::sqrt(static_cast<float>(cfg.hidden_size));
    fill_kind({d.embed_tokens}, 1.f, 0.f);
    if (!lay.tied) fill_kind({d.lm_head}, hid, 0.f);
    using LW = model::LayerWeights<T>;
    auto kind = [&](TensorView<T> LW::*m) {
      std::vector<TensorView<T>> v;
      for (auto& L : d.layers) v.push_back(L.*m);
      return v;
    };
    std::vector<TensorView<T>> norms{d.norm};
    for (auto m : {&LW::input_layernorm, &LW::post_attention_layernorm, &LW::q_norm, &LW::k_norm})
      for (auto& t : kind(m)) norms.push_back(t);
    fill_kind(norms, 0.1f, 1.f);
    fill_kind(kind(&LW::qkv_bias), 0.1f, 0.f);
    auto gemm_in_h = kind(&LW::qkv_proj);
    for (auto& t : kind(&LW::gate_up_proj)) gemm_in_h.push_back(t);
    fill_kind(gemm_in_h, hid, 0.f);
    fill_kind(kind(&LW::o_proj), 1.f / std::sqrt(static_cast<float>(cfg.q_size())), 0.f);
    fill_kind(kind(&LW::down_proj), 1.f / std::sqrt(static_cast<float>(cfg.intermediate_size)), 0.f);
    PIE_CUDA_CHECK(cudaDeviceSynchronize());
    return d;
  }

 private:
  /// Offsets of every tensor in the single allocation (256-byte aligned each).
  struct Layout {
    const model::ModelConfig& c;
    bool tied;
    size_t total = 0;
    Layout(const model::ModelConfig& cfg, bool tie) : c(cfg), tied(tie) {}
  };

  void bind(Layout& lay) {
    const auto& c = config;
    PIE_CHECK(c.hidden_size > 0 && c.num_hidden_layers > 0 && c.vocab_size > 0 && c.head_dim > 0,
              "DeviceWeights: incomplete model config");
    // Two passes over the same sequence of shapes: count, then bind.
    for (int pass = 0; pass < 2; ++pass) {
      size_t off = 0;
      auto take = [&](TensorView<T>& v, std::initializer_list<int64_t> dims) {
        int64_t n = 1;
        for (int64_t x : dims) n *= x;
        off = (off + 127) / 128 * 128;  // 256 bytes for 2-byte T: aligned GEMM operands
        if (pass == 1) v = TensorView<T>(storage.data() + off, dims, Device::Cuda);
        off += static_cast<size_t>(n);
      };
      const int64_t H = c.hidden_size, I = c.intermediate_size;
      take(embed_tokens, {c.vocab_size, H});
      take(norm, {H});
      if (!lay.tied) take(lm_head, {c.vocab_size, H});
      layers.assign(c.num_hidden_layers, {});
      for (auto& L : layers) {
        take(L.input_layernorm, {H});
        take(L.qkv_proj, {c.qkv_size(), H});
        if (c.attention_bias) take(L.qkv_bias, {c.qkv_size()});
        if (c.qk_norm) { take(L.q_norm, {c.head_dim}); take(L.k_norm, {c.head_dim}); }
        take(L.o_proj, {H, c.q_size()});
        take(L.post_attention_layernorm, {H});
        take(L.gate_up_proj, {2 * I, H});
        take(L.down_proj, {H, I});
      }
      if (pass == 0) {
        lay.total = off;
        // The caller allocates storage between the passes.
        if (storage.size() < off) storage = DeviceBuffer<T>(off);
      }
    }
    if (lay.tied) lm_head = embed_tokens;
  }
};

}  // namespace pie::engine::cuda
