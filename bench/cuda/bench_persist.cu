// The persistent batch-1 decode-layer prototype (persist_layer.cuh; issue 15, docs/gpu_engine.md
// "Next: a persistent decode-layer kernel for batch 1") against the kernel chain the engine runs
// today, in one process, bf16, Qwen3-8B shapes (hidden 4096 = 32 q heads × 128, intermediate 12288):
//   chain:      gemv(o_proj) → add_rms_norm_gemv(gate_up) [→ silu_and_mul], launched with PDL
//               (griddepcontrol), as CudaForward launches them;
//   persistent: one kernel on the resident CTAs, a grid-wide arrival counter between the phases,
//               phase B's first weight chunks issued before the wait ("early": one step of 4 KB
//               a warp; "early x2": two) or after it ("barrier only"), and with SwiGLU in the
//               gate_up epilogue.
// Each variant is captured in a CUDA graph of 8 layer pairs, each pair on its own copy of the
// weights (8 × 235 MB: 31× an H200's 60 MB L2, so every replay streams them from DRAM), replayed
// many times; the rows print µs per layer pair, bytes moved, GB/s and % of the device-to-device
// copy bandwidth measured at the start of the same run, and chain − persistent in µs.
//
// Then the decoder layer without attention (persist_decoder.cuh): kernel P (o_proj | add + norm +
// gate_up + SwiGLU | down | add + norm + qkv | q/k norm + RoPE + K/V into the paged cache, 4 grid
// barriers) against the engine's chain for the same ops (gemv, add_rms_norm_gemv, silu_and_mul,
// gemv, add_rms_norm_gemv, qk_norm_rope, kv_write; and with its fusion switches swiglu_gemv and
// qk_norm_rope_kv: 5 kernels), attention left out of both sides, 8 layers on their own weights
// (8 × 386 MB): µs per layer, MB, GB/s, % of copy, chain − persistent per layer and per boundary.
//
// Correctness first (exit status 1 on any failure): every persistent variant's outputs (prototype:
// o, the new residual, gate_up, SwiGLU; layer: also down, the second residual, qkv with the roped
// q and k, the K/V cache slot) byte for byte against the chain's, on the resident grid and a
// small grid (many units per warp), launched twice (the counter's reuse), at the Qwen3-8B shapes
// and small ones with K tails; the chains against CPU references with the kernels' rounding
// points. A variant that differs is not timed; the chains and the others still are.
//
// Usage: pie_bench_cuda_persist [--check-only] [--small-only] [--grid N] [--layers L] [--reps R]
// No Google Benchmark: the device script builds it with nvcc alone where the machine lacks it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "persist_decoder_check.cuh"

namespace {
using namespace pie;
using namespace pie::bench::persist::check;

// ---- the copy ceiling --------------------------------------------------------------------------------

/// Median over `samples` of the time of `batch` calls of f, in ms per call (event-timed).
template <class F>
double median_ms(F&& f, int batch, cudaStream_t st = nullptr, int samples = 15, int warm = 3) {
  cudaEvent_t a, b;
  PIE_CUDA_CHECK(cudaEventCreate(&a));
  PIE_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < warm; ++i) f();
  std::vector<float> t(samples);
  for (auto& v : t) {
    PIE_CUDA_CHECK(cudaEventRecord(a, st));
    for (int i = 0; i < batch; ++i) f();
    PIE_CUDA_CHECK(cudaEventRecord(b, st));
    PIE_CUDA_CHECK(cudaEventSynchronize(b));
    PIE_CUDA_CHECK(cudaEventElapsedTime(&v, a, b));
  }
  PIE_CUDA_CHECK(cudaEventDestroy(a));
  PIE_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[samples / 2] / batch;
}

/// The copy ceiling: a 1 GiB device-to-device copy, bytes read + written per second.
double copy_gbs() {
  const size_t n = size_t(1) << 30;
  DeviceBuffer<bf16> src(n / 2), dst(n / 2);
  fill(src.data(), src.size(), 1);
  const double ms =
      median_ms([&] { PIE_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), n, cudaMemcpyDeviceToDevice)); }, 1);
  return 2.0 * n / (ms * 1e-3) / 1e9;
}

