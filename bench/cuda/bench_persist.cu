// The persistent batch-1 decode-layer prototype (persist_layer.cuh; issue 15, docs/gpu_engine.md
// "Next: a persistent decode-layer kernel for batch 1") against the kernel chain the engine runs
// today, in one process, bf16, Qwen3-8B shapes (hidden 4096 = 32 q heads × 128, intermediate 12288):
//   chain:      gemv(o_proj) → add_rms_norm_gemv(gate_up) [→ silu_and_mul], launched with PDL
//               (griddepcontrol), as CudaForward launches them;
//   persistent: one kernel on the resident CTAs, a grid-wide arrival counter between the phases,
//               phase B's first weight chunks issued before the wait ("early") or after it
//               ("barrier only"), and with SwiGLU in the gate_up epilogue.
// Each variant is captured in a CUDA graph of 8 layer pairs, each pair on its own copy of the
// weights (8 × 235 MB: 31× an H200's 60 MB L2, so every replay streams them from DRAM), replayed
// many times; the rows print µs per layer pair, bytes moved, GB/s and % of the device-to-device
// copy bandwidth measured at the start of the same run, and chain − persistent in µs.
//
// Correctness first (exit status 1 on any failure): every persistent variant's outputs (o, the
// new residual, gate_up, SwiGLU) byte for byte against the chain's, on the resident grid and a
// small grid (many units per warp), launched twice (the counter's reuse), at the Qwen3-8B shape
// and a small one with K tails; the chain against a CPU reference within a tolerance.
//
// Usage: pie_bench_cuda_persist [--check-only] [--small-only] [--grid N] [--layers L] [--reps R]
// No Google Benchmark: the device script builds it with nvcc alone where the machine lacks it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "persist_layer.cuh"
#include "pie/ops/cuda/activation.cuh"
#include "pie/ops/cuda/gemv.cuh"

namespace {
using namespace pie;
namespace oc = pie::ops::cuda;
namespace pp = pie::bench::persist;
using D = __nv_bfloat16;
constexpr float kEps = 1e-6f;

// ---- inputs and timing -------------------------------------------------------------------------

__global__ void fill_kernel(D* p, size_t n, uint64_t seed, float scale, float offset) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ull ^ seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    const float u = float((z >> 40) & 0xffffff) / 16777216.f * 2.f - 1.f;
    p[i] = __float2bfloat16_rn(offset + u * scale);
  }
}
void fill(bf16* p, size_t n, uint64_t seed, float scale = 1.f, float offset = 0.f) {
  fill_kernel<<<1024, 256>>>(reinterpret_cast<D*>(p), n, seed, scale, offset);
  PIE_CUDA_CHECK_LAUNCH();
}

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

// ---- the layer pair --------------------------------------------------------------------------------

struct Shape {
  const char* name;
  int ka, na, inter;  // x [ka] (heads · head dim), o and the residual [na] (hidden), gate_up [2·inter]
  int64_t wo() const { return int64_t(na) * ka; }
  int64_t wgu() const { return int64_t(2) * inter * na; }
};
constexpr Shape kQwen3_8B{"qwen3-8b", 4096, 4096, 12288};
constexpr Shape kSmall{"small", 1032, 2056, 1000};  // K tails (1032 = 1024 + 8), 96 norm threads

/// The activations of one layer pair (shared by every weight copy).
struct Acts {
  DeviceBuffer<bf16> x, o, r_in, r_out, nw, gu, act;
  explicit Acts(const Shape& s)
      : x(s.ka), o(s.na), r_in(s.na), r_out(s.na), nw(s.na), gu(2 * size_t(s.inter)), act(s.inter) {
    fill(x.data(), x.size(), 3);
    fill(r_in.data(), r_in.size(), 4);
    fill(nw.data(), nw.size(), 5, 0.5f, 1.f);
  }
  void poison() {  // unwritten outputs then differ from the chain's
    for (auto* b : {&o, &r_out, &gu, &act}) PIE_CUDA_CHECK(cudaMemset(b->data(), 0xff, b->size() * sizeof(bf16)));
  }
};

