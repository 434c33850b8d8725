#pragma once
/// \file gemm.cuh
/// \brief Linear layers: y = x·Wᵀ (+ bias) with f16/bf16 operands and f32 accumulation. Up to
/// `gemv_max_rows()` rows (batch-1 decode steps by default) go through pie's GEMV (gemv.cuh),
/// which streams the weights faster than cuBLASLt does at that size and overlaps the kernel
/// before it; larger M through cuBLASLt, whose heuristic
/// algorithm and descriptors are built once per shape and cached, with one workspace for every
/// call (it must not be shared by concurrent streams).
///
/// Batch-invariant mode (`set_batch_invariant`): every M of one (N, K) shape runs the SAME
/// cuBLASLt algorithm, chosen once at a reference M among those without split-K, and the GEMV is
/// off. A fixed tiling with no split-K reduces each output element over K in one fixed order,
/// so a row's result no longer depends on how many rows share the launch (checked bit for bit
/// in tests/cuda/test_gemm.cu). The heuristic's per-M choice is what breaks that by default.
#include <cublasLt.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <unordered_map>

#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/gemv.cuh"

#define PIE_CUBLAS_CHECK(expr)                                                        \
  do {                                                                                \
    cublasStatus_t _s = (expr);                                                       \
    PIE_CHECK(_s == CUBLAS_STATUS_SUCCESS, #expr, " failed: ", cublasGetStatusString(_s)); \
  } while (0)

namespace pie::ops::cuda {

/// \brief The GEMV/cuBLASLt dispatch: a cuBLASLt handle, its workspace and the per-shape plan cache.
class Gemm {
 public:
  explicit Gemm(size_t workspace_bytes = size_t{32} << 20) : ws_(workspace_bytes) {
    PIE_CUBLAS_CHECK(cublasLtCreate(&handle_));
  }
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  ~Gemm() {
    for (auto& [k, e] : cache_) {
      cublasLtMatrixLayoutDestroy(e.a); cublasLtMatrixLayoutDestroy(e.b); cublasLtMatrixLayoutDestroy(e.c);
      cublasLtMatmulDescDestroy(e.desc);
    }
    cublasLtDestroy(handle_);
  }

  /// \brief y [M, N] = x [M, K]·w [N, K]ᵀ (+ bias [N] when non-null). Rows of x and y may be
  /// strided; w is row-major as stored in the checkpoint. y is either the operand type or float:
  /// float output (lm_head → sampler) is written straight from the fp32 accumulators, saving a
  /// cast pass and a rounding to 16 bits. `l2_ahead`: where the GEMV takes the product, it also
  /// moves its weights past the first chunks into L2 before its wait (gemv(); the same result);
  /// nothing on the cuBLASLt path.
  template <class TY, class T>
  void operator()(TensorView<TY> y, TensorView<T> x, TensorView<T> w, const T* bias = nullptr,
                  cudaStream_t stream = nullptr, bool l2_ahead = false) {
    static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "Gemm: f16 or bf16 operands");
    static_assert(std::is_same_v<TY, T> || std::is_same_v<TY, float>, "Gemm: output is the operand type or float");
    constexpr bool kFloatOut = std::is_same_v<TY, float> && !std::is_same_v<T, float>;
    PIE_CHECK(!(kFloatOut && bias != nullptr), "Gemm: a bias needs the operand-typed output");
    PIE_CHECK(x.rank == 2 && w.rank == 2 && y.rank == 2, "Gemm: x, w, y must be matrices");
    PIE_CHECK(x.shape[1] == w.shape[1] && y.shape[0] == x.shape[0] && y.shape[1] == w.shape[0],
              "Gemm: shapes do not chain: x [", x.shape[0], ",", x.shape[1], "], w [", w.shape[0], ",",
              w.shape[1], "], y [", y.shape[0], ",", y.shape[1], "]");
    PIE_CHECK(x.stride[1] == 1 && w.stride[1] == 1 && y.stride[1] == 1, "Gemm: rows must be contiguous");
    const int64_t M = x.shape[0], N = w.shape[0], K = x.shape[1];
    if (M == 0) return;
    if (M <= gemv_max_rows_ && gemv_supported(M, K, x.data, x.stride[0], w.data, w.stride[0])) {
      gemv(y, x, w, bias, stream, l2_ahead);
      return;
    }
    constexpr cudaDataType_t dt = std::is_same_v<T, pie::bf16> ? CUDA_R_16BF : CUDA_R_16F;
    constexpr cudaDataType_t out_dt = kFloatOut ? CUDA_R_32F : dt;
    Key key{M, N, K, x.stride[0], w.stride[0], y.stride[0], dt, out_dt, bias != nullptr};
    Entry& e = entry(key);
    if (bias != nullptr)
      PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const float alpha = 1.f, beta = 0.f;
    // Column-major view: yᵀ [N, M] = W [N, K]·xᵀ [K, M], i.e. A = w (transposed), B = x.
    PIE_CUBLAS_CHECK(cublasLtMatmul(handle_, e.desc, &alpha, w.data, e.a, x.data, e.b, &beta, y.data, e.c,
                                    y.data, e.c, &e.algo, ws_.data(), ws_.size(), stream));
  }

  size_t cached_shapes() const { return cache_.size(); }

  /// Rows up to which the GEMV path is taken (0: cuBLASLt for every M; at most kGemvMaxRows).
  int gemv_max_rows() const { return gemv_max_rows_; }
  void set_gemv_max_rows(int m) { gemv_max_rows_ = invariant_ ? 0 : std::clamp(m, 0, kGemvMaxRows); }

  /// One algorithm per (N, K) shape for every M, chosen at `reference_m` rows (see the file
  /// comment); turns the GEMV off. Call before the first product.
  void set_batch_invariant(bool on, int64_t reference_m = kInvariantReferenceM) {
    PIE_CHECK(cache_.empty(), "Gemm: set_batch_invariant must come before the first product");
    PIE_CHECK(reference_m > 0, "Gemm: reference M must be positive");
    invariant_ = on;
    reference_m_ = reference_m;
    if (on) gemv_max_rows_ = 0;
  }
  bool batch_invariant() const { return invariant_; }

  /// cuBLASLt's CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET for every product from now on (0: all SMs):
  /// algorithms are chosen and launched for that many SMs, leaving the rest to kernels of another
  /// stream (nano-batch overlap, engine/nano_split.hpp). Call before the first product.
  void set_sm_count_target(int sms) {
    PIE_CHECK(cache_.empty(), "Gemm: set_sm_count_target must come before the first product");
    PIE_CHECK(sms >= 0, "Gemm: SM count target ", sms);
    sm_target_ = sms;
  }

  /// The reference M of the batch-invariant algorithm choice. Measured on an H100 over the
  /// Qwen3-8B shapes (BM_InvariantGemm): pinned at M ≤ 16, prefill (M = 4096) runs at 5–15% of
  /// GEMM peak; at 1024, M = 1 decode loses half its bandwidth; 128 costs decode 5–20% and
  /// prefill up to 2× (down_proj) against the per-M heuristic.
  static constexpr int64_t kInvariantReferenceM = 128;

 private:
  struct Key {
    int64_t m, n, k, ldx, ldw, ldy;
    cudaDataType_t dt, out_dt;
    bool bias;
    bool operator==(const Key& o) const {
      return std::tie(m, n, k, ldx, ldw, ldy, dt, out_dt, bias) ==
             std::tie(o.m, o.n, o.k, o.ldx, o.ldw, o.ldy, o.dt, o.out_dt, o.bias);
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      size_t h = 1469598103934665603ull;
      for (int64_t v : {k.m, k.n, k.k, k.ldx, k.ldw, k.ldy, int64_t(k.dt), int64_t(k.out_dt), int64_t(k.bias)})
        h = (h ^ static_cast<size_t>(v)) * 1099511628211ull;
      return h;
    }
  };
  struct Entry {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
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
    if (sm_target_ > 0)
      PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sm_target_,
                                                      sizeof(sm_target_)));
    if (k.bias) {
      cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      cudaDataType_t bt = k.dt;
      PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    }
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.a, k.dt, k.k, k.n, k.ldw));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.b, k.dt, k.k, k.m, k.ldx));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.c, k.out_dt, k.n, k.m, k.ldy));
    if (invariant_) {
      e.algo = invariant_algo(k, e.desc, e.a);
      cublasLtMatmulHeuristicResult_t chk{};
      cublasStatus_t st = cublasLtMatmulAlgoCheck(handle_, e.desc, e.a, e.b, e.c, e.c, &e.algo, &chk);
      PIE_CHECK(st == CUBLAS_STATUS_SUCCESS && chk.workspaceSize <= ws_.size(),
                "Gemm (batch-invariant): the algorithm pinned for N=", k.n, " K=", k.k, " does not run M=", k.m,
                ": ", cublasGetStatusString(st));
    } else {
      cublasLtMatmulHeuristicResult_t res{};
      PIE_CHECK(heuristic(e.desc, e.a, e.b, e.c, &res, 1) > 0, "Gemm: cuBLASLt has no algorithm for M=", k.m,
                " N=", k.n, " K=", k.k);
      e.algo = res.algo;
    }
    return cache_.emplace(k, e).first->second;
  }

  /// Up to n heuristic results into out; returns how many. (A std::vector of the result type
  /// trips an nvcc 13 front-end assertion, hence the plain array.)
  int heuristic(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                cublasLtMatrixLayout_t c, cublasLtMatmulHeuristicResult_t* out, int n) {
    cublasLtMatmulPreference_t pref;
    PIE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = ws_.size();
    PIE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, desc, a, b, c, c, pref, n, out, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    return st == CUBLAS_STATUS_SUCCESS ? found : 0;
  }

  /// The algorithm of shape (N, K) for every M: the heuristic's best at the reference M among
  /// those that do not split K (split-K adds partial sums in an order set by the split count).
  cublasLtMatmulAlgo_t invariant_algo(const Key& k, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a) {
    Key shape = k;
    shape.m = 0;
    shape.ldx = 0;  // the row strides do not change the algorithm's arithmetic
    shape.ldy = 0;
    auto it = pinned_.find(shape);
    if (it != pinned_.end()) return it->second;
    cublasLtMatrixLayout_t b = nullptr, c = nullptr;
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b, k.dt, k.k, reference_m_, k.ldx));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c, k.out_dt, k.n, reference_m_, k.ldy));
    constexpr int kCandidates = 16;
    cublasLtMatmulHeuristicResult_t res[kCandidates] = {};
    const int found = heuristic(desc, a, b, c, res, kCandidates);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(c);
    const cublasLtMatmulAlgo_t* pick = nullptr;
    for (int i = 0; i < found && pick == nullptr; ++i) {
      int splits = 1;
      size_t written = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof(splits),
                                           &written);
      if (splits <= 1) pick = &res[i].algo;
    }
    PIE_CHECK(pick != nullptr, "Gemm (batch-invariant): cuBLASLt offers no algorithm without split-K for N=", k.n,
              " K=", k.k, " (", found, " candidates)");
    return pinned_.emplace(shape, *pick).first->second;
  }

  int gemv_max_rows_ = kGemvDefaultMaxRows;
  int32_t sm_target_ = 0;  // set_sm_count_target
  bool invariant_ = false;
  int64_t reference_m_ = kInvariantReferenceM;
  std::unordered_map<Key, cublasLtMatmulAlgo_t, KeyHash> pinned_;  ///< batch-invariant: per shape, M = 0
  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer<unsigned char> ws_;
  std::unordered_map<Key, Entry, KeyHash> cache_;
};

}  // namespace pie::ops::cuda
