#pragma once
/// \file moe_test_data.hpp
/// \brief Shared data of the MoE kernel tests (test_moe.cu, test_moe_cutlass.cu): the shapes,
/// random inputs drawn fast enough for Qwen3-30B-A3B's expert sizes, device fetches, and the
/// CPU op (ops/cpu/moe.hpp) as the reference, over bf16-rounded router logits and over the
/// GPU's own routing.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "pie/core/random.hpp"
#include "pie/ops/cpu/moe.hpp"
#include "pie/ops/cuda/moe_routing.cuh"
#include "test_util.hpp"

namespace pie::test::moe {
using ops::cuda::MoeWorkspace;

struct Shape {
  int n, hidden, experts, inter, top_k;
  bool norm;
};

template <class T>
std::vector<T> fetch(const T* d, size_t n) {
  std::vector<T> h(n);
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  PIE_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

/// The CPU op's routing of logits (the router as the identity: logits·Iᵀ = logits exactly),
/// after rounding them to bf16 as the GPU op does for a bf16 model (moe_route's comment). The
/// inputs are fp32 draws, so a kernel that skipped the rounding would pick other experts where
/// two logits share a bf16 value or straddle one, and change every weight past 1e-6.
inline void cpu_route(const std::vector<float>& logits, int n, int E, int k, bool norm, std::vector<int32_t>& ids,
               std::vector<float>& w) {
  std::vector<float> eye(size_t(E) * E, 0.f);
  for (int e = 0; e < E; ++e) eye[size_t(e) * E + e] = 1.f;
  std::vector<float> rounded(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) rounded[i] = to_float(from_float<bf16>(logits[i]));
  ids.assign(size_t(n) * k, -1);
  w.assign(size_t(n) * k, 0.f);
  ops::cpu::moe_route(rounded.data(), E, n, E, eye.data(), E, k, norm, ids.data(), w.data());
}

struct ExpertsData {
  std::vector<bf16> x, gate_up, down;
  std::vector<float> logits;
  DeviceBuffer<bf16> dx, dgu, ddown, dout;
};

/// Uniform weights of standard deviation `scale` from a counter hash: Qwen3-30B-A3B's experts
/// are 600 M values per layer, which std::normal_distribution takes many seconds to draw.
inline std::vector<bf16> fast_weights(size_t n, float scale, uint64_t seed) {
  std::vector<bf16> v(n);
  const float mul = scale * 3.4641016f / 4294967296.0f;  // U(−√3, √3)·scale from 32 bits
  for (size_t i = 0; i < n; ++i) {
    const uint32_t h = static_cast<uint32_t>(rng::splitmix64(seed + i) >> 32);
    v[i] = from_float<bf16>((static_cast<float>(h) - 2147483648.0f) * mul);
  }
  return v;
}

inline ExpertsData make_data(const Shape& s, std::mt19937& rng) {
  ExpertsData d;
  d.x = randn<bf16>(size_t(s.n) * s.hidden, rng);
  const uint64_t seed = rng();
  d.gate_up = fast_weights(size_t(s.experts) * 2 * s.inter * s.hidden, 1.f / std::sqrt(float(s.hidden)), seed);
  d.down = fast_weights(size_t(s.experts) * s.hidden * s.inter, 1.f / std::sqrt(float(s.inter)), ~seed);
  d.logits = randn<float>(size_t(s.n) * s.experts, rng, 2.f);
  d.dx = upload(d.x);
  d.dgu = upload(d.gate_up);
  d.ddown = upload(d.down);
  d.dout = DeviceBuffer<bf16>(size_t(s.n) * s.hidden);
  return d;
}

/// The CPU op over the GPU's routing (downloaded), fp32 over the bf16 inputs.
inline std::vector<float> cpu_experts(const Shape& s, const ExpertsData& d, const MoeWorkspace<bf16>& ws) {
  auto ids = fetch(ws.routing().ids, size_t(s.n) * s.top_k);
  auto w = fetch(ws.routing().weights, size_t(s.n) * s.top_k);
  std::vector<float> out(size_t(s.n) * s.hidden);
  ops::cpu::moe_experts(to_f32(d.x).data(), s.hidden, s.n, s.hidden, d.gate_up.data(), d.down.data(), s.experts,
                        s.inter, s.top_k, ids.data(), w.data(), out.data());
  return out;
}

}  // namespace pie::test::moe
