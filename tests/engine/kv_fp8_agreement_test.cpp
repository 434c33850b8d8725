// The fp8 e4m3 KV cache against the bf16 cache on the CPU (issue 14's fp8 agreement target,
// measured where it is cheap): teacher-forced greedy agreement over 128 steps (4 prompts of 7,
// 33, 100, 257 tokens × 32 steps, the shape of tests/gpu/make_hf_reference.py's fixtures) on a
// random Qwen3 drawn the way that script draws qwen3_small_hd128 (hidden 512, 4 layers, 8/2 heads,
// head dim 128; matrices N(0, 1/fan_in), lm_head 1.5×, embeddings N(0, 1), norms 1 + 0.2·N(0, 1)),
// with the CPU forward rounding its activations to bf16 where the GPU's forward stores them.
// Three caches on the same tokens: bf16 (the reference), fp8 at scale 1 (vLLM's default), fp8
// with per-head scales from the first forward's amax (--calculate-kv-scales: the first prompt's
// prefill, 7 tokens, then kept, as the engine does). The checkpoint
// here is not the GPU fixture (torch's generator is not reproducible without torch), only drawn
// from the same distribution, so the counts are this checkpoint's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <span>
#include <vector>

#include "pie/core/random.hpp"
#include "pie/engine/cpu/cpu_model.hpp"
#include "pie/kv/kv_scales.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/model/weights.hpp"
#include "plan_builder.hpp"

