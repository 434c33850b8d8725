#pragma once
/// \file test_util.hpp
/// \brief Helpers of the model tests: a self-deleting temp directory, a minimal safetensors
/// writer (so broken files can be made byte by byte), and the paths of the reference fixtures.
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace pie::model::testing {

namespace fs = std::filesystem;

/// \brief A fresh directory under the system temp dir, removed with its contents at scope end.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string tag = info ? std::string(info->test_suite_name()) + "_" + info->name() : "x";
    for (char& c : tag) if (c == '/') c = '_';
    path_ = fs::temp_directory_path() / ("pie_model_" + std::to_string(::getpid()) + "_" + tag);
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { std::error_code ec; fs::remove_all(path_, ec); }
  std::string str() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

/// \brief One tensor to write: name, safetensors dtype string, shape and raw little-endian bytes.
struct RawTensor {
  std::string name;
  std::string dtype = "F32";
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
};

inline RawTensor f32_tensor(const std::string& name, std::vector<int64_t> shape, uint32_t seed) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  std::vector<float> v(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& x : v) x = dist(rng);
  RawTensor t{name, "F32", std::move(shape), std::vector<unsigned char>(n * 4)};
  std::memcpy(t.bytes.data(), v.data(), n * 4);
  return t;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Serializes tensors back to back in the given order; `header_edit` may alter the header JSON
/// before it is written (to make a broken file).
inline std::string safetensors_bytes(const std::vector<RawTensor>& tensors,
                                     const std::function<void(nlohmann::json&)>& header_edit = {}) {
  nlohmann::json h = nlohmann::json::object();
  std::string data;
  for (const auto& t : tensors) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape},
                 {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  }
  h["__metadata__"] = {{"format", "pt"}};
  if (header_edit) header_edit(h);
  std::string header = h.dump();
  uint64_t n = header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

/// The HF tensors of a tiny Qwen3 (vocab 32, hidden 16, 2 layers, 4 heads, 2 KV heads,
/// head_dim 8, intermediate 24), independent of the loader's own naming code.
inline nlohmann::json tiny_qwen3_config() {
  return {{"architectures", {"Qwen3ForCausalLM"}}, {"vocab_size", 32}, {"hidden_size", 16},
          {"intermediate_size", 24}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"head_dim", 8}, {"tie_word_embeddings", false}};
}
inline std::vector<RawTensor> tiny_qwen3_tensors() {
  std::vector<RawTensor> t;
  uint32_t seed = 1;
  t.push_back(f32_tensor("model.embed_tokens.weight", {32, 16}, seed++));
  for (int i = 0; i < 2; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    t.push_back(f32_tensor(p + "input_layernorm.weight", {16}, seed++));
    t.push_back(f32_tensor(p + "self_attn.q_proj.weight", {32, 16}, seed++));
    t.push_back(f32_tensor(p + "self_attn.k_proj.weight", {16, 16}, seed++));
    t.push_back(f32_tensor(p + "self_attn.v_proj.weight", {16, 16}, seed++));
    t.push_back(f32_tensor(p + "self_attn.o_proj.weight", {16, 32}, seed++));
    t.push_back(f32_tensor(p + "self_attn.q_norm.weight", {8}, seed++));
    t.push_back(f32_tensor(p + "self_attn.k_norm.weight", {8}, seed++));
    t.push_back(f32_tensor(p + "post_attention_layernorm.weight", {16}, seed++));
    t.push_back(f32_tensor(p + "mlp.gate_proj.weight", {24, 16}, seed++));
    t.push_back(f32_tensor(p + "mlp.up_proj.weight", {24, 16}, seed++));
    t.push_back(f32_tensor(p + "mlp.down_proj.weight", {16, 24}, seed++));
  }
  t.push_back(f32_tensor("model.norm.weight", {16}, seed++));
  t.push_back(f32_tensor("lm_head.weight", {32, 16}, seed++));
  return t;
}
/// Writes config.json and model.safetensors of the tiny Qwen3 into `dir`.
inline void write_tiny_checkpoint(const std::string& dir, const std::vector<RawTensor>& tensors,
                                  const nlohmann::json& config = tiny_qwen3_config()) {
  write_file(dir + "/config.json", config.dump());
  write_file(dir + "/model.safetensors", safetensors_bytes(tensors));
}

/// Directory of the committed HF transformers fixture `name`.
inline std::string fixture_dir(const std::string& name) {
  return std::string(PIE_SOURCE_DIR) + "/tests/reference/fixtures/" + name;
}

/// gtest assertion helper: `fn` throws pie::Error whose message contains every `parts` string.
template <class Fn>
::testing::AssertionResult throws_naming(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const pie::Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts)
      if (msg.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << p << "\"";
    return ::testing::AssertionSuccess() << msg;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-pie exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace pie::model::testing
