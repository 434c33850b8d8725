// The opt-in fusions of the GPU forward (engine/fusion_switches.hpp) against the separate
// kernels on the GPU engine: PIE_FUSED_ROPE_KV=1 (the q/k RoPE kernel writes K/V into the paged
// cache, attention() skips kv_write), PIE_FUSED_FINAL_NORM=1 (batch-1 final norm inside the
// lm_head GEMV), PIE_FUSED_SWIGLU=1 (batch-1 SwiGLU inside the down projection's GEMV) and all. The float logits of every step are bit-identical — chunked prefill, a
// mixed step, graph-replayed decode steps (a padded bucket: slot −1 rows) and batch-1 steps,
// replayed and eager — for Qwen3 (q/k norm), a Llama-shaped model with llama3 RoPE scaling
// (plain RoPE), block sizes 16 and 8, and an fp8 KV cache. The L2 prefetch of the weights after
// RoPE + attention (PIE_L2_PREFETCH, engine/l2_prefetch.hpp) likewise, with its kernel alone on
// ranges with tails and inside a captured graph. The decode attention's early pages and cluster
// merge (PIE_DECODE_EARLY_PAGES, PIE_DECODE_CLUSTER_MERGE) likewise, and the RoPE inside decode
// attention with two CTAs per KV head (PIE_DECODE_SPLIT_GROUP), whose logits against one CTA per
// KV head are compared within a tolerance (another kernel's arithmetic). Label cuda.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/cuda/cuda_runner.cuh"
#include "pie/engine/engine.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/model/qwen3_moe.hpp"
#include "pie/model/config_io.hpp"

