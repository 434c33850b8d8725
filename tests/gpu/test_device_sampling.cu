// The engine's full device sampler on the GPU (label cuda): requests with repetition/frequency/
// presence penalties, logit_bias, min_tokens and logprobs draw on the device
// (CudaRunner::execute_sample_full: the ids and logprobs come back, not the logits) and give what
// the host Sampler gives over the same logits. The host path is forced by a companion request
// with a logits processor (a processor needs the host, so the rows that need it are drawn there,
// and the others keep their device ids); batch-invariant mode makes every request's logits the
// same with and without the companion. Greedy tokens must be identical and logprobs within
// 1e-3; seeded random requests map their uniform to tokens differently on the two samplers (the
// same distribution), so for them the device path is checked to give the same tokens alone and
// in the batch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "gpu_test_util.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/cuda/cuda_runner.cuh"
#include "pie/engine/engine.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/qwen3.hpp"

namespace pie {
namespace {

using GpuEngine = Engine<model::AnyDecoder, CudaBf16>;
using HostWeights = std::shared_ptr<const model::Weights<bf16>>;

/// A logits processor that changes nothing but needs the host sampler.
struct Identity final : sched::LogitsProcessor {
  void process(int, std::span<const int32_t>, std::span<const int32_t>, std::span<float>) override {}
};

struct Out {
  std::vector<std::vector<int32_t>> tokens;         // request-major, n sequences each
  std::vector<std::vector<TokenLogprob>> logprobs;  // the same order
  int64_t full_steps = 0;
};

/// The full device sampler is opt-in until this test has run on a GPU (CudaRunner::samples_full).
const bool kFullOn = [] { return setenv("PIE_FULL_DEVICE_SAMPLING", "1", 1) == 0; }();

Out run(const HostWeights& hw, const std::vector<std::vector<int32_t>>& prompts,
        const std::vector<sched::SamplingParams>& params, bool companion) {
  EngineOptions o;
  o.sched.max_num_seqs = 64;
  o.sched.max_num_batched_tokens = 512;
  o.sched.max_model_len = 1024;
  o.batch_invariant = true;
  o.num_kv_blocks = 512;
  o.log = false;
  o.set_weights(hw);
  GpuEngine e(o);
  std::vector<std::vector<std::vector<int32_t>>> toks(prompts.size());
  std::vector<std::vector<std::vector<TokenLogprob>>> lps(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    e.add_request(prompts[i], params[i]);
    toks[i].resize(params[i].n);
    lps[i].resize(params[i].n);
  }
  if (companion) {
    sched::SamplingParams c;
    c.max_tokens = 64;  // outlives every request above
    c.ignore_eos = true;
    c.logits_processor = std::make_shared<Identity>();
    e.add_request(prompts[0], c);
  }
  while (e.has_unfinished())
    for (auto& ro : e.step()) {
      if (ro.request_id >= prompts.size()) continue;  // the companion
      for (auto& so : ro.seqs) {
        auto& t = toks[ro.request_id][so.index];
        t.insert(t.end(), so.new_tokens.begin(), so.new_tokens.end());
        auto& l = lps[ro.request_id][so.index];
        l.insert(l.end(), so.logprobs.begin(), so.logprobs.end());
      }
    }
  Out out;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (int k = 0; k < params[i].n; ++k) {
      out.tokens.push_back(toks[i][k]);
      out.logprobs.push_back(lps[i][k]);
    }
  out.full_steps = e.runner().stats().full_sample_steps;
  return out;
}

struct Workload {
  HostWeights hw;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<sched::SamplingParams> params;
};

/// 24 requests, every full-sampler input: penalties (repeated prompt tokens, so they matter),
/// logit_bias, min_tokens with stop ids, logprobs 0..20, n = 2; every third request seeded random.
Workload workload() {
  auto cfg = gpu_test::small_qwen3(2);
  Workload w;
  w.hw = std::make_shared<const model::Weights<bf16>>(model::dummy_weights<bf16>(cfg, 21));
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> tok(2, cfg.vocab_size - 1);
  for (int i = 0; i < 24; ++i) {
    std::vector<int32_t> p(8 + rng() % 40);
    for (auto& t : p) t = tok(rng) % 64 + 2;  // a small alphabet: repetitions for the penalties
    w.prompts.push_back(p);
    sched::SamplingParams sp;
    sp.temperature = 0.f;  // greedy unless seeded below (the default is 1)
    sp.max_tokens = 20 - i % 4;
    sp.ignore_eos = true;
    switch (i % 6) {
      case 0: sp.repetition_penalty = 1.3f; sp.logprobs = 5; break;
      case 1: sp.frequency_penalty = 0.7f; sp.presence_penalty = 0.3f; sp.logprobs = 0; break;
      case 2: sp.logit_bias = {{p[0], 4.f}, {p[1], -100.f}}; sp.logprobs = 20; break;
      case 3: sp.min_tokens = 6; sp.stop_token_ids = {p[2]}; sp.ignore_eos = false; sp.logprobs = 2; break;
      case 4: sp.repetition_penalty = 0.8f; sp.frequency_penalty = -0.5f; sp.n = 2; sp.logprobs = 3; break;
      default: sp.logprobs = 1; break;  // logprobs alone
    }
    if (i % 3 == 2) {
      sp.temperature = 0.9f;
      sp.top_p = 0.95f;
      sp.seed = 300 + i;
    }
    w.params.push_back(sp);
  }
  return w;
}

TEST(GpuDeviceSampling, FullDeviceSamplerEqualsTheHostSamplerOnGreedyRequests) {
  const Workload w = workload();
  ASSERT_TRUE(kFullOn);
  const Out dev = run(w.hw, w.prompts, w.params, false);
  const Out host = run(w.hw, w.prompts, w.params, true);
  EXPECT_GT(dev.full_steps, 0);
  ASSERT_EQ(dev.tokens.size(), host.tokens.size());
  int compared = 0, same = 0;
  float worst = 0.f;
  size_t seq = 0;
  for (size_t i = 0; i < w.params.size(); ++i)
    for (int k = 0; k < w.params[i].n; ++k, ++seq) {
      if (w.params[i].temperature > 0.f) continue;  // seeded random: the next test
      ++compared;
      const bool eq = dev.tokens[seq] == host.tokens[seq];
      same += eq;
      if (!eq) std::printf("[device sampling] request %zu sequence %d differs\n", i, k);
      EXPECT_EQ(dev.logprobs[seq].size(), dev.tokens[seq].size()) << "request " << i;
      if (!eq) continue;
      ASSERT_EQ(dev.logprobs[seq].size(), host.logprobs[seq].size());
      for (size_t t = 0; t < dev.logprobs[seq].size(); ++t) {
        const TokenLogprob &a = dev.logprobs[seq][t], &b = host.logprobs[seq][t];
        EXPECT_EQ(a.token, b.token);
        worst = std::max(worst, std::fabs(a.logprob - b.logprob));
        ASSERT_EQ(a.top.size(), b.top.size()) << "request " << i << " token " << t;
        for (size_t j = 0; j < a.top.size(); ++j) {
          EXPECT_EQ(a.top[j].first, b.top[j].first) << "request " << i << " token " << t << " rank " << j;
          worst = std::max(worst, std::fabs(a.top[j].second - b.top[j].second));
        }
      }
    }
  std::printf("[device sampling] greedy %d/%d sequences identical to the host sampler, worst |logprob diff| %.2e\n",
              same, compared, worst);
  EXPECT_GE(compared, 16);
  EXPECT_EQ(same, compared);
  EXPECT_LE(worst, 1e-3f);
}

TEST(GpuDeviceSampling, SeededRequestsDrawTheSameTokensAloneAndInTheBatch) {
  const Workload w = workload();
  const Out batch = run(w.hw, w.prompts, w.params, false);
  size_t seq = 0;
  int checked = 0;
  for (size_t i = 0; i < w.params.size(); ++i) {
    if (!w.params[i].seed) {  // greedy: the test above
      seq += w.params[i].n;
      continue;
    }
    const Out alone = run(w.hw, {w.prompts[i]}, {w.params[i]}, false);
    for (int k = 0; k < w.params[i].n; ++k, ++seq, ++checked)
      EXPECT_EQ(alone.tokens[k], batch.tokens[seq]) << "request " << i << " sequence " << k;
  }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace pie
