#pragma once
// Shared helpers for the tokenizer tests: fixture loading and the genuine Qwen3 files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "pie/tokenizer/tokenizer.hpp"

namespace pie::tokenizer::test {

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline nlohmann::ordered_json fixture(const std::string& name) {
  const std::string path = std::string(PIE_SOURCE_DIR) + "/tests/reference/tokenizer/" + name;
  std::ifstream f(path);
  if (!f.good()) throw std::runtime_error("missing fixture " + path);
  return nlohmann::ordered_json::parse(f);
}

inline std::string qwen_dir() { return std::string(PIE_SOURCE_DIR) + "/../shared/models/Qwen3-8B"; }
inline bool have_qwen() { return std::filesystem::exists(qwen_dir() + "/tokenizer.json"); }

/// The genuine Qwen3 tokenizer, loaded once per test binary.
inline const Tokenizer& qwen() {
  static const Tokenizer t = Tokenizer::from_file(qwen_dir() + "/tokenizer.json");
  return t;
}

#define PIE_REQUIRE_QWEN()                                                                       \
  if (!::pie::tokenizer::test::have_qwen())                                                       \
  GTEST_SKIP() << "genuine Qwen3-8B files not found at " << ::pie::tokenizer::test::qwen_dir() \
               << " (CI has them)"

/// The input bytes of an encode case: "text", or "hex" for the invalid UTF-8 ones.
inline std::string case_input(const nlohmann::ordered_json& c) {
  if (c.contains("text")) return c["text"].get<std::string>();
  const std::string hex = c["hex"].get<std::string>();
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

}  // namespace pie::tokenizer::test
