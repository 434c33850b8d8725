#pragma once
/// \file attention_prefill.cuh
/// \brief Paged prefill attention on tensor cores (FlashAttention-2 schedule, mma.sync m16n8k16).
///
/// A CTA owns BM query rows of one sequence and one query head; each warp owns 16 rows. K/V
/// tiles of BN tokens are gathered from the block table into swizzled shared memory with
/// cp.async, double-buffered so the next tile streams in while this one is multiplied. Online
/// softmax runs on the S accumulators in registers, which become the A operand of P·V without
/// touching shared memory. Query rows sit at the end of their sequence: row r of a chunk of
/// qlen has position seq_len − qlen + r, and sees the cached prefix plus itself causally.
#include <algorithm>
#include <cmath>

#include "pie/core/attention_variants.hpp"
#include "pie/core/dispatch.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/attention_prefill_sm90.cuh"
// Which Hopper prefill kernels the dispatch below compiles. PIE_PREFILL_SM90_V3 (default 1; the
// CMake option of the same name): v3, the default kernel; 0 leaves v3 out and takes v2.
// PIE_PREFILL_SM90_ALL (default 0; the kernel test and bench set 1): v2 and v3's other grids too,
// chosen at run time by PIE_PREFILL_SM90 (attention_prefill_sm90_v3.cuh, version()). Each Hopper
// kernel is instantiated in every engine translation unit, so the default compiles only one.
#ifndef PIE_PREFILL_SM90_V3
#define PIE_PREFILL_SM90_V3 1
#endif
#ifndef PIE_PREFILL_SM90_ALL
#define PIE_PREFILL_SM90_ALL 0
#endif
#if PIE_PREFILL_SM90_V3
#include "pie/ops/cuda/attention_prefill_sm90_v3.cuh"
#endif
#include "pie/ops/cuda/mma.cuh"

