// The tensor-parallel half of `pie serve --device cuda --tensor-parallel-size N` (compiled as
// CUDA, only when NCCL is found): TpEngine over N CudaTpRanks, one per GPU, behind AnyEngine.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "pie/core/policy.hpp"
#include "pie/parallel/cuda_tp_world.cuh"
#include "pie/parallel/tp_engine.hpp"
#include "serve_cuda.hpp"

namespace pie::cli {

std::unique_ptr<AnyEngine> make_cuda_tp_engine(EngineOptions eo, size_t kv_cache_bytes, int tp_size) {
  using Rank = parallel::CudaTpRank<bf16, bf16, 16>;
  parallel::CudaTpOptions copt = parallel::cuda_tp_options(eo);
  copt.kv_cache_bytes = kv_cache_bytes;  // per rank; 0 → gpu_memory_utilization of each card
  announce_roofline(eo, sizeof(bf16), sizeof(bf16), tp_size);  // GPU 0's ceilings, while still empty
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
