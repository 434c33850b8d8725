#pragma once
/// \file weights.hpp
/// \brief Weights of a decoder-only model in the policy dtype, laid out for the forward pass:
/// Q/K/V fused into one [(q + 2·kv)·head_dim, hidden] matrix and gate/up into one
/// [2·intermediate, hidden] matrix (gate rows first), so each is one GEMM per step.
/// All matrices are row-major [out_features, in_features] as in the checkpoint (y = x·Wᵀ).
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/tensor.hpp"
#include "pie/model/config.hpp"

namespace pie::model {

/// \brief One decoder layer's tensors (views into Weights::storage).
template <class T>
struct LayerWeights {
  TensorView<T> input_layernorm;           ///< [hidden]
  TensorView<T> qkv_proj;                  ///< [(nq + 2 nkv)·hd, hidden]
  TensorView<T> qkv_bias;                  ///< [(nq + 2 nkv)·hd] or empty (attention_bias)
  TensorView<T> q_norm;                    ///< [hd] or empty (qk_norm)
  TensorView<T> k_norm;                    ///< [hd] or empty
  TensorView<T> o_proj;                    ///< [hidden, nq·hd]
  TensorView<T> post_attention_layernorm;  ///< [hidden]
  TensorView<T> gate_up_proj;              ///< [2·intermediate, hidden]
  TensorView<T> down_proj;                 ///< [hidden, intermediate]
};

/// \brief All weights of a model, owning their host storage.
template <class T>
struct Weights {
  ModelConfig config;
  TensorView<T> embed_tokens;              ///< [vocab, hidden]
  std::vector<LayerWeights<T>> layers;
  TensorView<T> norm;                      ///< [hidden]
  TensorView<T> lm_head;                   ///< [vocab, hidden]; aliases embed_tokens when tied
  std::vector<HostBuffer<T>> storage;      ///< owns every tensor above

  /// Allocates an owned tensor of `dims` and returns its view.
  TensorView<T> allocate(std::initializer_list<int64_t> dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    storage.emplace_back(static_cast<size_t>(n));
    return TensorView<T>(storage.back().data(), dims);
  }
};

}  // namespace pie::model
