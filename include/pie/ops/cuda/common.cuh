#pragma once
/// \file common.cuh
/// \brief Shared pieces of the CUDA backend: pie storage types → CUDA types, 8-element vector
/// loads/stores (16 bytes for 2-byte types), warp/block reductions, launch checks.
/// Private to ops/cuda: include pie/cuda.cuh or one op header instead.
// Device buffers and PIE_CUDA_CHECK in core/buffer.hpp exist only under PIE_WITH_CUDA (pie::cuda
// defines it; a TU that includes a CUDA op header without the target gets it here).
#if !defined(PIE_WITH_CUDA)
#define PIE_WITH_CUDA 1
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "pie/core/buffer.hpp"
#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/core/tensor.hpp"

/// Checks the last launch (configuration errors surface here, not at the next sync).
#define PIE_CUDA_CHECK_LAUNCH() PIE_CUDA_CHECK(cudaGetLastError())

namespace pie::ops::cuda {

/// \brief The CUDA type that has the same bits as a pie storage type.
template <class T> struct DeviceType { using type = T; };
template <> struct DeviceType<pie::f16> { using type = __half; };
template <> struct DeviceType<pie::bf16> { using type = __nv_bfloat16; };
template <> struct DeviceType<pie::fp8_e4m3> { using type = __nv_fp8_e4m3; };
template <class T> using device_t = typename DeviceType<T>::type;

/// Reinterprets a pie-typed pointer as its CUDA type (the layouts are bit-identical).
template <class T> inline device_t<T>* dev(T* p) { return reinterpret_cast<device_t<T>*>(p); }
template <class T> inline const device_t<T>* dev(const T* p) { return reinterpret_cast<const device_t<T>*>(p); }

template <class T> inline constexpr bool is_fp8_v = std::is_same_v<T, __nv_fp8_e4m3>;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__nv_fp8_e4m3 x) { return static_cast<float>(x); }

template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __nv_fp8_e4m3 from_f32<__nv_fp8_e4m3>(float x) {
  __nv_fp8_e4m3 r;
  r.__x = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
  return r;
}

/// Raw storage of 8 elements of T: 16 bytes for f16/bf16, 8 for fp8, 32 for float.
template <class T> struct alignas(sizeof(T) * 8) Pack8 { T v[8]; };

/// Widens 8 elements already in registers (paired conversions for f16/bf16/fp8).
template <class T>
__device__ __forceinline__ void widen8(const Pack8<T>& pk, float (&f)[8]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 t = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pk.v[2 * i]));
      f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
  } else if constexpr (std::is_same_v<T, __half>) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 t = __half22float2(*reinterpret_cast<const __half2*>(&pk.v[2 * i]));
      f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
  } else if constexpr (std::is_same_v<T, __nv_fp8_e4m3>) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(*reinterpret_cast<const __nv_fp8x2_storage_t*>(&pk.v[2 * i]), __NV_E4M3);
      float2 t = __half22float2(*reinterpret_cast<const __half2*>(&h));
      f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = to_f32(pk.v[i]);
  }
}

/// One 16-byte load as one LDG.128, kept as 32-bit words until widen_raw8. load8 passes the global
/// Pack8 to widen8 by reference, which nvcc (CUDA 13, sm_90a) compiles to four 4-byte loads, and
/// eight 2-byte values are split right after their load, which waits for it: loops that load
/// several vectors before using them (fp8_producers_v2.cuh) keep the loads in this form.
__device__ __forceinline__ uint4 ld_raw8(const void* p) { return *reinterpret_cast<const uint4*>(p); }

/// widen8 of 8 elements of a 2-byte T loaded by ld_raw8 (the same values as load8).
template <class T>
__device__ __forceinline__ void widen_raw8(const uint4& u, float (&f)[8]) {
  static_assert(sizeof(Pack8<T>) == sizeof(uint4), "widen_raw8: 16-byte vectors of 2-byte types");
  Pack8<T> pk;
  std::memcpy(&pk, &u, sizeof(u));
  widen8(pk, f);
}

/// Loads 8 consecutive elements (one vector instruction) and widens them to float. 2-byte types
/// go through ld_raw8: widening the global Pack8 in place compiled to four 4-byte loads (nvcc 13,
/// sm_90a); the same values either way.
template <class T>
__device__ __forceinline__ void load8(const T* __restrict__ p, float (&f)[8]) {
  if constexpr (sizeof(Pack8<T>) == sizeof(uint4)) {
    widen_raw8<T>(ld_raw8(p), f);
  } else {  // 1-byte types (fp8): one 8-byte load, not four 2-byte ones
    static_assert(sizeof(Pack8<T>) == sizeof(uint2), "load8: 8 elements of 1 or 2 bytes");
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    Pack8<T> pk;
    std::memcpy(&pk, &u, sizeof(u));
    widen8(pk, f);
  }
}

