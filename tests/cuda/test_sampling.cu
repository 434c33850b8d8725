// GPU sampling against the CPU Sampler (engine/sampler.hpp): the distribution of 10^5 draws
// (chi-square against the CPU's probabilities), bias/penalties/min_tokens and logprobs exactly
// as the CPU computes them, and top-k over a 151,936-token vocabulary. The prompt_logprobs
// kernel against Sampler::prompt_logprob_of on the same fp32 logits, ties included.
#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <set>

#include "pie/engine/sampler.hpp"
#include "pie/ops/cuda/feed_tokens.cuh"
#include "pie/ops/cuda/prompt_logprobs.cuh"
#include "pie/ops/cuda/sampling.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;
using ops::cuda::SamplingBatchHost;

/// Device copies of a SamplingBatchHost plus output buffers.
struct DeviceBatch {
  DeviceBuffer<ops::cuda::SamplingRow> rows;
  DeviceBuffer<int32_t> prompt, output, bias_tok, tokens, top_ids;
  DeviceBuffer<float> bias_val, logprobs, top_lp;
  int max_top = 0;
  explicit DeviceBatch(const SamplingBatchHost& h)
      : rows(upload(h.rows)), prompt(upload(h.prompt_tokens)), output(upload(h.output_tokens)),
        bias_tok(upload(h.bias_tokens)), tokens(h.rows.size()), top_ids(h.rows.size() * std::max(h.max_top, 1)),
        bias_val(upload(h.bias_values)), logprobs(h.rows.size()), top_lp(h.rows.size() * std::max(h.max_top, 1)),
        max_top(h.max_top) {
    poison(tokens); poison(logprobs); poison(top_ids); poison(top_lp);
  }
  void run(DeviceBuffer<float>& logits, int vocab) {
    ops::cuda::SamplingInputs in{rows.data(), prompt.data(), output.data(), bias_tok.data(), bias_val.data()};
    ops::cuda::SamplingOutputs out{tokens.data(), logprobs.data(), top_ids.data(), top_lp.data(), max_top};
    ops::cuda::sample(logits.data(), static_cast<int>(rows.size()), vocab, in, out);
  }
};

/// The CPU sampler's distribution over tokens (its documented order: temperature, min_p,
/// top_k, top_p over the descending order, ties by id), in double.
std::vector<double> cpu_probs(const std::vector<float>& x, const sched::SamplingParams& p) {
  const int V = static_cast<int>(x.size());
  std::vector<int> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int a, int b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  int keep = p.top_k > 0 ? std::min(p.top_k, V) : V;
  double m = x[idx[0]], z = 0;
  for (float v : x) z += std::exp((v - m) / p.temperature);
  std::vector<double> pr(V);
  for (int i = 0; i < V; ++i) pr[i] = std::exp((x[idx[i]] - m) / p.temperature) / z;
  while (keep > 1 && pr[keep - 1] < p.min_p * pr[0]) --keep;
  double mass = 0;
  for (int i = 0; i < keep; ++i) mass += pr[i];
  if (p.top_p < 1.f) {
    double c = 0;
    int n = 0;
    while (n < keep) { c += pr[n] / mass; ++n; if (c >= p.top_p) break; }
    keep = n;
  }
  double tot = 0;
  for (int i = 0; i < keep; ++i) tot += pr[i];
  std::vector<double> out(V, 0.0);
  for (int i = 0; i < keep; ++i) out[idx[i]] = pr[i] / tot;
  return out;
}

