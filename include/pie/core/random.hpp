#pragma once
/// \file random.hpp
/// \brief Counter-based randomness shared by host and device: splitmix64 and the map from a
/// 64-bit key to a uniform double. No state: a value is a hash of its coordinates, so results
/// do not depend on thread count, batch position or which side (CPU or GPU) computes them.
/// Every function is PIE_HD and compiles in plain C++ and under nvcc alike.
#include <cstdint>

#include "pie/core/host_device.hpp"

namespace pie::rng {

/// \brief splitmix64's mixing function (Steele, Lea & Flood 2014): a bijection of 64-bit words
/// whose output bits each depend on every input bit.
PIE_HD uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// \brief The top 53 bits of `key` as a double in [0, 1) (exact: every value is k / 2^53).
PIE_HD double key_to_uniform(uint64_t key) {
  return static_cast<double>(key >> 11) * (1.0 / 9007199254740992.0);
}

/// \brief The uniform of one sampling draw: splitmix64 chained over (seed, sequence index,
/// step). The CPU Sampler and the GPU sampling kernel both draw with it, so a seeded request
/// sees the same u on either backend, alone or batched.
PIE_HD double sample_uniform(uint64_t seed, int seq_index, int64_t step) {
  uint64_t x = splitmix64(seed ^ 0x9e3779b97f4a7c15ull);
  x = splitmix64(x ^ (static_cast<uint64_t>(seq_index) + 0x632be59bd9b4e019ull));
  x = splitmix64(x ^ (static_cast<uint64_t>(step) + 0x85ebca6b27d4eb2full));
  return key_to_uniform(x);
}

}  // namespace pie::rng
