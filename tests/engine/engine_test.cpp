// Engine behaviour on the embedded default model: batch invariance of greedy decoding (alone,
// in a batch of 16, chunked prefill of 7, after a prefix-cache hit, after forced preemption in
// both modes), seeded sampling alone vs batched, and the request API (validation, stops,
// abort, n > 1, logprobs, stats).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "pie/engine/engine.hpp"

#include "engine_test_util.hpp"

namespace {
using namespace pie;
using sched::FinishReason;
using sched::SamplingParams;
using CpuEngine = Engine<Qwen3, CpuF32>;

using test::greedy;
using test::random_prompt;
using test::small_options;

// ---- batch invariance --------------------------------------------------------------------------
constexpr int kNew = 20;

struct Invariance : ::testing::Test {
  static const std::vector<int32_t>& target() {
    static std::vector<int32_t> t = [] { std::mt19937 g(7); return random_prompt(g, 45); }();
    return t;
  }
  static std::vector<std::vector<int32_t>> others() {
    std::mt19937 g(11);
    std::uniform_int_distribution<int> len(3, 60);
    std::vector<std::vector<int32_t>> v;
    for (int i = 0; i < 16; ++i) v.push_back(random_prompt(g, len(g)));
    return v;
  }
  static const std::vector<int32_t>& alone() {
    static std::vector<int32_t> a = [] {
      CpuEngine e(small_options());
      return e.generate({target()}, greedy(kNew))[0].tokens[0];
    }();
    return a;
  }
  // The 16 others followed by the target, run under `o`; returns all 17 continuations.
  static std::vector<std::vector<int32_t>> batch(EngineOptions o, CpuEngine::Stats* stats = nullptr) {
    CpuEngine e(o);
    auto prompts = others();
    prompts.push_back(target());
    auto res = e.generate(prompts, greedy(kNew));
    if (stats) *stats = e.stats();
    std::vector<std::vector<int32_t>> out;
    for (auto& r : res) out.push_back(r.tokens[0]);
    return out;
  }
  static const std::vector<std::vector<int32_t>>& reference_batch() {
    static auto b = batch(small_options());
    return b;
  }
};

TEST_F(Invariance, AloneEqualsInsideABatchOf16) {
  ASSERT_EQ(alone().size(), size_t(kNew));
  EXPECT_EQ(reference_batch().back(), alone());
}

TEST_F(Invariance, ChunkedPrefillOfSeven) {
  EngineOptions o = small_options();
  o.sched.enable_chunked_prefill = true;
  o.sched.max_num_batched_tokens = 7;
  o.sched.max_num_seqs = 7;
  CpuEngine e(o);
  EXPECT_EQ(e.generate({target()}, greedy(kNew))[0].tokens[0], alone());
  // and in a batch, where chunks of different prompts share steps
  auto res = batch(o);
  EXPECT_EQ(res, reference_batch());
}

TEST_F(Invariance, DecodeFirstBudgetAndLongPrefillThresholdChangeNoToken) {
  EngineOptions o = small_options();
  o.sched.max_prefill_tokens_with_decodes = 5;  // prompts trickle in beside running decodes
  o.sched.long_prefill_token_threshold = 9;     // and no sequence takes more than 9 at once
  EXPECT_EQ(batch(o), reference_batch());
}

TEST_F(Invariance, AfterPrefixCacheHit) {
  CpuEngine e(small_options());
  EXPECT_EQ(e.generate({target()}, greedy(kNew))[0].tokens[0], alone());
  const auto before = e.stats().prefix_cache_hits;
  // The same prompt again, and a prompt sharing its first 32 tokens (two full blocks).
  auto shared = std::vector<int32_t>(target().begin(), target().begin() + 32);
  shared.push_back(3);
  auto res = e.generate({target(), shared}, greedy(kNew));
  EXPECT_GT(e.stats().prefix_cache_hits, before);
  EXPECT_EQ(res[0].tokens[0], alone());
  CpuEngine fresh(small_options());
  EXPECT_EQ(res[1].tokens[0], fresh.generate({shared}, greedy(kNew))[0].tokens[0]);
}

TEST_F(Invariance, ThreadCountChangesNoToken) {
  EngineOptions o = small_options();
  o.num_threads = 2;
  EXPECT_EQ(batch(o), reference_batch());
}

class Preemption : public Invariance, public ::testing::WithParamInterface<sched::PreemptionMode> {};

TEST_P(Preemption, ForcedPreemptionChangesNoToken) {
  EngineOptions o = small_options();
  o.num_kv_blocks = 12;  // 192 slots for 17 sequences of up to 80 tokens: preemption is forced
  o.sched.max_model_len = 128;
  o.sched.preemption_mode = GetParam();
  if (GetParam() == sched::PreemptionMode::Swap) o.num_host_blocks = 64;
  CpuEngine::Stats st;
  auto res = batch(o, &st);
  EXPECT_GT(st.num_preemptions, 0u);
  EXPECT_EQ(res, reference_batch());
}
INSTANTIATE_TEST_SUITE_P(Modes, Preemption,
                         ::testing::Values(sched::PreemptionMode::Recompute, sched::PreemptionMode::Swap),
                         [](const auto& i) {
                           return i.param == sched::PreemptionMode::Swap ? "Swap" : "Recompute";
                         });

// ---- seeded sampling ---------------------------------------------------------------------------
TEST(EngineSampling, SeededRequestSameTokensAloneOrBatched) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.max_tokens = 12;
  p.seed = 1234;
  p.ignore_eos = true;
  std::mt19937 g(3);
  auto prompt = random_prompt(g, 20);
  CpuEngine a(small_options());
  auto alone = a.generate({prompt}, p)[0].tokens[0];
  CpuEngine b(small_options());
  SamplingParams q = p;
  q.seed = 99;
  b.add_request(random_prompt(g, 30), q);
  b.add_request(random_prompt(g, 7), q);
  auto batched = b.generate({prompt}, p)[0].tokens[0];
  EXPECT_EQ(alone, batched);
  CpuEngine c(small_options());
  EXPECT_NE(c.generate({prompt}, q)[0].tokens[0], alone);  // a different seed, other tokens
}

