#pragma once
/// \file rope.cuh
/// \brief Qwen3's per-head q/k RMSNorm fused with rotary embedding (GPT-NeoX "rotate half"
/// layout), in place on the fused qkv projection output. Without norm weights it is plain RoPE
/// (Qwen2, Llama). One pass: each q/k head is read once and written once; V is untouched.
/// One CTA per token, so cos/sin are computed once per (token, frequency), not per head.
#include "pie/core/dispatch.hpp"
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

/// \brief Rotary-embedding parameters.
struct RopeParams {
  float theta = 10000.f;            ///< base; inv_freq[i] = theta^(-2i/head_dim) when inv_freq is null
  const float* inv_freq = nullptr;  ///< device [head_dim/2], for scaled RoPE (llama3, yarn); optional
  float mscale = 1.f;               ///< cos/sin multiplier (yarn attention factor)
};

namespace detail {
inline constexpr int kRopeThreads = 128;

/// What qk_norm_rope_token hands each rotated head to besides its own store: nothing here;
/// rope_kv.cuh's sink also writes the K heads into the paged cache.
struct NoRopeSink {
  __device__ __forceinline__ void operator()(int, int, const float (&)[8], const float (&)[8]) const {}
};

/// The 8 cos/sin pairs of frequencies sub·8 … sub·8 + 7 at position `pos`, as transformers
/// computes them: a float angle, scaled in float, then cast to the activation type T.
template <int HD, class T>
__device__ __forceinline__ void rope_cos_sin(int pos, const RopeParams& rp, int sub, float (&c)[8], float (&sn)[8]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    int i = sub * 8 + j;
    float f = rp.inv_freq ? rp.inv_freq[i] : powf(rp.theta, -2.f * i / HD);
    sincosf(static_cast<float>(pos) * f, &sn[j], &c[j]);  // float angle, as transformers computes it
    // transformers scales in float, then casts cos/sin to the activation dtype.
    c[j] = to_f32(from_f32<T>(c[j] * rp.mscale));
    sn[j] = to_f32(from_f32<T>(sn[j] * rp.mscale));
  }
}

/// qk_norm_rope_head with this lane's norm weights already loaded (wa: elements sub·8.., wb: HD/2 +
/// sub·8..; `norm` false: no norm): the same arithmetic, for callers that load them early (decode
/// attention's RoPE loads them before its griddepcontrol.wait).
template <int HD, class T>
__device__ __forceinline__ void qk_norm_rope_head_w(const T* __restrict__ head, bool norm, const float (&wa)[8],
                                                    const float (&wb)[8], float eps, int sub, const float (&c)[8],
                                                    const float (&sn)[8], float (&oa)[8], float (&ob)[8]) {
  constexpr int TPH = HD / 16;
  float a[8], b[8];
  load8(head + sub * 8, a);
  load8(head + HD / 2 + sub * 8, b);
  if (norm) {
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += a[j] * a[j] + b[j] * b[j];
#pragma unroll
    for (int o = TPH / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    float inv = rsqrtf(ss / HD + eps);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      // HF's rounding points: T(x·inv), times the weight, rounded to T before RoPE.
      a[j] = to_f32(from_f32<T>(wa[j] * to_f32(from_f32<T>(a[j] * inv))));
      b[j] = to_f32(from_f32<T>(wb[j] * to_f32(from_f32<T>(b[j] * inv))));
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    // transformers computes q·cos + rotate_half(q)·sin in T: each product is rounded to T
    // before the sum (and the sum when stored). Doing the same keeps pie's q/k bit-identical
    // to transformers' wherever the inputs are.
    auto r = [](float v) { return to_f32(from_f32<T>(v)); };
    oa[j] = r(a[j] * c[j]) - r(b[j] * sn[j]);
    ob[j] = r(b[j] * c[j]) + r(a[j] * sn[j]);
  }
}
/// This lane's norm weights for qk_norm_rope_head_w (zeros without a norm).
template <int HD, class T>
__device__ __forceinline__ void rope_norm_weights(const T* __restrict__ norm_w, int sub, float (&wa)[8], float (&wb)[8]) {
  if (norm_w != nullptr) {
    load8(norm_w + sub * 8, wa);
    load8(norm_w + HD / 2 + sub * 8, wb);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) wa[j] = wb[j] = 0.f;
  }
}
/// One head's RMSNorm (skipped when `norm_w` is null) and rotation, for the HD/16 consecutive
/// lanes of a head (this one is lane `sub`): elements sub·8.. and HD/2 + sub·8.. of `head`
/// rotated into oa/ob with the cos/sin of rope_cos_sin. Every lane of the warp must call it (the
/// norm's shuffles span the head's lanes).
template <int HD, class T>
__device__ __forceinline__ void qk_norm_rope_head(const T* __restrict__ head, const T* __restrict__ norm_w, float eps, int sub,
                                                  const float (&c)[8], const float (&sn)[8], float (&oa)[8],
                                                  float (&ob)[8]) {
  float wa[8], wb[8];
  rope_norm_weights<HD, T>(norm_w, sub, wa, wb);
  qk_norm_rope_head_w<HD, T>(head, norm_w != nullptr, wa, wb, eps, sub, c, sn, oa, ob);
}

