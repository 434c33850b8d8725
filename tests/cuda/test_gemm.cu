// Linear layers against a float64 reference: y = x·Wᵀ (+ bias), f16 and bf16, ragged M, strided
// input rows; the cuBLASLt path (with its per-shape plan cache) and the GEMV path of decode steps
// (M ≤ kGemvMaxRows), including the GEMV's row invariance.
#include <gtest/gtest.h>

#include <cstring>

#include "pie/ops/cuda/activation.cuh"
#include "pie/ops/cuda/gemm.cuh"
#include "pie/ops/cuda/norm.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;

// TY: output type, the operand type or float (lm_head logits straight from the accumulators).
template <class T, class TY = T>
std::vector<TY> check_gemm(int M, int N, int K, bool bias, ops::cuda::Gemm& gemm, uint32_t seed) {
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
  EXPECT_LT(rel_err(y, ref), tol<T>()) << tname<T>() << " M=" << M << " N=" << N << " K=" << K << " bias=" << bias
                                       << " gemv_max_rows=" << gemm.gemv_max_rows();
  return y;
}

/// One cuBLASLt algorithm per shape for every M (the engine's batch-invariant mode).
struct InvariantGemm : ops::cuda::Gemm {
  InvariantGemm() { set_batch_invariant(true); }
};

/// The cuBLASLt path alone (the GEMV would take the small-M cases).
struct CublasLtOnly : ops::cuda::Gemm {
  CublasLtOnly() { set_gemv_max_rows(0); }
};

TEST(Gemm, BF16RaggedM37N384K512WithAndWithoutBias) {
  ops::cuda::Gemm g;  // M = 37 is past the GEMV: cuBLASLt
  check_gemm<bf16>(37, 384, 512, false, g, 1);
  check_gemm<bf16>(37, 384, 512, true, g, 2);
  check_gemm<bf16>(37, 384, 512, false, g, 3);  // cached plan reused
  EXPECT_EQ(g.cached_shapes(), 2u);
}

TEST(Gemm, F16CublasLtM1N1024K256AndM300N200K1024) {
  CublasLtOnly g;
  check_gemm<f16>(1, 1024, 256, false, g, 4);
  check_gemm<f16>(300, 200, 1024, true, g, 5);
}

TEST(Gemm, BF16CublasLtFloatOutputM5N1000K256ForLogits) {
  CublasLtOnly g;
  check_gemm<bf16, float>(5, 1000, 256, false, g, 6);
  check_gemm<bf16, float>(64, 1000, 256, false, g, 7);
  check_gemm<bf16>(5, 1000, 256, false, g, 8);  // same shape, 16-bit output: a separate plan
  EXPECT_EQ(g.cached_shapes(), 3u);
}

/// Every M the GEMV can take goes through it.
struct GemvUpToMax : ops::cuda::Gemm {
  GemvUpToMax() { set_gemv_max_rows(ops::cuda::kGemvMaxRows); }
};

TEST(Gemv, DefaultTakesMUpToTheMeasuredCrossover) {
  ops::cuda::Gemm g;
  EXPECT_EQ(g.gemv_max_rows(), ops::cuda::kGemvDefaultMaxRows);
  check_gemm<bf16>(1, 512, 256, false, g, 99);  // M = 1: the GEMV, no cuBLASLt plan
  EXPECT_EQ(g.cached_shapes(), 0u);
  check_gemm<bf16>(ops::cuda::kGemvDefaultMaxRows + 1, 512, 256, false, g, 98);
  EXPECT_EQ(g.cached_shapes(), 1u);
}

TEST(Gemv, BF16EveryMFrom1To8N1001K4096WithAndWithoutBias) {
  GemvUpToMax g;
  for (int m = 1; m <= ops::cuda::kGemvMaxRows; ++m) {
    check_gemm<bf16>(m, 1001, 4096, m % 2 == 0, g, 100 + m);  // odd N: a warp's last column past N
  }
  EXPECT_EQ(g.cached_shapes(), 0u);  // cuBLASLt never ran
}

