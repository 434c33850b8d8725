// FP8 weights on the GPU (label cuda), each against the CPU reference of the same scheme
// (ops/cpu/fp8_linear.hpp, engine/cpu/cpu_forward.hpp):
// - the activation quantization kernel: codes and scales bit-identical to the CPU's;
// - RMSNorm and SwiGLU with the quantization fused in: bit-identical to the separate kernels;
// - Fp8Gemm (GEMV at M = 1, cuBLASLt's block-scaled and per-channel FP8 GEMM otherwise, M not a
//   multiple of 4, bias; prequantized input) on random inputs;
// - the engine with fp8 weights (CUDA graphs, chunked prefill, decode) against the CPU forward
//   over the same fp8 weights with bf16 rounding points (CpuForward::round_activations, bf16 KV):
//   logits within 0.08, the scheme's own floor (see the per-channel test); and, for the record,
//   against the float CPU forward;
// - the floor: the bf16 engine against the same two CPU references;
// - on the transformers-built checkpoints of tests/fp8/make_fp8_fixtures.py (when present):
//   teacher-forced greedy agreement of the fp8 engine with the bf16 engine over 128 steps, and
//   the fp8 logits against transformers' own fine-grained FP8.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "../cuda/test_util.hpp"
#include "gpu_test_util.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/cpu/cpu_forward.hpp"
#include "pie/engine/cuda/cuda_runner.cuh"
#include "pie/engine/engine.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/fp8_weights.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/ops/cpu/fp8_linear.hpp"
#include "pie/ops/cuda/fp8_gemm.cuh"

