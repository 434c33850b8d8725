#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "pie/sched/scheduler.hpp"

namespace pie::sched {

namespace {

std::vector<int32_t> prompt_of(int n, int start = 1000) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}

SamplingParams params(int max_tokens, int n = 1) {
  SamplingParams p;
  p.max_tokens = max_tokens;
  p.n = n;
  return p;
}

SchedulerConfig config(int max_seqs = 8, int budget = 64, int max_len = 256) {
  SchedulerConfig c;
  c.max_num_seqs = max_seqs;
  c.max_num_batched_tokens = budget;
  c.max_model_len = max_len;
  return c;
}

/// Samples `tok` for every requested token.
std::vector<SequenceUpdate> step(Scheduler& s, StepPlan& plan, int32_t tok = 7) {
  plan = s.schedule();
  std::vector<int32_t> sampled(plan.num_sampled_tokens(), tok);
  return s.update(plan, sampled);
}

}  // namespace

TEST(Scheduler, RejectsPromptLongerThanMaxModelLen) {
  Scheduler s(config(8, 64, 32), 64, 4, 0);
  try {
    s.add_request(1, prompt_of(33), params(4), {});
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("(length 33)"), std::string::npos) << m;
    EXPECT_NE(m.find("maximum model length of 32"), std::string::npos) << m;
  }
  EXPECT_THROW(s.add_request(2, {}, params(4), {}), Error);
  SamplingParams bad;
  bad.top_p = 0;
  EXPECT_THROW(s.add_request(3, prompt_of(3), bad, {}), Error);
  s.add_request(4, prompt_of(32), params(4), {});
  EXPECT_THROW(s.add_request(4, prompt_of(3), params(4), {}), Error);
}

TEST(Scheduler, RejectsAPoolSmallerThanOneSequence) {
  EXPECT_THROW(Scheduler(config(8, 64, 256), 10, 16, 0), Error);
}

TEST(Scheduler, PrefillThenDecodeProducesTheRunnerArrays) {
  Scheduler s(config(8, 64, 64), 16, 4, 0);
  s.add_request(1, prompt_of(6), params(3), {});
  StepPlan p = s.schedule();
  ASSERT_EQ(p.num_seqs(), 1);
  EXPECT_EQ(p.num_decode_seqs, 0);
  EXPECT_EQ(p.token_ids, prompt_of(6));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{6}));
  EXPECT_EQ(p.context_lens, (std::vector<int32_t>{6}));
  EXPECT_EQ(p.cu_query_lens, (std::vector<int32_t>{0, 6}));
  ASSERT_EQ(p.kv_indices.size(), 2u);
  EXPECT_EQ(p.kv_indptr, (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(p.kv_last_page_len, (std::vector<int32_t>{2}));
  for (int t = 0; t < 6; ++t) EXPECT_EQ(p.slot_mapping[t], int64_t{p.kv_indices[t / 4]} * 4 + t % 4);
  EXPECT_EQ(p.sample_seqs, (std::vector<int32_t>{0}));
  EXPECT_EQ(p.logits_rows, (std::vector<int32_t>{5}));
  EXPECT_EQ(p.sample_counts, (std::vector<int32_t>{1}));
  auto ups = s.update(p, std::vector<int32_t>{42});
  ASSERT_EQ(ups.size(), 1u);
  EXPECT_EQ(ups[0].token, 42);
  EXPECT_EQ(ups[0].finish, FinishReason::None);

  p = s.schedule();
  EXPECT_EQ(p.num_decode_seqs, 1);
  EXPECT_EQ(p.token_ids, (std::vector<int32_t>{42}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{6}));
  EXPECT_EQ(p.context_lens, (std::vector<int32_t>{7}));
  EXPECT_EQ(p.kv_last_page_len, (std::vector<int32_t>{3}));
  s.update(p, std::vector<int32_t>{43});
  p = s.schedule();
  ups = s.update(p, std::vector<int32_t>{44});
  EXPECT_EQ(ups[0].finish, FinishReason::Length);
  EXPECT_TRUE(ups[0].request_finished);
  EXPECT_EQ(s.tokens(1, 0).size(), 9u);
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_TRUE(s.schedule().empty());
  EXPECT_EQ(s.block_manager().num_free(), 16);
  EXPECT_EQ(s.find_request(1), nullptr);  // retired by the schedule() after it finished
}

TEST(Scheduler, DecodesComeFirstThenChunkedPrefillFillsTheBudget) {
  Scheduler s(config(8, 16, 256), 64, 4, 0);
  s.add_request(1, prompt_of(5), params(10), {});
  StepPlan p;
  step(s, p);
  s.add_request(2, prompt_of(40, 5000), params(10), {});
  p = s.schedule();
  ASSERT_EQ(p.num_seqs(), 2);
  EXPECT_EQ(p.num_decode_seqs, 1);
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{1, 15}));
  EXPECT_EQ(p.num_tokens(), 16);
  EXPECT_EQ(p.sample_seqs, (std::vector<int32_t>{0}));  // the chunk is not the last
  s.update(p, std::vector<int32_t>{1});
  p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{1, 15}));
  EXPECT_EQ(p.positions[1], 15);
  EXPECT_EQ(p.context_lens[1], 30);
  s.update(p, std::vector<int32_t>{1});
  p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{1, 10}));
  EXPECT_EQ(p.sample_seqs, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(p.logits_rows, (std::vector<int32_t>{0, 10}));
}

