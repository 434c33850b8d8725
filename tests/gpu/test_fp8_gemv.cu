// The batch-1 fp8 GEMV's kernel variants (ops/cuda/fp8_gemv.cuh): each bit-identical to the
// legacy kernel (variant 0) on random weights, scales and activations, for both weight schemes,
// with and without bias, at shapes whose N is no multiple of a CTA's rows and whose K is no
// multiple of 128; the prequantized entry on fp8_quantize's codes bit-identical too; all within
// the CPU reference's tolerance (ops/cpu/fp8_linear.hpp); the weight-only form (x not quantized)
// against its own CPU reference. Kept apart from test_fp8.cu (which
// builds the engine) so that it compiles in seconds.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../cuda/test_util.hpp"
#include "pie/ops/cpu/fp8_linear.hpp"
#include "pie/ops/cuda/fp8_gemm.cuh"
#include "pie/ops/cuda/fp8_gemv.cuh"
#include "pie/ops/cuda/fp8_gemv_w8a16_rows.cuh"
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

/// One batch-1 product's operands: random codes of either scheme, x [1, K] (randn × 3), a bias
/// (used or not), y [1, N] on the device, and their host copies.
struct GemvCase {
  RandomCodes w;
  std::vector<bf16> x, b;
  std::vector<float> xf;
  DeviceBuffer<bf16> dx, db, dy;
  bool bias;
  int64_t N, K;
  GemvCase(bool block, int64_t n, int64_t k, bool with_bias, std::mt19937& rng)
      : w(block, n, k, rng), x(test::randn<bf16>(size_t(k), rng, 3.0f)), b(test::randn<bf16>(size_t(n), rng)),
        xf(test::to_f32(x)), dx(test::upload(x)), db(test::upload(b)), dy(static_cast<size_t>(n)), bias(with_bias),
        N(n), K(k) {}
  TensorView<bf16> xv() { return TensorView<bf16>(dx.data(), {1, K}, Device::Cuda); }
  TensorView<bf16> yv() { return TensorView<bf16>(dy.data(), {1, N}, Device::Cuda); }
  const bf16* bias_dev() const { return bias ? db.data() : nullptr; }
  const bf16* bias_host() const { return bias ? b.data() : nullptr; }
};

TEST(Fp8Gemv, VariantsAreBitIdenticalToTheLegacyKernelAndMatchTheCpu) {
  std::mt19937 rng(11);
  int checked = 0;
  for (bool block : {true, false})
    for (auto [N, K] : {std::pair<int64_t, int64_t>{384, 512}, {250, 1040}, {136, 4096}, {72, 12288}})
      for (bool bias : {false, true}) {
        GemvCase c(block, N, K, bias, rng);
        auto& w = c.w;
        auto& dy = c.dy;
        const bf16* bp = c.bias_dev();
        TensorView<bf16> xv = c.xv(), yv = c.yv();
        test::poison(dy);
        ops::cuda::fp8_gemv(yv, xv, w.d, bp, nullptr, 0);
        const auto legacy = test::download(dy);
        std::vector<float> ref(static_cast<size_t>(N)), xs, ws;
        ops::cpu::fp8_linear(c.xf.data(), 1, int(K), w.h, c.bias_host(), ref.data(), K, N, xs, ws);
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
  // new residual bit for bit, every variant, with and without a residual to add; its weight-only
  // form against add_rms_norm then fp8_gemv_w8a16 the same way.
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
        // The weight-only form's reference: the same normalised row through fp8_gemv_w8a16.
        ops::cuda::fp8_gemv_w8a16(TensorView<bf16>(dy2.data(), {1, N}, Device::Cuda), x2v, w.d, db.data(), nullptr, 10);
        const auto want16 = test::download(dy2);
        for (int v = 1; v < ops::cuda::kFp8GemvVariants; ++v)
          for (bool w8a16 : {false, true}) {
            ASSERT_TRUE(ops::cuda::fp8_add_rms_norm_gemv_supported(K, v)) << v;
            test::poison(dy);
            test::poison(drout);
            ops::cuda::fp8_add_rms_norm_gemv(TensorView<bf16>(dy.data(), {1, N}, Device::Cuda),
                                             TensorView<bf16>(dx.data(), {1, K}, Device::Cuda), dr.data(),
                                             drout.data(), dnw.data(), 1e-6f, first, w.d, db.data(), nullptr, v, w8a16);
            EXPECT_EQ(bits(test::download(dy)), bits(w8a16 ? want16 : want))
                << ops::cuda::fp8_gemv_variant_name(v) << (w8a16 ? " w8a16" : "") << " K=" << K
                << (first ? " first" : "") << (block ? " block" : " channel");
            EXPECT_EQ(bits(test::download(drout)), bits(want_r))
                << "residual, " << ops::cuda::fp8_gemv_variant_name(v) << (w8a16 ? " w8a16" : "");
            ++checked;
          }
        EXPECT_EQ(bits(test::download(dx)), bits(x)) << "x is left as it was";
      }
  EXPECT_EQ(checked, 2 * 2 * 2 * (ops::cuda::kFp8GemvVariants - 1) * 2);
}