namespace pie {
namespace {

using engine::SampleSpec;

/// A random fp8 weight [N, K] (host) quantized from N(0, 1/K) values, with its device copy.
struct RandomFp8 {
  model::Fp8Weights<bf16> host;
  Fp8Weight h, d;
  DeviceBuffer<fp8_e4m3> dq;
  DeviceBuffer<float> ds;
  RandomFp8(bool block, int64_t N, int64_t K, std::mt19937& rng) {
    auto src = std::make_shared<model::Weights<bf16>>();
    src->config.num_hidden_layers = 0;
    auto t = src->allocate({N, K});
    auto v = test::randn<bf16>(size_t(N * K), rng, 1.f / std::sqrt(float(K)));
    std::copy(v.begin(), v.end(), t.data);
    host.block = block;
    h = host.allocate_fp8(N, K);
    if (block) {
      for (int64_t nb = 0; nb < h.n_blocks(); ++nb)
        for (int64_t kb = 0; kb < h.k_blocks(); ++kb) {
          float amax = 0;
          for (int64_t n = nb * 128; n < std::min(N, nb * 128 + 128); ++n)
            for (int64_t k = kb * 128; k < std::min(K, kb * 128 + 128); ++k) amax = std::max(amax, std::fabs(to_float(t.data[n * K + k])));
          const float s = fp8_group_scale(amax);
          h.scale.data[nb * h.scale_ld + kb] = s;
          for (int64_t n = nb * 128; n < std::min(N, nb * 128 + 128); ++n)
            for (int64_t k = kb * 128; k < std::min(K, kb * 128 + 128); ++k) h.q.data[n * K + k] = fp8_e4m3(to_float(t.data[n * K + k]) / s);
        }
    } else {
      model::quantize_per_channel(t, h);
    }
    dq = test::upload(std::vector<fp8_e4m3>(h.q.data, h.q.data + h.q.numel()));
    ds = test::upload(std::vector<float>(h.scale.data, h.scale.data + h.scale.numel()));
    d = h;
    d.q = TensorView<fp8_e4m3>(dq.data(), {N, K}, Device::Cuda);
    d.scale = TensorView<float>(ds.data(), {h.scale.shape[0], h.scale.shape[1]}, Device::Cuda);
  }
};

// Every quantization path (the row kernel; from registers in one pass: PIE_FP8_QUANT_REGS; with
// the loads first: PIE_FP8_PRODUCERS=v2; and, for group scales, the flat kernel of
// fp8_group_quant.cuh: PIE_FP8_FLAT_GROUPS), at widths with whole groups, a partial last group
// (136 = 128 + 8, which the flat kernel leaves to the row kernels) and Qwen3-8B's hidden size,
// the last also at a decode batch of 512.
TEST(Fp8Kernels, QuantizationIsBitIdenticalToTheCpu) {
  std::mt19937 rng(1);
  struct Path { int regs, v2, flat; };
  for (auto [regs, v2, flat] : {Path{0, 0, 0}, {1, 0, 0}, {1, 1, 0}, {1, 1, 1}})
  for (int K : {640, 136, 4096})
  for (bool per_token : {false, true})
    for (int M : {1, 3, 8, 37, 512}) {
      if (M == 512 && K != 4096) continue;
      SCOPED_TRACE(testing::Message() << "regs " << regs << " v2 " << v2 << " flat " << flat << " K " << K);
      auto x = test::randn<bf16>(size_t(M) * K, rng, 2.f);
      x[3] = from_float<bf16>(0.f);
      auto dx = test::upload(x);
      const int64_t Mp = ops::cuda::fp8_padded_rows(M), G = (K + 127) / 128;
      DeviceBuffer<fp8_e4m3> q(Mp * K);
      DeviceBuffer<float> s(Mp * (G + 1));
      PIE_CUDA_CHECK(cudaMemset(q.data(), 0x5a, q.size() * sizeof(fp8_e4m3)));  // padding rows must be written
      ops::cuda::fp8_quantize(TensorView<bf16>(dx.data(), {M, K}, Device::Cuda), per_token, q.data(), s.data(), nullptr,
                              regs, v2, flat);
      auto hq = test::download(q);
      auto hs = test::download(s);
      auto xf = test::to_f32(x);
      std::vector<fp8_e4m3> cq(size_t(M) * K);
      std::vector<float> cs(size_t(M) * (per_token ? 1 : G));
      ops::cpu::fp8_quantize_rows(xf.data(), K, M, K, per_token ? K : 128, cq.data(), cs.data());
      int bad = 0;
      for (int i = 0; i < M * K; ++i) bad += hq[i].bits != cq[i].bits;
      EXPECT_EQ(bad, 0) << "codes differ, M=" << M << (per_token ? " per token" : " per group");
      for (int m = 0; m < M; ++m)
        for (int g = 0; g < (per_token ? 1 : G); ++g)
          EXPECT_EQ(per_token ? hs[m] : hs[g * Mp + m], cs[m * (per_token ? 1 : G) + g]) << "scale m=" << m << " g=" << g;
      for (int64_t m = M; m < Mp; ++m) {
        int nonzero = 0;
        for (int k = 0; k < K; ++k) nonzero += hq[m * K + k].bits != 0;
        EXPECT_EQ(nonzero, 0) << "padding row " << m;
        if (!per_token)
          for (int g = 0; g < G; ++g) EXPECT_EQ(hs[g * Mp + m], 1.0f) << "padding row " << m << " scale " << g;
      }
    }
}

// The producers with the quantization fused in (fp8_producers.cuh) against the separate kernels
// (add_rms_norm / silu_and_mul, then fp8_quantize): outputs, residual, codes and scales bit for
// bit, padding rows included; then Fp8Gemm::prequantized on those codes against operator().
// Every producer path (PIE_FP8_QUANT_REGS 0: write the row and read it back; 1: quantize from
// registers in one pass; PIE_FP8_PRODUCERS v2: from registers, loads first, 4 vectors a SwiGLU
// thread; PIE_FP8_FLAT_GROUPS, the default for group scales: SwiGLU as fp8_group_quant.cuh's flat
// kernel) at a small shape, widths with a partial last group (136, 264, 1000) and Qwen3-8B's
// (4096, 12288), the last two also at a decode batch of 512, a ragged 300 and 1; the separate
// kernels take the row path (flat 0).
TEST(Fp8Kernels, FusedProducersAreBitIdenticalToTheSeparateKernels) {
  std::mt19937 rng(3);
  ops::cuda::Fp8Gemm gemm(512, 12288, 512);
  // The GEMM on the producer's codes, at every M > 1: the weight-only GEMV for 2–4 rows (the
  // default there, fp8_weight_only_rows) reads x itself and takes no codes, so it is off here;
  // its own tests are pie_gpu_test_fp8_gemv's Fp8Gemv.WeightOnlyRows*.
  gemm.set_gemv_w8a16(false);
  struct Path { int regs, v2, flat; };
  for (auto [regs, v2, flat] : {Path{0, 0, 0}, {1, 0, 0}, {1, 4, 0}, {1, 4, 1}})
  for (auto [H, I] : {std::pair<int, int>{512, 1536}, {136, 264}, {1000, 1000}, {4096, 12288}})
  for (bool per_token : {false, true})
    for (int M : {1, 2, 3, 8, 37, 300, 512}) {
      if ((M == 1 || M > 37) && H != 4096 && H != 1000) continue;
      SCOPED_TRACE(testing::Message() << "regs " << regs << " v2 " << v2 << " flat " << flat << " H " << H << " I " << I);
      const int64_t Mp = ops::cuda::fp8_padded_rows(M);
      auto bits = [](const std::vector<bf16>& a, const std::vector<bf16>& b) {
        int bad = 0;
        for (size_t i = 0; i < a.size(); ++i) bad += a[i].bits != b[i].bits;
        return bad;
      };
      auto same_q = [&](DeviceBuffer<fp8_e4m3>& a, DeviceBuffer<fp8_e4m3>& b, DeviceBuffer<float>& sa,
                        DeviceBuffer<float>& sb, int K) {
        auto qa = test::download(a), qb = test::download(b);
        auto fa = test::download(sa), fb = test::download(sb);
        int bad = 0;
        for (int64_t i = 0; i < Mp * K; ++i) bad += qa[i].bits != qb[i].bits;
        const int64_t ns = per_token ? Mp : Mp * ((K + 127) / 128);
        for (int64_t i = 0; i < ns; ++i) bad += fa[i] != fb[i];
        return bad;
      };
      for (bool first : {false, true}) {  // residual add + RMSNorm
        auto x = test::randn<bf16>(size_t(M) * H, rng, 3.f), r = test::randn<bf16>(size_t(M) * H, rng);
        auto w = test::randn<bf16>(H, rng, 1.f, 1.f);
        auto dx1 = test::upload(x), dr1 = test::upload(r), dx2 = test::upload(x), dr2 = test::upload(r);
        auto dw = test::upload(w);
        DeviceBuffer<fp8_e4m3> q1(Mp * H), q2(Mp * H);
        DeviceBuffer<float> s1(Mp * ((H + 127) / 128)), s2(Mp * ((H + 127) / 128));
        auto v = [&](DeviceBuffer<bf16>& b, int64_t c) { return TensorView<bf16>(b.data(), {M, c}, Device::Cuda); };
        TensorView<bf16> wv(dw.data(), {H}, Device::Cuda);
        ops::cuda::add_rms_norm(v(dx1, H), v(dr1, H), wv, 1e-6f, first, nullptr);
        ops::cuda::fp8_quantize(v(dx1, H), per_token, q1.data(), s1.data(), nullptr, 0, 0, 0);
        ops::cuda::add_rms_norm_fp8(v(dx2, H), v(dr2, H), wv, 1e-6f, first, {q2.data(), s2.data(), per_token}, nullptr,
                                    regs, v2);
        EXPECT_EQ(bits(test::download(dx1), test::download(dx2)), 0) << "norm output M=" << M;
        EXPECT_EQ(bits(test::download(dr1), test::download(dr2)), 0) << "residual M=" << M;
        EXPECT_EQ(same_q(q1, q2, s1, s2, H), 0) << "norm codes/scales M=" << M << (per_token ? " per token" : "");
        if (v2 != 0) {  // the codes alone (store_x false): the same codes and residual, x as it was
          auto dx3 = test::upload(x), dr3 = test::upload(r);
          DeviceBuffer<fp8_e4m3> q3(Mp * H);
          DeviceBuffer<float> s3(Mp * ((H + 127) / 128));
          ops::cuda::add_rms_norm_fp8(v(dx3, H), v(dr3, H), wv, 1e-6f, first, {q3.data(), s3.data(), per_token},
                                      nullptr, regs, v2, /*store_x=*/false);
          EXPECT_EQ(bits(x, test::download(dx3)), 0) << "codes only: x written, M=" << M;
          EXPECT_EQ(bits(test::download(dr1), test::download(dr3)), 0) << "codes only: residual M=" << M;
          EXPECT_EQ(same_q(q1, q3, s1, s3, H), 0) << "codes only: norm codes/scales M=" << M;
        }
      }
      {  // SwiGLU, then the down projection on the producer's codes
        auto gu = test::randn<bf16>(size_t(M) * 2 * I, rng, 2.f);
        auto dgu = test::upload(gu);
        DeviceBuffer<bf16> o1(size_t(M) * I), o2(size_t(M) * I);
        DeviceBuffer<fp8_e4m3> q1(Mp * I);
        DeviceBuffer<float> s1(Mp * ((I + 127) / 128));
        TensorView<bf16> guv(dgu.data(), {M, 2 * I}, Device::Cuda), ov1(o1.data(), {M, I}, Device::Cuda),
            ov2(o2.data(), {M, I}, Device::Cuda);
        ops::cuda::silu_and_mul(guv, ov1, nullptr);
        ops::cuda::fp8_quantize(ov1, per_token, q1.data(), s1.data(), nullptr, 0, 0, 0);
        // Into the GEMM's own buffer, as the engine does.
        ops::cuda::silu_and_mul_fp8(guv, ov2, gemm.act_buffer(per_token), nullptr, regs, v2, true, flat);
        EXPECT_EQ(bits(test::download(o1), test::download(o2)), 0) << "silu output M=" << M;
        {  // the producer's codes and scales against fp8_quantize's, directly
          const auto a = gemm.act_buffer(per_token);
          const int64_t ns = per_token ? Mp : Mp * ((I + 127) / 128);
          std::vector<fp8_e4m3> qa(Mp * I);
          std::vector<float> sa(ns);
          PIE_CUDA_CHECK(cudaMemcpy(qa.data(), a.q, qa.size() * sizeof(fp8_e4m3), cudaMemcpyDeviceToHost));
          PIE_CUDA_CHECK(cudaMemcpy(sa.data(), a.s, sa.size() * sizeof(float), cudaMemcpyDeviceToHost));
          auto qb = test::download(q1);
          auto sb = test::download(s1);
          int bad = 0;
          for (int64_t i = 0; i < Mp * I; ++i) bad += qa[i].bits != qb[i].bits;
          for (int64_t i = 0; i < ns; ++i) bad += sa[i] != sb[i];
          EXPECT_EQ(bad, 0) << "silu codes/scales M=" << M << (per_token ? " per token" : "");
          if (v2 != 0) {  // the codes alone (store_out false): the same codes, out not written
            DeviceBuffer<bf16> o3(size_t(M) * I);
            PIE_CUDA_CHECK(cudaMemset(o3.data(), 0x7f, o3.size() * sizeof(bf16)));
            TensorView<bf16> ov3(o3.data(), {M, I}, Device::Cuda);
            DeviceBuffer<fp8_e4m3> q3(Mp * I);
            DeviceBuffer<float> s3(ns);
            ops::cuda::silu_and_mul_fp8(guv, ov3, {q3.data(), s3.data(), per_token}, nullptr, regs, v2,
                                        /*store_out=*/false, flat);
            auto q3h = test::download(q3);
            auto s3h = test::download(s3);
            auto o3h = test::download(o3);
            int bad3 = 0, written = 0;
            for (int64_t i = 0; i < Mp * I; ++i) bad3 += q3h[i].bits != qb[i].bits;
            for (int64_t i = 0; i < ns; ++i) bad3 += s3h[i] != sb[i];
            for (const bf16& e : o3h) written += e.bits != 0x7f7f;
            EXPECT_EQ(bad3, 0) << "codes only: silu codes/scales M=" << M;
            EXPECT_EQ(written, 0) << "codes only: silu output written, M=" << M;
          }
        }
        if (I % 128 != 0) continue;  // the block-scaled GEMM below wants whole 128-column groups
        if (M == 1) continue;        // operator() takes the GEMV at M = 1, not the codes
        RandomFp8 w(!per_token, 512, I, rng);
        DeviceBuffer<bf16> y1(size_t(M) * 512), y2(size_t(M) * 512);
        TensorView<bf16> yv1(y1.data(), {M, 512}, Device::Cuda), yv2(y2.data(), {M, 512}, Device::Cuda);
        gemm.prequantized(yv2, w.d, static_cast<const bf16*>(nullptr), nullptr);
        gemm(yv1, ov1, w.d, static_cast<const bf16*>(nullptr), nullptr);  // quantizes ov1 again, same codes
        EXPECT_EQ(bits(test::download(y1), test::download(y2)), 0) << "prequantized GEMM M=" << M;
        PIE_CUDA_CHECK(cudaDeviceSynchronize());
      }
    }
}

TEST(Fp8Kernels, GemmAndGemvMatchTheCpuReference) {
  std::mt19937 rng(2);
  ops::cuda::Fp8Gemm gemm(512, 1024, 1024);
  for (bool block : {true, false})
    for (auto [N, K] : {std::pair<int64_t, int64_t>{384, 512}, {256, 1024}})
      for (bool bias : {false, true})
        for (int M : {1, 2, 3, 4, 5, 16, 100, 257}) {
          for (bool gemv : {true, false}) {
            if (!gemv && M != 1) continue;
            RandomFp8 w(block, N, K, rng);
            auto x = test::randn<bf16>(size_t(M) * (K + 8), rng);  // a row stride beyond K
            auto b = test::randn<bf16>(N, rng);
            auto dx = test::upload(x);
            auto db = test::upload(b);
            DeviceBuffer<bf16> dy(size_t(M) * N);
            test::poison(dy);
            TensorView<bf16> xv(dx.data(), {M, K}, Device::Cuda);
            xv.stride[0] = K + 8;
            gemm.set_gemv(gemv);
            gemm(TensorView<bf16>(dy.data(), {M, N}, Device::Cuda), xv, w.d, bias ? db.data() : nullptr, nullptr);
            auto y = test::download(dy);
            auto xf = test::to_f32(x);
            std::vector<float> ref(size_t(M) * N), xs, ws;
            // The GEMVs are weight-only where the scheme's rule says so (core/fp8_weight.hpp): one
            // row, and 2-4 rows by default since 2026-12-07 (PIE_FP8_GEMV_W8A16_ROWS).
            if (gemv && fp8_weight_only_rows(M, K))
              ops::cpu::fp8_linear_w8a16(xf.data(), M, int(K), w.h,
                                         bias ? b.data() : static_cast<const bf16*>(nullptr), ref.data(), K + 8, N, ws);
            else
              ops::cpu::fp8_linear(xf.data(), M, int(K), w.h, bias ? b.data() : static_cast<const bf16*>(nullptr),
                                   ref.data(), K + 8, N, xs, ws);
            const double err = test::rel_err(y, ref);
            EXPECT_LE(err, 1e-2) << (block ? "block" : "per channel") << " M=" << M << " N=" << N << " K=" << K
                                 << (bias ? " bias" : "") << (gemv ? "" : " (cuBLASLt)");
            if (M == 1 || M == 257)
              std::printf("[fp8 gemm vs cpu] %s M=%d N=%lld K=%lld%s%s: rel err %.3g\n", block ? "block" : "channel", M,
                          (long long)N, (long long)K, bias ? " bias" : "", M == 1 && gemv ? " gemv" : "", err);
          }
        }
  gemm.set_gemv(true);
}

// CUTLASS's block-scaled kernel (builds with PIE_FP8_CUTLASS) against cuBLASLt and the CPU on the
// same codes: M from 2 to 512 (padded rows, partial tiles; past 128 rows cuBLASLt runs both), a K
// whose scale row needs no padding (the path's condition) and one that does (cuBLASLt keeps it),
// contiguous and strided outputs.
TEST(Fp8Kernels, CutlassBlockGemmMatchesCublasLtAndTheCpu) {
  if (!ops::cuda::Fp8Gemm::cutlass_compiled()) GTEST_SKIP() << "no CUTLASS fp8 path in this build";
  ops::cuda::Fp8Gemm gemm(512, 1024, 1024);
  gemm.set_cutlass(true);
  // CUTLASS against cuBLASLt at every M here, 2 and 3 included: the weight-only GEMV that takes
  // 2–4 rows by default (fp8_weight_only_rows) would run both products; off, as in the test above.
  gemm.set_gemv_w8a16(false);
  std::mt19937 rng(11);
  int ran = 0;
  for (auto [N, K] : {std::pair<int64_t, int64_t>{256, 512}, {384, 1024}, {256, 640}})
    for (int M : {2, 3, 5, 16, 64, 65, 100, 257, 512})
      for (int64_t ldy : {N, N + 64}) {
        RandomFp8 w(true, N, K, rng);
        auto x = test::randn<bf16>(size_t(M) * K, rng);
        auto dx = test::upload(x);
        DeviceBuffer<bf16> y_cut(size_t(M) * ldy), y_lt(size_t(M) * ldy);
        test::poison(y_cut);
        test::poison(y_lt);
        TensorView<bf16> xv(dx.data(), {M, K}, Device::Cuda);
        TensorView<bf16> yc(y_cut.data(), {M, N}, Device::Cuda), yl(y_lt.data(), {M, N}, Device::Cuda);
        yc.stride[0] = yl.stride[0] = ldy;
        const bool cut = gemm.uses_cutlass(M, N, K, ldy);
        // 640: the scale row is padded 5 → 8; past 128 rows the path leaves the product to cuBLASLt.
        EXPECT_EQ(cut, K % 512 == 0 && ops::cuda::fp8_padded_rows(M) <= 128) << "M=" << M << " N=" << N << " K=" << K;
        gemm.set_cutlass(true);
        gemm(yc, xv, w.d, static_cast<const bf16*>(nullptr), nullptr);
        gemm.set_cutlass(false);
        gemm(yl, xv, w.d, static_cast<const bf16*>(nullptr), nullptr);
        gemm.set_cutlass(true);
        auto hc = test::download(y_cut), hl = test::download(y_lt);
        std::vector<bf16> c, l;  // the M × N entries (the stride's gap stays poisoned: unwritten)
        for (int m = 0; m < M; ++m)
          for (int64_t n = 0; n < ldy; ++n) {
            if (n < N) {
              c.push_back(hc[m * ldy + n]);
              l.push_back(hl[m * ldy + n]);
            } else {  // test::poison's 0xff bytes, untouched
              uint16_t pc, pl;
              std::memcpy(&pc, &hc[m * ldy + n], 2);
              std::memcpy(&pl, &hl[m * ldy + n], 2);
              EXPECT_TRUE(pc == 0xffff && pl == 0xffff) << "a column past N was written, M=" << M << " ldy=" << ldy;
            }
          }
        auto xf = test::to_f32(x);
        std::vector<float> ref(size_t(M) * N), xs, ws;
        ops::cpu::fp8_linear(xf.data(), M, int(K), w.h, static_cast<const bf16*>(nullptr), ref.data(), K, N, xs, ws);
        const double e_cut = test::rel_err(c, ref), e_lt = test::rel_err(l, ref);
        EXPECT_LE(e_cut, 1e-2) << "CUTLASS M=" << M << " N=" << N << " K=" << K << " ldy=" << ldy;
        EXPECT_LE(e_lt, 1e-2) << "cuBLASLt M=" << M << " N=" << N << " K=" << K << " ldy=" << ldy;
        EXPECT_LE(test::rel_err(c, test::to_f32(l)), 1e-2) << "CUTLASS vs cuBLASLt M=" << M;
        if (M == 100 && ldy == N)
          std::printf("[fp8 cutlass] M=%d N=%lld K=%lld: rel err vs cpu %.3g (cuBLASLt %.3g)%s\n", M, (long long)N,
                      (long long)K, e_cut, e_lt, cut ? "" : " (cuBLASLt both: scale row padded)");
        ran += cut;
      }
  EXPECT_GT(ran, 0);
}

// ---- the engine ----

using Fp8Engine = Engine<Qwen3, CudaBf16Fp8>;
using Bf16Engine = Engine<Qwen3, CudaBf16>;

EngineOptions small_options(bool eager) {
  EngineOptions o;
  o.sched.max_num_seqs = 16;
  o.sched.max_num_batched_tokens = 512;
  o.sched.max_model_len = 1024;
  o.swap_space_gib = 0.01;
  o.enforce_eager = eager;
  o.num_kv_blocks = 256;
  o.log = false;
  return o;
}

/// The CPU forward over host weights W (fp8 or bf16; bf16 storage), fed the plans the GPU runs.
/// `rounded`: bf16 activations at the GPU's rounding points and a bf16 KV cache (the GPU's
/// scheme up to summation order); else float activations and KV.
template <class W, class KVT>
struct CpuReferenceOf {
  engine::cpu::CpuForward<bf16, KVT> f;
  const W& w;
  std::vector<std::vector<KVT>> pools;
  std::vector<KVT*> ptrs;
  CpuReferenceOf(const W& weights, int blocks) : f(weights.config, {}), w(weights) {
    const auto& c = w.config;
    for (int l = 0; l < c.num_hidden_layers; ++l)
      pools.emplace_back(size_t(blocks) * 2 * c.num_key_value_heads * CudaBf16::block_size * c.head_dim, KVT(0.f));
    for (auto& p : pools) ptrs.push_back(p.data());
    f.round_activations(std::is_same_v<KVT, bf16>);
  }
  std::vector<float> run(const sched::StepPlan& p) {
    std::vector<float> logits(p.logits_rows.size() * size_t(w.config.vocab_size));
    f.begin(p, ptrs, CudaBf16::block_size, logits.data());
    Qwen3::forward(f, w);
    return logits;
  }
};

/// Prefill chunks and decodes of two sequences through the GPU runner and the CPU reference;
/// returns the worst logits error and the greedy agreement.
template <class Runner, class Cpu>
std::pair<double, double> gpu_vs_cpu(Runner& gpu, Cpu& cpu, int vocab, int graph_steps) {
  std::mt19937 rng(5);
  auto toks = [&](int n) {
    std::vector<int32_t> t(n);
    for (auto& x : t) x = 2 + int(rng() % (vocab - 2));
    return t;
  };
  gpu_test::HandSeq a{toks(40)}, b{toks(70)};
  int32_t next = 0;
  int agree = 0, rows = 0;
  double worst = 0;
  auto step = [&](std::vector<gpu_test::HandSeq*> seqs, std::vector<int> n) {
    sched::StepPlan p = gpu_test::hand_plan(seqs, n, CudaBf16::block_size, next);
    auto g = gpu.execute_logits(p, std::vector<SampleSpec>(p.logits_rows.size()));
    std::vector<float> gl(g.begin(), g.end());
    std::vector<float> cl = cpu.run(p);
    worst = std::max(worst, gpu_test::rel_err(gl, cl));
    for (size_t r = 0; r < p.logits_rows.size(); ++r, ++rows) {
      std::span<const float> cr(cl.data() + r * vocab, vocab), gr(gl.data() + r * vocab, vocab);
      agree += gpu_test::argmax(cr) == gpu_test::argmax(gr);
      seqs[r]->tokens.push_back(gpu.last_ids()[r]);
    }
  };
  step({&a, &b}, {40, 30});
  b.tokens.pop_back();
  step({&a, &b}, {1, 40});
  for (int i = 0; i < graph_steps; ++i) step({&a, &b}, {1, 1});
  step({&a}, {1});  // batch 1: the GEMV
  for (int i = 0; i < 4; ++i) step({&a}, {1});
  return {worst, double(agree) / rows};
}

TEST(Fp8Engine, PerChannelQuantizedAtLoadMatchesTheCpuReference) {
  auto cfg = gpu_test::small_qwen3(3);
  auto hw = std::make_shared<const model::Weights<bf16>>(model::dummy_weights<bf16>(cfg, 21));
  auto fp8 = model::quantize_weights<bf16>(hw);  // the same codes the engine makes at load
  EngineOptions o = small_options(false);
  o.set_weights(hw);
  Fp8Engine engine(o);
  // Float activations (the reference before 2026-12-04's second session): 0.064–0.073 on the
  // H200. The kernels match the CPU to 2e-3 (Fp8Kernels.*): the gap was the GPU's bf16
  // activations, whose rounding moves a value across an e4m3 step (2⁻⁴ relative), compounding
  // over layers. Printed for the record; the bound is on the rounded reference.
  CpuReferenceOf<model::Fp8Weights<bf16>, float> flt(fp8, 256);
  auto [err_f, agree_f] = gpu_vs_cpu(engine.runner(), flt, cfg.vocab_size, 12);
  std::printf("[fp8 gpu vs cpu] per channel, float reference: worst logits rel err %.3g, greedy agreement %.3f\n",
              err_f, agree_f);
  CpuReferenceOf<model::Fp8Weights<bf16>, bf16> cpu(fp8, 256);
  auto [err, agree] = gpu_vs_cpu(engine.runner(), cpu, cfg.vocab_size, 12);
  std::printf("[fp8 gpu vs cpu] per channel, bf16 rounding points: worst logits rel err %.3g, greedy agreement %.3f\n",
              err, agree);
  // Issue 18 asks 2e-2. Measured 0.054 on the H200 (2026-12-04; 0.073 against the float
  // reference): below what the scheme itself gives two implementations that differ only in fp32
  // summation order (Fp8Scheme.AmplifiesSummationOrderDifferencesFarBeyondBf16, CPU), while the
  // bf16 engine is within 7e-3 of the same reference (the test below): the gap is e4m3 codes
  // that a bf16 ulp moves across a rounding point, compounding over the layers.
  EXPECT_LE(err, 0.08);
  EXPECT_GE(agree, 0.9);
  EXPECT_GT(engine.runner().stats().graph_steps, 0);
}

// The floor of the comparison above: the bf16 engine against the same two CPU references over
// the same bf16 weights (no fp8 anywhere). What the rounded reference leaves is summation order
// (GEMM, attention) and the attention kernels' own bf16 roundings of P.
TEST(Fp8Engine, Bf16EngineAgainstTheSameCpuReferencesIsTheFloor) {
  auto cfg = gpu_test::small_qwen3(3);
  auto hw = std::make_shared<const model::Weights<bf16>>(model::dummy_weights<bf16>(cfg, 21));
  EngineOptions o = small_options(false);
  o.set_weights(hw);
  Bf16Engine engine(o);
  CpuReferenceOf<model::Weights<bf16>, float> flt(*hw, 256);
  auto [err_f, agree_f] = gpu_vs_cpu(engine.runner(), flt, cfg.vocab_size, 12);
  CpuReferenceOf<model::Weights<bf16>, bf16> cpu(*hw, 256);
  auto [err, agree] = gpu_vs_cpu(engine.runner(), cpu, cfg.vocab_size, 12);
  std::printf("[bf16 gpu vs cpu] float reference: worst logits rel err %.3g, greedy %.3f; bf16 rounding points: "
              "%.3g, greedy %.3f\n", err_f, agree_f, err, agree);
  EXPECT_LE(err, 2e-2);
  EXPECT_LE(err_f, 2e-2);
}

std::filesystem::path fixture(const char* name) {
  return std::filesystem::path(PIE_SOURCE_DIR) / "tests/fp8/fixtures" / name;
}

TEST(Fp8Engine, PublishedCheckpointMatchesTheCpuReference) {
  const auto dir = fixture("qwen3_fp8");
  if (!std::filesystem::exists(dir / "model.safetensors")) GTEST_SKIP() << "run tests/fp8/make_fp8_fixtures.py";
  const auto cfg = model::load_model_config(dir.string());
  auto fp8 = model::load_fp8_weights<bf16>(dir.string(), cfg);
  EngineOptions o = small_options(false);
  o.model_dir = dir.string();  // config.json's quantization_config: the block format
  Fp8Engine engine(o);
  CpuReferenceOf<model::Fp8Weights<bf16>, float> flt(fp8, 256);  // 0.054–0.056 before (see above)
  auto [err_f, agree_f] = gpu_vs_cpu(engine.runner(), flt, cfg.vocab_size, 12);
  CpuReferenceOf<model::Fp8Weights<bf16>, bf16> cpu(fp8, 256);
  auto [err, agree] = gpu_vs_cpu(engine.runner(), cpu, cfg.vocab_size, 12);
  std::printf("[fp8 gpu vs cpu] 128x128 blocks: float reference %.3g (greedy %.3f); bf16 rounding points: worst "
              "logits rel err %.3g, greedy agreement %.3f\n", err_f, agree_f, err, agree);
  EXPECT_LE(err, 0.08);  // measured 0.047 (0.054 against the float reference): see the per-channel test
  EXPECT_GE(agree, 0.9);
}

TEST(Fp8Engine, TransformersCheckpointsGreedyAgreementWithBf16AndTransformersFp8Logits) {
  const auto fp8_dir = fixture("qwen3_fp8"), bf16_dir = fixture("qwen3_bf16");
  if (!std::filesystem::exists(bf16_dir / "reference.json") || !std::filesystem::exists(fp8_dir / "model.safetensors"))
    GTEST_SKIP() << "run tests/fp8/make_fp8_fixtures.py";
  nlohmann::json ref_bf16 = nlohmann::json::parse(std::ifstream(bf16_dir / "reference.json"));
  nlohmann::json ref_fp8 = nlohmann::json::parse(std::ifstream(fp8_dir / "reference.json"));
  EngineOptions o = small_options(false);
  o.model_dir = bf16_dir.string();
  Bf16Engine bf(o);
  o.model_dir = fp8_dir.string();
  Fp8Engine f8(o);
  int agree = 0, steps = 0, clear_steps = 0, clear_agree = 0;
  double worst_tf = 0;
  const bool have_tf = ref_fp8.contains("prompts");
  std::printf("[fp8 vs transformers] %s\n", ref_fp8.value("transformers_fp8", std::string("?")).c_str());
  for (size_t i = 0; i < ref_bf16["prompts"].size(); ++i) {
    const auto& pr = ref_bf16["prompts"][i];
    auto prompt = pr["prompt_ids"].get<std::vector<int32_t>>();
    // The bf16 engine's own greedy path (128 steps) is what both engines are forced along.
    std::vector<std::vector<float>> lb, lf;
    std::vector<int32_t> ib, iff;
    {
      gpu_test::HandSeq s{prompt};
      int32_t next = 0;
      for (int k = 0; k < 128; ++k) {
        const int n = k == 0 ? static_cast<int>(s.tokens.size()) : 1;
        auto plan = gpu_test::hand_plan({&s}, {n}, CudaBf16::block_size, next);
        auto got = bf.runner().execute_logits(plan, std::vector<SampleSpec>(1));
        lb.emplace_back(got.begin(), got.end());
        ib.push_back(bf.runner().last_ids()[0]);
        s.tokens.push_back(ib.back());
      }
    }
    {
      gpu_test::HandSeq s{prompt};
      int32_t next = 0;
      for (int k = 0; k < 128; ++k) {
        const int n = k == 0 ? static_cast<int>(s.tokens.size()) : 1;
        auto plan = gpu_test::hand_plan({&s}, {n}, CudaBf16::block_size, next);
        auto got = f8.runner().execute_logits(plan, std::vector<SampleSpec>(1));
        lf.emplace_back(got.begin(), got.end());
        iff.push_back(f8.runner().last_ids()[0]);
        s.tokens.push_back(ib[k]);  // teacher forcing along the bf16 path
      }
    }
    for (int k = 0; k < 128; ++k, ++steps) {
      agree += iff[k] == ib[k];
      // The bf16 top-2 margin against the fp8 noise of this step (RMS over the vocabulary of
      // fp8 − bf16 logits): a flip inside the noise is a near-tie, not a fault.
      double noise = 0;
      for (size_t v = 0; v < lb[k].size(); ++v) noise += double(lf[k][v] - lb[k][v]) * (lf[k][v] - lb[k][v]);
      noise = std::sqrt(noise / double(lb[k].size()));
      float second = -INFINITY;
      for (size_t v = 0; v < lb[k].size(); ++v)
        if (int(v) != ib[k]) second = std::max(second, lb[k][v]);
      const double margin = lb[k][ib[k]] - second;
      const bool clear = margin > 2 * noise;
      clear_steps += clear;
      clear_agree += clear && iff[k] == ib[k];
      if (iff[k] != ib[k])
        std::printf("[fp8 vs bf16] prompt %zu step %d: fp8 %d, bf16 %d; bf16 top-2 margin %.4g, gap to fp8's pick %.4g, "
                    "fp8 noise (RMS) %.4g\n", i, k, iff[k], ib[k], margin, lb[k][ib[k]] - lb[k][iff[k]], noise);
    }
    if (have_tf) {  // transformers' fp8 logits along transformers' fp8 greedy path
      const auto& tp = ref_fp8["prompts"][i];
      auto forced = tp["greedy_ids"].get<std::vector<int32_t>>();
      const auto& rows = tp["logits"];
      gpu_test::HandSeq s{tp["prompt_ids"].get<std::vector<int32_t>>()};
      int32_t next = 0;
      for (size_t k = 0; k < rows.size(); ++k) {
        const int n = k == 0 ? static_cast<int>(s.tokens.size()) : 1;
        auto plan = gpu_test::hand_plan({&s}, {n}, CudaBf16::block_size, next);
        auto got = f8.runner().execute_logits(plan, std::vector<SampleSpec>(1));
        worst_tf = std::max(worst_tf, gpu_test::rel_err(got, rows[k].get<std::vector<float>>()));
        s.tokens.push_back(forced[k]);
      }
    }
  }
  const double rate = double(agree) / steps;
  std::printf("[fp8 vs bf16] teacher-forced greedy agreement %d/%d = %.4f; on the %d steps whose bf16 top-2 margin "
              "exceeds twice the fp8 noise: %d/%d\n", agree, steps, rate, clear_steps, clear_agree, clear_steps);
  // The issue asks 0.95. The scheme itself reaches 352/384 = 0.917 on this random checkpoint (the
  // CPU reference, tests/model/test_fp8.cpp; its bf16 greedy paths have top-2 margins down to
  // 1e-3): the GPU must do as well as the exact scheme, within a few near-ties.
  EXPECT_GE(rate, 0.90);
  if (have_tf) {
    std::printf("[fp8 vs transformers fp8] worst logits rel err %.3g\n", worst_tf);
    EXPECT_LE(worst_tf, 2e-2);
  }
}

/// A two-layer Qwen3 config.json (hidden 256, 4 heads of 64) in a temporary directory named
/// `name`; `block`: the published fp8 checkpoint's quantization_config (128×128 blocks). Returns
/// the directory.
std::string fp8_small_config(const std::string& name, int intermediate, bool block) {
  const auto dir = std::filesystem::temp_directory_path() / name;
  std::filesystem::create_directories(dir);
  nlohmann::json c = {{"architectures", {"Qwen3ForCausalLM"}}, {"vocab_size", 1024}, {"hidden_size", 256},
                      {"intermediate_size", intermediate}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}, {"head_dim", 64}, {"max_position_embeddings", 2048}};
  if (block)
    c["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"},
                                {"weight_block_size", {128, 128}}};
  std::ofstream(dir / "config.json") << c.dump();
  return dir.string();
}

