#pragma once
/// \file attention_prefill_sm90.cuh
/// \brief Hopper (sm_90a) paged prefill attention: wgmma + TMA, producer/consumer warpgroups
/// (FlashAttention-3 structure). Private to ops/cuda; `prefill_attention` routes here.
///
/// A CTA owns BM = 128 rows of one sequence and one KV head; rows are (token, query head)
/// pairs of the GQA group (row r: token r / group, head kvh·group + r % group), so one K/V
/// tile serves the whole group. Three warpgroups: WG0 is the producer (one warp issues the TMA
/// copies of K and V pages through the block table into a ring of stages), WG1 and WG2 are
/// consumers of 64 rows each: S = Q·Kᵀ by wgmma from shared memory, online softmax on the
/// accumulators, O += P·V by wgmma with P from registers and V read transposed from shared
/// memory. Tiles hold BN = 128 keys; every K/V page of a tile is one TMA box per 64-column
/// half (128-byte swizzle), so a tile's layout is [half][BN keys][64] whatever the block size.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "pie/core/attention_variants.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/mma.cuh"
#include "pie/ops/cuda/prefill_sm90_plan.hpp"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PIE_SM90A_DEVICE 1
#else
#define PIE_SM90A_DEVICE 0
#endif

namespace pie::ops::cuda::sm90 {

using detail::pack2;
using detail::smem_u32;

template <int N, class T> struct Wgmma;
template <> struct Wgmma<64, __nv_bfloat16> {
  /// D (+)= A·B, A and B from shared memory (both K-major).
  __device__ __forceinline__ static void ss(float (&d)[32], uint64_t da, uint64_t db, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(scale_d));
  }
  /// D += A·B, A from registers (the m64k16 fragment), B from shared memory, MN-major (transposed).
  __device__ __forceinline__ static void rs_t(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
  }
};

template <> struct Wgmma<64, __half> {
  /// D (+)= A·B, A and B from shared memory (both K-major).
  __device__ __forceinline__ static void ss(float (&d)[32], uint64_t da, uint64_t db, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(scale_d));
  }
  /// D += A·B, A from registers (the m64k16 fragment), B from shared memory, MN-major (transposed).
  __device__ __forceinline__ static void rs_t(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
  }
};

template <> struct Wgmma<128, __nv_bfloat16> {
  /// D (+)= A·B, A and B from shared memory (both K-major).
  __device__ __forceinline__ static void ss(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "r"(scale_d));
  }
  /// D += A·B, A from registers (the m64k16 fragment), B from shared memory, MN-major (transposed).
  __device__ __forceinline__ static void rs_t(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
  }
};

template <> struct Wgmma<128, __half> {
  /// D (+)= A·B, A and B from shared memory (both K-major).
  __device__ __forceinline__ static void ss(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "r"(scale_d));
  }
  /// D += A·B, A from registers (the m64k16 fragment), B from shared memory, MN-major (transposed).
  __device__ __forceinline__ static void rs_t(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
  }
};