TEST(Scheduler, WithoutChunkingAPromptWaitsForAWholeBudget) {
  auto c = config(8, 32, 32);
  c.enable_chunked_prefill = false;
  Scheduler s(c, 64, 4, 0);
  s.add_request(1, prompt_of(20), params(4), {});
  s.add_request(2, prompt_of(20, 5000), params(4), {});
  StepPlan p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{20}));
  s.update(p, std::vector<int32_t>{1});
  p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{1, 20}));
}

TEST(Scheduler, LongPrefillTokenThresholdCapsEachSequencesChunk) {
  auto c = config(8, 64, 256);
  c.long_prefill_token_threshold = 12;
  Scheduler s(c, 64, 4, 0);
  s.add_request(1, prompt_of(30), params(2), {});
  s.add_request(2, prompt_of(5, 5000), params(2), {});
  StepPlan p = s.schedule();
  // Both prompts start in one step: the long one takes 12 tokens, the short one all 5.
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{12, 5}));
  EXPECT_EQ(p.sample_seqs, (std::vector<int32_t>{1}));
  s.update(p, std::vector<int32_t>{1});
  p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{1, 12}));  // the decode, then 12 more
  s.update(p, std::vector<int32_t>{1});
  p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{6}));  // request 2 finished (max_tokens 2)
  EXPECT_EQ(p.positions[0], 24);
  EXPECT_EQ(p.sample_seqs, (std::vector<int32_t>{0}));
}

TEST(Scheduler, DecodeFirstBudgetCapsPrefillOnlyInStepsWithDecodes) {
  auto c = config(8, 64, 256);
  c.max_prefill_tokens_with_decodes = 10;
  Scheduler s(c, 64, 4, 0);
  s.add_request(1, prompt_of(40), params(8), {});
  StepPlan p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{40}));  // nothing decodes: the whole budget
  s.update(p, std::vector<int32_t>{1});
  s.add_request(2, prompt_of(25, 5000), params(8), {});
  s.add_request(3, prompt_of(3, 9000), params(8), {});
  std::vector<std::vector<int32_t>> lens;
  for (int i = 0; i < 4; ++i) {
    p = s.schedule();
    lens.push_back(p.query_lens);
    EXPECT_LE(p.num_tokens() - p.num_decode_seqs, 10) << "step " << i;
    s.update(p, std::vector<int32_t>(p.num_sampled_tokens(), 1));
  }
  // 25 prompt tokens at 10 per step, FIFO: request 3 waits until request 2 is in.
  EXPECT_EQ(lens[0], (std::vector<int32_t>{1, 10}));
  EXPECT_EQ(lens[1], (std::vector<int32_t>{1, 10}));
  EXPECT_EQ(lens[2], (std::vector<int32_t>{1, 5, 3}));
  EXPECT_EQ(lens[3], (std::vector<int32_t>{1, 1, 1}));
}