TEST(Gemv, F16AndBF16KNotAMultipleOfTheChunkM3N77K520AndK12288) {
  GemvUpToMax g;
  check_gemm<f16>(3, 77, 520, true, g, 11);     // K = 2 chunks + 8: partial last chunk
  check_gemm<bf16>(3, 77, 520, false, g, 12);
  check_gemm<bf16>(2, 300, 12288, false, g, 13);  // down_proj's K: several double-buffered steps
  check_gemm<bf16>(1, 64, 8, false, g, 14);     // K = 8: one vector
}

TEST(Gemv, BF16FloatOutputM1AndM8N5000K256ForLogits) {
  GemvUpToMax g;
  check_gemm<bf16, float>(1, 5000, 256, false, g, 15);
  check_gemm<bf16, float>(8, 5000, 256, false, g, 16);
  EXPECT_EQ(g.cached_shapes(), 0u);
}

// A row's result must not depend on the other rows in the launch: the decode batch invariance
// of the engine rests on it. Row r of an M = 8 product equals, bit for bit, the M = 1 product
// of that row alone, and the M = 3 product of rows r..r+2.
TEST(Gemv, BF16RowsBitIdenticalWhateverMN2048K4096) {
  const int N = 2048, K = 4096, M = ops::cuda::kGemvMaxRows;
  std::mt19937 rng(21);
  auto x = randn<bf16>(size_t(M) * K, rng);
  auto w = randn<bf16>(size_t(N) * K, rng, 0.05f);
  auto dx = upload(x), dw = upload(w);
  GemvUpToMax g;
  DeviceBuffer<bf16> yall(size_t(M) * N), yone(N), ythree(size_t(3) * N);
  g(yall.view({M, N}), dx.view({M, K}), dw.view({N, K}));
  auto all = download(yall);
  for (int r = 0; r < M; ++r) {
    TensorView<bf16> xr(dx.data() + size_t(r) * K, {1, K}, Device::Cuda);
    g(yone.view({1, N}), xr, dw.view({N, K}));
    auto one = download(yone);
    EXPECT_EQ(std::memcmp(one.data(), all.data() + size_t(r) * N, sizeof(bf16) * N), 0) << "row " << r << " alone";
    if (r + 3 <= M) {
      TensorView<bf16> x3(dx.data() + size_t(r) * K, {3, K}, Device::Cuda);
      g(ythree.view({3, N}), x3, dw.view({N, K}));
      auto three = download(ythree);
      EXPECT_EQ(std::memcmp(three.data(), all.data() + size_t(r) * N, sizeof(bf16) * 3 * N), 0) << "rows " << r << "..";
    }
  }
}

// At M = 1 a grid just past one wave takes the lean configuration (qkv_proj's 6144 columns on
// an H100); its rows must still equal, bit for bit, those of the default one at M = 2.
TEST(Gemv, BF16LeanAndDefaultConfigurationsAgreeBitwiseN6144K4096) {
  const int N = 6144, K = 4096;
  std::mt19937 rng(23);
  auto x = randn<bf16>(size_t(2) * K, rng);
  auto w = randn<bf16>(size_t(N) * K, rng, 0.05f);
  auto dx = upload(x), dw = upload(w);
  GemvUpToMax g;
  DeviceBuffer<bf16> y1(N), y2(size_t(2) * N);
  g(y1.view({1, N}), dx.view({1, K}), dw.view({N, K}));
  g(y2.view({2, N}), dx.view({2, K}), dw.view({N, K}));
  auto a = download(y1), b = download(y2);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(bf16) * N), 0);
  check_gemm<bf16>(1, N, K, true, g, 24);  // and the lean kernel against the reference, with bias
}