namespace pie::ops::cuda {

namespace detail {

/// Parameters of one prefill launch, passed by value (__grid_constant__).
template <class T, class KV, class Variant>
struct PrefillParams {
  const T* q; int64_t q_stride;  ///< [tokens, nq, hd], token stride q_stride
  T* out; int64_t out_stride;    ///< [tokens, nq, hd]
  kv::PagedKV<KV> kv;            ///< batch_size = number of sequences
  const int32_t* cu_q;           ///< [num_seqs + 1] query rows of each sequence
  int group;                     ///< query heads per KV head
  int bs_shift;                  ///< log2(block_size)
  float sm_scale;
  Variant variant;
};

/// Byte-free element offset of (row, 8-element chunk c) in a swizzled [rows][HD] tile: the XOR
/// spreads the 8 rows an ldmatrix reads over 8 different 16-byte bank groups.
template <int HD>
__device__ __forceinline__ int swz(int row, int c) { return row * HD + ((c ^ (row & 7)) << 3); }

template <int HD, int BN, int NT, class T, class KV>
__device__ __forceinline__ void load_kv_tile(T* sk, T* sv, const kv::PagedKV<KV>& kv, const int32_t* pages,
                                             int bs_shift, int64_t head_off, int n0, int kv_len) {
  constexpr int CH = HD / 8;
  const int bs_mask = (1 << bs_shift) - 1;
  const int64_t v_off = int64_t(kv.num_kv_heads) * (HD << bs_shift);
  const int64_t bstride = 2 * v_off;
#pragma unroll
  for (int i = threadIdx.x; i < BN * CH; i += NT) {
    int row = i / CH, c = i % CH;
    int j = n0 + row;
    bool valid = j < kv_len;
    int64_t off = valid ? int64_t(pages[j >> bs_shift]) * bstride + head_off + int64_t(j & bs_mask) * HD + c * 8 : 0;
    if constexpr (is_fp8_v<KV>) {
      // fp8 → T is exact (3 mantissa bits into 7 or 10); the scale is folded into the logits.
      float kf[8] = {}, vf[8] = {};
      if (valid) { load8(kv.data + off, kf); load8(kv.data + off + v_off, vf); }
      store8(sk + swz<HD>(row, c), kf);
      store8(sv + swz<HD>(row, c), vf);
    } else {
      cp_async16(smem_u32(sk + swz<HD>(row, c)), kv.data + off, valid);
      cp_async16(smem_u32(sv + swz<HD>(row, c)), kv.data + off + v_off, valid);
    }
  }
}

/// Device body. HD: head dim; NW: warps (BM = 16·NW query rows); BN: keys per tile. PACK: a
/// CTA's rows are (token, query head) pairs of one KV head — row r is token r / group, head
/// r % group — so one K/V tile serves the whole GQA group (decode rows: 1 token × group heads
/// in one CTA instead of group CTAs). Without it a CTA's rows are tokens of one query head.
/// Either way a row's arithmetic is the same: it depends on that row alone.
template <int HD, int NW, int BN, bool PACK, class T, class KV, class Variant>
__device__ __forceinline__ void prefill_body(const PrefillParams<T, KV, Variant>& p, T* smem) {
  constexpr int BM = 16 * NW, NT = 32 * NW, CH = HD / 8;
  constexpr bool kQInRegs = HD <= 128;
  const int b = blockIdx.z;
  const int G = PACK ? p.group : 1;  // rows per token
  const int kvh = PACK ? blockIdx.y : blockIdx.y / p.group;
  const int tile = gridDim.x - 1 - blockIdx.x;  // longest (last) tiles first: better tail
  const int q_begin = p.cu_q[b], qlen = p.cu_q[b + 1] - q_begin;
  const int nrows = qlen * G;
  const int m0 = tile * BM;
  if (m0 >= nrows) return;
  const int kv_len = p.kv.seq_len(b);
  const int q_off = kv_len - qlen;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Row → (token of the chunk, query head).
  auto row_token = [&](int r) { return PACK ? r / G : r; };
  auto row_head = [&](int r) { return PACK ? kvh * G + r % G : int(blockIdx.y); };

  T* sq = smem;
  T* sk[2] = {sq + BM * HD, sq + BM * HD + 2 * BN * HD};
  T* sv[2] = {sk[0] + BN * HD, sk[1] + BN * HD};

  // Key range of this tile: up to its last row's position (causal), from the window start.
  const int first_tok = row_token(m0), last_tok = row_token(min(m0 + BM, nrows) - 1);
  int kv_end = Variant::kCausal ? min(kv_len, q_off + last_tok + 1) : kv_len;
  int kv_begin = 0;
  if constexpr (Variant::kWindowLeft > 0) kv_begin = max(0, q_off + first_tok - Variant::kWindowLeft + 1) / BN * BN;
  const int n_tiles = (kv_end - kv_begin + BN - 1) / BN;

  const int32_t* pages = p.kv.indices + p.kv.indptr[b];
  const int64_t head_off = int64_t(kvh) * (HD << p.bs_shift);
  for (int i = threadIdx.x; i < BM * CH; i += NT) {
    int row = i / CH, c = i % CH;
    const int r = m0 + row;
    const bool valid = r < nrows;
    const T* src = p.q + int64_t(q_begin + (valid ? row_token(r) : 0)) * p.q_stride +
                   int64_t(valid ? row_head(r) : 0) * HD + c * 8;
    cp_async16(smem_u32(sq + swz<HD>(row, c)), src, valid);
  }
  if (n_tiles > 0) load_kv_tile<HD, BN, NT>(sk[0], sv[0], p.kv, pages, p.bs_shift, head_off, kv_begin, kv_len);
  cp_async_commit();

  float o[HD / 8][4];
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
  uint32_t qf[kQInRegs ? HD / 16 : 1][4];
  const float kLog2e = 1.4426950408889634f;
  const float score_scale = p.sm_scale * (is_fp8_v<KV> ? p.kv.k_scale_of(kvh) : 1.f);
  const int wrow = warp * 16;                        // this warp's first row in the tile
  const int r_lo = wrow + lane / 4, r_hi = r_lo + 8;  // the two rows this thread accumulates
  const int qpos_lo = q_off + row_token(m0 + r_lo), qpos_hi = q_off + row_token(m0 + r_hi);

  // Q fragment address of this lane for k-step kk (ldmatrix x4: rows 0-7/8-15 × k 0-7/8-15).
  auto q_addr = [&](int kk) {
    int mi = lane / 8;
    int row = wrow + (mi % 2) * 8 + lane % 8;
    return smem_u32(sq + swz<HD>(row, 2 * kk + mi / 2));
  };

  for (int t = 0; t < n_tiles; ++t) {
    cp_async_wait_all();
    __syncthreads();
    if (kQInRegs && t == 0) {
#pragma unroll
      for (int kk = 0; kk < (kQInRegs ? HD / 16 : 0); ++kk) ldmatrix_x4(qf[kk], q_addr(kk));
    }
    const int n0 = kv_begin + t * BN;
    if (t + 1 < n_tiles)
      load_kv_tile<HD, BN, NT>(sk[(t + 1) & 1], sv[(t + 1) & 1], p.kv, pages, p.bs_shift, head_off, n0 + BN, kv_len);
    cp_async_commit();
    const T* ck = sk[t & 1];
    const T* cv = sv[t & 1];

    // S = Q·Kᵀ (16 × BN per warp)
    float s[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      uint32_t a[4];
      if constexpr (kQInRegs) {
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = qf[kQInRegs ? kk : 0][i];
      } else {
        ldmatrix_x4(a, q_addr(kk));
      }
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t bk[4];
        int mi = lane / 8;
        int tok = np * 16 + (mi / 2) * 8 + lane % 8;
        ldmatrix_x4(bk, smem_u32(ck + swz<HD>(tok, 2 * kk + mi % 2)));
        mma16816<T>(s[2 * np], a, bk[0], bk[1]);
        mma16816<T>(s[2 * np + 1], a, bk[2], bk[3]);
      }
    }

    // Online softmax on the accumulators (log2 domain).
    const bool need_mask = (Variant::kCausal && n0 + BN - 1 > q_off + first_tok) || n0 + BN > kv_len ||
                           Variant::kWindowLeft > 0 || !Variant::kCausal;
    float mx[2] = {m_r[0], m_r[1]};
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int kpos = n0 + j * 8 + (lane % 4) * 2 + (e & 1);
        int qpos = e < 2 ? qpos_lo : qpos_hi;
        float x = p.variant.logits(s[j][e] * score_scale) * kLog2e;
        if (need_mask && !(kpos < kv_len && p.variant.mask(qpos, kpos))) x = -INFINITY;
        s[j][e] = x;
        mx[e / 2] = fmaxf(mx[e / 2], x);
      }
    }
    float m_use[2], corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      m_use[r] = mx[r] == -INFINITY ? 0.f : mx[r];
      corr[r] = exp2f(m_r[r] - m_use[r]);
      m_r[r] = mx[r];
      l_r[r] *= corr[r];
    }
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) {
      o[j][0] *= corr[0]; o[j][1] *= corr[0];
      o[j][2] *= corr[1]; o[j][3] *= corr[1];
    }
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(s[j][e] - m_use[e / 2]);
        l_r[e / 2] += s[j][e];
      }
    }

    // O += P·V: P's accumulator layout is already the A-fragment layout of the next mma.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                       pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        uint32_t bv[4];
        int mi = lane / 8;
        int tok = kk * 16 + (mi % 2) * 8 + lane % 8;
        ldmatrix_x4_trans(bv, smem_u32(cv + swz<HD>(tok, 2 * dp + mi / 2)));
        mma16816<T>(o[2 * dp], a, bv[0], bv[1]);
        mma16816<T>(o[2 * dp + 1], a, bv[2], bv[3]);
      }
    }
  }
  cp_async_wait_all();  // no copy may still target shared memory when the CTA exits

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 1);
    l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 2);
  }
  const float vscale = is_fp8_v<KV> ? p.kv.v_scale_of(kvh) : 1.f;
  float inv[2] = {l_r[0] > 0.f ? vscale / l_r[0] : 0.f, l_r[1] > 0.f ? vscale / l_r[1] : 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m0 + (r == 0 ? r_lo : r_hi);
    if (row >= nrows) continue;
    T* dst = p.out + int64_t(q_begin + row_token(row)) * p.out_stride + int64_t(row_head(row)) * HD + (lane % 4) * 2;
#pragma unroll
    for (int j = 0; j < HD / 8; ++j)
      *reinterpret_cast<uint32_t*>(dst + j * 8) = pack2<T>(o[j][2 * r] * inv[r], o[j][2 * r + 1] * inv[r]);
  }
}

