// Engine's device-sampling path (the one the CUDA runner takes) and its logits-processor seam,
// on the CPU with a fake runner that declares kSamplesOnDevice and kLogitsPerDraw: its logits are a fixed hash of (input
// token, position, vocabulary id), so the greedy continuation of a prompt is known in advance.
// Checks that greedy requests take execute_sample(plan, specs) with one spec per draw carrying the
// step count, that any request asking for logprobs sends its step through execute_logits and
// the host Sampler (one row per draw), and that both paths give the known tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "pie/engine/engine.hpp"
#include "pie/model/embedded.hpp"
#include "pie/parallel/cpu_group.hpp"

#include "engine_test_util.hpp"

namespace {
struct FakeModel {};

float fake_logit(int32_t token, int32_t pos, int v) {
  uint64_t x = (static_cast<uint64_t>(token) * 1315423911u) ^ (static_cast<uint64_t>(pos) * 2654435761u) ^
               (static_cast<uint64_t>(v) * 0x9e3779b97f4a7c15ull);
  x ^= x >> 29; x *= 0xbf58476d1ce4e5b9ull; x ^= x >> 32;
  return static_cast<float>(x % 100003) / 1000.f;
}

int32_t fake_argmax(int32_t token, int32_t pos, int vocab) {
  int32_t best = 0;
  for (int v = 1; v < vocab; ++v)
    if (fake_logit(token, pos, v) > fake_logit(token, pos, best)) best = v;  // lowest id on ties
  return best;
}

/// The fake device sampler's "random" draw: the least likely token, which the host Sampler
/// (temperature 0.8 over logits spread across [0, 100]) never draws, so a test can tell which
/// sampler drew a token.
int32_t fake_argmin(int32_t token, int32_t pos, int vocab) {
  int32_t best = 0;
  for (int v = 1; v < vocab; ++v)
    if (fake_logit(token, pos, v) < fake_logit(token, pos, best)) best = v;
  return best;
}

struct Calls {
  int device_steps = 0, host_steps = 0, masked_steps = 0, full_steps = 0;
  std::vector<pie::engine::SampleSpec> last_specs;
};
Calls g_calls;
}  // namespace

namespace pie {
/// A runner with the device runners' interface (kSamplesOnDevice, one logits row per draw).
class FakeRunner {
 public:
  static constexpr bool kLogitsPerDraw = true;
  static constexpr bool kSamplesOnDevice = true;
  static constexpr bool kSamplesMasked = true;
  static constexpr bool kSamplesFull = true;
  static constexpr int kVocab = 97;
  using MaskFill = std::function<void(std::span<int32_t> masks, std::span<int32_t> flags)>;

  FakeRunner(const EngineOptions& o, engine::RankSpec spec, size_t) : blocks_(o.num_kv_blocks), rank_(spec.rank) {
    cfg_ = model::embedded_config();
    cfg_.vocab_size = kVocab;
    cfg_.eos_token_ids.clear();
  }
  const model::ModelConfig& global_config() const { return cfg_; }
  const model::GenerationConfig& generation_config() const { return gen_; }
  int max_kv_blocks() const { return blocks_; }
  int wanted_host_blocks(const EngineOptions&) const { return 0; }
  void allocate_kv(int, int) {}
  int num_blocks() const { return blocks_; }

  /// Calls draw(row, d) for every draw d of `plan` in sample order: sample j's logits row, once
  /// per sequence it samples for (StepPlan::draws_of).
  template <class Fn>
  static void for_each_draw(const sched::StepPlan& plan, Fn&& draw) {
    size_t d = 0;
    for (size_t j = 0; j < plan.sample_seqs.size(); ++j)
      for (int k = 0, n = plan.draws_of(j); k < n; ++k)
        draw(plan.logits_rows[j], d++);
  }

