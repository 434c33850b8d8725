// CPU backend benches, each against its roofline on this machine:
//   linear            FLOPs vs Eigen's own float GEMM (measured once, the CPU "peak" here)
//   paged attention   KV bytes read vs measured memcpy bandwidth (decode is memory bound)
//   engine decode     tokens/s of the embedded model at batch 1/8/32 (end to end: scheduler,
//                     forward, sampler)
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "pie/engine/engine.hpp"
#include "pie/ops/cpu/ops.hpp"

namespace {
using namespace pie;

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

template <class F> double seconds_per_call(F&& f, int reps) {
  f();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

double eigen_gemm_peak_flops() {
  static double peak = [] {
    const int n = 512;
    Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n), c(n, n);
    double s = seconds_per_call([&] { c.noalias() = a * b; }, 10);
    return 2.0 * n * n * n / s;
  }();
  return peak;
}

double copy_bandwidth() {  // bytes read + written per second
  static double bw = [] {
    std::vector<char> a(256 << 20, 1), b(256 << 20);
    double s = seconds_per_call([&] { std::memcpy(b.data(), a.data(), a.size()); benchmark::DoNotOptimize(b.data()); }, 3);
    return 2.0 * a.size() / s;
  }();
  return bw;
}

void BM_Linear(benchmark::State& st) {
  const int n = st.range(0), in = st.range(1), out = st.range(2);
  auto x = randn(size_t(n) * in, 1), w = randn(size_t(out) * in, 2);
  std::vector<float> y(size_t(n) * out);
  for (auto _ : st) {
    ops::cpu::linear(x.data(), n, in, w.data(), out, static_cast<const float*>(nullptr), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  const double flops = 2.0 * n * in * out;
  st.counters["GFLOP/s"] = benchmark::Counter(flops * st.iterations() / 1e9, benchmark::Counter::kIsRate);
  st.counters["eigen_peak_GFLOP/s"] = eigen_gemm_peak_flops() / 1e9;
}
BENCHMARK(BM_Linear)->Args({1, 1024, 1024})->Args({16, 1024, 1024})->Args({128, 1024, 3072})->UseRealTime();

void BM_PagedAttentionDecode(benchmark::State& st) {
  const int batch = st.range(0), ctx = st.range(1), nkv = 8, group = 4, hd = 128, bs = 16;
  const int nb = (ctx + bs - 1) / bs;
  std::vector<float> pool(size_t(batch) * nb * 2 * nkv * bs * hd);
  { auto r = randn(pool.size(), 3); pool = r; }
  std::vector<int32_t> indptr, indices, last, cu;
  for (int b = 0; b <= batch; ++b) { indptr.push_back(b * nb); cu.push_back(b); }
  for (int i = 0; i < batch * nb; ++i) indices.push_back(i);
  last.assign(batch, ctx - (nb - 1) * bs);
  kv::PagedKV<float> kv{pool.data(), nkv, hd, bs, batch, indptr.data(), indices.data(), last.data()};
  auto q = randn(size_t(batch) * nkv * group * hd, 4);
  std::vector<float> o(q.size());
  for (auto _ : st) {
    ops::cpu::paged_attention(q.data(), nkv * group * hd, o.data(), nkv * group * hd, kv, cu.data(), nkv * group,
                              0.088f);
    benchmark::DoNotOptimize(o.data());
  }
  // Each query head re-reads its kv head's pages: with GQA the group shares them in cache.
  const double bytes = double(batch) * ctx * 2 * nkv * hd * sizeof(float);
  st.counters["GB/s"] = benchmark::Counter(bytes * st.iterations() / 1e9, benchmark::Counter::kIsRate);
  st.counters["copy_peak_GB/s"] = copy_bandwidth() / 1e9;
}
BENCHMARK(BM_PagedAttentionDecode)->Args({1, 1024})->Args({8, 512})->UseRealTime();

void BM_EngineDecodeEmbedded(benchmark::State& st) {
  const int batch = st.range(0);
  EngineOptions o;
  o.num_kv_blocks = 1024;
  o.sched.max_model_len = 1024;
  Engine<Qwen3, CpuF32> e(o);
  sched::SamplingParams p;
  p.temperature = 0;
  p.ignore_eos = true;
  p.max_tokens = 64;
  std::vector<std::vector<int32_t>> prompts(batch, std::vector<int32_t>(16));
  for (int b = 0; b < batch; ++b)
    for (int i = 0; i < 16; ++i) prompts[b][i] = (b * 31 + i * 7) % 500;
  size_t tokens = 0;
  for (auto _ : st) {
    auto r = e.generate(prompts, p);
    for (auto& x : r) tokens += x.tokens[0].size();
  }
  st.counters["tokens/s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_EngineDecodeEmbedded)->Arg(1)->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
