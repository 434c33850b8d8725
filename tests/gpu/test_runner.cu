// GPU engine tests (label cuda): the CUDA runner against the CPU reference forward on the same
// bf16 weights, CUDA-graph replay against eager, KV swap/copy round trips, and greedy batch
// invariance (alone / in a batch of 64 / after recompute and swap preemption).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <random>
#include <unordered_map>
#include <vector>

#include "gpu_test_util.hpp"
#include "pie/ops/cuda/attention_decode.cuh"
#include "pie/core/policy.hpp"
#include "pie/engine/cpu/cpu_model.hpp"
#include "pie/engine/cuda/cuda_runner.cuh"
#include "pie/engine/engine.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/qwen3.hpp"

namespace pie {
namespace {

using engine::SampleSpec;
/// The engine over the GPU runner; tests that feed hand-built plans use its runner directly.
using GpuEngine = Engine<model::AnyDecoder, CudaBf16>;
using HostWeights = std::shared_ptr<const model::Weights<bf16>>;
using gpu_test::HandSeq;

constexpr int kBS = CudaBf16::block_size;

EngineOptions small_options(bool eager, int64_t blocks = 256) {
  EngineOptions o;
  o.sched.max_num_seqs = 64;
  o.sched.max_num_batched_tokens = 512;
  o.sched.max_model_len = 1024;
  o.swap_space_gib = 0.05;
  o.enforce_eager = eager;
  o.num_kv_blocks = static_cast<int>(blocks);
  o.log = false;
  return o;
}

HostWeights share(model::Weights<bf16> w) { return std::make_shared<const model::Weights<bf16>>(std::move(w)); }

std::unique_ptr<GpuEngine> gpu_engine(const HostWeights& hw, EngineOptions o) {
  o.set_weights(hw);
  return std::make_unique<GpuEngine>(o);
}

std::vector<int32_t> random_tokens(std::mt19937& rng, int n, int vocab) {
  std::uniform_int_distribution<int> d(2, vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = d(rng);
  return t;
}

/// CPU reference: the engine engineer's Qwen3 forward over the same bf16 weights with a float
/// KV cache, fed exactly the plans the GPU runs.
struct CpuReference {
  engine::cpu::CpuModel<model::AnyDecoder, bf16, float> model;
  std::vector<std::vector<float>> pools;
  std::vector<float*> ptrs;
  CpuReference(const model::Weights<bf16>& w, int blocks) : model(w) {
    const auto& c = w.config;
    size_t per = size_t(blocks) * 2 * c.num_key_value_heads * kBS * c.head_dim;
    for (int l = 0; l < c.num_hidden_layers; ++l) pools.emplace_back(per, 0.f);
    for (auto& p : pools) ptrs.push_back(p.data());
  }
  std::vector<float> run(const sched::StepPlan& p) {
    std::vector<float> logits(p.logits_rows.size() * size_t(model.config().vocab_size));
    model.forward(p, ptrs, kBS, logits.data());
    return logits;
  }
};

TEST(GpuRunner, MatchesCpuReferenceOverChunkedPrefillAndDecode) {
  auto cfg = gpu_test::small_qwen3(3);
  auto hw = share(model::dummy_weights<bf16>(cfg, 11));
  CpuReference cpu(*hw, 256);
  auto gpu_owner = gpu_engine(hw, small_options(false));
  auto& gpu = gpu_owner->runner();
  std::mt19937 rng(5);
  HandSeq a{random_tokens(rng, 40, cfg.vocab_size)}, b{random_tokens(rng, 70, cfg.vocab_size)};
  int32_t next = 0;
  int agree = 0, rows = 0;
  double worst = 0;
  auto step = [&](std::vector<HandSeq*> seqs, std::vector<int> n) {
    sched::StepPlan p = gpu_test::hand_plan(seqs, n, kBS, next);
    std::vector<SampleSpec> specs(p.logits_rows.size());
    auto g = gpu.execute_logits(p, specs);
    std::vector<float> gl(g.begin(), g.end());
    std::vector<float> cl = cpu.run(p);
    ASSERT_EQ(gl.size(), cl.size());
    worst = std::max(worst, gpu_test::rel_err(gl, cl));
    const size_t V = cfg.vocab_size;
    auto ids = gpu.last_ids();
    for (size_t r = 0; r < p.logits_rows.size(); ++r, ++rows) {
      std::span<const float> cr(cl.data() + r * V, V), gr(gl.data() + r * V, V);
      agree += gpu_test::argmax(cr) == gpu_test::argmax(gr);
      EXPECT_EQ(ids[r], gpu_test::argmax(gr)) << "device greedy id differs from the argmax of its logits";
      seqs[r]->tokens.push_back(ids[r]);  // both sides continue with the GPU's token
    }
  };
  step({&a, &b}, {40, 30});          // a whole prompt + the first chunk of b (b samples too: ignored)
  b.tokens.pop_back();               // b's first chunk is not its last: drop that sample
  step({&a, &b}, {1, 40});           // a decodes, b finishes its prompt
  for (int i = 0; i < 12; ++i) step({&a, &b}, {1, 1});  // pure decode: CUDA graph bucket 2
  EXPECT_LE(worst, 2e-2) << "logits relative error vs the CPU reference";
  EXPECT_GE(double(agree) / rows, 0.9) << agree << " of " << rows << " greedy tokens agree";
  EXPECT_GT(gpu.stats().graph_steps, 0);
  std::printf("[gpu vs cpu] worst logits rel err %.3g, greedy agreement %d/%d\n", worst, agree, rows);
}

TEST(GpuRunner, GraphReplayMatchesEager) {
  auto cfg = gpu_test::small_qwen3(2);
  auto hw = share(model::dummy_weights<bf16>(cfg, 12));
  auto graphs_engine = gpu_engine(hw, small_options(false));
  auto& graphs = graphs_engine->runner();
  auto eager_engine = gpu_engine(hw, small_options(true));
  auto& eager = eager_engine->runner();
  ASSERT_FALSE(graphs.graph_batch_sizes().empty());
  std::mt19937 rng(6);
  std::vector<HandSeq> s1(3), s2;
  for (auto& s : s1) s.tokens = random_tokens(rng, 20 + int(rng() % 30), cfg.vocab_size);
  s2 = s1;
  int32_t n1 = 0, n2 = 0;
  double worst = 0;
  for (int it = 0; it < 8; ++it) {
    std::vector<HandSeq*> p1, p2;
    std::vector<int> n;
    for (int i = 0; i < 3; ++i) {
      p1.push_back(&s1[i]); p2.push_back(&s2[i]);
      n.push_back(it == 0 ? int(s1[i].tokens.size()) : 1);
    }
    auto q1 = gpu_test::hand_plan(p1, n, kBS, n1);
    auto q2 = gpu_test::hand_plan(p2, n, kBS, n2);
    std::vector<SampleSpec> specs(3);
    auto l1 = graphs.execute_logits(q1, specs);
    std::vector<float> a(l1.begin(), l1.end());
    std::vector<int32_t> ia(graphs.last_ids().begin(), graphs.last_ids().end());
    auto l2 = eager.execute_logits(q2, specs);
    std::vector<float> b(l2.begin(), l2.end());
    worst = std::max(worst, gpu_test::rel_err(a, b));
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(ia[i], eager.last_ids()[i]) << "step " << it << " seq " << i;
      s1[i].tokens.push_back(ia[i]);
      s2[i].tokens.push_back(ia[i]);
    }
  }
  EXPECT_GT(graphs.stats().graph_steps, 0);  // batch 3 replays bucket 4, padded
  EXPECT_EQ(eager.stats().graph_steps, 0);
  EXPECT_LE(worst, 1e-2);
}

/// Sets an environment variable for a scope (runners read their switches when built).
struct ScopedEnv {
  const char* name;
  ScopedEnv(const char* n, const char* v) : name(n) { setenv(n, v, 1); }
  ~ScopedEnv() { unsetenv(name); }
};

/// PIE_DECODE_GRAPH_CONTEXTS=1 (engine/decode_context_classes.hpp) against eager over steps whose
/// longest context crosses class bounds: 10 sequences decoding through 512 (bucket 16), 6 of them
/// (bucket 8), an 11th of 2045 tokens decoding through 2048, a 12th of 3000 (max_model_len's
/// graph). Default kernels: the greedy tokens equal eager's (bar near-ties), logits within 1e-2;
/// --batch-invariant: no classes (its decode rows take the prefill kernel), logits bit-identical.
void graph_context_classes_match_eager(bool invariant) {
  auto cfg = gpu_test::small_qwen3(2);
  auto hw = share(model::dummy_weights<bf16>(cfg, 16));
  auto opts = [&](bool eager) {
    EngineOptions o = small_options(eager, 1024);
    o.sched.max_num_seqs = 16;
    o.sched.max_model_len = 4096;
    o.batch_invariant = invariant;
    return o;
  };
  std::unique_ptr<GpuEngine> graphs_engine;
  {
    ScopedEnv on("PIE_DECODE_GRAPH_CONTEXTS", "1");
    graphs_engine = gpu_engine(hw, opts(false));
  }
  auto& graphs = graphs_engine->runner();
  auto eager_engine = gpu_engine(hw, opts(true));
  auto& eager = eager_engine->runner();
  const auto& classes = graphs.graph_context_classes();
  ASSERT_EQ(classes.empty(), invariant);
  const std::vector<int> buckets = graphs.graph_batch_sizes();
  ASSERT_FALSE(buckets.empty());
  for (int b : buckets) {
    std::printf("[ctx classes] bucket %d:", b);
    for (int x : classes.bounds(b)) std::printf(" %d", x);
    std::printf("\n");
  }
  std::mt19937 rng(9);
  std::vector<HandSeq> s1, s2;
  for (int len : {100, 140, 180, 220, 260, 300, 340, 380, 420, 509, 2045, 3000})
    s1.push_back(HandSeq{random_tokens(rng, len, cfg.vocab_size)});
  s2 = s1;
  int32_t n1 = 0, n2 = 0;
  const size_t V = cfg.vocab_size;
  double worst = 0;
  int64_t want_ctx_steps = 0, near_ties = 0;
  std::vector<int> bounds_used;
  // One step over sequences `idx` (n tokens each) on both runners; a prefill chunk that does not
  // end its prompt drops its sample.
  auto step = [&](const std::vector<int>& idx, const std::vector<int>& n) {
    std::vector<HandSeq*> p1, p2;
    for (int i : idx) { p1.push_back(&s1[i]); p2.push_back(&s2[i]); }
    auto q1 = gpu_test::hand_plan(p1, n, kBS, n1);
    auto q2 = gpu_test::hand_plan(p2, n, kBS, n2);
    // Hand plans bypass the block manager: a block id past the cache would be an illegal address.
    ASSERT_LE(std::max(n1, n2), 1024) << "the test's sequences outgrew the 1024-block cache";
    const bool decode = q1.num_decode_seqs == q1.num_seqs();
    if (decode && !classes.empty()) {
      const int bucket = *std::lower_bound(buckets.begin(), buckets.end(), q1.num_seqs());
      int max_ctx = 1;
      for (int c : q1.context_lens) max_ctx = std::max(max_ctx, c);
      const int bound = classes.bound_for(bucket, max_ctx);
      want_ctx_steps += bound < 4096;
      if (std::find(bounds_used.begin(), bounds_used.end(), bound) == bounds_used.end()) bounds_used.push_back(bound);
    }
    std::vector<SampleSpec> specs(idx.size());
    auto l1 = graphs.execute_logits(q1, specs);
    std::vector<float> a(l1.begin(), l1.end());
    std::vector<int32_t> ia(graphs.last_ids().begin(), graphs.last_ids().end());
    auto l2 = eager.execute_logits(q2, specs);
    std::vector<float> b(l2.begin(), l2.end());
    ASSERT_EQ(a.size(), b.size());
    if (invariant)
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
          << "batch-invariant logits differ (rel err " << gpu_test::rel_err(a, b) << ")";
    worst = std::max(worst, gpu_test::rel_err(a, b));
    for (size_t r = 0; r < idx.size(); ++r) {
      const int ie = eager.last_ids()[r];
      if (ia[r] != ie) {
        // Only where eager's logits of the two tokens nearly tie (another split sums differently).
        const float gap = std::fabs(b[r * V + ia[r]] - b[r * V + ie]);
        EXPECT_LE(gap, 1e-2f) << "seq " << idx[r] << ": graph token " << ia[r] << " vs eager " << ie;
        ++near_ties;
      }
      HandSeq& x1 = s1[idx[r]];
      HandSeq& x2 = s2[idx[r]];
      if (x1.cached < static_cast<int>(x1.tokens.size())) continue;  // a chunk before the prompt's end
      x1.tokens.push_back(ie);  // both continue with eager's token
      x2.tokens.push_back(ie);
    }
  };
  // Chunks of at most 512 tokens up to the prompt's end. The bound is the prompt's length taken
  // before the loop: the last chunk appends the sampled token, and a bound read from tokens.size()
  // would then decode alone until the context passed max_model_len (the H100 run of 2026-12-05).
  auto prefill = [&](int i) {
    const int prompt = static_cast<int>(s1[i].tokens.size());
    while (s1[i].cached < prompt) step({i}, {std::min(512, prompt - s1[i].cached)});
  };
  auto decode = [&](int seqs, int steps) {
    std::vector<int> idx(seqs);
    for (int i = 0; i < seqs; ++i) idx[i] = i;
    for (int t = 0; t < steps; ++t) step(idx, std::vector<int>(seqs, 1));
  };
  for (int i = 0; i < 10; ++i) prefill(i);
  decode(10, 5);   // longest context 510..514: through 512 (bucket 16)
  decode(6, 2);    // bucket 8
  prefill(10);
  decode(11, 5);   // longest 2046..2050: through 2048
  prefill(11);
  decode(12, 2);   // longest 3001, 3002
  EXPECT_EQ(eager.stats().graph_steps, 0);
  EXPECT_GT(graphs.stats().graph_steps, 0);
  EXPECT_EQ(graphs.stats().ctx_graph_steps, want_ctx_steps);
  if (!invariant) {
    EXPECT_GT(want_ctx_steps, 0) << "no decode step replayed a context class below max_model_len";
    EXPECT_GE(bounds_used.size(), 3u) << "the steps crossed fewer class bounds than planned";
    EXPECT_LE(near_ties, 3);
  }
  EXPECT_LE(worst, 1e-2);
  std::printf("[ctx classes] invariant %d: %lld graph steps (%lld below max_model_len), %zu classes used, worst rel "
              "err %.3g, %lld near-tie tokens\n", int(invariant), static_cast<long long>(graphs.stats().graph_steps),
              static_cast<long long>(graphs.stats().ctx_graph_steps), bounds_used.size(), worst,
              static_cast<long long>(near_ties));
}

TEST(GpuRunner, GraphContextClassesMatchEager) { graph_context_classes_match_eager(false); }
TEST(GpuRunner, GraphContextClassesBatchInvariantBitIdentical) { graph_context_classes_match_eager(true); }

// Batch-invariant mode: one sequence's logits are bit-identical (a) alone, (b) inside mixed
// steps (its prompt in two chunks beside other prompts, decodes beside a prefill, padded graph
// buckets) and (c) after recompute (prompt and generated tokens prefilled again in one chunk).
TEST(GpuRunner, BatchInvariantLogitsBitIdenticalAloneBatchedAndRecomputed) {
  auto cfg = gpu_test::small_qwen3(2);
  auto hw = share(model::dummy_weights<bf16>(cfg, 14));
  EngineOptions opt = small_options(false);
  opt.batch_invariant = true;
  const size_t V = cfg.vocab_size;
  const int P = 40, steps = 10;
  std::mt19937 rng(8);
  HandSeq alone_seq{random_tokens(rng, P, cfg.vocab_size)};
  // (a) alone: the prompt, then `steps` graph-replayed decodes of batch 1.
  std::vector<std::vector<float>> alone;
  {
    auto r_engine = gpu_engine(hw, opt);
  auto& r = r_engine->runner();
    int32_t next = 0;
    for (int t = 0; t <= steps; ++t) {
      auto p = gpu_test::hand_plan({&alone_seq}, {t == 0 ? P : 1}, kBS, next);
      std::vector<SampleSpec> specs(1);
      auto l = r.execute_logits(p, specs);
      alone.emplace_back(l.begin(), l.begin() + V);
      alone_seq.tokens.push_back(r.last_ids()[0]);
    }
    EXPECT_GT(r.stats().graph_steps, 0);
  }
  const std::vector<int32_t> tokens = alone_seq.tokens;  // prompt + steps + 1 generated
  auto bitwise = [&](std::span<const float> got, int t, const char* how) {
    EXPECT_EQ(std::memcmp(got.data(), alone[t].data(), V * sizeof(float)), 0)
        << how << ": logits after " << t << " generated tokens differ from the sequence alone (rel err "
        << gpu_test::rel_err(got, alone[t]) << ")";
  };
  // (b) batched.
  {
    auto r_engine = gpu_engine(hw, opt);
  auto& r = r_engine->runner();
    int32_t next = 0;
    HandSeq a{tokens}, b{random_tokens(rng, 30, cfg.vocab_size)}, c{random_tokens(rng, 57, cfg.vocab_size)},
        d{random_tokens(rng, 33, cfg.vocab_size)};
    auto run = [&](std::vector<HandSeq*> seqs, std::vector<int> n) {
      auto p = gpu_test::hand_plan(seqs, n, kBS, next);
      std::vector<SampleSpec> specs(p.logits_rows.size());
      auto l = r.execute_logits(p, specs);
      std::vector<float> out(l.begin(), l.end());
      for (size_t i = 0; i < seqs.size(); ++i)
        if (seqs[i] != &a) seqs[i]->tokens.push_back(r.last_ids()[i]);
      return out;
    };
    run({&b, &a}, {30, 25});                                  // a's first chunk beside b's prompt
    auto l = run({&b, &a, &c}, {1, P - 25, 57});              // b decodes, a finishes, c's prompt
    bitwise({l.data() + V, V}, 0, "prompt in two chunks beside other prompts");
    for (int t = 1; t <= steps; ++t) {
      // a is row 1 of each step: decodes beside a prefill once (eager, mixed), otherwise
      // batch 3 replaying the padded graph bucket 4.
      auto out = t == 4 ? run({&b, &a, &c, &d}, {1, 1, 1, 33}) : run({&b, &a, &c}, {1, 1, 1});
      bitwise({out.data() + V, V}, t, t == 4 ? "decode beside a prefill" : "decode in a padded graph");
    }
    EXPECT_GT(r.stats().graph_steps, 0);
    EXPECT_GT(r.stats().eager_steps, 2);
  }
  // (c) recompute: the first 5 generated tokens prefilled again with the prompt, one chunk,
  // beside another sequence's decode; then decodes continue.
  {
    auto r_engine = gpu_engine(hw, opt);
  auto& r = r_engine->runner();
    int32_t next = 0;
    HandSeq a{tokens}, b{random_tokens(rng, 21, cfg.vocab_size)};
    std::vector<SampleSpec> one(1), two(2);
    auto p0 = gpu_test::hand_plan({&b}, {21}, kBS, next);
    r.execute_logits(p0, one);
    b.tokens.push_back(r.last_ids()[0]);
    auto p1 = gpu_test::hand_plan({&b, &a}, {1, P + 5}, kBS, next);
    auto l = r.execute_logits(p1, two);
    b.tokens.push_back(r.last_ids()[0]);
    bitwise({l.data() + V, V}, 5, "recomputed in one chunk");
    for (int t = 6; t <= steps; ++t) {
      auto p = gpu_test::hand_plan({&b, &a}, {1, 1}, kBS, next);
      auto lt = r.execute_logits(p, two);
      b.tokens.push_back(r.last_ids()[0]);
      bitwise({lt.data() + V, V}, t, "decode after recompute");
    }
  }
}

TEST(GpuKVCache, SwapOutSwapInAndCopyRoundTrip) {
  kv::KVLayout lay{3, 2, 64, kBS, DType::BF16};
  engine::cuda::KVCache<bf16> kv(lay, 16, 4);
  const size_t per_layer = 16 * lay.block_elems_per_layer();
  std::vector<bf16> host(per_layer * 3);
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (auto& v : host) v = bf16(u(rng));
  for (int l = 0; l < 3; ++l)
    PIE_CUDA_CHECK(cudaMemcpy(kv.layer_data(l), host.data() + l * per_layer, per_layer * 2, cudaMemcpyHostToDevice));
  sched::StepPlan out;
  out.swap_out = {{3, 1}};
  out.copy_blocks = {{3, 5}};
  kv.apply(out, nullptr);
  sched::StepPlan in;
  in.swap_in = {{1, 7}};
  kv.apply(in, nullptr);
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  const size_t be = lay.block_elems_per_layer();
  for (int l = 0; l < 3; ++l) {
    std::vector<bf16> got(per_layer);
    PIE_CUDA_CHECK(cudaMemcpy(got.data(), kv.layer_data(l), per_layer * 2, cudaMemcpyDeviceToHost));
    const bf16* src = host.data() + l * per_layer + 3 * be;
    for (int dst : {5, 7})
      for (size_t i = 0; i < be; ++i)
        ASSERT_EQ(got[dst * be + i].bits, src[i].bits) << "layer " << l << " block " << dst << " elem " << i;
    for (size_t i = 0; i < be; ++i)  // host copy of the swapped block, layer-major inside it
      ASSERT_EQ(kv.swap_block(1)[l * be + i].bits, src[i].bits);
    for (size_t i = 0; i < be; ++i)  // untouched blocks keep their data
      ASSERT_EQ(got[6 * be + i].bits, host[l * per_layer + 6 * be + i].bits);
  }
}

/// Greedy outputs of 64 requests (index 0 is `target`) on an engine with `blocks` KV blocks.
std::vector<std::vector<int32_t>> run_batch(const HostWeights& hw, const std::vector<std::vector<int32_t>>& prompts,
                                            int64_t blocks, sched::PreemptionMode mode, int64_t* preemptions,
                                            bool invariant = false) {
  EngineOptions o = small_options(false, blocks);
  o.sched.enable_prefix_caching = false;
  o.sched.preemption_mode = mode;
  o.batch_invariant = invariant;
  auto e = gpu_engine(hw, o);
  sched::SamplingParams sp;
  sp.temperature = 0.f;
  sp.max_tokens = 24;
  sp.ignore_eos = true;
  auto out = e->generate(prompts, sp);
  if (preemptions) *preemptions = e->scheduler().num_preemptions();
  std::vector<std::vector<int32_t>> r;
  for (auto& g : out) r.push_back(g.tokens[0]);
  return r;
}

/// Greedy tokens of 64 requests alone / in one batch / under recompute and swap preemption;
/// returns how many of the 64 kept every token under (recompute, swap).
/// `group` > 0: that many query heads per KV head (one KV head, head dim 128) instead of the
/// fixture's 4/2 at head dim 64 — groups 4 and 8 are where 16-bit decode launches take the
/// tensor-core kernel with the batch-invariant split (PIE_DECODE_MMA_WIDE).
std::pair<int, int> check_invariance(bool invariant, int num_alone, int group = 0) {
  auto cfg = gpu_test::small_qwen3(2);
  if (group > 0) {
    cfg.num_attention_heads = group;
    cfg.num_key_value_heads = 1;
    cfg.head_dim = 128;
  }
  auto hw = share(model::dummy_weights<bf16>(cfg, 13));
  std::mt19937 rng(7);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 64; ++i) prompts.push_back(random_tokens(rng, 10 + int(rng() % 50), cfg.vocab_size));
  const char* mode = invariant ? "batch-invariant" : "default";
  auto batched = run_batch(hw, prompts, 512, sched::PreemptionMode::Recompute, nullptr, invariant);
  for (int i = 0; i < num_alone; ++i) {
    auto alone = run_batch(hw, {prompts[i]}, 256, sched::PreemptionMode::Recompute, nullptr, invariant);
    EXPECT_EQ(alone[0].size(), 24u);
    EXPECT_EQ(batched[i], alone[0]) << mode << ": sequence " << i << " alone vs in a batch of 64";
  }
  int64_t pre_r = 0, pre_s = 0;
  // 64 sequences of up to 83 tokens need ~300 blocks of 16; 80 blocks force preemptions.
  auto recompute = run_batch(hw, prompts, 80, sched::PreemptionMode::Recompute, &pre_r, invariant);
  auto swap = run_batch(hw, prompts, 80, sched::PreemptionMode::Swap, &pre_s, invariant);
  EXPECT_GT(pre_r, 0);
  EXPECT_GT(pre_s, 0);
  int same_r = 0, same_s = 0;
  for (int i = 0; i < 64; ++i) {
    same_r += recompute[i] == batched[i];
    same_s += swap[i] == batched[i];
    for (auto* run : {&recompute, &swap}) {
      const auto& got = (*run)[i];
      if (got == batched[i]) continue;
      size_t j = 0;
      while (j < got.size() && j < batched[i].size() && got[j] == batched[i][j]) ++j;
      std::printf("[batch invariance, %s] %s: sequence %d (prompt %zu) diverges at output token %zu\n", mode,
                  run == &recompute ? "recompute" : "swap", i, prompts[i].size(), j);
    }
  }
  std::printf("[batch invariance, %s, group %d] preemptions recompute %lld swap %lld; identical %d/64, %d/64\n",
              mode, cfg.num_attention_heads / cfg.num_key_value_heads, (long long)pre_r, (long long)pre_s, same_r,
              same_s);
  return {same_r, same_s};
}

// Batch-invariant mode promises bitwise invariance: every token of every sequence survives
// batching and both kinds of preemption.
TEST(GpuEngine, BatchInvariantModeKeepsEveryGreedyTokenAloneBatchedAndAfterPreemption) {
  auto [same_r, same_s] = check_invariance(/*invariant=*/true, /*num_alone=*/8);
  EXPECT_EQ(same_r, 64) << "sequences whose greedy tokens changed under recompute preemption";
  EXPECT_EQ(same_s, 64) << "sequences whose greedy tokens changed under swap preemption";
}

// The default (fast) kernels promise no bitwise invariance: the GEMM algorithm and the decode
// split follow the batch, and a recomputed sequence's K/V come from prefill numerics. Swap
// keeps the K/V and measured 64/64; recompute measured 63/64 on an H100 (one near-tie of the
// dummy weights flips). The bounds below record that, so a regression in either shows.
TEST(GpuEngine, DefaultKernelsKeepGreedyTokensAloneBatchedAndNearlyAllAfterPreemption) {
  auto [same_r, same_s] = check_invariance(/*invariant=*/false, /*num_alone=*/1);
  EXPECT_GE(same_r, 62) << "sequences whose greedy tokens survived recompute preemption";
  EXPECT_EQ(same_s, 64) << "sequences whose greedy tokens changed under swap preemption";
}

// The same checks at GQA groups 4 and 8 (Qwen3-8B's and Qwen3-30B-A3B's), head dim 128, one KV
// head. Measured on the H200 (2026-12-05) with the CUDA-core kernel and the cost model's split:
// group 4 63/64 and 64/64, group 8 62/64 and 63/64 (swap was not bitwise at group 8: the split
// count, and so the merge order, followed the batch). With one-split launches alone on the
// tensor-core kernel (a sequence changing kernels with its batch) they fell to 53/64 and 58/64.
// With PIE_DECODE_MMA_WIDE=all (opt-in until it has run on a GPU) every launch at these groups
// takes the tensor-core kernel with the batch-invariant split (splits fixed by the context), so a
// sequence's decode attention no longer depends on its batch: swap must keep every token;
// recompute re-prefills the K/V (prefill numerics), so a near-tie may still flip. Unset, the
// default kernels are held to the same recompute bound and to their measured swap bounds.
// Since 2026-12-06 an unset PIE_DECODE_MMA_WIDE means group 8 on wide grids only (a build with
// the fixed split): the batched run's 64 sequences plan more CTAs than SMs (several splits each)
// and take the tensor-core kernel, the preempted runs' smaller batches the CUDA-core one, so a
// sequence changes kernels with its batch, as in the one-split experiment above: measured 55/64
// and 57/64 on an H100 (2026-12-06). That is the price docs/architecture.md records for +8% at
// Qwen3-30B-A3B's large batches; the bounds below hold it there, so a further loss shows.
TEST(GpuEngine, DefaultKernelsAtGroups4And8KeepGreedyTokensAfterPreemption) {
  for (int group : {4, 8}) {
    const bool tc = ops::cuda::decode_mma_wide_enabled(group);
    const bool mixed = ops::cuda::decode_mma_wide_grids_only(group);
    std::printf("[batch invariance] group %d: %s\n", group,
                tc      ? "tensor-core kernel, batch-invariant split"
                : mixed ? "tensor-core kernel on wide grids, CUDA-core kernel on narrow ones"
                        : "CUDA-core kernel, cost model's split");
    auto [same_r, same_s] = check_invariance(/*invariant=*/false, /*num_alone=*/1, group);
    EXPECT_GE(same_r, mixed ? 53 : 62) << "group " << group
                                       << ": sequences whose greedy tokens survived recompute preemption";
    EXPECT_GE(same_s, mixed ? 55 : tc || group == 4 ? 64 : 63)
        << "group " << group << ": sequences whose greedy tokens survived swap";
  }
}

}  // namespace
}  // namespace pie