/// Pearson chi-square of counts against probabilities; fails if a zero-probability token occurs.
double chi_square(const std::vector<int>& counts, const std::vector<double>& p, int n, int* df) {
  double chi = 0;
  *df = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) { EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the kept set"; continue; }
    double e = p[i] * n;
    chi += (counts[i] - e) * (counts[i] - e) / e;
    ++*df;
  }
  return chi;
}
/// Upper critical value at p ≈ 1e-4 (Wilson–Hilferty).
double chi_crit(int df) {
  const double z = 3.719, a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

/// 10^5 GPU draws (one row each, seeds 12345 + r) and 10^5 CPU draws against cpu_probs.
void chi_square_test(const sched::SamplingParams& p, uint32_t seed) {
  const int V = 64, R = 100000;
  std::mt19937 rng(seed);
  auto base = randn<float>(V, rng, 2.f);
  SamplingBatchHost h;
  std::vector<SamplerInput> ins(R);
  for (int r = 0; r < R; ++r) {
    ins[r].params = &p;
    ins[r].seed = 12345 + uint64_t(r);
    h.add(ins[r], V);
  }
  std::vector<float> logits(size_t(R) * V);
  for (int r = 0; r < R; ++r) std::copy(base.begin(), base.end(), logits.begin() + size_t(r) * V);
  auto dl = upload(logits);
  DeviceBatch db(h);
  db.run(dl, V);
  auto tok = download(db.tokens);
  std::vector<int> gpu(V, 0), cpu(V, 0);
  for (int t : tok) { ASSERT_TRUE(t >= 0 && t < V); ++gpu[t]; }
  for (int r = 0; r < R; ++r) {
    std::vector<float> x = base;
    ++cpu[Sampler::sample(x, ins[r]).token];
  }
  auto prob = cpu_probs(base, p);
  int df_g = 0, df_c = 0;
  double chi_g = chi_square(gpu, prob, R, &df_g), chi_c = chi_square(cpu, prob, R, &df_c);
  std::printf("[sampling T=%.2f k=%d p=%.2f min_p=%.2f] support %d, chi2 gpu %.1f cpu %.1f, critical(1e-4) %.1f\n",
              p.temperature, p.top_k, p.top_p, p.min_p, df_g + 1, chi_g, chi_c, chi_crit(df_g));
  ASSERT_GT(df_g, 3);
  EXPECT_LT(chi_g, chi_crit(df_g));
  EXPECT_LT(chi_c, chi_crit(df_c)) << "the reference distribution does not describe the CPU sampler";
}

TEST(Sampling, ChiSquare100kDrawsTemperatureTopKTopPMinP) {
  sched::SamplingParams p;
  p.temperature = 0.7f; p.top_k = 24; p.top_p = 0.9f; p.min_p = 0.01f;
  chi_square_test(p, 1);
}

TEST(Sampling, ChiSquare100kDrawsTopPOnly) {
  sched::SamplingParams p;  // no top-k: the top-p threshold is bisected over the whole row
  p.temperature = 1.3f; p.top_p = 0.8f;
  chi_square_test(p, 2);
}

TEST(Sampling, PenaltiesBiasMinTokensLogprobsMatchCpu) {
  const int V = 3000, R = 6;
  std::mt19937 rng(2);
  std::vector<sched::SamplingParams> ps(R);
  std::vector<int32_t> prompt = {1, 2, 3, 3, 50, 2999}, output = {7, 7, 8, 50, 100, 7};
  auto logits = randn<float>(size_t(R) * V, rng, 3.f);
  // Make penalised tokens the leaders so the penalties decide the greedy token.
  for (int r = 0; r < R; ++r) for (int t : {3, 7, 50}) logits[size_t(r) * V + t] = 12.f + t * 0.01f;
  ps[0].temperature = 0; ps[0].repetition_penalty = 1.8f; ps[0].logprobs = 4;
  ps[1].temperature = 0; ps[1].frequency_penalty = 0.9f; ps[1].presence_penalty = 0.5f; ps[1].logit_bias = {{5, 20.f}, {9, -3.f}};
  ps[1].logprobs = 5;
  ps[2].temperature = 0; ps[2].min_tokens = 10; ps[2].stop_token_ids = {50}; ps[2].logprobs = 0;
  ps[3].temperature = 1; ps[3].top_k = 1; ps[3].repetition_penalty = 1.2f; ps[3].logprobs = 3;
  ps[4].temperature = 0.5f; ps[4].top_p = 1e-6f;
  ps[5].temperature = 1.3f; ps[5].min_p = 1.0f; ps[5].frequency_penalty = -0.4f;
  std::vector<int32_t> eos = {7};
  SamplingBatchHost h;
  std::vector<SamplerInput> ins(R);
  for (int r = 0; r < R; ++r) {
    ins[r].params = &ps[r]; ins[r].prompt = prompt; ins[r].output = output; ins[r].eos_ids = eos;
    ins[r].seed = 99 + r; ins[r].seq_index = r;
    h.add(ins[r], V);
  }
  auto dl = upload(logits);
  DeviceBatch db(h);
  db.run(dl, V);
  auto tok = download(db.tokens);
  auto lp = download(db.logprobs);
  auto tids = download(db.top_ids);
  auto tlp = download(db.top_lp);
  auto gl = download(dl);
  for (int r = 0; r < R; ++r) {
    std::vector<float> x(logits.begin() + size_t(r) * V, logits.begin() + size_t(r + 1) * V);
    auto o = Sampler::sample(x, ins[r]);
    EXPECT_EQ(tok[r], o.token) << "row " << r;
    for (int i = 0; i < V; ++i) {
      const float g = gl[size_t(r) * V + i];
      if (std::isinf(x[i])) ASSERT_EQ(g, x[i]) << "row " << r << " token " << i;  // suppressed stays −inf
      else ASSERT_NEAR(g, x[i], 1e-5f * std::max(1.f, std::fabs(x[i]))) << "row " << r << " token " << i;
    }
    if (ps[r].logprobs) {
      EXPECT_NEAR(lp[r], o.logprob.logprob, 1e-3f) << "row " << r;
      ASSERT_EQ(int(o.logprob.top.size()), *ps[r].logprobs);
      for (int j = 0; j < *ps[r].logprobs; ++j) {
        EXPECT_EQ(tids[size_t(r) * db.max_top + j], o.logprob.top[j].first) << "row " << r << " rank " << j;
        EXPECT_NEAR(tlp[size_t(r) * db.max_top + j], o.logprob.top[j].second, 1e-3f);
      }
    }
  }
}

void large_vocab_test(const sched::SamplingParams& p, uint32_t seed) {
  const int V = 151936, R = 64;
  std::mt19937 rng(seed);
  auto logits = randn<float>(size_t(R) * V, rng, 3.f);
  SamplingBatchHost h;
  std::vector<SamplerInput> ins(R);
  for (int r = 0; r < R; ++r) { ins[r].params = &p; ins[r].seed = 7 + r; h.add(ins[r], V); }
  auto dl = upload(logits);
  DeviceBatch db(h);
  db.run(dl, V);
  auto tok = download(db.tokens);
  auto dl2 = upload(logits);
  db.run(dl2, V);
  EXPECT_EQ(download(db.tokens), tok) << "same seeds, same tokens";
  std::set<int> distinct;
  for (int r = 0; r < R; ++r) {
    std::vector<float> x(logits.begin() + size_t(r) * V, logits.begin() + size_t(r + 1) * V);
    auto prob = cpu_probs(x, p);
    ASSERT_TRUE(tok[r] >= 0 && tok[r] < V);
    EXPECT_GT(prob[tok[r]], 0.0) << "row " << r << " drew token " << tok[r] << " outside the kept set";
    distinct.insert(tok[r]);
  }
  EXPECT_GT(distinct.size(), 1u);
}

TEST(Sampling, TopK40TopP95Vocab151936StaysInKeptSetAndIsDeterministic) {
  sched::SamplingParams p;
  p.top_k = 40; p.temperature = 1.f; p.top_p = 0.95f;
  large_vocab_test(p, 3);
}

TEST(Sampling, TopK3000Vocab151936RowFallback) {
  sched::SamplingParams p;  // k above the CTA's 1024 threads: bisection over the row
  p.top_k = 3000; p.temperature = 0.5f;
  large_vocab_test(p, 4);
}

TEST(Sampling, TopP30Vocab151936RowPath) {
  sched::SamplingParams p;
  p.top_p = 0.3f; p.temperature = 0.6f; p.logprobs = 20;
  large_vocab_test(p, 5);
}

// ---- prompt_logprobs (ops/cuda/prompt_logprobs.cuh) ------------------------------------------------
/// Rows of random logits (with planted exact ties at the top and at the scored token), each
/// scored on the device and by the CPU Sampler: same top-20 ids in the same order (ties by lower
/// id), same ranks, logprobs within float rounding of the log-sum-exp. Also prints what the two
/// ways of scoring prompt rows cost here: the device kernel, against copying the rows to pinned
/// host memory and scoring them on one host thread (the CPU Sampler loop below).
void prompt_logprobs_test(int V, int R, uint32_t seed) {
  std::mt19937 rng(seed);
  auto logits = randn<float>(size_t(R) * V, rng, 3.f);
  std::vector<int32_t> tokens(R);
  std::uniform_int_distribution<int> pick(0, V - 1);
  for (int r = 0; r < R; ++r) {
    float* x = logits.data() + size_t(r) * V;
    tokens[r] = pick(rng);
    if (r % 3 == 1) {  // ties at the maximum: order by lower id
      const int a = pick(rng), b = pick(rng);
      x[a] = x[b] = 20.f;
    }
    if (r % 3 == 2) x[pick(rng)] = x[tokens[r]];  // a tie with the scored token: rank counts the lower id
    if (r % 5 == 4) x[tokens[r]] = 50.f;           // the scored token on top: rank 1
  }
  auto dl = upload(logits);
  auto dt = upload(tokens);
  DeviceBuffer<sched::PromptLogprobRow> out(R);
  cudaEvent_t e0, e1, e2;
  PIE_CUDA_CHECK(cudaEventCreate(&e0));
  PIE_CUDA_CHECK(cudaEventCreate(&e1));
  PIE_CUDA_CHECK(cudaEventCreate(&e2));
  ops::cuda::prompt_logprobs(dl.data(), R, V, dt.data(), out.data());  // warm-up
  PIE_CUDA_CHECK(cudaEventRecord(e0));
  ops::cuda::prompt_logprobs(dl.data(), R, V, dt.data(), out.data());
  PIE_CUDA_CHECK(cudaEventRecord(e1));
  PinnedBuffer<float> host(size_t(R) * V);
  PIE_CUDA_CHECK(cudaMemcpyAsync(host.data(), dl.data(), sizeof(float) * R * V, cudaMemcpyDeviceToHost));
  PIE_CUDA_CHECK(cudaEventRecord(e2));
  PIE_CUDA_CHECK(cudaEventSynchronize(e2));
  float kernel_ms = 0, copy_ms = 0;
  PIE_CUDA_CHECK(cudaEventElapsedTime(&kernel_ms, e0, e1));
  PIE_CUDA_CHECK(cudaEventElapsedTime(&copy_ms, e1, e2));
  std::vector<sched::PromptLogprobRow> got(R);
  PIE_CUDA_CHECK(cudaMemcpy(got.data(), out.data(), sizeof(got[0]) * R, cudaMemcpyDeviceToHost));
  double worst = 0;
  const auto h0 = std::chrono::steady_clock::now();
  std::vector<PromptLogprob> want(R);
  for (int r = 0; r < R; ++r)
    want[r] = Sampler::prompt_logprob_of(std::span<const float>(host.data() + size_t(r) * V, V), tokens[r],
                                         sched::kMaxLogprobs);
  const double host_ms = 1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - h0).count();
  for (int r = 0; r < R; ++r) {
    const auto& g = got[r];
    EXPECT_EQ(g.rank, want[r].rank) << "row " << r;
    worst = std::max(worst, double(std::fabs(g.logprob - want[r].logprob)));
    const int n = std::min(V, sched::kMaxLogprobs);
    ASSERT_EQ(static_cast<int>(want[r].top.size()), n);
    for (int j = 0; j < n; ++j) {
      EXPECT_EQ(g.top_ids[j], want[r].top[j].first) << "row " << r << " top " << j;
      worst = std::max(worst, double(std::fabs(g.top_logprobs[j] - want[r].top[j].second)));
    }
    for (int j = n; j < sched::kMaxLogprobs; ++j) EXPECT_EQ(g.top_ids[j], -1) << "row " << r << " past the vocabulary";
  }
  EXPECT_LE(worst, 2e-4) << "logprob vs the CPU Sampler";
  std::printf("[prompt_logprobs kernel] V=%d rows=%d worst |dlogprob| %.3g; device scoring %.3f ms, vs copying the "
              "rows to the host %.3f ms + scoring them on one host thread %.1f ms\n",
              V, R, worst, kernel_ms, copy_ms, host_ms);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaEventDestroy(e2);
}