/// small_options for `--load-format dummy --quantization fp8` of the config in `dir`.
EngineOptions dummy_fp8_options(const std::string& dir, bool eager = false) {
  EngineOptions o = small_options(eager);
  o.model_dir = dir;
  o.load_format = "dummy";
  o.quantization = "fp8";
  return o;
}

TEST(Fp8Engine, DummyFp8WeightsOfAShapeRun) {
  // --load-format dummy --quantization fp8 of a config with no weights (block: an fp8 config).
  for (bool block : {false, true}) {
    const std::string dir = fp8_small_config("pie_fp8_dummy_" + std::to_string(block), 512, block);
    Fp8Engine e(dummy_fp8_options(dir));
    sched::SamplingParams sp;
    sp.max_tokens = 16;
    sp.temperature = 0;
    sp.ignore_eos = true;
    auto out = e.generate({{5, 6, 7}, {8, 9}}, sp);
    EXPECT_EQ(out[0].tokens[0].size(), 16u);
    EXPECT_EQ(out[1].tokens[0].size(), 16u);
    std::filesystem::remove_all(dir);
  }
}

/// Hand-made steps through an engine of policy P over a dummy fp8 config: a prompt chunk of each
/// of three sequences, then steps of three decodes (the fp8 producers quantize at M > 1), with
/// fixed inputs; every step's float logits. `codes_only`: PIE_FP8_CODES_ONLY for this engine.
template <class P>
std::vector<float> fp8_batch_logits(const std::string& dir, bool codes_only, bool eager, int64_t* codes_fused = nullptr) {
  setenv("PIE_FP8_CODES_ONLY", codes_only ? "1" : "0", 1);
  EngineOptions o = dummy_fp8_options(dir, eager);
  if constexpr (std::is_same_v<typename P::kv_dtype, fp8_e4m3>) o.kv_cache_dtype = "fp8";
  Engine<Qwen3, P> e(o);
  unsetenv("PIE_FP8_CODES_ONLY");
  std::vector<gpu_test::HandSeq> seqs = {{{5, 6, 7, 8, 9, 10, 11}}, {{12, 13, 14}}, {{15, 16, 17, 18, 19}}};
  int32_t next = 0;
  std::vector<float> all;
  for (int k = 0; k < 6; ++k) {
    std::vector<gpu_test::HandSeq*> ps;
    std::vector<int> n;
    for (auto& s : seqs) {
      ps.push_back(&s);
      n.push_back(k == 0 ? static_cast<int>(s.tokens.size()) : 1);
    }
    auto plan = gpu_test::hand_plan(ps, n, P::block_size, next);
    auto got = e.runner().execute_logits(plan, std::vector<SampleSpec>(3));
    all.insert(all.end(), got.begin(), got.end());
    for (size_t i = 0; i < seqs.size(); ++i) seqs[i].tokens.push_back(20 + 7 * k + int(i));
  }
  if (codes_fused) *codes_fused = e.runner().forward().fusion_counts().fp8_codes_only;
  return all;
}

