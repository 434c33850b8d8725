#pragma once
/// \file device_draws.hpp
/// \brief DeviceDraws: what a device runner's full sampler (execute_sample_full: penalties,
/// logit_bias, min_tokens, logprobs) hands the engine for one step. Host-only; the runner fills
/// it, engine::add_device_draws (step_outputs.hpp) reads it.
#include <cstdint>
#include <span>

namespace pie::engine {

/// \brief One step's draws from a device runner's full sampler, rank 0, in host memory valid
/// until the runner's next step: per draw its id and, for draws whose request asks for
/// logprobs, the chosen token's logprob and the top `max_top` alternatives ([draws][max_top],
/// descending, ties by lower id: the CPU Sampler's order). Other ranks return it empty.
struct DeviceDraws {
  std::span<const int32_t> ids;
  std::span<const float> logprobs;
  std::span<const int32_t> top_ids;
  std::span<const float> top_logprobs;
  int max_top = 0;
};

}  // namespace pie::engine