  std::span<const int32_t> execute_sample(const sched::StepPlan& plan, const std::vector<engine::SampleSpec>& specs) {
    PIE_CHECK(static_cast<int>(specs.size()) == plan.num_sampled_tokens(), "specs ", specs.size(), " for ",
              plan.num_sampled_tokens(), " draws");
    if (rank_ != 0) return {};  // under TP rank 0 samples (the CUDA runner's contract)
    ++g_calls.device_steps;
    g_calls.last_specs = specs;
    ids_.clear();
    device_draws(plan, specs);
    return ids_;
  }
  /// The ids the device sampler drew in the last step (the CUDA runner's last_ids()).
  std::span<const int32_t> last_ids() const { return ids_; }

  /// The CUDA runner's masked step: rank 0 has `fill` write a bitmask per draw (flag 0: none),
  /// then draws greedily over the allowed tokens.
  std::span<const int32_t> execute_sample_masked(const sched::StepPlan& plan,
                                                 const std::vector<engine::SampleSpec>& specs, const MaskFill& fill) {
    if (rank_ != 0) return {};
    ++g_calls.masked_steps;
    const int n = plan.num_sampled_tokens(), words = sched::bitmask_words(kVocab);
    PIE_CHECK(static_cast<int>(specs.size()) == n, "specs ", specs.size(), " for ", n, " draws");
    std::vector<int32_t> masks(static_cast<size_t>(n) * words, 0x5a5a5a5a), flags(n, 7);  // poisoned
    fill(masks, flags);
    ids_.clear();
    for_each_draw(plan, [&](int row, size_t d) {
      PIE_CHECK(flags[d] == 0 || flags[d] == 1, "draw ", d, ": flag ", flags[d], " not written");
      std::vector<float> l(kVocab);
      for (int v = 0; v < kVocab; ++v) l[v] = fake_logit(plan.token_ids[row], plan.positions[row], v);
      if (flags[d]) sched::apply_token_bitmask(l, std::span<const int32_t>(masks).subspan(d * words, words));
      ids_.push_back(static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin()));
    });
    return ids_;
  }
  /// The CUDA runner's full device sampler (penalties, bias, min_tokens, logprobs), here the
  /// CPU Sampler over the fake logits with the engine's per-draw inputs, returned in the device
  /// layout ([draws][max_top] alternatives).
  engine::DeviceDraws execute_sample_full(const sched::StepPlan& plan, const std::vector<engine::SampleSpec>& specs,
                                          std::span<const sched::SamplerInput> inputs) {
    const int n = plan.num_sampled_tokens();
    PIE_CHECK(static_cast<int>(specs.size()) == n, "specs ", specs.size(), " for ", n, " draws");
    if (rank_ != 0) return {};
    PIE_CHECK(static_cast<int>(inputs.size()) == n, "inputs ", inputs.size(), " for ", n, " draws");
    ++g_calls.full_steps;
    int max_top = 0;
    for (const auto& in : inputs) max_top = std::max(max_top, in.params->logprobs.value_or(0));
    ids_.clear();
    lps_.assign(n, 0.f);
    top_ids_.assign(static_cast<size_t>(n) * max_top, -1);
    top_lps_.assign(static_cast<size_t>(n) * max_top, 0.f);
    for_each_draw(plan, [&](int row, size_t d) {
      std::vector<float> l(kVocab);
      for (int v = 0; v < kVocab; ++v) l[v] = fake_logit(plan.token_ids[row], plan.positions[row], v);
      const SamplerOutput o = Sampler::sample(l, inputs[d]);
      ids_.push_back(o.token);
      if (o.has_logprob) {
        lps_[d] = o.logprob.logprob;
        for (size_t k = 0; k < o.logprob.top.size(); ++k) {
          top_ids_[d * max_top + k] = o.logprob.top[k].first;
          top_lps_[d * max_top + k] = o.logprob.top[k].second;
        }
      }
    });
    return {ids_, lps_, top_ids_, top_lps_, max_top};
  }
  std::span<const float> execute_logits(const sched::StepPlan& plan,
                                        const std::vector<engine::SampleSpec>& specs) {
    PIE_CHECK(static_cast<int>(specs.size()) == plan.num_sampled_tokens(), "specs ", specs.size(), " for ",
              plan.num_sampled_tokens(), " draws");
    if (rank_ != 0) return {};
    ++g_calls.host_steps;
    device_draws(plan, specs);  // the device sampler runs on this path too
    logits_.clear();
    for_each_draw(plan, [&](int row, size_t) {
      for (int v = 0; v < kVocab; ++v) logits_.push_back(fake_logit(plan.token_ids[row], plan.positions[row], v));
    });
    return logits_;
  }