// ---- request API -------------------------------------------------------------------------------
TEST(EngineApi, RejectsBadRequestsNamingTheField) {
  CpuEngine e(small_options());
  SamplingParams p;
  p.temperature = -1;
  try {
    e.add_request({1, 2, 3}, p);
    FAIL() << "no throw";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("temperature"), std::string::npos) << err.what();
  }
  EXPECT_THROW(e.add_request({1, 512}, SamplingParams{}), Error);  // vocab is 512
  EXPECT_THROW(e.add_request({}, SamplingParams{}), Error);
  SamplingParams bias;
  bias.logit_bias = {{600, 1.f}};
  EXPECT_THROW(e.add_request({1}, bias), Error);
  EXPECT_FALSE(e.has_unfinished());
}

TEST(EngineApi, StopTokenFinishesWithReasonStop) {
  CpuEngine e(small_options());
  std::mt19937 g(5);
  auto prompt = random_prompt(g, 10);
  auto free_run = e.generate({prompt}, greedy(10))[0].tokens[0];
  SamplingParams p = greedy(10);
  p.stop_token_ids = {free_run[3]};
  auto res = e.generate({prompt}, p)[0];
  auto first = std::find(free_run.begin(), free_run.end(), free_run[3]) - free_run.begin();
  EXPECT_EQ(res.finish[0], FinishReason::Stop);
  EXPECT_EQ(res.tokens[0], std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));
}

TEST(EngineApi, StepReportsTokensLogprobsAndFinish) {
  CpuEngine e(small_options());
  SamplingParams p = greedy(3);
  p.logprobs = 2;
  uint64_t id = e.add_request({5, 6, 7, 8}, p);
  std::vector<int32_t> got;
  bool finished = false;
  while (e.has_unfinished()) {
    for (auto& ro : e.step()) {
      ASSERT_EQ(ro.request_id, id);
      EXPECT_EQ(ro.prompt_tokens, 4);
      ASSERT_EQ(ro.seqs.size(), 1u);
      const auto& so = ro.seqs[0];
      ASSERT_EQ(so.logprobs.size(), so.new_tokens.size());
      for (size_t i = 0; i < so.new_tokens.size(); ++i) {
        EXPECT_EQ(so.logprobs[i].token, so.new_tokens[i]);
        ASSERT_EQ(so.logprobs[i].top.size(), 2u);
        EXPECT_EQ(so.logprobs[i].top[0].first, so.new_tokens[i]);  // greedy: the top-1
        EXPECT_LE(so.logprobs[i].logprob, 0.f);
      }
      got.insert(got.end(), so.new_tokens.begin(), so.new_tokens.end());
      if (ro.finished) { finished = true; EXPECT_EQ(so.finish, FinishReason::Length); }
    }
  }
  EXPECT_TRUE(finished);
  EXPECT_EQ(got.size(), 3u);
}

// ---- prompt logprobs ------------------------------------------------------------------------------
// Captures the raw logits row of a request's one draw (the logits-processor seam sees the row
// before penalties): the reference for a prompt position's distribution.
struct CaptureRow : sched::LogitsProcessor {
  std::vector<float> row;
  void process(int, std::span<const int32_t>, std::span<const int32_t>, std::span<float> logits) override {
    row.assign(logits.begin(), logits.end());
  }
};

