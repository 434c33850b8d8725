// safetensors reading and checkpoint validation: each corruption of a file or directory stops
// loading with a pie::Error that names the file and, where there is one, the tensor.
#include <gtest/gtest.h>

#include "pie/model/load.hpp"
#include "pie/model/safetensors.hpp"
#include "test_util.hpp"

namespace pie::model {
namespace {

using nlohmann::json;
using testing::RawTensor;
using testing::TempDir;
using testing::throws_naming;

RawTensor u16_tensor(const std::string& name, const std::string& dtype, std::vector<uint16_t> v,
                     std::vector<int64_t> shape) {
  RawTensor t{name, dtype, std::move(shape), std::vector<unsigned char>(v.size() * 2)};
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

TEST(Safetensors, F32_F16_BF16_ReadAndConvert) {
  TempDir tmp;
  std::vector<float> want = {1.5f, -2.25f, 0.1f, 3e-5f, 65504.0f, -0.0f};
  RawTensor a{"a", "F32", {2, 3}, std::vector<unsigned char>(24)};
  std::memcpy(a.bytes.data(), want.data(), 24);
  std::vector<uint16_t> h, b;
  for (float x : want) { h.push_back(f16::from_float(x)); b.push_back(bf16::from_float(x)); }
  // One odd-sized tensor first, so the following tensors sit at unaligned offsets.
  RawTensor odd{"odd", "U8", {3}, {1, 2, 3}};
  std::string path = tmp.file("m.safetensors");
  testing::write_file(path, testing::safetensors_bytes(
                                {odd, u16_tensor("h", "F16", h, {6}), a, u16_tensor("b", "BF16", b, {3, 2})}));
  SafetensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const TensorInfo* ta = f.find("a");
  ASSERT_TRUE(ta);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta->dtype, DType::F32);
  EXPECT_FALSE(f.find("odd")->dtype.has_value());  // accepted in a header, not loadable
  std::vector<float> got(6);
  read_elements(*ta, 0, 6, got.data());
  EXPECT_EQ(got, want);
  read_elements(*f.find("h"), 0, 6, got.data());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(got[i], f16::to_float(h[i])) << i;
  read_elements(*f.find("b"), 0, 6, got.data());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(got[i], bf16::to_float(b[i])) << i;
  // F32 → bf16 rounds to nearest even; a sub-range lands at the right elements.
  std::vector<bf16> gb(3);
  read_elements(*ta, 3, 3, gb.data());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(gb[i].bits, b[3 + i]) << i;
  EXPECT_TRUE(throws_naming([&] { read_elements(*f.find("odd"), 0, 3, gb.data()); },
                            {path, "'odd'", "U8"}));
}

TEST(Safetensors, TruncatedData_NamesFileAndTensor) {
  TempDir tmp;
  std::string bytes = testing::safetensors_bytes(
      {testing::f32_tensor("first", {4}, 1), testing::f32_tensor("second", {8}, 2)});
  std::string path = tmp.file("t.safetensors");
  testing::write_file(path, bytes.substr(0, bytes.size() - 5));
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "'second'", "truncated"}));
}

TEST(Safetensors, TruncatedHeader_NamesFile) {
  TempDir tmp;
  std::string bytes = testing::safetensors_bytes({testing::f32_tensor("w", {4}, 1)});
  std::string path = tmp.file("t.safetensors");
  testing::write_file(path, bytes.substr(0, 20));
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "header length"}));
  testing::write_file(path, bytes.substr(0, 5));
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "truncated"}));
  testing::write_file(path, "");
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "truncated"}));
}

TEST(Safetensors, BadHeaderJson_NamesFile) {
  TempDir tmp;
  std::string path = tmp.file("bad.safetensors");
  std::string header = "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], ";  // cut short
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  testing::write_file(path, bytes + header + std::string(4, '\0'));
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "bad safetensors header JSON"}));
  bytes[0] = 2;
  testing::write_file(path, bytes + "[]");
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "object"}));
}

