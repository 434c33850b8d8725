#pragma once
/// \file fp8_gemm.cuh
/// \brief Fp8Gemm: y [M, N] = q(x)·dq(W)ᵀ (+ bias) for an Fp8Weight (core/fp8_weight.hpp) with
/// bf16/f16 activations in and out. M = 1 runs the GEMV (fp8_gemv.cuh), weight-only by default
/// (x not quantized: core/fp8_weight.hpp's fp8_weight_only_single_rows); larger M quantizes
/// x (fp8_quant.cuh) and runs cuBLASLt's FP8 tensor-core matmul with the scales applied inside:
/// - block weights: A (= W) BLK128x128_32F scales, B (= x) VEC128_32F scales (sm_90, cuBLAS ≥ 12.9);
/// - per-channel weights: OUTER_VEC_32F on both (one scale per output channel and per token).
/// cuBLASLt computes column-major yᵀ [N, M] = W [N, K]·xᵀ, so W is A (transposed: the "TN" layout
/// FP8 needs) and x is B. The GEMM runs on M rounded up to 4 rows (the scale vectors' granularity);
/// when M is not a multiple of 4 it writes a scratch output and copies the M rows out.
/// Descriptors and the heuristic's algorithm are cached per shape; every buffer is allocated at
/// construction for `max_rows` × the largest K and N, so the calls can be captured in CUDA graphs.
/// A producer kernel may quantize x itself into act_buffer() (fp8_producers.cuh: RMSNorm and
/// SwiGLU); prequantized() then runs the GEMM alone.
/// In builds with CUTLASS's fp8 path (PIE_FP8_CUTLASS), `PIE_FP8_GEMM=cutlass` (or set_cutlass(true))
/// runs block-scaled products with bf16 output on CUTLASS's SM90 blockwise kernel instead
/// (fp8_gemm_cutlass.cuh). Opt-in: on an H100 (2026-12-06) its first tile configuration made the
/// fp8 decode step 9% slower than cuBLASLt's (docs/kernels.md, "The fp8 GEMM on CUTLASS").
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>

#include "pie/core/env_switch.hpp"
#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/fp8_gemv.cuh"
#include "pie/ops/cuda/fp8_gemv_w8a16_rows.cuh"
#include "pie/ops/cuda/fp8_producers.cuh"
#include "pie/ops/cuda/fp8_quant.cuh"
#include "pie/ops/cuda/gemm.cuh"
#include "pie/ops/fp8_rows_norm.hpp"
#if defined(PIE_FP8_CUTLASS)
#include "pie/ops/cuda/fp8_gemm_cutlass_path.cuh"
#endif

namespace pie::ops::cuda {

namespace detail {
/// y[m, n] += bias[n] for m < M.
template <class T>
__global__ void add_bias_kernel(T* y, int64_t ldy, int M, int N, const T* bias) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(M) * N) return;
  const int m = static_cast<int>(i / N), n = static_cast<int>(i % N);
  y[m * ldy + n] = from_f32<T>(to_f32(y[m * ldy + n]) + to_f32(bias[n]));
}
}  // namespace detail

/// The batch-1 GEMV's defaults: kernel variant (fp8_gemv.cuh), x quantized by its producer
/// (RMSNorm, SwiGLU) instead of in the GEMV. Variant 10 ("c2u4-nw8-persist", bit-identical to the
/// legacy kernel 0) since the H100 call of 2026-12-05: Qwen3-8B fp8 batch-1 ITL 4.462 → 4.312 ms
/// in the same call, 78% of the copy rate over an 8-layer chain against the legacy kernel's 70%.
/// Producer quantization lost there (ITL 4.913 ms): off. Since 2026-12-07 the GEMV is weight-only
/// at batch 1 (core/fp8_weight.hpp's fp8_weight_only_single_rows: x not quantized; 8-layer chain
/// 79.2 → 86.3% of copy, ITL 4.14 → 3.82 ms), and the residual add + RMSNorm goes into its
/// prologue where it is (3.82 → 3.79 ms; with the quantizing GEMV the norm prologue gained nothing:
/// 4.13 ms). Since 2026-12-07 (twenty-third session) the rows are dealt to warps, not CTAs
/// (variant 14, c2u4-nw8-flat, kFp8GridFlat; bit-identical): ITL 3.843 → 3.755 ms in one H100
/// call, the 8-layer weight-only chain 84.6 → 86.3% of copy. docs/kernels.md has the numbers.
inline constexpr int kFp8GemvDefaultVariant = 14;
inline constexpr bool kFp8GemvDefaultPre = false;

