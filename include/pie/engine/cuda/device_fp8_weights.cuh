#pragma once
/// \file device_fp8_weights.cuh
/// \brief model::Fp8Weights on the GPU (the same members, device views, one allocation): the fp8
/// projections with their scales, and the embeddings, norms, biases and lm_head in T. Built from
/// host Fp8Weights, or for `--load-format dummy --quantization fp8` filled on the device from
/// small random host pools (an 8B shape needs no host copy).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/core/fp8_weight.hpp"
#include "pie/model/config.hpp"
#include "pie/model/fp8_weights.hpp"

namespace pie::engine::cuda {

/// \brief Device-resident fp8 weights (see file comment).
template <class T>
struct DeviceFp8Weights {
  model::ModelConfig config;
  bool block = true;
  TensorView<T> embed_tokens;
  std::vector<model::Fp8LayerWeights<T>> layers;
  TensorView<T> norm;
  TensorView<T> lm_head;
  DeviceBuffer<unsigned char> storage;

  size_t bytes() const { return storage.size(); }

  /// Copies host fp8 weights to the device.
  static DeviceFp8Weights upload(const model::Fp8Weights<T>& w) {
    DeviceFp8Weights d;
    d.config = w.config;
    d.block = w.block;
    const bool tied = w.lm_head.data == w.embed_tokens.data;
    d.bind(tied);
    auto put = [](const auto& src, const auto& dst) {
      if (dst.data == nullptr || dst.numel() == 0) return;
      PIE_CHECK(src.data != nullptr && src.numel() == dst.numel() && src.contiguous(),
                "DeviceFp8Weights::upload: host tensor missing, of the wrong size or not contiguous");
      PIE_CUDA_CHECK(cudaMemcpy(dst.data, src.data, sizeof(*dst.data) * dst.numel(), cudaMemcpyHostToDevice));
    };
    auto put8 = [&](const Fp8Weight& s, const Fp8Weight& t) {
      PIE_CHECK(s.scale_ld == t.scale_ld && s.block_n == t.block_n && s.block_k == t.block_k,
                "DeviceFp8Weights::upload: scale layout differs from the host's");
      put(s.q, t.q);
      put(s.scale, t.scale);
    };
    put(w.embed_tokens, d.embed_tokens);
    put(w.norm, d.norm);
    if (!tied) put(w.lm_head, d.lm_head);
    PIE_CHECK(w.layers.size() == d.layers.size(), "DeviceFp8Weights::upload: layer count differs from the config");
    for (size_t l = 0; l < d.layers.size(); ++l) {
      const auto& s = w.layers[l];
      auto& t = d.layers[l];
      put(s.input_layernorm, t.input_layernorm);
      put8(s.qkv_proj, t.qkv_proj);
      put(s.qkv_bias, t.qkv_bias);
      put(s.q_norm, t.q_norm);
      put(s.k_norm, t.k_norm);
      put8(s.o_proj, t.o_proj);
      put(s.post_attention_layernorm, t.post_attention_layernorm);
      put8(s.gate_up_proj, t.gate_up_proj);
      put8(s.down_proj, t.down_proj);
    }
    return d;
  }

