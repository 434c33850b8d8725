#pragma once
/// \file prefill_fp8_kv.cuh
/// \brief Prefill attention over an fp8 (e4m3) KV cache on the Hopper kernel v3: the pages of the
/// step's prefilling sequences are first widened to the query dtype into a staging pool (codes,
/// exact), then v3 reads them through a rebased block table, with the cache's per-head K scale
/// joined to the scores' and its V scale to the output's — the arithmetic of the mma.sync kernel
/// that reads fp8 pages itself (attention_prefill.cuh), in another summation order.
///
/// Why: v3 (TMA boxes of 16-bit pages, wgmma) has no fp8 operand path, so an fp8 cache took the
/// mma.sync kernel, whose fp8 tiles are plain loads widened in registers: in Qwen3-8B steps of 8,192
/// prompt tokens (64 prompts of 128) it took 240–335 µs a layer (one H100, 2026-12-07 trace), ~7%
/// of the step. Widening moves each context byte once more (read 1, write 2, then v3 reads 2), which
/// is small beside the attention's FLOPs whenever a chunk has many rows (measured: 16 µs a layer
/// for 8,192 tokens of context, against v3's 170 µs there); a chunk of a few rows over a
/// long prefix is where the staging costs more than it saves, so the caller asks for it only above
/// a row count (kFp8KvPrefillStagedRows).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/env_switch.hpp"
#include "pie/ops/cuda/attention_prefill.cuh"
#include "pie/ops/cuda/common.cuh"

namespace pie::ops::cuda {

/// Whether an fp8 cache's prefill takes the staged v3 path, or PIE_FP8_KV_PREFILL_STAGED=0/1; read
/// by each runner when it sizes its workspaces. The default since it ran on a GPU (H100,
/// 2026-12-07): per-channel fp8 + fp8 cache 256 × (512, 256) +3.0%, 2048 × (128, 128) +0.6–0.9%.
inline constexpr bool kFp8KvPrefillStagedDefault = true;
inline bool fp8_kv_prefill_staged_from_env() {
  return env_switch("PIE_FP8_KV_PREFILL_STAGED", std::getenv("PIE_FP8_KV_PREFILL_STAGED"), kFp8KvPrefillStagedDefault);
}
/// The longest chunk below which a step keeps the mma.sync kernel: its rows read the prefix
/// once per 128-row tile either way, and staging a long prefix for a few rows costs more than v3
/// saves on them.
inline constexpr int kFp8KvPrefillStagedRows = 32;

/// \brief The staging pool and its block table: `cap_pages` pages of T (the cache's page layout,
/// [2][kv_heads][block][head_dim]), `indices` = 0 … cap_pages − 1, and room for a rebased indptr of
/// `max_seqs` sequences.
template <class T>
struct Fp8KvPrefillStaging {
  DeviceBuffer<T> pool;
  DeviceBuffer<int32_t> indices;
  DeviceBuffer<int32_t> indptr;
  int64_t page_elems = 0;  ///< kv::PagedKV::block_stride() of the cache it stages