template <int HD, int NW, int BN, bool PACK, class T, class KV, class Variant>
__global__ void __launch_bounds__(NW * 32) prefill_kernel(const __grid_constant__ PrefillParams<T, KV, Variant> p) {
  extern __shared__ __align__(128) unsigned char prefill_smem[];
  prefill_body<HD, NW, BN, PACK>(p, reinterpret_cast<T*>(prefill_smem));
}

/// Warps per CTA: 8 (BM = 128) where two CTAs still fit an SM, 4 for head_dim 256.
template <int HD> inline constexpr int kPrefillWarps = HD <= 128 ? 8 : 4;
inline constexpr int kPrefillBN = 64;

template <int HD, int WARPS, bool PACK, class T, class KV, class Variant>
void launch_prefill(const PrefillParams<T, KV, Variant>& p, int num_seqs, int max_q_len, int nq, cudaStream_t stream) {
  constexpr int NW = WARPS > 0 ? WARPS : kPrefillWarps<HD>, BN = kPrefillBN, BM = 16 * NW;
  size_t smem = size_t(BM * HD + 4 * BN * HD) * sizeof(T);
  auto kern = prefill_kernel<HD, NW, BN, PACK, T, KV, Variant>;
  PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const int64_t rows = int64_t(max_q_len) * (PACK ? p.group : 1);
  dim3 grid(static_cast<unsigned>((rows + BM - 1) / BM), PACK ? nq / p.group : nq, num_seqs);
  kern<<<grid, NW * 32, smem, stream>>>(p);
  PIE_CUDA_CHECK_LAUNCH();
}
}  // namespace detail

