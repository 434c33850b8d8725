// The engine under tensor parallelism on the CPU: N CpuRunner threads + the CPU communicator
// under the one Engine loop (a RankGroup from parallel::cpu_group).
// Greedy streams at TP = 2 and 4 against the single-rank pie::Engine on every fixture of
// tests/reference/fixtures (a batch of several prompts; chunked prefill of 7 tokens; forced
// preemption, recompute and swap), KV blocks = the smallest rank's capacity in its own layout,
// and a failing rank (at load, mid-step) surfacing as pie::Error instead of a hang.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "pie/engine/engine.hpp"
#include "pie/parallel/cpu_group.hpp"

namespace {
namespace fs = std::filesystem;
using namespace pie;
using parallel::cpu_group;
/// The engine of every fixture's architecture (the family's forward, whichever it is).
using CpuEngine = Engine<model::AnyDecoder, CpuF32>;

std::string fixture_dir(const std::string& name) {
  return (fs::path(PIE_SOURCE_DIR) / "tests/reference/fixtures" / name).string();
}

sched::SamplingParams greedy(int max_tokens) {
  sched::SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  return p;
}

// The fixture's three prompts (transformers' greedy path is in reference.json) and five random
// ones of 3..40 tokens: eight sequences that share steps.
std::vector<std::vector<int32_t>> prompts_of(const std::string& name) {
  std::ifstream f(fs::path(fixture_dir(name)) / "reference.json");
  auto ref = nlohmann::json::parse(f);
  std::vector<std::vector<int32_t>> v;
  for (auto& p : ref["prompts"]) v.push_back(p["prompt_ids"].get<std::vector<int32_t>>());
  std::mt19937 g(5);
  std::uniform_int_distribution<int32_t> tok(0, ref["vocab_size"].get<int>() - 1);
  std::uniform_int_distribution<int> len(3, 40);
  for (int i = 0; i < 5; ++i) {
    std::vector<int32_t> p(len(g));
    for (auto& t : p) t = tok(g);
    v.push_back(p);
  }
  return v;
}

EngineOptions base_options(const std::string& name) {
  EngineOptions o;
  o.model_dir = fixture_dir(name);
  o.num_kv_blocks = 64;
  o.sched.max_model_len = 128;
  o.num_threads = 1;  // ranks are threads already; CI shares 2 cores
  return o;
}

enum class Mode { Batch, Chunked7, PreemptRecompute, PreemptSwap };

EngineOptions options_for(const std::string& name, Mode m) {
  EngineOptions o = base_options(name);
  if (m == Mode::Chunked7) {
    o.sched.enable_chunked_prefill = true;
    o.sched.max_num_batched_tokens = 7;
    o.sched.max_num_seqs = 7;
  }
  if (m == Mode::PreemptRecompute || m == Mode::PreemptSwap) {
    o.num_kv_blocks = 10;  // 160 slots for 8 sequences of up to 72 tokens
    o.sched.preemption_mode = m == Mode::PreemptSwap ? sched::PreemptionMode::Swap : sched::PreemptionMode::Recompute;
    if (m == Mode::PreemptSwap) o.num_host_blocks = 48;
  }
  return o;
}

constexpr int kNew = 32;

using Streams = std::vector<std::vector<int32_t>>;
template <class E>
Streams streams(E& e, const std::vector<std::vector<int32_t>>& prompts) {
  Streams s;
  for (auto& r : e.generate(prompts, greedy(kNew))) s.push_back(r.tokens[0]);
  return s;
}

struct Case { std::string fixture; int tp; };
void PrintTo(const Case& c, std::ostream* os) { *os << c.fixture << " TP=" << c.tp; }

class TpEngineFixture : public ::testing::TestWithParam<Case> {};

TEST_P(TpEngineFixture, StreamsEqualSingleRankEngine) {
  const auto [name, tp] = GetParam();
  const auto prompts = prompts_of(name);
  for (Mode m : {Mode::Batch, Mode::Chunked7, Mode::PreemptRecompute, Mode::PreemptSwap}) {
    SCOPED_TRACE("mode " + std::to_string(static_cast<int>(m)));
    const EngineOptions o = options_for(name, m);
    CpuEngine single(o);
    const Streams want = streams(single, prompts);
    CpuEngine te(o, cpu_group(tp));
    ASSERT_EQ(te.num_ranks(), tp);
    const Streams got = streams(te, prompts);
    ASSERT_EQ(got.size(), prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_EQ(got[i].size(), size_t(kNew)) << "prompt " << i;
      EXPECT_EQ(got[i], want[i]) << "prompt " << i;
    }
    if (m == Mode::PreemptRecompute || m == Mode::PreemptSwap) {
      EXPECT_GT(te.stats().num_preemptions, 0u);
      EXPECT_EQ(te.stats().num_preemptions, single.stats().num_preemptions);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TpEngineFixture,
                         ::testing::Values(Case{"llama_rope_llama3", 2}, Case{"llama_rope_llama3", 4},
                                           Case{"qwen2_bias", 2}, Case{"qwen2_bias", 4},
                                           Case{"qwen3_gqa4_sharded", 2}, Case{"qwen3_gqa4_sharded", 4},
                                           Case{"qwen3_tied", 2}, Case{"qwen3_tied", 4}),
                         [](const auto& i) { return i.param.fixture + "_Tp" + std::to_string(i.param.tp); });

// Transformers' greedy path too (the single-rank engine matches it in tests/engine; TP must not
// break that): the fixture prompts alone at TP = 2.
TEST(TpEngine, Tp2QwenGqa4MatchesTransformersGreedy) {
  const std::string name = "qwen3_gqa4_sharded";
  std::ifstream f(fs::path(fixture_dir(name)) / "reference.json");
  auto ref = nlohmann::json::parse(f);
  EngineOptions o = base_options(name);
  CpuEngine te(o, cpu_group(2));
  for (auto& p : ref["prompts"]) {
    auto want = p["greedy_ids"].get<std::vector<int32_t>>();
    auto got = te.generate({p["prompt_ids"].get<std::vector<int32_t>>()}, greedy(static_cast<int>(want.size())));
    EXPECT_EQ(got[0].tokens[0], want);
  }
}

// Random sampling with n = 2 (one prefill forked into two sequences, seeded and unseeded
// requests): TpEngine draws with pie::Engine's seeds, so the streams are equal too. Run once over
// CpuRunner (one logits row per sampled sequence) and once over a rank that returns one row per
// draw (kLogitsPerDraw, the GPU rank's layout), which exercises the engine's per-draw indexing.
using CpuRank = engine::cpu::CpuRunner<model::AnyDecoder, CpuF32>;
struct PerDrawModel : model::AnyDecoder {};

/// A CpuRank returning one logits row per draw: row j repeated sample_counts[j] times.
class PerDrawRank {
 public:
  static constexpr bool kLogitsPerDraw = true;
  static constexpr bool kSamplesOnDevice = false;
  PerDrawRank(const EngineOptions& o, engine::RankSpec s, size_t b) : r_(o, s, b) {}
  const model::ModelConfig& global_config() const { return r_.global_config(); }
  const model::GenerationConfig& generation_config() const { return r_.generation_config(); }
  int max_kv_blocks() const { return r_.max_kv_blocks(); }
  int wanted_host_blocks(const EngineOptions& o) const { return r_.wanted_host_blocks(o); }
  void allocate_kv(int b, int h) { r_.allocate_kv(b, h); }
  int num_blocks() const { return r_.num_blocks(); }
  std::span<const float> execute(const sched::StepPlan& p) {
    std::span<const float> l = r_.execute(p);
    const size_t V = static_cast<size_t>(r_.global_config().vocab_size);
    rows_.clear();
    for (size_t j = 0; j < p.logits_rows.size(); ++j)
      for (int k = 0; k < p.draws_of(j); ++k)
        rows_.insert(rows_.end(), l.begin() + j * V, l.begin() + (j + 1) * V);
    return rows_;
  }

 private:
  CpuRank r_;
  std::vector<float> rows_;
};

/// Rank `kBad` throws at step `kAt` (the others then sit in the first all-reduce of that step);
/// kAt < 0: rank kBad throws while loading.
template <int kBad, int kAt>
struct FailingModel : model::AnyDecoder {};

template <int kBad, int kAt>
class FailingRank {
 public:
  static constexpr bool kLogitsPerDraw = false;
  static constexpr bool kSamplesOnDevice = false;
  FailingRank(const EngineOptions& o, engine::RankSpec s, size_t b) : r_(checked(o, s), s, b), fail_(s.rank == kBad) {}
  const model::ModelConfig& global_config() const { return r_.global_config(); }
  const model::GenerationConfig& generation_config() const { return r_.generation_config(); }
  int max_kv_blocks() const { return r_.max_kv_blocks(); }
  int wanted_host_blocks(const EngineOptions& o) const { return r_.wanted_host_blocks(o); }
  void allocate_kv(int b, int h) { r_.allocate_kv(b, h); }
  int num_blocks() const { return r_.num_blocks(); }
  std::span<const float> execute(const sched::StepPlan& p) {
    PIE_CHECK(!(fail_ && step_++ == kAt), "injected failure at step ", kAt);
    return r_.execute(p);
  }

 private:
  static const EngineOptions& checked(const EngineOptions& o, engine::RankSpec s) {
    PIE_CHECK(!(kAt < 0 && s.rank == kBad), "cannot load shard");
    return o;
  }
  CpuRank r_;
  bool fail_;
  int step_ = 0;
};

}  // namespace

namespace pie {
template <class Policy>
struct RunnerOf<PerDrawModel, Policy, backend::Cpu> {
  using type = PerDrawRank;
};
template <int kBad, int kAt, class Policy>
struct RunnerOf<FailingModel<kBad, kAt>, Policy, backend::Cpu> {
  using type = FailingRank<kBad, kAt>;
};
}  // namespace pie

namespace {

template <class E>
std::vector<std::vector<std::vector<int32_t>>> sampled(E& e, const std::vector<std::vector<int32_t>>& prompts) {
  sched::SamplingParams seeded;
  seeded.temperature = 0.9f;
  seeded.top_p = 0.95f;
  seeded.n = 2;
  seeded.max_tokens = 16;
  seeded.ignore_eos = true;
  seeded.seed = 1234;
  sched::SamplingParams unseeded = seeded;
  unseeded.seed.reset();
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < prompts.size(); ++i) ids.push_back(e.add_request(prompts[i], i % 2 ? seeded : unseeded));
  std::vector<std::vector<std::vector<int32_t>>> out(prompts.size(), std::vector<std::vector<int32_t>>(2));
  while (e.has_unfinished())
    for (auto& ro : e.step())
      for (auto& so : ro.seqs) {
        auto& t = out[ro.request_id - ids[0]][so.index];
        t.insert(t.end(), so.new_tokens.begin(), so.new_tokens.end());
      }
  return out;
}

TEST(TpEngine, SampledNTwoEqualsSingleRankEngineTp2RowPerSampleAndPerDraw) {
  const std::string name = "qwen3_gqa4_sharded";
  const auto prompts = prompts_of(name);
  EngineOptions o = base_options(name);
  o.seed = 7;
  CpuEngine single(o);
  const auto want = sampled(single, prompts);
  ASSERT_EQ(want[0][1].size(), 16u);
  EXPECT_NE(want[0][0], want[0][1]) << "the two draws of a request should differ at temperature 0.9";
  CpuEngine te(o, cpu_group(2));
  EXPECT_EQ(sampled(te, prompts), want);
  Engine<PerDrawModel, CpuF32> pe(o, cpu_group(2));
  EXPECT_EQ(sampled(pe, prompts), want);
}

// Per-rank KV accounting: a rank's block holds only its KV heads, and the group gets the
// smallest rank's count.
TEST(TpEngine, KvBlocksAreTheSmallestRanksCapacityInItsOwnLayout) {
  EngineOptions o = base_options("qwen3_tied");  // 2 KV heads: 1 per rank at TP = 2
  o.num_kv_blocks = 0;
  const size_t big = size_t{1} << 20, small = size_t{256} << 10;
  CpuEngine te(o, cpu_group(2, {big, small}));
  const auto& c = te.config();
  const kv::KVLayout rank_layout{c.num_hidden_layers, 1, c.head_dim, 16, DType::F32};
  const kv::KVLayout full_layout{c.num_hidden_layers, c.num_key_value_heads, c.head_dim, 16, DType::F32};
  const auto st = te.stats();
  ASSERT_EQ(st.rank_max_kv_blocks.size(), 2u);
  EXPECT_EQ(st.rank_max_kv_blocks[0], rank_layout.blocks_for_budget(big));
  EXPECT_EQ(st.rank_max_kv_blocks[1], rank_layout.blocks_for_budget(small));
  EXPECT_EQ(st.num_kv_blocks, st.rank_max_kv_blocks[1]);
  // Half the heads per rank: twice the blocks of the unsharded layout in the same bytes.
  EXPECT_EQ(st.rank_max_kv_blocks[1], 2 * full_layout.blocks_for_budget(small));
  EXPECT_EQ(te.runner(0).num_blocks(), st.num_kv_blocks);
  EXPECT_EQ(te.runner(1).num_blocks(), st.num_kv_blocks);
  EXPECT_EQ(te.scheduler().block_manager().device().num_blocks(), st.num_kv_blocks);
  // And it still generates.
  EXPECT_EQ(te.generate({{1, 2, 3}}, greedy(4))[0].tokens[0].size(), 4u);
}

// ---- failures ------------------------------------------------------------------------------------

/// Runs f on a thread; fails the test (and exits: a hung rank cannot be joined) after 30 s.
template <class F>
void within_30s(F f) {
  auto done = std::make_shared<std::promise<void>>();
  auto fut = done->get_future();
  std::thread([f, done] { f(); done->set_value(); }).detach();
  if (fut.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    ADD_FAILURE() << "tensor-parallel engine hung after a rank failure";
    std::_Exit(1);
  }
}

TEST(TpEngineFailure, RankThrowingMidStepSurfacesAsErrorTp4) {
  within_30s([] {
    EngineOptions o = base_options("qwen3_gqa4_sharded");
    Engine<FailingModel<2, 3>, CpuF32> te(o, cpu_group(4));
    std::string msg;
    try {
      te.generate({{1, 2, 3, 4}, {5, 6}}, greedy(8));
    } catch (const Error& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find("rank 2: "), std::string::npos) << msg;
    EXPECT_NE(msg.find("injected failure at step 3"), std::string::npos) << msg;
    // The engine refuses to continue with ranks in unknown states.
    EXPECT_THROW(te.step(), Error);
  });
}

TEST(TpEngineFailure, RankFailingToLoadFailsConstructionTp2) {
  within_30s([] {
    EngineOptions o = base_options("qwen3_tied");
    try {
      Engine<FailingModel<1, -1>, CpuF32> te(o, cpu_group(2));
      ADD_FAILURE() << "construction succeeded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1: "), std::string::npos) << e.what();
    }
  });
}

TEST(TpEngineFailure, TpSizeNotDividingHeadsNamesTheDimension) {
  EngineOptions o = base_options("qwen3_tied");  // 4 query heads
  try {
    CpuEngine te(o, cpu_group(3));
    ADD_FAILURE() << "TP = 3 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_attention_heads"), std::string::npos) << e.what();
  }
}

}  // namespace
