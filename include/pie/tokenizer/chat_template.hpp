#pragma once
/// \file chat_template.hpp
/// \brief pie::tokenizer::ChatTemplate: runs a model's Jinja chat template (the text in
/// tokenizer_config.json, or a file given with --chat-template) with pie's Jinja-subset
/// interpreter, passing the same variables as transformers' apply_chat_template, so output is
/// byte-identical. A template using constructs outside the subset fails at load or render
/// with an error naming the construct.
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "pie/core/error.hpp"
#include "pie/tokenizer/jinja_eval.hpp"
#include "pie/tokenizer/qwen3_chat_template.hpp"

namespace pie::tokenizer {

/// \brief A parsed chat template plus the special-token strings it may reference.
class ChatTemplate {
 public:
  /// Template source text; `bos`/`eos` become `bos_token`/`eos_token` when non-empty.
  static ChatTemplate from_string(std::string source, std::string bos = {}, std::string eos = {}) {
    ChatTemplate t;
    t.source_ = std::move(source);
    t.body_ = std::make_shared<jinja::Body>(jinja::parse_template(t.source_));
    t.bos_ = std::move(bos);
    t.eos_ = std::move(eos);
    return t;
  }

  /// The `chat_template` of a tokenizer_config.json (a string, or a list of named templates
  /// where "default" is used and "tool_use", if present, is used when tools are given).
  static ChatTemplate from_tokenizer_config(const std::string& path) {
    const auto cfg = nlohmann::ordered_json::parse(read_file(path));
    PIE_CHECK(cfg.contains("chat_template"), path, ": no chat_template");
    auto token = [&](const char* k) -> std::string {
      if (!cfg.contains(k) || cfg[k].is_null()) return {};
      return cfg[k].is_object() ? cfg[k].value("content", "") : cfg[k].get<std::string>();
    };
    const auto& ct = cfg["chat_template"];
    if (ct.is_string()) return from_string(ct.get<std::string>(), token("bos_token"), token("eos_token"));
    std::string def, tool;
    for (const auto& t : ct) {
      if (t.value("name", "") == "default") def = t.value("template", "");
      if (t.value("name", "") == "tool_use") tool = t.value("template", "");
    }
    PIE_CHECK(!def.empty(), path, ": chat_template list has no \"default\" entry");
    ChatTemplate r = from_string(def, token("bos_token"), token("eos_token"));
    if (!tool.empty()) r.tool_body_ = std::make_shared<jinja::Body>(jinja::parse_template(tool));
    return r;
  }

  /// `--chat-template FILE`: a tokenizer_config.json, or a file holding the template text.
  static ChatTemplate from_file(const std::string& path) {
    if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) return from_tokenizer_config(path);
    return from_string(read_file(path));
  }

  /// The genuine Qwen3 template, for the embedded default model.
  static ChatTemplate embedded() {
    static const ChatTemplate t = from_string(embedded_data::kQwen3ChatTemplate, "", "<|im_end|>");
    return t;
  }

  /// Renders `messages` (a list of {role, content, ...}) with `options`: add_generation_prompt,
  /// tools, documents, and any other key (enable_thinking, ...) as a template variable — as
  /// apply_chat_template(messages, tools=..., add_generation_prompt=..., **kwargs) does.
  /// Key order matters for `tojson`, hence ordered_json (parse request bodies with it).
  std::string render(const nlohmann::ordered_json& messages,
                     const nlohmann::ordered_json& options = nlohmann::ordered_json::object()) const {
    PIE_CHECK(messages.is_array(), "chat template: messages must be a list");
    PIE_CHECK(options.is_null() || options.is_object(), "chat template: options must be an object");
    std::unordered_map<std::string, jinja::Value> vars;
    vars["messages"] = jinja::Value::view(messages);
    vars["tools"] = jinja::Value::of(nullptr);
    vars["documents"] = jinja::Value::of(nullptr);
    vars["add_generation_prompt"] = jinja::Value::of(false);
    if (!bos_.empty()) vars["bos_token"] = jinja::Value::of(bos_);
    if (!eos_.empty()) vars["eos_token"] = jinja::Value::of(eos_);
    bool has_tools = false, continue_final = false;
    if (options.is_object())
      for (auto it = options.begin(); it != options.end(); ++it) {
        if (it.key() == "continue_final_message") {  // an apply_chat_template argument, not a variable
          continue_final = it.value().is_boolean() && it.value().get<bool>();
          continue;
        }
        vars[it.key()] = jinja::Value::view(it.value());
        if (it.key() == "tools") has_tools = !it.value().is_null();
      }
    jinja::Interpreter in(std::move(vars));
    std::string out = in.render(has_tools && tool_body_ ? *tool_body_ : *body_);
    return continue_final ? cut_after_final_message(std::move(out), messages) : out;
  }
  /// Same, for nlohmann::json input (whose objects are key-sorted: tojson output then lists
  /// keys alphabetically, which may differ from what the client sent).
  std::string render(const nlohmann::json& messages, const nlohmann::json& options) const {
    return render(nlohmann::ordered_json::parse(messages.dump()), nlohmann::ordered_json::parse(options.dump()));
  }

  /// Renders with exactly `variables` (an object) as the template's globals.
  std::string render_variables(const nlohmann::ordered_json& variables) const {
    PIE_CHECK(variables.is_object(), "chat template: variables must be an object");
    std::unordered_map<std::string, jinja::Value> vars;
    for (auto it = variables.begin(); it != variables.end(); ++it) vars[it.key()] = jinja::Value::view(it.value());
    jinja::Interpreter in(std::move(vars));
    return in.render(*body_);
  }

  const std::string& source() const { return source_; }
  const std::string& bos_token() const { return bos_; }
  const std::string& eos_token() const { return eos_; }

 private:
  /// continue_final_message: end the prompt right after the last message's text (so the model
  /// continues it), with transformers' rule for templates that trim trailing whitespace.
  static std::string cut_after_final_message(std::string out, const nlohmann::ordered_json& messages) {
    PIE_CHECK(!messages.empty(), "chat template: continue_final_message needs a message");
    const auto& c = messages.back().contains("content") ? messages.back()["content"] : nlohmann::ordered_json();
    std::string final_text;
    if (c.is_string()) {
      final_text = c.get<std::string>();
    } else if (c.is_array()) {
      for (auto it = c.rbegin(); it != c.rend() && final_text.empty(); ++it)
        if (it->contains("text")) final_text = (*it)["text"].get<std::string>();
    }
    const std::string stripped = jinja::builtin::strip(final_text, nullptr, true, true);
    const std::string lstripped = jinja::builtin::strip(final_text, nullptr, true, false);
    const std::size_t at = out.rfind(stripped);
    PIE_CHECK(at != std::string::npos,
              "chat template: continue_final_message is set but the final message does not appear in the output");
    // The template kept the message verbatim: cut after it; else it trimmed trailing spaces.
    out.resize(at + (out.compare(at, lstripped.size(), final_text) == 0 ? lstripped.size() : stripped.size()));
    return out;
  }

  static std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    PIE_CHECK(f.good(), "chat template: cannot open ", path);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  std::string source_, bos_, eos_;
  std::shared_ptr<const jinja::Body> body_, tool_body_;
};

}  // namespace pie::tokenizer