// The weight-only GEMV (fp8_gemv_w8a16: x not rounded to e4m3): every row variant against the
// CPU's fp8_linear_w8a16 (the exact products in float; the GPU sums chunks in half), both weight
// schemes, with and without bias, at the shapes above plus Qwen3-8B's down projection (K =
// 12,288); the variants bit-identical to each other (a lane visits its chunks in the same k order
// whatever C and U are); much closer to the exact product than the quantized GEMV; and Fp8Gemm at
// M = 1 with set_gemv_w8a16 running it.
TEST(Fp8Gemv, WeightOnlyVariantsMatchTheCpuW8A16ReferenceBitIdenticalToEachOther) {
  std::mt19937 rng(13);
  int checked = 0;
  for (bool block : {true, false})
    for (auto [N, K] : {std::pair<int64_t, int64_t>{384, 512}, {250, 1040}, {136, 4096}, {72, 12288}, {200, 12288}})
      for (bool bias : {false, true}) {
        GemvCase c(block, N, K, bias, rng);
        auto& w = c.w;
        auto& dy = c.dy;
        const bf16* bp = c.bias_dev();
        TensorView<bf16> xv = c.xv(), yv = c.yv();
        std::vector<float> ref(static_cast<size_t>(N)), ref8(static_cast<size_t>(N)), xs, ws;
        ops::cpu::fp8_linear_w8a16(c.xf.data(), 1, int(K), w.h, c.bias_host(), ref.data(), K, N, ws);
        ops::cpu::fp8_linear(c.xf.data(), 1, int(K), w.h, c.bias_host(), ref8.data(), K, N, xs, ws);
        std::vector<bf16> first;
        double err = 0;
        for (int v = 1; v < ops::cuda::kFp8GemvVariants; ++v) {
          test::poison(dy);
          ops::cuda::fp8_gemv_w8a16(yv, xv, w.d, bp, nullptr, v);
          const auto y = test::download(dy);
          err = std::max(err, test::rel_err(y, ref));
          EXPECT_LE(test::rel_err(y, ref), 5e-3) << ops::cuda::fp8_gemv_variant_name(v)
                                                << (block ? " block" : " per channel") << " N=" << N << " K=" << K;
          if (first.empty())
            first = y;
          else
            EXPECT_EQ(bits(y), bits(first)) << ops::cuda::fp8_gemv_variant_name(v) << " N=" << N << " K=" << K;
          ++checked;
        }
        // x rounded to e4m3 moves the product by far more than the GEMV's half sums do.
        const double quant = test::rel_err(ref8, ref);
        EXPECT_GT(quant, 3 * err) << "N=" << N << " K=" << K;
        std::printf("[fp8 gemv w8a16] %s N=%lld K=%lld%s: vs cpu w8a16 %.3g (the quantized scheme vs w8a16: %.3g)\n",
                    block ? "block" : "channel", (long long)N, (long long)K, bias ? " bias" : "", err, quant);
      }
  EXPECT_EQ(checked, 2 * 5 * 2 * (ops::cuda::kFp8GemvVariants - 1));
  // Through Fp8Gemm: M = 1 takes the weight-only GEMV when asked, bit for bit.
  RandomCodes w(false, 512, 4096, rng);
  auto dx = test::upload(test::randn<bf16>(4096, rng));
  DeviceBuffer<bf16> d1(512), d2(512);
  TensorView<bf16> xv(dx.data(), {1, 4096}, Device::Cuda), y1(d1.data(), {1, 512}, Device::Cuda),
      y2(d2.data(), {1, 512}, Device::Cuda);
  ops::cuda::Fp8Gemm gemm(8, 4096, 512);
  gemm.set_gemv_w8a16(true);
  gemm(y1, xv, w.d, static_cast<const bf16*>(nullptr), nullptr);
  ops::cuda::fp8_gemv_w8a16(y2, xv, w.d, static_cast<const bf16*>(nullptr), nullptr, gemm.gemv_variant());
  EXPECT_EQ(bits(test::download(d1)), bits(test::download(d2)));
  EXPECT_FALSE(gemm.wants_producer(1, 4096));  // no codes at batch 1
}

