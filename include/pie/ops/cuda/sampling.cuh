#pragma once
/// \file sampling.cuh
/// \brief Token sampling on the GPU with the CPU Sampler's semantics (engine/sampler.hpp):
/// min_tokens suppression and logit_bias, repetition/frequency/presence penalties, logprobs of
/// that distribution, then greedy argmax or temperature → min_p → top_k → top_p → one draw with
/// the same (seed, sequence index, step) hash of the uniform.
///
/// Sorting-free: top-k and top-p become thresholds on order-preserving keys of the logits,
/// bisected with block reductions in a fixed order (the same result on every run), over a
/// small candidate set in shared memory when top-k bounds it. The draw is an inverse CDF in token-id order over the kept
/// set (the CPU walks the kept set in descending order: same distribution, another u → token map).
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "pie/core/random.hpp"
#include "pie/ops/cuda/common.cuh"
#include "pie/sched/sampler_input.hpp"
#include "pie/sched/sampling_params.hpp"

namespace pie::ops::cuda {

/// \brief Per-row sampling parameters (device array, one per logits row). Index ranges point
/// into SamplingInputs' token and bias arrays.
struct SamplingRow {
  float temperature = 1.f, top_p = 1.f, min_p = 0.f;
  float presence = 0.f, frequency = 0.f, repetition = 1.f;
  int32_t top_k = 0;         ///< ≤ 0: off
  int32_t num_logprobs = -1; ///< −1: none; 0: the chosen token's only; n: also the top n
  uint64_t seed = 0;
  int64_t step = 0;          ///< tokens generated so far (the uniform's third word)
  int32_t seq_index = 0;
  int32_t prompt_begin = 0, prompt_end = 0;  ///< prompt tokens (repetition penalty)
  int32_t output_begin = 0, output_end = 0;  ///< generated tokens (all penalties)
  int32_t bias_begin = 0, bias_end = 0;      ///< (token, bias) pairs; −inf suppresses
};

/// \brief Device pointers the sampler reads.
struct SamplingInputs {
  const SamplingRow* rows = nullptr;
  const int32_t* prompt_tokens = nullptr;
  const int32_t* output_tokens = nullptr;
  const int32_t* bias_tokens = nullptr;
  const float* bias_values = nullptr;
};

/// \brief Device pointers the sampler writes (top_* may be null when max_top == 0).
struct SamplingOutputs {
  int32_t* tokens = nullptr;       ///< [rows]
  float* logprobs = nullptr;       ///< [rows] logprob of the chosen token (rows asking for it)
  int32_t* top_ids = nullptr;      ///< [rows, max_top]
  float* top_logprobs = nullptr;   ///< [rows, max_top]
  int max_top = 0;
};

/// \brief Host-side assembly of one batch's SamplingRow array and token/bias arrays from the
/// CPU sampler's inputs, ready to copy to the device.
struct SamplingBatchHost {
  std::vector<SamplingRow> rows;
  std::vector<int32_t> prompt_tokens, output_tokens, bias_tokens;
  std::vector<float> bias_values;
  int max_top = 0;