namespace {
using namespace pie;

/// N(0, 1) draws from a counter-based hash (Box-Muller): the same on every machine.
struct Normal {
  uint64_t state;
  float next() {
    const uint64_t h = rng::splitmix64(state++);
    const double u1 = (static_cast<double>(h >> 40) + 0.5) / 16777216.0;
    const double u2 = static_cast<double>((h >> 16) & 0xffffffu) / 16777216.0;
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

model::ModelConfig small_config() {
  model::ModelConfig c;
  c.architecture = model::Architecture::Qwen3;
  c.architecture_name = "Qwen3ForCausalLM";
  c.vocab_size = 4096;
  c.hidden_size = 512;
  c.intermediate_size = 1536;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 128;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.max_position_embeddings = 4096;
  c.tie_word_embeddings = false;
  c.qk_norm = true;
  return c;
}

/// make_hf_reference.py's `randomize` over the Qwen3 tensors of `c`, in bf16.
model::Weights<bf16> random_weights(const model::ModelConfig& c, uint64_t seed) {
  model::Weights<bf16> w;
  w.config = c;
  Normal g{seed};
  auto fill = [&](TensorView<bf16> t, float scale, float offset) {
    for (int64_t i = 0; i < t.numel(); ++i) t.data[i] = from_float<bf16>(offset + scale * g.next());
    return t;
  };
  auto matrix = [&](std::initializer_list<int64_t> dims, float mul = 1.f) {
    auto t = w.allocate(dims);
    return fill(t, mul / std::sqrt(static_cast<float>(t.shape[1])), 0.f);
  };
  auto norm = [&](int64_t n) { return fill(w.allocate({n}), 0.2f, 1.f); };
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  w.embed_tokens = fill(w.allocate({c.vocab_size, H}), 1.f, 0.f);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    model::LayerWeights<bf16> L;
    L.input_layernorm = norm(H);
    L.qkv_proj = matrix({c.qkv_size(), H});
    L.q_norm = norm(c.head_dim);
    L.k_norm = norm(c.head_dim);
    L.o_proj = matrix({H, c.q_size()});
    L.post_attention_layernorm = norm(H);
    L.gate_up_proj = matrix({2 * I, H});
    L.down_proj = matrix({H, I});
    w.layers.push_back(L);
  }
  w.norm = norm(H);
  w.lm_head = matrix({c.vocab_size, H}, 1.5f);
  return w;
}

struct Trace {
  std::vector<int32_t> picks;              // greedy pick at every step
  std::vector<std::vector<float>> logits;  // the logits of every step
};

enum class Scales { None, Calculated };

/// Every prompt as one prefill, then `forced[p]` one decode step at a time (teacher forcing);
/// forced empty: the run's own greedy tokens (the reference run).
template <class KVT>
Trace teacher_forced(const model::Weights<bf16>& w, const std::vector<std::vector<int32_t>>& prompts, int steps,
                   const std::vector<std::vector<int32_t>>& forced, Scales scales, kv::KvScales* used = nullptr) {
  const auto& cfg = w.config;
  const int bs = 16, vocab = cfg.vocab_size;
  Trace r;
  kv::KvScales calculated;
  for (size_t p = 0; p < prompts.size(); ++p) {
    engine::cpu::CpuModel<Qwen3, bf16, KVT> m(w);
    m.context().round_activations(true);
    // As the engine: calculated on the first forward (prompt 0's prefill), then kept.
    if (scales == Scales::Calculated && p == 0) m.context().calculate_kv_scales();
    if (scales == Scales::Calculated && p > 0) m.context().set_kv_scales(calculated);
    const int total = static_cast<int>(prompts[p].size()) + steps;
    const int nb = (total + bs - 1) / bs;
    std::vector<std::vector<KVT>> layer(cfg.num_hidden_layers,
                                        std::vector<KVT>(size_t(nb) * 2 * cfg.num_key_value_heads * bs * cfg.head_dim));
    std::vector<KVT*> pools;
    for (auto& l : layer) pools.push_back(l.data());
    std::vector<int32_t> blocks(nb);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::vector<float> logits(vocab);
    test::SeqWork s{blocks, 0, prompts[p]};
    for (int k = 0; k < steps; ++k) {
      m.forward(test::make_plan({s}, bs), pools, bs, logits.data());
      const int pick = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      r.picks.push_back(pick);
      r.logits.push_back(logits);
      s.cached += static_cast<int>(s.tokens.size());
      s.tokens = {forced.empty() ? pick : forced[p][k]};
    }
    if (p == 0) calculated = m.context().kv_scales();
    if (used != nullptr && p == 0) *used = calculated;
  }
  return r;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += double(a[i] - b[i]) * (a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

struct Agreement {
  int agree = 0, steps = 0;
  double mean_err = 0, worst_err = 0;
};

Agreement compare(const Trace& got, const Trace& want, const char* what) {
  Agreement a;
  a.steps = static_cast<int>(want.picks.size());
  for (int i = 0; i < a.steps; ++i) {
    a.agree += got.picks[i] == want.picks[i];
    const double e = rel_err(got.logits[i], want.logits[i]);
    a.mean_err += e / a.steps;
    a.worst_err = std::max(a.worst_err, e);
    if (got.picks[i] != want.picks[i]) {
      const auto& l = want.logits[i];
      std::printf("[fp8 kv cpu] %s step %d: fp8 %d, bf16 %d; bf16 cache's logit gap %.4g\n", what, i, got.picks[i],
                  want.picks[i], l[want.picks[i]] - l[got.picks[i]]);
    }
  }
  std::printf("[fp8 kv cpu] %s: greedy agreement with the bf16 cache %d/%d, logits rel err mean %.3g worst %.3g\n",
              what, a.agree, a.steps, a.mean_err, a.worst_err);
  return a;
}

struct Measured {
  Agreement one, calc;
};

/// The three runs on the checkpoint drawn with `seed` (prompts from `seed` too).
Measured measure(uint64_t seed, bool print_scales) {
  const auto cfg = small_config();
  const auto w = random_weights(cfg, seed);
  std::vector<std::vector<int32_t>> prompts;
  uint64_t state = seed * 7 + 1;
  for (int len : {7, 33, 100, 257}) {
    std::vector<int32_t> ids;
    for (int i = 0; i < len; ++i)
      ids.push_back(static_cast<int32_t>(rng::splitmix64(state++) % static_cast<uint64_t>(cfg.vocab_size)));
    prompts.push_back(ids);
  }
  const int steps = 32;
  const Trace ref = teacher_forced<bf16>(w, prompts, steps, {}, Scales::None);
  std::vector<std::vector<int32_t>> forced;  // the bf16 cache's own greedy tokens are the teacher's
  for (size_t p = 0; p < prompts.size(); ++p)
    forced.emplace_back(ref.picks.begin() + p * steps, ref.picks.begin() + (p + 1) * steps);
  kv::KvScales used;
  const Trace one = teacher_forced<fp8_e4m3>(w, prompts, steps, forced, Scales::None);
  const Trace calc = teacher_forced<fp8_e4m3>(w, prompts, steps, forced, Scales::Calculated, &used);
  EXPECT_EQ(used.k.size(), size_t(cfg.num_hidden_layers) * cfg.num_key_value_heads);
  for (int l = 0; l < cfg.num_hidden_layers && print_scales; ++l)
    for (int h = 0; h < cfg.num_key_value_heads; ++h) {
      const size_t i = size_t(l) * cfg.num_key_value_heads + h;
      std::printf("[fp8 kv cpu] calculated scales layer %d head %d: k %.4g (amax %.3g), v %.4g (amax %.3g)\n", l, h,
                  used.k[i], used.k[i] * kv::kFp8E4m3Max / kv::kKvScaleMargin, used.v[i],
                  used.v[i] * kv::kFp8E4m3Max / kv::kKvScaleMargin);
    }
  for (size_t i = 0; i < used.k.size(); ++i) EXPECT_NE(used.k[i], 1.f);  // really calculated
  std::printf("[fp8 kv cpu] checkpoint seed %llu:\n", static_cast<unsigned long long>(seed));
  return {compare(one, ref, "scale 1"), compare(calc, ref, "calculated per-head scales")};
}

// One checkpoint in CI (~40 s of CPU). Measured (2026-12-05): scale 1 119/128, logits rel err
// mean 0.0220, worst 0.0384; calculated scales 118/128, mean 0.0218, worst 0.0383. Over this and
// 4 more checkpoints (PIE_FP8_KV_SEEDS=4): scale 1 615/640 (96.1%), calculated 607/640 (94.8%);
// the calculated scales lower the mean logits error in 4 of 5 (0.0217 -> 0.0214 on average), and
// the flips sit at bf16 logit gaps under ~0.05 either way: which near-tie flips is chance. So
// issue 14's 97% is not met by scales on these checkpoints; the bounds guard the measured level
// (>= 90%, worst <= 5%) and the scales' one systematic effect (the lower mean error).
TEST(Fp8KvCpu, AgreementWithBf16CacheScaleOneAndCalculatedScales) {
  const Measured m = measure(20261205, true);
  EXPECT_GE(m.one.agree, 115);
  EXPECT_GE(m.calc.agree, 115);
  EXPECT_LT(m.calc.mean_err, m.one.mean_err);
  EXPECT_LE(m.one.worst_err, 0.05);
  EXPECT_LE(m.calc.worst_err, 0.05);
}

// More checkpoints of the same distribution (opt-in: PIE_FP8_KV_SEEDS=N, about 40 s each), the
// spread behind the choice of pie's default (docs/kernels.md).
TEST(Fp8KvCpu, AgreementOverMoreCheckpoints) {
  const char* env = std::getenv("PIE_FP8_KV_SEEDS");
  if (env == nullptr) GTEST_SKIP() << "opt-in: PIE_FP8_KV_SEEDS=N";
  const int n = std::atoi(env);
  int one = 0, calc = 0, steps = 0;
  double e1 = 0, ec = 0;
  for (int i = 1; i <= n; ++i) {
    const Measured m = measure(1000 + i, false);
    one += m.one.agree;
    calc += m.calc.agree;
    steps += m.one.steps;
    e1 += m.one.mean_err / n;
    ec += m.calc.mean_err / n;
  }
  std::printf("[fp8 kv cpu] %d checkpoints: scale 1 %d/%d (mean rel err %.4g), calculated %d/%d (%.4g)\n", n, one,
              steps, e1, calc, steps, ec);
  EXPECT_GT(steps, 0);
}

}  // namespace