namespace pie {
namespace {

using engine::SampleSpec;
using gpu_test::HandSeq;
using Bf16Block8 = EnginePolicy<8, bf16, bf16, attention::Causal, backend::Cuda>;

/// The switches of one engine (all off: the separate kernels).
struct Fusions {
  bool rope_kv = false, final_norm = false, swiglu = false;
  int l2_rows = 0;                // PIE_L2_PREFETCH
  const char* l2_mib = nullptr;   // PIE_L2_PREFETCH_MB
  bool early_pages = false;       // PIE_DECODE_EARLY_PAGES
  bool cluster_merge = false;     // PIE_DECODE_CLUSTER_MERGE
  bool rope_attn = false;         // PIE_FUSED_ROPE_ATTN
  bool split_group = false;       // PIE_DECODE_SPLIT_GROUP (and PIE_DECODE_SPLIT_GROUP4)
  bool moe_norm = false;          // PIE_FUSED_MOE_NORM
  const char* moe_route = nullptr;  // PIE_MOE_ROUTE (unset: the build's default)
  const char* moe_unpermute = nullptr;  // PIE_MOE_UNPERMUTE (unset: the build's default)
  bool l2_ahead = false;          // PIE_GEMV_L2_AHEAD
  std::string name() const {
    return std::string(rope_kv ? " +rope_kv" : "") + (final_norm ? " +final_norm" : "") + (swiglu ? " +swiglu" : "") +
           (l2_rows ? " +l2_prefetch" : "") + (early_pages ? " +early_pages" : "") +
           (cluster_merge ? " +cluster_merge" : "") + (rope_attn ? " +rope_attn" : "") +
           (split_group ? " +split_group" : "") + (moe_norm ? " +moe_norm" : "") +
           (moe_route ? std::string(" +route=") + moe_route : std::string()) +
           (moe_unpermute ? std::string(" +unpermute=") + moe_unpermute : std::string()) +
           (l2_ahead ? " +l2_ahead" : "");
  }
};

/// Sets the environment switches of `f` (the runner reads them once, when it is built: its
/// graphs capture that path); unset_switches() afterwards.
void set_switches(const Fusions& f) {
  setenv("PIE_FUSED_ROPE_KV", f.rope_kv ? "1" : "0", 1);
  setenv("PIE_FUSED_FINAL_NORM", f.final_norm ? "1" : "0", 1);
  setenv("PIE_FUSED_SWIGLU", f.swiglu ? "1" : "0", 1);
  setenv("PIE_L2_PREFETCH", std::to_string(f.l2_rows).c_str(), 1);
  if (f.l2_mib) setenv("PIE_L2_PREFETCH_MB", f.l2_mib, 1);
  setenv("PIE_DECODE_EARLY_PAGES", f.early_pages ? "1" : "0", 1);
  setenv("PIE_DECODE_CLUSTER_MERGE", f.cluster_merge ? "1" : "0", 1);
  setenv("PIE_FUSED_ROPE_ATTN", f.rope_attn ? "1" : "0", 1);
  setenv("PIE_DECODE_SPLIT_GROUP", f.split_group ? "1" : "0", 1);
  setenv("PIE_DECODE_SPLIT_GROUP4", f.split_group ? "1" : "0", 1);
  setenv("PIE_FUSED_MOE_NORM", f.moe_norm ? "1" : "0", 1);
  if (f.moe_route) setenv("PIE_MOE_ROUTE", f.moe_route, 1);
  else unsetenv("PIE_MOE_ROUTE");
  if (f.moe_unpermute) setenv("PIE_MOE_UNPERMUTE", f.moe_unpermute, 1);
  else unsetenv("PIE_MOE_UNPERMUTE");
  setenv("PIE_GEMV_L2_AHEAD", f.l2_ahead ? "1" : "0", 1);
}
void unset_switches() {
  for (const char* v : {"PIE_FUSED_ROPE_KV", "PIE_FUSED_FINAL_NORM", "PIE_FUSED_SWIGLU", "PIE_L2_PREFETCH",
                        "PIE_L2_PREFETCH_MB", "PIE_DECODE_EARLY_PAGES", "PIE_DECODE_CLUSTER_MERGE",
                        "PIE_FUSED_ROPE_ATTN", "PIE_DECODE_SPLIT_GROUP", "PIE_DECODE_SPLIT_GROUP4",
                        "PIE_FUSED_MOE_NORM", "PIE_MOE_ROUTE", "PIE_MOE_UNPERMUTE", "PIE_GEMV_L2_AHEAD"})
    unsetenv(v);
}

/// The test engines' options: small, 16 sequences, chunked prefill of 256 tokens.
EngineOptions test_options(bool eager) {
  EngineOptions o;
  o.sched.max_num_seqs = 16;
  o.sched.max_num_batched_tokens = 256;
  o.sched.max_model_len = 512;
  o.swap_space_gib = 0.02;
  o.enforce_eager = eager;
  o.num_kv_blocks = 128;
  o.log = false;
  return o;
}

template <class P>
std::unique_ptr<Engine<model::AnyDecoder, P>> make_engine(const std::shared_ptr<const model::Weights<bf16>>& hw,
                                                          const Fusions& f, bool eager) {
  set_switches(f);
  EngineOptions o = test_options(eager);
  o.set_weights(hw);
  auto e = std::make_unique<Engine<model::AnyDecoder, P>>(o);
  unset_switches();
  return e;
}

std::vector<int32_t> random_tokens(std::mt19937& rng, int n, int vocab) {
  std::uniform_int_distribution<int> d(2, vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = d(rng);
  return t;
}

/// Runs the same hand-built steps through the separate kernels (or the switches `base`) and
/// through an engine with the given fusions; every step's float logits must be the same bytes,
/// or with `tol` > 0 within that relative error (gpu_test::rel_err: ‖fused − base‖ / ‖base‖).
/// `make(fusions, eager)` builds the engines (block size bs).
template <int bs, class Make>
void check_engines(const model::ModelConfig& cfg, bool eager, const Fusions& f, const std::string& what_in,
                   const Fusions& base, double tol, Make&& make) {
  const std::string what = what_in + f.name() + (tol > 0 ? " against" + base.name() : "");
  auto sep_owner = make(base, eager);
  auto fus_owner = make(f, eager);
  auto& sep = sep_owner->runner();
  auto& fus = fus_owner->runner();
  std::mt19937 rng(7);
  std::vector<HandSeq> s1(3);
  for (auto& s : s1) s.tokens = random_tokens(rng, 20 + int(rng() % 40), cfg.vocab_size);
  auto s2 = s1;
  int32_t n1 = 0, n2 = 0;
  int steps = 0, differ = 0;
  double max_err = 0;
  auto step = [&](std::vector<int> idx, std::vector<int> n) {
    std::vector<HandSeq*> p1, p2;
    for (int i : idx) { p1.push_back(&s1[i]); p2.push_back(&s2[i]); }
    auto q1 = gpu_test::hand_plan(p1, n, bs, n1);
    auto q2 = gpu_test::hand_plan(p2, n, bs, n2);
    std::vector<SampleSpec> specs(q1.logits_rows.size());
    auto l1 = sep.execute_logits(q1, specs);
    std::vector<float> a(l1.begin(), l1.end());
    std::vector<int32_t> ids(sep.last_ids().begin(), sep.last_ids().end());
    auto l2 = fus.execute_logits(q2, specs);
    ASSERT_EQ(a.size(), l2.size());
    ++steps;
    if (tol > 0) {
      const double e = gpu_test::rel_err(l2, a);  // +inf on NaN
      max_err = std::max(max_err, e);
      if (!(e <= tol)) {
        ++differ;
        ADD_FAILURE() << what << ": logits of step " << steps << " differ by " << e << " (relative)";
      }
    } else if (std::memcmp(a.data(), l2.data(), a.size() * sizeof(float)) != 0) {
      ++differ;
      ADD_FAILURE() << what << ": logits of step " << steps << " differ";
    }
    for (size_t r = 0; r < idx.size(); ++r) {
      if (s1[idx[r]].cached < static_cast<int>(s1[idx[r]].tokens.size())) continue;  // mid-prompt chunk
      s1[idx[r]].tokens.push_back(ids[r]);
      s2[idx[r]].tokens.push_back(ids[r]);
    }
  };
  const int len2 = static_cast<int>(s1[2].tokens.size());
  step({0, 1}, {static_cast<int>(s1[0].tokens.size()), static_cast<int>(s1[1].tokens.size())});
  step({0, 1, 2}, {1, 1, len2 / 2});             // decodes beside the first chunk of a prompt
  step({0, 1, 2}, {1, 1, len2 - len2 / 2});      // ... and its last chunk
  for (int i = 0; i < 6; ++i) step({0, 1, 2}, {1, 1, 1});  // graph bucket 4: one padding row
  for (int i = 0; i < 4; ++i) step({1}, {1});              // batch 1
  EXPECT_EQ(differ, 0) << what << ": " << differ << " of " << steps << " steps";
  if (!eager) EXPECT_GT(fus.stats().graph_steps, 0) << what;
  // The fused paths ran (the test compares something): per layer of every eager step or capture,
  // and the final norm on the batch-1 steps; the separate engine took none.
  const auto& on = fus.forward().fusion_counts();
  const auto& off = sep.forward().fusion_counts();
  EXPECT_EQ(off.rope_kv + off.final_norm + off.l2_prefetch + off.swiglu, 0) << what;
  EXPECT_EQ(off.rope_attn > 0, base.rope_attn) << what;
  // RoPE inside decode attention: every layer of the decode-only steps (graphs: their captures).
  if (f.rope_attn) EXPECT_GE(on.rope_attn, int64_t{1} * cfg.num_hidden_layers) << what;
  else EXPECT_EQ(on.rope_attn, 0) << what;
  // Prefetching steps: the batch-1 steps (every layer, in their graph or eagerly), and with
  // l2_rows ≥ 4 the padded bucket-4 decodes too.
  if (f.l2_rows) EXPECT_GE(on.l2_prefetch, int64_t{1} * cfg.num_hidden_layers) << what;
  else EXPECT_EQ(on.l2_prefetch, 0) << what;
  if (f.rope_kv) EXPECT_GE(on.rope_kv, int64_t{3} * cfg.num_hidden_layers) << what;
  else EXPECT_EQ(on.rope_kv, 0) << what;
  if (f.final_norm) EXPECT_GE(on.final_norm, 1) << what;
  else EXPECT_EQ(on.final_norm, 0) << what;
  // SwiGLU in the down projection: every layer of the batch-1 steps (their graph's capture, or
  // each eager step), never at the wider steps.
  if (f.swiglu) EXPECT_GE(on.swiglu, int64_t{1} * cfg.num_hidden_layers) << what;
  else EXPECT_EQ(on.swiglu, 0) << what;
  // The norm inside the MoE router: the sparse layers of the batch-1 steps.
  EXPECT_EQ(off.moe_norm > 0, base.moe_norm) << what;
  if (f.moe_norm) EXPECT_GE(on.moe_norm, 1) << what;
  else EXPECT_EQ(on.moe_norm, 0) << what;
  // The routing inside the MoE gate_up GEMV: the sparse layers of the batch-1 steps.
  const bool routed = f.moe_route && std::string(f.moe_route) == "gate_up";
  // (Unset, each takes the build's default, and only a MoE model counts them.)
  if (routed) EXPECT_GE(on.moe_route, 1) << what;
  else if (f.moe_route) EXPECT_EQ(on.moe_route, 0) << what;
  // The un-permute in the MoE down GEMV's last CTAs: the same layers.
  if (f.moe_unpermute && std::string(f.moe_unpermute) == "down") EXPECT_GE(on.moe_unpermute, 1) << what;
  else if (f.moe_unpermute) EXPECT_EQ(on.moe_unpermute, 0) << what;
  if (base.moe_unpermute && std::string(base.moe_unpermute) == "kernel") EXPECT_EQ(off.moe_unpermute, 0) << what;
  // o_proj's weights into L2 before its wait: every layer of the batch-1 steps, where the decode
  // attention lets it launch late (a build with the latency paths); never at the wider steps.
  EXPECT_EQ(off.l2_ahead, 0) << what;
  if (f.l2_ahead && ops::kDecodeLatencyCompiled) EXPECT_GE(on.l2_ahead, int64_t{1} * cfg.num_hidden_layers) << what;
  else EXPECT_EQ(on.l2_ahead, 0) << what;
  if (tol > 0)
    std::printf("[fused] %s: %d/%d steps within %.1e (largest %.2e)\n", what.c_str(), steps - differ, steps, tol,
                max_err);
  else
    std::printf("[fused] %s: %d/%d steps bit-identical\n", what.c_str(), steps - differ, steps);
}

template <class P>
void check(const model::ModelConfig& cfg, bool eager, const Fusions& f, const std::string& what_in,
           const Fusions& base = {}, double tol = 0) {
  auto hw = std::make_shared<const model::Weights<bf16>>(model::dummy_weights<bf16>(cfg, 21));
  check_engines<P::block_size>(cfg, eager, f, what_in, base, tol,
                               [&](const Fusions& x, bool e) { return make_engine<P>(hw, x, e); });
}

/// Each fusion alone and all together.
template <class P>
void check_all(const model::ModelConfig& cfg, bool eager, const std::string& what) {
  check<P>(cfg, eager, Fusions{.rope_kv = true}, what);
  check<P>(cfg, eager, Fusions{.final_norm = true}, what);
  check<P>(cfg, eager, Fusions{.swiglu = true}, what);
  check<P>(cfg, eager, Fusions{.rope_kv = true, .final_norm = true, .swiglu = true}, what);
}

TEST(FusedOps, Qwen3LogitsBitIdenticalGraphsAndEager) {
  auto cfg = gpu_test::small_qwen3(3);
  check_all<CudaBf16>(cfg, false, "qwen3 graphs");
  check_all<CudaBf16>(cfg, true, "qwen3 eager");
}

/// A Llama-shaped model (plain RoPE, no q/k norm) with llama3 RoPE scaling, GQA group 4.
model::ModelConfig small_llama3() {
  auto cfg = gpu_test::small_qwen3(2);
  cfg.architecture = model::Architecture::Llama;
  cfg.qk_norm = false;
  cfg.num_attention_heads = 8;  // GQA group 4
  cfg.num_key_value_heads = 2;
  cfg.head_dim = 128;
  cfg.rope_theta = 500000;
  cfg.rope_scaling.type = decltype(cfg.rope_scaling)::Type::Llama3;
  cfg.rope_scaling.factor = 8;
  cfg.rope_scaling.original_max_position_embeddings = 64;  // scaled frequencies at these lengths
  return cfg;
}

#if defined(PIE_DECODE_LATENCY)
/// Each of `fs` on the bf16 engine, graph-replayed and then eager (the latency paths' tests).
void check_graphs_and_eager(const model::ModelConfig& cfg, std::initializer_list<Fusions> fs, const std::string& what) {
  for (bool eager : {false, true})
    for (const Fusions& f : fs) check<CudaBf16>(cfg, eager, f, what + (eager ? " eager" : " graphs"));
}
#endif

TEST(FusedOps, LlamaWithLlama3RopeScalingLogitsBitIdentical) {
  check_all<CudaBf16>(small_llama3(), false, "llama3 graphs");
}

TEST(FusedOps, L2PrefetchLogitsBitIdenticalGraphsAndEager) {
  auto cfg = gpu_test::small_qwen3(3);
  check<CudaBf16>(cfg, false, Fusions{.l2_rows = 1}, "qwen3 graphs");  // batch-1 steps prefetch
  check<CudaBf16>(cfg, false, Fusions{.l2_rows = 4}, "qwen3 graphs");  // and the bucket-4 decodes
  check<CudaBf16>(cfg, true, Fusions{.l2_rows = 4}, "qwen3 eager");
  check<CudaBf16>(cfg, false, Fusions{.rope_kv = true, .final_norm = true, .l2_rows = 4, .l2_mib = "1"},
                  "qwen3 graphs, budget 1 MiB");  // with the fusions
}

TEST(FusedOps, L2PrefetchKernelTakesTailsAndRunsInAGraph) {
  // Ranges with a last chunk shorter than 4 KB, more chunks than one CTA row, an odd count of
  // ranges; launched plainly and from a captured graph, then the bytes are unchanged.
  const size_t n = (size_t{3} << 20) + 48;
  std::vector<uint8_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = static_cast<uint8_t>(i * 131 + 7);
  uint8_t* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, n), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d, h.data(), n, cudaMemcpyHostToDevice), cudaSuccess);
  const std::vector<engine::PrefetchRange> r = {{d, (size_t{2} << 20) + 16}, {d + (size_t{5} << 19), 4096 + 32}, {d + n - 48, 48}};
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  ops::cuda::l2_prefetch(r, s);
  ops::cuda::l2_prefetch({}, s);  // nothing to do: no launch
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ops::cuda::l2_prefetch(r, s);
  ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&ge, g, 0), cudaSuccess);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cudaGraphLaunch(ge, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  std::vector<uint8_t> back(n);
  ASSERT_EQ(cudaMemcpy(back.data(), d, n, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(std::memcmp(back.data(), h.data(), n), 0);
  EXPECT_THROW(ops::cuda::l2_prefetch({{d + 8, 64}}, s), Error) << "a misaligned range is refused";
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
  cudaFree(d);
}

// The decode attention switches (ops/cuda/attention_decode_plan.hpp): pages of earlier steps
// issued before the kernel's wait, and the split merge in a thread-block cluster (the small test
// contexts split into 2–3 splits of 64 tokens at batches 1 and 4, graphs and eager), on the
// CUDA-core kernel (16-bit cache) and the tensor-core one (fp8 cache), with the RoPE kernel
// writing K/V (the early pages must not read the row it writes).
TEST(FusedOps, DecodeEarlyPagesAndClusterMergeLogitsBitIdentical) {
#if !defined(PIE_DECODE_LATENCY)
  GTEST_SKIP() << "built without -DPIE_DECODE_LATENCY=ON";
#else
  auto cfg = gpu_test::small_qwen3(2);
  check_graphs_and_eager(cfg,
                         {Fusions{.early_pages = true}, Fusions{.cluster_merge = true},
                          Fusions{.rope_kv = true, .early_pages = true, .cluster_merge = true}},
                         "qwen3");
  check<CudaBf16Fp8KV>(cfg, false, Fusions{.early_pages = true, .cluster_merge = true}, "fp8 kv graphs");
#endif
}

// q/k norm + RoPE and the KV write inside decode attention (PIE_FUSED_ROPE_ATTN, compiled with
// -DPIE_DECODE_LATENCY=ON): at the decode-only steps; the mixed steps run the RoPE kernel.
// With the cluster merge (so that every plan of 1-8 splits takes it; one-split plans alone are
// in the kernel test), with the early pages, and with the other fusions; Qwen3 (q/k norm) and
// Llama (plain RoPE, llama3 scaling), block sizes 16 and 8.
TEST(FusedOps, RopeInsideDecodeAttentionLogitsBitIdentical) {
#if !defined(PIE_DECODE_LATENCY)
  GTEST_SKIP() << "built without -DPIE_DECODE_LATENCY=ON";
#else
  auto cfg = gpu_test::small_qwen3(2);
  check_graphs_and_eager(cfg,
                         {Fusions{.cluster_merge = true, .rope_attn = true},
                          Fusions{.early_pages = true, .cluster_merge = true, .rope_attn = true}},
                         "qwen3");
  check<CudaBf16>(cfg, false,
                  Fusions{.rope_kv = true, .final_norm = true, .swiglu = true, .early_pages = true,
                          .cluster_merge = true, .rope_attn = true},
                  "qwen3 graphs, every fusion");
  const auto llama = small_llama3();
  check<CudaBf16>(llama, false, Fusions{.cluster_merge = true, .rope_attn = true}, "llama3 graphs");
  check<Bf16Block8>(cfg, false, Fusions{.cluster_merge = true, .rope_attn = true}, "block 8 graphs");
#endif
}

// Two CTAs per KV head (PIE_DECODE_SPLIT_GROUP; group 4 with PIE_DECODE_SPLIT_GROUP4) on GQA
// groups 8 and 4 at the test's small decode grids: the RoPE inside attention bit-identical to the
// RoPE kernel on the same parts (graphs and eager), and the logits within bf16 rounding of one CTA
// per KV head (the half-group kernel sums its tokens in another order).
TEST(FusedOps, GroupPartsRopeInsideBitIdenticalAndCloseToOneCtaPerKvHead) {
#if !defined(PIE_DECODE_LATENCY)
  GTEST_SKIP() << "built without -DPIE_DECODE_LATENCY=ON";
#else
  auto g8 = gpu_test::small_qwen3(2);
  g8.num_attention_heads = 8;  // GQA group 8, as Qwen3-30B-A3B
  g8.num_key_value_heads = 1;
  auto g4 = gpu_test::small_qwen3(2);
  g4.num_attention_heads = 8;  // GQA group 4, as Qwen3-8B
  for (const auto& [cfg, name] : {std::pair{g8, "group 8"}, std::pair{g4, "group 4"}}) {
    const Fusions parts{.cluster_merge = true, .split_group = true};
    Fusions rope = parts;
    rope.rope_attn = true;
    for (bool eager : {false, true}) check<CudaBf16>(cfg, eager, rope, name, parts);
    check<CudaBf16>(cfg, false, parts, name, Fusions{.cluster_merge = true}, 2e-2);
  }
#endif
}

/// A Qwen3-MoE checkpoint directory of dummy weights (config.json only; the engine loads it with
/// --load-format dummy): 4 layers, sparse at every second one (decoder_sparse_step 2), 8 experts
/// of width 64 with top-k 2, hidden 256, 4 query / 2 KV heads of dim 64 (the GPU's decode kernels
/// take head dims 64, 128, 256; the transformers-built fixtures of tests/moe have 16).
std::string tiny_moe_dir(bool norm_topk_prob) {
  const auto dir = std::filesystem::temp_directory_path() /
                   (std::string("pie_fused_moe_") + (norm_topk_prob ? "norm" : "nonorm"));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
    "hidden_size": 256, "intermediate_size": 192, "moe_intermediate_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "num_experts": 8,
    "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [], "norm_topk_prob": )"
                                     << (norm_topk_prob ? "true" : "false") << R"(,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 1024, "vocab_size": 512,
    "tie_word_embeddings": false, "attention_bias": false, "hidden_act": "silu", "bos_token_id": 1,
    "eos_token_id": 2})";
  return dir.string();
}

