#pragma once
/// \file block_copy.hpp
/// \brief BlockCopy: one KV block copy, src block → dst block (same pool for copy-on-write,
/// device ↔ host for swaps). The block manager emits them; StepPlan carries them to the runner.
#include <cstdint>

namespace pie::kv {

/// \brief A block copy: src block → dst block (same pool, or device↔host for swaps).
struct BlockCopy {
  int32_t src = 0;
  int32_t dst = 0;
  friend bool operator==(const BlockCopy&, const BlockCopy&) = default;
};

}  // namespace pie::kv
