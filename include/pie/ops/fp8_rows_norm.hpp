#pragma once
/// \file fp8_rows_norm.hpp
/// \brief At how many rows the fp8 weight-only rows GEMV takes the residual add + RMSNorm before
/// it into its prologue (Fp8Gemm::fuses_norm, ops/cuda/fp8_gemm.cuh). Plain C++, so that the rule
/// and its parsing are tested on the CPU.
#include "pie/core/env_switch.hpp"
#include "pie/core/error.hpp"

namespace pie::ops {

/// The most rows whose norm the rows GEMV fuses by default: 2. One H100 (2026-12-07, twenty-sixth
/// session), Qwen3-8B fp8 decode step, the standalone norm → the fused one, three runs each:
/// batch 2 4.13 → 4.10 ms (per channel), 4.36 → 4.18 (128 × 128 blocks); batch 4 4.94 → 5.05 and
/// 4.98 → 5.03. At 4 rows every CTA's prologue normalises 4 rows before its first weight, which
/// costs more than the launch it saves.
inline constexpr int kFp8RowsNormMaxRowsDefault = 2;

/// The most rows (2–4) whose norm the rows GEMV fuses, 0 for none, from `PIE_FP8_ROWS_NORM`'s
/// value: unset or empty → kFp8RowsNormMaxRowsDefault; 0 → none; 1 → every row count the rows
/// GEMV takes (4; the switch's meaning before it took a count); 2, 3 or 4 → that many; anything
/// else is refused, naming the variable.
inline int fp8_rows_norm_max_rows(const char* value) {
  const int n = env_count("PIE_FP8_ROWS_NORM", value, kFp8RowsNormMaxRowsDefault);
  PIE_CHECK(n <= 4, "PIE_FP8_ROWS_NORM must be 0 (off), 1 (2-4 rows) or the most rows, 2 to 4; got ", n);
  return n == 1 ? 4 : n;
}

}  // namespace pie::ops
