// prompt_logprobs on the GPU engine against the CPU engine (label cuda). The same
// transformers-built checkpoint (tests/gpu/make_hf_reference.py's qwen3_small_hd128, bf16
// weights; PIE_GPU_HF_DIR names its folder) runs on Engine<Qwen3, CpuF32> with
// prompt_logprobs = 20 and on Engine<Qwen3, CudaBf16> with prompt_logprobs = 5, both in chunks
// of 64 tokens so every prompt spans several prefill chunks and steps mix decodes with prompt
// rows. Per prompt token: the GPU's logprob within a bf16 tolerance of the CPU's; its top-5
// values, sorted, within the tolerance of the CPU's top-5; each GPU top-5 id among the CPU's
// top-20 with a CPU logprob within the tolerance (so ids may only swap inside near-ties); the
// rank within the near-tie band. Run with device sampling, with the host sampler (logprobs also
// asked: the step's logits come back first), with n = 2, and after a prefix-cache hit: as
// vLLM does (SamplingParams.skip_reading_prefix_cache defaults to prompt_logprobs being set),
// a prompt_logprobs request recomputes its prompt instead of reading the cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "pie/core/policy.hpp"
#include "pie/engine/cuda/cuda_runner.cuh"
#include "pie/engine/engine.hpp"