// Asynchronous scheduling's feed: token_ids[rows[k]] = ids[draws[k]] on random rows/draws, the
// other rows untouched; the same loop as the CPU runner's worker.
TEST(FeedTokens, RandomFeedRowsMatchTheCpuLoop) {
  std::mt19937 g(17);
  for (int n : {0, 1, 7, 300}) {
    const int T = 2 * n + 5, D = n + 3;
    std::vector<int32_t> tok(T), ids(D), rows(T), draws(n);
    for (auto& t : tok) t = static_cast<int32_t>(g() % 1000);
    for (auto& t : ids) t = static_cast<int32_t>(g() % 1000) + 1000;
    std::iota(rows.begin(), rows.end(), 0);
    std::shuffle(rows.begin(), rows.end(), g);
    rows.resize(n);  // distinct rows, as a plan's are
    for (auto& d : draws) d = static_cast<int32_t>(g() % D);
    std::vector<int32_t> want = tok;
    for (int k = 0; k < n; ++k) want[rows[k]] = ids[draws[k]];
    auto dtok = upload(tok);
    auto drows = upload(rows.empty() ? std::vector<int32_t>{0} : rows);
    auto ddraws = upload(draws.empty() ? std::vector<int32_t>{0} : draws);
    auto dids = upload(ids);
    ops::cuda::feed_tokens(dtok.data(), drows.data(), ddraws.data(), n, dids.data());
    PIE_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(download(dtok), want) << "n = " << n;
  }
}

TEST(PromptLogprobs, MatchTheCpuSamplerSmallVocab) { prompt_logprobs_test(1000, 96, 21); }
TEST(PromptLogprobs, MatchTheCpuSamplerTinyVocab) { prompt_logprobs_test(12, 8, 22); }
TEST(PromptLogprobs, MatchTheCpuSamplerVocab151936) { prompt_logprobs_test(151936, 256, 23); }

}  // namespace
