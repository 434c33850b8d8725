#pragma once
/// \file round.hpp
/// \brief Rounding points for the CPU ops: `Exact` keeps every intermediate in float (the CPU
/// backend's own numerics), `RoundTo<T>` rounds it to T where transformers' (and the GPU's)
/// 16-bit tensors round, so the CPU can reproduce a bf16 forward up to summation order.
#include "pie/core/dtype.hpp"

namespace pie::ops::cpu {

/// \brief No rounding: float intermediates.
struct Exact {
  float operator()(float x) const { return x; }
};

/// \brief Rounds to T and back (round to nearest even), where a 16-bit forward stores a tensor.
template <class T>
struct RoundTo {
  float operator()(float x) const { return to_float(from_float<T>(x)); }
};

}  // namespace pie::ops::cpu
