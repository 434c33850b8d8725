// Asynchronous scheduling (SchedulerConfig::async_scheduling) on the CPU-simulated engine:
// the CPU runner computes each launched step on its worker thread and feeds the placeholder
// rows from the previous step's draws, while the host plans the next step. Every test runs the
// same requests synchronously and asynchronously and compares tokens, finish reasons and
// logprobs, and checks that steps were really planned ahead (steps_scheduled_ahead). The
// scheduler's half of the protocol (feed rows, placeholders never hashed, two plans in
// flight) is tested on its own at the end.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "pie/engine/engine.hpp"
#include "pie/parallel/cpu_group.hpp"

#include "engine_test_util.hpp"

namespace {
using namespace pie;
using sched::FinishReason;
using sched::SamplingParams;
using CpuEngine = Engine<Qwen3, CpuF32>;

using test::greedy;
using test::random_prompt;
using test::small_options;

struct Job {
  std::vector<int32_t> prompt;
  SamplingParams params;
};

/// One sequence's stream as step() reported it.
struct Stream {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  FinishReason finish = FinishReason::None;
  bool operator==(const Stream&) const = default;
};
using Streams = std::map<std::pair<size_t, int>, Stream>;  // (job, sequence index)

/// Between steps: called with the engine, the request ids (job order) and the streams so far.
using Between = std::function<void(CpuEngine&, const std::vector<uint64_t>&, const Streams&)>;

struct Outcome {
  Streams streams;
  uint64_t ahead = 0;  // steps_scheduled_ahead()
  int64_t preemptions = 0;
  uint64_t prefix_hits = 0;
};

Outcome run(EngineOptions o, bool async, const std::vector<Job>& jobs, const Between& between_ = {},
        engine::RankGroup group = {}) {
  o.sched.async_scheduling = async;
  Between between = between_;  // a copy: a stateful callback starts afresh in each run
  CpuEngine e(o, std::move(group));
  std::vector<uint64_t> ids;
  std::map<uint64_t, size_t> job_of;
  for (size_t i = 0; i < jobs.size(); ++i) {
    ids.push_back(e.add_request(jobs[i].prompt, jobs[i].params));
    job_of[ids.back()] = i;
  }
  Outcome r;
  for (int guard = 0; e.has_unfinished(); ++guard) {
    EXPECT_LT(guard, 5000) << "the engine does not finish";
    if (guard >= 5000) break;
    for (auto& ro : e.step())
      for (auto& so : ro.seqs) {
        // Requests added by `between` are keyed past the jobs, by id (the same in both modes).
        const auto j = job_of.find(ro.request_id);
        Stream& s = r.streams[{j != job_of.end() ? j->second : jobs.size() + ro.request_id, so.index}];
        s.tokens.insert(s.tokens.end(), so.new_tokens.begin(), so.new_tokens.end());
        for (auto& lp : so.logprobs) s.logprobs.push_back(lp.logprob);
        if (so.finish != FinishReason::None) s.finish = so.finish;
      }
    if (between) between(e, ids, r.streams);
  }
  r.ahead = e.steps_scheduled_ahead();
  EXPECT_EQ(e.stats().steps_scheduled_ahead, r.ahead);
  r.preemptions = e.stats().num_preemptions;
  r.prefix_hits = e.stats().prefix_cache_hits;
  return r;
}

/// Runs both ways; expects equal streams and (unless `expect_ahead` is false) overlap.
Outcome expect_async_equals_sync(const EngineOptions& o, const std::vector<Job>& jobs, const Between& between = {},
                             bool expect_ahead = true) {
  const Outcome sync = run(o, false, jobs, between);
  const Outcome async = run(o, true, jobs, between);
  EXPECT_EQ(sync.ahead, 0u);
  if (expect_ahead) EXPECT_GT(async.ahead, 0u) << "no step was scheduled ahead";
  EXPECT_EQ(async.streams.size(), sync.streams.size());
  for (const auto& [key, want] : sync.streams) {
    auto it = async.streams.find(key);
    if (it == async.streams.end()) {
      ADD_FAILURE() << "job " << key.first << " seq " << key.second << " missing in the async run";
      continue;
    }
    EXPECT_EQ(it->second.tokens, want.tokens) << "job " << key.first << " seq " << key.second;
    EXPECT_EQ(it->second.finish, want.finish) << "job " << key.first << " seq " << key.second;
    EXPECT_EQ(it->second.logprobs, want.logprobs) << "job " << key.first << " seq " << key.second;
  }
  return async;
}

std::vector<Job> greedy_jobs(int count, int new_tokens, uint32_t seed = 11) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int> len(3, 60);
  std::vector<Job> v;
  for (int i = 0; i < count; ++i) v.push_back({random_prompt(g, len(g)), greedy(new_tokens)});
  return v;
}

