/// \file bench_gemm_algos.cu
/// \brief How far cuBLASLt's first heuristic choice is from the best of its candidates, on the
/// engine's linear-layer shapes (issues 15 and 18). Gemm (gemm.cuh) and Fp8Gemm (fp8_gemm.cuh)
/// both run the heuristic's first algorithm for each M; this times up to 16 candidates per shape
/// with the same descriptors (bf16: TN, f32 compute; fp8: e4m3 TN with 128×128 block scales on W
/// and 1×128 group scales on x) and prints, per (kind, N, K, M): the first candidate's time and
/// TFLOP/s, the best one's, its index and configuration, and the gain. A large gain on the decode
/// shapes (M 256–1024) is the case for timing the candidates at engine start.
///
/// Usage: pie_bench_cuda_gemm_algos [--quick]   (plain executable: no Google Benchmark)
#include <cublasLt.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/ops/cuda/gemm.cuh"  // PIE_CUBLAS_CHECK

namespace {
namespace oc = pie::ops::cuda;
using pie::DeviceBuffer;

#define CK(x) PIE_CUBLAS_CHECK(x)

__global__ void fill_bytes(unsigned char* p, size_t n, unsigned seed, unsigned char lo_mask) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned z = unsigned(i) * 2654435761u ^ seed;
    z ^= z >> 13;
    z *= 0x5bd1e995u;
    // Keep every value finite and small: bf16 → exponent bits limited by the mask on the high
    // byte; fp8 e4m3 → a byte below 0x70 (|v| < 2) with a random sign.
    p[i] = static_cast<unsigned char>((z >> 8) & lo_mask);
  }
}
__global__ void fill_ones(float* p, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) p[i] = 1.f;
}

struct Shape {
  const char* name;
  int64_t n, k;
};

struct Candidate {
  float us;
  int index;
  cublasLtMatmulAlgo_t algo;
};

std::string describe(const cublasLtMatmulAlgo_t& a) {
  int tile = 0, splits = 1, stages = 0, swizzle = 0, cluster = 0, id = 0;
  size_t w = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof(splits), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, sizeof(swizzle), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster), &w);
  char b[128];
  std::snprintf(b, sizeof b, "algo%d tile%d split%d stages%d swz%d cl%d", id, tile, splits, stages, swizzle, cluster);
  return b;
}

class Runner {
 public:
  Runner() {
    CK(cublasLtCreate(&h_));
    PIE_CUDA_CHECK(cudaEventCreate(&e0_));
    PIE_CUDA_CHECK(cudaEventCreate(&e1_));
  }
  ~Runner() {
    cublasLtDestroy(h_);
    cudaEventDestroy(e0_);
    cudaEventDestroy(e1_);
  }