std::string fp8_batch_config(bool block) { return fp8_small_config("pie_fp8_batch_" + std::to_string(block), 640, block); }

TEST(Fp8Engine, CodesOnlyProducersGiveBitIdenticalLogits) {
  // PIE_FP8_CODES_ONLY: the norm and the held SwiGLU write only the codes their fp8 linear reads;
  // the logits of prompt chunks and batched decodes (graphs and eager) are the same bytes, and the
  // fused producers ran (two norms and a SwiGLU a layer at every batched step).
  for (bool block : {true, false})
    for (bool eager : {false, true}) {
      const std::string dir = fp8_batch_config(block);
      int64_t fused_off = 0, fused_on = 0;
      const auto base = fp8_batch_logits<CudaBf16Fp8>(dir, false, eager, &fused_off);
      const auto got = fp8_batch_logits<CudaBf16Fp8>(dir, true, eager, &fused_on);
      ASSERT_EQ(got.size(), base.size());
      size_t diff = 0;
      for (size_t i = 0; i < got.size(); ++i) diff += std::memcmp(&got[i], &base[i], sizeof(float)) != 0;
      EXPECT_EQ(diff, 0u) << (block ? "block" : "per channel") << (eager ? " eager" : " graphs") << ": " << diff
                          << " of " << got.size() << " logits differ";
      EXPECT_EQ(fused_off, 0);
      EXPECT_GE(fused_on, 3 * 2) << "the codes-only producers did not run";
      std::filesystem::remove_all(dir);
    }
}