TEST(AsyncScheduling, GreedyBatchOf16EqualsSyncAndPlansAhead) {
  const auto jobs = greedy_jobs(16, 20);
  const Outcome a = expect_async_equals_sync(small_options(), jobs);
  // Every step after the first is planned while the one before computes (16 requests of 20
  // tokens admitted together: about 20 steps, none of them synchronous).
  EXPECT_GE(a.ahead, 18u);
}

TEST(AsyncScheduling, SeededAndUnseededRandomSampling) {
  std::mt19937 g(3);
  std::vector<Job> jobs;
  for (int i = 0; i < 8; ++i) {
    SamplingParams p;
    p.temperature = 0.7f + 0.1f * i;
    p.top_p = i % 2 ? 0.9f : 1.0f;
    p.top_k = i % 3 == 0 ? 20 : 0;
    p.min_p = i == 5 ? 0.05f : 0.f;
    if (i % 2 == 0) p.seed = 1000 + i;  // odd ones draw with the engine's default seed
    p.max_tokens = 14;
    p.ignore_eos = true;
    jobs.push_back({random_prompt(g, 5 + 4 * i), p});
  }
  expect_async_equals_sync(small_options(), jobs);
}

TEST(AsyncScheduling, NThreeForksAfterThePrefill) {
  std::mt19937 g(5);
  SamplingParams p;
  p.temperature = 1.0f;
  p.n = 3;
  p.seed = 77;
  p.max_tokens = 10;
  p.ignore_eos = true;
  std::vector<Job> jobs{{random_prompt(g, 30), p}, {random_prompt(g, 9), greedy(12)}};
  SamplingParams q = p;
  q.seed.reset();
  q.n = 2;
  jobs.push_back({random_prompt(g, 17), q});
  const Outcome a = expect_async_equals_sync(small_options(), jobs);
  EXPECT_EQ(a.streams.size(), 6u);
}

TEST(AsyncScheduling, StopIdsAndMaxTokensFinishMidBatch) {
  // Stop ids taken from a first run's tokens, so that sequences stop at different steps.
  auto jobs = greedy_jobs(10, 24, 21);
  const Outcome first = run(small_options(), false, jobs);
  for (size_t i = 0; i < jobs.size(); ++i) {
    const auto& t = first.streams.at({i, 0}).tokens;
    if (i % 3 == 0) jobs[i].params.stop_token_ids = {t[3 + i]};  // stops at or before token 4 + i
    if (i % 3 == 1) jobs[i].params.max_tokens = 2 + static_cast<int>(i);
  }
  const Outcome a = expect_async_equals_sync(small_options(), jobs);
  const Outcome s = run(small_options(), false, jobs);
  EXPECT_EQ(s.streams.at({0, 0}).finish, FinishReason::Stop);
  EXPECT_LE(s.streams.at({0, 0}).tokens.size(), 4u);
  EXPECT_EQ(s.streams.at({1, 0}).tokens.size(), 3u);
  EXPECT_EQ(a.streams.at({2, 0}).tokens.size(), 24u);
}

TEST(AsyncScheduling, EosFinishesMidBatchUnlessIgnoreEos) {
  // The embedded model with an EOS id that it actually generates (taken from a first run).
  auto m = model::load_model<float>("", model::LoadFormat::Auto, 0);
  auto w = std::make_shared<const model::Weights<float>>(std::move(m.weights));
  EngineOptions o = small_options();
  o.set_weights(w, m.generation);
  auto jobs = greedy_jobs(8, 16, 31);
  const Outcome first = run(o, false, jobs);
  model::GenerationConfig gen = m.generation;
  gen.eos_token_ids = {first.streams.at({2, 0}).tokens[5]};
  o.set_weights(w, gen);
  for (size_t i = 0; i < jobs.size(); ++i) jobs[i].params.ignore_eos = i % 2 == 1;
  const Outcome a = expect_async_equals_sync(o, jobs);
  EXPECT_EQ(a.streams.at({2, 0}).finish, FinishReason::Stop);
  EXPECT_LE(a.streams.at({2, 0}).tokens.size(), 6u);
  EXPECT_EQ(a.streams.at({3, 0}).tokens.size(), 16u);  // ignore_eos
}