  void add(const sched::SamplerInput& in, int vocab) {
    const sched::SamplingParams& p = *in.params;
    SamplingRow r;
    r.temperature = p.temperature; r.top_p = p.top_p; r.min_p = p.min_p;
    r.presence = p.presence_penalty; r.frequency = p.frequency_penalty; r.repetition = p.repetition_penalty;
    r.top_k = p.top_k > 0 ? p.top_k : 0;
    r.num_logprobs = p.logprobs ? *p.logprobs : -1;
    if (r.num_logprobs > max_top) max_top = r.num_logprobs;
    r.seed = in.seed; r.step = static_cast<int64_t>(in.output.size()); r.seq_index = in.seq_index;
    auto add_range = [](std::vector<int32_t>& dst, std::span<const int32_t> src, int32_t& b, int32_t& e) {
      b = static_cast<int32_t>(dst.size());
      dst.insert(dst.end(), src.begin(), src.end());
      e = static_cast<int32_t>(dst.size());
    };
    if (p.repetition_penalty != 1.f) add_range(prompt_tokens, in.prompt, r.prompt_begin, r.prompt_end);
    else r.prompt_begin = r.prompt_end = static_cast<int32_t>(prompt_tokens.size());
    add_range(output_tokens, in.output, r.output_begin, r.output_end);
    r.bias_begin = static_cast<int32_t>(bias_tokens.size());
    const float ninf = -std::numeric_limits<float>::infinity();
    if (static_cast<int>(in.output.size()) < p.min_tokens) {
      if (!p.ignore_eos)
        for (int32_t t : in.eos_ids) if (t >= 0 && t < vocab) { bias_tokens.push_back(t); bias_values.push_back(ninf); }
      for (int32_t t : p.stop_token_ids) if (t >= 0 && t < vocab) { bias_tokens.push_back(t); bias_values.push_back(ninf); }
    }
    for (auto& [t, b] : p.logit_bias) if (t >= 0 && t < vocab) { bias_tokens.push_back(t); bias_values.push_back(b); }
    r.bias_end = static_cast<int32_t>(bias_tokens.size());
    rows.push_back(r);
  }
};

namespace detail {

inline constexpr int kSampleThreads = 1024;

/// Order-preserving map float → uint32 (larger float ↔ larger key; −inf below every finite).
__device__ __forceinline__ uint32_t fkey(float f) {
  uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/// Bias/suppression and penalties of one row, in the CPU order. One CTA per row; `bits` is
/// dynamic shared memory of two vocab-sized bitmaps (prompt ∪ output, output).
// static: a header-only kernel must not clash when several CUDA files of one program include it.
static __global__ void sampling_penalty_kernel(float* __restrict__ logits, int vocab, SamplingInputs in) {
  extern __shared__ uint32_t bits[];
  const SamplingRow r = in.rows[blockIdx.x];
  float* x = logits + int64_t(blockIdx.x) * vocab;
  const int words = (vocab + 31) / 32;
  uint32_t* seen_any = bits;
  uint32_t* seen_out = bits + words;
  const bool rep = r.repetition != 1.f, fp = r.frequency != 0.f || r.presence != 0.f;
  if (threadIdx.x == 0)  // few entries; serial keeps the CPU's addition order
    for (int i = r.bias_begin; i < r.bias_end; ++i) x[in.bias_tokens[i]] += in.bias_values[i];
  if (!rep && !fp) return;
  for (int i = threadIdx.x; i < 2 * words; i += blockDim.x) bits[i] = 0;
  __syncthreads();
  if (rep)
    for (int i = r.prompt_begin + threadIdx.x; i < r.prompt_end; i += blockDim.x) {
      int t = in.prompt_tokens[i];
      if (t >= 0 && t < vocab) atomicOr(&seen_any[t / 32], 1u << (t % 32));
    }
  for (int i = r.output_begin + threadIdx.x; i < r.output_end; i += blockDim.x) {
    int t = in.output_tokens[i];
    if (t >= 0 && t < vocab) {
      atomicOr(&seen_any[t / 32], 1u << (t % 32));
      atomicOr(&seen_out[t / 32], 1u << (t % 32));
    }
  }
  __syncthreads();
  for (int w = threadIdx.x; w < words; w += blockDim.x) {
    uint32_t a = rep ? seen_any[w] : 0u, o = seen_out[w];
    while (a | o) {
      int bit = __ffs(a | o) - 1;
      int t = w * 32 + bit;
      float v = x[t];
      if (a >> bit & 1u) v = v > 0.f ? v / r.repetition : v * r.repetition;
      if (o >> bit & 1u) {
        // count occurrences: only tokens that occur at all get here, so the scans are bounded
        // by (distinct outputs)·(outputs) and run in parallel over bitmap words
        int c = 0;
        for (int i = r.output_begin; i < r.output_end; ++i) c += in.output_tokens[i] == t;
        v -= r.frequency * static_cast<float>(c) + r.presence;
      }
      x[t] = v;
      a &= ~(1u << bit); o &= ~(1u << bit);
    }
  }
}

struct ArgMax { float v; int i; };
__device__ __forceinline__ ArgMax better(ArgMax a, ArgMax b) {
  return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
}

inline constexpr int kCandCap = 2048;  ///< candidates kept in shared memory per row

/// Shared memory of one sampling CTA.
struct SampleSmem {
  using Reduce = cub::BlockReduce<double, kSampleThreads>;
  using Sort = cub::BlockRadixSort<uint32_t, kSampleThreads, 1>;
  union {
    typename Reduce::TempStorage reduce;
    typename Sort::TempStorage sort;
  } cub;
  double bcast;
  uint32_t kth;
  int count, tok, seg;
  float rem;
  ArgMax am[32];
  float wsum[32];
  int cand_id[kCandCap];
  float cand_d[kCandCap];
};

/// Block-wide sum; every thread gets it (fixed reduction tree: the same bits on every run).
__device__ __forceinline__ double block_sum_all(double v, SampleSmem& s) {
  double t = SampleSmem::Reduce(s.cub.reduce).Sum(v);
  if (threadIdx.x == 0) s.bcast = t;
  __syncthreads();
  t = s.bcast;
  __syncthreads();
  return t;
}

/// The k-th largest (1-based, k ≤ threads) of one key per thread. Given each thread's maximum,
/// at least k elements of the row are ≥ the result: a lower bound of the row's k-th largest.
__device__ __forceinline__ uint32_t kth_largest_of_threads(uint32_t key, int k, SampleSmem& s) {
  uint32_t keys[1] = {key};
  SampleSmem::Sort(s.cub.sort).SortDescending(keys);
  if (static_cast<int>(threadIdx.x) == k - 1) s.kth = keys[0];
  __syncthreads();
  uint32_t r = s.kth;
  __syncthreads();
  return r;
}

/// Largest K in [lo, hi] with wsum(K) ≥ target, given wsum(lo) ≥ target (bisection on keys;
/// wsum is a block-wide weight of the elements with key ≥ K).
template <class WSum>
__device__ uint32_t search_threshold(uint32_t lo, uint32_t hi, double target, WSum wsum) {
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo + 1) / 2;
    if (wsum(mid) >= target) lo = mid; else hi = mid - 1;
  }
  return lo;
}

/// Gathers ids with key(x) ≥ kmin into s.cand_*; returns the count (> kCandCap: overflowed).
template <class DVal>
__device__ int collect(int vocab, uint32_t kmin, DVal dval, SampleSmem& s) {
  if (threadIdx.x == 0) s.count = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    float d = dval(i);
    if (fkey(d) >= kmin) {
      int slot = atomicAdd(&s.count, 1);
      if (slot < kCandCap) { s.cand_id[slot] = i; s.cand_d[slot] = d; }
    }
  }
  __syncthreads();
  int c = s.count;
  __syncthreads();
  return c;
}