// The weight-only GEMV for 2–4 rows (fp8_gemv_w8a16_rows.cuh): each row bit for bit the one-row
// kernel's on that row alone (the same scale rule, conversions, HFMA2 order and reduction), both
// weight schemes, bias, x rows with a stride past K, y rows with a stride past N, K up to
// 12,288 at 4 rows; and within the CPU's fp8_linear_w8a16 tolerance.
TEST(Fp8Gemv, WeightOnlyRowsAreBitIdenticalToTheOneRowKernel) {
  std::mt19937 rng(17);
  int checked = 0;
  for (bool block : {true, false})
    for (auto [N, K] : {std::pair<int64_t, int64_t>{384, 512}, {250, 1040}, {136, 4096}, {72, 12288}})
      for (int M : {2, 3, 4})
        for (bool bias : {false, true}) {
          RandomCodes w(block, N, K, rng);
          const int64_t ldx = K + 8, ldy = N + 4;
          auto x = test::randn<bf16>(size_t(M * ldx), rng, 3.0f);
          for (int m = 0; m < M; ++m)  // rows of different magnitudes: different exponents
            for (int64_t k = 0; k < K; ++k) x[m * ldx + k] = bf16(to_float(x[m * ldx + k]) * float(1 << (3 * m)));
          auto b = test::randn<bf16>(size_t(N), rng);
          auto dx = test::upload(x);
          auto db = test::upload(b);
          const bf16* bp = bias ? db.data() : nullptr;
          TensorView<bf16> xv(dx.data(), {M, K}, Device::Cuda);
          xv.stride[0] = ldx;
          DeviceBuffer<bf16> dy(static_cast<size_t>(M * ldy)), d1(static_cast<size_t>(N));
          TensorView<bf16> yv(dy.data(), {M, N}, Device::Cuda);
          yv.stride[0] = ldy;
          test::poison(dy);
          ops::cuda::fp8_gemv_w8a16_rows(yv, xv, w.d, bp, nullptr);
          const auto y = test::download(dy);
          std::vector<float> xf(size_t(M * ldx)), ref(size_t(M * N)), ws;
          for (size_t i = 0; i < xf.size(); ++i) xf[i] = to_float(x[i]);
          ops::cpu::fp8_linear_w8a16(xf.data(), M, int(K), w.h, bias ? b.data() : static_cast<const bf16*>(nullptr),
                                     ref.data(), ldx, N, ws);
          for (int m = 0; m < M; ++m) {
            ops::cuda::fp8_gemv_w8a16(TensorView<bf16>(d1.data(), {1, N}, Device::Cuda),
                                      TensorView<bf16>(dx.data() + m * ldx, {1, K}, Device::Cuda), w.d, bp, nullptr,
                                      10);
            const auto one = test::download(d1);
            std::vector<bf16> row(y.begin() + m * ldy, y.begin() + m * ldy + N);
            EXPECT_EQ(bits(row), bits(one)) << "row " << m << " of M=" << M << (block ? " block" : " channel")
                                            << " N=" << N << " K=" << K << (bias ? " bias" : "");
            std::vector<float> rr(ref.begin() + m * N, ref.begin() + (m + 1) * N);
            EXPECT_LE(test::rel_err(row, rr), 5e-3) << "row " << m << " of M=" << M << " N=" << N << " K=" << K;
            ++checked;
          }
          for (int m = 0; m + 1 < M; ++m)  // the padding between y's rows is left alone
            for (int64_t n = N; n < ldy; ++n) EXPECT_EQ(y[m * ldy + n].bits, 0xffff) << "padding, row " << m;
        }
  EXPECT_EQ(checked, 2 * 4 * (2 + 3 + 4) * 2);
}

