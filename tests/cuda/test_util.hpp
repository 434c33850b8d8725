#pragma once
/// \file test_util.hpp
/// \brief Helpers of the CUDA kernel tests: seeded random host data, device upload/download,
/// NaN poisoning of outputs, the relative-error metric of METHOD.md, and a random paged cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/dtype.hpp"
#include "pie/kv/paged_kv.hpp"

namespace pie::test {

/// Element-type name for test labels.
template <class T> const char* tname() {
  if constexpr (std::is_same_v<T, f16>) return "f16";
  else if constexpr (std::is_same_v<T, bf16>) return "bf16";
  else if constexpr (std::is_same_v<T, fp8_e4m3>) return "fp8";
  else return "f32";
}

/// Normal(0, scale) values rounded to T (never all zeros).
template <class T>
std::vector<T> randn(size_t n, std::mt19937& rng, float scale = 1.f, float mean = 0.f) {
  std::normal_distribution<float> d(mean, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = from_float<T>(d(rng));
  return v;
}
template <class T> std::vector<float> to_f32(const std::vector<T>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = to_float(v[i]);
  return f;
}

template <class T> DeviceBuffer<T> upload(const std::vector<T>& h) {
  DeviceBuffer<T> d(h.size());
  if (!h.empty()) PIE_CUDA_CHECK(cudaMemcpy(d.data(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <class T> std::vector<T> download(const DeviceBuffer<T>& d) {
  std::vector<T> h(d.size());
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  if (!h.empty()) PIE_CUDA_CHECK(cudaMemcpy(h.data(), d.data(), h.size() * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
/// All-ones bytes: NaN in f32, f16, bf16 and fp8 e4m3, so an unwritten element fails the check.
template <class T> void poison(DeviceBuffer<T>& d) {
  PIE_CUDA_CHECK(cudaMemset(d.data(), 0xff, d.size() * sizeof(T)));
}

/// ‖out − ref‖ / ‖ref‖ over float views; +inf when out has a NaN or inf.
template <class T>
double rel_err(const std::vector<T>& out, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double o = to_float(out[i]);
    if (!std::isfinite(o)) return INFINITY;
    num += (o - ref[i]) * (o - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

/// Tolerance for outputs stored in T (METHOD.md: f16/bf16 operands between 1e-3 and 1e-2).
template <class T> double tol() {
  if constexpr (std::is_same_v<T, bf16>) return 1e-2;
  else if constexpr (std::is_same_v<T, f16>) return 2e-3;
  else return 1e-4;
}

/// A random paged cache of one layer: shuffled block ids, ragged lengths, random K/V.
template <class KV>
struct RandomCache {
  int num_kv_heads, head_dim, block_size, num_blocks;
  std::vector<int> lens;
  std::vector<int32_t> indptr, indices, last;
  std::vector<KV> pool;
  DeviceBuffer<KV> d_pool;
  DeviceBuffer<int32_t> d_indptr, d_indices, d_last;
  std::vector<float> k_scale, v_scale;  // fp8: per kv head, distinct for K and V and per head
  DeviceBuffer<float> d_k_scale, d_v_scale;

  RandomCache(std::vector<int> seq_lens, int nkv, int hd, int bs, std::mt19937& rng, float scale = 1.f)
      : num_kv_heads(nkv), head_dim(hd), block_size(bs), lens(std::move(seq_lens)) {
    int pages = 0;
    indptr.push_back(0);
    for (int l : lens) { pages += (l + bs - 1) / bs; indptr.push_back(pages); last.push_back(l == 0 ? 0 : (l - 1) % bs + 1); }
    num_blocks = pages + 3;  // spare blocks: ids are a permutation with holes
    std::vector<int32_t> ids(num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    indices.assign(ids.begin(), ids.begin() + pages);
    if constexpr (std::is_same_v<KV, fp8_e4m3>) {
      // Values up to ~4σ land near the top of e4m3's range; each head's K and V scales differ
      // (K rising, V falling with the head), so a kernel reading another head's scale, or K's
      // for V, fails the comparison.
      pool = randn<KV>(size_t(num_blocks) * 2 * nkv * bs * hd, rng, 64.f);
      for (int h = 0; h < nkv; ++h) {
        k_scale.push_back(scale / 64.f * (0.5f + 0.25f * h));
        v_scale.push_back(scale / 64.f * (2.f / (1.f + 0.5f * h)));
      }
      d_k_scale = upload(k_scale);
      d_v_scale = upload(v_scale);
    } else {
      pool = randn<KV>(size_t(num_blocks) * 2 * nkv * bs * hd, rng, scale);
    }
    d_pool = upload(pool);
    d_indptr = upload(indptr);
    d_indices = upload(indices);
    d_last = upload(last);
  }
  kv::PagedKV<KV> host() {
    return {pool.data(), num_kv_heads, head_dim, block_size, int(lens.size()), indptr.data(), indices.data(),
            last.data(), k_scale.empty() ? nullptr : k_scale.data(), v_scale.empty() ? nullptr : v_scale.data()};
  }
  kv::PagedKV<KV> device() {
    return {d_pool.data(), num_kv_heads, head_dim, block_size, int(lens.size()), d_indptr.data(), d_indices.data(),
            d_last.data(), d_k_scale.data(), d_v_scale.data()};
  }
};

}  // namespace pie::test