  /// Random weights of the config's shape: e4m3 codes ~ N(0, 64²) (saturated), scales so that a
  /// projection's weights have std 1/√fan_in (block scales jittered ±10%), embeddings uniform
  /// ±1, lm_head ±1/√hidden, norms 1 ± 0.1. Throughput does not depend on the values; finite,
  /// spread logits keep the sampler honest.
  static DeviceFp8Weights dummy(const model::ModelConfig& cfg, uint64_t seed, bool block) {
    DeviceFp8Weights d;
    d.config = cfg;
    d.block = block;
    const bool tied = cfg.tie_word_embeddings;
    d.bind(tied);
    std::mt19937_64 rng(seed);
    constexpr size_t kPool = size_t{1} << 24;
    DeviceBuffer<unsigned char> dpool(kPool * 2);
    std::vector<unsigned char> host(kPool * 2);
    uint64_t salt = seed;
    // Tiles `bytes` of t from the device pool at a salted offset.
    auto tile = [&](void* dst, size_t bytes) {
      size_t start = (++salt * 7919u) % (kPool / 2) * 2, done = 0;
      while (done < bytes) {
        const size_t c = std::min(bytes - done, kPool * 2 - start);
        PIE_CUDA_CHECK(cudaMemcpy(static_cast<unsigned char*>(dst) + done, dpool.data() + start, c,
                                  cudaMemcpyDeviceToDevice));
        done += c;
        start = 0;
      }
    };
    auto fill_T = [&](const std::vector<TensorView<T>>& ts, float scale, float offset) {
      std::uniform_real_distribution<float> uni(-1.f, 1.f);
      T* h = reinterpret_cast<T*>(host.data());
      for (size_t i = 0; i < kPool; ++i) h[i] = from_float<T>(offset + scale * uni(rng));
      PIE_CUDA_CHECK(cudaMemcpy(dpool.data(), host.data(), kPool * sizeof(T), cudaMemcpyHostToDevice));
      for (const auto& t : ts)
        if (t.data && t.numel() > 0) tile(t.data, sizeof(T) * t.numel());
    };
    fill_T({d.embed_tokens}, 1.f, 0.f);
    if (!tied) fill_T({d.lm_head}, 1.f / std::sqrt(float(cfg.hidden_size)), 0.f);
    std::vector<TensorView<T>> norms{d.norm}, biases;
    for (auto& L : d.layers)
      for (auto* t : {&L.input_layernorm, &L.post_attention_layernorm, &L.q_norm, &L.k_norm}) norms.push_back(*t);
    for (auto& L : d.layers) biases.push_back(L.qkv_bias);
    fill_T(norms, 0.1f, 1.f);
    fill_T(biases, 0.1f, 0.f);
    // fp8 codes: one pool for every projection.
    {
      std::normal_distribution<float> nd(0.f, 64.f);
      for (size_t i = 0; i < kPool * 2; ++i) host[i] = fp8_e4m3::from_float(nd(rng));
      PIE_CUDA_CHECK(cudaMemcpy(dpool.data(), host.data(), kPool * 2, cudaMemcpyHostToDevice));
      for (auto& L : d.layers)
        for (auto* f : {&L.qkv_proj, &L.o_proj, &L.gate_up_proj, &L.down_proj}) tile(f->q.data, f->q.numel());
    }
    std::uniform_real_distribution<float> jit(0.9f, 1.1f);
    for (auto& L : d.layers)
      for (auto* f : {&L.qkv_proj, &L.o_proj, &L.gate_up_proj, &L.down_proj}) {
        const float base = 1.f / (64.f * std::sqrt(float(f->cols())));
        std::vector<float> s(static_cast<size_t>(f->scale.numel()));
        for (auto& v : s) v = base * jit(rng);
        PIE_CUDA_CHECK(cudaMemcpy(f->scale.data, s.data(), s.size() * sizeof(float), cudaMemcpyHostToDevice));
      }
    PIE_CUDA_CHECK(cudaDeviceSynchronize());
    return d;
  }

 private:
  /// Offsets of every tensor in the single allocation (256-byte aligned each); two passes
  /// over the same sequence of shapes: count, then bind.
  void bind(bool tied) {
    const auto& c = config;
    PIE_CHECK(c.hidden_size > 0 && c.num_hidden_layers > 0 && c.vocab_size > 0 && c.head_dim > 0,
              "DeviceFp8Weights: incomplete model config");
    for (int pass = 0; pass < 2; ++pass) {
      size_t off = 0;
      auto carve = [&](size_t bytes) -> unsigned char* {
        off = (off + 255) / 256 * 256;
        unsigned char* p = pass == 1 ? storage.data() + off : nullptr;
        off += bytes;
        return p;
      };
      auto take = [&](TensorView<T>& v, std::initializer_list<int64_t> dims) {
        int64_t n = 1;
        for (int64_t x : dims) n *= x;
        unsigned char* p = carve(sizeof(T) * static_cast<size_t>(n));
        if (pass == 1) v = TensorView<T>(reinterpret_cast<T*>(p), dims, Device::Cuda);
      };
      auto take8 = [&](Fp8Weight& f, int64_t N, int64_t K) {
        f.block_n = block ? kFp8Block : 1;
        f.block_k = block ? kFp8Block : static_cast<int>(K);
        f.scale_ld = block ? fp8_block_scale_ld(K) : 1;
        const int64_t nb = block ? (N + kFp8Block - 1) / kFp8Block : N;
        unsigned char* q = carve(static_cast<size_t>(N * K));
        unsigned char* s = carve(sizeof(float) * static_cast<size_t>(nb * f.scale_ld));
        if (pass == 1) {
          f.q = TensorView<fp8_e4m3>(reinterpret_cast<fp8_e4m3*>(q), {N, K}, Device::Cuda);
          f.scale = TensorView<float>(reinterpret_cast<float*>(s), {nb, f.scale_ld}, Device::Cuda);
        }
      };
      const int64_t H = c.hidden_size, I = c.intermediate_size;
      take(embed_tokens, {c.vocab_size, H});
      take(norm, {H});
      if (!tied) take(lm_head, {c.vocab_size, H});
      layers.assign(c.num_hidden_layers, {});
      for (auto& L : layers) {
        take(L.input_layernorm, {H});
        take8(L.qkv_proj, c.qkv_size(), H);
        if (c.attention_bias) take(L.qkv_bias, {c.qkv_size()});
        if (c.qk_norm) { take(L.q_norm, {c.head_dim}); take(L.k_norm, {c.head_dim}); }
        take8(L.o_proj, H, c.q_size());
        take(L.post_attention_layernorm, {H});
        take8(L.gate_up_proj, 2 * I, H);
        take8(L.down_proj, H, I);
      }
      if (pass == 0 && storage.size() < off) storage = DeviceBuffer<unsigned char>(off);
    }
    if (tied) lm_head = embed_tokens;
  }
};

}  // namespace pie::engine::cuda