TEST(Fp8Engine, Fp8WeightsWithAnFp8KvCacheCloseToTheBf16Cache) {
  // --quantization fp8 --kv-cache-dtype fp8 (CudaBf16Fp8Fp8KV): the same steps as with the bf16
  // cache, logits within the fp8 cache's error (per-tensor scale 1 on dummy weights), and with
  // the codes-only producers the same bytes as without.
  const std::string dir = fp8_batch_config(true);
  const auto bf16_kv = fp8_batch_logits<CudaBf16Fp8>(dir, false, false);
  const auto fp8_kv = fp8_batch_logits<CudaBf16Fp8Fp8KV>(dir, false, false);
  const auto fp8_kv_codes = fp8_batch_logits<CudaBf16Fp8Fp8KV>(dir, true, false);
  ASSERT_EQ(fp8_kv.size(), bf16_kv.size());
  const double e = gpu_test::rel_err(fp8_kv, bf16_kv);
  std::printf("[fp8 weights] fp8 KV against the bf16 KV cache: logits rel err %.3e\n", e);
  EXPECT_LT(e, 0.1);
  EXPECT_GT(e, 0.0) << "the fp8 cache changed nothing: is it the fp8 policy?";
  EXPECT_EQ(std::memcmp(fp8_kv.data(), fp8_kv_codes.data(), fp8_kv.size() * sizeof(float)), 0);
  std::filesystem::remove_all(dir);
}

