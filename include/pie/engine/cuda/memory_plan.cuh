#pragma once
/// \file memory_plan.cuh
/// \brief vLLM-style sizing of the KV cache on one GPU: what the weights took, the activation
/// peak profiled by a forward pass over max_num_batched_tokens, and the number of KV blocks that
/// `gpu_memory_utilization` of the card leaves after both. Also the startup log line.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/kv/kv_layout.hpp"

namespace pie::engine::cuda {

/// \brief Free and total device memory right now (cudaMemGetInfo).
struct DeviceMemory {
  size_t free = 0;
  size_t total = 0;
  static DeviceMemory query() {
    DeviceMemory m;
    PIE_CUDA_CHECK(cudaMemGetInfo(&m.free, &m.total));
    return m;
  }
  size_t used() const { return total - free; }
};

/// \brief The result of sizing: every number the startup log states.
struct MemoryPlan {
  size_t total_bytes = 0;          ///< the card's memory
  size_t baseline_bytes = 0;       ///< in use before pie allocated anything (context, others)
  size_t weight_bytes = 0;         ///< device weights
  size_t activation_bytes = 0;     ///< profiled peak of workspaces + library scratch
  size_t kv_budget_bytes = 0;      ///< what the KV cache may take
  int64_t num_blocks = 0;
  int64_t kv_token_capacity = 0;
  double max_concurrency = 0;      ///< sequences of max_model_len that fit at once
  int64_t num_swap_blocks = 0;     ///< host swap pool (blocks of the same size)
  double gpu_memory_utilization = 0.9;

  static double gib(size_t b) { return static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0); }

  /// One line for the startup log (the quantities vLLM prints, in the same words).
  std::string log_line(int block_size) const {
    char buf[512];
    std::snprintf(buf, sizeof(buf),
                  "pie: memory: weights %.2f GiB, activation peak %.2f GiB, KV cache %.2f GiB "
                  "(gpu_memory_utilization %.2f of %.2f GiB): %lld blocks of %d tokens = %lld tokens "
                  "of KV capacity, max concurrency %.2fx at max_model_len; swap %lld blocks",
                  gib(weight_bytes), gib(activation_bytes), gib(kv_budget_bytes),
                  gpu_memory_utilization, gib(total_bytes), static_cast<long long>(num_blocks),
                  block_size, static_cast<long long>(kv_token_capacity), max_concurrency,
                  static_cast<long long>(num_swap_blocks));
    return buf;
  }
};

/// \brief Sizes the KV cache. Call after the weights are resident and the activation profile
/// ran; `used_now` is device memory in use at that point (weights + workspaces + context).
/// \param reserve_bytes  kept back for what is allocated later (CUDA graphs, sampler scratch)
inline MemoryPlan plan_kv_cache(const kv::KVLayout& layout, size_t total, size_t baseline,
                                size_t weight_bytes, size_t activation_bytes, size_t used_now,
                                double gpu_memory_utilization, int max_model_len,
                                double swap_space_gib, size_t reserve_bytes,
                                int64_t num_blocks_override = 0) {
  PIE_CHECK(gpu_memory_utilization > 0.0 && gpu_memory_utilization <= 1.0,
            "gpu_memory_utilization must be in (0, 1], got ", gpu_memory_utilization);
  MemoryPlan p;
  p.total_bytes = total;
  p.baseline_bytes = baseline;
  p.weight_bytes = weight_bytes;
  p.activation_bytes = activation_bytes;
  p.gpu_memory_utilization = gpu_memory_utilization;
  const double limit = gpu_memory_utilization * static_cast<double>(total);
  // used_now holds the weights and the workspaces; the profiled peak may exceed what stays
  // allocated (library scratch freed after the profile), so count the larger of the two.
  const double committed = static_cast<double>(used_now) + static_cast<double>(reserve_bytes);
  const double peak = static_cast<double>(baseline + weight_bytes + activation_bytes + reserve_bytes);
  const double taken = committed > peak ? committed : peak;
  const double budget = limit - taken;
  if (num_blocks_override > 0) {
    p.num_blocks = num_blocks_override;
    p.kv_budget_bytes = static_cast<size_t>(num_blocks_override) * layout.bytes_per_block();
  } else {
    PIE_CHECK(budget > static_cast<double>(layout.bytes_per_block()),
              "not enough device memory for the KV cache: gpu_memory_utilization ",
              gpu_memory_utilization, " of ", MemoryPlan::gib(total), " GiB leaves ",
              budget / (1024.0 * 1024.0 * 1024.0), " GiB after weights (", MemoryPlan::gib(weight_bytes),
              " GiB) and activations (", MemoryPlan::gib(activation_bytes),
              " GiB); raise --gpu-memory-utilization or lower --max-num-batched-tokens");
    p.kv_budget_bytes = static_cast<size_t>(budget);
    p.num_blocks = layout.blocks_for_budget(p.kv_budget_bytes);
  }
  p.kv_token_capacity = p.num_blocks * layout.block_size;
  const int64_t blocks_per_seq = (max_model_len + layout.block_size - 1) / layout.block_size;
  p.max_concurrency = blocks_per_seq ? static_cast<double>(p.num_blocks) / static_cast<double>(blocks_per_seq) : 0;
  p.num_swap_blocks =
      layout.blocks_for_budget(static_cast<size_t>(swap_space_gib * 1024.0 * 1024.0 * 1024.0));
  return p;
}

}  // namespace pie::engine::cuda
