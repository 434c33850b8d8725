#pragma once
/// \file embedding.hpp
/// \brief Embedding gather: out[t] = table[ids[t]] converted to float.
#include <cstdint>

#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"

namespace pie::ops::cpu {

/// \brief out[t, :] = table[ids[t], :] for t in [0, n).
/// \tparam T table element type (float, f16, bf16)
/// \param table [vocab, hidden] row-major
/// \param out   [n, hidden] float
template <class T>
inline void embedding(const T* table, int vocab, int hidden, const int32_t* ids, int n, float* out) {
  for (int t = 0; t < n; ++t) {
    int32_t id = ids[t];
    PIE_CHECK(id >= 0 && id < vocab, "embedding: token id ", id, " out of [0, ", vocab, ")");
    const T* row = table + static_cast<int64_t>(id) * hidden;
    float* o = out + static_cast<int64_t>(t) * hidden;
    for (int i = 0; i < hidden; ++i) o[i] = to_float(row[i]);
  }
}

}  // namespace pie::ops::cpu
