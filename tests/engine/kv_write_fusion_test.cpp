// When the GPU forward context lets the q/k RoPE kernel write a layer's K/V into the cache
// (PIE_FUSED_ROPE_KV=1) and when attention() still runs kv_write: engine/kv_write_fusion.hpp,
// host logic only, and the environment switches of the fusions (engine/fusion_switches.hpp).
// The kernels themselves: tests/cuda/test_rope_kv.cu.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "pie/engine/fusion_switches.hpp"
#include "pie/engine/kv_write_fusion.hpp"

namespace {
using pie::engine::KvWriteFusion;

int qkv_a = 0, qkv_b = 0;  // two activation buffers (only their addresses matter)

TEST(KvWriteFusion, OffNeverFuses) {
  KvWriteFusion f(false, 4);
  f.begin_step();
  for (int l = 0; l < 4; ++l) {
    EXPECT_EQ(f.on_rope(&qkv_a), -1);
    EXPECT_FALSE(f.on_attention(l, &qkv_a));
  }
}

TEST(KvWriteFusion, LayersInOrderAreFusedEveryStep) {
  KvWriteFusion f(true, 3);
  for (int step = 0; step < 2; ++step) {
    f.begin_step();
    for (int l = 0; l < 3; ++l) {
      EXPECT_EQ(f.on_rope(&qkv_a), l) << "step " << step;
      EXPECT_TRUE(f.on_attention(l, &qkv_a)) << "step " << step;
    }
    EXPECT_EQ(f.on_rope(&qkv_a), -1) << "no layer past the last";
  }
}

TEST(KvWriteFusion, AnOpBetweenRopeAndAttentionMeansKvWriteAgain) {
  KvWriteFusion f(true, 2);
  f.begin_step();
  EXPECT_EQ(f.on_rope(&qkv_a), 0);
  f.on_other_op();  // e.g. a model's own op on qkv after the rotation
  EXPECT_FALSE(f.on_attention(0, &qkv_a));
  EXPECT_EQ(f.on_rope(&qkv_a), 1);  // the next layer fuses again
  EXPECT_TRUE(f.on_attention(1, &qkv_a));
}

TEST(KvWriteFusion, AnotherBufferMeansKvWriteAgain) {
  KvWriteFusion f(true, 2);
  f.begin_step();
  EXPECT_EQ(f.on_rope(&qkv_a), 0);
  EXPECT_FALSE(f.on_attention(0, &qkv_b));
}

TEST(KvWriteFusion, AttentionWithoutRopeWritesItself) {
  KvWriteFusion f(true, 2);
  f.begin_step();
  EXPECT_FALSE(f.on_attention(0, &qkv_a));  // a model without RoPE (ALiBi, NoPE)
  EXPECT_EQ(f.on_rope(&qkv_a), 1);          // the layer after the last attention
  EXPECT_TRUE(f.on_attention(1, &qkv_a));
}

TEST(KvWriteFusion, LayersOutOfOrderAreRefusedWithAMessage) {
  KvWriteFusion f(true, 4);
  f.begin_step();
  EXPECT_EQ(f.on_rope(&qkv_a), 0);
  try {
    f.on_attention(2, &qkv_a);
    FAIL() << "no error";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("PIE_FUSED_ROPE_KV=0"), std::string::npos) << e.what();
  }
}

TEST(KvWriteFusion, StepStartsAtLayerZero) {
  KvWriteFusion f(true, 4);
  f.begin_step();
  EXPECT_EQ(f.on_rope(&qkv_a), 0);
  EXPECT_TRUE(f.on_attention(0, &qkv_a));
  EXPECT_EQ(f.on_rope(&qkv_a), 1);  // the step ends here (e.g. an exception); the next begins
  f.begin_step();
  EXPECT_EQ(f.on_rope(&qkv_a), 0);
}