 private:
  /// The fake device sampler: greedy → argmax, temperature > 0 → fake_argmin.
  void device_draws(const sched::StepPlan& plan, const std::vector<engine::SampleSpec>& specs) {
    ids_.clear();
    for_each_draw(plan, [&](int row, size_t d) {
      ids_.push_back(specs[d].temperature == 0.f ? fake_argmax(plan.token_ids[row], plan.positions[row], kVocab)
                                                 : fake_argmin(plan.token_ids[row], plan.positions[row], kVocab));
    });
  }
  model::ModelConfig cfg_;
  model::GenerationConfig gen_;
  int blocks_ = 0;
  int rank_ = 0;
  std::vector<int32_t> ids_, top_ids_;
  std::vector<float> logits_, lps_, top_lps_;
};
template <class Policy>
struct RunnerOf<FakeModel, Policy, backend::Cpu> {
  using type = FakeRunner;
};
}  // namespace pie

namespace {
using namespace pie;
using FakeEngine = Engine<FakeModel, CpuF32>;
constexpr int kVocab = FakeRunner::kVocab;

static_assert(FakeEngine::Runner::kSamplesOnDevice && FakeEngine::Runner::kLogitsPerDraw);
static_assert(!Engine<Qwen3, CpuF32>::Runner::kSamplesOnDevice && !Engine<Qwen3, CpuF32>::Runner::kLogitsPerDraw);

EngineOptions options() {
  EngineOptions o;
  o.num_kv_blocks = 64;
  o.sched.max_model_len = 128;
  return o;
}

using test::greedy;

std::map<std::pair<uint64_t, int>, std::vector<int32_t>> run_to_end(FakeEngine& e);

std::vector<int32_t> expected(const std::vector<int32_t>& prompt, int n) {
  std::vector<int32_t> out;
  int32_t last = prompt.back(), pos = static_cast<int32_t>(prompt.size()) - 1;
  for (int i = 0; i < n; ++i) {
    last = fake_argmax(last, pos++, kVocab);
    out.push_back(last);
  }
  return out;
}

const std::vector<std::vector<int32_t>> kPrompts = {{5, 17, 3, 40}, {90, 1}, {7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 2}};

TEST(DeviceSampling, GreedyTakesTheDevicePathAndGivesTheKnownTokens) {
  g_calls = {};
  FakeEngine e(options());
  auto res = e.generate(kPrompts, greedy(12));
  ASSERT_EQ(res.size(), kPrompts.size());
  for (size_t i = 0; i < kPrompts.size(); ++i) EXPECT_EQ(res[i].tokens[0], expected(kPrompts[i], 12)) << "prompt " << i;
  EXPECT_GT(g_calls.device_steps, 0);
  EXPECT_EQ(g_calls.host_steps, 0);
}

TEST(DeviceSampling, AsyncSchedulingOnARunnerWithoutLaunchIsRejectedByName) {
  EngineOptions o = options();
  o.sched.async_scheduling = true;
  try {
    FakeEngine e(o);
    ADD_FAILURE() << "no error";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("--async-scheduling"), std::string::npos) << err.what();
  }
}

