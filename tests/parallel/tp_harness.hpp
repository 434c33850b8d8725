#pragma once
// Test support for tensor parallelism: per-rank KV pools (plans come from plan_builder.hpp), and two drivers
// over any forward callable — teacher-forced logits along a given token path, and batched
// greedy decoding — so the unsharded model and every simulated rank run exactly the same steps.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <vector>

#include "pie/model/config.hpp"
#include "pie/sched/step_plan.hpp"
#include "../engine/plan_builder.hpp"  // SeqWork, make_plan: the engine tests' hand-built plans

namespace pie::test {

/// Per-layer KV pools of `blocks` blocks for a (possibly rank-local) config.
template <class KVT>
struct KvPools {
  std::vector<std::vector<KVT>> layers;
  std::vector<KVT*> ptrs;
  KvPools(const model::ModelConfig& c, int blocks, int block_size) {
    const size_t n = size_t(blocks) * 2 * c.num_key_value_heads * block_size * c.head_dim;
    layers.assign(c.num_hidden_layers, std::vector<KVT>(n));
    for (auto& l : layers) ptrs.push_back(l.data());
  }
};

/// forward(plan, logits[rows][vocab]); the callable owns its weights and KV pools.
using Forward = std::function<void(const sched::StepPlan&, float*)>;

inline constexpr int kBlockSize = 16;

/// Blocks a test needs for `seqs` sequences of up to `max_len` tokens (block 0 unused).
inline int blocks_needed(int seqs, int max_len) {
  return 1 + seqs * ((max_len + kBlockSize - 1) / kBlockSize);
}

/// Block table of sequence `i`: reversed ids, so the table is really used.
inline std::vector<int32_t> blocks_of(int i, int max_len) {
  const int nb = (max_len + kBlockSize - 1) / kBlockSize;
  std::vector<int32_t> b(nb);
  std::iota(b.rbegin(), b.rend(), 1 + i * nb);
  return b;
}

/// Prefill `prompt`, then feed path[0], path[1], … one decode step each (teacher forcing);
/// returns the logits of the `steps` steps ([steps][vocab]; path needs steps − 1 tokens).
inline std::vector<std::vector<float>> forced_logits(const Forward& f, const std::vector<int32_t>& prompt,
                                                     const std::vector<int32_t>& path, int steps, int vocab) {
  const int max_len = static_cast<int>(prompt.size()) + steps;
  SeqWork w{blocks_of(0, max_len), 0, prompt};
  std::vector<std::vector<float>> out;
  for (int s = 0; s < steps; ++s) {
    out.emplace_back(vocab);
    f(make_plan({w}, kBlockSize), out.back().data());
    w.cached += static_cast<int>(w.tokens.size());
    w.tokens = {path.at(s)};
  }
  return out;
}

inline int32_t argmax(const float* x, int n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

/// Batched greedy decoding: every prompt prefilled in one step, then one decode token per
/// sequence per step, `steps` tokens each.
inline std::vector<std::vector<int32_t>> greedy(const Forward& f, const std::vector<std::vector<int32_t>>& prompts,
                                                int steps, int vocab) {
  int max_len = 0;
  for (auto& p : prompts) max_len = std::max(max_len, static_cast<int>(p.size()) + steps);
  std::vector<SeqWork> ws;
  for (size_t i = 0; i < prompts.size(); ++i) ws.push_back({blocks_of(static_cast<int>(i), max_len), 0, prompts[i]});
  std::vector<std::vector<int32_t>> out(prompts.size());
  std::vector<float> logits(prompts.size() * vocab);
  for (int s = 0; s < steps; ++s) {
    f(make_plan(ws, kBlockSize), logits.data());
    for (size_t i = 0; i < ws.size(); ++i) {
      const int32_t t = argmax(logits.data() + i * vocab, vocab);
      out[i].push_back(t);
      ws[i].cached += static_cast<int>(ws[i].tokens.size());
      ws[i].tokens = {t};
    }
  }
  return out;
}

/// max_v |a − b| / max_v |b| (transformers' metric, as tests/engine uses).
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t v = 0; v < b.size(); ++v) {
    num = std::max(num, double(std::fabs(a[v] - b[v])));
    den = std::max(den, double(std::fabs(b[v])));
  }
  return num / den;
}

}  // namespace pie::test