template <class T>
TensorView<T> row(T* p, int64_t n) { return TensorView<T>(p, {1, n}, Device::Cuda); }
template <class T>
TensorView<T> mat(const T* p, int64_t n, int64_t k) { return TensorView<T>(const_cast<T*>(p), {n, k}, Device::Cuda); }

/// The chain as the engine launches it (each kernel with PDL).
void chain(const Shape& s, Acts& a, const bf16* wo, const bf16* wgu, bool swiglu, bool o_only, bool gu_only,
           cudaStream_t st) {
  if (!gu_only) oc::gemv(row(a.o.data(), s.na), row(a.x.data(), s.ka), mat(wo, s.na, s.ka),
                         static_cast<const bf16*>(nullptr), st);
  if (o_only) return;
  oc::add_rms_norm_gemv(row(a.gu.data(), 2 * s.inter), row(a.o.data(), s.na), a.r_in.data(), a.r_out.data(),
                        a.nw.data(), kEps, false, mat(wgu, 2 * s.inter, s.na), static_cast<const bf16*>(nullptr), st,
                        4);
  if (swiglu) oc::silu_and_mul(row(a.gu.data(), 2 * s.inter), row(a.act.data(), s.inter), st);
}

/// The persistent kernel's variants.
struct Variant {
  const char* name;
  bool early, swiglu;
};
constexpr Variant kEarlySwiGLU{"persistent early + swiglu", true, true};
constexpr Variant kEarly{"persistent early", true, false};
constexpr Variant kBarrierOnly{"persistent barrier only", false, false};
constexpr int kU = 4;  // chunks in flight per column, as gemv's default configuration

pp::Params<D> params(const Shape& s, Acts& a, const bf16* wo, const bf16* wgu, bool swiglu,
                     unsigned long long* bar) {
  auto d = [](auto* p) { return reinterpret_cast<D*>(const_cast<bf16*>(p)); };
  pp::Params<D> p{};
  p.x = d(a.x.data()); p.wo = d(wo); p.o = d(a.o.data()); p.na = s.na; p.ka = s.ka;
  p.r_in = d(a.r_in.data()); p.r_out = d(a.r_out.data()); p.norm_w = d(a.nw.data()); p.eps = kEps;
  p.norm_threads = oc::detail::norm_threads(s.na);
  p.wgu = d(wgu); p.gu = d(a.gu.data()); p.act = swiglu ? d(a.act.data()) : nullptr; p.nb = 2 * s.inter;
  p.bar = bar;
  return p;
}

int resident(const Variant& v, const Shape& s) {
  const size_t smem = pp::smem_bytes(s.na, sizeof(D));
  if (v.swiglu) return pp::resident_ctas<kU, true, true, D>(smem);
  return v.early ? pp::resident_ctas<kU, true, false, D>(smem) : pp::resident_ctas<kU, false, false, D>(smem);
}

cudaError_t persist(const Variant& v, const Shape& s, Acts& a, const bf16* wo, const bf16* wgu, int grid, int mode,
                    unsigned long long* bar, cudaStream_t st) {
  const auto p = params(s, a, wo, wgu, v.swiglu, bar);
  if (v.swiglu) return pp::launch<kU, true, true>(p, grid, mode, st);
  return v.early ? pp::launch<kU, true, false>(p, grid, mode, st) : pp::launch<kU, false, false>(p, grid, mode, st);
}

const char* mode_name(int m) {
  return m == (pp::kCoop | pp::kPdl) ? "cooperative+PDL" : m == pp::kPdl ? "PDL" : m == pp::kCoop ? "cooperative" : "plain";
}

// ---- correctness ---------------------------------------------------------------------------------