  Fp8KvPrefillStaging() = default;
  Fp8KvPrefillStaging(int64_t pages, int num_kv_heads, int block_size, int head_dim, int seqs)
      : page_elems(int64_t{2} * num_kv_heads * block_size * head_dim) {
    pool = DeviceBuffer<T>(size_t(pages * page_elems));
    indices = DeviceBuffer<int32_t>(size_t(pages));
    indptr = DeviceBuffer<int32_t>(size_t(seqs) + 1);
    std::vector<int32_t> iota(static_cast<size_t>(pages));
    for (size_t i = 0; i < iota.size(); ++i) iota[i] = static_cast<int32_t>(i);
    PIE_CUDA_CHECK(cudaMemcpy(indices.data(), iota.data(), iota.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  }
  int64_t cap_pages() const { return static_cast<int64_t>(indices.size()); }
  int max_seqs() const { return static_cast<int>(indptr.size()) - 1; }
  /// Device bytes held (memory plan).
  size_t bytes() const { return pool.size() * sizeof(T) + (indices.size() + indptr.size()) * sizeof(int32_t); }
};

namespace detail {

/// Page j of the table's range [indptr[0], indptr[n]) → staging page j − indptr[0], 8 elements a
/// thread, widened exactly; block 0 also writes the rebased indptr.
template <class D, class DKV>
__global__ void __launch_bounds__(256)
    widen_kv_pages_kernel(const DKV* __restrict__ pool, const int32_t* __restrict__ indptr,
                          const int32_t* __restrict__ indices, int n, int64_t page_elems, D* __restrict__ staged,
                          int32_t* __restrict__ staged_indptr) {
  const int32_t base = indptr[0];
  if (blockIdx.x == 0)
    for (int i = threadIdx.x; i <= n; i += blockDim.x) staged_indptr[i] = indptr[i] - base;
  const int64_t per_page = page_elems / 8, total = int64_t(indptr[n] - base) * per_page;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < total; v += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = v / per_page, e = (v - j * per_page) * 8;
    float f[8];
    load8(pool + int64_t(indices[base + j]) * page_elems + e, f);
    store8(staged + j * page_elems + e, f);
  }
}

}  // namespace detail

/// Prefill attention of `cache`'s sequences (an fp8 cache; as prefill_attention) through the
/// staging pool and v3. `pages` is the number of pages the sequences' table holds (the host's
/// indptr[n] − indptr[0]). Returns false, having launched nothing, where the staged path does not
/// apply: pages past the staging capacity, more sequences than it has room for, no v3 kernel for
/// this head dim / block size / device; the caller then runs prefill_attention.
template <class T, class KV, class Variant = attention::Causal>
bool prefill_attention_fp8_staged(TensorView<T> q, kv::PagedKV<KV> cache, const int32_t* cu_query_lens,
                                  int max_query_len, TensorView<T> out, float sm_scale, Variant variant,
                                  cudaStream_t stream, Fp8KvPrefillStaging<T>& staging, int64_t pages) {
  static_assert(is_fp8_v<device_t<KV>>, "prefill_attention_fp8_staged: for an fp8 cache");
  using D = device_t<T>;
  if (cache.batch_size == 0 || max_query_len <= 0) return true;
  const int64_t page_elems = cache.block_stride();
  if (pages <= 0 || pages > staging.cap_pages() || cache.batch_size > staging.max_seqs() ||
      page_elems != staging.page_elems || q.rank != 3 || q.stride[1] != cache.head_dim ||
      out.stride[1] != cache.head_dim || !detail::prefill_v3_taken<D, Variant>(cache.head_dim, cache.block_size))
    return false;
  const int64_t total = pages * (page_elems / 8);
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, int64_t{16} * num_sms()));
  detail::widen_kv_pages_kernel<<<blocks, 256, 0, stream>>>(dev(cache.data), cache.indptr, cache.indices,
                                                           cache.batch_size, page_elems, dev(staging.pool.data()),
                                                           staging.indptr.data());
  PIE_CUDA_CHECK(cudaGetLastError());
  const kv::PagedKV<D> view{dev(staging.pool.data()), cache.num_kv_heads, cache.head_dim,
                            cache.block_size,         cache.batch_size,   staging.indptr.data(),
                            staging.indices.data(),   cache.last_page_len, cache.k_scale,
                            cache.v_scale};
  const int nq = static_cast<int>(q.shape[1]);
  const bool ran = detail::prefill_sm90(dev(q.data), q.stride[0], dev(out.data), out.stride[0], view, cu_query_lens,
                                        max_query_len, nq, sm_scale, variant, stream);
  PIE_CHECK(ran, "prefill_attention_fp8_staged: v3 refused after it was found available");
  return true;
}

}  // namespace pie::ops::cuda
