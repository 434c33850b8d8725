#pragma once
/// \file moe_cutlass.cuh
/// \brief The MoE block's grouped expert products through CUTLASS's SM90 grouped GEMM (wgmma
/// operands loaded by TMA, warp-specialized pingpong, persistent group scheduler): an opt-in
/// alternative to moe_grouped_gemm.cuh's mma.sync kernel for the large-batch steps, compiled
/// only with -DPIE_MOE_CUTLASS=ON (CUTLASS's headers, nvidia-cutlass on PyPI) and taken at run
/// time above the GEMV path's batch sizes unless PIE_MOE_GEMM=mma (CudaForward::moe). The
/// engine reaches it through MoeCutlassPath (moe_cutlass_path.cuh), defined below in the one
/// translation unit that defines PIE_MOE_CUTLASS_DEFINE_PATH.
///
/// Per call, after moe_route (moe_routing.cuh), on one stream, no host sync, fixed addresses:
/// 1. moe_cutlass_prepare_kernel: gathers x's rows through the routing's permutation into the
///    grouped order xg [n·k, H] (TMA cannot gather rows; xg lives in the workspace's y, unused
///    until the down product), and writes both products' per-expert problem shapes and pointers
///    (moe_group_plan.hpp's group(), the same function the CPU test checks).
/// 2. gate_up: h [n·k, 2I] = xg·gate_upᵀ per expert, rounded to T (as transformers' gate and up
///    linear outputs).
/// 3. moe_swiglu_kernel: act = T(silu(gate))·up from h, rounded as swiglu_rounded: the mma
///    kernel fuses this into its epilogue because its weight tile interleaves gate and up rows;
///    CUTLASS's epilogue is per element, so here it is a separate pass over h (25 MB at the 30B
///    shape, batch 1024: ~10 µs a layer against the ~190 µs weight floor).
/// 4. down: y [n·k, H] = act·downᵀ per expert. The un-permute (moe_unpermute.cuh) follows.
///
/// Tiles: 64 rows × kMoeCutlassTileN columns × 64 K, one consumer warpgroup per tile and two
/// per CTA taking turns (pingpong: one's epilogue under the other's mainloop). At batch 1024
/// every expert holds ~64 of the 8192 grouped rows, so one 64-row tile column reads each weight
/// tile once; the scheduler walks along M first (RasterOrder::AlongM), so an expert with more
/// than 64 rows reads a weight tile for its second M tile while the first's copy is in L2.
///
/// The CUTLASS kernels are launched without programmatic dependent launch (CUTLASS's SM90
/// kernels only wait on their predecessor with CUTLASS_ENABLE_GDC_FOR_SM90), so each waits for
/// the previous kernel in full; the kernels after them use pdl_wait, which waits for the
/// CUTLASS grid to complete.
#if !defined(PIE_MOE_CUTLASS)
#error "moe_cutlass.cuh is compiled only with -DPIE_MOE_CUTLASS=ON (it needs CUTLASS's headers)"
#endif
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/core/tensor.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/moe.cuh"
#include "pie/ops/cuda/moe_cutlass_path.cuh"
#include "pie/ops/cuda/moe_group_plan.hpp"

