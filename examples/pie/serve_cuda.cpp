// The CUDA half of `pie` (compiled as CUDA, only with the CUDA backend): including
// registry/cuda/cuda_engines.cuh here compiles the CUDA engines of the registry and registers
// them, so host-compiled serve.cpp and generate.cpp reach them through make_engine().
#include "serve_cuda.hpp"

#include <cuda_runtime.h>

#include <cstdio>

#include "pie/engine/cuda/roofline.cuh"
#include "pie/registry/cuda/cuda_engines.cuh"
#include "pie/model/config_io.hpp"
#include "pie/model/embedded.hpp"

namespace pie::cli {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

model::ModelConfig announce_roofline(const EngineOptions& eo, size_t dtype_bytes, size_t kv_dtype_bytes, int ranks) {
  const model::ModelConfig cfg =
      eo.model_dir.empty() ? model::embedded_config() : model::load_model_config(eo.model_dir, true);
  // Ceilings while the card is still empty (the engine then takes gpu_memory_utilization of it).
  const engine::cuda::Ceilings ceil = engine::cuda::measure_ceilings();
  engine::cuda::RooflineModel roof(cfg, dtype_bytes, kv_dtype_bytes);
  roof.set_moe_of(eo.model_dir);
  if (ranks == 1)
    std::printf("pie: roofline: gemm_flops %.4e copy_bw %.4e weight_bytes %.6e (bf16 GEMM FLOP/s, device copy B/s "
                "read+write, weight bytes read per step)\n",
                ceil.gemm_flops, ceil.copy_bw, roof.weight_bytes());
  else  // each GPU streams its shard per decode step
    std::printf("pie: roofline: gemm_flops %.4e copy_bw %.4e weight_bytes %.6e (bf16 GEMM FLOP/s of one GPU, device "
                "copy B/s read+write, weight bytes read per step by each of %d ranks)\n",
                ceil.gemm_flops, ceil.copy_bw, roof.weight_bytes() / ranks, ranks);
  std::fflush(stdout);
  return cfg;
}

}  // namespace pie::cli