TEST(DeviceSampling, SpecsCarryOneEntryPerDrawWithStepAndIndex) {
  g_calls = {};
  FakeEngine e(options());
  auto p = greedy(4);
  p.n = 3;
  auto res = e.generate({kPrompts[0]}, p);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(res[0].tokens[k], expected(kPrompts[0], 4)) << "draw " << k;
  // The last step decodes the 3 sequences, each with 3 tokens generated before it.
  ASSERT_EQ(g_calls.last_specs.size(), 3u);
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(g_calls.last_specs[k].seq_index, k);
    EXPECT_EQ(g_calls.last_specs[k].step, 3);
  }
}

TEST(DeviceSampling, LogprobsTakeTheFullDeviceSamplerAndComeBackWithTheIds) {
  g_calls = {};
  FakeEngine e(options());
  auto with_lp = greedy(10);
  with_lp.logprobs = 2;
  const uint64_t a = e.add_request(kPrompts[0], with_lp);
  const uint64_t b = e.add_request(kPrompts[1], greedy(10));  // shares every step with `a`
  std::vector<int32_t> ta, tb;
  size_t lps = 0;
  while (e.has_unfinished()) {
    for (auto& ro : e.step()) {
      for (auto& so : ro.seqs) {
        auto& t = ro.request_id == a ? ta : tb;
        if (ro.request_id == a) {
          ASSERT_EQ(so.logprobs.size(), so.new_tokens.size());
          for (size_t i = 0; i < so.new_tokens.size(); ++i) {
            EXPECT_EQ(so.logprobs[i].token, so.new_tokens[i]);
            ASSERT_EQ(so.logprobs[i].top.size(), 2u);
            EXPECT_EQ(so.logprobs[i].top[0].first, so.new_tokens[i]);  // greedy: the top-1
          }
          lps += so.logprobs.size();
        } else {
          EXPECT_TRUE(so.logprobs.empty());
        }
        t.insert(t.end(), so.new_tokens.begin(), so.new_tokens.end());
      }
    }
  }
  (void)b;
  EXPECT_EQ(ta, expected(kPrompts[0], 10));
  EXPECT_EQ(tb, expected(kPrompts[1], 10));
  EXPECT_EQ(lps, 10u);
  EXPECT_EQ(g_calls.device_steps, 0);
  EXPECT_EQ(g_calls.host_steps, 0);
  EXPECT_GT(g_calls.full_steps, 0);
}

// logit_bias and penalties reach the full device sampler through the per-draw inputs: its
// tokens are the host Sampler's over the same logits, step by step, and differ from plain
// greedy; nothing copies logits back.
TEST(DeviceSampling, BiasAndPenaltiesReachTheFullDeviceSampler) {
  auto host_tokens = [](const std::vector<int32_t>& prompt, const sched::SamplingParams& p, int n) {
    std::vector<int32_t> output;
    int32_t last = prompt.back(), pos = static_cast<int32_t>(prompt.size()) - 1;
    for (int i = 0; i < n; ++i) {
      std::vector<float> l(kVocab);
      for (int v = 0; v < kVocab; ++v) l[v] = fake_logit(last, pos, v);
      SamplerInput in;
      in.params = &p;
      in.prompt = prompt;
      in.output = output;
      last = Sampler::sample(l, in).token;
      output.push_back(last);
      ++pos;
    }
    return output;
  };
  g_calls = {};
  FakeEngine e(options());
  auto biased = greedy(6);
  biased.logit_bias = {{42, 60.f}, {7, -100.f}};
  auto penalised = greedy(6);
  penalised.repetition_penalty = 0.5f;  // < 1 and negative frequency: seen tokens gain, so they win
  penalised.frequency_penalty = -1.f;
  penalised.presence_penalty = 0.25f;
  const uint64_t a = e.add_request(kPrompts[0], biased);
  const uint64_t b = e.add_request(kPrompts[2], penalised);
  auto out = run_to_end(e);
  const auto want_a = host_tokens(kPrompts[0], biased, 6), want_b = host_tokens(kPrompts[2], penalised, 6);
  EXPECT_EQ((out[{a, 0}]), want_a);
  EXPECT_EQ((out[{b, 0}]), want_b);
  EXPECT_NE(want_a, expected(kPrompts[0], 6)) << "the bias changed nothing: a weak test";
  EXPECT_NE(want_b, expected(kPrompts[2], 6)) << "the penalties changed nothing: a weak test";
  EXPECT_GT(g_calls.full_steps, 0);
  EXPECT_EQ(g_calls.host_steps, 0);
  EXPECT_EQ(g_calls.device_steps, 0);
}
}  // namespace