namespace pie::ops::cuda {

inline constexpr int kMoeCutlassTileM = 64;   ///< rows of the engine's tile: one consumer warpgroup's wgmma m64
inline constexpr int kMoeCutlassTileN = 128;  ///< columns of the engine's tile (the kernel bench also times 256)
inline constexpr int kMoeCutlassTileK = 64;   ///< K per stage: 128 bytes of bf16, TMA's 128-byte swizzle

namespace detail {

/// \brief The CUTLASS grouped GEMM of both products: bf16 A [m, k] row-major times B [n, k]
/// (K-major), fp32 accumulation, bf16 D [m, n] row-major, no C operand (β = 0); tiles of
/// TileM × TileN × kMoeCutlassTileK. TileM 64: pingpong (each consumer warpgroup its own tile,
/// taking turns); TileM 128: cooperative (both warpgroups on one tile, 64 rows each), which
/// reads an expert's weight tile once for up to 128 rows without relying on L2, at the price of
/// padding most 64-row experts to 128 (compute, not bytes: TMA fills rows past M with zeros
/// without reading them).
template <int TileN, int TileM = kMoeCutlassTileM>
struct MoeCutlassGemm {
  static_assert(TileM == 64 || TileM == 128, "tiles of 64 (pingpong) or 128 (cooperative) rows");
  static constexpr bool kPingpong = TileM == 64;
  using KernelSchedule = std::conditional_t<kPingpong, cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                                            cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>;
  using EpilogueSchedule = std::conditional_t<kPingpong, cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong,
                                              cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
  using Element = cutlass::bfloat16_t;
  using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlign = 8;  // elements per 16-byte TMA chunk
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::Int<kMoeCutlassTileK>>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD*, kAlign, Element, LayoutD*,
      kAlign, EpilogueSchedule, cutlass::epilogue::fusion::LinearCombination<Element, float, void, float>>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlign, Element, LayoutB*, kAlign,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
  using Shape3 = typename ProblemShape::UnderlyingProblemShape;

  // moe_group_plan.hpp lays the arrays out with these sizes.
  static_assert(sizeof(Shape3) == 3 * sizeof(int32_t), "a problem shape is three int32");
  static_assert(sizeof(StrideA) == 8 && sizeof(StrideB) == 8 && sizeof(StrideD) == 8,
                "a stride is one int64 (Stride<int64_t, _1, _0>)");
  static_assert(Kernel::SharedStorageSize <= 227 * 1024, "shared memory past the SM90 227 KB opt-in limit");
};

/// Operands of moe_cutlass_prepare_kernel.
template <class T>
struct MoePrepareParams {
  const T* x;          ///< [n, H], row stride ldx
  int64_t ldx;
  T* xg;               ///< [n·k, H] contiguous: the gathered rows
  const int32_t* perm;     ///< token of each grouped row
  const int32_t* offsets;  ///< [E + 1]
  int rows, E, H, I;
  const T* w[2];       ///< gate_up [E, 2I, H], down [E, H, I]
  const T* a[2];       ///< xg, act
  T* d[2];             ///< h, y
  int32_t* shapes[2];  ///< [E][3]
  const void** ptr_a[2];
  const void** ptr_b[2];
  void** ptr_d[2];
};

/// Step 1 (see file comment): one warp per grouped row copies x[perm[r]] to xg[r] in 16-byte
/// chunks; block 0's first E threads also write expert e's group of both products.
template <class T>
__global__ void __launch_bounds__(256) moe_cutlass_prepare_kernel(const __grid_constant__ MoePrepareParams<T> p) {
  pdl_wait();  // perm and offsets are moe_route's
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (blockIdx.x == 0) {
    for (int e = threadIdx.x; e < p.E; e += blockDim.x) {
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const moe_group::Group g = moe_group::group(static_cast<moe_group::Product>(q), e, p.offsets, p.H, p.I);
        p.shapes[q][3 * e] = g.m;
        p.shapes[q][3 * e + 1] = g.n;
        p.shapes[q][3 * e + 2] = g.k;
        p.ptr_a[q][e] = p.a[q] + g.a;
        p.ptr_b[q][e] = p.w[q] + g.b;
        p.ptr_d[q][e] = p.d[q] + g.d;
      }
    }
  }
  const int r = blockIdx.x * 8 + warp;
  if (r < p.rows) {
    const uint4* src = reinterpret_cast<const uint4*>(p.x + static_cast<int64_t>(__ldg(&p.perm[r])) * p.ldx);
    uint4* dst = reinterpret_cast<uint4*>(p.xg + static_cast<int64_t>(r) * p.H);
    for (int c = lane; c < p.H / 8; c += 32) dst[c] = src[c];
  }
  pdl_launch_dependents();
}

/// Step 3 (see file comment): act[r, j] = T(silu(h[r, j]))·h[r, I + j], 8 columns a thread.
template <class T>
__global__ void __launch_bounds__(256) moe_swiglu_kernel(const T* __restrict__ h, T* __restrict__ act, int rows, int I) {
  pdl_wait();  // h is the gate_up product's
  const int per_row = I / 8;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < static_cast<int64_t>(rows) * per_row) {
    const int64_t r = i / per_row;
    const int c = static_cast<int>(i % per_row) * 8;
    float g[8], u[8], o[8];
    load8(h + r * 2 * I + c, g);
    load8(h + r * 2 * I + I + c, u);
#pragma unroll
    for (int j = 0; j < 8; ++j) o[j] = swiglu_rounded<T>(g[j], u[j]);
    store8(act + r * I + c, o);
  }
  pdl_launch_dependents();
}

}  // namespace detail

