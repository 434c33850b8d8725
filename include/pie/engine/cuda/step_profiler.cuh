#pragma once
/// \file step_profiler.cuh
/// \brief Per-op timing of eager steps with CUDA events: where a step's time goes (GEMMs,
/// attention, norms, ...), summed per op name over the profiled steps. Off by default; while
/// on, the runner runs every step eagerly (graphs hide the ops' boundaries). The events are
/// pooled, and read after the step's synchronisation. Totals are kept per step kind (the tag
/// the runner sets: "decode@B" for pure decode steps of B sequences, "mixed" for steps with
/// prefill rows).
#include <cuda_runtime.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "pie/core/buffer.hpp"

namespace pie::engine::cuda {

/// \brief Accumulates event-timed spans by name.
class StepProfiler {
 public:
  StepProfiler() = default;
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;
  ~StepProfiler() { for (cudaEvent_t e : pool_) cudaEventDestroy(e); }

  bool enabled() const { return on_; }
  void enable(bool on) { on_ = on; }
  void reset() { totals_.clear(); steps_.clear(); }
  /// Kind of the step whose spans follow.
  void set_tag(std::string tag) { tag_ = std::move(tag); }

  /// Records the start of span `name` on `stream` (no-op when disabled).
  void begin(const char* name, cudaStream_t stream) {
    if (!on_) return;
    spans_.push_back({name, event(stream), nullptr});
  }
  /// Records the end of the last open span.
  void end(cudaStream_t stream) {
    if (!on_) return;
    spans_.back().stop = event(stream);
  }
  /// After the step's work has completed: adds the spans' times to the totals.
  void collect() {
    if (!on_) return;
    for (auto& s : spans_) {
      float ms = 0;
      PIE_CUDA_CHECK(cudaEventElapsedTime(&ms, s.start, s.stop));
      totals_[tag_][s.name] += ms;
    }
    if (!spans_.empty()) ++steps_[tag_];
    spans_.clear();
    used_ = 0;
  }
  /// Step kind → op name → milliseconds summed over the collected steps of that kind.
  const std::map<std::string, std::map<std::string, double>>& totals_ms() const { return totals_; }
  /// Step kind → number of collected steps.
  const std::map<std::string, int64_t>& steps() const { return steps_; }

 private:
  struct Span { const char* name; cudaEvent_t start, stop; };
  cudaEvent_t event(cudaStream_t stream) {
    if (used_ == pool_.size()) {
      cudaEvent_t e;
      PIE_CUDA_CHECK(cudaEventCreate(&e));
      pool_.push_back(e);
    }
    cudaEvent_t e = pool_[used_++];
    PIE_CUDA_CHECK(cudaEventRecord(e, stream));
    return e;
  }
  bool on_ = false;
  std::vector<cudaEvent_t> pool_;
  size_t used_ = 0;
  std::vector<Span> spans_;
  std::string tag_ = "step";
  std::map<std::string, std::map<std::string, double>> totals_;
  std::map<std::string, int64_t> steps_;
};

}  // namespace pie::engine::cuda