// The residual add + RMSNorm of 2–4 rows in the rows GEMV's prologue (fp8_add_rms_norm_gemv_rows)
// against add_rms_norm (the standalone kernel, in place) then fp8_gemv_w8a16_rows: outputs and the
// new residual rows bit for bit, x left as it was; K with one norm vector a thread and with
// several (1,024, 4,096, 8,192 at two rows), with and without a residual to add, both weight
// schemes, both walks, with bias.
TEST(Fp8Gemv, WeightOnlyRowsWithTheNormInThePrologueAreBitIdenticalToTheSeparateKernels) {
  std::mt19937 rng(29);
  int checked = 0;
  for (bool block : {true, false})
    for (int64_t K : {1024, 4096, 8192})
      for (int M : {2, 3, 4}) {
        if (!ops::cuda::fp8_add_rms_norm_gemv_rows_supported(M, K)) {
          EXPECT_GT(M * K, 32768) << "M=" << M << " K=" << K;
          continue;
        }
        const int64_t N = 1000;
        RandomCodes w(block, N, K, rng);
        auto b = test::upload(test::randn<bf16>(size_t(N), rng));
        auto nw = test::upload(test::randn<bf16>(size_t(K), rng, 0.5f, 1.0f));
        for (bool first : {false, true})
          for (int flat : {0, 1}) {
            auto x = test::randn<bf16>(size_t(M * K), rng, 2.0f), r = test::randn<bf16>(size_t(M * K), rng, 2.0f);
            auto dx = test::upload(x), dr = test::upload(r), dx2 = test::upload(x), dr2 = test::upload(r);
            DeviceBuffer<bf16> dy(size_t(M * N)), dy2(size_t(M * N)), drout(size_t(M * K));
            TensorView<bf16> xv(dx.data(), {M, K}, Device::Cuda), x2v(dx2.data(), {M, K}, Device::Cuda);
            TensorView<bf16> r2v(dr2.data(), {M, K}, Device::Cuda), nwv(nw.data(), {K}, Device::Cuda);
            TensorView<bf16> yv(dy.data(), {M, N}, Device::Cuda), y2v(dy2.data(), {M, N}, Device::Cuda);
            ops::cuda::detail::fp8_rows_flat_flag() = flat;
            ops::cuda::add_rms_norm(x2v, r2v, nwv, 1e-6f, first, nullptr);
            ops::cuda::fp8_gemv_w8a16_rows(y2v, x2v, w.d, b.data(), nullptr);
            test::poison(dy);
            test::poison(drout);
            ops::cuda::fp8_add_rms_norm_gemv_rows(yv, xv, first ? nullptr : dr.data(), drout.data(), nw.data(), 1e-6f,
                                                  first, w.d, b.data(), nullptr);
            ops::cuda::detail::fp8_rows_flat_flag() = ops::cuda::detail::kFp8RowsFlatDefault;
            const std::string at = std::string(block ? "block" : "channel") + " K=" + std::to_string(K) +
                                   " M=" + std::to_string(M) + (first ? " first" : "") + " flat " + std::to_string(flat);
            EXPECT_EQ(bits(test::download(dy)), bits(test::download(dy2))) << at;
            EXPECT_EQ(bits(test::download(drout)), bits(test::download(dr2))) << "residual, " << at;
            EXPECT_EQ(bits(test::download(dx)), bits(x)) << "x is left as it was, " << at;
            ++checked;
          }
      }
  EXPECT_EQ(checked, 2 * (3 + 3 + 3) * 2 * 2);
}

