#pragma once
/// \file rope_scaling.hpp
/// \brief RopeScaling: how RoPE's frequencies are scaled (HF `rope_scaling`: none, linear,
/// llama3, yarn). The RoPE ops read it; model/config.hpp holds one per model (as
/// model::RopeScaling) and model/config_io.hpp parses it, so it sits in ops, below the model.
#include <cstdint>

namespace pie::ops {

/// \brief RoPE frequency scaling (HF `rope_scaling`).
struct RopeScaling {
  enum class Type { None, Linear, Llama3, Yarn } type = Type::None;
  double factor = 1.0;
  double low_freq_factor = 1.0;                 ///< llama3
  double high_freq_factor = 4.0;                ///< llama3
  int64_t original_max_position_embeddings = 0; ///< llama3, yarn
  double beta_fast = 32.0;                      ///< yarn
  double beta_slow = 1.0;                       ///< yarn
  double attention_factor = 0.0;                ///< yarn mscale (0 → derived from factor)
};

}  // namespace pie::ops