/// \brief The CUTLASS path's state for one MoE workspace: h [max_rows, 2I], the group argument
/// arrays, CUTLASS's workspace (per-SM TMA descriptors) and both products' initialized GEMMs.
/// Everything is set up once, outside any graph capture: a call only launches kernels, whose
/// parameters hold these fixed addresses. bf16 only (the compiled CUDA policy).
template <class T, int TileN = kMoeCutlassTileN, int TileM = kMoeCutlassTileM>
class MoeCutlass final : public MoeCutlassPath<T> {
  using G = detail::MoeCutlassGemm<TileN, TileM>;
  using Gemm = typename G::Gemm;
  using Element = typename G::Element;
  using Shape3 = typename G::Shape3;
  using StrideA = typename G::StrideA;
  using StrideB = typename G::StrideB;
  using StrideD = typename G::StrideD;

 public:
  MoeCutlass(MoeWorkspace<T>& ws, int max_tokens)
      : E_(ws.num_experts()), H_(ws.hidden()), I_(ws.inter()),
        layout_(moe_group::args_layout(ws.num_experts(), sizeof(StrideA))) {
    static_assert(std::is_same_v<device_t<T>, __nv_bfloat16>, "the CUTLASS MoE path is instantiated for bf16");
    PIE_CHECK(H_ % 8 == 0 && I_ % 8 == 0, "moe (cutlass): hidden ", H_, " and expert width ", I_,
              " must be multiples of 8 (16-byte TMA rows)");
    const size_t max_rows = static_cast<size_t>(max_tokens) * ws.top_k();
    h_ = DeviceBuffer<T>(moe_group::h_elems(max_rows, I_));
    args_ = DeviceBuffer<uint8_t>(layout_.bytes);
    PIE_CUDA_CHECK(cudaMemset(args_.data(), 0, layout_.bytes));
    std::vector<uint8_t> host(layout_.bytes, 0);
    for (int q = 0; q < 2; ++q) {  // the strides: the same for every group of a product
      const moe_group::Leading ld = moe_group::leading(static_cast<moe_group::Product>(q), H_, I_);
      for (int e = 0; e < E_; ++e) {
        reinterpret_cast<StrideA*>(host.data() + layout_.stride_a[q])[e] = StrideA{ld.a, {}, {}};
        reinterpret_cast<StrideB*>(host.data() + layout_.stride_b[q])[e] = StrideB{ld.b, {}, {}};
        reinterpret_cast<StrideD*>(host.data() + layout_.stride_d[q])[e] = StrideD{ld.d, {}, {}};
      }
    }
    PIE_CUDA_CHECK(cudaMemcpy(args_.data(), host.data(), layout_.bytes, cudaMemcpyHostToDevice));
    cutlass::KernelHardwareInfo hw;
    PIE_CUDA_CHECK(cudaGetDevice(&hw.device_id));
    hw.sm_count = num_sms();
    for (int q = 0; q < 2; ++q) {
      auto args = arguments(q, hw);
      PIE_CHECK(gemm_[q].can_implement(args) == cutlass::Status::kSuccess,
                "moe (cutlass): the grouped GEMM cannot run product ", q, " (H ", H_, ", I ", I_, ")");
      work_[q] = DeviceBuffer<uint8_t>(std::max<size_t>(Gemm::get_workspace_size(args), 16));
      PIE_CHECK(gemm_[q].initialize(args, work_[q].data()) == cutlass::Status::kSuccess,
                "moe (cutlass): initializing the grouped GEMM of product ", q, " failed");
    }
    PIE_CUDA_CHECK(cudaDeviceSynchronize());  // the workspaces are ready before any stream uses them
  }
  size_t bytes() const override { return h_.size() * sizeof(T) + layout_.bytes + work_[0].size() + work_[1].size(); }

