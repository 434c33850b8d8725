// The tensor-parallel half of `pie serve --device cuda --tensor-parallel-size N` (compiled as
// CUDA, only when NCCL is found): TpEngine over N CudaTpRanks, one per GPU, behind AnyEngine.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "pie/core/policy.hpp"
#include "pie/engine/cuda/roofline.cuh"
#include "pie/model/config_io.hpp"
#include "pie/model/embedded.hpp"
#include "pie/parallel/cuda_tp_world.cuh"
#include "pie/parallel/tp_engine.hpp"
#include "serve_cuda.hpp"

namespace pie::cli {

std::unique_ptr<AnyEngine> make_cuda_tp_engine(EngineOptions eo, size_t kv_cache_bytes, int tp_size) {
  using Rank = parallel::CudaTpRank<bf16, bf16, 16>;
  const model::ModelConfig cfg =
      eo.model_dir.empty() ? model::embedded_config() : model::load_model_config(eo.model_dir);
  parallel::CudaTpOptions copt = parallel::cuda_tp_options(eo);
  copt.kv_cache_bytes = kv_cache_bytes;  // per rank; 0 → gpu_memory_utilization of each card
  // Ceilings of GPU 0 while it is still empty; the line's weight bytes are one rank's share
  // (each GPU streams its shard per decode step).
  const engine::cuda::Ceilings ceil = engine::cuda::measure_ceilings();
  const engine::cuda::RooflineModel roof(cfg, sizeof(bf16), sizeof(bf16));
  std::printf("pie: roofline: gemm_flops %.4e copy_bw %.4e weight_bytes %.6e (bf16 GEMM FLOP/s of one GPU, device "
              "copy B/s read+write, weight bytes read per step by each of %d ranks)\n",
              ceil.gemm_flops, ceil.copy_bw, roof.weight_bytes() / tp_size, tp_size);
  std::fflush(stdout);
  auto world = parallel::cuda_tp_world<bf16, bf16, 16>(eo, tp_size, copt);
  const int max_model_len = eo.sched.max_model_len;
  auto engine = std::make_unique<AnyEngineOf<parallel::TpEngine<Rank>>>(std::in_place, std::move(eo), std::move(world));
  // The startup line of the single-GPU memory plan, for the tensor-parallel cache: every rank
  // holds the same block count (the smallest rank's capacity), each for its own KV heads.
  const auto st = engine->engine().stats();
  std::string ranks;
  for (size_t r = 0; r < st.rank_max_kv_blocks.size(); ++r)
    ranks += (r ? ", " : "") + std::to_string(st.rank_max_kv_blocks[r]);
  const int64_t tokens = int64_t{st.num_kv_blocks} * Rank::kBlockSize;
  std::printf("pie: tensor parallel %d: KV cache %d blocks of %d tokens = %lld tokens of KV capacity (ranks could "
              "hold %s), max concurrency %.2fx at max_model_len\n",
              tp_size, st.num_kv_blocks, Rank::kBlockSize, static_cast<long long>(tokens), ranks.c_str(),
              double(tokens) / std::max(1, max_model_len));
  std::fflush(stdout);
  return engine;
}

}  // namespace pie::cli
