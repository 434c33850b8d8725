#pragma once
/// \file logits_gemm.cuh
/// \brief lm_head as a cuBLASLt GEMM with f16/bf16 operands and a float32 output: the sampler
/// reads float logits, and writing them straight from the accumulators saves a cast pass and
/// a rounding to bf16. (ops::cuda::Gemm writes the operand type only.)
#include <cublasLt.h>

#include <cstdint>
#include <type_traits>
#include <unordered_map>

#include "pie/core/buffer.hpp"
#include "pie/ops/cuda/gemm.cuh"

namespace pie::engine::cuda {

/// \brief logits [M, V] (float) = rows [M, H]·W [V, H]ᵀ; plans cached per M.
class LogitsGemm {
 public:
  explicit LogitsGemm(size_t workspace_bytes = size_t{32} << 20) : ws_(workspace_bytes) {
    PIE_CUBLAS_CHECK(cublasLtCreate(&handle_));
  }
  LogitsGemm(const LogitsGemm&) = delete;
  LogitsGemm& operator=(const LogitsGemm&) = delete;
  ~LogitsGemm() {
    for (auto& [m, e] : cache_) destroy(e);
    if (handle_) cublasLtDestroy(handle_);
  }
  size_t workspace_bytes() const { return ws_.size(); }

  template <class T>
  void operator()(float* logits, TensorView<T> rows, TensorView<T> w, cudaStream_t stream) {
    static_assert(std::is_same_v<T, pie::f16> || std::is_same_v<T, pie::bf16>, "LogitsGemm: f16 or bf16 operands");
    PIE_CHECK(rows.rank == 2 && w.rank == 2 && rows.shape[1] == w.shape[1] && rows.stride[1] == 1 &&
                  w.stride[1] == 1,
              "LogitsGemm: rows [M, H] and w [V, H] with contiguous rows");
    const int64_t M = rows.shape[0], V = w.shape[0], H = w.shape[1];
    if (M == 0) return;
    constexpr cudaDataType_t dt = std::is_same_v<T, pie::bf16> ? CUDA_R_16BF : CUDA_R_16F;
    Entry& e = entry(M, V, H, rows.stride[0], w.stride[0], dt);
    const float alpha = 1.f, beta = 0.f;
    // Column-major: logitsᵀ [V, M] = W [V, H] (transposed view of row-major [V,H]) · rowsᵀ [H, M].
    PIE_CUBLAS_CHECK(cublasLtMatmul(handle_, e.desc, &alpha, w.data, e.a, rows.data, e.b, &beta, logits, e.c, logits,
                                    e.c, &e.algo, ws_.data(), ws_.size(), stream));
  }

 private:
  struct Entry {
    int64_t v = 0, h = 0, ldx = 0, ldw = 0;
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  static void destroy(Entry& e) {
    if (e.a) cublasLtMatrixLayoutDestroy(e.a);
    if (e.b) cublasLtMatrixLayoutDestroy(e.b);
    if (e.c) cublasLtMatrixLayoutDestroy(e.c);
    if (e.desc) cublasLtMatmulDescDestroy(e.desc);
  }
  Entry& entry(int64_t M, int64_t V, int64_t H, int64_t ldx, int64_t ldw, cudaDataType_t dt) {
    auto it = cache_.find(M);
    if (it != cache_.end()) {
      PIE_CHECK(it->second.v == V && it->second.h == H && it->second.ldx == ldx && it->second.ldw == ldw,
                "LogitsGemm: one instance serves one lm_head shape");
      return it->second;
    }
    Entry e;
    e.v = V; e.h = H; e.ldx = ldx; e.ldw = ldw;
    PIE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&e.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    PIE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.a, dt, H, V, ldw));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.b, dt, H, M, ldx));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.c, CUDA_R_32F, V, M, V));
    cublasLtMatmulPreference_t pref;
    PIE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = ws_.size();
    PIE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, e.desc, e.a, e.b, e.c, e.c, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
      destroy(e);
      PIE_FAIL("LogitsGemm: cuBLASLt has no algorithm for M=", M, " V=", V, " H=", H);
    }
    e.algo = res.algo;
    return cache_.emplace(M, e).first->second;
  }

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer<unsigned char> ws_;
  std::unordered_map<int64_t, Entry> cache_;
};

}  // namespace pie::engine::cuda
