#pragma once
/// \file cuda_graphs.cuh
/// \brief CUDA graphs of the decode step, one per batch-size bucket (vLLM's capture sizes:
/// 1, 2, 4, 8, then every 8 up to 256 and every 16 beyond, capped at max_num_seqs). A decode
/// step of n sequences replays the smallest bucket ≥ n with the extra rows padded (slot −1,
/// empty block table), so a 36-layer step costs one launch instead of ~400.
///
/// A graph bakes in every pointer and launch shape it saw, so whatever it reads must live at
/// fixed addresses (StepBuffers, the workspaces, the KV pool) and the shapes must be functions
/// of the bucket alone (the decode attention plan is made for a context class's bound: the runner
/// keeps one DecodeGraphs per class; with PIE_DECODE_GRAPH_CONTEXTS=0 one, for max_model_len).
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"

namespace pie::engine::cuda {

/// \brief The capture sizes for a given max_num_seqs (ascending, last == max_num_seqs).
inline std::vector<int> graph_buckets(int max_num_seqs) {
  std::vector<int> b;
  for (int n : {1, 2, 4, 8}) if (n <= max_num_seqs) b.push_back(n);
  for (int n = 16; n <= max_num_seqs; n += n < 256 ? 8 : 16) b.push_back(n);
  if (b.empty() || b.back() != max_num_seqs) b.push_back(max_num_seqs);
  return b;
}

/// \brief Owned, instantiated decode graphs keyed by bucket size.
class DecodeGraphs {
 public:
  DecodeGraphs() = default;
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;
  ~DecodeGraphs() { clear(); }

  /// Smallest captured bucket ≥ n, or 0 when none.
  int bucket_for(int n) const {
    auto it = graphs_.lower_bound(n);
    return it == graphs_.end() ? 0 : it->first;
  }
  bool empty() const { return graphs_.empty(); }
  size_t size() const { return graphs_.size(); }

  /// Captures `body(stream)` as the graph of `bucket`. `body` must only enqueue work on
  /// `stream` (no synchronisation, no allocation, no host reads of device results).
  template <class Body>
  void capture(int bucket, cudaStream_t stream, Body&& body) {
    cudaGraph_t g = nullptr;
    PIE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      body(stream);
    } catch (...) {
      cudaStreamEndCapture(stream, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    PIE_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
    cudaGraphExec_t exec = nullptr;
    cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    PIE_CUDA_CHECK(e);
    auto [it, fresh] = graphs_.emplace(bucket, exec);
    if (!fresh) { cudaGraphExecDestroy(it->second); it->second = exec; }
  }

  /// Replays the graph of `bucket` on `stream`.
  void launch(int bucket, cudaStream_t stream) const {
    auto it = graphs_.find(bucket);
    PIE_CHECK(it != graphs_.end(), "DecodeGraphs: no graph captured for batch ", bucket);
    PIE_CUDA_CHECK(cudaGraphLaunch(it->second, stream));
  }

  void clear() {
    for (auto& [b, e] : graphs_) cudaGraphExecDestroy(e);
    graphs_.clear();
  }

 private:
  std::map<int, cudaGraphExec_t> graphs_;
};

}  // namespace pie::engine::cuda