/// The small Qwen3-MoE of `dir` with dummy weights and the switches of `f` (check_engines' maker).
std::unique_ptr<Engine<Qwen3Moe, CudaBf16>> make_moe_engine(const std::string& dir, const Fusions& f, bool eager) {
  set_switches(f);
  EngineOptions o = test_options(eager);
  o.model_dir = dir;
  o.load_format = "dummy";
  auto eng = std::make_unique<Engine<Qwen3Moe, CudaBf16>>(o);
  unset_switches();
  return eng;
}

// The residual add + RMSNorm of a sparse layer inside the MoE router's GEMV (PIE_FUSED_MOE_NORM)
// on a Qwen3-MoE of dummy weights with dense layers between the sparse ones, norm_topk_prob on and
// off: logits bit-identical to the norm kernel + router GEMV, graph-replayed and eager, alone and
// with the other batch-1 fusions; and with the batch-1 routing inside the gate_up GEMV
// (PIE_MOE_ROUTE=gate_up, where the build has the MoE decode variants) against the routing kernel,
// the un-permute in the down GEMV's last CTAs (PIE_MOE_UNPERMUTE=down) against its kernel, and all
// three together.
TEST(FusedOps, MoeNormInsideTheRouterBitIdenticalGraphsAndEager) {
  for (bool norm_topk : {true, false}) {
    const std::string dir = tiny_moe_dir(norm_topk);
    const auto cfg = model::load_model_config(dir, true);
    auto make = [&](const Fusions& x, bool e) { return make_moe_engine(dir, x, e); };
    for (bool eager : {false, true}) {
      const std::string what = std::string("qwen3-moe ") + (norm_topk ? "norm_topk" : "raw top-k") +
                               (eager ? " eager" : " graphs");
      check_engines<16>(cfg, eager, Fusions{.moe_norm = true}, what, {}, 0, make);
      check_engines<16>(cfg, eager, Fusions{.final_norm = true, .swiglu = true, .moe_norm = true}, what, {}, 0, make);
      if constexpr (ops::cuda::moe_decode::kVariantsCompiled) {
        check_engines<16>(cfg, eager, Fusions{.moe_route = "gate_up"}, what, Fusions{.moe_route = "cta"}, 0, make);
        check_engines<16>(cfg, eager, Fusions{.moe_unpermute = "down"}, what, Fusions{.moe_unpermute = "kernel"}, 0,
                          make);
        check_engines<16>(cfg, eager, Fusions{.moe_norm = true, .moe_route = "gate_up", .moe_unpermute = "down"}, what,
                          Fusions{.moe_route = "cta", .moe_unpermute = "kernel"}, 0, make);
      }
    }
  }
}