TEST(Safetensors, OffsetsOutOfRange_NamesFileAndTensor) {
  TempDir tmp;
  std::string path = tmp.file("o.safetensors");
  auto write = [&](std::function<void(json&)> edit) {
    testing::write_file(path, testing::safetensors_bytes(
                                  {testing::f32_tensor("a", {4}, 1), testing::f32_tensor("b", {4}, 2)}, edit));
  };
  write([](json& h) { h["b"]["data_offsets"] = {16, 48}; h["b"]["shape"] = {8}; });
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "'b'", "past the data section"}));
  write([](json& h) { h["b"]["data_offsets"] = {20, 16}; });
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "'b'", "begin > end"}));
  write([](json& h) { h["b"]["data_offsets"] = {0, 16}; });  // same bytes as "a"
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "overlaps", "'a'", "'b'"}));
  write([](json& h) { h["a"]["data_offsets"] = {0, 12}; });  // 4 floats need 16 bytes
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "'a'", "needs 16"}));
  write([](json& h) { h["a"]["data_offsets"] = {-1, 16}; });
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "'a'", "data_offsets"}));
  write([](json& h) { h["a"]["shape"] = {2, -2}; });
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "'a'", "shape"}));
  write([](json& h) { h["a"].erase("dtype"); });
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "'a'", "dtype"}));
}

TEST(Safetensors, UnknownDtype_NamesFileAndTensor) {
  TempDir tmp;
  std::string path = tmp.file("d.safetensors");
  testing::write_file(path, testing::safetensors_bytes({testing::f32_tensor("w", {4}, 1)},
                                                       [](json& h) { h["w"]["dtype"] = "F99"; }));
  EXPECT_TRUE(throws_naming([&] { SafetensorsFile f(path); }, {path, "'w'", "unknown dtype F99"}));
}

// ---- checkpoint directories ------------------------------------------------------------------

TEST(Checkpoint, NoSafetensors_NamesDirectory) {
  TempDir tmp;
  EXPECT_TRUE(throws_naming([&] { Checkpoint c(tmp.str()); }, {tmp.str(), "model.safetensors"}));
}

TEST(Checkpoint, Sharded_IndexErrors_NameIndexShardAndTensor) {
  TempDir tmp;
  auto t = testing::tiny_qwen3_tensors();
  testing::write_file(tmp.file("s1.safetensors"), testing::safetensors_bytes({t[0], t[1]}));
  testing::write_file(tmp.file("s2.safetensors"), testing::safetensors_bytes({t[2]}));
  std::string index = tmp.file("model.safetensors.index.json");
  json map = {{t[0].name, "s1.safetensors"}, {t[1].name, "s1.safetensors"}, {t[2].name, "s2.safetensors"}};
  testing::write_file(index, json{{"metadata", json::object()}, {"weight_map", map}}.dump());
  {
    Checkpoint c(tmp.str());
    EXPECT_EQ(c.files().size(), 2u);
    EXPECT_EQ(c.at(t[2].name).file, tmp.file("s2.safetensors"));
    EXPECT_TRUE(throws_naming([&] { c.at("lm_head.weight"); }, {index, "'lm_head.weight'", "not found"}));
  }
  json bad = map;
  bad[t[2].name] = "s1.safetensors";  // mapped to a shard that lacks it
  testing::write_file(index, json{{"weight_map", bad}}.dump());
  EXPECT_TRUE(throws_naming([&] { Checkpoint c(tmp.str()); },
                            {index, t[2].name, tmp.file("s1.safetensors")}));
  bad = map;
  bad[t[2].name] = "s3.safetensors";  // missing shard file
  testing::write_file(index, json{{"weight_map", bad}}.dump());
  EXPECT_TRUE(throws_naming([&] { Checkpoint c(tmp.str()); }, {tmp.file("s3.safetensors")}));
  bad[t[2].name] = "../s2.safetensors";
  testing::write_file(index, json{{"weight_map", bad}}.dump());
  EXPECT_TRUE(throws_naming([&] { Checkpoint c(tmp.str()); }, {index, t[2].name, "bad shard file name"}));
  testing::write_file(index, json{{"metadata", json::object()}}.dump());
  EXPECT_TRUE(throws_naming([&] { Checkpoint c(tmp.str()); }, {index, "weight_map"}));
}

// ---- load_weights / load_model errors --------------------------------------------------------