__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/// Keeps the compiler from moving accumulator reads/writes across the asynchronous wgmma.
template <int N> __device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/// wgmma shared-memory descriptor, 128-byte swizzle: start address, leading / stride byte offsets.
__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((saddr & 0x3FFFF) >> 4) | (uint64_t(lbo >> 4) << 16) | (uint64_t(sbo >> 4) << 32) |
         (uint64_t(1) << 62);
}

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred P1;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@!P1 bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
/// 4-D TMA tile load into shared memory, completing on an mbarrier (byte count).
__device__ __forceinline__ void tma_load4(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                          uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

/// Running softmax state of a thread's two rows: max and sum in the log2 domain (the max is of
/// the scaled logits: raw·f, f = sm_scale·log2 e, or of the transformed logits with f = 1),
/// and the last tile's correction factor for O.
struct SoftmaxState {
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, corr[2] = {1.f, 1.f};
  float f = 1.f;
};

/// One 64×BN tile of S (wgmma accumulator layout: element 4j+e is row lane/4 (+8 for e ≥ 2),
/// key 8j + 2(lane%4) + (e&1)) → P = 2^(scaled logit − running max), in place, updating `st`.
/// kpos0: the key of element 0 of this thread.
/// EMU > 0: the exps of every EMU-th 4-element group (j % EMU == EMU − 1) go through
/// plan::ex2_poly (FMA pipe), on unmasked tiles only (a masked key must give exactly 0: its V row
/// may be past the context).
template <bool MASK, class T, int BN, int EMU = 0, class Variant>
__device__ __forceinline__ void softmax_tile(float (&s)[BN / 2], SoftmaxState& st,
                                             int kpos0, int qpos_lo, int qpos_hi, int kv_len, float sm_scale,
                                             const Variant& v) {
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = s[4 * j + e];
      if constexpr (Variant::kSoftCap) x = v.logits(x * sm_scale) * 1.4426950408889634f;
      if constexpr (MASK) {
        const int kpos = kpos0 + j * 8 + (e & 1);
        x = (kpos < kv_len && v.mask(e < 2 ? qpos_lo : qpos_hi, kpos)) ? x : -INFINITY;
      }
      s[4 * j + e] = x;
      mx[e / 2] = fmaxf(mx[e / 2], x);
    }
  }
  float m_use[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float m_new = fmaxf(st.m[r], mx[r] * st.f);  // f > 0: scaling keeps the order
    m_use[r] = m_new == -INFINITY ? 0.f : m_new;
    st.corr[r] = ex2(st.m[r] - m_use[r]);
    st.m[r] = m_new;
    st.l[r] *= st.corr[r];
  }
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float x = fmaf(s[4 * j + e], st.f, -m_use[e / 2]);
      float y;
      if constexpr (EMU > 0 && !MASK) y = j % EMU == EMU - 1 ? plan::ex2_poly(x) : ex2(x);
      else y = ex2(x);
      s[4 * j + e] = y;
      st.l[e / 2] += y;
    }
  }
}