// The weights moved into L2 before the wait (GemvParams::l2_ahead, o_proj after a batch-1 decode
// attention) change nothing the GEMV computes: the same bytes as without, for K past one step of
// chunks with a tail (K 4104, 2056), K within one step (nothing to prefetch), every M the engine
// takes, both configurations (N 6144: the lean kernel) and a ragged N.
TEST(Gemv, L2AheadBitIdenticalToPlainEveryMAndConfiguration) {
  for (auto [N, K] : {std::pair{4096, 4104}, std::pair{6144, 2056}, std::pair{1001, 1024}, std::pair{77, 8}}) {
    std::mt19937 rng(N + K);
    auto x = randn<bf16>(size_t(8) * K, rng);
    auto w = randn<bf16>(size_t(N) * K, rng, 0.05f);
    auto dx = upload(x), dw = upload(w);
    for (int M : {1, 3, 8}) {
      DeviceBuffer<bf16> y1(size_t(M) * N), y2(size_t(M) * N);
      poison(y2);
      ops::cuda::gemv(y1.view({M, N}), dx.view({M, K}), dw.view({N, K}));
      ops::cuda::gemv(y2.view({M, N}), dx.view({M, K}), dw.view({N, K}), static_cast<const bf16*>(nullptr), nullptr,
                      /*l2_ahead=*/true);
      auto a = download(y1), b = download(y2);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(bf16) * a.size()), 0) << "M=" << M << " N=" << N << " K=" << K;
    }
  }
}

// Batch-1 residual add + RMSNorm fused into the GEMV must equal, bit for bit, the two separate
// kernels (the engine mixes both paths: batch 1 alone vs batched); both hidden sizes whose
// norm uses 128 and 64 threads, both GEMV configurations (N 6144: lean at M = 1 on an H100).
TEST(Gemv, BF16AddRmsNormFusedEqualsNormThenGemvBitwise) {
  for (int K : {4096, 1024})
    for (int N : {6144, 1001})
      for (bool first : {true, false}) {
        std::mt19937 rng(K + N + first);
        auto x = randn<bf16>(K, rng), r = randn<bf16>(K, rng), nw = randn<bf16>(K, rng, 0.2f, 1.f);
        auto w = randn<bf16>(size_t(N) * K, rng, 0.05f), b = randn<bf16>(N, rng);
        auto dx = upload(x), dr = upload(r), dnw = upload(nw), dw = upload(w), db = upload(b);
        // separate kernels, in place on copies
        auto dx2 = upload(x), dr2 = upload(r);
        ops::cuda::add_rms_norm(dx2.view({1, K}), dr2.view({1, K}), dnw.view({K}), 1e-6f, first);
        DeviceBuffer<bf16> y1(N), y2(N), rout(K);
        ops::cuda::gemv(y1.view({1, N}), dx2.view({1, K}), dw.view({N, K}), db.data());
        // fused
        poison(rout);
        for (int warps : {4, 16}) {  // 16: PIE_GEMV_NORM_WARPS's CTAs
          poison(y2);
          poison(rout);
          ops::cuda::add_rms_norm_gemv(y2.view({1, N}), dx.view({1, K}), first ? nullptr : dr.data(), rout.data(),
                                       dnw.data(), 1e-6f, first, dw.view({N, K}), db.data(), nullptr, warps);
          auto a1 = download(y1), a2 = download(y2), r1 = download(dr2), r2 = download(rout), xs = download(dx);
          EXPECT_EQ(std::memcmp(a1.data(), a2.data(), sizeof(bf16) * N), 0)
              << "K=" << K << " N=" << N << " first=" << first << " warps=" << warps;
          EXPECT_EQ(std::memcmp(r1.data(), r2.data(), sizeof(bf16) * K), 0) << "residual K=" << K << " first=" << first;
          EXPECT_EQ(std::memcmp(xs.data(), x.data(), sizeof(bf16) * K), 0) << "x must be left as it was";
        }
      }
}

