#pragma once
/// \file fp8_gemm_cutlass.cuh
/// \brief The block-scaled fp8 GEMM of Fp8Gemm (fp8_gemm.cuh) on CUTLASS's SM90 kernel for
/// 128×128 weight blocks and 1×128 activation groups (`KernelTmaWarpSpecializedCooperativeFP8Blockwise`:
/// TMA-loaded e4m3 tiles, wgmma, each 128-wide K block's partial sums promoted to f32 with its
/// two scales), for the M of decode steps.
///
/// Why: cuBLASLt offers one algorithm for the block-scaled fp8 matmul on Hopper (cuBLAS 13,
/// H100, 2026-12-06, `pie_bench_cuda_gemm_algos`), and it has a floor of ~24 µs whatever the
/// shape: Qwen3-8B's o_proj (4096 × 4096) takes 24.6 µs at M = 64 and 25.5 µs at M = 512 (16.8 MB
/// of weights: 0.7 TB/s at M = 64), qkv 37 µs at M = 512 (695 TFLOP/s). The fp8 decode step
/// spends ~200 µs a layer in these GEMMs at batch 512.
///
/// Operands as cuBLASLt takes them (so the producers' activation layout is unchanged): the
/// problem is computed as yᵀ [N, M] = W [N, K]·xᵀ, i.e. CUTLASS's A = W (row-major, K
/// contiguous), B = x (its codes [Mp, K], K contiguous: column-major K × Mp), D = yᵀ column-major
/// with leading dimension ldy (= y row-major). Scales: W's [ceil(N/128)][ceil(K/128)] (K-major;
/// the row stride must be exactly ceil(K/128)), x's [ceil(K/128)][Mp] (tokens adjacent:
/// MN-major), so Mp (the padded rows, a multiple of 4) is the problem's N.
///
/// Heavy to compile: include it in one translation unit (fp8_gemm_cutlass_path.cuh says how).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace pie::ops::cuda::fp8_cutlass {

/// \brief One compiled configuration: a CTA tile of 128 weight rows × TileTokens activation rows
/// × 128 K, the cooperative (two consumer warpgroups) schedule, and a persistent (`kStreamK`
/// false) or stream-K tile scheduler.
template <int TileTokens, bool kStreamK>
struct BlockGemm {
  using ElementA = cutlass::float_e4m3_t;
  using ElementB = cutlass::float_e4m3_t;
  using ElementD = cutlass::bfloat16_t;
  using LayoutA = cutlass::layout::RowMajor;     // W [N, K]
  using LayoutB = cutlass::layout::ColumnMajor;  // x [Mp, K] as K × Mp
  using LayoutD = cutlass::layout::ColumnMajor;  // yᵀ [N, Mp]: y row-major
  static constexpr int kAlignAB = 16, kAlignD = 8;
  using TileShape = cute::Shape<cute::_128, cute::Int<TileTokens>, cute::_128>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using ScaleConfig =
      cutlass::detail::Sm90BlockwiseScaleConfig<128, 1, 128, cute::GMMA::Major::K, cute::GMMA::Major::MN>;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD, kAlignD, ElementD, LayoutD,
      kAlignD, cutlass::epilogue::TmaWarpSpecializedCooperative,
      cutlass::epilogue::fusion::LinearCombination<ElementD, float, void, float>>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, cute::tuple<LayoutA, LayoutSFA>, kAlignAB,
      ElementB, cute::tuple<LayoutB, LayoutSFB>, kAlignAB, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise>::CollectiveOp;
  using Scheduler = std::conditional_t<kStreamK, cutlass::gemm::StreamKScheduler, cutlass::gemm::PersistentScheduler>;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const void* w, const float* w_scale, const void* xq, const float* x_scale,
                                            void* y, int64_t ldy, int n, int k, int mp) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    // Packed K-major A and B (row stride K), column-major D whose column j (token j) starts at
    // j · ldy; the batch mode (L = 1) is never stepped.
    StrideA sa{};
    cute::get<0>(sa) = k;
    cute::get<2>(sa) = int64_t(n) * k;
    StrideB sb{};
    cute::get<0>(sb) = k;
    cute::get<2>(sb) = int64_t(mp) * k;
    StrideD sd{};
    cute::get<1>(sd) = ldy;
    cute::get<2>(sd) = int64_t(mp) * ldy;
    const auto problem = cute::make_shape(n, mp, k, 1);
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        problem,
        {static_cast<const ElementA*>(w), sa, static_cast<const ElementB*>(xq), sb, w_scale,
         ScaleConfig::tile_atom_to_shape_SFA(problem), x_scale, ScaleConfig::tile_atom_to_shape_SFB(problem)},
        {{1.f, 0.f}, nullptr, sd, static_cast<ElementD*>(y), sd}};
    return args;
  }
};

}  // namespace pie::ops::cuda::fp8_cutlass

