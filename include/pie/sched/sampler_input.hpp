#pragma once
/// \file sampler_input.hpp
/// \brief SamplerInput: what a sampler needs to know about one sequence besides its logits.
/// It lives below both the engine (the CPU Sampler, engine/sampler.hpp) and the ops (the GPU
/// sampler, ops/cuda/sampling.cuh), which read it with the same semantics.
#include <cstdint>
#include <span>

#include "pie/sched/sampling_params.hpp"

namespace pie::sched {

/// \brief One sequence's sampling context: its parameters, tokens and randomness coordinates.
struct SamplerInput {
  const SamplingParams* params = nullptr;
  std::span<const int32_t> prompt;   ///< prompt tokens (repetition penalty)
  std::span<const int32_t> output;   ///< tokens generated so far
  std::span<const int32_t> eos_ids;  ///< the model's EOS ids (suppressed by min_tokens)
  uint64_t seed = 0;                 ///< the request's seed (or the engine's default)
  int seq_index = 0;                 ///< 0..n-1 within the request
  /// The draw's step (tokens generated before it) when >= 0; -1: output.size(). A sampler
  /// that runs ahead of the host's token list (asynchronous scheduling) knows the step but not
  /// the tokens; it may only sample params that read no tokens (engine::needs_host_sampling).
  int64_t step = -1;
};

}  // namespace pie::sched