// ---- timing ----------------------------------------------------------------------------------------

struct Row {
  std::string name;
  double us, mb;
};

/// A graph of `layers` layer pairs (weight copy l for pair l), replayed; µs per pair.
double time_graph(const std::function<void(int, cudaStream_t)>& enqueue, int layers, int reps, cudaStream_t st) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  PIE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int l = 0; l < layers; ++l) enqueue(l, st);
  PIE_CUDA_CHECK(cudaStreamEndCapture(st, &g));
  PIE_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
  const double ms = median_ms([&] { PIE_CUDA_CHECK(cudaGraphLaunch(ge, st)); }, reps, st);
  PIE_CUDA_CHECK(cudaStreamSynchronize(st));
  PIE_CUDA_CHECK(cudaGraphExecDestroy(ge));
  PIE_CUDA_CHECK(cudaGraphDestroy(g));
  return ms * 1e3 / layers;
}

int run(int argc, char** argv) {
  // Line-buffered even into a file: a step killed by its timeout keeps the rows printed before.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  bool check_only = false, small_only = false;
  int grid_override = 0, layers = 8, reps = 10;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] {
      PIE_CHECK(i + 1 < argc, a, " needs a value");
      return std::atoi(argv[++i]);
    };
    if (a == "--check-only") check_only = true;
    else if (a == "--small-only") small_only = true;
    else if (a == "--grid") grid_override = next();
    else if (a == "--layers") layers = next();
    else if (a == "--reps") reps = next();
    else PIE_CHECK(false, "unknown argument ", a, " (--check-only --small-only --grid N --layers L --reps R)");
  }
  cudaDeviceProp prop{};
  PIE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cudaStream_t st;
  // A blocking stream: the fills, memsets and copies on the legacy stream order with its work.
  PIE_CUDA_CHECK(cudaStreamCreate(&st));
  {
    Acts a(kSmall);
    DeviceBuffer<bf16> wo(kSmall.wo()), wgu(kSmall.wgu());
    g_mode = pick_mode(kSmall, a, wo, wgu, grid_override, st);
  }
  std::printf("launch mode of the persistent kernel: %s\n", mode_name(g_mode));
  for (const Shape* s : {&kQwen3_8B, &kSmall})
    for (const Variant* v : {&kEarly, &kEarly2, &kBarrierOnly, &kEarlySwiGLU})
      std::printf("resident grid %-8s %-28s %d CTAs (%d per SM)\n", s->name, v->name, resident(*v, *s),
                  resident(*v, *s) / prop.multiProcessorCount);
  for (const LayerShape* s : {&kLayer8B, &kLayerSmall})
    for (const LayerVariant* v : {&kLayerEarly, &kLayerBarrierOnly, &kLayerEarlyU2})
      std::printf("resident grid %-8s %-28s %d CTAs (%d per SM), %zu B shared\n", s->name, v->name,
                  layer_resident(*v, *s), layer_resident(*v, *s) / prop.multiProcessorCount,
                  pp::decoder_smem_bytes(s->hidden, s->inter, sizeof(D)));

  // Correctness: resident grid, a small grid (several units per warp in both phases), an override.
  // The prototype (o_proj -> gate_up) and the layer (o_proj .. RoPE + KV write).
  std::vector<int> grids{0, 7};
  if (grid_override > 0) grids = {grid_override};
  int bad = check_shape(kSmall, grids, st);
  if (!small_only) bad += check_shape(kQwen3_8B, grids, st);
  int bad_layer = check_layer(kLayerSmall, grids, st);
  if (!small_only) bad_layer += check_layer(kLayer8B, grids, st);
  std::printf("correctness: prototype %s, layer %s\n", bad == 0 ? "PASS" : "FAIL", bad_layer == 0 ? "PASS" : "FAIL");
  std::printf("correctness: %s\n", bad + bad_layer == 0 ? "PASS" : "FAIL");
  const int rc = bad + bad_layer == 0 ? 0 : 1;
  if (check_only) return rc;
  // A failure voids only the rows of what failed: the chains and every persistent variant that
  // matched the chain bit for bit are still timed (the exit status stays 1).
  for (const auto& [k, ok] : g_pass)
    if (!ok) std::printf("not timed (differs from the chain): %s\n", k.c_str());

  // Timing at the Qwen3-8B shape.
  const double copy = copy_gbs();
  std::printf("ceilings: D2D copy %.0f GB/s (read+write)\n", copy);
  {
  const Shape s = kQwen3_8B;
  Acts a(s);
  DeviceBuffer<bf16> wo(s.wo() * layers), wgu(s.wgu() * layers);
  fill(wo.data(), wo.size(), 7, 0.03f);
  fill(wgu.data(), wgu.size(), 9, 0.03f);
  std::printf("weights: %d copies of o_proj %.1f MB + gate_up %.1f MB = %.0f MB (L2 %d MB)\n", layers,
              s.wo() * 2 / 1e6, s.wgu() * 2 / 1e6, double(s.wo() + s.wgu()) * 2 * layers / 1e6, prop.l2CacheSize >> 20);
  auto WO = [&](int l) { return wo.data() + l * s.wo(); };
  auto WG = [&](int l) { return wgu.data() + l * s.wgu(); };
  // Bytes per pair, the least any implementation moves: the weights, x, o (written, read), r_in,
  // norm_w, the new residual, gate_up written; with SwiGLU also its row written (the chain's
  // silu_and_mul reads gate_up once more: not counted). The same bytes for chain and persistent.
  const double mb_o = (2.0 * s.wo() + 2.0 * (s.ka + s.na)) / 1e6;
  const double mb_gu = (2.0 * s.wgu() + 2.0 * (4.0 * s.na + 2.0 * s.inter)) / 1e6;
  const double mb_pair = (2.0 * (s.wo() + s.wgu()) + 2.0 * (s.ka + 5.0 * s.na + 2.0 * s.inter)) / 1e6;
  const double mb_swiglu = mb_pair + 2.0 * s.inter / 1e6;
  std::vector<Row> rows;
  auto add = [&](const std::string& name, double mb, const std::function<void(int, cudaStream_t)>& f) {
    rows.push_back({name, time_graph(f, layers, reps, st), mb});
  };
  add("o_proj gemv alone", mb_o, [&](int l, cudaStream_t q) { chain(s, a, WO(l), WG(l), false, true, false, q); });
  add("gate_up add_rms_norm_gemv alone", mb_gu,
      [&](int l, cudaStream_t q) { chain(s, a, WO(l), WG(l), false, false, true, q); });
  add("chain: gemv -> add_rms_norm_gemv", mb_pair,
      [&](int l, cudaStream_t q) { chain(s, a, WO(l), WG(l), false, false, false, q); });
  std::vector<DeviceBuffer<unsigned long long>> bars;
  for (const Variant* v : {&kEarly, &kEarly2, &kBarrierOnly}) {
    if (!passed(v->name)) continue;
    bars.emplace_back(2);
    unsigned long long* bar = bars.back().data();
    PIE_CUDA_CHECK(cudaMemset(bar, 0, 16));
    const int grid = resident(*v, s);
    add(v->name, mb_pair, [&, v, bar, grid](int l, cudaStream_t q) {
      PIE_CUDA_CHECK(persist(*v, s, a, WO(l), WG(l), grid, g_mode, bar, q));
    });
  }
  add("chain + silu_and_mul", mb_swiglu,
      [&](int l, cudaStream_t q) { chain(s, a, WO(l), WG(l), true, false, false, q); });
  if (passed(kEarlySwiGLU.name)) {
    bars.emplace_back(2);
    unsigned long long* bar = bars.back().data();
    PIE_CUDA_CHECK(cudaMemset(bar, 0, 16));
    const int grid = resident(kEarlySwiGLU, s);
    add(kEarlySwiGLU.name, mb_swiglu, [&, bar, grid](int l, cudaStream_t q) {
      PIE_CUDA_CHECK(persist(kEarlySwiGLU, s, a, WO(l), WG(l), grid, g_mode, bar, q));
    });
  }
  PIE_CUDA_CHECK(cudaStreamSynchronize(st));
  for (auto& b : bars) {  // a barrier that timed out (never expected on the resident grid) voids the rows
    unsigned long long count[2] = {0, 0};
    PIE_CUDA_CHECK(cudaMemcpy(count, b.data(), 16, cudaMemcpyDeviceToHost));
    PIE_CHECK(count[1] == 0, count[1], " barrier timeouts in the timed persistent runs");
  }
  std::printf("\n%-40s %10s %10s %10s %7s\n", "variant (graph of layer pairs)", "us/pair", "MB/pair", "GB/s", "%copy");
  for (const Row& r : rows)
    std::printf("%-40s %10.2f %10.1f %10.0f %7.1f\n", r.name.c_str(), r.us, r.mb, r.mb * 1e-3 / (r.us * 1e-6),
                100 * r.mb * 1e-3 / (r.us * 1e-6) / copy);
  auto us = [&](const char* n) {
    for (const Row& r : rows)
      if (r.name == n) return r.us;
    return std::nan("");  // not timed: the comparisons print nan
  };
  const double c2 = us("chain: gemv -> add_rms_norm_gemv"), c3 = us("chain + silu_and_mul");
  std::printf("\nceiling at copy bandwidth: %.2f us per pair\n", mb_pair * 1e-3 / copy * 1e6);
  std::printf("decision rule: chain - persistent >= 2 us per boundary\n");
  std::printf("chain - persistent early        : %+.2f us (1 boundary) -> %s\n", c2 - us(kEarly.name),
              c2 - us(kEarly.name) >= 2 ? "met" : "NOT met");
  std::printf("chain - persistent barrier only : %+.2f us (1 boundary) -> %s\n", c2 - us(kBarrierOnly.name),
              c2 - us(kBarrierOnly.name) >= 2 ? "met" : "NOT met");
  std::printf("chain+silu - persistent+swiglu  : %+.2f us (2 boundaries) -> %s\n", c3 - us(kEarlySwiGLU.name),
              c3 - us(kEarlySwiGLU.name) >= 4 ? "met" : "NOT met");
  std::printf("chain - persistent early x2     : %+.2f us (1 boundary) -> %s\n", c2 - us(kEarly2.name),
              c2 - us(kEarly2.name) >= 2 ? "met" : "NOT met");
  std::printf("early issue alone (barrier only - early): %+.2f us; a second step (early - early x2): %+.2f us\n",
              us(kBarrierOnly.name) - us(kEarly.name), us(kEarly.name) - us(kEarly2.name));
  }  // the prototype's weights are freed here

  // ---- the layer without attention: kernel P against the chains, 8 layers each on its own weights ----
  {
    const LayerShape s = kLayer8B;
    LayerActs a(s);
    const LayerWeights w(s, layers);
    std::printf("\nlayer weights: %d copies of %.1f MB (o %.1f, gate_up %.1f, down %.1f, qkv %.1f) = %.0f MB (L2 %d MB)\n",
                layers, 2e-6 * s.weights(), 2e-6 * s.wo(), 2e-6 * s.wgu(), 2e-6 * s.wd(), 2e-6 * s.wqkv(),
                2e-6 * s.weights() * layers, prop.l2CacheSize >> 20);
    // Bytes per layer, the least any implementation moves: the weights; x; o, r1, act, dn written
    // and read once; r0, two norm weights, q/k norm weights read; gate_up, r2, qkv written; q and k
    // read and written again by RoPE; K and V written to the cache. Same bytes for every row.
    const double mb = 2e-6 * (double(s.weights()) + s.q_dim() + 2.0 * s.hidden * 4 + 3.0 * s.hidden + 2.0 * kHD +
                              2.0 * s.inter + 2.0 * s.inter + s.hidden + s.nqkv() + 2.0 * (s.nq + s.nkv) * kHD +
                              2.0 * s.nkv * kHD);
    std::vector<Row> lrows;
    auto ladd = [&](const std::string& name, const std::function<void(int, cudaStream_t)>& f) {
      lrows.push_back({name, time_graph(f, layers, reps, st), mb});
    };
    const char* kChainDefault = "layer chain, engine default (7 kernels)";
    const char* kChainFused = "layer chain, fusion switches (5 kernels)";
    ladd(kChainDefault, [&](int l, cudaStream_t q) { layer_chain(s, a, w, l, false, q); });
    ladd(kChainFused, [&](int l, cudaStream_t q) { layer_chain(s, a, w, l, true, q); });
    std::vector<DeviceBuffer<unsigned long long>> lbars;
    for (const LayerVariant* v : {&kLayerEarly, &kLayerBarrierOnly, &kLayerEarlyU2}) {
      if (!passed(v->name)) continue;
      lbars.emplace_back(2);
      unsigned long long* bar = lbars.back().data();
      PIE_CUDA_CHECK(cudaMemset(bar, 0, 16));
      const int grid = layer_resident(*v, s);
      std::printf("%s: grid %d CTAs\n", v->name, grid);
      ladd(v->name, [&, v, bar, grid](int l, cudaStream_t q) {
        PIE_CUDA_CHECK(layer_persist(*v, s, a, w, l, grid, g_mode, bar, q));
      });
    }
    PIE_CUDA_CHECK(cudaStreamSynchronize(st));
    for (auto& b : lbars) {
      unsigned long long count[2] = {0, 0};
      PIE_CUDA_CHECK(cudaMemcpy(count, b.data(), 16, cudaMemcpyDeviceToHost));
      PIE_CHECK(count[1] == 0, count[1], " barrier timeouts in the timed layer runs");
    }
    std::printf("\n%-42s %10s %10s %10s %7s\n", "variant (graph of 8 layers, no attention)", "us/layer", "MB/layer",
                "GB/s", "%copy");
    for (const Row& r : lrows)
      std::printf("%-42s %10.2f %10.1f %10.0f %7.1f\n", r.name.c_str(), r.us, r.mb, r.mb * 1e-3 / (r.us * 1e-6),
                  100 * r.mb * 1e-3 / (r.us * 1e-6) / copy);
    auto lus = [&](const char* n) {
      for (const Row& r : lrows)
        if (r.name == n) return r.us;
      return std::nan("");
    };
    std::printf("\nceiling at copy bandwidth: %.2f us per layer\n", mb * 1e-3 / copy * 1e6);
    std::printf("decision rule: chain - persistent >= 2 us per boundary (kernel P replaces 4: o|gate_up, "
                "gate_up|down, down|qkv, qkv|rope)\n");
    for (const char* c : {kChainDefault, kChainFused})
      for (const LayerVariant* v : {&kLayerEarly, &kLayerBarrierOnly, &kLayerEarlyU2}) {
        const double d = lus(c) - lus(v->name);
        std::printf("%-42s - %-30s: %+.2f us per layer, %+.2f us per boundary -> %s\n", c, v->name, d, d / 4,
                    d / 4 >= 2 ? "met" : "NOT met");
      }
    std::printf("early issue alone (barrier only - early): %+.2f us per layer; U=4 against U=2 (early U=2 - early): "
                "%+.2f us per layer\n",
                lus(kLayerBarrierOnly.name) - lus(kLayerEarly.name), lus(kLayerEarlyU2.name) - lus(kLayerEarly.name));
  }
  PIE_CUDA_CHECK(cudaStreamDestroy(st));
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pie_bench_cuda_persist: %s\n", e.what());
    return 2;
  }
}