// The multi-row GEMV on the flat walk (PIE_FP8_ROWS_FLAT, fp8_rows_flat_flag) against its row-group
// walk, bit for bit: 2, 3 and 4 rows of x at projection-sized N (several units a warp), K of one
// step, several, and a tail, both weight schemes, with bias.
TEST(Fp8Gemv, WeightOnlyRowsOnTheFlatWalkAreBitIdenticalToTheRowGroupWalk) {
  std::mt19937 rng(23);
  int checked = 0;
  for (bool block : {true, false})
    for (auto [N, K] : {std::pair<int64_t, int64_t>{6144, 4096}, {5000, 1040}, {3000, 12288}}) {
      RandomCodes w(block, N, K, rng);
      auto b = test::upload(test::randn<bf16>(size_t(N), rng));
      for (int M : {2, 3, 4}) {
        auto dx = test::upload(test::randn<bf16>(size_t(M * K), rng, 3.0f));
        DeviceBuffer<bf16> dy(static_cast<size_t>(M * N));
        TensorView<bf16> xv(dx.data(), {M, K}, Device::Cuda), yv(dy.data(), {M, N}, Device::Cuda);
        std::vector<uint16_t> got[2];
        for (int flat : {0, 1}) {
          ops::cuda::detail::fp8_rows_flat_flag() = flat;
          test::poison(dy);
          ops::cuda::fp8_gemv_w8a16_rows(yv, xv, w.d, b.data(), nullptr);
          got[flat] = bits(test::download(dy));
        }
        ops::cuda::detail::fp8_rows_flat_flag() = ops::cuda::detail::kFp8RowsFlatDefault;
        EXPECT_EQ(got[1], got[0]) << "M=" << M << (block ? " block" : " channel") << " N=" << N << " K=" << K;
        ++checked;
      }
    }
  EXPECT_EQ(checked, 2 * 3 * 3);
}

// The flat grids (variants 13–16, kFp8GridFlat*): at projection-sized N every warp walks several
// units of C rows, and its two register buffers run on across them (a unit's first chunks are
// requested while the last unit's are consumed). Each output must still be bit for bit the
// persistent grid's (variant 10): the quantizing GEMV, the weight-only one, and the weight-only
// one with the norm in its prologue (where K fits the norm's threads); K of one step (4,096 at
// U = 8), two, three, and a ragged tail.
TEST(Fp8Gemv, FlatGridsWalkingSeveralUnitsPerWarpAreBitIdenticalToThePersistentGrid) {
  std::mt19937 rng(19);
  int checked = 0;
  for (bool block : {true, false})
    for (auto [N, K] : {std::pair<int64_t, int64_t>{6144, 4096}, {5000, 1040}, {3000, 12288}}) {
      GemvCase c(block, N, K, true, rng);
      TensorView<bf16> xv = c.xv(), yv = c.yv();
      auto r = test::upload(test::randn<bf16>(size_t(K), rng, 2.0f));
      auto nw = test::upload(test::randn<bf16>(size_t(K), rng, 0.5f, 1.0f));
      DeviceBuffer<bf16> rout(static_cast<size_t>(K));
      // mode 0: quantizing, 1: weight-only, 2: weight-only with the norm.
      auto run = [&](int v, int mode) {
        test::poison(c.dy);
        if (mode == 0)
          ops::cuda::fp8_gemv(yv, xv, c.w.d, c.bias_dev(), nullptr, v);
        else if (mode == 1)
          ops::cuda::fp8_gemv_w8a16(yv, xv, c.w.d, c.bias_dev(), nullptr, v);
        else
          ops::cuda::fp8_add_rms_norm_gemv(yv, xv, r.data(), rout.data(), nw.data(), 1e-6f, false, c.w.d,
                                           c.bias_dev(), nullptr, v, true);
        return bits(test::download(c.dy));
      };
      for (int mode : {0, 1, 2}) {
        if (mode == 2 && !ops::cuda::fp8_add_rms_norm_gemv_supported(K, 10)) continue;  // the norm needs K ≤ 4,096
        const auto want = run(10, mode);
        for (int v = 13; v <= 16; ++v) {
          EXPECT_EQ(run(v, mode), want) << ops::cuda::fp8_gemv_variant_name(v) << " mode " << mode
                                        << (block ? " block" : " channel") << " N=" << N << " K=" << K;
          ++checked;
        }
      }
    }
  EXPECT_EQ(checked, 2 * (3 + 3 + 2) * 4);
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
  // Nor a weight-only form (it is the rows kernel's).
  EXPECT_THROW(ops::cuda::fp8_gemv_w8a16(yv, xv, w.d, static_cast<const bf16*>(nullptr), nullptr, 0), std::exception);
}

}  // namespace
}  // namespace pie
