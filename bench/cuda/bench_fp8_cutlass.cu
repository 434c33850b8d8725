/// \file bench_fp8_cutlass.cu
/// \brief The block-scaled fp8 GEMM on CUTLASS's SM90 blockwise kernel (fp8_gemm_cutlass.cuh)
/// against cuBLASLt's (the one algorithm its heuristic offers, as Fp8Gemm runs it), on the same
/// e4m3 codes and scales: per (shape, M) the largest difference of the two outputs relative to
/// cuBLASLt's largest magnitude, then each one's median time and TFLOP/s. Issue 18: the decode
/// steps' GEMMs at M = 64…1024.
///
/// Usage: pie_bench_cuda_fp8_cutlass [--quick]   (plain executable; exit 1 when a variant differs
/// from cuBLASLt by more than 2e-2 of its largest magnitude)
#include <cublasLt.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/ops/cuda/fp8_gemm_cutlass.cuh"
#include "pie/ops/cuda/gemm.cuh"  // PIE_CUBLAS_CHECK

namespace {
using pie::DeviceBuffer;

__global__ void fill_codes(unsigned char* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned z = unsigned(i) * 2654435761u ^ seed;
    z ^= z >> 15;
    z *= 0x2c1b3c6du;
    z ^= z >> 12;
    p[i] = static_cast<unsigned char>(z & 0xef);  // sign, and |v| < 2: finite e4m3
  }
}
__global__ void fill_scales(float* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned z = unsigned(i) * 2246822519u ^ seed;
    z ^= z >> 13;
    z *= 0x5bd1e995u;
    p[i] = 0.5f + float(z & 0xffff) / 65536.f;
  }
}

float median_us(const std::function<void()>& f, int reps) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) f();
  std::vector<float> t;
  for (int r = 0; r < reps; ++r) {
    cudaEventRecord(a);
    f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms * 1e3f);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

/// cuBLASLt's block-scaled fp8 matmul, as Fp8Gemm sets it up (first heuristic algorithm).
struct Lt {
  cublasLtHandle_t h{};
  DeviceBuffer<unsigned char> ws{size_t{32} << 20};
  Lt() { PIE_CUBLAS_CHECK(cublasLtCreate(&h)); }
  ~Lt() { cublasLtDestroy(h); }
  std::function<void()> make(const void* w, const float* ws_, const void* x, const float* xs, void* y, int n, int k,
                             int mp) {
    cublasLtMatmulDesc_t desc;
    PIE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
    const cublasLtMatmulMatrixScale_t am = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
    const cublasLtMatmulMatrixScale_t bm = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &am, sizeof(am));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &bm, sizeof(bm));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws_, sizeof(ws_));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof(xs));
    cublasLtMatrixLayout_t a, b, c;
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, k, n, k));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, k, mp, k));
    PIE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c, CUDA_R_16BF, n, mp, n));
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    size_t wsz = ws.size();
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof(wsz));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    cublasLtMatmulAlgoGetHeuristic(h, desc, a, b, c, c, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    PIE_CHECK(found > 0, "no cuBLASLt algorithm");
    return [=, this] {
      const float alpha = 1.f, beta = 0.f;
      cublasLtMatmul(h, desc, &alpha, w, a, x, b, &beta, y, c, y, c, &res.algo, ws.data(), ws.size(), nullptr);
    };
  }
};

template <int TT, bool SK>
struct Variant {
  using G = pie::ops::cuda::fp8_cutlass::BlockGemm<TT, SK>;
  typename G::Gemm gemm;
  DeviceBuffer<unsigned char> work{16};
  std::string label = "cutlass 128x" + std::to_string(TT) + (SK ? " streamK" : " persistent");
  const char* name() const { return label.c_str(); }
  bool prepare(const void* w, const float* ws, const void* x, const float* xs, void* y, int n, int k, int mp) {
    auto args = G::arguments(w, ws, x, xs, y, n, n, k, mp);
    if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
    const size_t need = G::Gemm::get_workspace_size(args);
    if (work.size() < need) {
      work = DeviceBuffer<unsigned char>(need);
      PIE_CUDA_CHECK(cudaMemset(work.data(), 0, need));
    }
    return gemm.initialize(args, work.data()) == cutlass::Status::kSuccess;
  }
  void run() { gemm.run(); }
};

