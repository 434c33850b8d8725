#pragma once
/// \file step_gap_timer.cuh
/// \brief How long the GPU sat idle between two steps: issue 15's host-time target measured
/// where it costs. The host's time per step (StepTiming::host_s) overstates what the GPU loses
/// under asynchronous scheduling, where the next step is planned and queued while this one
/// runs; what the GPU loses is the gap between the end of one step's stream work and the start
/// of the next's. A timing event is recorded on the stream when a step's work is first queued
/// and another after its last op; a step's gap is the elapsed time from the previous step's end
/// event to its begin event. A begin event queued behind running work completes when that work
/// does, so a step queued ahead has a gap of about zero; a step queued after the stream drained
/// completes its begin event at once, so the gap is the host time in between.
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <optional>

#include "pie/core/buffer.hpp"

namespace pie::engine::cuda {

/// \brief Timing events at each step's begin and end on one stream, and the gap before each
/// completed step (see the file comment). At most kSlots − 1 steps may be begun and not yet
/// completed (the runner keeps two in flight).
class StepGapTimer {
 public:
  StepGapTimer() = default;
  StepGapTimer(const StepGapTimer&) = delete;
  StepGapTimer& operator=(const StepGapTimer&) = delete;
  ~StepGapTimer() {
    for (auto& s : slots_) {
      if (s.begin) cudaEventDestroy(s.begin);
      if (s.end) cudaEventDestroy(s.end);
    }
  }

  /// Records step `begun()`'s begin event on `stream` (before its first op).
  void begin(cudaStream_t stream) {
    Slot& s = slot(begun_);
    if (!s.begin) {
      PIE_CUDA_CHECK(cudaEventCreate(&s.begin));
      PIE_CUDA_CHECK(cudaEventCreate(&s.end));
    }
    PIE_CUDA_CHECK(cudaEventRecord(s.begin, stream));
  }
  /// Records the end event of the step begin() opened (after its last op).
  void end(cudaStream_t stream) {
    PIE_CUDA_CHECK(cudaEventRecord(slot(begun_).end, stream));
    ++begun_;
  }
  /// Steps begun so far; the next begin() opens step begun().
  uint64_t begun() const { return begun_; }
  /// After step `step` has completed (its end event): seconds the stream sat idle between the
  /// previous step's end and this step's begin; empty for the first step.
  std::optional<double> gap_before(uint64_t step) const {
    if (step == 0) return std::nullopt;
    float ms = 0;
    PIE_CUDA_CHECK(cudaEventElapsedTime(&ms, slot(step - 1).end, slot(step).begin));
    return ms > 0 ? 1e-3 * ms : 0.0;
  }

 private:
  static constexpr int kSlots = 4;
  struct Slot {
    cudaEvent_t begin = nullptr, end = nullptr;
  };
  Slot& slot(uint64_t step) { return slots_[step % kSlots]; }
  const Slot& slot(uint64_t step) const { return slots_[step % kSlots]; }
  std::array<Slot, kSlots> slots_{};
  uint64_t begun_ = 0;
};

}  // namespace pie::engine::cuda