std::vector<bf16> host(const DeviceBuffer<bf16>& b) {
  std::vector<bf16> h(b.size());
  PIE_CUDA_CHECK(cudaMemcpy(h.data(), b.data(), b.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
  return h;
}
float f(bf16 v) { return static_cast<float>(v); }
bf16 r16(float v) { return bf16(v); }

/// Counts elements outside |got − ref| ≤ rel·|ref| + abs_rms·rms(ref); prints the worst.
int tol_check(const char* what, const std::vector<bf16>& got, const std::vector<double>& ref, double rel,
              double abs_rms) {
  double ss = 0;
  for (double r : ref) ss += r * r;
  const double rms = std::sqrt(ss / std::max<size_t>(ref.size(), 1));
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(double(f(got[i])) - ref[i]), lim = rel * std::fabs(ref[i]) + abs_rms * rms;
    worst = std::max(worst, d / lim);
    if (!(d <= lim)) ++bad;
  }
  std::printf("  cpu ref %-8s %zu elements, rms %.3g, worst |d|/tol %.3f, %d outside\n", what, ref.size(), rms, worst,
              bad);
  return bad;
}

/// The chain's outputs against a CPU reference (each stage from the GPU's previous stage).
int cpu_reference(const Shape& s, Acts& a, const DeviceBuffer<bf16>& wo_d, const DeviceBuffer<bf16>& wgu_d) {
  const auto x = host(a.x), wo = host(wo_d), wgu = host(wgu_d), r_in = host(a.r_in), nw = host(a.nw);
  const auto o = host(a.o), r_out = host(a.r_out), gu = host(a.gu), act = host(a.act);
  int bad = 0;
  std::vector<double> ref(s.na);
  for (int n = 0; n < s.na; ++n) {
    double acc = 0;
    for (int k = 0; k < s.ka; ++k) acc += double(f(x[k])) * f(wo[size_t(n) * s.ka + k]);
    ref[n] = acc;
  }
  bad += tol_check("o_proj", o, ref, 1.0 / 128, 1e-3);
  // The residual is T(o + r_in) in float: exact on the host too.
  int rbad = 0;
  for (int n = 0; n < s.na; ++n) {
    const bf16 want = r16(f(o[n]) + f(r_in[n]));
    rbad += std::memcmp(&r_out[n], &want, sizeof(bf16)) != 0;
  }
  std::printf("  cpu ref residual %d of %d differ\n", rbad, s.na);
  bad += rbad;
  double ms = 0;
  for (int n = 0; n < s.na; ++n) ms += double(f(r_out[n])) * f(r_out[n]);
  const double inv = 1.0 / std::sqrt(ms / s.na + kEps);
  std::vector<float> xn(s.na);
  for (int n = 0; n < s.na; ++n) xn[n] = f(nw[n]) * f(r16(float(f(r_out[n]) * inv)));
  ref.assign(2 * size_t(s.inter), 0);
  for (int n = 0; n < 2 * s.inter; ++n) {
    double acc = 0;
    for (int k = 0; k < s.na; ++k) acc += double(xn[k]) * f(wgu[size_t(n) * s.na + k]);
    ref[n] = acc;
  }
  bad += tol_check("gate_up", gu, ref, 1.0 / 64, 2e-3);  // xn may differ by an ulp: a looser bound
  ref.assign(s.inter, 0);
  for (int i = 0; i < s.inter; ++i) {
    const double g = f(gu[i]), u = f(gu[s.inter + i]);
    ref[i] = double(f(r16(float(g / (1 + std::exp(-g)))))) * u;
  }
  bad += tol_check("swiglu", act, ref, 1.0 / 64, 1e-3);
  return bad;
}

int count_diff(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  int n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(bf16)) != 0;
  return n;
}