TEST(FusionSwitches, EnvironmentValues) {
  using pie::engine::env_switch;
  EXPECT_FALSE(env_switch("X", nullptr));
  EXPECT_FALSE(env_switch("X", "0"));
  EXPECT_FALSE(env_switch("X", ""));
  EXPECT_TRUE(env_switch("X", "1"));
  // A switch that is on by default: unset and empty take the default, "0" still turns it off.
  EXPECT_TRUE(env_switch("X", nullptr, true));
  EXPECT_TRUE(env_switch("X", "", true));
  EXPECT_FALSE(env_switch("X", "0", true));
  try {
    env_switch("PIE_FUSED_ROPE_KV", "yes");
    FAIL() << "no error";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("PIE_FUSED_ROPE_KV must be 0 or 1"), std::string::npos) << e.what();
  }
}

// env_count, the counts' parser (PIE_L2_PREFETCH, PIE_DECODE_SMALL_SPLIT_TOKENS): decimal digits
// alone, 0 to 2^20; unset or empty take the default; anything else names the variable.
TEST(FusionSwitches, EnvironmentCounts) {
  EXPECT_EQ(pie::env_count("X", nullptr, 7), 7);
  EXPECT_EQ(pie::env_count("X", "", -1), -1);
  EXPECT_EQ(pie::env_count("X", "0", 7), 0);
  EXPECT_EQ(pie::env_count("X", "512", 7), 512);
  EXPECT_EQ(pie::env_count("X", "1048576", 7), 1 << 20);
  for (const char* bad : {"1048577", "-1", "+1", " 1", "1x", "x"}) {
    try {
      pie::env_count("PIE_SOME_COUNT", bad, 0);
      ADD_FAILURE() << bad << " accepted";
    } catch (const pie::Error& e) {
      EXPECT_NE(std::string(e.what()).find("PIE_SOME_COUNT must be a non-negative whole number"), std::string::npos)
          << e.what();
    }
  }
}

TEST(FusionSwitches, FromEnvironmentOffByDefault) {
  unsetenv("PIE_FUSED_ROPE_KV");
  unsetenv("PIE_FUSED_FINAL_NORM");
  auto f = pie::engine::FusionSwitches::from_env();
  EXPECT_FALSE(f.rope_kv);
  EXPECT_FALSE(f.final_norm);
  setenv("PIE_FUSED_FINAL_NORM", "1", 1);
  f = pie::engine::FusionSwitches::from_env();
  EXPECT_FALSE(f.rope_kv);
  EXPECT_TRUE(f.final_norm);
  EXPECT_FALSE(f.swiglu);
  unsetenv("PIE_FUSED_FINAL_NORM");
  setenv("PIE_FUSED_SWIGLU", "1", 1);
  f = pie::engine::FusionSwitches::from_env();
  EXPECT_TRUE(f.swiglu);
  EXPECT_FALSE(f.rope_kv || f.final_norm);
  setenv("PIE_FUSED_SWIGLU", "on", 1);
  EXPECT_THROW(pie::engine::FusionSwitches::from_env(), pie::Error) << "only 0 or 1";
  unsetenv("PIE_FUSED_SWIGLU");
  EXPECT_FALSE(pie::engine::FusionSwitches::from_env(true).gemv_l2_ahead) << "opt-in, whatever the build";
  setenv("PIE_GEMV_L2_AHEAD", "1", 1);
  EXPECT_TRUE(pie::engine::FusionSwitches::from_env().gemv_l2_ahead);
  setenv("PIE_GEMV_L2_AHEAD", "yes", 1);
  EXPECT_THROW(pie::engine::FusionSwitches::from_env(), pie::Error) << "only 0 or 1";
  unsetenv("PIE_GEMV_L2_AHEAD");
}