/// \brief The fp8 linear layer of one GPU (see the file comment).
class Fp8Gemm {
 public:
  /// Buffers for up to `max_rows` rows of x with K ≤ max_k and outputs with N ≤ max_n.
  Fp8Gemm(int64_t max_rows, int64_t max_k, int64_t max_n, size_t workspace_bytes = size_t{32} << 20)
      : max_rows_(fp8_padded_rows(std::max<int64_t>(max_rows, 1))), max_k_(max_k), max_n_(max_n),
        xq_(static_cast<size_t>(max_rows_ * max_k)),
        xs_(static_cast<size_t>(max_rows_ * ((max_k + kFp8Block - 1) / kFp8Block + 1))),
        y_pad_(static_cast<size_t>(max_rows_ * max_n) * 2), ws_(workspace_bytes) {
    PIE_CUBLAS_CHECK(cublasLtCreate(&handle_));
    // The batch-1 GEMV's kernel variant and where its x comes from (docs/kernels.md), with
    // environment overrides for A/B runs: PIE_FP8_GEMV=id, PIE_FP8_GEMV_PRE=0/1 (producers
    // quantize x at batch 1 too; not with the weight-only GEMV), PIE_FP8_GEMV_NORM=0/1 (the norm
    // in the GEMV's prologue; default: with the weight-only GEMV), PIE_FP8_GEMV_W8A16=0/1.
    gemv_variant_ = env_count("PIE_FP8_GEMV", std::getenv("PIE_FP8_GEMV"), gemv_variant_);
    PIE_CHECK(gemv_variant_ < kFp8GemvVariants, "PIE_FP8_GEMV=", gemv_variant_, ": variants are 0..",
              kFp8GemvVariants - 1);
    gemv_pre_ = env_switch("PIE_FP8_GEMV_PRE", std::getenv("PIE_FP8_GEMV_PRE"), gemv_pre_);
    gemv_w8a16_ = fp8_weight_only_single_rows();  // core/fp8_weight.hpp: the CPU reference's rule too
    gemv_norm_ = gemv_w8a16_;  // the norm prologue pays with the weight-only GEMV only (see above)
    gemv_norm_ = env_switch("PIE_FP8_GEMV_NORM", std::getenv("PIE_FP8_GEMV_NORM"), gemv_norm_);
    gemv_pre_ = gemv_pre_ && gemv_variant_ > 0 && !gemv_w8a16_;  // the legacy kernel quantizes x itself
    gemv_norm_ = gemv_norm_ && gemv_variant_ > 0;
    rows_norm_max_ = fp8_rows_norm_max_rows(std::getenv("PIE_FP8_ROWS_NORM"));  // ops/fp8_rows_norm.hpp
#if defined(PIE_FP8_CUTLASS)
    if (fp8_cutlass_wanted()) cutlass_ = make_fp8_cutlass_path(max_rows_);
#endif
  }
  Fp8Gemm(const Fp8Gemm&) = delete;
  Fp8Gemm& operator=(const Fp8Gemm&) = delete;
  ~Fp8Gemm() {
    for (auto& [k, e] : cache_) {
      cublasLtMatrixLayoutDestroy(e.a); cublasLtMatrixLayoutDestroy(e.b); cublasLtMatrixLayoutDestroy(e.c);
      cublasLtMatrixLayoutDestroy(e.d); cublasLtMatmulDescDestroy(e.desc);
    }
    cublasLtDestroy(handle_);
  }