// The final norm inside lm_head at batch 1 (CudaForward::logits with PIE_FUSED_FINAL_NORM=1):
// float logits bit-identical to add_rms_norm then the float-output GEMV (what LogitsGemm runs at
// M = 1); N past two waves of CTAs (the default configuration, as lm_head's 151936 rows) and odd.
template <class T>
void check_norm_gemv_float_out(int K, int N, bool first) {
  std::mt19937 rng(K + N + first + 7);
  auto x = randn<T>(K, rng), r = randn<T>(K, rng), nw = randn<T>(K, rng, 0.2f, 1.f);
  auto w = randn<T>(size_t(N) * K, rng, 0.05f);
  auto dx = upload(x), dr = upload(r), dnw = upload(nw), dw = upload(w);
  auto dx2 = upload(x), dr2 = upload(r);
  ops::cuda::add_rms_norm(dx2.view({1, K}), dr2.view({1, K}), dnw.view({K}), 1e-6f, first);
  DeviceBuffer<float> y1(N), y2(N);
  DeviceBuffer<T> rout(K);
  ops::cuda::Gemm gemm;  // M = 1 with a float output: its GEMV, as LogitsGemm calls it
  gemm(TensorView<float>(y1.data(), {1, N}, Device::Cuda), dx2.view({1, K}), dw.view({N, K}),
       static_cast<const T*>(nullptr));
  poison(y2);
  ops::cuda::add_rms_norm_gemv(TensorView<float>(y2.data(), {1, N}, Device::Cuda), dx.view({1, K}),
                               first ? nullptr : dr.data(), rout.data(), dnw.data(), 1e-6f, first, dw.view({N, K}));
  auto a1 = download(y1), a2 = download(y2);
  auto r1 = download(dr2), r2 = download(rout);
  EXPECT_EQ(std::memcmp(a1.data(), a2.data(), sizeof(float) * N), 0) << tname<T>() << " K=" << K << " N=" << N;
  EXPECT_EQ(std::memcmp(r1.data(), r2.data(), sizeof(T) * K), 0) << "residual " << tname<T>() << " K=" << K;
}

TEST(Gemv, AddRmsNormFusedFloatOutputEqualsNormThenLogitsGemvBitwise) {
  for (int K : {4096, 1024})
    for (int N : {50000, 1001})
      for (bool first : {true, false}) {
        check_norm_gemv_float_out<bf16>(K, N, first);
        check_norm_gemv_float_out<f16>(K, N, first);
      }
}

TEST(Gemv, AddRmsNormGemvRejectsAliasedResidualAndWideRows) {
  DeviceBuffer<bf16> x(8192), r(8192), nw(8192), w(size_t(16) * 8192), y(16);
  EXPECT_THROW(ops::cuda::add_rms_norm_gemv(y.view({1, 16}), x.view({1, 1024}), r.data(), r.data(), nw.data(), 1e-6f,
                                            false, w.view({16, 1024})),
               pie::Error);
  EXPECT_FALSE(ops::cuda::add_rms_norm_gemv_supported(8192));  // its norm needs 256 threads
  EXPECT_TRUE(ops::cuda::add_rms_norm_gemv_supported(4096));
}