  /// Steps 1–3 of the file comment: gather + group arrays, gate_up, SwiGLU into ws.act().
  void gate_up(TensorView<T> x, TensorView<T> w_gate_up, TensorView<T> w_down, MoeWorkspace<T>& ws,
               cudaStream_t s) override {
    const int n = static_cast<int>(x.shape[0]);
    if (n == 0) return;
    prepare(x, w_gate_up, w_down, ws, s);
    product(0, s);
    swiglu(n, ws, s);
  }
  /// Step 4: y = act·downᵀ per expert (gate_up wrote its group arrays).
  void down(int n, cudaStream_t s) override {
    if (n > 0) product(1, s);
  }

  /// The stages one by one (the kernel bench times them apart). Step 1: the gathered rows and
  /// both products' group arrays.
  void prepare(TensorView<T> x, TensorView<T> w_gate_up, TensorView<T> w_down, MoeWorkspace<T>& ws, cudaStream_t s) {
    const int n = static_cast<int>(x.shape[0]), rows = n * ws.top_k();
    check(x, w_gate_up, w_down, ws);
    using D = device_t<T>;
    detail::MoePrepareParams<D> p{};
    p.x = dev(x.data);
    p.ldx = x.stride[0];
    p.xg = dev(ws.y());
    p.perm = ws.routing().perm;
    p.offsets = ws.routing().offsets;
    p.rows = rows;
    p.E = E_;
    p.H = H_;
    p.I = I_;
    p.w[0] = dev(w_gate_up.data);
    p.w[1] = dev(w_down.data);
    p.a[0] = dev(ws.y());
    p.a[1] = dev(ws.act());
    p.d[0] = dev(h_.data());
    p.d[1] = dev(ws.y());
    for (int q = 0; q < 2; ++q) {
      p.shapes[q] = reinterpret_cast<int32_t*>(args_.data() + layout_.shapes[q]);
      p.ptr_a[q] = reinterpret_cast<const void**>(args_.data() + layout_.ptr_a[q]);
      p.ptr_b[q] = reinterpret_cast<const void**>(args_.data() + layout_.ptr_b[q]);
      p.ptr_d[q] = reinterpret_cast<void**>(args_.data() + layout_.ptr_d[q]);
    }
    launch_pdl(detail::moe_cutlass_prepare_kernel<D>, dim3((rows + 7) / 8), dim3(256), 0, s, p);
  }
  /// One grouped product: q = 0 gate_up (xg → h), 1 down (act → y), over prepare's group arrays.
  void product(int q, cudaStream_t s) {
    PIE_CHECK(gemm_[q].run(s) == cutlass::Status::kSuccess, "moe (cutlass): launching the grouped GEMM failed");
    PIE_CUDA_CHECK_LAUNCH();
  }
  /// Step 3: act = T(silu(gate))·up from h, for n tokens' rows.
  void swiglu(int n, MoeWorkspace<T>& ws, cudaStream_t s) {
    using D = device_t<T>;
    const int rows = n * ws.top_k();
    const int64_t threads = static_cast<int64_t>(rows) * (I_ / 8);
    launch_pdl(detail::moe_swiglu_kernel<D>, dim3(static_cast<unsigned>((threads + 255) / 256)), dim3(256), 0, s,
               static_cast<const D*>(dev(h_.data())), dev(ws.act()), rows, I_);
  }