  /// Whether M = 1 takes the GEMV (default on; off: cuBLASLt for every M, for tests).
  void set_gemv(bool on) { gemv_ = on; }
  /// Whether this build has CUTLASS's fp8 path (PIE_FP8_CUTLASS).
  static constexpr bool cutlass_compiled() {
#if defined(PIE_FP8_CUTLASS)
    return true;
#else
    return false;
#endif
  }
  /// Whether block-scaled products take CUTLASS's kernel where it applies (a build with
  /// PIE_FP8_CUTLASS; default off unless `PIE_FP8_GEMM=cutlass`); off: cuBLASLt. For tests and A/B.
  void set_cutlass(bool on) {
#if defined(PIE_FP8_CUTLASS)
    if (on && !cutlass_) cutlass_ = make_fp8_cutlass_path(max_rows_);
    use_cutlass_ = on;
#else
    PIE_CHECK(!on, "Fp8Gemm: this build has no CUTLASS fp8 path (configure with CUTLASS's headers and -DPIE_FP8_CUTLASS=ON)");
#endif
  }
  /// Whether an [M, K] × [N, K]ᵀ block-scaled product with bf16 output into rows of stride ldy
  /// would run on CUTLASS.
  bool uses_cutlass(int64_t M, int64_t N, int64_t K, int64_t ldy) const {
    return M > 1 && cutlass_takes(fp8_padded_rows(M), N, K, fp8_block_scale_ld(K), writes_direct(M, ldy) ? ldy : N);
  }
  /// The batch-1 GEMV's kernel variant (fp8_gemv.cuh), and whether at batch 1 a producer may
  /// quantize x for it (prequantized() then runs the GEMV on the codes; variant ≥ 1 only).
  void set_gemv_variant(int v, bool prequantized = false) {
    PIE_CHECK(v >= 0 && v < kFp8GemvVariants, "Fp8Gemm: no GEMV variant ", v);
    gemv_variant_ = v;
    gemv_pre_ = prequantized && v > 0;
  }
  int gemv_variant() const { return gemv_variant_; }
  /// Whether M = 1 runs weight-only (fp8_gemv_w8a16, x not quantized; PIE_FP8_GEMV_W8A16): the
  /// producers then write no codes at batch 1; with fuses_norm, norm_gemv() runs the weight-only
  /// GEMV with the norm in its prologue.
  void set_gemv_w8a16(bool on) {
    gemv_w8a16_ = on;
    if (on) gemv_pre_ = false;
  }
  /// Whether a batch-1 add_rms_norm + linear on [1, K] runs as norm_gemv() (PIE_FP8_GEMV_NORM).
  bool fuses_norm(int64_t K) const {
    return gemv_norm_ && uses_gemv(1, K) && fp8_add_rms_norm_gemv_supported(K, gemv_variant_);
  }
  /// Whether an add_rms_norm + linear on [M, K], 2 ≤ M ≤ 4, runs as norm_gemv(): M is within the
  /// rows the fused norm is wanted at (PIE_FP8_ROWS_NORM, default 2: ops/fp8_rows_norm.hpp), the
  /// weight-only rows GEMV takes the rows (uses_gemv) and the norm fits its prologue
  /// (fp8_add_rms_norm_gemv_rows_supported).
  bool fuses_norm(int64_t M, int64_t K) const {
    if (M == 1) return fuses_norm(K);
    return M > 1 && M <= rows_norm_max_ && uses_gemv(M, K) && fp8_add_rms_norm_gemv_rows_supported(M, K);
  }
  /// The fused norm at every row count (2–4) the rows GEMV takes, or at none.
  void set_rows_norm(bool on) { rows_norm_max_ = on ? 4 : 0; }
  /// The residual add + RMSNorm of x's rows, then the linear, in one launch: fp8_add_rms_norm_gemv
  /// with this GEMM's variant at one row, fp8_add_rms_norm_gemv_rows at 2–4 (fuses_norm(M, K) must
  /// hold). r_in and r_out hold x's rows, K apart.
  template <class T>
  void norm_gemv(TensorView<T> y, TensorView<T> x, const T* r_in, T* r_out, const T* norm_w, float eps, bool first,
                 const Fp8Weight& w, const T* bias, cudaStream_t stream) {
    const int64_t M = x.shape[0];
    PIE_CHECK(fuses_norm(M, w.cols()), "Fp8Gemm: norm_gemv() where no GEMV takes the norm: M = ", M, ", K = ",
              w.cols());
    if (M == 1)
      fp8_add_rms_norm_gemv(y, x, r_in, r_out, norm_w, eps, first, w, bias, stream, gemv_variant_, gemv_w8a16_);
    else
      fp8_add_rms_norm_gemv_rows(y, x, r_in, r_out, norm_w, eps, first, w, bias, stream);
  }
  /// Device bytes of the scratch buffers.
  size_t bytes() const {
    size_t b = xq_.size() + xs_.size() * sizeof(float) + y_pad_.size() + ws_.size();
#if defined(PIE_FP8_CUTLASS)
    if (cutlass_) b += cutlass_->bytes();
#endif
    return b;
  }
  /// Whether an [M, K] activation takes a GEMV (which quantizes x itself, or not at all): one row,
  /// or 2–4 rows weight-only where fp8_weight_only_rows says so (PIE_FP8_GEMV_W8A16_ROWS).
  bool uses_gemv(int64_t M, int64_t K) const {
    return gemv_ && ((M == 1 && fp8_gemv_supported(K)) || (M > 1 && gemv_w8a16_ && fp8_weight_only_rows(M, K)));
  }
  /// Whether a producer can write an [M, K] activation into act_buffer().
  bool fits(int64_t M, int64_t K) const { return fp8_padded_rows(M) <= max_rows_ && K <= max_k_; }
  /// Whether an [M, K] activation headed here should be quantized by its producer: always above
  /// batch 1 (the GEMM), at batch 1 when the GEMV takes prequantized codes.
  bool wants_producer(int64_t M, int64_t K) const { return (!uses_gemv(M, K) || gemv_pre_) && fits(M, K); }
  /// Where a producer writes the quantized activation of the next prequantized() call: codes
  /// and scales in fp8_quantize's layouts (per token for per-channel weights, else per group).
  Fp8Act act_buffer(bool per_token) { return {xq_.data(), xs_.data(), per_token}; }