TEST(Scheduler, AutoDecodeFirstBudgetScalesWithTheRunningDecodes) {
  auto c = config(16, 256, 256);
  c.max_prefill_tokens_with_decodes = SchedulerConfig::kAutoPrefillBudget;
  c.auto_prefill_budget_floor = 4;
  EXPECT_EQ(c.prefill_budget_with_decodes(1), 4);   // the floor
  EXPECT_EQ(c.prefill_budget_with_decodes(2), 4);   // max(4, 3)
  EXPECT_EQ(c.prefill_budget_with_decodes(6), 9);   // 3·6/2
  EXPECT_EQ(c.prefill_budget_with_decodes(7), 10);  // 7 + 3
  Scheduler s(c, 256, 4, 0);
  // Six short requests start together (no decodes yet: the whole budget); a long prompt arriving
  // beside their decodes comes in at max(floor, 3·6/2) = 9 tokens per step; once they finish, a
  // step with no decode takes the whole budget; beside one decode the next prompt gets the floor.
  for (int i = 0; i < 6; ++i) s.add_request(i, prompt_of(2, 100 * i), params(3), {});
  StepPlan p = s.schedule();
  EXPECT_EQ(p.num_tokens(), 12);
  s.update(p, std::vector<int32_t>(p.num_sampled_tokens(), 1));
  s.add_request(10, prompt_of(30, 5000), params(2), {});
  p = s.schedule();
  EXPECT_EQ(p.num_decode_seqs, 6);
  EXPECT_EQ(p.num_tokens() - p.num_decode_seqs, 9);  // max(4, 6 + 3)
  s.update(p, std::vector<int32_t>(p.num_sampled_tokens(), 1));
  p = s.schedule();
  EXPECT_EQ(p.num_tokens() - p.num_decode_seqs, 9);
  s.update(p, std::vector<int32_t>(p.num_sampled_tokens(), 1));
  p = s.schedule();  // the six finished with their 3rd token: no decodes → the whole budget
  EXPECT_EQ(p.num_decode_seqs, 0);
  EXPECT_EQ(p.num_tokens(), 12);  // the long prompt's remaining 30 - 18
  s.update(p, std::vector<int32_t>(p.num_sampled_tokens(), 1));
  s.add_request(11, prompt_of(20, 9000), params(2), {});
  p = s.schedule();  // one decode (request 10) → the floor
  EXPECT_EQ(p.num_decode_seqs, 1);
  EXPECT_EQ(p.num_tokens() - p.num_decode_seqs, 4);
}

TEST(Scheduler, NegativePrefillKnobsAreRejected) {
  auto c = config();
  c.long_prefill_token_threshold = -1;
  EXPECT_THROW(Scheduler(c, 64, 4, 0), Error);
  c = config();
  c.max_prefill_tokens_with_decodes = -5;
  EXPECT_THROW(Scheduler(c, 64, 4, 0), Error);
  c = config();
  c.max_prefill_tokens_with_decodes = SchedulerConfig::kAutoPrefillBudget;
  c.auto_prefill_budget_floor = 0;
  EXPECT_THROW(Scheduler(c, 64, 4, 0), Error);
}

/// A logits processor whose preparation (a grammar compile) finishes when the test says.
struct PendingProcessor final : LogitsProcessor {
  bool is_ready = false;
  void process(int, std::span<const int32_t>, std::span<const int32_t>, std::span<float>) override {}
  bool ready() const override { return is_ready; }
};

SamplingParams with_processor(int max_tokens, std::shared_ptr<LogitsProcessor> p) {
  SamplingParams s = params(max_tokens);
  s.logits_processor = std::move(p);
  return s;
}

TEST(Scheduler, ARequestWhoseProcessorIsNotReadyWaitsOnlyWhileOthersRun) {
  Scheduler s(config(8, 64, 256), 64, 4, 0);
  auto slow = std::make_shared<PendingProcessor>(), later = std::make_shared<PendingProcessor>();
  // Nothing runs: it starts at once (its prefill overlaps the compile; the draw waits for it).
  s.add_request(1, prompt_of(5), with_processor(3, slow), {});
  StepPlan p;
  step(s, p);
  EXPECT_EQ(p.num_seqs(), 1);
  // Request 1 runs: request 2 (not ready) is passed over, request 3 behind it is not held up.
  s.add_request(2, prompt_of(4, 5000), with_processor(3, later), {});
  s.add_request(3, prompt_of(6, 9000), params(1), {});
  p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{1, 6}));
  EXPECT_EQ(p.token_ids[1], 9000);
  EXPECT_EQ(s.num_waiting(), 1);
  s.update(p, std::vector<int32_t>{7, 7});
  // Ready now: it starts in the next step, alongside the running request.
  later->is_ready = true;
  p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{1, 4}));
  EXPECT_EQ(p.token_ids[1], 5000);
  EXPECT_EQ(s.num_waiting(), 0);
}

