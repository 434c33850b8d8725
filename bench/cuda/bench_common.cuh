#pragma once
// Helpers shared by the CUDA benchmarks: device-side random fills (never zeros), event-timed
// medians, a report that prints each result against the ceilings measured at the start of the
// same run, and a paged cache with a shuffled block table.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/common.cuh"

namespace pie::bench {
namespace oc = pie::ops::cuda;

struct Ceilings { double copy_gbs = 0, gemm_tflops = 0; };
inline Ceilings g_ceil;
struct Row { std::string name; double us, rate, pct; const char* unit; };
inline std::vector<Row> g_rows;

/// Fills a device buffer with uniform(-1, 1)·scale values of T, generated on the device.
template <class T>
__global__ void fill_kernel(T* p, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ull ^ seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    float u = float((z >> 40) & 0xffffff) / 16777216.f * 2.f - 1.f;
    p[i] = oc::from_f32<T>(u * scale);
  }
}
template <class T> inline void fill(T* p, size_t n, uint64_t seed, float scale = 1.f) {
  using D = oc::device_t<T>;
  auto* d = reinterpret_cast<D*>(p);
  fill_kernel<D><<<1024, 256>>>(d, n, seed, scale);
  PIE_CUDA_CHECK_LAUNCH();
}

/// Median of `reps` event-timed runs after `warm` warm-up runs, in milliseconds.
template <class F> inline double median_ms(F&& f, int warm = 3, int reps = 20) {
  cudaEvent_t a, b;
  PIE_CUDA_CHECK(cudaEventCreate(&a));
  PIE_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < warm; ++i) f();
  std::vector<float> t(reps);
  for (int i = 0; i < reps; ++i) {
    PIE_CUDA_CHECK(cudaEventRecord(a));
    f();
    PIE_CUDA_CHECK(cudaEventRecord(b));
    PIE_CUDA_CHECK(cudaEventSynchronize(b));
    PIE_CUDA_CHECK(cudaEventElapsedTime(&t[i], a, b));
  }
  PIE_CUDA_CHECK(cudaEventDestroy(a));
  PIE_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[reps / 2];
}

/// Runs f under Google Benchmark's loop with event timing and reports against the ceilings.
template <class F>
void report(benchmark::State& st, const std::string& name, double bytes, double flops, F&& f) {
  for (auto _ : st) {
    double ms = median_ms(f, 2, 10);
    st.SetIterationTime(ms / 1e3);
  }
  double ms = median_ms(f, 1, 20);
  st.counters["us"] = ms * 1e3;
  Row r{name, ms * 1e3, 0, 0, ""};
  if (bytes > 0) {
    double gbs = bytes / (ms * 1e-3) / 1e9;
    st.counters["MB"] = bytes / 1e6;
    st.counters["GB/s"] = gbs;
    st.counters["%copy"] = 100 * gbs / g_ceil.copy_gbs;
    r.rate = gbs; r.pct = 100 * gbs / g_ceil.copy_gbs; r.unit = "GB/s (% copy)";
  }
  if (flops > 0) {
    double tf = flops / (ms * 1e-3) / 1e12;
    st.counters["GFLOP"] = flops / 1e9;
    st.counters["TFLOP/s"] = tf;
    st.counters["%gemm"] = 100 * tf / g_ceil.gemm_tflops;
    r.rate = tf; r.pct = 100 * tf / g_ceil.gemm_tflops; r.unit = "TFLOP/s (% gemm)";
  }
  g_rows.push_back(r);
}

/// Measures the copy ceiling: a 1 GiB device-to-device copy, bytes read + written.
inline void measure_copy_ceiling() {
  const size_t n = size_t(1) << 30;
  DeviceBuffer<unsigned char> src(n), dst(n);
  fill(reinterpret_cast<float*>(src.data()), n / 4, 1);
  double ms = median_ms([&] { PIE_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), n, cudaMemcpyDeviceToDevice)); });
  g_ceil.copy_gbs = 2.0 * n / (ms * 1e-3) / 1e9;
}

/// Prints the device line every bench starts with: name, SM count and L2 size.
inline void print_device() {
  cudaDeviceProp prop{};
  PIE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
}

/// The device line, then the copy ceiling measured and printed as `label: D2D copy N GB/s`; the
/// device scripts grep the label ("ceilings:" where more ceilings follow on the line elsewhere).
inline void print_device_and_copy_ceiling(const char* label = "ceilings") {
  print_device();
  measure_copy_ceiling();
  std::printf("%s: D2D copy %.0f GB/s (read+write)\n", label, g_ceil.copy_gbs);
}

/// The table every bench prints last: one row per benchmark, against the same run's ceilings.
inline void print_rows() {
  std::printf("\n%-48s %10s %10s %7s  %s\n", "kernel", "us", "rate", "%ceil", "unit");
  for (auto& r : g_rows) std::printf("%-48s %10.1f %10.1f %7.1f  %s\n", r.name.c_str(), r.us, r.rate, r.pct, r.unit);
}

/// Runs the Google Benchmark cases registered in this binary, then prints the table of rows.
inline void run_benchmarks_and_print_rows(int& argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_rows();
}

/// A paged cache with every sequence at `ctx` tokens and a shuffled block table.
template <class KV> struct BenchCache {
  DeviceBuffer<KV> pool;
  DeviceBuffer<int32_t> indptr, indices, last;
  DeviceBuffer<float> scales;  // K then V scales per kv head, all 1 (the engine's fp8 cache reads these too)
  kv::PagedKV<KV> view;
  /// `spread` > 1: the pages are drawn at random from a pool `spread` times larger than they need,
  /// as in the engine's KV pool (a layer's blocks spread over its whole share of memory), so the
  /// launch touches as many distinct memory pages as there.
  BenchCache(int batch, int ctx, int nkv, int hd, int bs, int spread = 1) {
    int pages_per = (ctx + bs - 1) / bs, pages = batch * pages_per;
    const int64_t pool_pages = int64_t{pages} * std::max(spread, 1);
    pool = DeviceBuffer<KV>(size_t(pool_pages) * 2 * nkv * bs * hd);
    fill(pool.data(), pool.size(), 11);
    std::vector<int32_t> ip(batch + 1), ix(pool_pages), la(batch, (ctx - 1) % bs + 1);
    for (int b = 0; b <= batch; ++b) ip[b] = b * pages_per;
    std::iota(ix.begin(), ix.end(), 0);
    std::shuffle(ix.begin(), ix.end(), std::mt19937(5));
    ix.resize(pages);
    indptr = DeviceBuffer<int32_t>(ip.size()); indices = DeviceBuffer<int32_t>(ix.size()); last = DeviceBuffer<int32_t>(la.size());
    PIE_CUDA_CHECK(cudaMemcpy(indptr.data(), ip.data(), ip.size() * 4, cudaMemcpyHostToDevice));
    PIE_CUDA_CHECK(cudaMemcpy(indices.data(), ix.data(), ix.size() * 4, cudaMemcpyHostToDevice));
    PIE_CUDA_CHECK(cudaMemcpy(last.data(), la.data(), la.size() * 4, cudaMemcpyHostToDevice));
    const std::vector<float> ones(2 * size_t(nkv), 1.f);
    scales = DeviceBuffer<float>(ones.size());
    PIE_CUDA_CHECK(cudaMemcpy(scales.data(), ones.data(), ones.size() * 4, cudaMemcpyHostToDevice));
    view = {pool.data(), nkv, hd, bs, batch, indptr.data(), indices.data(), last.data(), scales.data(),
            scales.data() + nkv};
  }
};

}  // namespace pie::bench
