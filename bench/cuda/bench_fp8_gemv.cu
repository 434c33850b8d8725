// The batch-1 fp8 GEMV's kernel variants (ops/cuda/fp8_gemv.cuh) alone, at the four Qwen3-8B
// projection shapes, against the device-to-device copy bandwidth measured at the start of the
// same run, with the bf16 GEMV (gemv.cuh, the same-call peer) at the same shapes. Each timing is
// 16 back-to-back launches (as in a decode step: programmatic dependent launch lets one launch's
// weight stream start under the previous one's tail) rotating over weight copies that together
// exceed the L2 several times, so no launch finds its weights cached. "chain" rows run the four
// projections of 8 layers in the step's order (qkv, o, gate_up, down). Rows marked "pre" read x
// already quantized (by its producer in the engine); "norm" rows add the residual and RMSNorm x
// in every CTA first (qkv and gate_up, whose inputs are normed); "w8a16" rows do not quantize x
// at all (the weight-only GEMV; "w8a16 norm": with the norm first, the engine's batch-1 path); the
// others quantize x in every CTA. The norm rows' bytes are the weights' only. The bf16 rows: the GEMV, and its fused norm
// with 4 or 16 warps per CTA (PIE_GEMV_NORM_WARPS). "M=2/4" rows: small decode batches, the
// weight-only rows GEMV against Fp8Gemm's cuBLASLt path on the same block-scaled weights.
#include "pie/ops/cuda/norm.cuh"
#include "bench_common.cuh"
#include "pie/core/fp8_weight.hpp"
#include "pie/ops/cuda/fp8_gemm.cuh"
#include "pie/ops/cuda/fp8_gemv.cuh"
#include "pie/ops/cuda/fp8_gemv_w8a16_rows.cuh"
#include "pie/ops/cuda/fp8_quant.cuh"
#include "pie/ops/cuda/gemv.cuh"

namespace {
using namespace pie;
using namespace pie::bench;

struct Shape { const char* name; int64_t N, K; };
constexpr Shape kShapes[4] = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 24576, 4096}, {"down", 4096, 12288}};
constexpr int kLaunches = 16;
constexpr int kMaxK = 12288, kMaxN = 24576;