  template <class T>
  void operator()(TensorView<T> y, TensorView<T> x, const Fp8Weight& w, const T* bias, cudaStream_t stream) {
    static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "Fp8Gemm: f16 or bf16 activations");
    const int64_t M = x.shape[0], N = w.rows(), K = w.cols();
    PIE_CHECK(x.rank == 2 && y.rank == 2 && x.shape[1] == K && y.shape[0] == M && y.shape[1] == N,
              "Fp8Gemm: shapes do not chain: x [", x.shape[0], ",", x.shape[1], "], w [", N, ",", K, "], y [",
              y.shape[0], ",", y.shape[1], "]");
    PIE_CHECK(x.stride[1] == 1 && y.stride[1] == 1, "Fp8Gemm: rows must be contiguous");
    if (M == 0) return;
    if (uses_gemv(M, K)) {
      if (M > 1)  // 2–4 rows, weight-only (fp8_gemv_w8a16_rows.cuh)
        fp8_gemv_w8a16_rows(y, x, w, bias, stream);
      else if (gemv_w8a16_)
        fp8_gemv_w8a16(y, x, w, bias, stream, gemv_variant_ > 0 ? gemv_variant_ : kFp8GemvDefaultVariant);
      else
        fp8_gemv(y, x, w, bias, stream, gemv_variant_);
      return;
    }
    const int64_t Mp = fp8_padded_rows(M);
    PIE_CHECK(Mp <= max_rows_ && K <= max_k_ && N <= max_n_, "Fp8Gemm: [", M, ", ", K, "] × [", N,
              "] exceeds the buffers sized for ", max_rows_, " rows, K ≤ ", max_k_, ", N ≤ ", max_n_);
    PIE_CHECK(K % 16 == 0 && N % 16 == 0, "Fp8Gemm: K (", K, ") and N (", N, ") must be multiples of 16 (fp8 tensor cores)");
    fp8_quantize(x, w.per_channel(), xq_.data(), xs_.data(), stream);
    matmul(y, w, bias, stream);
  }

  /// y [M, N] = a·dq(W)ᵀ (+ bias), a being the [M, w.cols()] activation a producer quantized into
  /// act_buffer(w.per_channel()) (M > 1, the GEMV off, or the GEMV on prequantized codes).
  template <class T>
  void prequantized(TensorView<T> y, const Fp8Weight& w, const T* bias, cudaStream_t stream) {
    static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "Fp8Gemm: f16 or bf16 activations");
    PIE_CHECK(y.rank == 2 && y.shape[1] == w.rows() && y.stride[1] == 1, "Fp8Gemm: y must be [M, ", w.rows(), "]");
    if (uses_gemv(y.shape[0], w.cols())) {
      PIE_CHECK(gemv_pre_ && y.shape[0] == 1, "Fp8Gemm: prequantized() where a GEMV reads x itself");
      fp8_gemv_prequantized(y, xq_.data(), xs_.data(), fp8_padded_rows(1), w, bias, stream, gemv_variant_);
      return;
    }
    if (y.shape[0] == 0) return;
    matmul(y, w, bias, stream);
  }

 private:
  /// Whether the GEMM writes y in place (else y_pad_, then a copy): whole 4-row groups, 16-byte rows.
  static bool writes_direct(int64_t M, int64_t ldy) { return fp8_padded_rows(M) == M && ldy % 8 == 0; }
  /// Whether the CUTLASS path is on and takes this product (its operands as matmul() passes them).
  bool cutlass_takes(int64_t Mp, int64_t N, int64_t K, int64_t w_scale_ld, int64_t ldo) const {
#if defined(PIE_FP8_CUTLASS)
    return use_cutlass_ && cutlass_ && cutlass_->takes(Mp, N, K, w_scale_ld, ldo);
#else
    (void)Mp, (void)N, (void)K, (void)w_scale_ld, (void)ldo;
    return false;
#endif
  }
  /// The GEMM on the activation in xq_/xs_ (M = y's rows).
  template <class T>
  void matmul(TensorView<T> y, const Fp8Weight& w, const T* bias, cudaStream_t stream) {
    const int64_t M = y.shape[0], N = w.rows(), K = w.cols();
    const int64_t Mp = fp8_padded_rows(M);
    PIE_CHECK(Mp <= max_rows_ && K <= max_k_ && N <= max_n_, "Fp8Gemm: [", M, ", ", K, "] × [", N,
              "] exceeds the buffers sized for ", max_rows_, " rows, K ≤ ", max_k_, ", N ≤ ", max_n_);
    PIE_CHECK(K % 16 == 0 && N % 16 == 0, "Fp8Gemm: K (", K, ") and N (", N, ") must be multiples of 16 (fp8 tensor cores)");
    const bool block = !w.per_channel();
    const bool direct = writes_direct(M, y.stride[0]);
    T* out = direct ? y.data : reinterpret_cast<T*>(y_pad_.data());
    const int64_t ldo = direct ? y.stride[0] : N;
    constexpr cudaDataType_t dt = std::is_same_v<T, pie::bf16> ? CUDA_R_16BF : CUDA_R_16F;
    bool done = false;
#if defined(PIE_FP8_CUTLASS)
    if constexpr (std::is_same_v<T, pie::bf16>) {
      if (block && cutlass_takes(Mp, N, K, w.scale_ld, ldo)) {
        cutlass_->run(w.q.data, w.scale.data, xq_.data(), xs_.data(), out, ldo, N, K, Mp, stream);
        done = true;
      }
    }
#endif
    if (!done) {
      Entry& e = entry(Key{Mp, N, K, ldo, dt, block});
      const void* a_scale = w.scale.data;
      const void* b_scale = xs_.data();
      PIE_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale)));
      PIE_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale)));
      const float alpha = 1.f, beta = 0.f;
      PIE_CUBLAS_CHECK(cublasLtMatmul(handle_, e.desc, &alpha, w.q.data, e.a, xq_.data(), e.b, &beta, out, e.c, out,
                                      e.d, &e.algo, ws_.data(), ws_.size(), stream));
    }
    if (!direct)
      PIE_CUDA_CHECK(cudaMemcpy2DAsync(y.data, y.stride[0] * sizeof(T), out, N * sizeof(T), N * sizeof(T), M,
                                       cudaMemcpyDeviceToDevice, stream));
    if (bias) {
      const int64_t n = M * N;
      detail::add_bias_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
          dev(y.data), y.stride[0], static_cast<int>(M), static_cast<int>(N), dev(bias));
      PIE_CUDA_CHECK_LAUNCH();
    }
  }

  struct Key {
    int64_t m, n, k, ldy;
    cudaDataType_t dt;
    bool block;
    bool operator==(const Key& o) const {
      return std::tie(m, n, k, ldy, dt, block) == std::tie(o.m, o.n, o.k, o.ldy, o.dt, o.block);
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      size_t h = 1469598103934665603ull;
      for (int64_t v : {k.m, k.n, k.k, k.ldy, int64_t(k.dt), int64_t(k.block)})
        h = (h ^ static_cast<size_t>(v)) * 1099511628211ull;
      return h;
    }
  };
  struct Entry {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };

  Entry& entry(const Key& k) {
    auto it = cache_.find(k);
    if (it != cache_.end()) return it->second;
    Entry e;
    PIE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&e.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    const cublasLtMatmulMatrixScale_t am =
        k.block ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    const cublasLtMatmulMatrixScale_t bm =
        k.block ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    if (!k.block) {
      // Per-channel scales: FP8 fast accumulation (no fp32 promotion inside K), as vLLM's
      // per-channel/per-token CUTLASS kernels do; block scales promote at every 128-wide block.
      const int8_t fast = 1;
      PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)));
    }
    PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &am, sizeof(am)));
    PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &bm, sizeof(bm)));
    // Scale pointers are set per call (one descriptor serves every layer of a shape); the
    // heuristic needs them set to something.
    const void* a_scale = xs_.data();
    const void* b_scale = xs_.data();
    PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale)));
    PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale)));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.a, CUDA_R_8F_E4M3, k.k, k.n, k.k));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.b, CUDA_R_8F_E4M3, k.k, k.m, k.k));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.c, k.dt, k.n, k.m, k.ldy));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.d, k.dt, k.n, k.m, k.ldy));
    cublasLtMatmulPreference_t pref;
    PIE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = ws_.size();
    PIE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, e.desc, e.a, e.b, e.c, e.d, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    PIE_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, "Fp8Gemm: cuBLASLt has no FP8 algorithm (",
              k.block ? "128x128 block / 1x128 group scales" : "per-channel / per-token scales", ") for M=", k.m,
              " N=", k.n, " K=", k.k, ": ", cublasGetStatusString(st));
    e.algo = res.algo;
    return cache_.emplace(k, e).first->second;
  }

  int64_t max_rows_, max_k_, max_n_;
  bool gemv_ = true;
  int gemv_variant_ = kFp8GemvDefaultVariant;
  bool gemv_pre_ = kFp8GemvDefaultPre;
  bool gemv_norm_ = false;
  int rows_norm_max_ = kFp8RowsNormMaxRowsDefault;  ///< fuses_norm at 2..rows_norm_max_ rows
  bool gemv_w8a16_ = false;
  DeviceBuffer<fp8_e4m3> xq_;
  DeviceBuffer<float> xs_;
  DeviceBuffer<unsigned char> y_pad_;
  DeviceBuffer<unsigned char> ws_;
  cublasLtHandle_t handle_ = nullptr;
  std::unordered_map<Key, Entry, KeyHash> cache_;
#if defined(PIE_FP8_CUTLASS)
  /// `PIE_FP8_GEMM`: `cutlass` takes CUTLASS's kernel; unset or `cublaslt` keeps cuBLASLt.
  static bool fp8_cutlass_wanted() {
    const char* v = std::getenv("PIE_FP8_GEMM");
    if (v == nullptr || *v == '\0') return false;
    const std::string s = v;
    PIE_CHECK(s == "cutlass" || s == "cublaslt", "PIE_FP8_GEMM must be cutlass or cublaslt (got '", s, "')");
    return s == "cutlass";
  }
  std::unique_ptr<Fp8CutlassPath> cutlass_;
  bool use_cutlass_ = fp8_cutlass_wanted();
#endif
};

}  // namespace pie::ops::cuda