 private:
  typename Gemm::Arguments arguments(int q, const cutlass::KernelHardwareInfo& hw) {
    uint8_t* b = args_.data();
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGrouped,
        {E_, reinterpret_cast<Shape3*>(b + layout_.shapes[q]), nullptr},
        {reinterpret_cast<const Element**>(b + layout_.ptr_a[q]), reinterpret_cast<StrideA*>(b + layout_.stride_a[q]),
         reinterpret_cast<const Element**>(b + layout_.ptr_b[q]), reinterpret_cast<StrideB*>(b + layout_.stride_b[q])},
        {{}, nullptr, nullptr, reinterpret_cast<Element**>(b + layout_.ptr_d[q]),
         reinterpret_cast<StrideD*>(b + layout_.stride_d[q])},
        hw};
    args.epilogue.thread.alpha = 1.f;
    args.epilogue.thread.beta = 0.f;
    args.scheduler.raster_order = decltype(args.scheduler.raster_order)::AlongM;
    return args;
  }
  void check(TensorView<T> x, TensorView<T> gu, TensorView<T> dn, const MoeWorkspace<T>& ws) const {
    PIE_CHECK(ws.num_experts() == E_ && ws.hidden() == H_ && ws.inter() == I_ && x.rank == 2 && x.shape[1] == H_ &&
                  gu.rank == 3 && gu.shape[0] == E_ && gu.shape[1] == 2 * I_ && gu.shape[2] == H_ && dn.rank == 3 &&
                  dn.shape[0] == E_ && dn.shape[1] == H_ && dn.shape[2] == I_,
              "moe (cutlass): x, weights and workspace do not agree (E ", E_, ", H ", H_, ", I ", I_, ")");
    PIE_CHECK(static_cast<size_t>(x.shape[0]) * ws.top_k() * 2 * I_ <= h_.size(),
              "moe (cutlass): ", x.shape[0], " tokens exceed the path's scratch");
    check_rows8(x, "moe (cutlass): x");
    PIE_CHECK(gu.contiguous() && dn.contiguous() && vec8_aligned(gu.data) && vec8_aligned(dn.data),
              "moe (cutlass): expert weights must be contiguous and 16-byte aligned");
  }

  int E_, H_, I_;
  moe_group::ArgsLayout layout_;
  DeviceBuffer<T> h_;
  DeviceBuffer<uint8_t> args_;
  DeviceBuffer<uint8_t> work_[2];
  Gemm gemm_[2];
};

/// \brief The experts of a routed call through the CUTLASS path: MoeCutlass's gate_up and down,
/// then the weighted un-permute (the same kernel as the default path). moe_route ran on the same
/// stream before.
template <class T, int TileN, int TileM>
void moe_experts_cutlass(TensorView<T> x, TensorView<T> gate_up, TensorView<T> down, MoeWorkspace<T>& ws,
                         MoeCutlass<T, TileN, TileM>& path, TensorView<T> out, cudaStream_t stream) {
  const int n = static_cast<int>(x.shape[0]);
  if (n == 0) return;
  const MoeExperts<T> ex(x, gate_up, down, ws, out, false);  // checks the shapes; its un-permute
  path.gate_up(x, gate_up, down, ws, stream);
  path.down(n, stream);
  ex.unpermute(stream);
}

}  // namespace pie::ops::cuda

#if defined(PIE_MOE_CUTLASS_DEFINE_PATH)
// The engine's CUTLASS path (moe_cutlass_path.cuh): compiled in exactly one translation unit.
namespace pie::ops::cuda {
std::unique_ptr<MoeCutlassPath<bf16>> make_moe_cutlass_path(MoeWorkspace<bf16>& ws, int max_tokens) {
  return std::make_unique<MoeCutlass<bf16>>(ws, max_tokens);
}
}  // namespace pie::ops::cuda
#endif