/// The row's maximum with its lowest index (every thread gets it); `my_max` is this thread's
/// own maximum over its strided elements (the top-k pivots start from it).
__device__ __forceinline__ ArgMax row_argmax(const float* __restrict__ x, int vocab, float& my_max, SampleSmem& s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  ArgMax am{-INFINITY, 0x7fffffff};
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) am = better(am, ArgMax{x[i], i});
  my_max = am.v;
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax t{__shfl_xor_sync(0xffffffffu, am.v, o), __shfl_xor_sync(0xffffffffu, am.i, o)};
    am = better(am, t);
  }
  if (lane == 0) s.am[warp] = am;
  __syncthreads();
  if (warp == 0) {
    am = s.am[lane];
    for (int o = 16; o > 0; o >>= 1) {
      ArgMax t{__shfl_xor_sync(0xffffffffu, am.v, o), __shfl_xor_sync(0xffffffffu, am.i, o)};
      am = better(am, t);
    }
    if (lane == 0) s.am[0] = am;
  }
  __syncthreads();
  return s.am[0];
}

/// log Σ exp(x) of the row with maximum m (every thread gets it).
__device__ __forceinline__ float row_logsumexp(const float* __restrict__ x, int vocab, float m, SampleSmem& s) {
  double sum = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += __expf(x[i] - m);
  return m + static_cast<float>(log(block_sum_all(sum, s)));
}