/// Picks the launch mode a graph captures: cooperative + PDL if the driver takes it, else less.
int pick_mode(const Shape& s, Acts& a, const DeviceBuffer<bf16>& wo, const DeviceBuffer<bf16>& wgu, int grid0,
              cudaStream_t st) {
  const int grid = grid0 > 0 ? std::min(grid0, resident(kEarly, s)) : resident(kEarly, s);
  DeviceBuffer<unsigned long long> bar(2);
  for (int m : std::vector<int>{pp::kCoop | pp::kPdl, pp::kPdl, pp::kCoop, 0}) {
    PIE_CUDA_CHECK(cudaMemset(bar.data(), 0, 16));
    cudaGraph_t g = nullptr;
    cudaGraphExec_t ge = nullptr;
    PIE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    cudaError_t e1 = persist(kEarly, s, a, wo.data(), wgu.data(), grid, m, bar.data(), st);
    cudaError_t e2 = persist(kEarly, s, a, wo.data(), wgu.data(), grid, m, bar.data(), st);
    cudaError_t e3 = cudaStreamEndCapture(st, &g);
    cudaError_t e4 = e1 == cudaSuccess && e2 == cudaSuccess && e3 == cudaSuccess ? cudaGraphInstantiate(&ge, g, 0)
                                                                                   : cudaErrorUnknown;
    cudaError_t e5 = e4 == cudaSuccess ? cudaGraphLaunch(ge, st) : cudaErrorUnknown;
    cudaError_t e6 = e5 == cudaSuccess ? cudaStreamSynchronize(st) : cudaErrorUnknown;
    if (ge) cudaGraphExecDestroy(ge);
    if (g) cudaGraphDestroy(g);
    (void)cudaGetLastError();
    unsigned long long count[2] = {0, 0};
    if (e6 == cudaSuccess) PIE_CUDA_CHECK(cudaMemcpy(count, bar.data(), 16, cudaMemcpyDeviceToHost));
    if (e6 == cudaSuccess && count[1] == 0) return m;
    if (count[1] != 0) std::printf("launch mode %s: %llu barrier timeouts\n", mode_name(m), count[1]);
    std::printf("launch mode %s: not taken (%s / %s / %s / %s)\n", mode_name(m), cudaGetErrorString(e1),
                cudaGetErrorString(e3), cudaGetErrorString(e4), cudaGetErrorString(e6));
  }
  PIE_CHECK(false, "no launch mode of the persistent kernel runs in a graph");
  return 0;
}

int g_mode = pp::kCoop | pp::kPdl;

