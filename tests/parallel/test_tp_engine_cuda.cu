// The engine under tensor parallelism on GPUs (label cuda): Engine over CudaRunner ranks of an
// NCCL group, TP = 2 vs TP = 1 greedy on a small random
// Qwen3 in bf16 (issue 8's criterion: ≥ 99% of tokens agree over 32 steps), decode CUDA graphs
// (with their NCCL collectives) against eager execution at TP = 2.
// Skips with a message when fewer than two GPUs are visible. NCCL_NVLS_ENABLE=0 is forced by
// NcclCommunicator before every init.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cstdio>
#include <memory>
#include <cmath>
#include <unordered_map>
#include <vector>

#include "pie/model/dummy.hpp"
#include "pie/model/embedded.hpp"
#include "pie/engine/cuda/cuda_runner.cuh"
#include "pie/engine/engine.hpp"
#include "pie/parallel/nccl_group.cuh"

namespace {
using namespace pie;
using GpuEngine = Engine<model::AnyDecoder, CudaBf16>;

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
  o.set_weights(model, model::embedded_generation_config());
  GpuEngine e(o, parallel::nccl_group(tp));
  sched::SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 32;
  p.ignore_eos = true;
  std::vector<std::vector<int32_t>> out;
  for (auto& r : e.generate(prompts(), p)) out.push_back(r.tokens[0]);
  if (graphs) *graphs = static_cast<int>(e.runner(0).graph_batch_sizes().size());
  return out;
}

/// Greedy continuation of each prompt with the top-2 logprobs of every step.
struct Scored {
  std::vector<int32_t> tokens;
  std::vector<float> gap;  ///< logprob(top 1) − logprob(top 2) at each step
};
std::vector<Scored> run_scored(int tp, const std::vector<std::vector<int32_t>>& ps, int max_tokens) {
  static auto model = random_model();
  EngineOptions o = engine_options();
  o.sched.max_num_seqs = 64;
  o.num_kv_blocks = 512;
  o.set_weights(model, model::embedded_generation_config());
  GpuEngine e(o, parallel::nccl_group(tp));
  sched::SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  p.logprobs = 2;  // the top two: the gap between them
  std::unordered_map<uint64_t, size_t> slot;
  for (size_t i = 0; i < ps.size(); ++i) slot[e.add_request(ps[i], p)] = i;
  std::vector<Scored> out(ps.size());
  while (e.has_unfinished())
    for (const RequestOutput& r : e.step())
      for (const SequenceOutput& so : r.seqs)
        for (size_t k = 0; k < so.new_tokens.size(); ++k) {
          Scored& sc = out[slot.at(r.request_id)];
          sc.tokens.push_back(so.new_tokens[k]);
          const auto& top = so.logprobs.at(k).top;
          sc.gap.push_back(top.size() >= 2 ? top[0].second - top[1].second : INFINITY);
        }
  return out;
}

// TP = 2 against TP = 1, teacher-forced (as the transformers comparison of the single-GPU
// engine): TP = 1 generates 32 greedy tokens per prompt; TP = 2 then predicts each of them
// from the same prefix (prompt + TP = 1's earlier tokens). Free-running agreement would count
// every token after a first near-tie flip as a miss. The bf16 all-reduce rounds each rank's
// partial sum before adding, so near-ties (top-2 logprob gap of a bf16 ulp or so) may flip;
// each miss prints its TP = 1 gap, so a real defect (a large gap) is visible.
TEST(CudaTpEngine, Tp2GreedyAgreesWithTp1Bf16RandomQwen3) {
  SKIP_UNLESS_TWO_GPUS();
  const auto ps = prompts();
  const auto tp1 = run_scored(1, ps, 32);
  std::vector<std::vector<int32_t>> forced;
  for (size_t i = 0; i < ps.size(); ++i)
    for (size_t t = 0; t < tp1[i].tokens.size(); ++t) {
      std::vector<int32_t> q = ps[i];
      q.insert(q.end(), tp1[i].tokens.begin(), tp1[i].tokens.begin() + t);
      forced.push_back(std::move(q));
    }
  const auto tp2 = run_scored(2, forced, 1);
  int same = 0, total = 0, k = 0;
  for (size_t i = 0; i < ps.size(); ++i)
    for (size_t t = 0; t < tp1[i].tokens.size(); ++t, ++k) {
      const bool ok = tp2[k].tokens.at(0) == tp1[i].tokens[t];
      same += ok;
      ++total;
      if (!ok)
        std::printf("[tp] prompt %zu step %zu: TP=1 %d, TP=2 %d; TP=1's top-2 logprob gap %.4f, TP=2's %.4f\n", i, t,
                    tp1[i].tokens[t], tp2[k].tokens[0], tp1[i].gap[t], tp2[k].gap[0]);
    }
  // Free-running, for the record: where each TP = 2 continuation first leaves TP = 1's.
  const auto free2 = run_scored(2, ps, 32);
  for (size_t i = 0; i < ps.size(); ++i) {
    size_t j = 0;
    while (j < 32 && free2[i].tokens.at(j) == tp1[i].tokens.at(j)) ++j;
    if (j < 32)
      std::printf("[tp] free-running prompt %zu: identical for %zu of 32 tokens; there TP=1's top-2 logprob gap "
                  "%.4f, TP=2's %.4f\n", i, j, tp1[i].gap[j], free2[i].gap[j]);
    else
      std::printf("[tp] free-running prompt %zu: identical for 32 of 32 tokens\n", i);
  }
  std::printf("GPU TP=2 vs TP=1 greedy agreement (bf16, teacher-forced): %d / %d\n", same, total);
  EXPECT_EQ(total, 4 * 32);
  EXPECT_GE(same * 100, total * 99);
}

// Rank 0 samples on its device (only ids come back) unless a request needs the host sampler;
// asking for logprobs takes the host path over the same logits: the greedy tokens must match.
TEST(CudaTpEngine, Tp2DeviceSamplingEqualsHostSampling) {
  SKIP_UNLESS_TWO_GPUS();
  const auto device = run(2, false);
  const auto host = run_scored(2, prompts(), 32);
  ASSERT_EQ(device.size(), host.size());
  for (size_t i = 0; i < device.size(); ++i) EXPECT_EQ(device[i], host[i].tokens) << "prompt " << i;
}

TEST(CudaTpEngine, Tp2DecodeGraphsEqualEager) {
  SKIP_UNLESS_TWO_GPUS();
  EXPECT_EQ(run(2, false), run(2, true));
}

}  // namespace