class AsyncPreemption : public ::testing::TestWithParam<sched::PreemptionMode> {};

TEST_P(AsyncPreemption, TinyKvCacheForcesPreemption) {
  EngineOptions o = small_options();
  o.num_kv_blocks = 12;  // 192 slots for 17 sequences of up to 80 tokens
  o.sched.max_model_len = 128;
  o.sched.preemption_mode = GetParam();
  if (GetParam() == sched::PreemptionMode::Swap) o.num_host_blocks = 64;
  auto jobs = greedy_jobs(17, 20);
  SamplingParams seeded;
  seeded.temperature = 1.5f;  // flat enough that a wrong randomness key changes tokens
  seeded.seed = 5;
  seeded.max_tokens = 20;
  seeded.ignore_eos = true;
  jobs[4].params = jobs[9].params = seeded;
  const Outcome a = expect_async_equals_sync(o, jobs);
  EXPECT_GT(a.preemptions, 0);
}
INSTANTIATE_TEST_SUITE_P(Modes, AsyncPreemption,
                         ::testing::Values(sched::PreemptionMode::Recompute, sched::PreemptionMode::Swap),
                         [](const auto& i) { return i.param == sched::PreemptionMode::Swap ? "Swap" : "Recompute"; });

TEST(AsyncScheduling, PrefixCacheHitsOnSharedPrefixes) {
  std::mt19937 g(9);
  const auto shared = random_prompt(g, 40);  // two and a half 16-token blocks
  std::vector<Job> jobs;
  for (int i = 0; i < 6; ++i) {
    auto p = shared;
    auto tail = random_prompt(g, 3 + i);
    p.insert(p.end(), tail.begin(), tail.end());
    jobs.push_back({p, greedy(18)});
  }
  // The later requests arrive while the first ones decode, so they hit the cached blocks.
  const Between late = [&, added = false](CpuEngine& e, const std::vector<uint64_t>&, const Streams& s) mutable {
    if (added || s.empty()) return;
    added = true;
    e.add_request(jobs[0].prompt, greedy(18));  // a whole-prompt repeat as well
  };
  const Outcome a = expect_async_equals_sync(small_options(), jobs, late);
  EXPECT_GT(a.prefix_hits, 0u);
}

TEST(AsyncScheduling, AbortAndFinishSequenceBetweenSteps) {
  auto jobs = greedy_jobs(8, 30, 41);
  SamplingParams n2 = greedy(30);
  n2.temperature = 1.0f;
  n2.seed = 3;
  n2.n = 2;
  jobs[6].params = n2;
  // Content-triggered, as the server does: abort job 1 once it has 5 tokens, finish job 2
  // (a stop string) once it has 7, and sequence 1 of job 6 once it has 4.
  const Between cut = [done = std::set<std::pair<size_t, int>>{}](CpuEngine& e, const std::vector<uint64_t>& ids,
                                                                  const Streams& s) mutable {
    auto once = [&](size_t job, int index, size_t n) {
      auto it = s.find({job, index});
      return it != s.end() && it->second.tokens.size() >= n && done.insert({job, index}).second;
    };
    if (once(1, 0, 5)) e.abort(ids[1]);
    if (once(2, 0, 7)) e.finish_sequence(ids[2], 0);
    if (once(6, 1, 4)) e.finish_sequence(ids[6], 1);
  };
  const Outcome a = expect_async_equals_sync(small_options(), jobs, cut);
  EXPECT_EQ(a.streams.at({1, 0}).tokens.size(), 5u);
  EXPECT_EQ(a.streams.at({2, 0}).tokens.size(), 7u);
  EXPECT_EQ(a.streams.at({6, 1}).tokens.size(), 4u);
  EXPECT_EQ(a.streams.at({6, 0}).tokens.size(), 30u);
}

TEST(AsyncScheduling, ChunkedPrefillOfSevenTokens) {
  EngineOptions o = small_options();
  o.sched.max_num_batched_tokens = 7;
  o.sched.max_num_seqs = 7;
  expect_async_equals_sync(o, greedy_jobs(9, 12, 51));
}

