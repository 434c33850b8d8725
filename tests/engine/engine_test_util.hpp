#pragma once
// Test support shared by the engine tests (test_engine): random prompts for the embedded model,
// greedy parameters, and the small CPU engine most of them build.
#include <cstdint>
#include <random>
#include <vector>

#include "pie/engine/engine_options.hpp"
#include "pie/sched/sampling_params.hpp"

namespace pie::test {

/// `len` ids drawn uniformly below the embedded model's special ids.
inline std::vector<int32_t> random_prompt(std::mt19937& g, int len) {
  std::uniform_int_distribution<int32_t> d(0, 499);
  std::vector<int32_t> p(len);
  for (auto& t : p) t = d(g);
  return p;
}

/// Greedy decoding of exactly `max_tokens` tokens (EOS ignored).
inline sched::SamplingParams greedy(int max_tokens) {
  sched::SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  return p;
}

/// The embedded model with 256 KV blocks, max_model_len 256 and one thread.
inline EngineOptions small_options() {
  EngineOptions o;
  o.num_kv_blocks = 256;
  o.sched.max_model_len = 256;
  // One thread: CI runs tests side by side on 2 cores, where an OpenMP barrier waits for a
  // descheduled thread. Thread-count invariance has its own test.
  o.num_threads = 1;
  return o;
}

}  // namespace pie::test