namespace {

/// Allows one token per step: (base + 3·seq_index + tokens generated) mod vocab. A grammar's
/// mask in miniature: whatever the model prefers, the output is fixed.
class ForceSequence final : public sched::LogitsProcessor {
 public:
  explicit ForceSequence(int32_t base) : base_(base) {}
  static int32_t want(int32_t base, int seq, size_t step) {
    return static_cast<int32_t>((base + 3 * seq + static_cast<int32_t>(step)) % kVocab);
  }
  void process(int seq_index, std::span<const int32_t>, std::span<const int32_t> output,
               std::span<float> logits) override {
    ++calls;
    const int32_t keep = want(base_, seq_index, output.size());
    for (size_t v = 0; v < logits.size(); ++v)
      if (static_cast<int32_t>(v) != keep) logits[v] = -INFINITY;
  }
  int calls = 0;

 private:
  int32_t base_;
};

// A request with a logits processor sends its steps through the host sampler, where the
// processor edits every draw's row (n = 2: each sequence its own mask), greedy and random
// alike; a request beside it without one is unaffected.
/// Steps `e` until nothing is left; every sequence's tokens, keyed by (request id, index).
std::map<std::pair<uint64_t, int>, std::vector<int32_t>> run_to_end(FakeEngine& e) {
  std::map<std::pair<uint64_t, int>, std::vector<int32_t>> out;
  while (e.has_unfinished())
    for (auto& ro : e.step())
      for (auto& so : ro.seqs) {
        auto& t = out[{ro.request_id, so.index}];
        t.insert(t.end(), so.new_tokens.begin(), so.new_tokens.end());
      }
  return out;
}

/// ForceSequence(base)'s first `n` tokens for sequence `k`.
std::vector<int32_t> forced(int32_t base, int k, size_t n) {
  std::vector<int32_t> want;
  for (size_t s = 0; s < n; ++s) want.push_back(ForceSequence::want(base, k, s));
  return want;
}

TEST(LogitsProcessor, MasksEveryDrawOnTheHostPathGreedyAndSampledNTwo) {
  g_calls = {};
  FakeEngine e(options());
  auto masked = greedy(9);
  auto proc = std::make_shared<ForceSequence>(11);
  masked.logits_processor = proc;
  masked.n = 2;
  masked.temperature = 0.8f;  // random sampling over a one-token support is still that token
  masked.seed = 3;
  const uint64_t a = e.add_request(kPrompts[0], masked);
  const uint64_t b = e.add_request(kPrompts[1], greedy(9));
  auto out = run_to_end(e);
  for (int k = 0; k < 2; ++k) EXPECT_EQ((out[{a, k}]), forced(11, k, 9)) << "sequence " << k;
  EXPECT_EQ((out[{b, 0}]), expected(kPrompts[1], 9));
  EXPECT_EQ(proc->calls, 2 * 9);  // once per draw: 2 sequences × 9 tokens
  EXPECT_GT(g_calls.host_steps, 0);
  EXPECT_EQ(g_calls.device_steps, 0);
}

/// The same forced sequence as a token mask (a grammar's kind of processor): the engine keeps
/// such draws on the device path, filling the masks for the runner to apply.
class ForceMask final : public sched::TokenMaskProcessor {
 public:
  explicit ForceMask(int32_t base) : base_(base) {}
  bool fill_mask(int seq_index, std::span<const int32_t>, std::span<const int32_t> output,
                 std::span<int32_t> mask) override {
    std::fill(mask.begin(), mask.end(), 0);
    const int32_t keep = ForceSequence::want(base_, seq_index, output.size());
    mask[keep / 32] = static_cast<int32_t>(1u << (keep % 32));
    ++calls;
    return true;
  }
  int calls = 0;