#if defined(PIE_FP8_CUTLASS_DEFINE_PATH)
#include <algorithm>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/ops/cuda/fp8_gemm_cutlass_path.cuh"

namespace pie::ops::cuda {
namespace fp8_cutlass {

/// The engine's path takes activations of up to kMaxRows rows (padded), on 128 × 64 tiles and the
/// persistent scheduler: there it beat cuBLASLt on an H100 (bench/cuda/bench_fp8_cutlass.cu,
/// 2026-12-06: qkv 1.14×, o 1.17×, gate_up 1.03×, down 0.92–0.99× at M = 64–128), and lost above
/// (128 × 64 and 128 × 128 tiles 0.54–0.96× at M ≥ 256, except o). Larger products stay on cuBLASLt.
inline constexpr int64_t kMaxRows = 128;

class Path final : public Fp8CutlassPath {
 public:
  explicit Path(int64_t max_rows) : max_rows_(std::min(max_rows, kMaxRows)), work_(kWorkspaceBytes) {}

  bool takes(int64_t mp, int64_t n, int64_t k, int64_t w_scale_ld, int64_t ldy) const override {
    return mp >= 2 && mp <= max_rows_ && mp % 4 == 0 && n % 128 == 0 && k % 128 == 0 && w_scale_ld == k / 128 &&
           ldy % 8 == 0 && ldy >= n;
  }

  void run(const void* w, const float* w_scale, const void* xq, const float* x_scale, void* y, int64_t ldy, int64_t n,
           int64_t k, int64_t mp, cudaStream_t stream) override {
    auto args = Tile::arguments(w, w_scale, xq, x_scale, y, ldy, static_cast<int>(n), static_cast<int>(k),
                                static_cast<int>(mp));
    PIE_CHECK(gemm_.can_implement(args) == cutlass::Status::kSuccess, "fp8 GEMM (CUTLASS): cannot run n=", n,
              " k=", k, " rows=", mp);
    PIE_CHECK(Tile::Gemm::get_workspace_size(args) <= work_.size(), "fp8 GEMM (CUTLASS): workspace of ",
              Tile::Gemm::get_workspace_size(args), " bytes needed");
    PIE_CHECK(gemm_.run(args, work_.data(), stream) == cutlass::Status::kSuccess,
              "fp8 GEMM (CUTLASS): launch failed for n=", n, " k=", k, " rows=", mp);
  }

  size_t bytes() const override { return work_.size(); }

 private:
  static constexpr size_t kWorkspaceBytes = size_t{4} << 20;
  using Tile = BlockGemm<64, false>;
  int64_t max_rows_;  ///< min(the Fp8Gemm's rows, kMaxRows)
  DeviceBuffer<unsigned char> work_;
  typename Tile::Gemm gemm_;
};

}  // namespace fp8_cutlass

std::unique_ptr<Fp8CutlassPath> make_fp8_cutlass_path(int64_t max_rows) {
  return std::make_unique<fp8_cutlass::Path>(max_rows);
}

}  // namespace pie::ops::cuda
#endif  // PIE_FP8_CUTLASS_DEFINE_PATH