namespace detail {
/// Whether prefill_sm90 launches v3 for this head dim and block size: this build compiles it, the
/// device runs it, and (where PIE_PREFILL_SM90_ALL compiles v2 too) PIE_PREFILL_SM90 asks for it.
template <class D, class Variant>
bool prefill_v3_taken(int head_dim, int block_size) {
#if PIE_PREFILL_SM90_V3  // the default (PIE_PREFILL_SM90=2 takes v2 where it is compiled too)
  if (block_size < 8 || block_size > 128 || (PIE_PREFILL_SM90_ALL && sm90::v3::version() != 3)) return false;
  if (head_dim == 128) return sm90::v3::available<128, D, Variant>();
  if (head_dim == 64) return sm90::v3::available<64, D, Variant>();
#else
  (void)head_dim, (void)block_size;
#endif
  return false;
}

/// The Hopper kernels (v3, the default; v2 where PIE_PREFILL_SM90 asks for it and it is compiled)
/// over a 16-bit pool `kv`: false where this build or device holds none for its head dim and block
/// size, or (kv.k_scale / kv.v_scale set: an fp8 cache widened to D, prefill_fp8_kv.cuh) where v3
/// is not the kernel that would run.
template <class D, class Variant>
bool prefill_sm90(const D* q, int64_t q_stride, D* out, int64_t out_stride, const kv::PagedKV<D>& kv,
                  const int32_t* cu_query_lens, int max_query_len, int nq, float sm_scale, Variant variant,
                  cudaStream_t stream) {
  const int bsz = kv.block_size;
  if (bsz < 8 || bsz > 128) return false;
  const bool scaled = kv.k_scale != nullptr || kv.v_scale != nullptr;
  auto sm90 = [&]<int HD>() {
    sm90::Params<D, Variant> sp{};
    sp.q = q; sp.q_stride = q_stride;
    sp.out = out; sp.out_stride = out_stride;
    sp.indptr = kv.indptr; sp.indices = kv.indices; sp.last_page_len = kv.last_page_len;
    sp.cu_q = cu_query_lens;
    sp.num_kv_heads = kv.num_kv_heads; sp.block_size = bsz;
    sp.bs_shift = __builtin_ctz(static_cast<unsigned>(bsz));
    sp.group = nq / kv.num_kv_heads;
    sp.sm_scale = sm_scale;
    sp.variant = variant;
    sp.k_scale = kv.k_scale; sp.v_scale = kv.v_scale;
#if PIE_PREFILL_SM90_V3
    if (prefill_v3_taken<D, Variant>(HD, bsz)) {
      sm90::v3::launch<HD, D, Variant>(sp, kv.data, kv.batch_size, max_query_len, stream, sm90::v3::requested_box(),
                                       sm90::v3::requested_grid(), sm90::v3::requested_shape());
      return true;
    }
#endif
#if !PIE_PREFILL_SM90_V3 || PIE_PREFILL_SM90_ALL
    if (scaled || !sm90::available<HD, D, Variant>()) return false;
    sm90::launch<HD, D, Variant>(sp, kv.data, kv.batch_size, max_query_len, stream);
    return true;
#else
    (void)scaled;
    return false;
#endif
  };
  if (kv.head_dim == 128) return sm90.template operator()<128>();
  if (kv.head_dim == 64) return sm90.template operator()<64>();
  return false;
}
}  // namespace detail