/// The row's n largest logits (1 ≤ n ≤ kSampleThreads) as logprobs (x − lse), ordered by
/// (value desc, id asc), written by thread 0 to ids[0..n) / lps[0..n) (−1 / −inf past the row).
/// m is the row maximum, my_max this thread's (row_argmax).
__device__ __forceinline__ void top_n_logprobs(const float* __restrict__ x, int vocab, int n, float my_max, float m,
                                               float lse, SampleSmem& s, int32_t* ids, float* lps) {
  const int tid = threadIdx.x;
  auto xv = [&](int i) { return x[i]; };
  uint32_t pivot = kth_largest_of_threads(fkey(my_max), min(n, kSampleThreads), s);
  int c = collect(vocab, pivot, xv, s);
  if (c > kCandCap) {  // too many ties with the pivot: bisect the exact n-th key instead
    auto cnt = [&](uint32_t K) {
      double t = 0;
      for (int i = tid; i < vocab; i += blockDim.x) t += fkey(x[i]) >= K ? 1.0 : 0.0;
      return block_sum_all(t, s);
    };
    c = min(collect(vocab, search_threshold(0u, fkey(m), double(n), cnt), xv, s), kCandCap);
  }
  if (tid == 0) {
    // selection by (value desc, id asc): n ≤ 20 scans of a short list
    for (int j = 0; j < n; ++j) {
      int best = -1;
      for (int q = j; q < c; ++q)
        if (best < 0 || s.cand_d[q] > s.cand_d[best] ||
            (s.cand_d[q] == s.cand_d[best] && s.cand_id[q] < s.cand_id[best])) best = q;
      if (best >= 0) {
        float tv = s.cand_d[j]; s.cand_d[j] = s.cand_d[best]; s.cand_d[best] = tv;
        int ti = s.cand_id[j]; s.cand_id[j] = s.cand_id[best]; s.cand_id[best] = ti;
      }
      ids[j] = best >= 0 ? s.cand_id[j] : -1;
      lps[j] = best >= 0 ? s.cand_d[j] - lse : -INFINITY;
    }
  }
}

