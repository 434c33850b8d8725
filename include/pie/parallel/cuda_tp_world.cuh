#pragma once
/// \file cuda_tp_world.cuh
/// \brief cuda_tp_world(): the TpWorld of `tp_size` CudaTpRanks on GPUs 0..tp_size−1 of this
/// process (vLLM's `--tensor-parallel-size N` on one host, one thread per GPU instead of one
/// process per GPU). One NCCL unique id is made here and shared by the ranks; their handles go
/// into one NcclAbortGroup, the world's abort().
///
/// Weights: a checkpoint directory is read shard by shard (load_shard_weights: each rank reads
/// only its slices of the mmapped safetensors). `--load-format dummy` and the embedded model
/// are generated whole on the host with model::dummy_weights and cut (shard_weights), so TP = 1
/// and TP = N of one seed are the same model — what the agreement test needs.
#include <memory>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/load.hpp"
#include "pie/parallel/cuda_tp_runner.cuh"
#include "pie/parallel/nccl_communicator.cuh"
#include "pie/parallel/shard_loader.hpp"
#include "pie/parallel/tp_plan.hpp"
#include "pie/parallel/tp_world.hpp"

namespace pie::parallel {

/// CudaTpOptions from the engine's options (vLLM's flags; num_kv_blocks is applied by
/// TpEngine, which takes the minimum over ranks otherwise).
inline CudaTpOptions cuda_tp_options(const EngineOptions& o) {
  CudaTpOptions c;
  c.max_num_seqs = o.sched.max_num_seqs;
  c.max_num_batched_tokens = o.sched.max_num_batched_tokens;
  c.max_model_len = o.sched.max_model_len;
  c.gpu_memory_utilization = o.gpu_memory_utilization;
  c.enforce_eager = o.enforce_eager;
  // NCCL's all-reduce splits its work by message size, i.e. by the step's token count: the sum
  // a row gets is not independent of the batch, so the invariant mode cannot be promised here.
  PIE_CHECK(!o.batch_invariant, "--batch-invariant is not available with --tensor-parallel-size > 1 on the GPU");
  return c;
}

namespace detail {
/// The world over a checkpoint directory (dir non-empty) or over full host weights.
template <class T, class KV, int BlockSize>
TpWorld<CudaTpRank<T, KV, BlockSize>> cuda_tp_world(std::string dir, std::shared_ptr<const model::Weights<T>> full,
                                                    model::ModelConfig cfg, model::GenerationConfig gen,
                                                    int tp_size, CudaTpOptions copt, std::vector<int> devices) {
  using Rank = CudaTpRank<T, KV, BlockSize>;
  if (devices.empty())
    for (int r = 0; r < tp_size; ++r) devices.push_back(r);
  PIE_CHECK(static_cast<int>(devices.size()) == tp_size, "cuda_tp_world: ", devices.size(), " devices for ", tp_size,
            " ranks");
  int visible = 0;
  if (cudaGetDeviceCount(&visible) != cudaSuccess) visible = 0;
  for (int d : devices)
    PIE_CHECK(d >= 0 && d < visible, "tensor parallel size ", tp_size, " needs GPU ", d, " but ", visible,
              " are visible");
  // Validate the split before any rank joins NCCL: a bad size must fail here, not in init.
  check_tp_size(cfg, tp_size);
  const ncclUniqueId id = nccl_unique_id();
  auto abort = std::make_shared<NcclAbortGroup>();
  TpWorld<Rank> w;
  w.size = tp_size;
  w.make_rank = [=](int r) {
    typename Rank::Loader load = [&](const TpShard& s) {
      return full ? shard_weights<T>(*full, s) : load_shard_weights<T>(dir, s, {.progress = false});
    };
    return std::make_unique<Rank>(make_tp_shard(cfg, tp_size, r), load, gen, id, devices[r], copt, abort);
  };
  w.abort = [abort] { abort->abort(); };
  return w;
}
}  // namespace detail

/// The ranks of `opt`'s model on GPUs `devices[r]` (default 0..tp_size−1).
template <class T, class KV = T, int BlockSize = 16>
TpWorld<CudaTpRank<T, KV, BlockSize>> cuda_tp_world(const EngineOptions& opt, int tp_size, CudaTpOptions copt,
                                                    std::vector<int> devices = {}) {
  const auto fmt = model::parse_load_format(opt.load_format);
  if (!opt.model_dir.empty() && fmt != model::LoadFormat::Dummy) {
    const model::ModelConfig cfg = model::load_model_config(opt.model_dir);
    return detail::cuda_tp_world<T, KV, BlockSize>(opt.model_dir, nullptr, cfg,
                                                   model::load_generation_config(opt.model_dir, cfg), tp_size, copt,
                                                   std::move(devices));
  }
  auto m = model::load_model<T>(opt.model_dir, fmt, opt.seed);
  const model::ModelConfig cfg = m.weights.config;
  return detail::cuda_tp_world<T, KV, BlockSize>(
      "", std::make_shared<const model::Weights<T>>(std::move(m.weights)), cfg, m.generation, tp_size, copt,
      std::move(devices));
}

/// The ranks of full host weights `full` (tests, random models), each rank cutting its shard.
template <class T, class KV = T, int BlockSize = 16>
TpWorld<CudaTpRank<T, KV, BlockSize>> cuda_tp_world(std::shared_ptr<const model::Weights<T>> full,
                                                    model::GenerationConfig gen, int tp_size, CudaTpOptions copt,
                                                    std::vector<int> devices = {}) {
  PIE_CHECK(full != nullptr, "cuda_tp_world: no weights");
  const model::ModelConfig cfg = full->config;
  return detail::cuda_tp_world<T, KV, BlockSize>("", std::move(full), cfg, std::move(gen), tp_size, copt,
                                                 std::move(devices));
}

}  // namespace pie::parallel