// SwiGLU inside the down projection's GEMV at batch 1 (CudaForward with PIE_FUSED_SWIGLU=1):
// y bit-identical to silu_and_mul then the M = 1 GEMV (Gemm's, as the forward calls it), with
// bias and without, and x_out holding the bytes silu_and_mul wrote; widths from 8 to the
// Qwen3-8B expert width (12288) and odd N, N past one wave of CTAs.
template <class T>
void check_swiglu_gemv(int K, int N, bool bias) {
  std::mt19937 rng(K + 3 * N + bias);
  auto gu = randn<T>(size_t(2) * K, rng, 2.f), w = randn<T>(size_t(N) * K, rng, 0.05f), b = randn<T>(N, rng);
  auto dgu = upload(gu), dw = upload(w), db = upload(b);
  DeviceBuffer<T> x1(K), x2(K), y1(N), y2(N);
  ops::cuda::silu_and_mul(dgu.view({1, 2 * K}), x1.view({1, K}));
  ops::cuda::Gemm gemm;  // M = 1: its GEMV
  gemm(y1.view({1, N}), x1.view({1, K}), dw.view({N, K}), bias ? db.data() : nullptr);
  poison(y2);
  poison(x2);
  ops::cuda::swiglu_gemv(y2.view({1, N}), dgu.view({1, 2 * K}), dw.view({N, K}), bias ? db.data() : nullptr, nullptr,
                         x2.data());
  auto a1 = download(y1), a2 = download(y2), r1 = download(x1), r2 = download(x2);
  EXPECT_EQ(std::memcmp(a1.data(), a2.data(), sizeof(T) * N), 0) << tname<T>() << " K=" << K << " N=" << N;
  EXPECT_EQ(std::memcmp(r1.data(), r2.data(), sizeof(T) * K), 0) << "x_out " << tname<T>() << " K=" << K;
  poison(y2);
  ops::cuda::swiglu_gemv(y2.view({1, N}), dgu.view({1, 2 * K}), dw.view({N, K}), bias ? db.data() : nullptr);
  a2 = download(y2);
  EXPECT_EQ(std::memcmp(a1.data(), a2.data(), sizeof(T) * N), 0) << "without x_out, K=" << K;
}

TEST(Gemv, SwiGluFusedEqualsSiluAndMulThenGemvBitwise) {
  for (int K : {12288, 3072, 8})
    for (int N : {4096, 5000, 33})
      for (bool bias : {false, true}) {
        check_swiglu_gemv<bf16>(K, N, bias);
        check_swiglu_gemv<f16>(K, N, bias);
      }
}

TEST(Gemv, SwiGluGemvRejectsWideRowsAndShapesThatDoNotChain) {
  EXPECT_TRUE(ops::cuda::swiglu_gemv_supported<bf16>(24576));
  EXPECT_FALSE(ops::cuda::swiglu_gemv_supported<bf16>(24584)) << "past 48 KB of shared memory";
  EXPECT_FALSE(ops::cuda::swiglu_gemv_supported<bf16>(12));
  DeviceBuffer<bf16> gu(2 * 64), w(16 * 64), y(16);
  EXPECT_THROW(ops::cuda::swiglu_gemv(y.view({1, 16}), gu.view({1, 64}), w.view({16, 64})), pie::Error)
      << "gate_up must be 2·K wide";
}