TEST(AsyncScheduling, LogprobsRequestRunsSynchronousStepsWhileItLives) {
  auto jobs = greedy_jobs(6, 24, 61);
  jobs[0].params.max_tokens = 4;
  jobs[0].params.logprobs = 3;  // needs the host sampler: steps are synchronous while it runs
  SamplingParams pen = greedy(3);
  pen.repetition_penalty = 1.3f;
  jobs.push_back({jobs[1].prompt, pen});
  const Outcome a = expect_async_equals_sync(small_options(), jobs);
  EXPECT_EQ(a.streams.at({0, 0}).logprobs.size(), 4u);
  EXPECT_LT(a.ahead, 24u);  // not every step ran ahead
}

TEST(AsyncScheduling, TensorParallelTwoCpuRanks) {
  EngineOptions o = small_options();
  o.num_kv_blocks = 64;
  auto jobs = greedy_jobs(6, 16, 71);
  SamplingParams seeded;
  seeded.temperature = 0.8f;
  seeded.seed = 9;
  seeded.max_tokens = 16;
  seeded.ignore_eos = true;
  jobs[2].params = seeded;
  const Outcome single = run(o, false, jobs);
  const Outcome tp = run(o, true, jobs, {}, parallel::cpu_group(2));
  EXPECT_GT(tp.ahead, 0u);
  EXPECT_EQ(tp.streams, single.streams);
}

// Requests arriving while others decode (triggered by the tokens produced so far, so both modes
// add them in the same order, with the same ids and seeds), content-triggered aborts and stop
// strings, greedy / seeded / n = 2 mixed, on a 12-block cache: preemption, prefix hits and
// finishes all land while a step is in flight.
class AsyncStress : public ::testing::TestWithParam<sched::PreemptionMode> {};

TEST_P(AsyncStress, RandomArrivalsAbortsAndStopsOnATinyCache) {
  EngineOptions o = small_options();
  o.num_kv_blocks = 12;
  o.sched.max_model_len = 128;
  o.sched.max_num_batched_tokens = 48;  // chunked prefill too
  o.sched.max_num_seqs = 12;
  o.sched.preemption_mode = GetParam();
  if (GetParam() == sched::PreemptionMode::Swap) o.num_host_blocks = 24;
  std::mt19937 g(123);
  const auto shared = random_prompt(g, 20);
  std::vector<Job> later;
  for (int i = 0; i < 24; ++i) {
    std::uniform_int_distribution<int> len(2, 40);
    auto p = i % 3 == 0 ? shared : std::vector<int32_t>{};
    auto tail = random_prompt(g, len(g));
    p.insert(p.end(), tail.begin(), tail.end());
    SamplingParams sp = greedy(4 + static_cast<int>(g() % 20));
    if (i % 4 == 1) {
      sp.temperature = 1.2f;
      sp.seed = 500 + i;
    }
    if (i % 6 == 5) {
      sp.temperature = 1.0f;
      sp.seed = 9;
      sp.n = 2;
    }
    later.push_back({p, sp});
  }
  const std::vector<Job> first(later.begin(), later.begin() + 4);
  const Between stress = [later, added = size_t{4}, cut = std::set<std::pair<size_t, int>>{}](
                             CpuEngine& e, const std::vector<uint64_t>&, const Streams& s) mutable {
    // Cuts first: an engine they leave empty takes the next arrival at once in both modes.
    for (const auto& [key, st] : s) {
      if (st.finish != FinishReason::None || st.tokens.size() < 3) continue;
      const uint64_t id = key.first < 4 ? key.first : key.first - 4;  // ids are added in order
      // An abort is per request: only where one sequence's progress decides it (an n = 2
      // request's two sequences may progress at different steps in the two modes).
      if (id % 5 == 2 && later[id].params.n == 1 && cut.insert(key).second) e.abort(id);
      if (id % 5 == 3 && st.tokens.size() >= 5 && cut.insert(key).second) e.finish_sequence(id, key.second);
    }
    size_t produced = 0;
    for (const auto& [key, st] : s) produced += st.tokens.size();
    // One more request per 6 tokens produced, or at once when everything else has finished.
    while (added < later.size() && (produced >= 6 * added || !e.has_unfinished())) {
      e.add_request(later[added].prompt, later[added].params);
      ++added;
    }
  };
  const Outcome a = expect_async_equals_sync(o, first, stress);
  EXPECT_GT(a.preemptions, 0);
  EXPECT_GE(a.streams.size(), 24u);
}
INSTANTIATE_TEST_SUITE_P(Modes, AsyncStress,
                         ::testing::Values(sched::PreemptionMode::Recompute, sched::PreemptionMode::Swap),
                         [](const auto& i) { return i.param == sched::PreemptionMode::Swap ? "Swap" : "Recompute"; });

