#pragma once
/// \file sampler.hpp
/// \brief Turns one row of logits into one token, with vLLM's semantics and order:
///   1. min_tokens: EOS and stop ids → −inf while fewer than min_tokens were generated
///   2. logit_bias added
///   3. penalties: repetition (prompt ∪ output: x>0 → x/r, else x·r), frequency (−f·count in
///      output), presence (−p if in output)
///   → logprobs are reported from this distribution (log_softmax, before temperature)
///   4. greedy (temperature 0): argmax, lowest id on ties; otherwise
///   5. temperature, top_k, min_p (drop p < min_p·p_max), top_p (smallest set of the most
///      likely tokens with mass ≥ p of what is left), then one inverse-CDF draw over the kept
///      tokens (id order; descending order when top_p applies).
///
/// Randomness: the uniform of a draw is a hash of (seed, sequence index, step), never of the
/// batch position or of draws made for other sequences, so a seeded request gets the same
/// tokens alone or batched, and the engine stays deterministic for unseeded ones.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <unordered_map>
#include <vector>

#include "pie/core/random.hpp"
#include "pie/engine/request_output.hpp"
#include "pie/sched/sampler_input.hpp"
#include "pie/sched/sampling_params.hpp"

namespace pie {

/// The sampler's per-sequence input; it lives in sched so the GPU sampler can read it too.
using sched::SamplerInput;

/// \brief A sampled token and, when asked, its logprob and the top-n alternatives.
struct SamplerOutput {
  int32_t token = -1;
  bool has_logprob = false;
  TokenLogprob logprob;
};

/// \brief Stateless sampler; see the file comment for the order of operations.
class Sampler {
 public:
  /// Uniform in [0, 1) from (seed, sequence index, step): splitmix64 over the three words
  /// (rng::sample_uniform, which the GPU sampler draws with too).
  static double uniform(uint64_t seed, int seq_index, int64_t step) {
    return rng::sample_uniform(seed, seq_index, step);
  }

  /// Samples one token from `logits` (length vocab; modified in place).
  static SamplerOutput sample(std::span<float> logits, const SamplerInput& in) {
    const sched::SamplingParams& p = *in.params;
    const int vocab = static_cast<int>(logits.size());
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();

    if (static_cast<int>(in.output.size()) < p.min_tokens) {
      if (!p.ignore_eos)
        for (int32_t t : in.eos_ids) if (t >= 0 && t < vocab) logits[t] = kNegInf;
      for (int32_t t : p.stop_token_ids) if (t >= 0 && t < vocab) logits[t] = kNegInf;
    }
    for (auto& [t, b] : p.logit_bias) if (t >= 0 && t < vocab) logits[t] += b;
    apply_penalties(logits, in);

    SamplerOutput out;
    if (p.greedy()) {
      out.token = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      const int64_t step = in.step >= 0 ? in.step : static_cast<int64_t>(in.output.size());
      out.token = draw(logits, p, Sampler::uniform(in.seed, in.seq_index, step));
    }
    if (p.logprobs) {
      out.has_logprob = true;
      out.logprob = logprobs_of(logits, out.token, *p.logprobs);
    }
    return out;
  }

  /// Repetition, frequency and presence penalties (vLLM semantics), in place.
  static void apply_penalties(std::span<float> logits, const SamplerInput& in) {
    const sched::SamplingParams& p = *in.params;
    const int vocab = static_cast<int>(logits.size());
    if (p.repetition_penalty != 1.0f) {
      std::vector<char> seen(vocab, 0);
      for (int32_t t : in.prompt) if (t >= 0 && t < vocab) seen[t] = 1;
      for (int32_t t : in.output) if (t >= 0 && t < vocab) seen[t] = 1;
      for (int t = 0; t < vocab; ++t)
        if (seen[t]) logits[t] = logits[t] > 0 ? logits[t] / p.repetition_penalty : logits[t] * p.repetition_penalty;
    }
    if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
      std::unordered_map<int32_t, int> counts;
      for (int32_t t : in.output) if (t >= 0 && t < vocab) ++counts[t];
      for (auto& [t, c] : counts)
        logits[t] -= p.frequency_penalty * static_cast<float>(c) + p.presence_penalty;
    }
  }