/// Narrows 8 floats (round to nearest even) and stores them with one vector instruction.
template <class T>
__device__ __forceinline__ void store8(T* __restrict__ p, const float (&f)[8]) {
  Pack8<T> pk;
#pragma unroll
  for (int i = 0; i < 8; ++i) pk.v[i] = from_f32<T>(f[i]);
  *reinterpret_cast<Pack8<T>*>(p) = pk;
}

/// Programmatic dependent launch (sm_90). A kernel launched with the programmatic-serialization
/// attribute may start while its predecessor still runs; `pdl_wait()` blocks until the
/// predecessor grid has completed and its writes are visible, so code before it may touch only
/// data no earlier kernel writes (weights). `pdl_launch_dependents()` lets such a successor
/// start now instead of at this grid's exit. Both are no-ops without the attribute.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/// launch_pdl (below) with thread-block clusters of `cluster` CTAs (the grid a multiple of it, at most 8
/// CTAs: the portable size, which needs no kernel attribute); a zero `cluster`: no clusters.
template <class... KernelArgs, class... Args>
inline void launch_pdl_cluster(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                               dim3 cluster, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  attr[1].id = cudaLaunchAttributeClusterDimension;
  attr[1].val.clusterDim.x = cluster.x;
  attr[1].val.clusterDim.y = cluster.y;
  attr[1].val.clusterDim.z = cluster.z;
  cfg.attrs = attr;
  cfg.numAttrs = cluster.x * cluster.y * cluster.z > 0 ? 2 : 1;
  PIE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

/// Launches kernel<<<grid, block, smem, stream>>>(args...) with programmatic dependent launch:
/// the kernel may be scheduled while its predecessor in the stream still runs, so its launch
/// latency hides under the predecessor's tail. The kernel must call `pdl_wait()` before it reads
/// anything a previous kernel wrote and before it writes anything (it may still be read);
/// within a CUDA graph the dependency becomes a programmatic edge.
template <class... KernelArgs, class... Args>
inline void launch_pdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  launch_pdl_cluster(kernel, grid, block, smem, stream, dim3(0, 0, 0), std::forward<Args>(args)...);
}

namespace detail {
/// Moves `bytes` (a multiple of 16, from a 16-byte aligned `p`) into L2 without waiting for them:
/// the copy engine's bulk prefetch on sm_90 (one instruction per range), line prefetches before.
__device__ __forceinline__ void prefetch_l2(const char* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#elif defined(__CUDA_ARCH__)
  for (uint32_t o = 0; o < bytes; o += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
#endif
}
}  // namespace detail

/// 16-byte load of data read once (weights streamed by a GEMV): bypasses L1.
__device__ __forceinline__ uint4 load16_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/// Reduces v over the block with the warp reduction `warp_reduce` (each warp's result through
/// shared memory, then one more warp reduction; the missing warps count as 0); every thread gets
/// the result. `smem` holds ≥ 32 floats.
template <class WarpReduce>
__device__ __forceinline__ float block_reduce(float v, float* smem, WarpReduce warp_reduce) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_reduce(v);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < nw ? smem[lane] : 0.f;
  return warp_reduce(v);
}

/// Sum over the block; every thread gets the result. `smem` holds ≥ 32 floats.
__device__ __forceinline__ float block_sum(float v, float* smem) {
  return block_reduce(v, smem, [](float x) { return warp_sum(x); });
}

/// Largest of v over the block (the missing warps count as 0, so for maxima of values ≥ 0 such as
/// amaxes); every thread gets it. `smem` holds ≥ 32 floats.
__device__ __forceinline__ float block_max(float v, float* smem) {
  return block_reduce(v, smem, [](float x) { return warp_max(x); });
}

/// True when p is aligned for 8-element vector access of T.
template <class T> inline bool vec8_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * 8) == 0;
}

/// Checks a view is on the device and its rows are 8-element vectors.
template <class T> inline void check_rows8(const TensorView<T>& t, const char* what) {
  PIE_CHECK(t.device == Device::Cuda, what, ": tensor must be on the CUDA device");
  PIE_CHECK(t.stride[t.rank - 1] == 1, what, ": innermost dimension must be contiguous");
  PIE_CHECK(t.shape[t.rank - 1] % 8 == 0, what, ": innermost size ", t.shape[t.rank - 1],
            " must be a multiple of 8 (16-byte vectors)");
  PIE_CHECK(vec8_aligned(t.data), what, ": data must be 16-byte aligned");
  for (int d = 0; d + 1 < t.rank; ++d)
    PIE_CHECK(t.stride[d] % 8 == 0, what, ": stride ", t.stride[d], " of dim ", d, " must be a multiple of 8");
}

inline int num_sms() {
  static int n = [] {
    int dev = 0, v = 0;
    PIE_CUDA_CHECK(cudaGetDevice(&dev));
    PIE_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}

}  // namespace pie::ops::cuda
