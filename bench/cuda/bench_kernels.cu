// Kernel benchmarks of the CUDA backend. Each prints bytes or FLOPs, the median time, the
// achieved GB/s or TFLOP/s and the fraction of the two ceilings measured at the start of this
// same run: a 1 GiB device-to-device copy (bytes read + written) and an 8192³ bf16 cuBLASLt GEMM.
// Inputs are random (never zeros); buffers exceed the 50 MB L2 unless noted.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "pie/cuda.cuh"

namespace {
using namespace pie;
using namespace pie::bench;

void measure_ceilings() {
  measure_copy_ceiling();
  const int S = 8192;
  DeviceBuffer<bf16> a(size_t(S) * S), w(size_t(S) * S), y(size_t(S) * S);
  fill(a.data(), a.size(), 2);
  fill(w.data(), w.size(), 3);
  oc::Gemm gemm;
  double ms = median_ms([&] { gemm(y.view({S, S}), a.view({S, S}), w.view({S, S})); });
  g_ceil.gemm_tflops = 2.0 * S * S * S / (ms * 1e-3) / 1e12;
  std::printf("ceilings: D2D copy %.0f GB/s (read+write), bf16 GEMM 8192^3 %.0f TFLOP/s\n", g_ceil.copy_gbs,
              g_ceil.gemm_tflops);
}

// Decode attention: bench_decode.cu.

template <int Warps>
void BM_PrefillAttention(benchmark::State& st) {
  const int n = st.range(0), hd = st.range(1), nq = 32, nkv = 8, bs = 16;
  BenchCache<bf16> c(1, n, nkv, hd, bs);
  DeviceBuffer<bf16> q(size_t(n) * nq * hd), o(q.size());
  fill(q.data(), q.size(), 6);
  std::vector<int32_t> cu = {0, n};
  DeviceBuffer<int32_t> dcu(2);
  PIE_CUDA_CHECK(cudaMemcpy(dcu.data(), cu.data(), 8, cudaMemcpyHostToDevice));
  double flops = 4.0 * nq * hd * (double(n) * (n + 1) / 2);  // causal: QKᵀ and PV over the lower triangle
  report(st, "prefill causal " + std::to_string(n) + " tok hd" + std::to_string(hd) + (Warps ? " warps4" : ""), 0,
         flops, [&] {
           oc::prefill_attention<Warps>(q.view({n, nq, hd}), c.view, dcu.data(), n, o.view({n, nq, hd}),
                                        1.f / std::sqrt(float(hd)));
         });
}
BENCHMARK(BM_PrefillAttention<0>)->Args({8192, 128})->Args({2048, 128})->Args({8192, 64})->UseManualTime()->Iterations(1);
// A/B of the CTA shape: 4 warps (BM = 64, two CTAs per SM) against the default 8 (BM = 128).
BENCHMARK(BM_PrefillAttention<4>)->Args({8192, 128})->UseManualTime()->Iterations(1);

void BM_AddRmsNorm(benchmark::State& st) {
  const int n = st.range(0), dim = 4096;
  DeviceBuffer<bf16> x(size_t(n) * dim), r(x.size()), w(dim);
  fill(x.data(), x.size(), 7); fill(r.data(), r.size(), 8); fill(w.data(), w.size(), 9);
  report(st, "add_rms_norm " + std::to_string(n) + "x4096", 4.0 * x.size() * 2, 0,
         [&] { oc::add_rms_norm(x.view({n, dim}), r.view({n, dim}), w.view({dim}), 1e-6f, false); });
}
BENCHMARK(BM_AddRmsNorm)->Arg(16384)->UseManualTime()->Iterations(1);

void BM_QkNormRope(benchmark::State& st) {
  const int n = st.range(0), nq = 32, nkv = 8, hd = 128, width = (nq + 2 * nkv) * hd;
  DeviceBuffer<bf16> qkv(size_t(n) * width), qn(hd), kn(hd);
  DeviceBuffer<int32_t> pos(n);
  fill(qkv.data(), qkv.size(), 10); fill(qn.data(), hd, 11); fill(kn.data(), hd, 12);
  std::vector<int32_t> hp(n);
  for (int i = 0; i < n; ++i) hp[i] = i;
  PIE_CUDA_CHECK(cudaMemcpy(pos.data(), hp.data(), n * 4, cudaMemcpyHostToDevice));
  std::vector<float> inv(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv[i] = 1.f / float(std::pow(1e6, double(2 * i) / hd));
  DeviceBuffer<float> dinv(hd / 2);
  PIE_CUDA_CHECK(cudaMemcpy(dinv.data(), inv.data(), inv.size() * 4, cudaMemcpyHostToDevice));
  oc::RopeParams rp;
  rp.inv_freq = dinv.data();  // the runner passes ops::cpu::rope_inv_freq's table
  double bytes = 2.0 * n * (nq + nkv) * hd * 2;
  report(st, "qk_norm_rope " + std::to_string(n) + " tok 32q/8kv hd128", bytes, 0, [&] {
    oc::qk_norm_rope(qkv.view({n, width}), pos.data(), nq, nkv, hd, qn.data(), kn.data(), 1e-6f, rp);
  });
}
BENCHMARK(BM_QkNormRope)->Arg(16384)->UseManualTime()->Iterations(1);

void BM_SiluAndMul(benchmark::State& st) {
  const int n = st.range(0), inter = 12288;
  DeviceBuffer<bf16> gu(size_t(n) * 2 * inter), out(size_t(n) * inter);
  fill(gu.data(), gu.size(), 13);
  report(st, "silu_and_mul " + std::to_string(n) + "x12288", 3.0 * out.size() * 2, 0,
         [&] { oc::silu_and_mul(gu.view({n, 2 * inter}), out.view({n, inter})); });
}
BENCHMARK(BM_SiluAndMul)->Arg(8192)->UseManualTime()->Iterations(1);

void BM_KvWrite(benchmark::State& st) {
  const int n = st.range(0), nkv = 8, hd = 128, bs = 16, width = 48 * hd;
  BenchCache<bf16> c(1, n, nkv, hd, bs);
  DeviceBuffer<bf16> qkv(size_t(n) * width);
  fill(qkv.data(), qkv.size(), 14);
  std::vector<int64_t> slots(n);
  std::iota(slots.begin(), slots.end(), 0);
  DeviceBuffer<int64_t> ds(n);
  PIE_CUDA_CHECK(cudaMemcpy(ds.data(), slots.data(), n * 8, cudaMemcpyHostToDevice));
  TensorView<bf16> k(qkv.data() + 32 * hd, {n, nkv * hd}, Device::Cuda), v(qkv.data() + 40 * hd, {n, nkv * hd}, Device::Cuda);
  k.stride[0] = v.stride[0] = width;
  report(st, "kv_write " + std::to_string(n) + " tok 8kv hd128", 4.0 * n * nkv * hd * 2, 0,
         [&] { oc::kv_write(c.view, k, v, ds.data()); });
}
BENCHMARK(BM_KvWrite)->Arg(65536)->UseManualTime()->Iterations(1);

void BM_Embedding(benchmark::State& st) {
  const int n = st.range(0), vocab = 151936, hidden = 4096;
  DeviceBuffer<bf16> table(size_t(vocab) * hidden), out(size_t(n) * hidden);
  fill(table.data(), table.size(), 15);
  std::vector<int32_t> ids(n);
  std::mt19937 rng(1);
  for (auto& i : ids) i = int(rng() % vocab);
  DeviceBuffer<int32_t> di(n);
  PIE_CUDA_CHECK(cudaMemcpy(di.data(), ids.data(), n * 4, cudaMemcpyHostToDevice));
  report(st, "embedding " + std::to_string(n) + "x4096", 2.0 * out.size() * 2, 0,
         [&] { oc::embedding(table.view({vocab, hidden}), di.data(), out.view({n, hidden})); });
}
BENCHMARK(BM_Embedding)->Arg(16384)->UseManualTime()->Iterations(1);

void BM_Gemm(benchmark::State& st) {
  const int M = st.range(0), N = st.range(1), K = st.range(2);
  DeviceBuffer<bf16> x(size_t(M) * K), w(size_t(N) * K), y(size_t(M) * N);
  fill(x.data(), x.size(), 16); fill(w.data(), w.size(), 17);
  oc::Gemm g;
  report(st, "gemm bf16 " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K), 0, 2.0 * M * N * K,
         [&] { g(y.view({M, N}), x.view({M, K}), w.view({N, K})); });
}
BENCHMARK(BM_Gemm)->Args({8192, 8192, 8192})->Args({4096, 6144, 4096})->Args({64, 24576, 4096})
    ->UseManualTime()->Iterations(1);

/// Decode-step linear layers of the Qwen3-8B shape (qkv, o, gate_up, down, lm_head) at M rows:
/// pie's GEMV (arg 3 = 1) against cuBLASLt (arg 3 = 0). Bytes: the weights once plus x and y;
/// rotating over 4 weight copies (≥ 200 MB) so no run finds its weights in the 50 MB L2.
void BM_SkinnyLinear(benchmark::State& st) {
  const int M = st.range(0), N = st.range(1), K = st.range(2);
  const bool gemv = st.range(3) != 0;
  const int copies = std::max<int64_t>(1, (int64_t(200) << 20) / (int64_t(N) * K * 2) + 1);
  DeviceBuffer<bf16> x(size_t(M) * K), w(size_t(N) * K * copies);
  DeviceBuffer<float> y(size_t(M) * N);  // float out as lm_head; 16-bit out is checked in the tests
  fill(x.data(), x.size(), 19); fill(w.data(), w.size(), 20, 0.05f);
  oc::Gemm g;
  g.set_gemv_max_rows(gemv ? oc::kGemvMaxRows : 0);
  int next = 0;
  const double bytes = 2.0 * N * K + 2.0 * M * K + 4.0 * M * N;
  report(st, std::string(gemv ? "gemv " : "cublaslt ") + std::to_string(M) + "x" + std::to_string(N) + "x" +
             std::to_string(K), bytes, 0, [&] {
           TensorView<bf16> wv(w.data() + size_t(next) * N * K, {N, K}, Device::Cuda);
           next = (next + 1) % copies;
           g(y.view({M, N}), x.view({M, K}), wv);
         });
}
BENCHMARK(BM_SkinnyLinear)
    ->ArgsProduct({{1, 2, 4, 8}, {6144}, {4096}, {1, 0}})
    ->ArgsProduct({{1, 8}, {4096}, {4096}, {1, 0}})
    ->ArgsProduct({{1, 4, 8}, {24576}, {4096}, {1, 0}})
    ->ArgsProduct({{1, 8}, {4096}, {12288}, {1, 0}})
    ->ArgsProduct({{1, 8}, {151936}, {4096}, {1, 0}})
    ->UseManualTime()->Iterations(1);

/// Batch-invariant GEMMs (Gemm::set_batch_invariant): one cuBLASLt algorithm per shape, picked
/// at a reference M (arg 0; 0 = the default per-M heuristic, GEMV off), run at M rows (arg 1).
/// Which reference M serves decode (small M) and prefill (large M) both. Weights rotate over
/// copies (≥ 200 MB) as in BM_SkinnyLinear.
void BM_InvariantGemm(benchmark::State& st) {
  const int ref = st.range(0), M = st.range(1), N = st.range(2), K = st.range(3);
  const int copies = std::max<int64_t>(1, (int64_t(200) << 20) / (int64_t(N) * K * 2) + 1);
  DeviceBuffer<bf16> x(size_t(M) * K), w(size_t(N) * K * copies), y(size_t(M) * N);
  fill(x.data(), x.size(), 21); fill(w.data(), w.size(), 22, 0.05f);
  oc::Gemm g;
  g.set_gemv_max_rows(0);
  if (ref > 0) g.set_batch_invariant(true, ref);
  int next = 0;
  const double bytes = 2.0 * N * K + 2.0 * M * K + 2.0 * M * N;
  try {
    report(st, "gemm ref " + std::to_string(ref) + " M " + std::to_string(M) + " " + std::to_string(N) + "x" +
               std::to_string(K), M <= 64 ? bytes : 0, M <= 64 ? 0 : 2.0 * M * N * K, [&] {
             TensorView<bf16> wv(w.data() + size_t(next) * N * K, {N, K}, Device::Cuda);
             next = (next + 1) % copies;
             g(y.view({M, N}), x.view({M, K}), wv);
           });
  } catch (const std::exception& e) {  // no algorithm without split-K at that reference M
    st.SkipWithError(e.what());
  }
}
BENCHMARK(BM_InvariantGemm)
    ->ArgsProduct({{0, 1, 16, 128, 1024}, {1, 16, 256, 4096}, {6144}, {4096}})
    ->ArgsProduct({{0, 1, 16, 128, 1024}, {1, 16, 256, 4096}, {4096}, {12288}})
    ->ArgsProduct({{0, 1, 16, 128, 1024}, {1, 16, 256, 4096}, {24576}, {4096}})
    ->UseManualTime()->Iterations(1);

void BM_Sample(benchmark::State& st) {
  const int rows = st.range(0), vocab = 151936;
  DeviceBuffer<float> logits(size_t(rows) * vocab);
  fill(logits.data(), logits.size(), 18, 8.f);
  std::vector<oc::SamplingRow> hr(rows);
  for (int r = 0; r < rows; ++r) { hr[r].top_k = 50; hr[r].top_p = 0.9f; hr[r].temperature = 0.8f; hr[r].seed = r; hr[r].num_logprobs = 5; }
  DeviceBuffer<oc::SamplingRow> dr(rows);
  PIE_CUDA_CHECK(cudaMemcpy(dr.data(), hr.data(), rows * sizeof(oc::SamplingRow), cudaMemcpyHostToDevice));
  DeviceBuffer<int32_t> tok(rows), tid(rows * 5);
  DeviceBuffer<float> lp(rows), tlp(rows * 5);
  oc::SamplingInputs in{dr.data(), nullptr, nullptr, nullptr, nullptr};
  oc::SamplingOutputs out{tok.data(), lp.data(), tid.data(), tlp.data(), 5};
  // No penalties or bias: the logits are left unchanged, so every run sees the same input.
  report(st, "sample " + std::to_string(rows) + "x151936 topk50 topp.9 lp5", 0, 0,
         [&] { oc::sample(logits.data(), rows, vocab, in, out); });
}
BENCHMARK(BM_Sample)->Arg(64)->Arg(256)->UseManualTime()->Iterations(1);

}  // namespace

int main(int argc, char** argv) {
  print_device();
  measure_ceilings();
  run_benchmarks_and_print_rows(argc, argv);
  return 0;
}
