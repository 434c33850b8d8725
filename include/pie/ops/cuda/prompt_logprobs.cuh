#pragma once
/// \file prompt_logprobs.cuh
/// \brief prompt_logprobs on the GPU: for each row of fp32 logits and the prompt token it
/// scores, the token's log_softmax, its rank and the row's top kMaxLogprobs alternatives —
/// pie::Sampler::prompt_logprob_of's semantics (engine/sampler.hpp), one fixed-size record per
/// row (sched::PromptLogprobRow), so only ~170 bytes a row come back to the host instead of the
/// vocab-sized row. One CTA per row, on the sampler's block helpers (sampling.cuh): the same
/// row maximum, log-sum-exp and (value desc, id asc) top-n selection as the device logprobs.
#include <cstdint>

#include "pie/ops/cuda/common.cuh"
#include "pie/ops/cuda/sampling.cuh"
#include "pie/sched/prompt_logprob_row.hpp"

namespace pie::ops::cuda {

namespace detail {

static __global__ void __launch_bounds__(kSampleThreads)
    prompt_logprobs_kernel(const float* __restrict__ logits, int vocab, const int32_t* __restrict__ tokens,
                           sched::PromptLogprobRow* __restrict__ out) {
  __shared__ SampleSmem s;
  const float* x = logits + int64_t(blockIdx.x) * vocab;
  const int tid = threadIdx.x;
  float my_max;
  const float m = row_argmax(x, vocab, my_max, s).v;
  const float lse = row_logsumexp(x, vocab, m, s);
  const int32_t t = tokens[blockIdx.x];
  const float xt = x[t];
  // Rank: ties order by lower id, as the top-n does (the CPU's rule).
  double ahead = 0;
  for (int i = tid; i < vocab; i += blockDim.x) ahead += (x[i] > xt || (x[i] == xt && i < t)) ? 1.0 : 0.0;
  ahead = block_sum_all(ahead, s);
  sched::PromptLogprobRow& r = out[blockIdx.x];
  const int n = min(sched::kMaxLogprobs, vocab);
  top_n_logprobs(x, vocab, n, my_max, m, lse, s, r.top_ids, r.top_logprobs);
  if (tid == 0) {
    for (int j = n; j < sched::kMaxLogprobs; ++j) { r.top_ids[j] = -1; r.top_logprobs[j] = -INFINITY; }
    r.logprob = xt - lse;
    r.rank = static_cast<int32_t>(ahead) + 1;
  }
}

}  // namespace detail

/// \brief Scores `rows` rows of logits [rows, vocab] (fp32, device): row j scores prompt token
/// tokens[j] (device, each in [0, vocab)) into out[j] (device).
inline void prompt_logprobs(const float* logits, int rows, int vocab, const int32_t* tokens,
                            sched::PromptLogprobRow* out, cudaStream_t stream = nullptr) {
  PIE_CHECK(vocab > 0, "prompt_logprobs: empty vocabulary");
  if (rows == 0) return;
  detail::prompt_logprobs_kernel<<<rows, detail::kSampleThreads, 0, stream>>>(logits, vocab, tokens, out);
  PIE_CUDA_CHECK_LAUNCH();
}

}  // namespace pie::ops::cuda