/// P (fp32, accumulator layout) → the A fragments of the P·V wgmma.
template <class T, int BN>
__device__ __forceinline__ void pack_p(const float (&s)[BN / 2], uint32_t (&pf)[BN / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    pf[kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
    pf[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
    pf[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
    pf[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

/// Parameters of one launch (by value, __grid_constant__: the tensor map must live in param space).
template <class T, class Variant>
struct Params {
  CUtensorMap kv_map;            ///< the pool as [rows = block·2·kv_heads + kv·kv_heads + head][bs/8][8][head_dim]
  const T* q; int64_t q_stride;  ///< [tokens, nq, hd]
  T* out; int64_t out_stride;
  const int32_t* indptr;         ///< block table (PagedKV)
  const int32_t* indices;
  const int32_t* last_page_len;
  const int32_t* cu_q;
  int num_kv_heads, block_size, bs_shift, group;
  float sm_scale;
  Variant variant;
  int m_tiles = 0, num_seqs = 0;  ///< v3's persistent grid: row tiles of the longest chunk, sequences
  /// v3 only (prefill_fp8_kv.cuh): per KV head, the scores' and the output's factors of an fp8
  /// cache widened to T (codes, exact); null means 1. v2 requires them null.
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;
};

constexpr int kBM = 128, kBN = 128, kThreads = 384;
template <int HD> inline constexpr int kStages = HD <= 64 ? 4 : 2;
template <int HD> constexpr size_t smem_bytes() {
  return size_t(kBM * HD + 2 * kStages<HD> * kBN * HD) * 2 + 1024 /*align*/ + 256 /*barriers*/;
}

template <int HD, class T, class Variant, bool PINGPONG = true>
__global__ void __launch_bounds__(kThreads, 1) prefill_kernel(const __grid_constant__ Params<T, Variant> p) {
#if PIE_SM90A_DEVICE
  constexpr int NH = HD / 64;       // 64-column halves (128-byte swizzle rows)
  constexpr int S = kStages<HD>;
  constexpr int TILE = kBN * HD;    // elements of one K (or V) stage
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  T* sq = reinterpret_cast<T*>(base);               // [NH][BM][64]
  T* sk = sq + kBM * HD;                            // S × [NH][BN][64]
  T* sv = sk + S * TILE;                            // S × [NH][BN][64]
  uint64_t* bars = reinterpret_cast<uint64_t*>(sv + S * TILE);  // kfull[S], vfull[S], empty[S]
  const uint32_t kfull = smem_u32(bars), vfull = kfull + 8 * S, empty = vfull + 8 * S;

  const int b = blockIdx.z, kvh = blockIdx.y, G = p.group;
  const int tile = gridDim.x - 1 - blockIdx.x;  // heavy (late) tiles first
  const int q_begin = p.cu_q[b], qlen = p.cu_q[b + 1] - q_begin;
  const int nrows = qlen * G, m0 = tile * kBM;
  if (m0 >= nrows) return;
  const int page_beg = p.indptr[b], npages = p.indptr[b + 1] - page_beg;
  const int kv_len = npages == 0 ? 0 : (npages - 1) * p.block_size + p.last_page_len[b];
  const int q_off = kv_len - qlen;
  const int first_tok = m0 / G, last_tok = (min(m0 + kBM, nrows) - 1) / G;
  const int kv_end = Variant::kCausal ? min(kv_len, q_off + last_tok + 1) : kv_len;
  int kv_begin = 0;
  if constexpr (Variant::kWindowLeft > 0) kv_begin = max(0, q_off + first_tok - Variant::kWindowLeft + 1) / kBN * kBN;
  const int n_tiles = max(0, (kv_end - kv_begin + kBN - 1) / kBN);

  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128, warp = tid / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(kfull + 8 * s, 1);
      mbar_init(vfull + 8 * s, 1);
      mbar_init(empty + 8 * s, 8);  // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {  // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (warp == 0) {
    const int pages_per_tile = kBN >> p.bs_shift;
    const int H = p.num_kv_heads;
    // Page ids of a tile, one per lane, loaded a tile ahead of their copies.
    auto page_ids = [&](int t) {
      const int pg = ((kv_begin + t * kBN) >> p.bs_shift) + lane;
      return lane < pages_per_tile && t < n_tiles ? p.indices[page_beg + min(pg, npages - 1)] : 0;
    };
    int pid = page_ids(0);
    for (int t = 0; t < n_tiles; ++t) {
      const int s = t % S;
      const int pid_next = page_ids(t + 1);
      if (t >= S) mbar_wait(empty + 8 * s, ((t / S) - 1) & 1);
      if (lane == 0) {
        mbar_expect_tx(kfull + 8 * s, TILE * sizeof(T));
        mbar_expect_tx(vfull + 8 * s, TILE * sizeof(T));
      }
      for (int i = 0; i < pages_per_tile; ++i) {
        const int id = __shfl_sync(0xffffffffu, pid, i);
        if (lane == 0) {
          const int krow = id * 2 * H + kvh;
#pragma unroll
          for (int h = 0; h < NH; ++h) {
            const uint32_t off = uint32_t((h * kBN + (i << p.bs_shift)) * 64 * sizeof(T));
            tma_load4(smem_u32(sk + s * TILE) + off, &p.kv_map, h * 64, 0, 0, krow, kfull + 8 * s);
          }
#pragma unroll
          for (int h = 0; h < NH; ++h) {
            const uint32_t off = uint32_t((h * kBN + (i << p.bs_shift)) * 64 * sizeof(T));
            tma_load4(smem_u32(sv + s * TILE) + off, &p.kv_map, h * 64, 0, 0, krow + H, vfull + 8 * s);
          }
        }
      }
      pid = pid_next;
    }
    }
  } else {
  // ---------------- consumers ----------------
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int cw = wg - 1;  // consumer warpgroup: rows cw·64 .. +63 of the tile
  // Q rows of this warpgroup → swizzled shared memory (cp.async, zero rows past the chunk).
  {
    const int c = tid % (HD / 8), h = c / 8, cc = c % 8;
#pragma unroll
    for (int i = tid / (HD / 8); i < 64; i += 128 / (HD / 8)) {
      const int row = cw * 64 + i, r = m0 + row;
      const bool valid = r < nrows;
      const int tok = valid ? r / G : 0, head = valid ? kvh * G + r - (r / G) * G : 0;
      const T* src = p.q + int64_t(q_begin + tok) * p.q_stride + int64_t(head) * HD + c * 8;
      detail::cp_async16(smem_u32(sq + h * kBM * 64 + row * 64 + ((cc ^ (row & 7)) << 3)), src, valid);
    }
  }
  detail::cp_async_commit();
  detail::cp_async_wait_all();
  fence_proxy_async();
  named_bar_sync(1 + cw, 128);

  const uint32_t sq_u = smem_u32(sq) + cw * 64 * 128, sk_u = smem_u32(sk), sv_u = smem_u32(sv);
  float o[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) o[i] = 0.f;
  SoftmaxState st;
  st.f = Variant::kSoftCap ? 1.f : p.sm_scale * 1.4426950408889634f;
  const int r_lo = cw * 64 + warp * 16 + lane / 4, r_hi = r_lo + 8;  // tile rows of this thread
  const int qpos_lo = q_off + (m0 + r_lo) / G, qpos_hi = q_off + (m0 + r_hi) / G;
  const int diag = q_off + first_tok;  // tiles whose last key is past this need the causal mask

  auto issue_s = [&](float (&sacc)[kBN / 2], int s) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      const uint64_t da = desc_sw128(sq_u + (kk / 4) * kBM * 128 + (kk % 4) * 32, 16, 1024);
      const uint64_t db = desc_sw128(sk_u + s * TILE * 2 + (kk / 4) * kBN * 128 + (kk % 4) * 32, 16, 1024);
      Wgmma<kBN, T>::ss(sacc, da, db, kk > 0);
    }
  };
  auto issue_pv = [&](const uint32_t (&pf)[kBN / 16][4], int s) {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      const uint64_t db = desc_sw128(sv_u + s * TILE * 2 + kk * 16 * 128, kBN * 128, 1024);
      Wgmma<HD, T>::rs_t(o, pf[kk], db);
    }
  };
  auto softmax = [&](float (&sacc)[kBN / 2], int n0) {
    const bool need_mask = (Variant::kCausal && n0 + kBN - 1 > diag) || n0 + kBN > kv_len ||
                           Variant::kWindowLeft > 0 || !Variant::kCausal;
    if (need_mask)
      softmax_tile<true, T, kBN>(sacc, st, n0 + (lane % 4) * 2, qpos_lo, qpos_hi, kv_len, p.sm_scale, p.variant);
    else
      softmax_tile<false, T, kBN>(sacc, st, n0 + (lane % 4) * 2, qpos_lo, qpos_hi, kv_len, p.sm_scale, p.variant);
  };
  // Ping-pong: the two consumer warpgroups take turns issuing their GEMMs (named barriers
  // 3 and 4), so one's softmax runs while the other's MMAs hold the tensor cores.
  auto pp_sync = [&] { if constexpr (PINGPONG) named_bar_sync(3 + cw, 256); };
  auto pp_arrive = [&] { if constexpr (PINGPONG) named_bar_arrive(3 + (1 - cw), 256); };
  if (PINGPONG && cw == 1) named_bar_arrive(3, 256);

  uint32_t pf[kBN / 16][4];
  if (n_tiles > 0) {  // tile 0: S, softmax → P (O is still zero)
    float sacc[kBN / 2];
    mbar_wait(kfull, 0);
    pp_sync();
    wgmma_fence();
    issue_s(sacc, 0);
    wgmma_commit();
    pp_arrive();
    wgmma_wait<0>();
    fence_regs(sacc);
    softmax(sacc, kv_begin);
    pack_p<T, kBN>(sacc, pf);
  }
  // Tile t: S(t) and P(t−1)·V(t−1) in flight together; softmax(t) overlaps the P·V; P(t) is
  // packed into the A registers only once that P·V has retired.
  for (int t = 1; t < n_tiles; ++t) {
    const int s = t % S, sp = (t - 1) % S;
    const int n0 = kv_begin + t * kBN;
    float sacc[kBN / 2];
    mbar_wait(kfull + 8 * s, (t / S) & 1);
    mbar_wait(vfull + 8 * sp, ((t - 1) / S) & 1);
    pp_sync();
    wgmma_fence();
    issue_s(sacc, s);
    wgmma_commit();
    wgmma_fence();
    issue_pv(pf, sp);
    wgmma_commit();
    pp_arrive();
    wgmma_wait<1>();
    fence_regs(sacc);
    softmax(sacc, n0);
    wgmma_wait<0>();
    fence_regs(o);
    if (lane == 0) mbar_arrive(empty + 8 * sp);
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) {
      o[4 * j] *= st.corr[0]; o[4 * j + 1] *= st.corr[0];
      o[4 * j + 2] *= st.corr[1]; o[4 * j + 3] *= st.corr[1];
    }
    pack_p<T, kBN>(sacc, pf);
  }
  if (PINGPONG && cw == 0) named_bar_sync(3, 256);  // WG2's last turn signal
  if (n_tiles > 0) {  // P(last)·V(last)
    const int t = n_tiles - 1, s = t % S, n0 = kv_begin + t * kBN;
    mbar_wait(vfull + 8 * s, (t / S) & 1);
    if (n0 + kBN > kv_len) {
      // Keys past the context end: their V rows hold whatever the pool held (maybe NaN); P is
      // 0 there, but 0·NaN is not 0, so zero those rows (both warpgroups write the same zeros).
      const int first = max(0, kv_len - n0);
      uint4* v4 = reinterpret_cast<uint4*>(sv + s * TILE);
      for (int i = first * 8 + tid; i < kBN * 8; i += 128)
#pragma unroll
        for (int h = 0; h < NH; ++h) v4[h * kBN * 8 + i] = make_uint4(0, 0, 0, 0);
      fence_proxy_async();
      named_bar_sync(1 + cw, 128);
    }
    wgmma_fence();
    issue_pv(pf, s);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(o);
  }

  float l_r[2] = {st.l[0], st.l[1]};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 1);
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 2);
  }
  const float inv[2] = {l_r[0] > 0.f ? 1.f / l_r[0] : 0.f, l_r[1] > 0.f ? 1.f / l_r[1] : 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m0 + (r == 0 ? r_lo : r_hi);
    if (row >= nrows) continue;
    T* dst = p.out + int64_t(q_begin + row / G) * p.out_stride + int64_t(kvh * G + row % G) * HD + (lane % 4) * 2;
#pragma unroll
    for (int j = 0; j < HD / 8; ++j)
      *reinterpret_cast<uint32_t*>(dst + j * 8) = pack2<T>(o[4 * j + 2 * r] * inv[r], o[4 * j + 2 * r + 1] * inv[r]);
  }
  }  // consumers