/// Hand-made steps with prompt chunks long enough for the fp8 cache's staged prefill
/// (ops/cuda/prefill_fp8_kv.cuh): four prompts (40, 70, 33 and 3 tokens), then a step whose
/// decode rows come first and whose chunks follow a cached prefix (48 and 36 more tokens), then two
/// steps of four decodes. PIE_FP8_KV_PREFILL_STAGED = `staged` for this engine; every step's logits,
/// and the staged launches the forward made.
template <class P>
std::vector<float> fp8_kv_prefill_logits(const std::string& dir, bool staged, int64_t* staged_launches) {
  setenv("PIE_FP8_KV_PREFILL_STAGED", staged ? "1" : "0", 1);
  EngineOptions o = small_options(false);
  o.model_dir = dir;
  o.load_format = "dummy";
  o.kv_cache_dtype = "fp8";
  if constexpr (P::fp8_weights) o.quantization = "fp8";
  Engine<Qwen3, P> e(o);
  unsetenv("PIE_FP8_KV_PREFILL_STAGED");
  const int64_t before = e.runner().forward().fp8_prefill_staged();  // the start's own forwards
  auto tokens = [](int n, int first) {
    std::vector<int32_t> t(n);
    for (int i = 0; i < n; ++i) t[i] = (first + 37 * i) % 1000 + 3;
    return t;
  };
  std::vector<gpu_test::HandSeq> s(4);
  const int prompt[4] = {40, 70, 33, 3};
  for (int i = 0; i < 4; ++i) s[i].tokens = tokens(prompt[i], 11 * i);
  int32_t next = 0;
  std::vector<float> all;
  auto step = [&](std::vector<int> order, std::vector<int> n) {
    std::vector<gpu_test::HandSeq*> ps;
    for (int i : order) ps.push_back(&s[i]);
    auto plan = gpu_test::hand_plan(ps, n, P::block_size, next);
    auto got = e.runner().execute_logits(plan, std::vector<SampleSpec>(order.size()));
    all.insert(all.end(), got.begin(), got.end());
  };
  step({0, 1, 2, 3}, {40, 70, 33, 3});
  for (int i : {1, 3}) s[i].tokens.push_back(500 + i);
  auto more = [&](int i, int n) {
    const auto t = tokens(n, 7 + i);
    s[i].tokens.insert(s[i].tokens.end(), t.begin(), t.end());
  };
  more(0, 48);
  more(2, 36);
  step({1, 3, 0, 2}, {1, 1, 48, 36});
  for (int k = 0; k < 2; ++k) {
    for (int i = 0; i < 4; ++i) s[i].tokens.push_back(600 + 4 * k + i);
    step({0, 1, 2, 3}, {1, 1, 1, 1});
  }
  *staged_launches = e.runner().forward().fp8_prefill_staged() - before;
  return all;
}

TEST(Fp8Engine, Fp8CachePrefillStagedThroughV3CloseToTheFp8Kernel) {
  // PIE_FP8_KV_PREFILL_STAGED=1: an fp8 cache's prompt chunks widened into the staging pool and
  // read by the Hopper kernel v3, against the mma.sync kernel that reads the fp8 pages; the same
  // steps, logits within a few bf16 roundings carried through the fp8 cache (the two kernels sum
  // in another order, so a K/V code written later may land one e4m3 step away). bf16 weights
  // (no fp8 activation codes to amplify it) and fp8 weights, head dim 64.
  if (!ops::cuda::sm90::hopper_device()) GTEST_SKIP() << "not sm_90: v3 is Hopper's";
  const std::string dir = fp8_small_config("pie_fp8_kv_prefill", 512, false);
  for (bool fp8_weights : {false, true}) {
    int64_t off = 0, on = 0;
    const auto direct = fp8_weights ? fp8_kv_prefill_logits<CudaBf16Fp8Fp8KV>(dir, false, &off)
                                    : fp8_kv_prefill_logits<CudaBf16Fp8KV>(dir, false, &off);
    const auto staged = fp8_weights ? fp8_kv_prefill_logits<CudaBf16Fp8Fp8KV>(dir, true, &on)
                                    : fp8_kv_prefill_logits<CudaBf16Fp8KV>(dir, true, &on);
    ASSERT_EQ(staged.size(), direct.size());
    const double e = gpu_test::rel_err(staged, direct);
    std::printf("[fp8 kv prefill, %s weights] staged v3 against the fp8 kernel: logits rel err %.3e (%lld staged launches)\n",
                fp8_weights ? "fp8" : "bf16", e, static_cast<long long>(on));
    EXPECT_EQ(off, 0);
    EXPECT_EQ(on, 2 * 2) << "two prefill steps × two layers";
    EXPECT_LT(e, fp8_weights ? 0.05 : 0.02);
  }
  std::filesystem::remove_all(dir);
}

