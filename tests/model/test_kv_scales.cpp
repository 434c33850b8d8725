// The fp8 KV cache's scales: kv::KvScales and kv_scale_from_amax (--calculate-kv-scales), and
// load_kv_scales (a checkpoint's vLLM-named k_scale / v_scale tensors): per-tensor and per-head
// tensors read, and every bad tensor refused with a message naming the file and the tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "pie/kv/kv_scales.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/kv_scale_loader.hpp"
#include "test_util.hpp"

namespace pie::model::testing {
namespace {

RawTensor scale_tensor(const std::string& name, std::vector<int64_t> shape, std::vector<float> v,
                       const std::string& dtype = "F32") {
  RawTensor t{name, dtype, std::move(shape), std::vector<unsigned char>(v.size() * 4)};
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

/// The tiny Qwen3 (2 layers, 2 kv heads) plus `extra` tensors; returns its config.
ModelConfig checkpoint(const TempDir& d, const std::vector<RawTensor>& extra) {
  auto t = tiny_qwen3_tensors();
  t.insert(t.end(), extra.begin(), extra.end());
  write_tiny_checkpoint(d.str(), t);
  return load_model_config(d.str());
}

std::string k(int l) { return kv_scale_tensor(l, "k_scale"); }
std::string v(int l) { return kv_scale_tensor(l, "v_scale"); }

TEST(KvScales, NoScaleTensorsIsNothing) {
  TempDir d;
  const auto cfg = checkpoint(d, {});
  EXPECT_FALSE(load_kv_scales(d.str(), cfg).has_value());
}

TEST(KvScales, PerTensorAndPerHeadScalesAreRead) {
  TempDir d;
  // Layer 0: vLLM's per-tensor scalars (shape [] and [1]); layer 1: one per kv head.
  const auto cfg = checkpoint(d, {scale_tensor(k(0), {}, {0.5f}), scale_tensor(v(0), {1}, {0.25f}),
                                  scale_tensor(k(1), {2}, {0.125f, 2.f}), scale_tensor(v(1), {2}, {3.f, 4.f})});
  const auto s = load_kv_scales(d.str(), cfg);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->num_layers, 2);
  EXPECT_EQ(s->num_kv_heads, 2);
  EXPECT_EQ(s->k, (std::vector<float>{0.5f, 0.5f, 0.125f, 2.f}));
  EXPECT_EQ(s->v, (std::vector<float>{0.25f, 0.25f, 3.f, 4.f}));
  EXPECT_EQ(s->k_of(1)[1], 2.f);
  EXPECT_EQ(s->v_of(1)[0], 3.f);
  s->check("test");
}

TEST(KvScales, SomeLayersWithoutScalesAreRefused) {
  TempDir d;
  const auto cfg = checkpoint(d, {scale_tensor(k(0), {}, {1.f}), scale_tensor(v(0), {}, {1.f}),
                                  scale_tensor(k(1), {}, {1.f})});
  EXPECT_TRUE(throws_naming([&] { load_kv_scales(d.str(), cfg); }, {"model.safetensors", v(1), "not found"}));
}

TEST(KvScales, WrongShapeIsRefused) {
  TempDir d;
  const auto cfg = checkpoint(d, {scale_tensor(k(0), {3}, {1.f, 1.f, 1.f}), scale_tensor(v(0), {}, {1.f}),
                                  scale_tensor(k(1), {}, {1.f}), scale_tensor(v(1), {}, {1.f})});
  EXPECT_TRUE(throws_naming([&] { load_kv_scales(d.str(), cfg); }, {"model.safetensors", k(0), "shape [3]"}));
  TempDir d2;
  const auto cfg2 = checkpoint(d2, {scale_tensor(k(0), {1, 1}, {1.f}), scale_tensor(v(0), {}, {1.f}),
                                    scale_tensor(k(1), {}, {1.f}), scale_tensor(v(1), {}, {1.f})});
  EXPECT_TRUE(throws_naming([&] { load_kv_scales(d2.str(), cfg2); }, {k(0), "shape [1, 1]"}));
}

TEST(KvScales, NonPositiveOrNonFiniteValuesAreRefused) {
  const float bad[] = {0.f, -0.5f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  for (float b : bad) {
    TempDir d;
    const auto cfg = checkpoint(d, {scale_tensor(k(0), {}, {1.f}), scale_tensor(v(0), {}, {1.f}),
                                    scale_tensor(k(1), {}, {1.f}), scale_tensor(v(1), {2}, {1.f, b})});
    EXPECT_TRUE(throws_naming([&] { load_kv_scales(d.str(), cfg); },
                              {"model.safetensors", v(1), "kv head 1", "not a positive finite scale"}))
        << b;
  }
}

TEST(KvScales, UnloadableDtypeIsRefused) {
  TempDir d;
  RawTensor i64{k(0), "I64", {}, std::vector<unsigned char>(8, 0)};
  const auto cfg = checkpoint(d, {i64, scale_tensor(v(0), {}, {1.f}), scale_tensor(k(1), {}, {1.f}),
                                  scale_tensor(v(1), {}, {1.f})});
  EXPECT_TRUE(throws_naming([&] { load_kv_scales(d.str(), cfg); }, {"model.safetensors", k(0), "I64"}));
}

TEST(KvScales, ScaleFromAmaxAndCheck) {
  // amax maps to 448 / margin; nothing to calibrate on (zero, non-finite) keeps 1.
  EXPECT_FLOAT_EQ(kv::kv_scale_from_amax(448.f, 1.f), 1.f);
  EXPECT_FLOAT_EQ(kv::kv_scale_from_amax(5.6f, 4.f), 5.6f * 4.f / 448.f);
  EXPECT_EQ(kv::kv_scale_from_amax(0.f, 4.f), 1.f);
  EXPECT_EQ(kv::kv_scale_from_amax(std::numeric_limits<float>::infinity(), 4.f), 1.f);
  EXPECT_EQ(kv::kv_scale_from_amax(std::numeric_limits<float>::quiet_NaN(), 4.f), 1.f);
  auto s = kv::KvScales::ones(3, 2);
  s.check("ones");
  s.v[5] = -1.f;
  EXPECT_TRUE(throws_naming([&] { s.check("src"); }, {"src", "layer 2 kv head 1 v_scale"}));
  s.v.pop_back();
  EXPECT_TRUE(throws_naming([&] { s.check("src"); }, {"src", "want 6"}));
  // head_amax skips padding rows (slot < 0).
  const std::vector<float> x = {1, -2, 3, -4, /*row 1, padding*/ 100, 100, 100, 100, /*row 2*/ -5, 0, 0, 0.5f};
  const std::vector<int64_t> slots = {0, -1, 7};
  float amax[2];
  kv::head_amax(x.data(), 4, 3, slots.data(), 2, 2, amax);
  EXPECT_EQ(amax[0], 5.f);
  EXPECT_EQ(amax[1], 4.f);
}

}  // namespace
}  // namespace pie::model::testing