namespace pie {
namespace {

constexpr int kGpuTop = 5;

std::filesystem::path checkpoint() {
  const char* root = std::getenv("PIE_GPU_HF_DIR");
  if (root == nullptr) return {};
  auto dir = std::filesystem::path(root) / "qwen3_small_hd128";
  return std::filesystem::exists(dir / "reference.json") ? dir : std::filesystem::path{};
}

EngineOptions options(const std::filesystem::path& dir) {
  EngineOptions o;
  o.model_dir = dir.string();
  o.sched.max_num_seqs = 8;
  o.sched.max_num_batched_tokens = 64;  // every prompt over 64 tokens is chunked
  o.sched.max_model_len = 1024;
  o.num_kv_blocks = 256;
  o.swap_space_gib = 0.01;
  o.log = false;
  return o;
}

std::vector<std::vector<int32_t>> prompts(const std::filesystem::path& dir) {
  std::ifstream f(dir / "reference.json");
  const auto ref = nlohmann::json::parse(f);
  std::vector<std::vector<int32_t>> out;
  for (const auto& p : ref["prompts"]) out.push_back(p["prompt_ids"].get<std::vector<int32_t>>());
  return out;
}

/// \brief What one request returned: its prompt logprobs and prompt tokens read from the cache.
struct Got {
  std::vector<PromptLogprob> lps;
  int cached = -1;
};

/// Runs the prompts as concurrent requests with `p` to completion; one Got per prompt.
template <class E>
std::vector<Got> run(E& e, const std::vector<std::vector<int32_t>>& ps, const sched::SamplingParams& p) {
  std::map<uint64_t, size_t> slot;
  for (size_t i = 0; i < ps.size(); ++i) slot[e.add_request(ps[i], p)] = i;
  std::vector<Got> got(ps.size());
  while (e.has_unfinished())
    for (auto& ro : e.step()) {
      auto it = slot.find(ro.request_id);
      if (it == slot.end()) continue;
      Got& g = got[it->second];
      if (!ro.prompt_logprobs.empty()) {
        EXPECT_TRUE(g.lps.empty()) << "prompt logprobs in two outputs of one request";
        g.lps = ro.prompt_logprobs;
        g.cached = ro.cached_prompt_tokens;
      }
    }
  return got;
}

sched::SamplingParams params(int k) {
  sched::SamplingParams p;
  p.temperature = 0.f;
  p.max_tokens = 3;
  p.ignore_eos = true;
  p.prompt_logprobs = k;
  return p;
}

/// bf16 tolerance of one logprob: the CUDA runner's logits are within ~1e-2 relative of the
/// CPU's (tests/gpu/test_runner.cu), a few hundredths of a nat on these O(1) logits.
double tol(double v) { return 0.1 + 0.01 * std::fabs(v); }

/// \brief Worst differences seen, for the printed summary.
struct Stats {
  double worst_lp = 0, worst_top = 0;
  int rows = 0, id_swaps = 0, rank_diffs = 0;
};

/// The checks of the file comment for one prompt.
void compare(const std::vector<int32_t>& prompt, const Got& gpu, const Got& cpu, Stats& st, const char* what) {
  ASSERT_EQ(gpu.lps.size(), prompt.size() - 1) << what;
  ASSERT_EQ(cpu.lps.size(), prompt.size() - 1) << what;
  for (size_t i = 0; i < gpu.lps.size(); ++i) {
    const PromptLogprob &g = gpu.lps[i], &c = cpu.lps[i];
    ++st.rows;
    ASSERT_EQ(g.token, prompt[i + 1]) << what << " position " << i + 1;
    ASSERT_EQ(c.token, prompt[i + 1]) << what << " position " << i + 1;
    const double d = std::fabs(g.logprob - c.logprob);
    st.worst_lp = std::max(st.worst_lp, d);
    EXPECT_LE(d, tol(c.logprob)) << what << " position " << i + 1 << ": gpu " << g.logprob << " cpu " << c.logprob;
    ASSERT_EQ(g.top.size(), static_cast<size_t>(kGpuTop)) << what;
    ASSERT_EQ(c.top.size(), static_cast<size_t>(sched::kMaxLogprobs)) << what;
    for (int j = 0; j < kGpuTop; ++j) {
      const double dv = std::fabs(g.top[j].second - c.top[j].second);
      st.worst_top = std::max(st.worst_top, dv);
      EXPECT_LE(dv, tol(c.top[j].second)) << what << " position " << i + 1 << " top " << j;
      if (g.top[j].first != c.top[j].first) ++st.id_swaps;
      auto it = std::find_if(c.top.begin(), c.top.end(), [&](auto& e) { return e.first == g.top[j].first; });
      ASSERT_NE(it, c.top.end()) << what << " position " << i + 1 << ": gpu top id " << g.top[j].first
                                 << " is not in the cpu's top 20";
      EXPECT_LE(std::fabs(it->second - g.top[j].second), tol(it->second))
          << what << " position " << i + 1 << ": id " << g.top[j].first << " swapped with a token that is no near-tie";
    }
    // Rank: tokens whose CPU logprob is within the tolerance may order either way. Inside the
    // CPU's top 20 that band is counted; below it, where neighbours are a few hundredths of a
    // nat apart or less, 3 + 20% of the rank bounds it (a wrong row is off by far more).
    int band = 0;
    for (auto& [id, lp] : c.top) band += id != c.token && std::fabs(lp - c.logprob) <= 2 * tol(c.logprob);
    const int allowed = c.rank < sched::kMaxLogprobs ? band + (c.rank + 1 == sched::kMaxLogprobs) : 3 + c.rank / 5;
    if (g.rank != c.rank) ++st.rank_diffs;
    EXPECT_LE(std::abs(g.rank - c.rank), allowed) << what << " position " << i + 1 << ": gpu rank " << g.rank
                                                  << " cpu rank " << c.rank;
  }
}

TEST(GpuPromptLogprobs, MatchTheCpuEngineOverChunksSamplersAndACacheHit) {
  const auto dir = checkpoint();
  if (dir.empty()) GTEST_SKIP() << "PIE_GPU_HF_DIR/qwen3_small_hd128 (tests/gpu/make_hf_reference.py) not found";
  const auto ps = prompts(dir);
  ASSERT_GE(ps.size(), 2u);
  Engine<Qwen3, CpuF32> cpu(options(dir));
  Engine<Qwen3, CudaBf16> gpu(options(dir));
  const auto want = run(cpu, ps, params(sched::kMaxLogprobs));
  Stats st;

  // Device sampling: the draws stay on the device, the prompt rows are scored after them.
  const auto dev = run(gpu, ps, params(kGpuTop));
  for (size_t i = 0; i < ps.size(); ++i) compare(ps[i], dev[i], want[i], st, "device sampling");

  // The host sampler (logprobs asked): the draws' logits are copied back before the prompt
  // rows reuse the logits buffer.
  auto hp = params(kGpuTop);
  hp.logprobs = 2;
  const auto host = run(gpu, ps, hp);
  for (size_t i = 0; i < ps.size(); ++i) compare(ps[i], host[i], want[i], st, "host sampling");

  // n = 2: the last prompt chunk draws twice from one row; the prompt rows follow both draws.
  auto np = params(kGpuTop);
  np.n = 2;
  np.temperature = 1.f;
  np.seed = 7;
  const auto two = run(gpu, {ps.back()}, np);
  compare(ps.back(), two[0], want.back(), st, "n = 2");

  // A prefix-cache hit: the prompt is cached by a request without prompt_logprobs, then asked
  // again with them; it is recomputed (0 tokens from the cache) and every position is scored.
  auto plain = params(kGpuTop);
  plain.prompt_logprobs.reset();
  const auto warm = run(gpu, {ps.back()}, plain);
  EXPECT_TRUE(warm[0].lps.empty());
  const uint64_t hits = gpu.stats().prefix_cache_hits;
  const auto again = run(gpu, {ps.back()}, params(kGpuTop));
  EXPECT_EQ(again[0].cached, 0) << "a prompt_logprobs request read the prefix cache";
  EXPECT_EQ(gpu.stats().prefix_cache_hits, hits);
  compare(ps.back(), again[0], want.back(), st, "after a cache hit");
  // The same request without prompt_logprobs does read the cache (the check above can fail).
  run(gpu, {ps.back()}, plain);
  EXPECT_GT(gpu.stats().prefix_cache_hits, hits);

  const auto& rs = gpu.runner().stats();
  std::printf("[gpu prompt_logprobs] %d rows: worst |dlogprob| %.4f (token), %.4f (top-5 values); top-5 id swaps %d, "
              "rank differences %d; runner steps %lld (graph %lld, eager %lld)\n",
              st.rows, st.worst_lp, st.worst_top, st.id_swaps, st.rank_diffs, static_cast<long long>(rs.steps),
              static_cast<long long>(rs.graph_steps), static_cast<long long>(rs.eager_steps));
  EXPECT_GT(rs.graph_steps, 0) << "decode steps without prompt rows still replay graphs";
}

}  // namespace
}  // namespace pie
