#pragma once
/// \file moe_group_plan.hpp
/// \brief The host-checkable arithmetic of the CUTLASS grouped expert products
/// (moe_cutlass.cuh, opt-in -DPIE_MOE_CUTLASS=ON): what each expert's group of the two
/// products is (problem shape and the element offsets of its A, B and D), the byte layout of
/// the per-group argument arrays that a device kernel fills every call, and the scratch it
/// needs. Plain C++ (no CUDA or CUTLASS types), so a CPU test (tests/ops/test_moe_group_plan.cpp)
/// checks exactly what the device kernel writes: moe_cutlass_prepare_kernel calls group() below.
///
/// Why device-written arrays: CUTLASS's grouped GEMM reads each group's problem shape and
/// pointers from device memory (GroupProblemShape with no host copy), and the expert offsets are
/// the routing kernel's output, on the device. Writing the arrays on the device keeps the step
/// free of host syncs and every address fixed, so decode graphs capture it. The group count is
/// always E; an expert with no rows is a group with M = 0, which CUTLASS's group scheduler gives
/// no tile.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pie/core/error.hpp"

#include "pie/core/host_device.hpp"

namespace pie::ops::cuda::moe_group {

/// The two grouped products of a call: gate_up [rows, 2I] = xg·gate_upᵀ (then SwiGLU → act
/// [rows, I] in a separate kernel), down [rows, H] = act·downᵀ.
enum class Product : int { kGateUp = 0, kDown = 1 };

/// \brief One expert's problem in one product, in elements. A is [m, k] row-major (leading
/// dimension k), B the expert's weight [n, k] row-major (CUTLASS's K-major "column-major" B),
/// D is [m, n] row-major (leading dimension n). `a`, `b`, `d` are element offsets from the
/// product's A, B and D base pointers.
struct Group {
  int32_t m, n, k;
  int64_t a, b, d;
};

/// \brief Expert e's group of product p from the routing's row offsets (offsets[e] is the first
/// grouped row of expert e, offsets[E] the total n·k). Gate_up reads the gathered rows xg
/// [rows, H] and writes h [rows, 2I] (gate columns [0, I), up [I, 2I): the weight's row order);
/// down reads act [rows, I] and writes y [rows, H]. Weights: gate_up [E, 2I, H], down [E, H, I].
PIE_HD Group group(Product p, int e, const int32_t* offsets, int H, int I) {
  const int64_t r0 = offsets[e];
  const int32_t m = offsets[e + 1] - offsets[e];
  if (p == Product::kGateUp) return Group{m, 2 * I, H, r0 * H, int64_t(e) * 2 * I * H, r0 * 2 * I};
  return Group{m, H, I, r0 * I, int64_t(e) * H * I, r0 * H};
}

/// \brief Byte offsets of the per-group argument arrays inside one device buffer, for E groups
/// and both products. Per product: problem shapes [E] of three int32 (CUTLASS's
/// Shape<int,int,int>), pointer arrays A, B, D [E] (8 bytes each), and the stride arrays A, B,
/// D [E] of `stride_bytes` each (CUTLASS's Stride<int64_t, _1, _0>: written once, since every
/// group of a product has the same leading dimensions). Every array starts 16-byte aligned.
struct ArgsLayout {
  size_t shapes[2], ptr_a[2], ptr_b[2], ptr_d[2], stride_a[2], stride_b[2], stride_d[2];
  size_t bytes;  ///< the whole buffer
};

constexpr size_t align16(size_t b) { return (b + 15) / 16 * 16; }

constexpr ArgsLayout args_layout(int E, size_t stride_bytes) {
  ArgsLayout l{};
  size_t o = 0;
  auto take = [&](size_t b) { const size_t at = o; o = align16(o + b); return at; };
  for (int p = 0; p < 2; ++p) {
    l.shapes[p] = take(size_t(E) * 3 * sizeof(int32_t));
    l.ptr_a[p] = take(size_t(E) * 8);
    l.ptr_b[p] = take(size_t(E) * 8);
    l.ptr_d[p] = take(size_t(E) * 8);
    l.stride_a[p] = take(size_t(E) * stride_bytes);
    l.stride_b[p] = take(size_t(E) * stride_bytes);
    l.stride_d[p] = take(size_t(E) * stride_bytes);
  }
  l.bytes = o;
  return l;
}

/// \brief Elements of the path's own scratch for up to `max_rows` grouped rows: h [rows, 2I],
/// the gate_up product before SwiGLU. The gathered rows xg [rows, H] live in the MoE
/// workspace's y, which nothing reads before the down product overwrites it.
constexpr size_t h_elems(size_t max_rows, int I) { return max_rows * 2 * size_t(I); }

/// \brief Leading dimensions (elements) of A, B and D of product p: what the stride arrays hold.
struct Leading {
  int64_t a, b, d;
};
constexpr Leading leading(Product p, int H, int I) {
  return p == Product::kGateUp ? Leading{H, H, 2 * int64_t(I)} : Leading{I, I, H};
}

/// \brief The run-time switch PIE_MOE_GEMM: "mma" takes the mma.sync grouped products
/// (moe_grouped_gemm.cuh), "cutlass" this path above the GEMV batch sizes; unset or empty, the
/// build's default (`fallback`: CUTLASS when it is compiled in). Anything else is an error
/// naming the variable, not a silent fallback.
enum class GemmChoice { kMma, kCutlass };
inline GemmChoice parse_gemm_choice(const char* v, GemmChoice fallback = GemmChoice::kMma) {
  const std::string_view s = v ? v : "";
  if (s.empty()) return fallback;
  if (s == "mma") return GemmChoice::kMma;
  PIE_CHECK(s == "cutlass", "PIE_MOE_GEMM=", s, ": expected mma or cutlass");
  return GemmChoice::kCutlass;
}

}  // namespace pie::ops::cuda::moe_group