TEST(Fp8Engine, GemvVariantsGiveBitIdenticalLogits) {
  // Every batch-1 GEMV variant (PIE_FP8_GEMV), the producers quantizing x for it at batch 1
  // (PIE_FP8_GEMV_PRE) and the norm in its prologue (PIE_FP8_GEMV_NORM), against the default engine: same dummy weights, same hand-made steps
  // (a prefill, then batch-1 decodes replayed from graphs), bit-identical logits.
  for (bool block : {true, false}) {
    const std::string dir = fp8_small_config("pie_fp8_variants_" + std::to_string(block), 640, block);
    auto run = [&](const char* variant, const char* pre, const char* norm) {
      if (variant) setenv("PIE_FP8_GEMV", variant, 1);
      if (pre) setenv("PIE_FP8_GEMV_PRE", pre, 1);
      if (norm) setenv("PIE_FP8_GEMV_NORM", norm, 1);
      Fp8Engine e(dummy_fp8_options(dir));
      unsetenv("PIE_FP8_GEMV");
      unsetenv("PIE_FP8_GEMV_PRE");
      unsetenv("PIE_FP8_GEMV_NORM");
      gpu_test::HandSeq s{{5, 6, 7, 8, 9, 10, 11}};
      int32_t next = 0;
      std::vector<float> all;
      for (int k = 0; k < 8; ++k) {
        const int n = k == 0 ? static_cast<int>(s.tokens.size()) : 1;
        auto plan = gpu_test::hand_plan({&s}, {n}, CudaBf16::block_size, next);
        auto got = e.runner().execute_logits(plan, std::vector<SampleSpec>(1));
        all.insert(all.end(), got.begin(), got.end());
        s.tokens.push_back(13 + 7 * k);  // fixed inputs: the same steps for every variant
      }
      return all;
    };
    const auto base = run(nullptr, nullptr, nullptr);
    struct Setting { const char *v, *pre, *norm; };
    for (auto [v, pre, norm] : {Setting{"0", "0", "0"}, {"1", "0", "0"}, {"2", "0", "0"}, {"3", "0", "0"},
                                {"4", "0", "0"}, {"5", "0", "0"}, {"6", "0", "0"}, {"7", "0", "0"}, {"8", "0", "0"},
                                {"9", "0", "0"}, {"1", "1", "0"}, {"3", "1", "0"}, {"5", "1", "0"}, {"8", "1", "0"},
                                {"1", "0", "1"}, {"8", "0", "1"}, {"8", "1", "1"}, {"3", "1", "1"},
                                {"10", "0", "0"}, {"11", "0", "0"}, {"12", "0", "0"}, {"10", "1", "0"},
                                {"13", "0", "0"}, {"14", "0", "0"}, {"15", "0", "0"}, {"16", "0", "0"},
                                {"13", "0", "1"}}) {
      if (!block && std::strcmp(v, "0") != 0 && std::strcmp(v, "1") != 0 && std::strcmp(v, "8") != 0 &&
          std::strcmp(v, "13") != 0)
        continue;  // per channel: four suffice
      const auto got = run(v, pre, norm);
      ASSERT_EQ(got.size(), base.size());
      size_t diff = 0;
      for (size_t i = 0; i < got.size(); ++i) diff += std::memcmp(&got[i], &base[i], sizeof(float)) != 0;
      EXPECT_EQ(diff, 0u) << (block ? "block" : "per channel") << " PIE_FP8_GEMV=" << v << " PIE_FP8_GEMV_PRE=" << pre
                          << " PIE_FP8_GEMV_NORM=" << norm << ": " << diff << " of " << got.size()
                          << " logits differ";
    }
    std::filesystem::remove_all(dir);
  }
}