// Runs `prompt` with prompt_logprobs = k to completion; returns the request's prompt logprobs.
std::vector<PromptLogprob> prompt_logprobs_of(CpuEngine& e, const std::vector<int32_t>& prompt, int k) {
  SamplingParams p = greedy(2);
  p.prompt_logprobs = k;
  const uint64_t id = e.add_request(prompt, p);
  std::vector<PromptLogprob> got;
  int outputs = 0;
  while (e.has_unfinished())
    for (auto& ro : e.step())
      if (ro.request_id == id) {
        EXPECT_TRUE(ro.prompt_logprobs.empty() || outputs == 0) << "prompt logprobs after the first output";
        ++outputs;
        got.insert(got.end(), ro.prompt_logprobs.begin(), ro.prompt_logprobs.end());
      }
  return got;
}

TEST(EnginePromptLogprobs, EqualTheLogSoftmaxOfEachPrefixLastRow) {
  std::mt19937 g(5);
  const auto prompt = random_prompt(g, 21);
  for (int budget : {4096, 5}) {  // one prefill, and chunks of 5
    EngineOptions o = small_options();
    o.sched.max_num_batched_tokens = budget;
    o.sched.max_num_seqs = 5;
    CpuEngine e(o);
    // Warm the prefix cache with the same prompt: a prompt_logprobs request must not use it.
    e.generate({prompt}, greedy(1));
    const auto got = prompt_logprobs_of(e, prompt, 3);
    ASSERT_EQ(got.size(), prompt.size() - 1);
    for (size_t i = 1; i < prompt.size(); ++i) {
      auto cap = std::make_shared<CaptureRow>();
      SamplingParams p = greedy(1);
      p.logits_processor = cap;
      CpuEngine ref(small_options());
      ref.add_request(std::vector<int32_t>(prompt.begin(), prompt.begin() + i), p);
      while (ref.has_unfinished()) ref.step();
      const auto& row = cap->row;
      double m = row[0], sum = 0;
      for (float x : row) m = std::max<double>(m, x);
      for (float x : row) sum += std::exp(x - m);
      const double lse = m + std::log(sum);
      const PromptLogprob& lp = got[i - 1];
      EXPECT_EQ(lp.token, prompt[i]);
      EXPECT_NEAR(lp.logprob, row[prompt[i]] - lse, 1e-5) << "position " << i;
      int rank = 1;
      for (size_t v = 0; v < row.size(); ++v) rank += row[v] > row[prompt[i]];
      EXPECT_EQ(lp.rank, rank) << "position " << i;
      ASSERT_EQ(lp.top.size(), 3u);
      std::vector<size_t> idx(row.size());
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + 3, idx.end(), [&](size_t a, size_t b) { return row[a] > row[b]; });
      for (int t = 0; t < 3; ++t) {
        EXPECT_EQ(lp.top[t].first, static_cast<int32_t>(idx[t]));
        EXPECT_NEAR(lp.top[t].second, row[idx[t]] - lse, 1e-5);
      }
    }
  }
}

TEST(EnginePromptLogprobs, AreRangeCheckedAndStartAtTheSecondToken) {
  CpuEngine e(small_options());
  SamplingParams bad = greedy(1);
  bad.prompt_logprobs = 21;
  try {
    e.add_request({1, 2}, bad);
    FAIL() << "prompt_logprobs 21 accepted";
  } catch (const pie::Error& err) {
    EXPECT_NE(std::string(err.what()).find("prompt_logprobs"), std::string::npos);
  }
  // A one-token prompt has no prompt logprob to report.
  EXPECT_TRUE(prompt_logprobs_of(e, {7}, 0).empty());
  const auto two = prompt_logprobs_of(e, {7, 8, 9}, 0);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_TRUE(two[0].top.empty());
}

TEST(EngineApi, AbortAndFinishSequence) {
  CpuEngine e(small_options());
  uint64_t a = e.add_request({1, 2, 3}, greedy(50));
  uint64_t b = e.add_request({4, 5, 6}, greedy(50));
  e.step();
  e.abort(a);
  e.finish_sequence(b, 0);
  EXPECT_FALSE(e.has_unfinished());
  EXPECT_TRUE(e.step().empty());
  EXPECT_EQ(e.stats().num_running, 0);
}

TEST(EngineApi, NSequencesShareThePromptAndDiffer) {
  CpuEngine e(small_options());
  SamplingParams p;
  p.n = 3;
  p.max_tokens = 8;
  p.seed = 5;
  p.ignore_eos = true;
  auto r = e.generate({{9, 8, 7, 6, 5}}, p)[0];
  ASSERT_EQ(r.tokens.size(), 3u);
  for (auto& t : r.tokens) EXPECT_EQ(t.size(), 8u);
  EXPECT_TRUE(r.tokens[0] != r.tokens[1] || r.tokens[1] != r.tokens[2]);
}

