#pragma once
/// \file model_text.hpp
/// \brief ModelText: a model's tokenizer and chat template, found the way `pie serve` finds
/// them: tokenizer.json and tokenizer_config.json in the model directory (or a separate
/// tokenizer directory), the embedded ones for the embedded default model.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "pie/core/error.hpp"
#include "pie/tokenizer/chat_template.hpp"
#include "pie/tokenizer/embedded.hpp"
#include "pie/tokenizer/tokenizer.hpp"
#include "pie/tokenizer/tokenizer_json.hpp"

namespace pie::llm {

/// \brief A tokenizer plus the chat template that goes with it (null when the model has none).
struct ModelText {
  tokenizer::Tokenizer tokenizer;
  std::shared_ptr<const tokenizer::ChatTemplate> chat_template;

  /// `model_dir` empty → the embedded tokenizer and template. `tokenizer_src`: a directory or a
  /// tokenizer.json ("embedded" → the built-in one; empty → model_dir). `chat_template_file`:
  /// a template file or tokenizer_config.json (empty → tokenizer_config.json beside the
  /// tokenizer, if there is one). Throws pie::Error naming the missing file.
  static ModelText load(const std::string& model_dir, const std::string& tokenizer_src = {},
                        const std::string& chat_template_file = {}) {
    namespace fs = std::filesystem;
    const std::string src = tokenizer_src.empty() ? model_dir : tokenizer_src;
    const bool embedded = src.empty() || src == "embedded";
    fs::path dir, json;
    if (!embedded) {
      dir = fs::is_directory(src) ? fs::path(src) : fs::path(src).parent_path();
      json = fs::is_directory(src) ? dir / "tokenizer.json" : fs::path(src);
      PIE_CHECK(fs::exists(json), "LLM: no tokenizer: ", json.string(),
                " does not exist (give the tokenizer's directory or tokenizer.json)");
    }
    ModelText t{embedded ? tokenizer::Tokenizer::embedded() : tokenizer::Tokenizer::from_file(json.string()), {}};
    using tokenizer::ChatTemplate;
    if (!chat_template_file.empty())
      t.chat_template = std::make_shared<const ChatTemplate>(ChatTemplate::from_file(chat_template_file));
    else if (embedded)
      t.chat_template = std::make_shared<const ChatTemplate>(ChatTemplate::embedded());
    else if (has_chat_template(dir / "tokenizer_config.json"))
      t.chat_template = std::make_shared<const ChatTemplate>(
          ChatTemplate::from_tokenizer_config((dir / "tokenizer_config.json").string()));
    return t;
  }

 private:
  // A base model's tokenizer_config.json may have no chat_template: then chat() says so.
  static bool has_chat_template(const std::filesystem::path& config) {
    std::ifstream f(config, std::ios::binary);
    if (!f.good()) return false;
    const auto j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
    PIE_CHECK(!j.is_discarded(), "LLM: ", config.string(), " is not valid JSON");
    return j.is_object() && j.contains("chat_template") && !j["chat_template"].is_null();
  }
};

}  // namespace pie::llm
