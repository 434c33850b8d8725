#pragma once
/// \file serve_cuda.hpp
/// \brief The CUDA half of `pie serve`: defined in serve_cuda.cpp, which is compiled as CUDA
/// and only in builds with the CUDA backend (PIE_HAVE_SERVE_CUDA). serve.cpp stays host code;
/// the CUDA engines themselves come from make_engine() (pie/registry/make_engine.hpp), which
/// bench.cpp registers (it includes registry/cuda/cuda_engines.cuh; pie_bench_objects is linked
/// into every `pie` that has serve_cuda.cpp).
#include <cstddef>

#include "pie/engine/engine_options.hpp"
#include "pie/model/config.hpp"
#include "pie/sched/batch_defaults.hpp"

namespace pie::cli {

/// GPUs the CUDA runtime sees (0 when there is no driver or device).
int cuda_device_count();

/// vLLM's max_num_seqs / max_num_batched_tokens defaults for the current GPU (its memory and name).
sched::BatchDefaults cuda_batch_defaults(sched::EntryPoint entry);

/// Loads the model's config (the embedded one without a directory), measures the card's
/// ceilings (bf16 GEMM FLOP/s, device copy bytes/s) while it is still empty and prints the
/// `pie: roofline:` line that bench/serving_client.py reads: the ceilings and the weight bytes
/// one GPU streams per decode step (its shard's, when `ranks` > 1).
model::ModelConfig announce_roofline(const EngineOptions& eo, size_t dtype_bytes, size_t kv_dtype_bytes, int ranks);

}  // namespace pie::cli