TEST(Scheduler, OnAnIdleEngineOnlyOneRequestWhoseProcessorIsNotReadyStarts) {
  Scheduler s(config(8, 64, 256), 64, 4, 0);
  auto a = std::make_shared<PendingProcessor>(), b = std::make_shared<PendingProcessor>();
  s.add_request(1, prompt_of(5), with_processor(3, a), {});
  s.add_request(2, prompt_of(4, 5000), with_processor(3, b), {});
  s.add_request(3, prompt_of(6, 9000), params(2), {});
  StepPlan p = s.schedule();
  // Request 1 starts (its step will wait for its compile only); request 2 is passed over, not
  // waited for as well; request 3 is ready and joins.
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(p.token_ids[0], 1000);
  EXPECT_EQ(p.token_ids[5], 9000);
  EXPECT_EQ(s.num_waiting(), 1);
}

TEST(Scheduler, RespectsMaxNumSeqs) {
  Scheduler s(config(3, 64, 64), 64, 4, 0);
  for (int i = 0; i < 5; ++i) s.add_request(i, prompt_of(2), params(5), {});
  StepPlan p = s.schedule();
  EXPECT_EQ(p.num_seqs(), 3);
  EXPECT_EQ(s.num_running(), 3);
  EXPECT_EQ(s.num_waiting(), 2);
}

TEST(Scheduler, StopsOnEosStopIdsMinTokensAndIgnoreEos) {
  Scheduler s(config(), 64, 4, 0);
  SamplingParams eos = params(10);
  s.add_request(1, prompt_of(3), eos, {2});
  SamplingParams minp = params(10);
  minp.min_tokens = 2;
  s.add_request(2, prompt_of(3), minp, {2});
  SamplingParams ign = params(3);
  ign.ignore_eos = true;
  s.add_request(3, prompt_of(3), ign, {2});
  SamplingParams stop = params(10);
  stop.stop_token_ids = {9};
  s.add_request(4, prompt_of(3), stop, {2});
  StepPlan p = s.schedule();
  auto ups = s.update(p, std::vector<int32_t>{2, 2, 2, 9});
  ASSERT_EQ(ups.size(), 4u);
  EXPECT_EQ(ups[0].finish, FinishReason::Stop);
  EXPECT_EQ(ups[0].stop_token, 2);
  EXPECT_EQ(ups[1].finish, FinishReason::None);  // min_tokens
  EXPECT_EQ(ups[2].finish, FinishReason::None);  // ignore_eos
  EXPECT_EQ(ups[3].finish, FinishReason::Stop);
  EXPECT_EQ(ups[3].stop_token, 9);
  p = s.schedule();
  ups = s.update(p, std::vector<int32_t>{2, 2});
  EXPECT_EQ(ups[0].finish, FinishReason::Stop);   // 2nd token may stop
  EXPECT_EQ(ups[1].finish, FinishReason::None);
  p = s.schedule();
  ups = s.update(p, std::vector<int32_t>{2});
  EXPECT_EQ(ups[0].finish, FinishReason::Length);  // max_tokens 3
  EXPECT_FALSE(s.has_unfinished());
}

TEST(Scheduler, StopsAtMaxModelLen) {
  Scheduler s(config(8, 64, 8), 16, 4, 0);
  s.add_request(1, prompt_of(6), params(100), {});
  StepPlan p;
  auto ups = step(s, p);
  EXPECT_EQ(ups[0].finish, FinishReason::None);
  ups = step(s, p);
  EXPECT_EQ(ups[0].finish, FinishReason::Length);
  EXPECT_EQ(s.tokens(1, 0).size(), 8u);
}