/// Device body for one token: a thread owns 8 elements of a head's first half and the 8 they
/// rotate with in the second half, so the rotation needs no exchange, the norm needs HD/16
/// lanes, and its 8 cos/sin pairs are computed once and reused for every head of the token.
/// `sink(h, sub, oa, ob)` sees every head's rotated values (elements sub·8.. and HD/2 + sub·8..)
/// right after they are stored.
template <int HD, class T, class Sink = NoRopeSink>
__device__ __forceinline__ void qk_norm_rope_token(T* __restrict__ row, int nq, int heads, const T* __restrict__ q_norm,
                                                   const T* __restrict__ k_norm, float eps, int pos, const RopeParams& rp,
                                                   const Sink& sink = {}) {
  constexpr int TPH = HD / 16, HPB = kRopeThreads / TPH;
  const int sub = threadIdx.x % TPH, slot = threadIdx.x / TPH;
  float c[8], sn[8];
  rope_cos_sin<HD, T>(pos, rp, sub, c, sn);
  // The loop bound is the same for every thread, so the norm's shuffles always see full warps.
  for (int h0 = blockIdx.y * HPB; h0 < heads; h0 += HPB * gridDim.y) {
    const int h = min(h0 + slot, heads - 1);
    T* head = row + static_cast<int64_t>(h) * HD;
    float oa[8], ob[8];
    qk_norm_rope_head<HD, T>(head, h < nq ? q_norm : k_norm, eps, sub, c, sn, oa, ob);
    if (h0 + slot < heads) {
      store8(head + sub * 8, oa);
      store8(head + HD / 2 + sub * 8, ob);
      sink(h, sub, oa, ob);
    }
  }
}

/// CTAs per token along gridDim.y: few tokens (decode at small batch) spread a token's heads
/// over several CTAs, so a token is one pass of dependent loads, not heads/HPB of them
/// (5.9 µs → 3.9 µs per layer at batch 1, docs/gpu_engine.md).
inline unsigned rope_split(int num_tokens, int heads, int head_dim) {
  const int heads_per_cta = kRopeThreads / (head_dim / 16);
  return num_tokens < 4 * num_sms() ? unsigned((heads + heads_per_cta - 1) / heads_per_cta) : 1u;
}

template <int HD, class T>
__global__ void __launch_bounds__(kRopeThreads) qk_norm_rope_kernel(T* __restrict__ qkv, int64_t row_stride,
                                                                    const int32_t* __restrict__ positions, int nq, int nkv,
                                                                    const T* __restrict__ q_norm, const T* __restrict__ k_norm,
                                                                    float eps, RopeParams rp) {
  pdl_launch_dependents();
  pdl_wait();
  const int t = blockIdx.x;
  qk_norm_rope_token<HD>(qkv + t * row_stride, nq, nq + nkv, q_norm, k_norm, eps, positions[t], rp);
}
}  // namespace detail

/// \brief In place on qkv [tokens, (nq + 2·nkv)·head_dim] (rows may be strided): per-head RMSNorm
/// of q and k with q_norm/k_norm [head_dim] (skipped when null), then NeoX RoPE at positions[t]
/// (device int32 [tokens]). head_dim 64, 128 or 256.
template <class T>
void qk_norm_rope(TensorView<T> qkv, const int32_t* positions, int num_q_heads, int num_kv_heads,
                  int head_dim, const T* q_norm, const T* k_norm, float eps, RopeParams rope,
                  cudaStream_t stream = nullptr) {
  check_rows8(qkv, "qk_norm_rope qkv");
  PIE_CHECK(qkv.rank == 2 && qkv.shape[1] == int64_t{num_q_heads + 2 * num_kv_heads} * head_dim,
            "qk_norm_rope: qkv must be [tokens, (nq + 2 nkv)·head_dim]");
  PIE_CHECK((q_norm == nullptr) == (k_norm == nullptr), "qk_norm_rope: give both q_norm and k_norm or neither");
  const int num_tokens = static_cast<int>(qkv.shape[0]);
  if (num_tokens == 0) return;
  PIE_DISPATCH_HEAD_DIM(head_dim, HD, [&] {
    const unsigned split = detail::rope_split(num_tokens, num_q_heads + num_kv_heads, HD);
    launch_pdl(detail::qk_norm_rope_kernel<HD, device_t<T>>, dim3(static_cast<unsigned>(num_tokens), split),
               dim3(detail::kRopeThreads), 0, stream, dev(qkv.data), qkv.stride[0], positions, num_q_heads,
               num_kv_heads, dev(q_norm), dev(k_norm), eps, rope);
  });
}

}  // namespace pie::ops::cuda
