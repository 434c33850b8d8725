#pragma once
/// \file sample_specs.hpp
/// \brief SampleSpec: what the device sampler needs per sampled token, and the helper that
/// builds them from the scheduler's last plan with pie::Sampler's conventions (seed of an
/// unseeded request, sequence index, step = tokens generated so far). Host-only.
#include <cstdint>
#include <vector>

#include "pie/sched/sampling_params.hpp"
#include "pie/sched/scheduler.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::engine {

/// \brief Per sampled token: temperature (0 → greedy), truncation, and the randomness key.
struct SampleSpec {
  float temperature = 0.f;
  float top_p = 1.f;
  int32_t top_k = 0;        ///< ≤ 0 → off
  float min_p = 0.f;
  uint64_t seed = 0;
  int32_t seq_index = 0;    ///< index within the request (n > 1 draws differ by it)
  int32_t step = 0;         ///< tokens the sequence generated before this one
};

/// True when the device sampler cannot honour `p` exactly (penalties, logit bias, min_tokens,
/// logprobs, a logits processor): such steps must sample on the host from execute_logits().
inline bool needs_host_sampling(const sched::SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f ||
         !p.logit_bias.empty() || p.min_tokens > 0 || p.logprobs.has_value() || p.logits_processor != nullptr;
}

/// \brief Where a step's draws can be sampled: on the device; on the device after token
/// bitmasks (every processor of the step is a sched::TokenMaskProcessor and nothing else needs
/// the host); on the device with its full inputs (penalties, logit_bias, min_tokens, logprobs:
/// the runner's execute_sample_full, no logits processor in the step); or on the host.
enum class SampleMode { Device, DeviceMasked, DeviceFull, Host };

inline SampleMode plan_sample_mode(const sched::Scheduler& sch, const sched::StepPlan& plan) {
  bool masked = false, full = false;
  for (int32_t seq : plan.sample_seqs) {
    const sched::SamplingParams& p = sch.plan_sequence(seq).request->params;
    if (!needs_host_sampling(p)) continue;
    if (!p.logits_processor) {
      full = true;
      continue;
    }
    const bool only_mask = p.logits_processor && dynamic_cast<const sched::TokenMaskProcessor*>(p.logits_processor.get()) &&
                           p.repetition_penalty == 1.0f && p.frequency_penalty == 0.0f && p.presence_penalty == 0.0f &&
                           p.logit_bias.empty() && p.min_tokens == 0 && !p.logprobs.has_value();
    if (!only_mask) return SampleMode::Host;
    masked = true;
  }
  if (masked && full) return SampleMode::Host;  // no device path applies both
  return full ? SampleMode::DeviceFull : masked ? SampleMode::DeviceMasked : SampleMode::Device;
}

/// True when some request sampled in `plan` needs the host sampler (needs_host_sampling): the
/// whole step then samples on the host.
inline bool plan_needs_host_sampling(const sched::Scheduler& sch, const sched::StepPlan& plan) {
  for (int32_t seq : plan.sample_seqs)
    if (needs_host_sampling(sch.plan_sequence(seq).request->params)) return true;
  return false;
}

/// One SampleSpec per token the plan samples (sample order, n > 1 draws consecutive).
/// `default_seed(request_id)` gives the seed of unseeded requests.
template <class SeedFn>
std::vector<SampleSpec> sample_specs(const sched::Scheduler& sch, const sched::StepPlan& plan, SeedFn&& default_seed) {
  std::vector<SampleSpec> out;
  out.reserve(plan.sample_seqs.size());
  for (size_t j = 0; j < plan.sample_seqs.size(); ++j) {
    const sched::Sequence& s = sch.plan_sequence(plan.sample_seqs[j]);
    const sched::SamplingParams& p = s.request->params;
    const int count = plan.draws_of(j);
    for (int k = 0; k < count; ++k) {
      SampleSpec sp;
      sp.temperature = p.temperature;
      sp.top_p = p.top_p;
      sp.top_k = p.top_k;
      sp.min_p = p.min_p;
      sp.seed = p.seed ? *p.seed : default_seed(s.request->id);
      sp.seq_index = count > 1 ? k : s.index;
      // Tokens generated before this draw: the known ones, plus the placeholders of plans in
      // flight before this one (pending counts this plan's own sample too).
      sp.step = s.num_output_tokens() + s.pending - 1;
      out.push_back(sp);
    }
  }
  return out;
}

}  // namespace pie::engine
