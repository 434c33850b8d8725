// TpEngine over CudaTpRank on the GPU (label cuda): TP = 2 vs TP = 1 greedy on a small random
// Qwen3 in bf16 (issue 8's criterion: ≥ 99% of tokens agree over 32 steps), decode CUDA graphs
// (with their NCCL collectives) against eager execution at TP = 2.
// Skips with a message when fewer than two GPUs are visible. NCCL_NVLS_ENABLE=0 is forced by
// NcclCommunicator before every init.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "pie/model/dummy.hpp"
#include "pie/model/embedded.hpp"
#include "pie/parallel/cuda_tp_world.cuh"
#include "pie/parallel/tp_engine.hpp"

namespace {
using namespace pie;
using Rank = parallel::CudaTpRank<bf16>;
using GpuTpEngine = parallel::TpEngine<Rank>;

int visible_gpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

#define SKIP_UNLESS_TWO_GPUS()                                                                          \
  if (visible_gpus() < 2)                                                                               \
  GTEST_SKIP() << "tensor-parallel GPU test needs 2 GPUs, " << visible_gpus()                           \
               << " visible (not run: TP=2 vs TP=1 agreement on the GPU engine)"

// Qwen3-shaped (GQA group 4, q/k norms, head_dim 128 as Qwen3-8B), small, vocab odd so the last
// vocab slice at TP = 2 is padded; untied lm_head so both vocab-parallel tensors are exercised.
std::shared_ptr<const model::Weights<bf16>> random_model() {
  model::ModelConfig c = model::embedded_config();
  c.hidden_size = 256;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 128;
  c.intermediate_size = 512;
  c.num_hidden_layers = 3;
  c.vocab_size = 1001;
  c.tie_word_embeddings = false;
  return std::make_shared<const model::Weights<bf16>>(model::dummy_weights<bf16>(c, 17));
}

EngineOptions engine_options() {
  EngineOptions o;
  o.sched.max_num_seqs = 16;
  o.sched.max_num_batched_tokens = 512;
  o.sched.max_model_len = 256;
  o.num_kv_blocks = 128;
  return o;
}

std::vector<std::vector<int32_t>> prompts() {
  return {{1, 2, 3}, {100, 7, 300, 42, 9, 11, 500, 17, 23}, {5}, {900, 901, 902, 903, 904, 905, 906, 907, 908, 909, 910,
                                                                    911, 912, 913, 914, 915, 916, 917, 1000}};
}

std::vector<std::vector<int32_t>> run(int tp, bool eager, int* graphs = nullptr) {
  static auto model = random_model();
  EngineOptions o = engine_options();
  o.enforce_eager = eager;
  parallel::CudaTpOptions copt = parallel::cuda_tp_options(o);
  GpuTpEngine e(o, parallel::cuda_tp_world<bf16>(model, model::embedded_generation_config(), tp, copt));
  sched::SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 32;
  p.ignore_eos = true;
  std::vector<std::vector<int32_t>> out;
  for (auto& r : e.generate(prompts(), p)) out.push_back(r.tokens[0]);
  if (graphs) *graphs = e.rank(0).num_graphs();
  return out;
}

TEST(CudaTpEngine, Tp2GreedyAgreesWithTp1Bf16RandomQwen3) {
  SKIP_UNLESS_TWO_GPUS();
  const auto tp1 = run(1, false);
  int graphs = 0;
  const auto tp2 = run(2, false, &graphs);
  EXPECT_GT(graphs, 0) << "decode graphs were not captured";
  int same = 0, total = 0;
  for (size_t i = 0; i < tp1.size(); ++i)
    for (size_t t = 0; t < tp1[i].size(); ++t) { same += tp2[i].at(t) == tp1[i][t]; ++total; }
  std::printf("GPU TP=2 vs TP=1 greedy agreement (bf16): %d / %d\n", same, total);
  EXPECT_EQ(total, 4 * 32);
  EXPECT_GE(same * 100, total * 99);
}

TEST(CudaTpEngine, Tp2DecodeGraphsEqualEager) {
  SKIP_UNLESS_TWO_GPUS();
  EXPECT_EQ(run(2, false), run(2, true));
}

}  // namespace
