// cuBLASLt linear layer against a float64 reference: y = x·Wᵀ (+ bias), f16 and bf16, ragged M,
// strided input rows, and the per-shape plan cache.
#include <gtest/gtest.h>

#include "pie/ops/cuda/gemm.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;

// TY: output type, the operand type or float (lm_head logits straight from the accumulators).
template <class T, class TY = T>
void check_gemm(int M, int N, int K, bool bias, ops::cuda::Gemm& gemm, uint32_t seed) {
  std::mt19937 rng(seed);
  const int ldx = K + 64;  // strided rows, as a slice of a wider activation
  auto x = randn<T>(size_t(M) * ldx, rng);
  auto w = randn<T>(size_t(N) * K, rng, 0.05f);
  auto b = randn<T>(N, rng);
  auto dx = upload(x), dw = upload(w), db = upload(b);
  DeviceBuffer<TY> dy(size_t(M) * N);
  poison(dy);
  TensorView<T> xv(dx.data(), {M, K}, Device::Cuda);
  xv.stride[0] = ldx;
  gemm(dy.view({M, N}), xv, dw.view({N, K}), bias ? db.data() : static_cast<const T*>(nullptr));
  auto y = download(dy);
  std::vector<float> ref(size_t(M) * N);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = bias ? to_float(b[j]) : 0.0;
      for (int k = 0; k < K; ++k) s += double(to_float(x[size_t(i) * ldx + k])) * to_float(w[size_t(j) * K + k]);
      ref[size_t(i) * N + j] = float(s);
    }
  // Float output is rounded once (from fp32 accumulators), 16-bit output twice: tol<T> bounds both.
  EXPECT_LT(rel_err(y, ref), tol<T>()) << tname<T>() << " M=" << M << " N=" << N << " K=" << K << " bias=" << bias;
}

TEST(Gemm, BF16RaggedM37N384K512WithAndWithoutBias) {
  ops::cuda::Gemm g;
  check_gemm<bf16>(37, 384, 512, false, g, 1);
  check_gemm<bf16>(37, 384, 512, true, g, 2);
  check_gemm<bf16>(37, 384, 512, false, g, 3);  // cached plan reused
  EXPECT_EQ(g.cached_shapes(), 2u);
}

TEST(Gemm, F16M1N1024K256AndM300N200K1024) {
  ops::cuda::Gemm g;
  check_gemm<f16>(1, 1024, 256, false, g, 4);
  check_gemm<f16>(300, 200, 1024, true, g, 5);
}

TEST(Gemm, BF16FloatOutputM5N1000K256ForLogits) {
  ops::cuda::Gemm g;
  check_gemm<bf16, float>(5, 1000, 256, false, g, 6);
  check_gemm<bf16, float>(64, 1000, 256, false, g, 7);
  check_gemm<bf16>(5, 1000, 256, false, g, 8);  // same shape, 16-bit output: a separate plan
  EXPECT_EQ(g.cached_shapes(), 3u);
}

TEST(Gemm, FloatOutputRejectsBias) {
  ops::cuda::Gemm g;
  DeviceBuffer<bf16> x(4 * 8), w(8 * 8), b(8);
  DeviceBuffer<float> y(4 * 8);
  EXPECT_THROW(g(y.view({4, 8}), x.view({4, 8}), w.view({8, 8}), b.data()), pie::Error);
}

}  // namespace
