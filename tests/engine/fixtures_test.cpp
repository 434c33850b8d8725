// pie's CPU engine in fp32 against HF transformers on every fixture of tests/reference/fixtures:
// logits of the prompt's last position and the next greedy steps (max |a−b| / max |b| ≤ 1e-4,
// transformers' own metric), and the 32-token greedy continuation, identical.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "pie/engine/engine.hpp"
#include "pie/registry/make_engine.hpp"
#include "pie/model/load.hpp"
#include "pie/engine/cpu/cpu_model.hpp"
#include "pie/model/qwen3.hpp"
#include "plan_builder.hpp"

namespace {
namespace fs = std::filesystem;
using namespace pie;

std::vector<std::string> fixture_names() {
  std::vector<std::string> v;
  fs::path root = fs::path(PIE_SOURCE_DIR) / "tests/reference/fixtures";
  if (fs::exists(root))
    for (auto& e : fs::directory_iterator(root))
      if (fs::exists(e.path() / "reference.json")) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}
std::string fixture_dir(const std::string& name) {
  return (fs::path(PIE_SOURCE_DIR) / "tests/reference/fixtures" / name).string();
}
nlohmann::json reference(const std::string& name) {
  std::ifstream f(fs::path(fixture_dir(name)) / "reference.json");
  return nlohmann::json::parse(f);
}

class HfFixture : public ::testing::TestWithParam<std::string> {};

// Max relative logits error of the CPU forward in storage type T (weights and KV) against
// transformers' fp32 logits, teacher-forced along transformers' greedy path.
template <class T>
double logits_error(const std::string& name, double tol) {
  auto ref = reference(name);
  auto loaded = model::load_model<T>(fixture_dir(name));
  const auto& cfg = loaded.weights.config;
  EXPECT_EQ(cfg.vocab_size, ref["vocab_size"].get<int>());
  engine::cpu::CpuModel<model::AnyDecoder, T, T> m(loaded.weights);
  const int bs = 16, vocab = cfg.vocab_size;
  double worst = 0;
  for (auto& pr : ref["prompts"]) {
    auto prompt = pr["prompt_ids"].get<std::vector<int32_t>>();
    auto greedy = pr["greedy_ids"].get<std::vector<int32_t>>();
    auto rows = pr["logits"].get<std::vector<std::vector<float>>>();
    const int total = static_cast<int>(prompt.size() + rows.size());
    const int nb = (total + bs - 1) / bs;
    std::vector<T> pool(size_t(nb + 1) * 2 * cfg.num_key_value_heads * bs * cfg.head_dim);
    std::vector<T*> pools;
    std::vector<std::vector<T>> layer(cfg.num_hidden_layers, pool);
    for (auto& l : layer) pools.push_back(l.data());
    std::vector<int32_t> blocks(nb);
    std::iota(blocks.rbegin(), blocks.rend(), 1);  // reversed ids: the table is really used
    std::vector<float> logits(vocab);
    // Prefill the prompt, then teacher-force transformers' greedy tokens one decode at a time.
    test::SeqWork w{blocks, 0, prompt};
    for (size_t step = 0; step < rows.size(); ++step) {
      m.forward(test::make_plan({w}, bs), pools, bs, logits.data());
      double num = 0, den = 0;
      for (int v = 0; v < vocab; ++v) {
        num = std::max(num, double(std::fabs(logits[v] - rows[step][v])));
        den = std::max(den, double(std::fabs(rows[step][v])));
      }
      worst = std::max(worst, num / den);
      EXPECT_LE(num / den, tol) << name << " prompt len " << prompt.size() << " step " << step;
      w.cached += static_cast<int>(w.tokens.size());
      w.tokens = {greedy[step]};
    }
  }
  std::printf("%s (%s): max relative logits error vs transformers %.3g\n", name.c_str(),
              std::string(DTypeTraits<T>::name).c_str(), worst);
  return worst;
}

TEST_P(HfFixture, Fp32LogitsMatchTransformers) { logits_error<float>(GetParam(), 1e-4); }

// bf16 storage rounds every weight and cached K/V (rel. 2^-9): the logits move by about 1e-2,
// far from fp32's 1e-6 and far below a broken path's O(1).
TEST_P(HfFixture, Bf16LogitsCloseToTransformers) {
  double err = logits_error<bf16>(GetParam(), 3e-2);
  EXPECT_GT(err, 1e-5);  // it really ran in bf16
}

TEST_P(HfFixture, GreedyContinuationIdentical) {
  auto ref = reference(GetParam());
  EngineOptions o;
  o.model_dir = fixture_dir(GetParam());
  o.num_kv_blocks = 64;
  o.sched.max_model_len = 512;
  // The registry picks the named model of the checkpoint's architecture (Qwen3, Qwen2, Llama).
  std::unique_ptr<AnyEngine> e = make_engine(o);
  std::vector<std::vector<int32_t>> prompts, expect;
  for (auto& pr : ref["prompts"]) {
    prompts.push_back(pr["prompt_ids"].get<std::vector<int32_t>>());
    expect.push_back(pr["greedy_ids"].get<std::vector<int32_t>>());
  }
  sched::SamplingParams p;
  p.temperature = 0;
  p.max_tokens = ref["new_tokens"].get<int>();
  p.ignore_eos = true;  // transformers' reference ran without stopping at EOS
  std::map<uint64_t, size_t> slot;
  for (size_t i = 0; i < prompts.size(); ++i) slot[e->add_request(prompts[i], p)] = i;  // all batched together
  std::vector<std::vector<int32_t>> got(prompts.size());
  std::vector<sched::FinishReason> finish(prompts.size(), sched::FinishReason::None);
  while (e->has_unfinished())
    for (auto& ro : e->step())
      for (auto& so : ro.seqs) {
        auto& t = got[slot.at(ro.request_id)];
        t.insert(t.end(), so.new_tokens.begin(), so.new_tokens.end());
        if (so.finish != sched::FinishReason::None) finish[slot.at(ro.request_id)] = so.finish;
      }
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(got[i], expect[i]) << GetParam() << " prompt " << i;
    EXPECT_EQ(finish[i], sched::FinishReason::Length);
  }
}

// A named model refuses another architecture's checkpoint, naming the model to use.
TEST(NamedModels, Qwen3EngineRefusesQwen2CheckpointAndNamesQwen2) {
  EngineOptions o;
  o.model_dir = fixture_dir("qwen2_bias");
  o.num_kv_blocks = 16;
  o.sched.max_model_len = 128;
  try {
    Engine<Qwen3, CpuF32> e(o);
    FAIL() << "Engine<Qwen3> accepted a Qwen2 checkpoint";
  } catch (const pie::Error& err) {
    EXPECT_NE(std::string(err.what()).find("use pie::Qwen2"), std::string::npos) << err.what();
  }
  Engine<Qwen2, CpuF32> ok(o);
  EXPECT_EQ(ok.config().architecture, model::Architecture::Qwen2);
  EXPECT_EQ(engine_model_name(o), "qwen2");
  o.model_dir = fixture_dir("llama_rope_llama3");
  EXPECT_EQ(engine_model_name(o), "llama");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfFixture, ::testing::ValuesIn(fixture_names()),
                         [](const auto& i) { return i.param; });

TEST(HfFixtures, AtLeastFourArePresent) { EXPECT_GE(fixture_names().size(), 4u); }

}  // namespace