TEST(EngineApi, EosFinishesUnlessIgnored) {
  // Bias the embedded model's <|im_end|> (502) up so it is sampled at once.
  CpuEngine e(small_options());
  SamplingParams p = greedy(5);
  p.ignore_eos = false;
  p.logit_bias = {{502, 100.f}};
  auto r = e.generate({{1, 2}}, p)[0];
  EXPECT_EQ(r.tokens[0], std::vector<int32_t>{502});
  EXPECT_EQ(r.finish[0], FinishReason::Stop);
  p.ignore_eos = true;
  r = e.generate({{1, 2}}, p)[0];
  EXPECT_EQ(r.tokens[0].size(), 5u);
  EXPECT_EQ(r.finish[0], FinishReason::Length);
}

/// small_options() with asynchronous scheduling on or off.
EngineOptions scheduling_options(bool async) {
  EngineOptions o = small_options();
  o.sched.async_scheduling = async;
  return o;
}

// The step observer's timing (pie bench's host-time line): the schedule and apply phases lie
// inside the host time, which lies inside the step, synchronously and with asynchronous
// scheduling (whose steps also plan the next one while this one runs).
TEST(EngineApi, StepObserverReportsHostPhasesInsideTheStep) {
  for (bool async : {false, true}) {
    SCOPED_TRACE(async ? "async scheduling" : "sync");
    CpuEngine e(scheduling_options(async));
    int steps = 0;
    double sched = 0, apply = 0;
    e.set_observer([&](const sched::StepPlan&, const StepTiming& t) {
      ++steps;
      EXPECT_GE(t.schedule_s, 0.0);
      EXPECT_GE(t.apply_s, 0.0);
      EXPECT_LE(t.schedule_s + t.apply_s, t.host_s + 1e-6);
      EXPECT_LE(t.host_s, t.total_s + 1e-6);
      sched += t.schedule_s;
      apply += t.apply_s;
    });
    e.generate({{1, 2, 3, 4, 5}, {6, 7, 8}}, greedy(6));
    EXPECT_GE(steps, 6);
    EXPECT_GT(sched, 0.0);
    EXPECT_GT(apply, 0.0);
  }
}

// StepTiming::device_idle_s is the gap the rank's step work left between two steps. In the
// synchronous loop the host's work between steps (here an observer that sleeps) is all gap; with
// asynchronous scheduling the next step is queued before the host waits, so the same sleep runs
// beside that step's forward and the median gap falls below the sleep.
TEST(EngineApi, DeviceIdleIsTheHostGapTheStepsCouldNotHide) {
  constexpr double kSleep = 0.004;
  std::vector<double> median_gap;
  for (bool async : {false, true}) {
    SCOPED_TRACE(async ? "async scheduling" : "sync");
    CpuEngine e(scheduling_options(async));
    int steps = 0;
    std::vector<double> gaps;
    e.set_observer([&](const sched::StepPlan&, const StepTiming& t) {
      if (steps++ == 0) {
        EXPECT_FALSE(t.device_idle_s.has_value()) << "no step before the first";
      } else {
        EXPECT_TRUE(t.device_idle_s.has_value());
        if (!t.device_idle_s) return;
        EXPECT_GE(*t.device_idle_s, 0.0);
        // The previous step's observer slept after its work and before this step's began.
        if (!async) EXPECT_GE(*t.device_idle_s, kSleep * 0.999);
        gaps.push_back(*t.device_idle_s);
      }
      std::this_thread::sleep_for(std::chrono::duration<double>(kSleep));
    });
    e.generate({{1, 2, 3, 4, 5}, {6, 7, 8}, {9, 10, 11, 12}}, greedy(12));
    ASSERT_GE(gaps.size(), 10u);
    std::nth_element(gaps.begin(), gaps.begin() + gaps.size() / 2, gaps.end());
    median_gap.push_back(gaps[gaps.size() / 2]);
  }
  std::printf("median gap: sync %.3f ms, async %.3f ms\n", 1e3 * median_gap[0], 1e3 * median_gap[1]);
  EXPECT_GE(median_gap[0], kSleep * 0.999);
  EXPECT_LT(median_gap[1], kSleep) << "asynchronous scheduling hid none of the host's time";
}

TEST(EngineApi, StatsAndConfig) {
  CpuEngine e(small_options());
  EXPECT_EQ(e.config().vocab_size, 512);
  EXPECT_FALSE(e.generation_config().eos_token_ids.empty());
  e.add_request({1, 2, 3, 4}, greedy(4));
  e.add_request({1, 2, 3, 4}, greedy(4));
  e.step();
  auto s = e.stats();
  EXPECT_EQ(s.num_running + s.num_waiting, 2);
  EXPECT_GT(s.kv_usage, 0.0);
  EXPECT_EQ(s.num_kv_blocks, 256);
}

}  // namespace