__global__ void max_diff(const __nv_bfloat16* a, const __nv_bfloat16* b, size_t n, float* out) {
  float d = 0.f, m = 0.f;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float x = __bfloat162float(a[i]), y = __bfloat162float(b[i]);
    d = fmaxf(d, fabsf(x - y));
    m = fmaxf(m, fabsf(y));
  }
  for (int o = 16; o > 0; o >>= 1) {
    d = fmaxf(d, __shfl_xor_sync(0xffffffffu, d, o));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  }
  if ((threadIdx.x & 31) == 0) {
    atomicMax(reinterpret_cast<int*>(out), __float_as_int(d));
    atomicMax(reinterpret_cast<int*>(out) + 1, __float_as_int(m));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // rows survive a time limit
  cudaDeviceProp prop{};
  PIE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  struct Shape { const char* name; int n, k; };
  const Shape shapes[] = {{"8B qkv", 6144, 4096}, {"8B o", 4096, 4096}, {"8B gate_up", 24576, 4096},
                          {"8B down", 4096, 12288}, {"A3B qkv", 5120, 2048}, {"A3B o", 2048, 4096}};
  std::vector<int> ms = quick ? std::vector<int>{64, 256, 512} : std::vector<int>{16, 64, 128, 256, 512, 1024, 2048, 8192};
  Lt lt;
  Variant<64, false> v0;
  Variant<128, false> v1;
  Variant<64, true> v2;
  Variant<128, true> v3;

  DeviceBuffer<float> diff(2);
  int bad = 0;
  std::printf("%-11s %5s | %-9s %6s | %-26s %9s %6s %8s %7s\n", "shape", "M", "cuBLASLt", "TF/s", "variant", "us",
              "TF/s", "rel diff", "speedup");
  for (const Shape& s : shapes) {
    const int kb = s.k / 128;
    DeviceBuffer<unsigned char> w(size_t(s.n) * s.k);
    DeviceBuffer<float> wsc(size_t(s.n / 128) * kb);
    fill_codes<<<1024, 256>>>(w.data(), w.size(), 17u + unsigned(s.n));
    fill_scales<<<64, 256>>>(wsc.data(), wsc.size(), 5u);
    for (int m : ms) {
      const int mp = (m + 3) / 4 * 4;
      DeviceBuffer<unsigned char> x(size_t(mp) * s.k);
      DeviceBuffer<float> xsc(size_t(kb) * mp);
      DeviceBuffer<__nv_bfloat16> yr(size_t(mp) * s.n), y(size_t(mp) * s.n);
      fill_codes<<<1024, 256>>>(x.data(), x.size(), 99u + unsigned(m));
      fill_scales<<<64, 256>>>(xsc.data(), xsc.size(), 7u + unsigned(m));
      auto ref = lt.make(w.data(), wsc.data(), x.data(), xsc.data(), yr.data(), s.n, s.k, mp);
      ref();
      const double fl = 2.0 * m * s.n * s.k;
      const float tr = median_us(ref, quick ? 10 : 30);
      auto one = [&](auto& v) {
        if (!v.prepare(w.data(), wsc.data(), x.data(), xsc.data(), y.data(), s.n, s.k, mp)) {
          std::printf("%-11s %5d | %9.2f %6.0f | %-26s cannot implement\n", s.name, m, tr, fl / tr / 1e6, v.name());
          return;
        }
        PIE_CUDA_CHECK(cudaMemset(y.data(), 0, y.size() * 2));
        v.run();
        PIE_CUDA_CHECK(cudaMemset(diff.data(), 0, 8));
        max_diff<<<256, 256>>>(y.data(), yr.data(), size_t(m) * s.n, diff.data());
        float h[2];
        PIE_CUDA_CHECK(cudaMemcpy(h, diff.data(), 8, cudaMemcpyDeviceToHost));
        const float rel = h[0] / std::max(h[1], 1e-30f);
        const float t = median_us([&] { v.run(); }, quick ? 10 : 30);
        if (!(rel <= 2e-2f)) ++bad;
        std::printf("%-11s %5d | %9.2f %6.0f | %-26s %9.2f %6.0f %8.1e %6.2fx\n", s.name, m, tr, fl / tr / 1e6, v.name(), t,
                    fl / t / 1e6, rel, tr / t);
      };
      one(v0);
      one(v1);
      one(v2);
      one(v3);

    }
  }
  PIE_CUDA_CHECK(cudaGetLastError());
  std::printf("%s: %d variant rows differ from cuBLASLt by more than 2e-2\n", bad ? "FAIL" : "ok", bad);
  return bad ? 1 : 0;
}