/// Copies of one fp8 weight shape (≥ 400 MB together) with their block scales.
struct Fp8Set {
  DeviceBuffer<fp8_e4m3> q;
  DeviceBuffer<float> s;
  std::vector<Fp8Weight> w;
  Fp8Set(int64_t N, int64_t K, int64_t copies) : q(size_t(N * K * copies)) {
    fill(q.data(), q.size(), 7);
    const int64_t ld = fp8_block_scale_ld(K), nb = (N + 127) / 128;
    s = DeviceBuffer<float>(size_t(nb * ld));
    std::vector<float> h(s.size(), 1.0f / 64);
    PIE_CUDA_CHECK(cudaMemcpy(s.data(), h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    for (int64_t c = 0; c < copies; ++c) {
      Fp8Weight x;
      x.q = TensorView<fp8_e4m3>(q.data() + c * N * K, {N, K}, Device::Cuda);
      x.scale = TensorView<float>(s.data(), {nb, ld}, Device::Cuda);
      x.scale_ld = ld;
      w.push_back(x);
    }
  }
};
int64_t copies_for(int64_t bytes) { return std::max<int64_t>(kLaunches, (int64_t(400) << 20) / bytes + 1); }

/// x (bf16, random), its fp8 codes and scales (fp8_quantize's layouts, 4 padded rows), and y.
struct Io {
  DeviceBuffer<bf16> x{size_t(kMaxK)}, y{size_t(kMaxN)}, r{size_t(kMaxK)}, r2{size_t(kMaxK)}, nw{size_t(kMaxK)};
  DeviceBuffer<fp8_e4m3> xq{size_t(4 * kMaxK)};
  DeviceBuffer<float> xs{size_t(4 * (kMaxK / 128 + 1))};
  Io() {
    fill(x.data(), x.size(), 3);
    fill(r.data(), r.size(), 4);
    fill(nw.data(), nw.size(), 5);
  }
  TensorView<bf16> xv(int64_t K) { return TensorView<bf16>(x.data(), {1, K}, Device::Cuda); }
  TensorView<bf16> yv(int64_t N) { return TensorView<bf16>(y.data(), {1, N}, Device::Cuda); }
};
Io& io() { static Io v; return v; }

/// One fp8 GEMV of variant v with x from mode (0: quantized in the GEMV, 1: prequantized, 2: norm,
/// 3: not quantized — the weight-only GEMV, fp8_gemv_w8a16; 4: the norm and the weight-only GEMV,
/// the engine's batch-1 path for qkv and gate_up).
void launch(int v, int mode, const Shape& sh, const Fp8Weight& w) {
  auto& b = io();
  const bf16* nb = nullptr;
  if (mode == 1)
    oc::fp8_gemv_prequantized(b.yv(sh.N), b.xq.data(), b.xs.data(), 4, w, nb, nullptr, v);
  else if (mode == 3)
    oc::fp8_gemv_w8a16(b.yv(sh.N), b.xv(sh.K), w, nb, nullptr, v);
  else if (mode == 2 || mode == 4)
    oc::fp8_add_rms_norm_gemv(b.yv(sh.N), b.xv(sh.K), b.r.data(), b.r2.data(), b.nw.data(), 1e-6f, false, w, nb,
                              nullptr, v, mode == 4);
  else
    oc::fp8_gemv(b.yv(sh.N), b.xv(sh.K), w, nb, nullptr, v);
}
const char* mode_name(int mode) {
  return mode == 1 ? " pre" : mode == 2 ? " norm" : mode == 3 ? " w8a16" : mode == 4 ? " w8a16 norm" : "";
}

/// args: variant (-1: the bf16 GEMV), x's mode (launch()), shape.
void BM_Fp8Gemv(benchmark::State& st) {
  const int v = static_cast<int>(st.range(0)), pre = static_cast<int>(st.range(1));
  const Shape sh = kShapes[st.range(2)];
  auto& b = io();
  // v < 0: the bf16 GEMV; with mode 2 its fused norm, 4 warps per CTA (v = -1) or 16 (v = -2).
  const int warps = v == -1 ? 4 : 16;
  std::string name = std::string(sh.name) + " " +
                     (v < 0 ? (pre == 2 ? "bf16 gemv nw" + std::to_string(warps) : std::string("bf16 gemv"))
                            : std::string(oc::fp8_gemv_variant_name(v))) +
                     mode_name(pre);
  if (v < 0) {
    const int64_t copies = copies_for(sh.N * sh.K * 2);
    DeviceBuffer<bf16> w(size_t(sh.N * sh.K * copies));
    fill(w.data(), w.size(), 9, 0.02f);
    int i = 0;
    report(st, name, double(kLaunches) * sh.N * sh.K * 2, 0, [&] {
      for (int l = 0; l < kLaunches; ++l, ++i) {
        TensorView<bf16> wv(w.data() + (i % copies) * sh.N * sh.K, {sh.N, sh.K}, Device::Cuda);
        if (pre == 2)
          oc::add_rms_norm_gemv(b.yv(sh.N), b.xv(sh.K), b.r.data(), b.r2.data(), b.nw.data(), 1e-6f, false, wv,
                                static_cast<const bf16*>(nullptr), nullptr, warps);
        else
          oc::gemv(b.yv(sh.N), b.xv(sh.K), wv);
      }
    });
    return;
  }
  Fp8Set set(sh.N, sh.K, copies_for(sh.N * sh.K));
  oc::fp8_quantize(b.xv(sh.K), false, b.xq.data(), b.xs.data(), nullptr);
  int i = 0;
  const auto copies = static_cast<int64_t>(set.w.size());
  report(st, name, double(kLaunches) * sh.N * sh.K, 0, [&] {
    for (int l = 0; l < kLaunches; ++l, ++i) launch(v, pre, sh, set.w[i % copies]);
  });
}

/// The four projections of 8 layers in the step's order; args: variant, mode of qkv's and
/// gate_up's x (launch(); down's x is prequantized in modes 1 and 2, o's never is).
void BM_Fp8GemvChain(benchmark::State& st) {
  const int v = static_cast<int>(st.range(0)), pre = static_cast<int>(st.range(1));
  auto& b = io();
  constexpr int kLayers = 8;
  std::vector<Fp8Set> sets;
  double bytes = 0;
  for (const Shape& sh : kShapes) {
    sets.emplace_back(sh.N, sh.K, kLayers);
    bytes += double(kLayers) * sh.N * sh.K;
  }
  oc::fp8_quantize(b.xv(kMaxK), false, b.xq.data(), b.xs.data(), nullptr);
  std::string name = std::string("chain 8 layers ") + oc::fp8_gemv_variant_name(v) + mode_name(pre);
  report(st, name, bytes, 0, [&] {
    for (int l = 0; l < kLayers; ++l)
      for (int s = 0; s < 4; ++s) {
        const Fp8Weight& w = sets[s].w[l];
        const Shape& sh = kShapes[s];
        // o_proj's input (attention) has no producer that quantizes: it always quantizes in the GEMV
        // (weight-only: nothing is quantized anywhere; mode 4 normalises qkv's and gate_up's x).
        launch(v, pre >= 3 ? (pre == 4 && (s == 0 || s == 2) ? 4 : 3) : s == 1 ? 0 : s == 3 ? std::min(pre, 1) : pre, sh,
               w);
      }
  });
}

void all_variants(benchmark::internal::Benchmark* b) {
  for (int s = 0; s < 4; ++s) {
    b->Args({-1, 0, s});
    if (kShapes[s].K == 4096 && s != 1) b->Args({-1, 2, s}), b->Args({-2, 2, s});
    for (int v = 0; v < oc::kFp8GemvVariants; ++v) {
      b->Args({v, 0, s});
      if (v > 0) b->Args({v, 1, s}), b->Args({v, 3, s});
      if (v > 0 && kShapes[s].K == 4096 && s != 1) b->Args({v, 2, s}), b->Args({v, 4, s});
    }
  }
}
BENCHMARK(BM_Fp8Gemv)->Apply(all_variants)->UseManualTime()->Iterations(3)->Unit(benchmark::kMicrosecond);

void chain_variants(benchmark::internal::Benchmark* b) {
  for (int v = 0; v < oc::kFp8GemvVariants; ++v) {
    b->Args({v, 0});
    if (v > 0) b->Args({v, 1});
    if (v > 0) b->Args({v, 2}), b->Args({v, 3}), b->Args({v, 4});
  }
}
BENCHMARK(BM_Fp8GemvChain)->Apply(chain_variants)->UseManualTime()->Iterations(3)->Unit(benchmark::kMicrosecond);

/// 2–4 rows of x (a small decode batch): the weight-only rows GEMV (fp8_gemv_w8a16_rows.cuh)
/// against Fp8Gemm's cuBLASLt path (x quantized per token and group, then the block-scaled fp8
/// matmul) on the same 128 × 128-block weights; args: rows, shape, path (0 cuBLASLt, 1 the GEMV, 2
/// the GEMV on the flat walk, PIE_FP8_ROWS_FLAT).
/// 16 launches rotating over weight copies, as above; bytes are the weights'.
void BM_Fp8Rows(benchmark::State& st) {
  const int M = static_cast<int>(st.range(0)), path = static_cast<int>(st.range(2));
  const Shape sh = kShapes[st.range(1)];
  static oc::Fp8Gemm gemm(8, kMaxK, kMaxN);
  static DeviceBuffer<bf16> xr(size_t(4 * kMaxK)), yr(size_t(4 * kMaxN));
  static const bool filled = (fill(xr.data(), xr.size(), 3), true);
  (void)filled;
  Fp8Set set(sh.N, sh.K, copies_for(sh.N * sh.K));
  const auto copies = static_cast<int64_t>(set.w.size());
  TensorView<bf16> xv(xr.data(), {M, sh.K}, Device::Cuda), yv(yr.data(), {M, sh.N}, Device::Cuda);
  gemm.set_gemv(false);  // cuBLASLt for every M (path 0)
  const std::string name = std::string(sh.name) + " M=" + std::to_string(M) +
                           (path == 2 ? " w8a16 rows flat" : path ? " w8a16 rows" : " cublaslt");
  oc::detail::fp8_rows_flat_flag() = path == 2 ? 1 : 0;  // always / never (fp8_rows_flat's modes)
  int i = 0;
  report(st, name, double(kLaunches) * sh.N * sh.K, 0, [&] {
    for (int l = 0; l < kLaunches; ++l, ++i) {
      const Fp8Weight& w = set.w[i % copies];
      if (path)
        oc::fp8_gemv_w8a16_rows(yv, xv, w, static_cast<const bf16*>(nullptr), nullptr);
      else
        gemm(yv, xv, w, static_cast<const bf16*>(nullptr), nullptr);
    }
  });
}
void rows_args(benchmark::internal::Benchmark* b) {
  for (int M : {2, 4})
    for (int s = 0; s < 4; ++s)
      for (int path : {0, 1, 2}) b->Args({M, s, path});
}
BENCHMARK(BM_Fp8Rows)->Apply(rows_args)->UseManualTime()->Iterations(3)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  print_device_and_copy_ceiling();
  run_benchmarks_and_print_rows(argc, argv);
  return 0;
}
