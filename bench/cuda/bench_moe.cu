// The MoE experts' grouped products at Qwen3-30B-A3B's shape (H 2048, I 768, 128 experts,
// top-8), default mma.sync path against the CUTLASS grouped GEMM path (-DPIE_MOE_CUTLASS=ON: 64x128
// and 64x256 pingpong tiles, 128x128 cooperative),
// in one run against the same run's ceilings: D2D copy bandwidth and a square bf16 GEMM
// (cuBLASLt, 8192³). Tokens per call from the command line (default 1024: 8192 grouped rows,
// ~64 per expert, the `pie bench` 1024 × (128, 128) decode step). Routing from random logits
// (every expert touched). Each row: median µs of 20 event-timed runs; GB/s and % of copy for
// the bytes a product must move (all touched experts' weights once, its activation in and out);
// TFLOP/s and % of the GEMM ceiling.
//   pie_bench_cuda_moe [tokens...]
#include <cstdio>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "pie/ops/cuda/gemm.cuh"
#include "pie/ops/cuda/moe.cuh"
#include "pie/ops/cuda/moe_cutlass.cuh"

namespace {
using namespace pie;
using namespace pie::bench;

constexpr int kH = 2048, kI = 768, kE = 128, kK = 8;

void row(const std::string& name, double ms, double bytes, double flops) {
  const double gbs = bytes / (ms * 1e-3) / 1e9, tf = flops / (ms * 1e-3) / 1e12;
  std::printf("%-44s %8.1f us  %7.0f GB/s = %5.1f%% copy  %6.1f TFLOP/s = %5.1f%% gemm\n", name.c_str(), ms * 1e3,
              gbs, 100 * gbs / g_ceil.copy_gbs, tf, 100 * tf / g_ceil.gemm_tflops);
}

template <class T> std::vector<T> download(const DeviceBuffer<T>& d) {
  std::vector<T> h(d.size());
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  PIE_CUDA_CHECK(cudaMemcpy(h.data(), d.data(), h.size() * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

/// The CUTLASS path with TileN-column tiles: each stage alone, then the whole experts block.
template <int TileN, int TileM = 64>
void bench_cutlass(int n, TensorView<bf16> xv, TensorView<bf16> guv, TensorView<bf16> dnv, oc::MoeWorkspace<bf16>& ws,
                   TensorView<bf16> ov, double gu_bytes, double gu_flops, double dn_bytes, double dn_flops,
                   const DeviceBuffer<bf16>& out, const std::vector<bf16>& ref) {
  oc::MoeCutlass<bf16, TileN, TileM> path(ws, n);
  const std::string t = "cutlass " + std::to_string(TileM) + "x" + std::to_string(TileN) + " ";
  const double rows = double(n) * kK;
  row(t + "prepare (gather x, group arrays)", median_ms([&] { path.prepare(xv, guv, dnv, ws, nullptr); }),
      2 * rows * kH * 2, 0);
  row(t + "gate_up GEMM", median_ms([&] { path.product(0, nullptr); }), gu_bytes + rows * kI * 2, gu_flops);
  row(t + "SwiGLU", median_ms([&] { path.swiglu(n, ws, nullptr); }), rows * 3 * kI * 2, 0);
  row(t + "gate_up (prepare, GEMM, SwiGLU)", median_ms([&] { path.gate_up(xv, guv, dnv, ws, nullptr); }), gu_bytes,
      gu_flops);
  row(t + "down", median_ms([&] { path.down(n, nullptr); }), dn_bytes, dn_flops);
  row(t + "experts (gate_up, down, un-permute)",
      median_ms([&] { oc::moe_experts_cutlass(xv, guv, dnv, ws, path, ov, nullptr); }), gu_bytes + dn_bytes,
      gu_flops + dn_flops);
  // Its output against the mma path's on this routing: the same up to bf16 rounding.
  oc::moe_experts_cutlass(xv, guv, dnv, ws, path, ov, nullptr);
  const std::vector<bf16> got = download(out);
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = double(to_float(got[i])) - to_float(ref[i]);
    num += d * d;
    den += double(to_float(ref[i])) * to_float(ref[i]);
  }
  std::printf("%s vs mma: rel l2 %.2e\n", t.c_str(), std::sqrt(num / std::max(den, 1e-30)));
}

void bench_tokens(int n) {
  const int rows = n * kK;
  DeviceBuffer<bf16> x(size_t(n) * kH), gu(size_t(kE) * 2 * kI * kH), dn(size_t(kE) * kH * kI), out(size_t(n) * kH);
  fill(x.data(), x.size(), 1);
  fill(gu.data(), gu.size(), 2, 1.f / 45.f);
  fill(dn.data(), dn.size(), 3, 1.f / 28.f);
  oc::MoeWorkspace<bf16> ws(n, kE, kK, kH, kI);
  fill(ws.logits(), size_t(n) * kE, 4, 2.f);
  oc::moe_route(n, true, ws, nullptr);
  std::vector<int32_t> off(kE + 1);
  PIE_CUDA_CHECK(cudaMemcpy(off.data(), ws.routing().offsets, off.size() * 4, cudaMemcpyDeviceToHost));
  int touched = 0;
  for (int e = 0; e < kE; ++e) touched += off[e + 1] > off[e];
  std::printf("\nn %d: %d grouped rows, %d of %d experts touched, %.1f rows per touched expert\n", n, rows, touched,
              kE, double(rows) / touched);
  const auto xv = x.view({n, kH}), guv = gu.view({kE, 2 * kI, kH}), dnv = dn.view({kE, kH, kI}),
             ov = out.view({n, kH});
  // Bytes: touched experts' weights once, plus the activation read and written.
  const double gu_bytes = double(touched) * 2 * kI * kH * 2 + double(rows) * kH * 2 + double(rows) * kI * 2;
  const double dn_bytes = double(touched) * kH * kI * 2 + double(rows) * kI * 2 + double(rows) * kH * 2;
  const double gu_flops = 2.0 * rows * 2 * kI * kH, dn_flops = 2.0 * rows * kH * kI;
  std::printf("floors: gate_up %.1f us (bytes) %.1f us (flops); down %.1f us (bytes) %.1f us (flops)\n",
              gu_bytes / g_ceil.copy_gbs / 1e3, gu_flops / g_ceil.gemm_tflops / 1e6, dn_bytes / g_ceil.copy_gbs / 1e3,
              dn_flops / g_ceil.gemm_tflops / 1e6);

  const oc::MoeExperts<bf16> mma(xv, guv, dnv, ws, ov, false);
  row("mma gate_up (+SwiGLU)", median_ms([&] { mma.gate_up(nullptr); }), gu_bytes, gu_flops);
  row("mma down", median_ms([&] { mma.down(nullptr); }), dn_bytes, dn_flops);
  row("mma experts (gate_up, down, un-permute)",
      median_ms([&] { oc::moe_experts(xv, guv, dnv, ws, ov, false, nullptr); }), gu_bytes + dn_bytes,
      gu_flops + dn_flops);

  oc::moe_experts(xv, guv, dnv, ws, ov, false, nullptr);  // the mma path's output, for the comparison
  const std::vector<bf16> ref = download(out);
  bench_cutlass<128>(n, xv, guv, dnv, ws, ov, gu_bytes, gu_flops, dn_bytes, dn_flops, out, ref);
  bench_cutlass<256>(n, xv, guv, dnv, ws, ov, gu_bytes, gu_flops, dn_bytes, dn_flops, out, ref);
  bench_cutlass<128, 128>(n, xv, guv, dnv, ws, ov, gu_bytes, gu_flops, dn_bytes, dn_flops, out, ref);

}

}  // namespace

int main(int argc, char** argv) {
  print_device();
  measure_copy_ceiling();
  {
    const int S = 8192;
    DeviceBuffer<bf16> a(size_t(S) * S), w(size_t(S) * S), y(size_t(S) * S);
    fill(a.data(), a.size(), 2);
    fill(w.data(), w.size(), 3);
    oc::Gemm gemm;
    const double ms = median_ms([&] { gemm(y.view({S, S}), a.view({S, S}), w.view({S, S})); });
    g_ceil.gemm_tflops = 2.0 * S * S * S / (ms * 1e-3) / 1e12;
  }
  std::printf("ceilings: D2D copy %.0f GB/s (read+write), bf16 GEMM %.0f TFLOP/s\n", g_ceil.copy_gbs,
              g_ceil.gemm_tflops);
  std::vector<int> ns;
  for (int i = 1; i < argc; ++i) ns.push_back(std::atoi(argv[i]));
  if (ns.empty()) ns = {1024};
  for (int n : ns) bench_tokens(n);
  return 0;
}
