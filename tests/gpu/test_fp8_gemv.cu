// The batch-1 fp8 GEMV's kernel variants (ops/cuda/fp8_gemv.cuh): each bit-identical to the
// legacy kernel (variant 0) on random weights, scales and activations, for both weight schemes,
// with and without bias, at shapes whose N is no multiple of a CTA's rows and whose K is no
// multiple of 128; the prequantized entry on fp8_quantize's codes bit-identical too; all within
// the CPU reference's tolerance (ops/cpu/fp8_linear.hpp). Kept apart from test_fp8.cu (which
// builds the engine) so that it compiles in seconds.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../cuda/test_util.hpp"
#include "pie/ops/cpu/fp8_linear.hpp"
#include "pie/ops/cuda/fp8_gemv.cuh"
#include "pie/ops/cuda/norm.cuh"

namespace pie {
namespace {

/// Random finite e4m3 codes and positive scales of either scheme, on the host and the device.
struct RandomCodes {
  std::vector<fp8_e4m3> q;
  std::vector<float> s;
  Fp8Weight h, d;
  DeviceBuffer<fp8_e4m3> dq;
  DeviceBuffer<float> ds;
  RandomCodes(bool block, int64_t N, int64_t K, std::mt19937& rng) : q(size_t(N * K)) {
    for (auto& c : q) {
      c.bits = static_cast<uint8_t>(rng());
      if ((c.bits & 0x7f) == 0x7f) c.bits ^= 1;  // no NaN
    }
    const int64_t ld = block ? fp8_block_scale_ld(K) : 1, rows = block ? (N + 127) / 128 : N;
    std::uniform_real_distribution<float> u(0.5f, 2.0f);
    s.resize(size_t(rows * ld));
    for (auto& v : s) v = u(rng) / (448.0f * std::sqrt(float(K)));
    h.q = TensorView<fp8_e4m3>(q.data(), {N, K});
    h.scale = TensorView<float>(s.data(), {rows, ld});
    h.scale_ld = ld;
    if (!block) h.block_n = 1, h.block_k = static_cast<int>(K);
    dq = test::upload(q);
    ds = test::upload(s);
    d = h;
    d.q = TensorView<fp8_e4m3>(dq.data(), {N, K}, Device::Cuda);
    d.scale = TensorView<float>(ds.data(), {rows, ld}, Device::Cuda);
  }
};

std::vector<uint16_t> bits(const std::vector<bf16>& v) {
  std::vector<uint16_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * 2);
  return b;
}

TEST(Fp8Gemv, VariantsAreBitIdenticalToTheLegacyKernelAndMatchTheCpu) {
  std::mt19937 rng(11);
  int checked = 0;
  for (bool block : {true, false})
    for (auto [N, K] : {std::pair<int64_t, int64_t>{384, 512}, {250, 1040}, {136, 4096}, {72, 12288}})
      for (bool bias : {false, true}) {
        RandomCodes w(block, N, K, rng);
        auto x = test::randn<bf16>(size_t(K), rng, 3.0f);
        auto b = test::randn<bf16>(size_t(N), rng);
        auto dx = test::upload(x);
        auto db = test::upload(b);
        const bf16* bp = bias ? db.data() : nullptr;
        TensorView<bf16> xv(dx.data(), {1, K}, Device::Cuda);
        DeviceBuffer<bf16> dy(static_cast<size_t>(N));
        TensorView<bf16> yv(dy.data(), {1, N}, Device::Cuda);
        test::poison(dy);
        ops::cuda::fp8_gemv(yv, xv, w.d, bp, nullptr, 0);
        const auto legacy = test::download(dy);
        std::vector<float> ref(static_cast<size_t>(N)), xs, ws;
        auto xf = test::to_f32(x);
        ops::cpu::fp8_linear(xf.data(), 1, int(K), w.h, bias ? b.data() : static_cast<const bf16*>(nullptr),
                             ref.data(), K, N, xs, ws);
        const double err = test::rel_err(legacy, ref);
        EXPECT_LE(err, 1e-2) << "legacy N=" << N << " K=" << K;
        // The prequantized entry reads fp8_quantize's codes (row 0 of a 4-row buffer).
        DeviceBuffer<fp8_e4m3> xq(size_t(4 * K));
        DeviceBuffer<float> xsc(size_t(4 * (K / 128 + 2)));
        ops::cuda::fp8_quantize(xv, !block, xq.data(), xsc.data(), nullptr);
        for (int v = 1; v < ops::cuda::kFp8GemvVariants; ++v)
          for (bool pre : {false, true}) {
            test::poison(dy);
            if (pre)
              ops::cuda::fp8_gemv_prequantized(yv, xq.data(), xsc.data(), 4, w.d, bp, nullptr, v);
            else
              ops::cuda::fp8_gemv(yv, xv, w.d, bp, nullptr, v);
            const auto y = test::download(dy);
            EXPECT_EQ(bits(y), bits(legacy)) << ops::cuda::fp8_gemv_variant_name(v) << (pre ? " prequantized" : "")
                                             << (block ? " block" : " per channel") << " N=" << N << " K=" << K
                                             << (bias ? " bias" : "");
            ++checked;
          }
        std::printf("[fp8 gemv] %s N=%lld K=%lld%s: legacy vs cpu rel err %.3g\n", block ? "block" : "channel",
                    (long long)N, (long long)K, bias ? " bias" : "", err);
      }
  EXPECT_EQ(checked, 2 * 4 * 2 * (ops::cuda::kFp8GemvVariants - 1) * 2);
}

TEST(Fp8Gemv, NormInThePrologueIsBitIdenticalToTheSeparateKernels) {
  // fp8_add_rms_norm_gemv against add_rms_norm (in place) then the legacy GEMV: outputs and the
  // new residual bit for bit, every variant, with and without a residual to add.
  std::mt19937 rng(13);
  int checked = 0;
  for (bool block : {true, false})
    for (int64_t K : {1024, 4096})
      for (bool first : {false, true}) {
        const int64_t N = 264;
        RandomCodes w(block, N, K, rng);
        auto x = test::randn<bf16>(size_t(K), rng, 2.0f);
        auto r = test::randn<bf16>(size_t(K), rng, 2.0f);
        auto nw = test::randn<bf16>(size_t(K), rng, 0.5f, 1.0f);
        auto b = test::randn<bf16>(size_t(N), rng);
        auto dx = test::upload(x), dr = test::upload(r), dnw = test::upload(nw), db = test::upload(b);
        auto dx2 = test::upload(x), dr2 = test::upload(r);
        DeviceBuffer<bf16> dy(static_cast<size_t>(N)), dy2(static_cast<size_t>(N)), drout(static_cast<size_t>(K));
        TensorView<bf16> x2v(dx2.data(), {1, K}, Device::Cuda), r2v(dr2.data(), {1, K}, Device::Cuda);
        TensorView<bf16> nwv(dnw.data(), {K}, Device::Cuda);
        ops::cuda::add_rms_norm(x2v, r2v, nwv, 1e-6f, first, nullptr);
        ops::cuda::fp8_gemv(TensorView<bf16>(dy2.data(), {1, N}, Device::Cuda), x2v, w.d, db.data(), nullptr, 0);
        const auto want = test::download(dy2);
        const auto want_r = test::download(dr2);
        for (int v = 1; v < ops::cuda::kFp8GemvVariants; ++v) {
          ASSERT_TRUE(ops::cuda::fp8_add_rms_norm_gemv_supported(K, v)) << v;
          test::poison(dy);
          test::poison(drout);
          ops::cuda::fp8_add_rms_norm_gemv(TensorView<bf16>(dy.data(), {1, N}, Device::Cuda),
                                           TensorView<bf16>(dx.data(), {1, K}, Device::Cuda), dr.data(), drout.data(),
                                           dnw.data(), 1e-6f, first, w.d, db.data(), nullptr, v);
          EXPECT_EQ(bits(test::download(dy)), bits(want)) << ops::cuda::fp8_gemv_variant_name(v) << " K=" << K
                                                           << (first ? " first" : "") << (block ? " block" : " channel");
          EXPECT_EQ(bits(test::download(drout)), bits(want_r)) << "residual, " << ops::cuda::fp8_gemv_variant_name(v);
          ++checked;
        }
        EXPECT_EQ(bits(test::download(dx)), bits(x)) << "x is left as it was";
      }
  EXPECT_EQ(checked, 2 * 2 * 2 * (ops::cuda::kFp8GemvVariants - 1));
}

TEST(Fp8Gemv, UnknownVariantsAreRefused) {
  std::mt19937 rng(12);
  RandomCodes w(true, 128, 256, rng);
  auto dx = test::upload(test::randn<bf16>(256, rng));
  DeviceBuffer<bf16> dy(128);
  TensorView<bf16> xv(dx.data(), {1, 256}, Device::Cuda), yv(dy.data(), {1, 128}, Device::Cuda);
  EXPECT_THROW(ops::cuda::fp8_gemv(yv, xv, w.d, static_cast<const bf16*>(nullptr), nullptr, 99), std::exception);
  DeviceBuffer<fp8_e4m3> xq(4 * 256);
  DeviceBuffer<float> xs(16);
  // The legacy kernel quantizes x itself: it has no prequantized form.
  EXPECT_THROW(ops::cuda::fp8_gemv_prequantized(yv, xq.data(), xs.data(), 4, w.d, static_cast<const bf16*>(nullptr),
                                                nullptr, 0),
               std::exception);
}

}  // namespace
}  // namespace pie