#else
  __trap();  // built without sm_90a: prefill_attention never routes here (see available())
#endif
}

/// cuTensorMapEncodeTiled through the runtime's driver entry point (no -lcuda).
inline PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

/// Whether the current device is an sm_90 part whose driver encodes tensor maps (what both Hopper
/// kernel generations need besides their own sm_90a binary).
inline bool hopper_device() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0 && encode_fn() != nullptr;
}

/// Whether this build holds the sm_90a kernel and the current device runs it.
template <int HD, class T, class Variant>
bool available() {
  static const bool ok = [] {
    if (!hopper_device()) return false;
    cudaFuncAttributes a{};
    if (cudaFuncGetAttributes(&a, prefill_kernel<HD, T, Variant>) != cudaSuccess) { cudaGetLastError(); return false; }
    return a.binaryVersion == 90;
  }();
  return ok;
}

template <int HD, class T, class Variant, bool PINGPONG = true>
void launch(Params<T, Variant>& p, const T* pool, int num_seqs, int max_q_len, cudaStream_t stream) {
  PIE_CHECK(p.k_scale == nullptr && p.v_scale == nullptr, "prefill_attention (sm90 v2): no KV scales (v3 only)");
  // Pool as 4-D: [rows][bs/8][8][HD] with rows = block·2·kv_heads + (K: 0, V: kv_heads) + head.
  const cuuint64_t dims[4] = {cuuint64_t(HD), 8, cuuint64_t(p.block_size / 8), cuuint64_t(1) << 31};
  const cuuint64_t strides[3] = {cuuint64_t(HD) * sizeof(T), cuuint64_t(8) * HD * sizeof(T),
                                 cuuint64_t(p.block_size) * HD * sizeof(T)};
  const cuuint32_t box[4] = {64, 8, cuuint32_t(p.block_size / 8), 1};
  const cuuint32_t estr[4] = {1, 1, 1, 1};
  CUresult r = encode_fn()(&p.kv_map, std::is_same_v<T, __nv_bfloat16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                                       : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                           4, const_cast<T*>(pool), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  PIE_CHECK(r == CUDA_SUCCESS, "prefill_attention (sm90): cuTensorMapEncodeTiled failed");
  auto kern = prefill_kernel<HD, T, Variant, PINGPONG>;
  constexpr size_t smem = smem_bytes<HD>();
  // Every launch, as the mma.sync kernel does: the attribute is per device (tensor parallel
  // runs one process over several GPUs).
  PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const int64_t rows = int64_t(max_q_len) * p.group;
  dim3 grid(unsigned((rows + kBM - 1) / kBM), unsigned(p.num_kv_heads), unsigned(num_seqs));
  kern<<<grid, kThreads, smem, stream>>>(p);
  PIE_CUDA_CHECK_LAUNCH();
}

}  // namespace pie::ops::cuda::sm90