// ---- the scheduler's half ------------------------------------------------------------------------
TEST(AsyncSchedulerProtocol, SecondPlanFeedsDecodesFromTheFirstPlansDraws) {
  sched::SchedulerConfig c;
  c.async_scheduling = true;
  c.max_model_len = 64;
  sched::Scheduler s(c, 32, 16, 0);
  SamplingParams p = greedy(5);
  s.add_request(1, std::vector<int32_t>(15, 7), p, {});
  s.add_request(2, std::vector<int32_t>(4, 8), p, {});
  sched::StepPlan a = s.schedule();
  ASSERT_EQ(a.num_sampled_tokens(), 2);
  EXPECT_TRUE(a.feed_rows.empty());
  sched::StepPlan b = s.schedule();  // before a's update
  EXPECT_EQ(s.num_outstanding(), 2);
  ASSERT_EQ(b.num_decode_seqs, 2);
  ASSERT_EQ(b.feed_rows, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(b.feed_draws, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(b.token_ids[0], sched::StepPlan::kPlaceholderToken);
  EXPECT_EQ(b.positions[0], 15);  // request 1's first output token completes its first block
  // Its block holds a placeholder: not in the prefix cache until the token is known.
  const int64_t queries = s.block_manager().device().prefix_cache_queries();
  EXPECT_THROW(s.schedule(), Error);  // a third plan before any update
  auto ua = s.update(a, std::vector<int32_t>{42, 43});
  ASSERT_EQ(ua.size(), 2u);
  EXPECT_EQ(s.tokens(1, 0).back(), 42);
  auto ub = s.update(b, std::vector<int32_t>{44, 45});
  EXPECT_EQ(s.tokens(2, 0).back(), 45);
  // Now the full block [7 × 15, 42] is registered: a new request with that prompt hits it.
  std::vector<int32_t> again(15, 7);
  again.push_back(42);
  again.push_back(1);
  s.add_request(3, again, p, {});
  sched::StepPlan c3 = s.schedule();
  EXPECT_GT(s.block_manager().device().prefix_cache_queries(), queries);
  EXPECT_EQ(s.find_request(3)->cached_prompt_tokens, 16);
  (void)c3;
  (void)ub;
}

TEST(AsyncSchedulerProtocol, UpdateFinishingASequenceTheNewerPlanScheduledFreesIt) {
  sched::SchedulerConfig c;
  c.async_scheduling = true;
  c.max_model_len = 64;
  sched::Scheduler s(c, 8, 16, 0);
  SamplingParams p = greedy(1);  // finishes on its first token
  s.add_request(1, std::vector<int32_t>(5, 7), p, {});
  sched::StepPlan a = s.schedule();
  sched::StepPlan b = s.schedule();  // schedules the placeholder decode anyway
  ASSERT_EQ(b.feed_rows.size(), 1u);
  auto ua = s.update(a, std::vector<int32_t>{9});
  ASSERT_EQ(ua.size(), 1u);
  EXPECT_EQ(ua[0].finish, FinishReason::Length);
  EXPECT_EQ(s.block_manager().num_free(), 8);  // freed at once
  auto ub = s.update(b, std::vector<int32_t>{10});
  EXPECT_TRUE(ub.empty());  // skipped, as an abort is
  EXPECT_EQ(s.tokens(1, 0).size(), 6u);
  EXPECT_FALSE(s.has_unfinished());
}

TEST(AsyncSchedulerProtocol, SynchronousSchedulerStillRejectsASecondSchedule) {
  sched::SchedulerConfig c;
  c.max_model_len = 64;
  sched::Scheduler s(c, 8, 16, 0);
  s.add_request(1, std::vector<int32_t>(5, 7), greedy(3), {});
  (void)s.schedule();
  EXPECT_THROW(s.schedule(), Error);
}

}  // namespace
