#pragma once
/// \file roofline.cuh
/// \brief The roofline of an engine step, from ceilings measured on the card in the same run:
/// the least time a step can take is max(FLOPs / GEMM peak, bytes / copy bandwidth), with
///   FLOPs = 2·(linear weights)·tokens + 2·hidden·vocab·sampled rows + attention
///           (4·q_heads·head_dim per (query, key) pair it scores and sums),
///   bytes = every weight the step must read once (the linear layers, the norms, lm_head; the
///           embedding table only for the rows gathered) + K/V read by attention + K/V written.
/// A mixture-of-experts model (set_moe) counts, per sparse layer, its router and the experts the
/// step's T tokens touch: FLOPs 2·T·k·(3·I_moe·H) + 2·T·E·H; bytes the touched experts' weights,
/// E·(1 − (1 − k/E)^T) of them, the expectation under uniform routing (exactly k at T = 1, all E
/// at large T). Skewed routing touches fewer, so at mid-size T this roofline may be optimistic.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/model/config.hpp"
#include "pie/model/qwen3_moe.hpp"
#include "pie/ops/cuda/gemm.cuh"
#include "pie/sched/step_plan.hpp"

namespace pie::engine::cuda {

/// \brief Ceilings measured on this card.
struct Ceilings {
  double gemm_flops = 0;  ///< FLOP/s of a large bf16 GEMM (cuBLASLt)
  double copy_bw = 0;     ///< bytes/s of a device-to-device copy (read + written)
};

/// \brief Measures the ceilings: the best of several 8192³ bf16 GEMMs on random data and of
/// several 1 GiB device-to-device copies, timed with events after a warm-up.
inline Ceilings measure_ceilings(cudaStream_t stream = nullptr) {
  Ceilings c;
  cudaEvent_t a, b;
  PIE_CUDA_CHECK(cudaEventCreate(&a));
  PIE_CUDA_CHECK(cudaEventCreate(&b));
  auto best_ms = [&](auto&& body, int reps) {
    body();
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream));
    float best = 1e30f;
    for (int r = 0; r < reps; ++r) {
      PIE_CUDA_CHECK(cudaEventRecord(a, stream));
      body();
      PIE_CUDA_CHECK(cudaEventRecord(b, stream));
      PIE_CUDA_CHECK(cudaEventSynchronize(b));
      float ms = 0;
      PIE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      best = std::min(best, ms);
    }
    return static_cast<double>(best);
  };
  {
    const int64_t n = 8192;
    std::vector<bf16> h(static_cast<size_t>(n) * n);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (auto& v : h) {  // random operands: zeros run faster than real data
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      v = bf16(static_cast<float>(static_cast<int64_t>(x % 2001) - 1000) * 1e-3f);
    }
    DeviceBuffer<bf16> A(h.size()), B(h.size()), C(h.size());
    PIE_CUDA_CHECK(cudaMemcpy(A.data(), h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    PIE_CUDA_CHECK(cudaMemcpy(B.data(), h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    ops::cuda::Gemm gemm;
    auto va = A.view({n, n}), vb = B.view({n, n}), vc = C.view({n, n});
    double ms = best_ms([&] { for (int i = 0; i < 5; ++i) gemm(vc, va, vb, static_cast<const bf16*>(nullptr), stream); }, 5) / 5;
    c.gemm_flops = 2.0 * n * n * n / (ms * 1e-3);
  }
  {
    const size_t bytes = size_t{1} << 30;
    DeviceBuffer<unsigned char> src(bytes), dst(bytes);
    PIE_CUDA_CHECK(cudaMemset(src.data(), 0x5a, bytes));
    double ms = best_ms([&] {
      PIE_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, stream));
    }, 10);
    c.copy_bw = 2.0 * bytes / (ms * 1e-3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return c;
}

/// \brief FLOPs and bytes of one step.
struct StepCost {
  double flops = 0;
  double bytes = 0;
  double fp8_flops = 0;  ///< the part of `flops` on FP8 tensor cores (twice the bf16 rate on Hopper)
  double seconds(const Ceilings& c) const {
    return std::max((flops - fp8_flops / 2) / c.gemm_flops, bytes / c.copy_bw);
  }
};

/// \brief The mixture-of-experts part of a model (RooflineModel::set_moe).
struct MoeShape {
  int num_experts = 0, top_k = 0, inter = 0;
  int sparse_layers = 0;  ///< layers whose MLP is the MoE block (the others are dense)
};

/// \brief Counts a plan's FLOPs and minimum bytes for a model config and element sizes.
class RooflineModel {
 public:
  /// `fp8_linear`: the projections are fp8 (1 byte per weight, FP8 tensor-core FLOPs; their
  /// scales are below 0.1% of the bytes and not counted); embeddings, norms and lm_head stay at
  /// elem_bytes.
  RooflineModel(const model::ModelConfig& c, size_t elem_bytes, size_t kv_elem_bytes, bool fp8_linear = false)
      : c_(c), eb_(static_cast<double>(elem_bytes)), linear_eb_(fp8_linear ? 1.0 : eb_), fp8_(fp8_linear) {
    const double H = c.hidden_size, I = c.intermediate_size;
    const double per_layer = H * c.qkv_size() + static_cast<double>(c.q_size()) * H + 2 * I * H + I * H;
    linear_params_ = per_layer * c.num_hidden_layers;
    norm_params_ = (2 * H + (c.qk_norm ? 2.0 * c.head_dim : 0.0)) * c.num_hidden_layers + H;
    lm_head_params_ = static_cast<double>(c.vocab_size) * H;
    kv_token_bytes_ = 2.0 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * kv_elem_bytes;
  }

  /// The model's MoE layers: their dense MLP leaves the count, their router and experts join it.
  void set_moe(const MoeShape& m) {
    moe_ = m;
    const double H = c_.hidden_size, I = c_.intermediate_size;
    linear_params_ -= 3.0 * I * H * m.sparse_layers;
    linear_params_ += static_cast<double>(m.num_experts) * H * m.sparse_layers;  // routers
    expert_params_ = 3.0 * m.inter * H;
  }

  /// set_moe with the MoE fields of `dir`/config.json when the model is a Qwen3-MoE (else nothing).
  void set_moe_of(const std::string& dir) {
    if (dir.empty() || c_.architecture_name != Qwen3Moe::kArchitectureName) return;
    const model::MoeConfig m = model::load_moe_config(dir, c_.num_hidden_layers);
    MoeShape ms{m.num_experts, m.num_experts_per_tok, m.moe_intermediate_size, 0};
    for (int l = 0; l < c_.num_hidden_layers; ++l) ms.sparse_layers += m.sparse(l) ? 1 : 0;
    set_moe(ms);
  }

  /// Weight bytes a step reads however small it is (one token's experts included).
  double weight_bytes() const {
    // fp8 projections count linear_eb_ bytes a weight; norms, lm_head and experts stay 16-bit.
    return linear_params_ * linear_eb_ +
           (norm_params_ + lm_head_params_ + expert_params_ * moe_.top_k * moe_.sparse_layers) * eb_;
  }

  StepCost cost(const sched::StepPlan& p) const {
    StepCost s;
    const double T = p.num_tokens(), R = p.num_sampled_tokens() > 0 ? p.num_sampled_tokens() : p.logits_rows.size();
    const double H = c_.hidden_size;
    s.flops = 2.0 * linear_params_ * T + 2.0 * lm_head_params_ * R;
    if (fp8_) s.fp8_flops = 2.0 * linear_params_ * T;
    double pairs = 0, kv_read = 0;
    for (int i = 0; i < p.num_seqs(); ++i) {
      const double ctx = p.context_lens[i], q = p.query_lens[i];
      // Query j of the chunk (position ctx − q + j) scores ctx − q + j + 1 keys.
      pairs += q * (ctx - q) + q * (q + 1) / 2;
      kv_read += ctx;  // each of the sequence's keys/values read once
    }
    s.flops += 4.0 * c_.num_attention_heads * c_.head_dim * pairs * c_.num_hidden_layers;
    s.bytes = linear_params_ * linear_eb_ + (norm_params_ + lm_head_params_) * eb_ + T * H * eb_ /* embedding rows */ +
              kv_token_bytes_ * (kv_read + T);
    if (moe_.sparse_layers > 0) {
      const double E = moe_.num_experts, k = moe_.top_k;
      s.flops += 2.0 * T * k * expert_params_ * moe_.sparse_layers;
      s.bytes += E * (1.0 - std::pow(1.0 - k / E, T)) * expert_params_ * moe_.sparse_layers * eb_;
    }
    return s;
  }

 private:
  model::ModelConfig c_;
  double eb_, linear_eb_;
  bool fp8_;
  double linear_params_ = 0, norm_params_ = 0, lm_head_params_ = 0, kv_token_bytes_ = 0;
  MoeShape moe_;
  double expert_params_ = 0;  ///< one expert's gate, up and down weights
};

}  // namespace pie::engine::cuda
