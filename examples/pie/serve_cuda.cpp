// The CUDA half of `pie serve` (compiled as CUDA, only with the CUDA backend): the device count
// and the roofline line. The CUDA engines that host-compiled serve.cpp and generate.cpp reach
// through make_engine() are compiled and registered by bench.cpp (pie_bench_objects, linked
// into every `pie` that has this file: examples/pie/CMakeLists.txt), which includes
// registry/cuda/cuda_engines.cuh for `pie bench`. Including it here too compiled all of them a
// second time in the same program: 15 engines, minutes of CI's compile budget.
#include "serve_cuda.hpp"

#include <cuda_runtime.h>

#include <cstdio>

#include "pie/engine/cuda/batch_defaults_of_device.cuh"
#include "pie/engine/cuda/roofline.cuh"
#include "pie/model/config_io.hpp"
#include "pie/model/embedded.hpp"

namespace pie::cli {

sched::BatchDefaults cuda_batch_defaults(sched::EntryPoint entry) { return engine::cuda::batch_defaults_of_device(entry); }

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