 private:
  int32_t base_;
};

// Token-masked draws take the runner's masked device step (rank 0 fills and applies the masks)
// on one rank and under tensor parallelism alike; nothing goes through host logits, and a
// request beside them is unaffected.
TEST(DeviceSampling, TokenMasksStayOnTheDeviceOnOneRankAndUnderTensorParallel) {
  for (int tp : {1, 2}) {
    g_calls = {};
    FakeEngine e(options(), tp > 1 ? parallel::cpu_group(tp) : engine::RankGroup{});
    auto masked = greedy(9);
    auto proc = std::make_shared<ForceMask>(11);
    masked.logits_processor = proc;
    masked.n = 2;
    const uint64_t a = e.add_request(kPrompts[0], masked);
    const uint64_t b = e.add_request(kPrompts[1], greedy(9));
    auto out = run_to_end(e);
    for (int k = 0; k < 2; ++k) EXPECT_EQ((out[{a, k}]), forced(11, k, 9)) << "tp " << tp << " sequence " << k;
    EXPECT_EQ((out[{b, 0}]), expected(kPrompts[1], 9)) << "tp " << tp;
    EXPECT_EQ(proc->calls, 2 * 9) << "tp " << tp;
    EXPECT_GT(g_calls.masked_steps, 0) << "tp " << tp;
    EXPECT_EQ(g_calls.host_steps, 0) << "tp " << tp;
  }
}

/// `n` tokens of the fake device sampler's temperature > 0 draw (fake_argmin) after `prompt`.
std::vector<int32_t> expected_device_random(const std::vector<int32_t>& prompt, int n) {
  std::vector<int32_t> out;
  int32_t last = prompt.back(), pos = static_cast<int32_t>(prompt.size()) - 1;
  for (int i = 0; i < n; ++i) {
    last = fake_argmin(last, pos++, kVocab);
    out.push_back(last);
  }
  return out;
}

// A step that a logits-processor request sends to the host sampler keeps the device sampler's
// draw for the requests that need nothing of the host: a seeded random request gets the same
// tokens beside it as alone (the device and host samplers map a uniform to different tokens).
TEST(DeviceSampling, ARequestThatNeedsNoHostKeepsItsDeviceDrawInAHostStep) {
  auto random = greedy(10);
  random.temperature = 0.8f;
  random.seed = 7;
  const std::vector<int32_t> want = expected_device_random(kPrompts[1], 10);
  ASSERT_NE(want, expected(kPrompts[1], 10));
  {
    g_calls = {};
    FakeEngine e(options());
    auto out = e.generate({kPrompts[1]}, random);
    EXPECT_EQ(out[0].tokens[0], want) << "alone";
    EXPECT_GT(g_calls.device_steps, 0);
    EXPECT_EQ(g_calls.host_steps, 0);
  }
  g_calls = {};
  FakeEngine e(options());
  auto processed = greedy(10);
  processed.logits_processor = std::make_shared<ForceSequence>(11);
  const uint64_t a = e.add_request(kPrompts[0], processed);
  const uint64_t b = e.add_request(kPrompts[1], random);  // shares every step with `a`
  auto out = run_to_end(e);
  EXPECT_EQ((out[{a, 0}]), forced(11, 0, 10));
  EXPECT_EQ((out[{b, 0}]), want) << "beside a logits-processor request (the host sampler drew it)";
  EXPECT_EQ(g_calls.device_steps, 0);
  EXPECT_GT(g_calls.host_steps, 0);
}

}  // namespace