/// \brief Prefill (and chunked-prefill) attention over the paged cache. Sequence b's query rows
/// are q[cu_query_lens[b] .. cu_query_lens[b+1]); they are the last tokens of its
/// cache.seq_len(b) cached tokens (write K/V first), and attend causally under `variant`.
/// \param q     [tokens, nq, head_dim] (token rows may be strided, heads contiguous)
/// \param cache this layer's PagedKV, batch_size = number of sequences, device index arrays
/// \param cu_query_lens device int32 [num_seqs + 1]
/// \param max_query_len the largest query length (host value; sizes the grid)
/// \param out   [tokens, nq, head_dim]
/// \tparam Warps CTA shape override (0: the tuned default, BM = 16·warps rows)
/// \tparam PackGqa a CTA's rows are (token, head) pairs of one GQA group, not tokens of one head
template <int Warps = 0, bool PackGqa = false, class T, class KV, class Variant = attention::Causal>
void prefill_attention(TensorView<T> q, kv::PagedKV<KV> cache, const int32_t* cu_query_lens, int max_query_len,
                       TensorView<T> out, float sm_scale, Variant variant = {}, cudaStream_t stream = nullptr) {
  static_assert(!std::is_same_v<T, float>, "prefill_attention: tensor cores need f16 or bf16");
  PIE_CHECK(q.rank == 3 && out.rank == 3, "prefill_attention: q and out must be [tokens, heads, head_dim]");
  check_rows8(q, "prefill_attention q");
  check_rows8(out, "prefill_attention out");
  const int nq = static_cast<int>(q.shape[1]);
  PIE_CHECK(q.shape[2] == cache.head_dim && q.stride[1] == cache.head_dim && out.stride[1] == cache.head_dim,
            "prefill_attention: heads must be contiguous rows of head_dim");
  PIE_CHECK(nq % cache.num_kv_heads == 0, "prefill_attention: query heads must be a multiple of KV heads");
  PIE_CHECK(cache.block_size > 0 && (cache.block_size & (cache.block_size - 1)) == 0,
            "prefill_attention: block size must be a power of two");
  if (cache.batch_size == 0 || max_query_len <= 0) return;
  using D = device_t<T>;
  using DKV = device_t<KV>;
  // Hopper path (wgmma + TMA, GQA-packed 128-row tiles): the default CTA shape, K/V of the
  // query dtype, head dim 64/128, blocks of 8..128 tokens. Everything else (fp8 KV — unless
  // prefill_fp8_kv.cuh widens it first —, head dim 256, explicit CTA shapes such as the
  // batch-invariant <1, true>) stays on the kernel below.
  if constexpr (Warps == 0 && !PackGqa && std::is_same_v<D, DKV>) {
    // A 16-bit cache ignores its scales: none passed on.
    const kv::PagedKV<D> view{dev(cache.data),  cache.num_kv_heads, cache.head_dim,
                              cache.block_size, cache.batch_size,   cache.indptr,
                              cache.indices,    cache.last_page_len};
    if (detail::prefill_sm90(dev(q.data), q.stride[0], dev(out.data), out.stride[0], view, cu_query_lens,
                             max_query_len, nq, sm_scale, variant, stream))
      return;
  }
  detail::PrefillParams<D, DKV, Variant> p{};
  p.q = dev(q.data); p.q_stride = q.stride[0];
  p.out = dev(out.data); p.out_stride = out.stride[0];
  p.kv = kv::PagedKV<DKV>{dev(cache.data), cache.num_kv_heads, cache.head_dim, cache.block_size, cache.batch_size,
                          cache.indptr, cache.indices, cache.last_page_len, cache.k_scale, cache.v_scale};
  p.cu_q = cu_query_lens;
  p.group = nq / cache.num_kv_heads;
  p.bs_shift = __builtin_ctz(static_cast<unsigned>(cache.block_size));
  p.sm_scale = sm_scale;
  p.variant = variant;
  PIE_DISPATCH_HEAD_DIM(cache.head_dim, HD, [&] {
    detail::launch_prefill<HD, Warps, PackGqa>(p, cache.batch_size, max_query_len, nq, stream);
  });
}

}  // namespace pie::ops::cuda