TEST(LoadErrors, MissingTensor_NamesFileAndTensor) {
  TempDir tmp;
  auto t = testing::tiny_qwen3_tensors();
  std::erase_if(t, [](const RawTensor& r) { return r.name == "model.layers.1.self_attn.k_norm.weight"; });
  testing::write_tiny_checkpoint(tmp.str(), t);
  ModelConfig cfg = load_model_config(tmp.str());
  EXPECT_TRUE(throws_naming([&] { load_weights<float>(tmp.str(), cfg); },
                            {tmp.file("model.safetensors"), "'model.layers.1.self_attn.k_norm.weight'", "not found"}));
}

TEST(LoadErrors, UntiedWithoutLmHead_NamesTensor) {
  TempDir tmp;
  auto t = testing::tiny_qwen3_tensors();
  t.pop_back();  // lm_head.weight
  testing::write_tiny_checkpoint(tmp.str(), t);
  EXPECT_TRUE(throws_naming([&] { load_model<float>(tmp.str()); }, {"'lm_head.weight'"}));
  json cfg = testing::tiny_qwen3_config();
  cfg["tie_word_embeddings"] = true;  // now lm_head is not needed
  testing::write_tiny_checkpoint(tmp.str(), t, cfg);
  EXPECT_NO_THROW(load_model<float>(tmp.str()));
}

TEST(LoadErrors, WrongShape_NamesFileTensorAndBothShapes) {
  TempDir tmp;
  auto t = testing::tiny_qwen3_tensors();
  for (auto& r : t)
    if (r.name == "model.layers.0.mlp.up_proj.weight") r = testing::f32_tensor(r.name, {16, 24}, 9);
  testing::write_tiny_checkpoint(tmp.str(), t);
  EXPECT_TRUE(throws_naming([&] { load_model<bf16>(tmp.str()); },
                            {tmp.file("model.safetensors"), "'model.layers.0.mlp.up_proj.weight'",
                             "[16, 24]", "expected [24, 16]"}));
}

TEST(LoadErrors, UnloadableDtype_NamesFileAndTensor) {
  TempDir tmp;
  auto t = testing::tiny_qwen3_tensors();
  t[1].dtype = "I32";  // same byte size as F32, so the header itself is valid
  testing::write_tiny_checkpoint(tmp.str(), t);
  EXPECT_TRUE(throws_naming([&] { load_model<float>(tmp.str()); },
                            {tmp.file("model.safetensors"), "'" + t[1].name + "'", "I32"}));
}

TEST(LoadErrors, TruncatedShard_NamesFileAndTensor) {
  TempDir tmp;
  auto t = testing::tiny_qwen3_tensors();
  testing::write_tiny_checkpoint(tmp.str(), t);
  std::filesystem::resize_file(tmp.file("model.safetensors"),
                               std::filesystem::file_size(tmp.file("model.safetensors")) - 1);
  // Data is written in vector order: cutting the last byte truncates the last tensor.
  EXPECT_TRUE(throws_naming([&] { load_model<float>(tmp.str()); },
                            {tmp.file("model.safetensors"), "'" + t.back().name + "'", "truncated"}));
}

TEST(LoadErrors, UnknownArchitecture_NamesConfigAndArchitecture) {
  TempDir tmp;
  json cfg = testing::tiny_qwen3_config();
  cfg["architectures"] = {"GemmaForCausalLM"};
  testing::write_tiny_checkpoint(tmp.str(), testing::tiny_qwen3_tensors(), cfg);
  EXPECT_TRUE(throws_naming([&] { load_model<float>(tmp.str()); },
                            {tmp.file("config.json"), "GemmaForCausalLM"}));
  EXPECT_TRUE(throws_naming([&] { load_model<float>(tmp.str(), LoadFormat::Dummy); },
                            {"GemmaForCausalLM"}));
}

TEST(LoadErrors, LoadFormatNames) {
  EXPECT_EQ(parse_load_format("auto"), LoadFormat::Auto);
  EXPECT_EQ(parse_load_format("safetensors"), LoadFormat::Safetensors);
  EXPECT_EQ(parse_load_format("dummy"), LoadFormat::Dummy);
  EXPECT_TRUE(throws_naming([] { parse_load_format("pt"); }, {"--load-format pt"}));
}

}  // namespace
}  // namespace pie::model