// o_proj's GEMV moving its weights into L2 before its wait (PIE_GEMV_L2_AHEAD): o_proj K = 2048
// (16 heads of 128), so every warp has bytes past its first chunks to prefetch; graphs and eager,
// alone and with the other batch-1 fusions; and the small Qwen3-MoE (its attention is the same).
TEST(FusedOps, GemvL2AheadAfterDecodeAttentionLogitsBitIdentical) {
  auto cfg = gpu_test::small_qwen3(2);
  cfg.num_attention_heads = 16;
  cfg.num_key_value_heads = 4;
  cfg.head_dim = 128;
  for (bool eager : {false, true}) {
    const std::string what = std::string("qwen3 q 2048") + (eager ? " eager" : " graphs");
    check<CudaBf16>(cfg, eager, Fusions{.l2_ahead = true}, what);
    check<CudaBf16>(cfg, eager, Fusions{.final_norm = true, .swiglu = true, .l2_ahead = true}, what);
  }
  const std::string dir = tiny_moe_dir(true);
  const auto moe = model::load_model_config(dir, true);
  auto make = [&](const Fusions& x, bool e) { return make_moe_engine(dir, x, e); };
  check_engines<16>(moe, false, Fusions{.l2_ahead = true}, "qwen3-moe graphs", {}, 0, make);
}

TEST(FusedOps, BlockSize8LogitsBitIdentical) { check_all<Bf16Block8>(gpu_test::small_qwen3(2), false, "block 8"); }

TEST(FusedOps, Fp8KvCacheLogitsBitIdentical) {
  check_all<CudaBf16Fp8KV>(gpu_test::small_qwen3(2), false, "fp8 kv");
}

}  // namespace
}  // namespace pie