TEST(FusionSwitches, SwiGluOnlyForOneRowThroughThe16BitGemvWithoutTensorParallelism) {
  using pie::engine::swiglu_in_gemv;
  using pie::engine::SwiGluStep;
  SwiGluStep b1;  // a batch-1 decode step of the default bf16 engine
  b1.tokens = 1;
  b1.gemv_rows = 1;
  b1.width_fits = true;
  EXPECT_TRUE(swiglu_in_gemv(true, b1));
  EXPECT_FALSE(swiglu_in_gemv(false, b1)) << "switch off";
  auto with = [&](auto f) { SwiGluStep s = b1; f(s); return swiglu_in_gemv(true, s); };
  EXPECT_FALSE(with([](SwiGluStep& s) { s.tokens = 2; })) << "batch 2: cuBLASLt's GEMM";
  EXPECT_FALSE(with([](SwiGluStep& s) { s.tensor_parallel = true; }));
  EXPECT_FALSE(with([](SwiGluStep& s) { s.gemv_rows = 0; })) << "batch invariance: no GEMV";
  EXPECT_FALSE(with([](SwiGluStep& s) { s.fp8_producer = true; })) << "the SwiGLU kernel quantizes for fp8";
  EXPECT_FALSE(with([](SwiGluStep& s) { s.width_fits = false; })) << "expert width past 48 KB of shared memory";
}

TEST(FusionSwitches, MoeNormOnByDefaultOnlyForOneRowWhoseRouterRunsTheGemv) {
  using pie::engine::FusionSwitches;
  using pie::engine::moe_norm_in_router;
  using pie::engine::MoeNormStep;
  unsetenv("PIE_FUSED_MOE_NORM");
  EXPECT_TRUE(FusionSwitches::from_env(false).moe_norm) << "on by default, whatever the build";
  setenv("PIE_FUSED_MOE_NORM", "0", 1);
  EXPECT_FALSE(FusionSwitches::from_env().moe_norm);
  setenv("PIE_FUSED_MOE_NORM", "1", 1);
  EXPECT_TRUE(FusionSwitches::from_env().moe_norm);
  setenv("PIE_FUSED_MOE_NORM", "2", 1);
  EXPECT_THROW(FusionSwitches::from_env(), pie::Error) << "only 0 or 1";
  unsetenv("PIE_FUSED_MOE_NORM");
  MoeNormStep b1;  // a batch-1 decode step of Qwen3-30B-A3B's bf16 engine
  b1.tokens = 1;
  b1.gemv_rows = 1;
  b1.hidden_fits = true;
  EXPECT_TRUE(moe_norm_in_router(true, b1));
  EXPECT_FALSE(moe_norm_in_router(false, b1)) << "switch off";
  auto with = [&](auto f) { MoeNormStep s = b1; f(s); return moe_norm_in_router(true, s); };
  EXPECT_FALSE(with([](MoeNormStep& s) { s.tokens = 2; })) << "batch 2: the router through cuBLASLt";
  EXPECT_FALSE(with([](MoeNormStep& s) { s.gemv_rows = 0; })) << "batch invariance: no GEMV";
  EXPECT_FALSE(with([](MoeNormStep& s) { s.hidden_fits = false; })) << "hidden size past the norm's CTA";
  EXPECT_FALSE(with([](MoeNormStep& s) { s.router_fused = true; })) << "the fused router + routing kernel";
}

