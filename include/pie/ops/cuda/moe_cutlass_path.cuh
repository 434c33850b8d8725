#pragma once
/// \file moe_cutlass_path.cuh
/// \brief MoeCutlassPath: the CUTLASS grouped-GEMM path of the MoE experts (moe_cutlass.cuh)
/// behind an interface, so that the engine's translation units never include CUTLASS.
///
/// CUTLASS's SM90 grouped GEMM costs ~30 s of nvcc per translation unit that instantiates it.
/// Every TU that builds the engine (the pie program, pie_bench, each GPU test) would pay that,
/// so the engine holds this interface and one TU defines make_moe_cutlass_path: the one that
/// includes moe_cutlass.cuh with PIE_MOE_CUTLASS_DEFINE_PATH defined (stb-style, so pie stays
/// header-only). pie's CMake generates that TU into the pie_cuda_moe_cutlass library when
/// -DPIE_MOE_CUTLASS is on (the default when CUTLASS's headers are found); a program built
/// without CMake compiles it itself:
///
///     #define PIE_MOE_CUTLASS_DEFINE_PATH
///     #include "pie/ops/cuda/moe_cutlass.cuh"
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "pie/core/dtype.hpp"
#include "pie/core/tensor.hpp"
#include "pie/ops/cuda/moe_routing.cuh"

namespace pie::ops::cuda {

/// \brief The CUTLASS path's state for one MoE workspace (MoeCutlass<bf16> at the engine's tile):
/// what CudaForward::moe calls between moe_route and the un-permute.
template <class T>
class MoeCutlassPath {
 public:
  virtual ~MoeCutlassPath() = default;
  /// Gather + group arrays, the gate_up grouped GEMM, SwiGLU into ws.act() (x: [n, H]).
  virtual void gate_up(TensorView<T> x, TensorView<T> w_gate_up, TensorView<T> w_down, MoeWorkspace<T>& ws,
                       cudaStream_t s) = 0;
  /// y = act·downᵀ per expert, for n tokens' rows (gate_up wrote the group arrays).
  virtual void down(int n, cudaStream_t s) = 0;
  /// Device bytes the path holds.
  virtual size_t bytes() const = 0;
};

/// The path for `ws`, scratch for up to `max_tokens` tokens; set up eagerly (outside graph
/// capture). Defined once per program (file comment); bf16, the compiled CUDA policy's type.
std::unique_ptr<MoeCutlassPath<bf16>> make_moe_cutlass_path(MoeWorkspace<bf16>& ws, int max_tokens);

}  // namespace pie::ops::cuda