// The residual add + RMSNorm of 2–4 rows inside the weight-only rows GEMV (PIE_FP8_ROWS_NORM=1: at
// every row count; the default fuses it at 2) against the standalone norm kernel before it: same
// dummy weights, same hand-made steps (2, 3 and 4 sequences prefilled, then decoded together, the
// batches replayed from graphs), bit-identical logits, both weight schemes.
TEST(Fp8Engine, RowsNormInTheGemvGivesBitIdenticalLogitsAtBatches2To4) {
  for (bool block : {true, false}) {
    const std::string dir = fp8_small_config("pie_fp8_rows_norm_" + std::to_string(block), 640, block);
    auto run = [&](const char* norm, int rows) {
      setenv("PIE_FP8_ROWS_NORM", norm, 1);
      Fp8Engine e(dummy_fp8_options(dir));
      unsetenv("PIE_FP8_ROWS_NORM");
      std::vector<gpu_test::HandSeq> seqs;
      for (int r = 0; r < rows; ++r) seqs.push_back(gpu_test::HandSeq{{5 + r, 6, 7 + 2 * r, 8, 9 + r}});
      std::vector<gpu_test::HandSeq*> ps;
      for (auto& q : seqs) ps.push_back(&q);
      int32_t next = 0;
      std::vector<float> all;
      for (int k = 0; k < 6; ++k) {
        std::vector<int> n;
        for (auto& q : seqs) n.push_back(k == 0 ? static_cast<int>(q.tokens.size()) : 1);
        auto plan = gpu_test::hand_plan(ps, n, CudaBf16::block_size, next);
        auto got = e.runner().execute_logits(plan, std::vector<SampleSpec>(rows));
        all.insert(all.end(), got.begin(), got.end());
        for (int r = 0; r < rows; ++r) seqs[r].tokens.push_back(13 + 7 * k + r);  // fixed inputs
      }
      return all;
    };
    for (int rows : {2, 3, 4}) {
      const auto base = run("0", rows), got = run("1", rows);
      ASSERT_EQ(got.size(), base.size());
      size_t diff = 0;
      for (size_t i = 0; i < got.size(); ++i) diff += std::memcmp(&got[i], &base[i], sizeof(float)) != 0;
      EXPECT_EQ(diff, 0u) << (block ? "block" : "per channel") << ", " << rows << " rows: " << diff << " of "
                          << got.size() << " logits differ";
    }
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace pie

namespace pie {
namespace {

/// Event timing of the disabled benches below: ms(iters, f) runs f(0..2) to warm up, then
/// f(0..iters-1), and returns the mean milliseconds per call.
class BenchTimer {
 public:
  BenchTimer() {
    PIE_CUDA_CHECK(cudaEventCreate(&e0_));
    PIE_CUDA_CHECK(cudaEventCreate(&e1_));
  }
  ~BenchTimer() {
    cudaEventDestroy(e0_);
    cudaEventDestroy(e1_);
  }
  BenchTimer(const BenchTimer&) = delete;
  BenchTimer& operator=(const BenchTimer&) = delete;
  template <class F>
  double ms(int iters, F&& f) const {
    for (int i = 0; i < 3; ++i) f(i);
    PIE_CUDA_CHECK(cudaEventRecord(e0_));
    for (int i = 0; i < iters; ++i) f(i);
    PIE_CUDA_CHECK(cudaEventRecord(e1_));
    PIE_CUDA_CHECK(cudaEventSynchronize(e1_));
    float t = 0;
    PIE_CUDA_CHECK(cudaEventElapsedTime(&t, e0_, e1_));
    return double(t) / iters;
  }

 private:
  cudaEvent_t e0_, e1_;
};

/// A 1 GiB device-to-device copy's rate, bytes read + written per second in GB/s: the ceiling the
/// benches print their shares of.
double device_copy_gbs(const BenchTimer& timer) {
  const size_t cb = size_t(1) << 30;
  DeviceBuffer<unsigned char> ca(cb), cc(cb);
  PIE_CUDA_CHECK(cudaMemset(ca.data(), 1, cb));
  const double ms = timer.ms(10, [&](int) {
    PIE_CUDA_CHECK(cudaMemcpyAsync(cc.data(), ca.data(), cb, cudaMemcpyDeviceToDevice));
  });
  return 2.0 * cb / (ms * 1e-3) / 1e9;
}

// Not a check (disabled by default; bench/device_fp8.sh runs it): the batch-1 fp8 GEMV alone at
// the Qwen3-8B projection shapes, back to back as in a decode step, its weight bytes per second
// against a device-to-device copy timed in the same process (bytes read + written). Weights
// rotate over copies that together exceed the 50 MB L2.
TEST(Fp8Bench, DISABLED_GemvAloneAgainstTheCopyBandwidth) {
  const BenchTimer timer;
  auto time_ms = [&](int iters, auto&& f) { return timer.ms(iters, f); };
  const double copy_gbs = device_copy_gbs(timer);
  std::printf("[fp8 gemv alone] device copy %.0f GB/s (read + write)\n", copy_gbs);
  struct Shape { const char* name; int64_t N, K; };
  std::mt19937 rng(4);
  for (Shape sh : {Shape{"qkv", 6144, 4096}, Shape{"o", 4096, 4096}, Shape{"gate_up", 24576, 4096},
                   Shape{"down", 4096, 12288}}) {
    const int64_t wb = sh.N * sh.K, copies = std::max<int64_t>(2, (400 << 20) / wb);
    DeviceBuffer<fp8_e4m3> q(size_t(wb * copies));
    PIE_CUDA_CHECK(cudaMemset(q.data(), 0x38, q.size()));  // e4m3 1.0
    const int64_t ld = fp8_block_scale_ld(sh.K), nb = (sh.N + 127) / 128;
    auto ds = test::upload(std::vector<float>(size_t(nb * ld), 1.0f / 64));
    auto dx = test::upload(test::randn<bf16>(size_t(sh.K), rng));
    DeviceBuffer<bf16> dy(size_t(sh.N));
    TensorView<bf16> xv(dx.data(), {1, sh.K}, Device::Cuda), yv(dy.data(), {1, sh.N}, Device::Cuda);
    const double ms = time_ms(60, [&](int i) {
      Fp8Weight w;
      w.q = TensorView<fp8_e4m3>(q.data() + (i % copies) * wb, {sh.N, sh.K}, Device::Cuda);
      w.scale = TensorView<float>(ds.data(), {nb, ld}, Device::Cuda);
      w.scale_ld = ld;
      ops::cuda::fp8_gemv(yv, xv, w, static_cast<const bf16*>(nullptr), nullptr);
    });
    const double gbs = double(wb) / (ms * 1e-3) / 1e9;
    std::printf("[fp8 gemv alone] %-7s N=%lld K=%lld: %.2f us, %.0f GB/s = %.1f%% of copy\n", sh.name,
                (long long)sh.N, (long long)sh.K, ms * 1e3, gbs, 100 * gbs / copy_gbs);
  }
}

// Not a check (disabled by default): the fused fp8 producers (fp8_producers.cuh) at Qwen3-8B's
// shapes — residual add + RMSNorm over 4096 (first = false), the standalone quantization of a
// 4096-wide row (o_proj's input) and SwiGLU over inter 12288 (the codes alone, as before the
// engine's fp8 down projection); 128-column group scales (the (128, 128)-block engine) and
// per-token ones (per channel) — at M = 64, 512, 2048, each path in turn (the first register
// kernels, fp8_producers_v2.cuh's loads-first ones, and for group scales the flat kernel of
// fp8_group_quant.cuh, which the norm, needing its row, does not have), their
// bytes (read + written, scales and the norm's weight included) per second against a
// device-to-device copy timed in the same process. Inputs rotate over copies that together
// exceed the 50 MB L2, so rows come from HBM as after a GEMM that wrote more than L2 holds.
TEST(Fp8Bench, DISABLED_ProducersAgainstTheCopyBandwidth) {
  const BenchTimer timer;
  auto time_ms = [&](int iters, auto&& f) { return timer.ms(iters, f); };
  const double copy_gbs = device_copy_gbs(timer);
  std::printf("[fp8 producers] device copy %.0f GB/s (read + write)\n", copy_gbs);
  struct Path { const char* name; int regs, v2, flat; };
  const Path paths[] = {{"regs (v1)", 1, 0, 0}, {"v2", 1, 4, 0}, {"flat", 1, 4, 1}};
  std::mt19937 rng(5);
  const int64_t H = 4096, I = 12288;
  auto report = [&](const char* op, int64_t M, bool pt, const Path& p, double ms, double bytes) {
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    std::printf("[fp8 producers] %-9s M=%-5lld %-9s %-9s: %8.2f us, %6.1f MB, %5.0f GB/s = %5.1f%% of copy\n", op,
                (long long)M, pt ? "per token" : "per group", p.name, ms * 1e3, bytes / 1e6, gbs, 100 * gbs / copy_gbs);
  };
  for (bool pt : {false, true})
  for (int64_t M : {64, 512, 2048}) {
    const int64_t Mp = ops::cuda::fp8_padded_rows(M);
    {  // residual add + RMSNorm → fp8 (in place on x and the residual)
      const int64_t set = M * H, copies = std::max<int64_t>(2, (int64_t(200) << 20) / (set * 4));
      DeviceBuffer<bf16> x(size_t(set * copies)), r(size_t(set * copies));
      auto hx = test::randn<bf16>(size_t(set), rng);
      for (int64_t c = 0; c < copies; ++c) {
        PIE_CUDA_CHECK(cudaMemcpy(x.data() + c * set, hx.data(), set * sizeof(bf16), cudaMemcpyHostToDevice));
        PIE_CUDA_CHECK(cudaMemcpy(r.data() + c * set, hx.data(), set * sizeof(bf16), cudaMemcpyHostToDevice));
      }
      auto dw = test::upload(test::randn<bf16>(size_t(H), rng, 0.1f, 1.f));
      DeviceBuffer<fp8_e4m3> q(size_t(Mp * H));
      DeviceBuffer<float> s(size_t(Mp * (H / 128)));
      const double bytes = double(M * H) * 2 * 4 + double(Mp * H) + double(Mp * (pt ? 1 : H / 128)) * 4 + double(H) * 2;
      for (const Path& p : paths) {
        if (p.flat) continue;  // the norm needs its whole row: no flat kernel
        const double ms = time_ms(50, [&](int i) {
          const int64_t c = i % copies;
          ops::cuda::add_rms_norm_fp8(TensorView<bf16>(x.data() + c * set, {M, H}, Device::Cuda),
                                      TensorView<bf16>(r.data() + c * set, {M, H}, Device::Cuda),
                                      TensorView<bf16>(dw.data(), {H}, Device::Cuda), 1e-6f, false,
                                      {q.data(), s.data(), pt}, nullptr, p.regs, p.v2);
        });
        report("add_norm", M, pt, p, ms, bytes);
      }
    }
    {  // the standalone quantization (o_proj's input: attention's output, 4096 wide)
      const int64_t set = M * H, copies = std::max<int64_t>(2, (int64_t(200) << 20) / (set * 2));
      DeviceBuffer<bf16> x(size_t(set * copies));
      auto hx = test::randn<bf16>(size_t(set), rng);
      for (int64_t c = 0; c < copies; ++c)
        PIE_CUDA_CHECK(cudaMemcpy(x.data() + c * set, hx.data(), set * sizeof(bf16), cudaMemcpyHostToDevice));
      DeviceBuffer<fp8_e4m3> q(size_t(Mp * H));
      DeviceBuffer<float> s(size_t(Mp * (H / 128)));
      const double bytes = double(M * H) * 2 + double(Mp * H) + double(Mp * (pt ? 1 : H / 128)) * 4;
      for (const Path& p : paths) {
        if (p.v2 == 8) continue;  // one loads-first kernel: 4 vectors a thread
        if (p.flat && pt) continue;  // per-token scales keep the row kernels
        const double ms = time_ms(50, [&](int i) {
          ops::cuda::fp8_quantize(TensorView<bf16>(x.data() + (i % copies) * set, {M, H}, Device::Cuda), pt, q.data(),
                                  s.data(), nullptr, p.regs, p.v2, p.flat);
        });
        report("quantize", M, pt, p, ms, bytes);
      }
    }
    {  // SwiGLU → fp8
      const int64_t set = M * 2 * I, copies = std::max<int64_t>(2, (int64_t(200) << 20) / (set * 2));
      DeviceBuffer<bf16> gu(size_t(set * copies)), out(size_t(M * I));
      auto hg = test::randn<bf16>(size_t(set), rng, 2.f);
      for (int64_t c = 0; c < copies; ++c)
        PIE_CUDA_CHECK(cudaMemcpy(gu.data() + c * set, hg.data(), set * sizeof(bf16), cudaMemcpyHostToDevice));
      DeviceBuffer<fp8_e4m3> q(size_t(Mp * I));
      DeviceBuffer<float> s(size_t(Mp * (I / 128)));
      // The codes alone (store_out false), as the engine's SwiGLU before an fp8 down projection.
      const double bytes = double(M * I) * 2 * 2 + double(Mp * I) + double(Mp * (pt ? 1 : I / 128)) * 4;
      for (const Path& p : paths) {
        if (p.flat && pt) continue;  // per-token scales keep the row kernels
        const double ms = time_ms(50, [&](int i) {
          ops::cuda::silu_and_mul_fp8(TensorView<bf16>(gu.data() + (i % copies) * set, {M, 2 * I}, Device::Cuda),
                                      TensorView<bf16>(out.data(), {M, I}, Device::Cuda),
                                      {q.data(), s.data(), pt}, nullptr, p.regs, p.v2, /*store_out=*/false, p.flat);
        });
        report("silu_mul", M, pt, p, ms, bytes);
      }
    }
  }
}

}  // namespace
}  // namespace pie
