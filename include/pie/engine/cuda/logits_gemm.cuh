#pragma once
/// \file logits_gemm.cuh
/// \brief lm_head as a cuBLASLt GEMM with f16/bf16 operands and a float32 output: the sampler
/// reads float logits. A thin adapter over ops::cuda::Gemm (whose float-output path writes the
/// logits straight from the fp32 accumulators), keeping the raw-pointer call of the runners.
#include <cstdint>

#include "pie/ops/cuda/gemm.cuh"

namespace pie::engine::cuda {

/// \brief logits [M, V] (float, contiguous) = rows [M, H]·W [V, H]ᵀ; plans cached per shape.
class LogitsGemm {
 public:
  explicit LogitsGemm(size_t workspace_bytes = size_t{32} << 20) : gemm_(workspace_bytes) {}

  template <class T>
  void operator()(float* logits, TensorView<T> rows, TensorView<T> w, cudaStream_t stream) {
    PIE_CHECK(rows.rank == 2 && w.rank == 2, "LogitsGemm: rows [M, H] and w [V, H]");
    TensorView<float> out(logits, {rows.shape[0], w.shape[0]}, Device::Cuda);
    gemm_(out, rows, w, static_cast<const T*>(nullptr), stream);
  }

  /// Rows up to which it runs pie's GEMV (0 under batch invariance).
  int gemv_max_rows() const { return gemm_.gemv_max_rows(); }
  /// One algorithm for every row count (ops::cuda::Gemm::set_batch_invariant).
  void set_batch_invariant(bool on) { gemm_.set_batch_invariant(on); }

 private:
  ops::cuda::Gemm gemm_;
};

}  // namespace pie::engine::cuda