/// One CTA per row. The row (≤ 600 KB) is re-read a few times and stays in L2. Thresholds are
/// bisected over a small candidate set in shared memory whenever top-k (or the logprob top-n)
/// bounds it — the k-th largest per-thread maximum is a lower bound of the k-th largest logit,
/// so every element above the threshold is above that pivot — and over the row otherwise.
static __global__ void __launch_bounds__(kSampleThreads) sampling_kernel(const float* __restrict__ logits, int vocab,
                                                                  SamplingInputs in, SamplingOutputs out) {
  __shared__ SampleSmem s;
  const SamplingRow r = in.rows[blockIdx.x];
  const float* x = logits + int64_t(blockIdx.x) * vocab;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  // Pass 1: row maximum with its lowest index, and this thread's own maximum.
  float my_max;
  const ArgMax best = row_argmax(x, vocab, my_max, s);
  const float m = best.v;
  int token = best.i;

  if (r.temperature > 0.f && m > -INFINITY) {
    const float inv_t = 1.f / r.temperature;
    // d = (x − m)/T ≤ 0, monotone in x. Kept: key(d) ≥ kmin (d > −inf, min_p, top-k, top-p).
    auto dval = [&](int i) { return (x[i] - m) * inv_t; };
    const uint32_t top = fkey(0.f);
    uint32_t kmin = fkey(-INFINITY) + 1;
    if (r.min_p > 0.f) kmin = max(kmin, fkey(logf(r.min_p)));
    int ncand = -1;  // ≥ 0: s.cand_* holds every element with key ≥ kmin
    auto cand_count = [&](uint32_t K) {
      double c = 0;
      for (int j = tid; j < ncand; j += blockDim.x) c += fkey(s.cand_d[j]) >= K ? 1.0 : 0.0;
      return block_sum_all(c, s);
    };
    auto cand_mass = [&](uint32_t K) {
      double c = 0;
      for (int j = tid; j < ncand; j += blockDim.x) c += fkey(s.cand_d[j]) >= K ? double(__expf(s.cand_d[j])) : 0.0;
      return block_sum_all(c, s);
    };
    auto row_count = [&](uint32_t K) {
      double c = 0;
      for (int i = tid; i < vocab; i += blockDim.x) c += fkey(dval(i)) >= K ? 1.0 : 0.0;
      return block_sum_all(c, s);
    };
    auto row_mass = [&](uint32_t K) {
      double c = 0;
      for (int i = tid; i < vocab; i += blockDim.x) { float d = dval(i); c += fkey(d) >= K ? double(__expf(d)) : 0.0; }
      return block_sum_all(c, s);
    };
    if (r.top_k > 0 && r.top_k < vocab) {
      const double k = r.top_k;
      if (r.top_k <= kSampleThreads) {
        uint32_t pivot = kth_largest_of_threads(fkey((my_max - m) * inv_t), r.top_k, s);
        uint32_t lo = max(pivot, kmin);
        int c = collect(vocab, lo, dval, s);
        if (c <= kCandCap) {
          ncand = c;
          kmin = c >= r.top_k ? search_threshold(lo, top, k, cand_count) : lo;
        }
      }
      if (ncand < 0 && row_count(kmin) >= k) kmin = search_threshold(kmin, top, k, row_count);
    }
    if (r.top_p < 1.f) {
      double z = ncand >= 0 ? cand_mass(kmin) : row_mass(kmin);
      double target = double(r.top_p) * z;
      kmin = ncand >= 0 ? search_threshold(kmin, top, target, cand_mass) : search_threshold(kmin, top, target, row_mass);
    }
    // Inverse CDF in id order over the kept set: warp w owns ids [w·seg, (w+1)·seg).
    auto weight = [&](int i) { float d = dval(i); return fkey(d) >= kmin ? __expf(d) : 0.f; };
    const int seg = (vocab + 31) / 32;
    const int lo = warp * seg, hi = min(vocab, lo + seg);
    float ws = 0.f;
    for (int i = lo + lane; i < hi; i += 32) ws += weight(i);
    ws = warp_sum(ws);
    if (lane == 0) s.wsum[warp] = ws;
    __syncthreads();
    if (tid == 0) {
      double total = 0;
      for (int w = 0; w < 32; ++w) total += s.wsum[w];
      // the CPU Sampler's u (core/random.hpp): one formula on both sides
      double target = rng::sample_uniform(r.seed, r.seq_index, r.step) * total, c = 0;
      int w = 0;
      for (; w < 31; ++w) {
        if (target < c + s.wsum[w]) break;
        c += s.wsum[w];
      }
      s.rem = static_cast<float>(target - c);  // remaining mass inside warp w's segment
      s.seg = w;
      s.tok = -1;
    }
    __syncthreads();
    if (warp == s.seg) {
      float rem = s.rem, run = 0.f;
      int last_kept = -1, found = -1;
      for (int base = lo; base < hi && found < 0; base += 32) {
        int i = base + lane;
        float w = i < hi ? weight(i) : 0.f;
        float incl = w;
        for (int o = 1; o < 32; o <<= 1) {
          float t = __shfl_up_sync(0xffffffffu, incl, o);
          if (lane >= o) incl += t;
        }
        unsigned hit = __ballot_sync(0xffffffffu, w > 0.f && rem < run + incl);
        unsigned kept = __ballot_sync(0xffffffffu, w > 0.f);
        if (hit) found = base + __ffs(hit) - 1;
        else if (kept) last_kept = base + 31 - __clz(kept);
        run += __shfl_sync(0xffffffffu, incl, 31);
      }
      if (lane == 0) s.tok = found >= 0 ? found : last_kept;
    }
    __syncthreads();
    if (s.tok >= 0) token = s.tok;  // none: rounding put the target past the end; keep the top token
  }

  if (r.num_logprobs >= 0) {
    const float lse = row_logsumexp(x, vocab, m, s);
    const int n = min(r.num_logprobs, out.max_top);
    if (n > 0)
      top_n_logprobs(x, vocab, n, my_max, m, lse, s, out.top_ids + int64_t(blockIdx.x) * out.max_top,
                     out.top_logprobs + int64_t(blockIdx.x) * out.max_top);
    if (tid == 0) out.logprobs[blockIdx.x] = x[token] - lse;
  }
  if (tid == 0) out.tokens[blockIdx.x] = token;
}
}  // namespace detail

/// \brief Samples one token per row of logits [num_rows, vocab] (float, modified in place by
/// bias and penalties). All pointers in `in` and `out` are device pointers.
inline void sample(float* logits, int num_rows, int vocab, SamplingInputs in, SamplingOutputs out,
                   cudaStream_t stream = nullptr) {
  PIE_CHECK(vocab > 0, "sample: empty vocabulary");
  if (num_rows == 0) return;
  size_t smem = size_t(2) * ((vocab + 31) / 32) * sizeof(uint32_t);
  if (smem > 48 * 1024)
    PIE_CUDA_CHECK(cudaFuncSetAttribute(detail::sampling_penalty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(smem)));
  detail::sampling_penalty_kernel<<<num_rows, 256, smem, stream>>>(logits, vocab, in);
  PIE_CUDA_CHECK_LAUNCH();
  detail::sampling_kernel<<<num_rows, detail::kSampleThreads, 0, stream>>>(logits, vocab, in, out);
  PIE_CUDA_CHECK_LAUNCH();
}

}  // namespace pie::ops::cuda
