#pragma once
/// \file model_runner.hpp
/// \brief ModelRunner<Model, Policy>: owns a model's weights and its paged KV cache (device
/// pool + host swap pool) and turns a StepPlan into logits: block operations first (swap in,
/// swap out, copy-on-write, in the plan's order), then one forward pass over every scheduled
/// token. The primary template is a static_assert; each (model, backend) pair is one
/// specialization — this file holds the CPU one, the CUDA backend adds its own.
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/core/policy.hpp"
#include "pie/kv/kv_layout.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/model/weights.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie {

/// \brief Runs one model on one backend over StepPlans. Specialised per (Model, Backend).
template <class Model, class Policy, class Backend = typename Policy::backend_type>
class ModelRunner {
  static_assert(sizeof(Model) == 0, "ModelRunner: no runner for this model and backend (see model_runner.hpp)");
};

/// \brief The Qwen3 family on the CPU backend.
///
/// KV storage is one host array per pool laid out [layer][block][2][kv_heads][block_size]
/// [head_dim], so layer l's PagedKV pool starts at l·num_blocks·block_elems and a block copy
/// is one memcpy per layer.
template <class Policy>
class ModelRunner<Qwen3, Policy, backend::Cpu> {
 public:
  using T = typename Policy::dtype;
  using KVT = typename Policy::kv_dtype;
  using Variant = typename Policy::attention_variant;

  ModelRunner(model::Weights<T> weights, int num_blocks, int num_host_blocks, Variant variant = {})
      : weights_(std::make_unique<model::Weights<T>>(std::move(weights))),
        model_(*weights_, variant), num_blocks_(num_blocks), num_host_blocks_(num_host_blocks) {
    const auto& c = weights_->config;
    layout_ = kv::KVLayout{c.num_hidden_layers, c.num_key_value_heads, c.head_dim, Policy::block_size,
                           DTypeTraits<KVT>::dtype};
    PIE_CHECK(num_blocks > 0, "the KV cache needs at least one block, got ", num_blocks);
    block_elems_ = layout_.block_elems_per_layer();
    device_ = HostBuffer<KVT>(block_elems_ * num_blocks * c.num_hidden_layers);
    if (num_host_blocks > 0) host_ = HostBuffer<KVT>(block_elems_ * num_host_blocks * c.num_hidden_layers);
    for (int l = 0; l < c.num_hidden_layers; ++l)
      pools_.push_back(device_.data() + static_cast<size_t>(l) * num_blocks * block_elems_);
  }

  const model::ModelConfig& config() const { return weights_->config; }
  const kv::KVLayout& layout() const { return layout_; }
  int num_blocks() const { return num_blocks_; }

  /// Runs the plan's block operations and forward pass; returns logits
  /// [plan.logits_rows.size()][vocab], valid until the next call.
  std::span<const float> execute(const sched::StepPlan& plan) {
    for (const auto& c : plan.swap_in) copy(host_.data(), num_host_blocks_, c.src, device_.data(), num_blocks_, c.dst);
    for (const auto& c : plan.swap_out) copy(device_.data(), num_blocks_, c.src, host_.data(), num_host_blocks_, c.dst);
    for (const auto& c : plan.copy_blocks) copy(device_.data(), num_blocks_, c.src, device_.data(), num_blocks_, c.dst);
    const size_t vocab = static_cast<size_t>(config().vocab_size);
    logits_.resize(plan.logits_rows.size() * vocab);
    model_.forward(plan, pools_, Policy::block_size, logits_.data());
    return logits_;
  }

 private:
  /// Copies block `src` of pool a (a_blocks blocks per layer) to block `dst` of pool b, every layer.
  void copy(const KVT* a, int a_blocks, int32_t src, KVT* b, int b_blocks, int32_t dst) {
    PIE_CHECK(src >= 0 && src < a_blocks && dst >= 0 && dst < b_blocks, "block copy ", src, " → ", dst,
              " out of range (", a_blocks, " / ", b_blocks, " blocks)");
    for (int l = 0; l < layout_.num_layers; ++l)
      std::memcpy(b + (static_cast<size_t>(l) * b_blocks + dst) * block_elems_,
                  a + (static_cast<size_t>(l) * a_blocks + src) * block_elems_, block_elems_ * sizeof(KVT));
  }

  std::unique_ptr<model::Weights<T>> weights_;  // stable address: model_ refers to it
  model::Qwen3Cpu<T, KVT, Variant> model_;
  kv::KVLayout layout_;
  int num_blocks_ = 0, num_host_blocks_ = 0;
  size_t block_elems_ = 0;
  HostBuffer<KVT> device_, host_;
  std::vector<KVT*> pools_;
  std::vector<float> logits_;
};

}  // namespace pie
