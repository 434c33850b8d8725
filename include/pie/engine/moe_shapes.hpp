#pragma once
/// \file moe_shapes.hpp
/// \brief The MoE op's shape contract, shared by every backend context's moe() (CpuForward,
/// CudaForward): one check, so the backends cannot drift apart on what they accept.
#include <cstdint>

#include "pie/core/error.hpp"

namespace pie::engine {

/// \brief Experts E, hidden width H and expert width I of one MoE call.
struct MoeDims {
  int64_t E = 0, H = 0, I = 0;
};

/// Checks router [E, H], gate_up [E, 2·I, H] (gate rows first), down [E, H, I], out [n, H] not
/// aliasing x [n, H], and returns (E, H, I). Tensor views of any backend (rank, shape, data).
template <class Act, class Weight>
MoeDims check_moe_shapes(const Act& x, const Weight& router, const Weight& gate_up, const Weight& down,
                          const Act& out) {
  const int64_t E = router.shape[0], H = x.shape[1], I = down.rank == 3 ? down.shape[2] : 0;
  PIE_CHECK(router.rank == 2 && router.shape[1] == H && gate_up.rank == 3 && down.rank == 3 &&
                gate_up.shape[0] == E && gate_up.shape[1] == 2 * I && gate_up.shape[2] == H && down.shape[0] == E &&
                down.shape[1] == H && out.shape[1] == H,
            "moe: router [E, H], gate_up [E, 2I, H], down [E, H, I] and out [n, H] do not agree (H = ", H, ")");
  PIE_CHECK(out.data != x.data, "moe: out must not alias x");
  return {E, H, I};
}

}  // namespace pie::engine
