#pragma once
/// \file fp8_gemm_cutlass_path.cuh
/// \brief Fp8CutlassPath: the block-scaled fp8 GEMM on CUTLASS (fp8_gemm_cutlass.cuh) behind an
/// interface, so that the engine's translation units never include CUTLASS (the pattern of
/// moe_cutlass_path.cuh: one translation unit defines make_fp8_cutlass_path, the one that
/// includes fp8_gemm_cutlass.cuh with PIE_FP8_CUTLASS_DEFINE_PATH defined; pie's CMake generates
/// it into the pie_cuda_moe_cutlass library when -DPIE_FP8_CUTLASS and -DPIE_MOE_CUTLASS are on,
/// and then defines PIE_FP8_CUTLASS for the engine). Fp8Gemm (fp8_gemm.cuh) holds one and gives it the products
/// it takes (takes()); the others stay on cuBLASLt.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace pie::ops::cuda {

/// \brief y (bf16, row stride ldy) [mp, n] = q(x)·dq(W)ᵀ on CUTLASS's SM90 blockwise kernel, for
/// 128×128 weight blocks and 1×128 activation groups in Fp8Gemm's layouts (fp8_gemm_cutlass.cuh).
class Fp8CutlassPath {
 public:
  virtual ~Fp8CutlassPath() = default;
  /// Whether run() takes this product: weight rows n and K multiples of 128, the weight scales'
  /// row stride exactly k / 128, mp a multiple of 4 in the path's row range, ldy a multiple of 8.
  virtual bool takes(int64_t mp, int64_t n, int64_t k, int64_t w_scale_ld, int64_t ldy) const = 0;
  /// The product (takes() must hold). w: e4m3 [n, k]; w_scale [n/128][k/128]; xq: e4m3 [mp, k];
  /// x_scale [k/128][mp]; y: bf16.
  virtual void run(const void* w, const float* w_scale, const void* xq, const float* x_scale, void* y, int64_t ldy,
                   int64_t n, int64_t k, int64_t mp, cudaStream_t stream) = 0;
  /// Device bytes the path holds (its workspace).
  virtual size_t bytes() const = 0;
};

/// The path, taking activations of 2 to `max_rows` rows (set up eagerly, outside graph capture).
/// Defined once per program (file comment).
std::unique_ptr<Fp8CutlassPath> make_fp8_cutlass_path(int64_t max_rows);

}  // namespace pie::ops::cuda
