#pragma once
/// \file fp8_weight.hpp
/// \brief Fp8Weight: a linear weight stored as fp8 e4m3 with float scales, and the one rule by
/// which weights and activations are quantized (shared by the loader, the CPU reference and the
/// CUDA kernels, so they agree bit for bit on every quantized value).
///
/// Two schemes, both vLLM's:
/// - block (Qwen3-FP8 / DeepSeek-V3 checkpoints): one scale per 128×128 weight block
///   (`weight_scale_inv`), activations quantized per token and 128-column group;
/// - per channel (`--quantization fp8` on a bf16 checkpoint): one scale per output row, activations
///   quantized per token.
/// In both, W[n, k] ≈ float(q[n, k]) · scale(n, k), and an activation group with absolute maximum
/// a gets the scale a / 448 and the values e4m3(x / scale) (round to nearest even, saturating).
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "pie/core/dtype.hpp"
#include "pie/core/env_switch.hpp"
#include "pie/core/tensor.hpp"

namespace pie {

/// Largest finite e4m3 value.
inline constexpr float kFp8E4m3Max = 448.0f;
/// The weight block and activation group of the block scheme.
inline constexpr int kFp8Block = 128;

/// \brief The dynamic scale of a group whose absolute maximum is `amax` (1 for an all-zero group,
/// so that 0 / scale stays 0). The same expression on the host and the device.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline float fp8_group_scale(float amax) {
  return amax > 0.0f ? amax / kFp8E4m3Max : 1.0f;
}

/// \brief An fp8 e4m3 linear weight [N, K] (row-major, y = x·Wᵀ) with its scales.
///
/// W[n, k] ≈ float(q[n, k]) · scale.data[(n / block_n) · scale_ld + k / block_k]. Block scheme:
/// block_n = block_k = 128, scale_ld ≥ ceil(K / 128) (padded to a multiple of 4, the row stride
/// cuBLASLt's 128×128 block scales take). Per channel: block_n = 1, block_k = K, scale_ld = 1.
/// Host or device views, like TensorView.
struct Fp8Weight {
  TensorView<fp8_e4m3> q;   ///< [N, K]
  TensorView<float> scale;  ///< [ceil(N / block_n), scale_ld]
  int block_n = kFp8Block;
  int block_k = kFp8Block;
  int64_t scale_ld = 0;

  int64_t rows() const { return q.shape[0]; }
  int64_t cols() const { return q.shape[1]; }
  bool per_channel() const { return block_n == 1; }
  /// Activation group size along K (128 for blocks, K for per-token scales).
  int act_group() const { return block_k; }
  int64_t k_blocks() const { return (cols() + block_k - 1) / block_k; }
  int64_t n_blocks() const { return (rows() + block_n - 1) / block_n; }
  /// Host: the dequantization factor of element (n, k).
  float scale_at(int64_t n, int64_t k) const { return scale.data[(n / block_n) * scale_ld + k / block_k]; }
  /// Bytes of the quantized weight and its scales.
  size_t bytes() const { return static_cast<size_t>(q.numel()) + static_cast<size_t>(scale.numel()) * sizeof(float); }
};

/// Whether a linear layer applied to a single row leaves that row unquantized (weight-only,
/// "W8A16": y = x·dq(W)ᵀ with x's 16-bit values), instead of quantizing it as above. At one row
/// the weights' bytes are the whole cost and the activation's quantization only adds a reduction
/// in front of them (docs/kernels.md, "The batch-1 fp8 GEMV without activation quantization").
/// One rule for the CPU reference (ops/cpu, n == 1) and the GPU (Fp8Gemm, M == 1), read once from
/// `PIE_FP8_GEMV_W8A16` (1 on, 0 off); unset: kFp8WeightOnlySingleRowsDefault — on since one H100
/// (2026-12-07): Qwen3-8B per-channel fp8 batch-1 ITL 4.14 → 3.79 ms with the norm fused.
inline constexpr bool kFp8WeightOnlySingleRowsDefault = true;
inline bool fp8_weight_only_single_rows() {
  static const bool on = [] {
    return env_switch("PIE_FP8_GEMV_W8A16", std::getenv("PIE_FP8_GEMV_W8A16"), kFp8WeightOnlySingleRowsDefault);
  }();
  return on;
}

/// Most rows a weight-only fp8 linear takes (fp8_weight_only_rows) by default: the multi-row GEMV
/// (ops/cuda/fp8_gemv_w8a16_rows.cuh) against cuBLASLt's fp8 matmul, one H100 (2026-12-07), decode
/// step of Qwen3-8B fp8 at batch 2: 5.69 → 4.19 ms (per channel), 5.41 → 4.40 (128 × 128 blocks);
/// at batch 4: 5.69 → 5.05, 5.37 → 5.06.
inline constexpr int kFp8WeightOnlyMaxRowsDefault = 4;
/// Most rows a weight-only fp8 linear takes (fp8_weight_only_rows): kFp8WeightOnlyMaxRowsDefault,
/// or 1, 2 or 4 with `PIE_FP8_GEMV_W8A16_ROWS=n` (n = 3 counts as 2: the decode graphs' batch
/// buckets are 1, 2, 4, …, and a batch of 3 replays the bucket of 4, so a limit of 3 would split
/// the CPU reference (3 rows) from the GPU (4)); 0 when fp8_weight_only_single_rows() is off.
/// Read once.
inline int fp8_weight_only_max_rows() {
  static const int rows = [] {
    if (!fp8_weight_only_single_rows()) return 0;
    const int n = env_count("PIE_FP8_GEMV_W8A16_ROWS", std::getenv("PIE_FP8_GEMV_W8A16_ROWS"),
                            kFp8WeightOnlyMaxRowsDefault);
    PIE_CHECK(n >= 1 && n <= 4, "PIE_FP8_GEMV_W8A16_ROWS must be 1 to 4, got ", n);
    return n >= 4 ? 4 : n >= 2 ? 2 : 1;
  }();
  return rows;
}

/// \brief Whether an fp8 linear of n rows and K columns leaves its rows unquantized (weight-only):
/// one row as fp8_weight_only_single_rows() says, 2–4 rows where fp8_weight_only_max_rows()
/// allows them and their 16-bit copies fit the multi-row GEMV's shared memory (n · K ≤ 65,536).
/// The CPU reference and Fp8Gemm both ask this, so they compute the same scheme.
inline bool fp8_weight_only_rows(int64_t n, int64_t k) {
  if (n < 1 || n > fp8_weight_only_max_rows() || k <= 0 || k % 16 != 0) return false;
  return n == 1 ? k <= 32768 : n * k <= 65536;
}

/// The row stride of a 128×128 block-scale tensor for K columns: ceil(K / 128) rounded up to 4.
inline int64_t fp8_block_scale_ld(int64_t k) {
  const int64_t kb = (k + kFp8Block - 1) / kFp8Block;
  return (kb + 3) / 4 * 4;
}

}  // namespace pie
