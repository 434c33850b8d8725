// Each sampling feature against a case built so that ignoring the feature gives another token.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "pie/engine/sampler.hpp"

namespace {
using namespace pie;
using sched::SamplingParams;

struct Case {
  Case(SamplingParams params, std::vector<float> l) : p(std::move(params)), logits(std::move(l)) {}
  SamplingParams p;
  std::vector<float> logits;
  std::vector<int32_t> prompt, output, eos = {0};
  uint64_t seed = 1;
  int index = 0;
  SamplerOutput run() const {
    std::vector<float> l = logits;
    SamplerInput in{&p, prompt, output, eos, seed, index};
    return Sampler::sample(l, in);
  }
  int32_t token() const { return run().token; }
};

SamplingParams greedy() { SamplingParams p; p.temperature = 0; return p; }

TEST(Sampler, GreedyIsArgmaxLowestIdOnTies) {
  Case c{greedy(), {0.1f, 2.f, 3.f, 3.f, -1.f}};
  EXPECT_EQ(c.token(), 2);
}

// Histogram of tokens over many steps (the uniform varies with the step).
std::map<int32_t, int> histogram(Case c, int draws) {
  std::map<int32_t, int> h;
  for (int s = 0; s < draws; ++s) {
    c.output.assign(s, 4);  // step = output length; token 4 is neutral (no penalties set)
    ++h[c.token()];
  }
  return h;
}

TEST(Sampler, TemperatureFlattensAndSharpens) {
  SamplingParams p;
  std::vector<float> l = {2.f, 1.f, 0.f, -30.f, -30.f};
  p.temperature = 0.05f;
  auto cold = histogram({p, l}, 300);
  EXPECT_EQ(cold[0], 300);  // T → 0 concentrates on the argmax
  p.temperature = 5.0f;
  auto hot = histogram({p, l}, 300);
  EXPECT_GT(hot[2], 50);    // T = 1 would give token 2 about 9%; T = 5 about 28%
}

TEST(Sampler, TopKKeepsOnlyKTokens) {
  SamplingParams p;
  p.top_k = 2;
  std::vector<float> l = {1.f, 0.9f, 0.8f, 0.7f, 0.6f};
  auto h = histogram({p, l}, 400);
  EXPECT_EQ(h.size(), 2u);
  EXPECT_GT(h[0], 0);
  EXPECT_GT(h[1], 0);
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  SamplingParams p;
  p.top_p = 0.5f;  // probs ≈ .42 .23 .16 .11 .08: nucleus {0, 1}
  std::vector<float> l = {1.f, 0.4f, 0.f, -0.4f, -0.7f};
  auto h = histogram({p, l}, 400);
  EXPECT_EQ(h.size(), 2u);
  EXPECT_GT(h[1], 0);
}

// A nucleus of ~2000 tokens: beyond the first sorted prefixes (64, 1024) of the progressive sort.
TEST(Sampler, TopPOverALargeVocabularyMatchesTheSortedNucleus) {
  SamplingParams p;
  p.top_p = 0.4f;
  std::vector<float> l(6000);
  std::mt19937 g(1);
  std::uniform_real_distribution<float> d(0.f, 0.5f);
  for (auto& x : l) x = d(g);
  // Brute force: sort all, take the smallest prefix with mass ≥ 0.4.
  std::vector<int32_t> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  double z = 0;
  for (float x : l) z += std::exp(x);
  std::set<int32_t> nucleus;
  double c = 0;
  for (int32_t t : order) { nucleus.insert(t); c += std::exp(l[t]) / z; if (c >= 0.4) break; }
  ASSERT_GT(nucleus.size(), 1024u);
  auto h = histogram({p, l}, 300);
  for (auto& [tok, cnt] : h) EXPECT_TRUE(nucleus.count(tok)) << tok;
  EXPECT_GT(h.size(), 200u);
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.min_p = 0.5f;  // keeps tokens with p ≥ 0.5·p_max: {0, 1}
  std::vector<float> l = {1.f, 0.5f, -1.f, -1.f, -1.f};
  auto h = histogram({p, l}, 400);
  EXPECT_EQ(h.size(), 2u);
  EXPECT_GT(h[1], 0);
}

TEST(Sampler, SameSeedSameTokenDifferentSeedOrIndexDiffers) {
  SamplingParams p;
  std::vector<float> l(50, 0.f);  // uniform: any token possible
  Case a{p, l}, b{p, l};
  a.seed = b.seed = 77;
  int diff_seed = 0, diff_index = 0;
  for (int s = 0; s < 40; ++s) {
    a.output.assign(s, 3);
    b.output.assign(s, 3);
    EXPECT_EQ(a.token(), b.token());
    Case c = a; c.seed = 78;
    diff_seed += c.token() != a.token();
    Case d = a; d.index = 1;
    diff_index += d.token() != a.token();
  }
  EXPECT_GT(diff_seed, 20);
  EXPECT_GT(diff_index, 20);
}

TEST(Sampler, RepetitionPenaltyCoversPromptAndOutput) {
  SamplingParams p = greedy();
  p.repetition_penalty = 2.0f;
  Case c{p, {0.f, 3.f, 2.f, -1.f, -1.5f}};
  c.prompt = {1};
  EXPECT_EQ(c.token(), 2);  // 3/2 < 2
  c.prompt = {};
  c.output = {1};
  EXPECT_EQ(c.token(), 2);
  // negative logits are multiplied: −1·2 = −2 < −1.5
  Case n{p, {-9.f, -9.f, -9.f, -1.f, -1.5f}};
  n.output = {3};
  EXPECT_EQ(n.token(), 4);
}

TEST(Sampler, FrequencyPenaltyScalesWithCount) {
  SamplingParams p = greedy();
  p.frequency_penalty = 0.5f;
  Case c{p, {-5.f, 3.f, 2.2f, -5.f, -5.f}};
  c.output = {1};
  EXPECT_EQ(c.token(), 1);       // 3 − 0.5 > 2.2
  c.output = {1, 1};
  EXPECT_EQ(c.token(), 2);       // 3 − 1.0 < 2.2
}

TEST(Sampler, PresencePenaltyIsFlat) {
  SamplingParams p = greedy();
  p.presence_penalty = 1.0f;
  Case c{p, {-5.f, 3.f, 2.5f, -5.f, -5.f}};
  c.output = {1};
  EXPECT_EQ(c.token(), 2);
  p.presence_penalty = 0.4f;  // once or thrice: same penalty
  Case d{p, {-5.f, 3.f, 2.5f, -5.f, -5.f}};
  d.output = {1, 1, 1};
  EXPECT_EQ(d.token(), 1);
}

TEST(Sampler, LogitBiasIsAdded) {
  SamplingParams p = greedy();
  p.logit_bias = {{3, 5.0f}};
  Case c{p, {0.f, 3.f, 2.f, -1.f, -1.f}};
  EXPECT_EQ(c.token(), 3);
}

TEST(Sampler, MinTokensSuppressesEosAndStopIds) {
  SamplingParams p = greedy();
  p.min_tokens = 2;
  p.stop_token_ids = {1};
  Case c{p, {5.f, 4.f, 3.f, -1.f, -1.f}};  // eos 0 is the argmax, stop id 1 next
  c.output = {};
  EXPECT_EQ(c.token(), 2);
  c.output = {2, 2};
  EXPECT_EQ(c.token(), 0);
  // ignore_eos: EOS is not special, so min_tokens leaves it alone
  c.p.ignore_eos = true;
  c.output = {};
  EXPECT_EQ(c.token(), 0);
}

TEST(Sampler, LogprobsOfTheProcessedDistribution) {
  SamplingParams p = greedy();
  p.logprobs = 2;
  p.logit_bias = {{4, 10.f}};
  Case c{p, {1.f, 2.f, 0.f, 0.f, -5.f}};
  auto o = c.run();
  ASSERT_TRUE(o.has_logprob);
  EXPECT_EQ(o.token, 4);
  // logits after bias: {1, 2, 0, 0, 5}
  double lse = std::log(std::exp(1.) + std::exp(2.) + 2 + std::exp(5.));
  EXPECT_NEAR(o.logprob.logprob, 5 - lse, 1e-5);
  ASSERT_EQ(o.logprob.top.size(), 2u);
  EXPECT_EQ(o.logprob.top[0].first, 4);
  EXPECT_EQ(o.logprob.top[1].first, 1);
  EXPECT_NEAR(o.logprob.top[1].second, 2 - lse, 1e-5);
  c.p.logprobs = 0;
  EXPECT_TRUE(c.run().logprob.top.empty());
  c.p.logprobs.reset();
  EXPECT_FALSE(c.run().has_logprob);
}

TEST(Sampler, UniformIsKeyedBySeedIndexStep) {
  EXPECT_EQ(Sampler::uniform(1, 2, 3), Sampler::uniform(1, 2, 3));
  EXPECT_NE(Sampler::uniform(1, 2, 3), Sampler::uniform(1, 2, 4));
  EXPECT_NE(Sampler::uniform(1, 2, 3), Sampler::uniform(1, 3, 3));
  EXPECT_NE(Sampler::uniform(1, 2, 3), Sampler::uniform(2, 2, 3));
  double mean = 0;
  for (int i = 0; i < 4000; ++i) mean += Sampler::uniform(5, 0, i);
  EXPECT_NEAR(mean / 4000, 0.5, 0.02);
}

}  // namespace