// The flat walk of one-row GEMVs (PIE_GEMV_FLAT=1 and 2, gemv_kernel's kFlat: resident CTAs whose
// warps walk columns, both buffers requested before the wait and refilled across columns) against the
// default grids, bit for bit: the plain GEMV in bf16 and float output, with and without bias, the
// fused residual add + RMSNorm (with the residual it writes), and the fused SwiGLU; N of
// Qwen3-8B's qkv (several columns a warp) and a ragged one, K of one step (2,048), several
// (4,096, 12,288) and a tail (1,040); and mode 3, which takes the walk where N or K ≤ 2,048 only.
TEST(Gemv, FlatWalkBitIdenticalToTheDefaultGridsPlainNormAndSwiGlu) {
  auto bits_equal = [](const auto& a, const auto& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(a[0]) * a.size()) == 0;
  };
  for (int layout : {1, 2, 3}) {  // PIE_GEMV_FLAT=1 (one column a warp), 2 (two), 3 (1 where N or K ≤ 2,048)
    auto flat = [layout](bool on) { ops::cuda::detail::gemv_flat_flag() = on ? layout : 0; };
    for (auto [N, K] :
         {std::pair{6144, 4096}, std::pair{1001, 1040}, std::pair{24576, 2048}, std::pair{4096, 12288}}) {
      std::mt19937 rng(N + 3 * K);
      auto x = randn<bf16>(size_t(2) * K, rng), r = randn<bf16>(K, rng), nw = randn<bf16>(K, rng, 0.2f, 1.f);
      auto w = randn<bf16>(size_t(N) * K, rng, 0.05f), b = randn<bf16>(N, rng);
      auto dx = upload(x), dr = upload(r), dnw = upload(nw), dw = upload(w), db = upload(b);
      DeviceBuffer<bf16> y(N), rout(K);
      DeviceBuffer<float> yf(N);
      for (bool bias : {false, true}) {
        std::vector<bf16> want[2];
        for (int on : {0, 1}) {
          flat(on);
          poison(y);
          ops::cuda::gemv(y.view({1, N}), dx.view({1, K}), dw.view({N, K}), bias ? db.data() : nullptr);
          want[on] = download(y);
        }
        EXPECT_TRUE(bits_equal(want[0], want[1]))
            << "layout " << layout << " plain N=" << N << " K=" << K << " bias=" << bias;
      }
      std::vector<float> wf[2];
      for (int on : {0, 1}) {
        flat(on);
        poison(yf);
        ops::cuda::gemv(TensorView<float>(yf.data(), {1, N}, Device::Cuda), dx.view({1, K}), dw.view({N, K}));
        wf[on] = download(yf);
      }
      EXPECT_TRUE(bits_equal(wf[0], wf[1])) << "float output N=" << N << " K=" << K;
      if (ops::cuda::add_rms_norm_gemv_supported(K)) {
        std::vector<bf16> want[2], res[2];
        for (int on : {0, 1}) {
          flat(on);
          poison(y);
          poison(rout);
          ops::cuda::add_rms_norm_gemv(y.view({1, N}), dx.view({1, K}), dr.data(), rout.data(), dnw.data(), 1e-6f, false,
                                       dw.view({N, K}), db.data(), nullptr, 4);
          want[on] = download(y);
          res[on] = download(rout);
        }
        EXPECT_TRUE(bits_equal(want[0], want[1])) << "norm N=" << N << " K=" << K;
        EXPECT_TRUE(bits_equal(res[0], res[1])) << "residual N=" << N << " K=" << K;
      }
      if (K % 2 == 0 && ops::cuda::swiglu_gemv_supported<bf16>(K / 2)) {  // x as a [gate | up] row of 2 · (K / 2)
        std::vector<bf16> want[2];
        const int Kh = K / 2;
        auto wh = upload(randn<bf16>(size_t(N) * Kh, rng, 0.05f));
        for (int on : {0, 1}) {
          flat(on);
          poison(y);
          ops::cuda::swiglu_gemv(y.view({1, N}), dx.view({1, K}), wh.view({N, Kh}), db.data());
          want[on] = download(y);
        }
        EXPECT_TRUE(bits_equal(want[0], want[1])) << "swiglu N=" << N << " K=" << Kh;
      }
    }
    flat(false);
  }
}

TEST(Gemv, GemvAndCublasLtAgreeOnTheQwen3QkvShapeM4N6144K4096) {
  std::mt19937 rng(22);
  const int M = 4, N = 6144, K = 4096;
  auto x = randn<bf16>(size_t(M) * K, rng);
  auto w = randn<bf16>(size_t(N) * K, rng, 0.05f);
  auto dx = upload(x), dw = upload(w);
  DeviceBuffer<float> a(size_t(M) * N), b(size_t(M) * N);
  GemvUpToMax gv;
  CublasLtOnly lt;
  gv(a.view({M, N}), dx.view({M, K}), dw.view({N, K}));
  lt(b.view({M, N}), dx.view({M, K}), dw.view({N, K}));
  auto ha = download(a), hb = download(b);
  // Both accumulate in fp32 over K = 4096 in different orders: agreement to ~1e-6 relative.
  EXPECT_LT(rel_err(ha, hb), 1e-5);
}

