#pragma once
/// \file serve_cuda.hpp
/// \brief The CUDA half of `pie serve`: defined in serve_cuda.cpp, which is compiled as CUDA
/// and only in builds with the CUDA backend (PIE_HAVE_SERVE_CUDA). serve.cpp stays host code.
#include <memory>
#include <string>

#include "pie/engine/any_engine.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/model/config.hpp"

namespace pie::cli {

/// GPUs the CUDA runtime sees (0 when there is no driver or device).
int cuda_device_count();

/// Loads the model's config (the embedded one without a directory), measures the card's
/// ceilings (bf16 GEMM FLOP/s, device copy bytes/s) while it is still empty and prints the
/// `pie: roofline:` line that bench/serving_client.py reads: the ceilings and the weight bytes
/// one GPU streams per decode step (its shard's, when `ranks` > 1).
model::ModelConfig announce_roofline(const EngineOptions& eo, size_t dtype_bytes, size_t kv_dtype_bytes, int ranks);

/// KV block sizes the CUDA backend of `pie serve` is compiled for (one engine instantiation each).
inline bool cuda_block_size_supported(int block_size) { return block_size == 8 || block_size == 16; }

/// Builds Engine<Qwen3, bf16 CUDA policy of `block_size` tokens per KV block> from `eo` on the
/// calling thread (which then owns the CUDA work). `kv_cache_bytes` > 0 fixes the KV cache size
/// (→ num_kv_blocks) instead of the memory plan. Before loading, announce_roofline().
std::unique_ptr<AnyEngine> make_cuda_engine(EngineOptions eo, size_t kv_cache_bytes, int block_size = 16);

/// Builds TpEngine over `tp_size` CudaTpRanks (GPUs 0..tp_size−1, NCCL; bf16, blocks of 16)
/// from `eo`: each rank loads only its shards. `kv_cache_bytes` > 0 is each rank's KV budget.
/// Defined in serve_cuda_tp.cpp, compiled only where NCCL is found (PIE_HAVE_SERVE_CUDA_TP).
std::unique_ptr<AnyEngine> make_cuda_tp_engine(EngineOptions eo, size_t kv_cache_bytes, int tp_size);

}  // namespace pie::cli