  /// Times every heuristic candidate of y [M, N] = x [M, K]·W [N, K]ᵀ; fp8 = e4m3 with block scales.
  std::vector<Candidate> run(bool fp8, int64_t m, int64_t n, int64_t k, int reps) {
    const size_t es = fp8 ? 1 : 2;
    ensure(w_, size_t(n) * k * es, fp8 ? 0x6f : 0x3c);
    ensure(x_, size_t(m) * k * es, fp8 ? 0x6f : 0x3c);
    ensure(y_, size_t(m) * n * 2, 0);
    const size_t scales = size_t((n + 127) / 128) * ((k + 127) / 128) + size_t((k + 127) / 128) * (m + 4);
    if (s_.size() < scales) {
      s_ = DeviceBuffer<float>(scales);
      fill_ones<<<256, 256>>>(s_.data(), scales);
    }
    cublasLtMatmulDesc_t desc;
    CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    const cudaDataType_t in = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    if (fp8) {
      const cublasLtMatmulMatrixScale_t am = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
      const cublasLtMatmulMatrixScale_t bm = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &am, sizeof(am)));
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &bm, sizeof(bm)));
      const void* as = s_.data();
      const void* bs = s_.data() + size_t((n + 127) / 128) * ((k + 127) / 128);
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &as, sizeof(as)));
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &bs, sizeof(bs)));
    }
    cublasLtMatrixLayout_t a, b, c;
    CK(cublasLtMatrixLayoutCreate(&a, in, k, n, k));
    CK(cublasLtMatrixLayoutCreate(&b, in, k, m, k));
    CK(cublasLtMatrixLayoutCreate(&c, CUDA_R_16BF, n, m, n));
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = ws_.size();
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    constexpr int kMax = 16;
    cublasLtMatmulHeuristicResult_t res[kMax] = {};
    int found = 0;
    cublasLtMatmulAlgoGetHeuristic(h_, desc, a, b, c, c, pref, kMax, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    std::vector<Candidate> out;
    const float alpha = 1.f, beta = 0.f;
    for (int i = 0; i < found; ++i) {
      auto call = [&] {
        return cublasLtMatmul(h_, desc, &alpha, w_.data(), a, x_.data(), b, &beta, y_.data(), c, y_.data(), c,
                              &res[i].algo, ws_.data(), ws_.size(), nullptr);
      };
      if (call() != CUBLAS_STATUS_SUCCESS) continue;
      for (int r = 0; r < 2; ++r) call();
      std::vector<float> t;
      for (int r = 0; r < reps; ++r) {
        PIE_CUDA_CHECK(cudaEventRecord(e0_));
        call();
        PIE_CUDA_CHECK(cudaEventRecord(e1_));
        PIE_CUDA_CHECK(cudaEventSynchronize(e1_));
        float ms = 0;
        PIE_CUDA_CHECK(cudaEventElapsedTime(&ms, e0_, e1_));
        t.push_back(ms * 1e3f);
      }
      std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
      out.push_back({t[t.size() / 2], i, res[i].algo});
    }
    PIE_CUDA_CHECK(cudaGetLastError());
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(c);
    cublasLtMatmulDescDestroy(desc);
    return out;
  }

 private:
  void ensure(DeviceBuffer<unsigned char>& buf, size_t bytes, unsigned char mask) {
    if (buf.size() >= bytes) return;
    buf = DeviceBuffer<unsigned char>(bytes);
    fill_bytes<<<1024, 256>>>(buf.data(), bytes, 12345u + unsigned(bytes), mask);
  }
  cublasLtHandle_t h_ = nullptr;
  cudaEvent_t e0_, e1_;
  DeviceBuffer<unsigned char> w_, x_, y_, ws_{size_t{32} << 20};
  DeviceBuffer<float> s_;
};

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  cudaDeviceProp prop{};
  PIE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  Runner r;
  // The ceiling: bf16 8192³, the first candidate (the rate pie bench's roofline measures).
  auto peak = r.run(false, 8192, 8192, 8192, 10);
  double peak_tf = 0;
  for (auto& c : peak) peak_tf = std::max(peak_tf, 2.0 * 8192.0 * 8192.0 * 8192.0 / (c.us * 1e-6) / 1e12);
  std::printf("bf16 GEMM 8192^3: best of %zu candidates %.0f TFLOP/s (first %.0f)\n", peak.size(), peak_tf,
              peak.empty() ? 0.0 : 2.0 * 8192.0 * 8192.0 * 8192.0 / (peak[0].us * 1e-6) / 1e12);
  const Shape shapes[] = {{"8B qkv", 6144, 4096},   {"8B o", 4096, 4096},        {"8B gate_up", 24576, 4096},
                          {"8B down", 4096, 12288}, {"8B lm_head", 151936, 4096}, {"A3B qkv", 5120, 2048},
                          {"A3B o", 2048, 4096}};
  const int64_t ms_full[] = {64, 128, 256, 512, 1024, 2048, 8192};
  const int64_t ms_quick[] = {256, 512, 1024};
  const int64_t* ms = quick ? ms_quick : ms_full;
  const int nm = quick ? 3 : 7;
  std::printf("%-5s %-11s %6s | %9s %7s | %9s %7s %5s | %6s | %s\n", "kind", "shape", "M", "first us", "TF/s",
              "best us", "TF/s", "idx", "gain", "best config");
  for (int fp8 = 0; fp8 < 2; ++fp8) {
    for (const Shape& s : shapes) {
      if (fp8 && s.n == 151936) continue;  // lm_head stays bf16 in the fp8 checkpoints
      for (int i = 0; i < nm; ++i) {
        const int64_t m = ms[i];
        auto c = r.run(fp8 != 0, m, s.n, s.k, quick ? 10 : 20);
        if (c.empty()) {
          std::printf("%-5s %-11s %6lld | no algorithm\n", fp8 ? "fp8" : "bf16", s.name, (long long)m);
          continue;
        }
        const Candidate* best = &c[0];
        for (auto& x : c)
          if (x.us < best->us) best = &x;
        const double fl = 2.0 * m * s.n * s.k;
        std::printf("%-5s %-11s %6lld | %9.2f %7.0f | %9.2f %7.0f %5d | %5.1f%% | %s (of %zu)\n", fp8 ? "fp8" : "bf16",
                    s.name, (long long)m, c[0].us, fl / (c[0].us * 1e-6) / 1e12, best->us,
                    fl / (best->us * 1e-6) / 1e12, best->index, 100.0 * (c[0].us / best->us - 1.0),
                    describe(best->algo).c_str(), c.size());
      }
    }
  }
  return 0;
}