TEST(Scheduler, ForkPrefillsOnceThenSharesPromptBlocksWithCopyOnWrite) {
  Scheduler s(config(), 64, 4, 0);
  s.add_request(1, prompt_of(6), params(5, 3), {});
  StepPlan p = s.schedule();
  ASSERT_EQ(p.num_seqs(), 1);  // prompt prefilled once
  EXPECT_EQ(p.sample_counts, (std::vector<int32_t>{3}));
  EXPECT_EQ(p.num_sampled_tokens(), 3);
  auto ups = s.update(p, std::vector<int32_t>{10, 11, 12});
  ASSERT_EQ(ups.size(), 3u);
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(ups[k].index, k);
    EXPECT_EQ(ups[k].token, 10 + k);
    EXPECT_EQ(s.tokens(1, k).back(), 10 + k);
  }
  EXPECT_EQ(s.num_running(), 3);
  int free_after_prefill = s.block_manager().num_free();
  p = s.schedule();
  ASSERT_EQ(p.num_decode_seqs, 3);
  EXPECT_EQ(p.token_ids, (std::vector<int32_t>{10, 11, 12}));
  // partial block 1 (2 of 4 tokens) is shared by 3: two copies, the last owner writes in place
  EXPECT_EQ(p.copy_blocks.size(), 2u);
  EXPECT_EQ(s.block_manager().num_free(), free_after_prefill - 2);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(p.kv_indices[p.kv_indptr[i]], p.kv_indices[0]);  // shared
  std::set<int64_t> slots(p.slot_mapping.begin(), p.slot_mapping.end());
  EXPECT_EQ(slots.size(), 3u);
  int32_t shared = p.kv_indices[p.kv_indptr[3] - 1];  // the last owner writes in place
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(p.copy_blocks[i].src, shared);
    EXPECT_EQ(p.copy_blocks[i].dst, p.kv_indices[p.kv_indptr[i + 1] - 1]);
  }
  s.update(p, std::vector<int32_t>{1, 2, 3});
  EXPECT_EQ(std::vector<int32_t>(s.tokens(1, 1).begin(), s.tokens(1, 1).end()), (std::vector<int32_t>{1000, 1001, 1002, 1003, 1004, 1005, 11, 2}));
  s.finish_sequence(1, 1, FinishReason::Stop);
  EXPECT_EQ(s.num_running(), 2);
  EXPECT_TRUE(s.abort(1));
  EXPECT_FALSE(s.abort(1));
  EXPECT_EQ(s.block_manager().num_free(), 64);
  EXPECT_FALSE(s.has_unfinished());
}

TEST(Scheduler, AbortWhileWaitingOrMidPlan) {
  Scheduler s(config(), 64, 4, 0);
  s.add_request(1, prompt_of(6), params(5), {});
  s.add_request(2, prompt_of(6), params(5), {});
  EXPECT_TRUE(s.abort(2));
  EXPECT_EQ(s.num_waiting(), 1);
  StepPlan p = s.schedule();
  EXPECT_TRUE(s.abort(1));  // between schedule and update
  auto ups = s.update(p, std::vector<int32_t>{5});
  EXPECT_TRUE(ups.empty());
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.block_manager().num_free(), 64);
}

TEST(Scheduler, ScheduleTwiceWithoutUpdateIsAnError) {
  Scheduler s(config(), 64, 4, 0);
  s.add_request(1, prompt_of(6), params(5), {});
  s.schedule();
  EXPECT_THROW(s.schedule(), Error);
}

TEST(Scheduler, PrefixCacheServesASecondIdenticalPrompt) {
  Scheduler s(config(), 64, 4, 0);
  s.add_request(1, prompt_of(10), params(1), {});
  StepPlan p;
  step(s, p);
  s.add_request(2, prompt_of(10), params(1), {});
  p = s.schedule();
  EXPECT_EQ(p.query_lens, (std::vector<int32_t>{2}));
  EXPECT_EQ(p.context_lens, (std::vector<int32_t>{10}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{8, 9}));
  EXPECT_EQ(s.find_request(2)->cached_prompt_tokens, 8);
  EXPECT_EQ(s.prefix_cache_queries(), 20);
  EXPECT_EQ(s.prefix_cache_hits(), 8);
  s.update(p, std::vector<int32_t>{3});
}