TEST(FusionSwitches, RopeInAttentionOnlyAtDecodeStepsWhosePlanTakesIt) {
  using pie::engine::rope_in_attention;
  using pie::engine::RopeAttnStep;
  using pie::engine::FusionSwitches;
  unsetenv("PIE_FUSED_ROPE_ATTN");
  EXPECT_FALSE(FusionSwitches::from_env(/*latency_compiled=*/false).rope_attn) << "off in a build without the paths";
  EXPECT_TRUE(FusionSwitches::from_env(true).rope_attn) << "on by default in a build with them";
  EXPECT_TRUE(FusionSwitches::from_env(true).rope_attn_small_grids_only) << "the default: small grids only";
  setenv("PIE_FUSED_ROPE_ATTN", "", 1);
  EXPECT_TRUE(FusionSwitches::from_env(true).rope_attn_small_grids_only) << "empty is unset";
  setenv("PIE_FUSED_ROPE_ATTN", "1", 1);
  for (bool compiled : {false, true}) {
    EXPECT_TRUE(FusionSwitches::from_env(compiled).rope_attn) << compiled;
    EXPECT_FALSE(FusionSwitches::from_env(compiled).rope_attn_small_grids_only) << "asked for: every plan";
  }
  setenv("PIE_FUSED_ROPE_ATTN", "0", 1);
  EXPECT_FALSE(FusionSwitches::from_env(true).rope_attn);
  EXPECT_FALSE(FusionSwitches::from_env(true).rope_attn_small_grids_only);
  setenv("PIE_FUSED_ROPE_ATTN", "yes", 1);
  EXPECT_THROW(FusionSwitches::from_env(), pie::Error) << "only 0 or 1";
  unsetenv("PIE_FUSED_ROPE_ATTN");
  RopeAttnStep d;  // 4 decode rows, a plan of one split (or a cluster merge)
  d.tokens = 4;
  d.decodes = 4;
  d.plan_takes_it = true;
  EXPECT_TRUE(rope_in_attention(true, d));
  EXPECT_FALSE(rope_in_attention(false, d)) << "switch off";
  EXPECT_FALSE(rope_in_attention(true, d, /*small_grids_only=*/true)) << "a grid of more than one wave";
  d.small_grid = true;
  EXPECT_TRUE(rope_in_attention(true, d, true)) << "a grid of one wave at most";
  EXPECT_TRUE(rope_in_attention(true, d, false));
  auto with = [&](auto f) { RopeAttnStep s = d; f(s); return rope_in_attention(true, s); };
  EXPECT_FALSE(with([](RopeAttnStep& s) { s.tokens = 20; })) << "prompt rows beside the decodes";
  EXPECT_FALSE(with([](RopeAttnStep& s) { s.decodes = 0; s.tokens = 0; })) << "an empty step";
  EXPECT_FALSE(with([](RopeAttnStep& s) { s.batch_invariant = true; })) << "decode rows on the prefill kernel";
  EXPECT_FALSE(with([](RopeAttnStep& s) { s.calculating_kv_scales = true; })) << "scales read the rotated K";
  EXPECT_FALSE(with([](RopeAttnStep& s) { s.plan_takes_it = false; })) << "fp8 cache, or splits without a cluster";
}

TEST(FusionSwitches, FinalNormOnlyForOneRowSampledOnceThroughTheGemv) {
  using pie::engine::final_norm_in_lm_head;
  using pie::engine::FinalNormStep;
  FinalNormStep b1;  // a batch-1 decode step of the default engine
  b1.tokens = 1;
  b1.samples = 1;
  b1.lm_head_gemv_rows = 1;
  b1.hidden_fits = true;
  EXPECT_TRUE(final_norm_in_lm_head(true, b1));
  EXPECT_FALSE(final_norm_in_lm_head(false, b1)) << "switch off";
  auto with = [&](auto f) { FinalNormStep s = b1; f(s); return final_norm_in_lm_head(true, s); };
  EXPECT_FALSE(with([](FinalNormStep& s) { s.tokens = 2; })) << "batch 2";
  EXPECT_FALSE(with([](FinalNormStep& s) { s.samples = 2; })) << "a 1-token prompt drawn twice (n = 2)";
  EXPECT_FALSE(with([](FinalNormStep& s) { s.prompt_rows = 1; })) << "prompt_logprobs read the normed rows";
  EXPECT_FALSE(with([](FinalNormStep& s) { s.tensor_parallel = true; }));
  EXPECT_FALSE(with([](FinalNormStep& s) { s.lm_head_gemv_rows = 0; })) << "batch invariance: cuBLASLt lm_head";
  EXPECT_FALSE(with([](FinalNormStep& s) { s.hidden_fits = false; })) << "hidden size > 4096";
}

}  // namespace