  /// A prompt token's logprob from the raw logits of the position before it, with its rank.
  static PromptLogprob prompt_logprob_of(std::span<const float> logits, int32_t token, int top_n) {
    TokenLogprob lp = logprobs_of(logits, token, top_n);
    PromptLogprob out;
    out.token = token;
    out.logprob = lp.logprob;
    out.top = std::move(lp.top);
    const float x = logits[token];
    int32_t better = 0;  // ties rank by lower id, as the top-n order does
    for (size_t i = 0; i < logits.size(); ++i)
      better += logits[i] > x || (logits[i] == x && static_cast<int32_t>(i) < token);
    out.rank = better + 1;
    return out;
  }

  /// log_softmax(logits)[token] and the top-n (descending; ties by lower id).
  static TokenLogprob logprobs_of(std::span<const float> logits, int32_t token, int top_n) {
    float m = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float x : logits) sum += std::exp(static_cast<double>(x - m));
    const float lse = m + static_cast<float>(std::log(sum));
    TokenLogprob lp;
    lp.token = token;
    lp.logprob = logits[token] - lse;
    if (top_n > 0) {
      std::vector<int32_t> idx(logits.size());
      std::iota(idx.begin(), idx.end(), 0);
      const int k = std::min<int>(top_n, static_cast<int>(idx.size()));
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      for (int i = 0; i < k; ++i) lp.top.emplace_back(idx[i], logits[idx[i]] - lse);
    }
    return lp;
  }

 private:
  /// Temperature, top_k, min_p, top_p, then an inverse-CDF draw with uniform u. Sorting is
  /// avoided where the filters allow (a full sort of a 151k vocabulary costs ~10 ms): top_k
  /// selects with nth_element, top_p sorts progressively larger prefixes until the nucleus is
  /// inside one. Ties order by lower id, so every step is deterministic.
  static int32_t draw(std::span<const float> logits, const sched::SamplingParams& p, double u) {
    const int vocab = static_cast<int>(logits.size());
    auto desc = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::vector<int32_t> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    if (p.top_k > 0 && p.top_k < vocab) {
      std::nth_element(idx.begin(), idx.begin() + p.top_k, idx.end(), desc);
      idx.resize(p.top_k);
      std::sort(idx.begin(), idx.end());  // id order: independent of nth_element's internals
    }
    // Weights relative to the most likely token: w = exp((x − max)/T) = p / p_max.
    const double t = p.temperature;
    const float m = *std::max_element(logits.begin(), logits.end());
    std::vector<double> w(idx.size());
    for (size_t i = 0; i < idx.size(); ++i) w[i] = std::exp((static_cast<double>(logits[idx[i]]) - m) / t);
    size_t keep = idx.size();
    if (p.min_p > 0.0f) {  // p ≥ min_p·p_max
      size_t k = 0;
      for (size_t i = 0; i < keep; ++i)
        if (w[i] >= p.min_p) { idx[k] = idx[i]; w[k] = w[i]; ++k; }
      keep = k;
    }
    if (p.top_p < 1.0f && keep > 1) {
      double mass = 0;
      for (size_t i = 0; i < keep; ++i) mass += w[i];
      // Sort (index, weight) pairs by descending logit, a prefix at a time.
      std::vector<size_t> ord(keep);
      std::iota(ord.begin(), ord.end(), size_t{0});
      auto by = [&](size_t a, size_t b) { return desc(idx[a], idx[b]); };
      size_t n = 0;
      for (size_t sorted = std::min<size_t>(64, keep);; sorted = std::min(keep, sorted * 16)) {
        std::partial_sort(ord.begin(), ord.begin() + sorted, ord.end(), by);
        double c = 0;
        for (n = 0; n < sorted;) { c += w[ord[n]] / mass; ++n; if (c >= p.top_p) break; }
        if (c >= p.top_p || sorted == keep) break;
      }
      std::vector<int32_t> kid(n);
      std::vector<double> kw(n);
      for (size_t i = 0; i < n; ++i) { kid[i] = idx[ord[i]]; kw[i] = w[ord[i]]; }
      idx = std::move(kid);
      w = std::move(kw);
      keep = n;
    }
    double total = 0;
    for (size_t i = 0; i < keep; ++i) total += w[i];
    const double target = u * total;
    double c = 0;
    size_t last = 0;
    for (size_t i = 0; i < keep; ++i) {
      if (w[i] <= 0) continue;  // masked (−inf) tokens never win
      c += w[i];
      last = i;
      if (target < c) return idx[i];
    }
    return idx[last];
  }
};

}  // namespace pie
