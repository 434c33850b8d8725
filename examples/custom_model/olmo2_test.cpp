// OLMo-2, the user-written model of olmo2.hpp, on the CPU against transformers: fp32 logits
// (teacher-forced along transformers' greedy path, the prompt as one prefill then one decode
// per step) within 1e-4 relative, and the engine's batched greedy continuation identical.
// The fixture is built by make_olmo2_fixture.py (transformers' Olmo2ForCausalLM, random weights).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <vector>

#include "olmo2.hpp"
#include "pie/engine/cpu/cpu_model.hpp"
#include "pie/engine/engine.hpp"
#include "plan_builder.hpp"

namespace {
using namespace pie;
using example::Olmo2;

const std::string kDir = std::string(PIE_SOURCE_DIR) + "/examples/custom_model/fixture/olmo2_tiny";

nlohmann::json reference() {
  std::ifstream f(kDir + "/reference.json");
  return nlohmann::json::parse(f);
}

TEST(Olmo2Cpu, Fp32LogitsMatchTransformersTeacherForced) {
  const auto ref = reference();
  const auto cfg = Olmo2::load_config(kDir);
  const auto w = Olmo2::load<float>(kDir, cfg, {});
  engine::cpu::CpuModel<Olmo2, float> m(w);
  const int bs = 16, vocab = cfg.vocab_size;
  double worst = 0;
  for (const auto& pr : ref["prompts"]) {
    auto prompt = pr["prompt_ids"].get<std::vector<int32_t>>();
    auto greedy = pr["greedy_ids"].get<std::vector<int32_t>>();
    auto rows = pr["logits"].get<std::vector<std::vector<float>>>();
    const int nb = static_cast<int>(prompt.size() + rows.size() + bs - 1) / bs;
    std::vector<std::vector<float>> layer(cfg.num_hidden_layers,
                                          std::vector<float>(size_t(nb + 1) * 2 * cfg.kv_size() * bs));
    std::vector<float*> pools;
    for (auto& l : layer) pools.push_back(l.data());
    std::vector<int32_t> blocks(nb);
    std::iota(blocks.rbegin(), blocks.rend(), 1);  // reversed ids: the block table is really used
    std::vector<float> logits(vocab);
    test::SeqWork s{blocks, 0, prompt};
    for (size_t step = 0; step < rows.size(); ++step) {
      m.forward(test::make_plan({s}, bs), pools, bs, logits.data());
      double num = 0, den = 0;
      for (int v = 0; v < vocab; ++v) {
        num = std::max(num, double(std::fabs(logits[v] - rows[step][v])));
        den = std::max(den, double(std::fabs(rows[step][v])));
      }
      worst = std::max(worst, num / den);
      s.cached += static_cast<int>(s.tokens.size());
      s.tokens = {greedy[step]};
    }
  }
  std::printf("[olmo2 cpu] max relative logits error vs transformers %.3g\n", worst);
  EXPECT_LE(worst, 1e-4);
}

TEST(Olmo2Cpu, EngineGreedyContinuationEqualsTransformersBatched) {
  const auto ref = reference();
  EngineOptions o;
  o.model_dir = kDir;
  o.num_kv_blocks = 64;
  o.sched.max_model_len = 512;
  o.sched.enable_chunked_prefill = true;
  o.sched.max_num_batched_tokens = 24;  // the 33-token prompt arrives in two chunks
  o.sched.max_num_seqs = 8;
  Engine<Olmo2, CpuF32> e(o);
  std::vector<std::vector<int32_t>> prompts, expect;
  for (const auto& pr : ref["prompts"]) {
    prompts.push_back(pr["prompt_ids"].get<std::vector<int32_t>>());
    expect.push_back(pr["greedy_ids"].get<std::vector<int32_t>>());
  }
  sched::SamplingParams p;
  p.temperature = 0;
  p.max_tokens = ref["new_tokens"].get<int>();
  p.ignore_eos = true;
  auto res = e.generate(prompts, p);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(res[i].tokens[0], expect[i]) << "prompt " << i;
  // Prefix caching: the first prompt again hits its cached blocks and continues the same way.
  auto again = e.generate({prompts[0]}, p);
  EXPECT_EQ(again[0].tokens[0], expect[0]);
}

TEST(Olmo2Cpu, RefusesAQwen3CheckpointAndTensorParallelism) {
  EngineOptions o;
  o.model_dir = std::string(PIE_SOURCE_DIR) + "/tests/reference/fixtures/qwen3_tied";
  o.num_kv_blocks = 16;
  EXPECT_THROW((Engine<Olmo2, CpuF32>(o)), pie::Error);
}

}  // namespace
