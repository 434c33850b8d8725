#pragma once
/// \file attention.hpp
/// \brief Paged attention over a step: each sequence's query rows (a prefill chunk or one
/// decode token) attend to every key of their sequence in the paged cache up to their own
/// position — the cached prefix plus the chunk itself, causally — so prefill and decode are
/// one loop. K/V of the step must already be written (kv_write) before this runs.
///
/// Numerics: scores, softmax and the V sum in float, keys visited in position order with an
/// exact two-pass softmax; a query's output therefore depends only on its own sequence's
/// cache, never on the batch or on how the prompt was chunked.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "pie/core/attention_variants.hpp"
#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/ops/cpu/parallel.hpp"

namespace pie::ops::cpu {

/// \brief out[t, h] = softmax(scale·q[t, h]·Kᵀ masked by the variant)·V over the sequence's
/// paged K/V, for every row t of every sequence and every query head h (GQA: query head h
/// reads kv head h / (num_q_heads / kv.num_kv_heads)).
/// \tparam Variant attention hook struct (attention/variants.hpp)
/// \param q      row t's head h at q + t·q_stride + h·head_dim
/// \param out    row t's head h at out + t·out_stride + h·head_dim
/// \param cu_query_lens [kv.batch_size + 1]: rows of sequence b are [cu[b], cu[b+1]); the last
///               row of sequence b sits at position kv.seq_len(b) − 1
template <class Variant = attention::Causal, class KVT>
inline void paged_attention(const float* q, int64_t q_stride, float* out, int64_t out_stride,
                            const kv::PagedKV<KVT>& kv, const int32_t* cu_query_lens,
                            int num_q_heads, float scale, const Variant& variant = {}) {
  static_assert(attention::is_variant_v<Variant>, "paged_attention: Variant must be a hook struct");
  const int nkv = kv.num_kv_heads, hd = kv.head_dim, bs = kv.block_size;
  PIE_CHECK(nkv > 0 && num_q_heads % nkv == 0, "paged_attention: ", num_q_heads,
            " query heads are not a multiple of ", nkv, " kv heads");
  const int group = num_q_heads / nkv;
  const int num_rows = cu_query_lens[kv.batch_size];
  // Row → sequence lookup (rows are few; a flat table keeps the parallel loop simple).
  std::vector<int32_t> row_seq(num_rows);
  for (int b = 0; b < kv.batch_size; ++b)
    for (int r = cu_query_lens[b]; r < cu_query_lens[b + 1]; ++r) row_seq[r] = b;

  parallel_for(static_cast<int64_t>(num_rows) * num_q_heads, [&](int64_t item) {
    const int row = static_cast<int>(item / num_q_heads), h = static_cast<int>(item % num_q_heads);
    const int b = row_seq[row];
    const int ctx = kv.seq_len(b);
    const int qlen = cu_query_lens[b + 1] - cu_query_lens[b];
    const int q_pos = ctx - qlen + (row - cu_query_lens[b]);
    const int kvh = h / group;
    const int32_t* table = kv.indices + kv.indptr[b];
    const float* qh = q + row * q_stride + static_cast<int64_t>(h) * hd;
    // fp8: the cache holds K / k_scale and V / v_scale of this kv head (kv_write.hpp).
    constexpr bool scaled = std::is_same_v<KVT, fp8_e4m3>;
    const float ks = scaled ? kv.k_scale_of(kvh) : 1.0f, vs = scaled ? kv.v_scale_of(kvh) : 1.0f;
    float* oh = out + row * out_stride + static_cast<int64_t>(h) * hd;

    int k_end = Variant::kCausal ? q_pos + 1 : ctx;
    int k_begin = Variant::kWindowLeft > 0 ? std::max(0, q_pos - Variant::kWindowLeft + 1) : 0;
    thread_local std::vector<float> s;
    s.assign(std::max(k_end - k_begin, 0), 0.0f);
    float m = -std::numeric_limits<float>::infinity();
    for (int kp = k_begin; kp < k_end; ++kp) {
      float& sc = s[kp - k_begin];
      if (!variant.mask(q_pos, kp)) { sc = -std::numeric_limits<float>::infinity(); continue; }
      const KVT* kr = kv.k_page(table[kp / bs], kvh) + static_cast<int64_t>(kp % bs) * hd;
      // 8 interleaved partial sums: vectorisable, and the same order for every query.
      float acc[8] = {};
      int i = 0;
      for (; i + 8 <= hd; i += 8)
        for (int l = 0; l < 8; ++l) acc[l] += qh[i + l] * to_float(kr[i + l]);
      for (int l = 0; i < hd; ++i, ++l) acc[l & 7] += qh[i] * to_float(kr[i]);
      const float d = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      sc = variant.logits(d * ks * scale);
      m = std::max(m, sc);
    }
    for (int i = 0; i < hd; ++i) oh[i] = 0.f;
    if (m == -std::numeric_limits<float>::infinity()) return;  // every key masked
    float sum = 0.f;
    for (float& sc : s) { sc = std::exp(sc - m); sum += sc; }
    const float inv = vs / sum;
    for (int kp = k_begin; kp < k_end; ++kp) {
      const float p = s[kp - k_begin];
      if (p == 0.f) continue;
      const KVT* vr = kv.v_page(table[kp / bs], kvh) + static_cast<int64_t>(kp % bs) * hd;
      for (int i = 0; i < hd; ++i) oh[i] += p * to_float(vr[i]);
    }
    for (int i = 0; i < hd; ++i) oh[i] *= inv;
  }, int64_t{4} * (num_rows > 0 ? kv.seq_len(row_seq[num_rows - 1]) : 0) * hd);
}

}  // namespace pie::ops::cpu