/// Every persistent variant against the chain, bit for bit, on `grids` (0: the resident grid).
int check_shape(const Shape& s, const std::vector<int>& grids, cudaStream_t st) {
  std::printf("check %s: ka %d, na %d, inter %d\n", s.name, s.ka, s.na, s.inter);
  Acts a(s);
  DeviceBuffer<bf16> wo(s.wo()), wgu(s.wgu());
  fill(wo.data(), wo.size(), 7, 0.03f);
  fill(wgu.data(), wgu.size(), 9, 0.03f);
  a.poison();
  chain(s, a, wo.data(), wgu.data(), true, false, false, st);
  PIE_CUDA_CHECK(cudaStreamSynchronize(st));
  int bad = cpu_reference(s, a, wo, wgu);
  const auto o = host(a.o), r = host(a.r_out), gu = host(a.gu), act = host(a.act);
  DeviceBuffer<unsigned long long> bar(2);
  for (const Variant& v : {kEarly, kBarrierOnly, kEarlySwiGLU})
    for (int grid0 : grids) {
      const int grid = grid0 > 0 ? std::min(grid0, resident(v, s)) : resident(v, s);
      PIE_CUDA_CHECK(cudaMemset(bar.data(), 0, 16));
      int d = 0;
      for (int launch = 0; launch < 2; ++launch) {  // the second reuses the counter
        a.poison();
        PIE_CUDA_CHECK(persist(v, s, a, wo.data(), wgu.data(), grid, g_mode, bar.data(), st));
        PIE_CUDA_CHECK(cudaStreamSynchronize(st));
        d += count_diff(host(a.o), o) + count_diff(host(a.r_out), r) + count_diff(host(a.gu), gu);
        if (v.swiglu) d += count_diff(host(a.act), act);
      }
      unsigned long long count[2] = {0, 0};
      PIE_CUDA_CHECK(cudaMemcpy(count, bar.data(), 16, cudaMemcpyDeviceToHost));
      if (count[0] != 2ull * grid || count[1] != 0) ++d;
      std::printf("  %-28s grid %4d: %s (%d elements differ from the chain over 2 launches; counter %llu, "
                  "barrier timeouts %llu)\n",
                  v.name, grid, d == 0 ? "bit-identical" : "MISMATCH", d, count[0], count[1]);
      bad += d;
    }
  return bad;
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
    for (const Variant* v : {&kEarly, &kBarrierOnly, &kEarlySwiGLU})
      std::printf("resident grid %-8s %-28s %d CTAs (%d per SM)\n", s->name, v->name, resident(*v, *s),
                  resident(*v, *s) / prop.multiProcessorCount);

  // Correctness: resident grid, a small grid (several units per warp in both phases), an override.
  std::vector<int> grids{0, 7};
  if (grid_override > 0) grids = {grid_override};
  int bad = check_shape(kSmall, grids, st);
  if (!small_only) bad += check_shape(kQwen3_8B, grids, st);
  std::printf("correctness: %s\n", bad == 0 ? "PASS" : "FAIL");
  if (bad != 0 || check_only) return bad == 0 ? 0 : 1;

  // Timing at the Qwen3-8B shape.
  const Shape s = kQwen3_8B;
  const double copy = copy_gbs();
  std::printf("ceilings: D2D copy %.0f GB/s (read+write)\n", copy);
  Acts a(s);
  DeviceBuffer<bf16> wo(s.wo() * layers), wgu(s.wgu() * layers);
  fill(wo.data(), wo.size(), 7, 0.03f);
  fill(wgu.data(), wgu.size(), 9, 0.03f);
  std::printf("weights: %d copies of o_proj %.1f MB + gate_up %.1f MB = %.0f MB (L2 %d MB)\n", layers,
              s.wo() * 2 / 1e6, s.wgu() * 2 / 1e6, double(s.wo() + s.wgu()) * 2 * layers / 1e6, prop.l2CacheSize >> 20);
  auto WO = [&](int l) { return wo.data() + l * s.wo(); };
  auto WG = [&](int l) { return wgu.data() + l * s.wgu(); };
  // Bytes per pair: weights, x, r_in, norm_w, o (written once, read once), the residual, gate_up
  // written (and for SwiGLU: gate_up read by silu_and_mul in the chain, the act row written).
  const double act_b = 2.0 * (s.ka + 2 * s.na + s.na + s.na + 2.0 * s.inter);
  const double mb_o = (2.0 * s.wo() + 2.0 * (s.ka + s.na)) / 1e6, mb_gu = (2.0 * s.wgu() + 2.0 * (4 * s.na + 2.0 * s.inter)) / 1e6;
  const double mb_pair = (2.0 * (s.wo() + s.wgu()) + act_b) / 1e6, mb_swiglu = mb_pair + 2.0 * s.inter / 1e6;
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
  for (const Variant* v : {&kEarly, &kBarrierOnly}) {
    bars.emplace_back(2);
    unsigned long long* bar = bars.back().data();
    PIE_CUDA_CHECK(cudaMemset(bar, 0, 16));
    const int grid = resident(*v, s);
    add(v->name, mb_pair, [&, v, bar, grid](int l, cudaStream_t q) {
      PIE_CUDA_CHECK(persist(*v, s, a, WO(l), WG(l), grid, g_mode, bar, q));
    });
  }
  add("chain + silu_and_mul", mb_swiglu, [&](int l, cudaStream_t q) { chain(s, a, WO(l), WG(l), true, false, false, q); });
  {
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
    return 0.0;
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
  std::printf("early issue alone (barrier only - early): %+.2f us\n", us(kBarrierOnly.name) - us(kEarly.name));
  PIE_CUDA_CHECK(cudaStreamDestroy(st));
  return 0;
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