TEST(Gemv, RejectsMPastTheLimitAndKNotAMultipleOf8) {
  DeviceBuffer<bf16> x(16 * 16), w(16 * 16);
  DeviceBuffer<bf16> y(16 * 16);
  EXPECT_THROW(ops::cuda::gemv(y.view({9, 16}), x.view({9, 16}), w.view({16, 16})), pie::Error);
  EXPECT_THROW(ops::cuda::gemv(y.view({2, 16}), x.view({2, 12}), w.view({16, 12})), pie::Error);
}

/// Bits of y [m, N] = x[row0 .. row0+m)·Wᵀ (+ bias) in output type TY.
template <class TY>
std::vector<uint32_t> product_bits(ops::cuda::Gemm& g, const DeviceBuffer<bf16>& dx, const DeviceBuffer<bf16>& dw,
                                   const bf16* bias, int m, int row0, int N, int K) {
  TensorView<bf16> xv(const_cast<bf16*>(dx.data()) + size_t(row0) * K, {m, K}, Device::Cuda);
  TensorView<bf16> wv(const_cast<bf16*>(dw.data()), {N, K}, Device::Cuda);
  DeviceBuffer<TY> y(size_t(m) * N);
  g(y.view({m, N}), xv, wv, bias);
  std::vector<TY> h = download(y);
  std::vector<uint32_t> bits(h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    if constexpr (std::is_same_v<TY, float>) std::memcpy(&bits[i], &h[i], 4);
    else bits[i] = h[i].bits;
  }
  return bits;
}

template <class TY>
void check_rows_invariant(int N, int K, bool with_bias) {
  const int Mmax = 1024;
  std::mt19937 rng(N + K);
  auto x = randn<bf16>(size_t(Mmax) * K, rng);
  auto w = randn<bf16>(size_t(N) * K, rng, 0.05f);
  auto b = randn<bf16>(N, rng);
  auto dx = upload(x), dw = upload(w), db = upload(b);
  InvariantGemm g;
  EXPECT_EQ(g.gemv_max_rows(), 0);
  const bf16* bias = with_bias ? db.data() : nullptr;
  auto all = product_bits<TY>(g, dx, dw, bias, Mmax, 0, N, K);
  for (int m : {1, 2, 3, 8, 17, 64, 128, 129, 256, 500}) {
    const int row0 = (m * 7) % (Mmax - m + 1);  // rows from the middle too
    auto part = product_bits<TY>(g, dx, dw, bias, m, row0, N, K);
    EXPECT_TRUE(std::equal(part.begin(), part.end(), all.begin() + size_t(row0) * N))
        << "N=" << N << " K=" << K << ": rows " << row0 << ".." << row0 + m - 1 << " of an M=" << m
        << " product differ from the same rows of M=" << Mmax;
  }
}

// Batch-invariant mode: rows of any M-row product equal, bit for bit, the same rows inside the
// largest product — whatever M the heuristic would have tiled differently. Shapes: Qwen3-8B's
// qkv (6144×4096, with bias as Qwen2 has) and down (4096×12288) projections, and lm_head-like
// float output; M from a decode of 1 to a prefill chunk of 1024.
TEST(Gemm, BatchInvariantRowsBitIdenticalForEveryMQkvN6144K4096Bias) { check_rows_invariant<bf16>(6144, 4096, true); }
TEST(Gemm, BatchInvariantRowsBitIdenticalForEveryMDownN4096K12288) { check_rows_invariant<bf16>(4096, 12288, false); }
TEST(Gemm, BatchInvariantRowsBitIdenticalForEveryMFloatOutN5000K4096) { check_rows_invariant<float>(5000, 4096, false); }