TEST(Scheduler, PromptLogprobRowsFollowTheSamplesAcrossChunksAndSkipTheCache) {
  // Budget 6: a 14-token prompt in chunks of 6, 6, 2. Each chunk plans a row per prompt position
  // whose next token is a prompt token (0..12), after the sampled rows; the scored token of a
  // chunk's last row is the next chunk's first. A cached copy of the prompt is not read.
  Scheduler s(config(2, 6), 64, 4, 0);
  s.add_request(1, prompt_of(14), params(1), {});
  StepPlan p;
  while (s.has_unfinished()) step(s, p);
  SamplingParams lp = params(2);
  lp.prompt_logprobs = 3;
  s.add_request(2, prompt_of(14), lp, {});
  std::vector<int32_t> positions;
  for (int chunk = 0; chunk < 3; ++chunk) {
    p = s.schedule();
    ASSERT_EQ(p.num_seqs(), 1);
    const size_t extra = p.prompt_logprob_positions.size();
    ASSERT_EQ(p.logits_rows.size(), p.sample_seqs.size() + extra);
    ASSERT_EQ(p.prompt_logprob_tokens.size(), extra);
    for (size_t k = 0; k < extra; ++k) {
      const int pos = p.prompt_logprob_positions[k];
      EXPECT_EQ(p.prompt_logprob_seqs[k], 0);
      EXPECT_EQ(p.positions[p.logits_rows[p.sample_seqs.size() + k]], pos);
      EXPECT_EQ(p.prompt_logprob_tokens[k], 1000 + pos + 1);
      positions.push_back(pos);
    }
    s.update(p, std::vector<int32_t>(p.num_sampled_tokens(), 7));
  }
  EXPECT_EQ(s.find_request(2)->cached_prompt_tokens, 0);
  std::vector<int32_t> want(13);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(positions, want);
  p = s.schedule();  // the decode step plans no prompt rows
  EXPECT_TRUE(p.prompt_logprob_tokens.empty());
  EXPECT_EQ(p.logits_rows.size(), p.sample_seqs.size());
  s.update(p, std::vector<int32_t>(p.num_sampled_tokens(), 7));
}

TEST(Scheduler, RecomputePreemptsTheNewestAndResumesIt) {
  // 8 blocks of 4: two sequences of 12 prompt tokens take 6; decoding needs more.
  Scheduler s(config(4, 64, 32), 8, 4, 0);
  s.add_request(1, prompt_of(12, 0), params(12), {});
  s.add_request(2, prompt_of(12, 100), params(12), {});
  StepPlan p;
  int steps = 0;
  while (s.has_unfinished() && steps < 200) {
    step(s, p, 5);
    ++steps;
  }
  EXPECT_GT(s.num_preemptions(), 0);
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.block_manager().num_free(), 8);
}

TEST(Scheduler, PreemptsTheMostRecentlyAdmittedSequence) {
  Scheduler s(config(4, 64, 32), 8, 4, 0);
  s.add_request(1, prompt_of(12, 0), params(12), {});
  s.add_request(2, prompt_of(12, 100), params(12), {});
  StepPlan p;
  step(s, p);  // both prefilled: 6 of 8 blocks
  for (int i = 0; i < 4; ++i) step(s, p);  // positions 12..15: one new block each
  EXPECT_EQ(s.num_preemptions(), 0);
  p = s.schedule();  // position 16: request 1 needs a block, none is free
  EXPECT_EQ(s.num_preemptions(), 1);
  EXPECT_EQ(s.find_request(1)->seqs[0]->state, SeqState::Running);
  EXPECT_EQ(s.find_request(2)->seqs[0]->state, SeqState::Waiting);
  EXPECT_EQ(p.num_seqs(), 1);
  s.update(p, std::vector<int32_t>(p.num_sampled_tokens(), 5));
}

TEST(Scheduler, SwapPreemptionEmitsCopyListsAndSwapsBack) {
  auto c = config(4, 64, 32);
  c.preemption_mode = PreemptionMode::Swap;
  c.enable_prefix_caching = false;
  Scheduler s(c, 8, 4, 16);
  s.add_request(1, prompt_of(12, 0), params(12), {});
  s.add_request(2, prompt_of(12, 100), params(12), {});
  StepPlan p;
  size_t outs = 0, ins = 0;
  int steps = 0;
  while (s.has_unfinished() && steps < 200) {
    p = s.schedule();
    EXPECT_TRUE(p.swap_out.empty() || p.swap_in.empty());
    outs += p.swap_out.size();
    ins += p.swap_in.size();
    s.update(p, std::vector<int32_t>(p.num_sampled_tokens(), 5));
    ++steps;
  }
  EXPECT_GT(outs, 0u);
  EXPECT_EQ(outs, ins);
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.block_manager().host().num_free(), 16);
}

}  // namespace pie::sched