TEST(Gemm, BatchInvariantMatchesTheReferenceAndKeepsTheGemvOff) {
  InvariantGemm g;
  g.set_gemv_max_rows(8);
  EXPECT_EQ(g.gemv_max_rows(), 0);
  check_gemm<bf16>(1, 1024, 256, true, g, 31);
  check_gemm<bf16>(300, 200, 1024, false, g, 32);
  check_gemm<bf16, float>(5, 1000, 256, false, g, 33);
  ops::cuda::Gemm used;
  check_gemm<bf16>(2, 64, 64, false, used, 34);
  EXPECT_THROW(used.set_batch_invariant(true), pie::Error);  // only before the first product
}

TEST(Gemm, FloatOutputRejectsBias) {
  ops::cuda::Gemm g;
  DeviceBuffer<bf16> x(4 * 8), w(8 * 8), b(8);
  DeviceBuffer<float> y(4 * 8);
  EXPECT_THROW(g(y.view({4, 8}), x.view({4, 8}), w.view({8, 8}), b.data()), pie::Error);
}

}  // namespace

#if defined(PIE_PERSIST_PROTOTYPE)
// The persistent batch-1 decode-layer prototype (bench/cuda/persist_layer.cuh, issue 15), compiled
// only with -DPIE_BUILD_CUDA_BENCH=ON (CI's default build has no room for its kernels): one kernel
// running o_proj, then add + RMSNorm + gate_up (+ SwiGLU) behind a grid-wide counter, byte for
// byte against gemv -> add_rms_norm_gemv -> silu_and_mul on the resident grid and on 7 CTAs, each
// launched twice (the counter's reuse), Qwen3-8B and a small shape with K tails; the chain within
// bf16 tolerances of a CPU reference (persist_check.cuh, shared with pie_bench_cuda_persist).
#include "persist_decoder_check.cuh"

namespace {
TEST(PersistLayer, EveryVariantEqualsTheKernelChainBitwise) {
  namespace pc = pie::bench::persist::check;
  cudaStream_t st;
  ASSERT_EQ(cudaStreamCreate(&st), cudaSuccess);  // blocking: orders with the legacy-stream fills
  {
    pc::Acts a(pc::kSmall);
    pie::DeviceBuffer<pie::bf16> wo(pc::kSmall.wo()), wgu(pc::kSmall.wgu());
    pc::g_mode = pc::pick_mode(pc::kSmall, a, wo, wgu, 0, st);
  }
  EXPECT_EQ(pc::check_shape(pc::kSmall, {0, 7}, st), 0);
  EXPECT_EQ(pc::check_shape(pc::kQwen3_8B, {0, 7}, st), 0);
  ASSERT_EQ(cudaStreamDestroy(st), cudaSuccess);
}

// The next step (bench/cuda/persist_decoder.cuh): one kernel for a whole decoder layer without its
// attention (o_proj; add + norm + gate_up + SwiGLU; down; add + norm + qkv; q/k norm + RoPE + K/V
// into the paged cache) behind 4 grid-wide barriers, byte for byte against both chains the engine
// launches (7 kernels by default, 5 with the fusion switches) on the resident grid and on 7 CTAs,
// twice each; the default chain against a CPU reference with the kernels' bf16 rounding points.
TEST(PersistLayer, DecoderLayerEqualsTheKernelChainBitwise) {
  namespace pc = pie::bench::persist::check;
  cudaStream_t st;
  ASSERT_EQ(cudaStreamCreate(&st), cudaSuccess);
  {
    pc::Acts a(pc::kSmall);
    pie::DeviceBuffer<pie::bf16> wo(pc::kSmall.wo()), wgu(pc::kSmall.wgu());
    pc::g_mode = pc::pick_mode(pc::kSmall, a, wo, wgu, 0, st);
  }
  EXPECT_EQ(pc::check_layer(pc::kLayerSmall, {0, 7}, st), 0);
  EXPECT_EQ(pc::check_layer(pc::kLayer8B, {0, 7}, st), 0);
  ASSERT_EQ(cudaStreamDestroy(st), cudaSuccess);
}
}  // namespace
#endif
