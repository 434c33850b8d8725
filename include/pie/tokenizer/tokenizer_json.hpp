#pragma once
/// \file tokenizer_json.hpp
/// \brief Reading Hugging Face tokenizer.json into a Tokenizer. Only what byte-level BPE needs
/// is accepted; every other normalizer, pre-tokenizer, model option, post-processor or decoder
/// is refused by name, so an unsupported file fails loudly instead of producing wrong ids.
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "pie/tokenizer/tokenizer_class.hpp"

namespace pie::tokenizer {

namespace json_detail {
using nlohmann::json;

inline std::string type_of(const json& j) { return j.is_object() ? j.value("type", "?") : "?"; }

inline void read_normalizer(const json& n, TokenizerSpec& s) {
  if (n.is_null()) return;
  const std::string t = type_of(n);
  if (t == "NFC") {
    s.nfc = true;
  } else if (t == "Sequence") {
    for (const auto& x : n.at("normalizers")) read_normalizer(x, s);
  } else {
    PIE_FAIL("tokenizer.json: unsupported normalizer '", t, "' (supported: NFC, Sequence)");
  }
}

inline void read_pre_tokenizer(const json& p, TokenizerSpec& s, bool& byte_level) {
  if (p.is_null()) return;
  const std::string t = type_of(p);
  if (t == "Sequence") {
    for (const auto& x : p.at("pretokenizers")) read_pre_tokenizer(x, s, byte_level);
  } else if (t == "Split") {
    PIE_CHECK(p.value("behavior", "") == "Isolated", "tokenizer.json: unsupported Split behavior '",
              p.value("behavior", ""), "' (supported: Isolated)");
    PIE_CHECK(!p.value("invert", false), "tokenizer.json: unsupported Split invert=true");
    const auto& pat = p.at("pattern");
    if (pat.contains("Regex")) {
      s.split_patterns.push_back(pat.at("Regex").get<std::string>());
    } else if (pat.contains("String")) {
      s.split_patterns.push_back("\\Q" + pat.at("String").get<std::string>() + "\\E");
    } else {
      PIE_FAIL("tokenizer.json: unsupported Split pattern ", pat.dump());
    }
  } else if (t == "ByteLevel") {
    PIE_CHECK(!p.value("add_prefix_space", false),
              "tokenizer.json: unsupported ByteLevel add_prefix_space=true");
    if (p.value("use_regex", true)) s.split_patterns.push_back(kGpt2SplitPattern);
    byte_level = true;
  } else {
    PIE_FAIL("tokenizer.json: unsupported pre_tokenizer '", t, "' (supported: Split, ByteLevel, Sequence)");
  }
}

/// TemplateProcessing's single-sequence template: special tokens before `$A` become prefix ids,
/// after it suffix ids (added by encode(..., add_special_tokens=true), e.g. Llama 3's BOS).
inline void read_template_processing(const json& p, TokenizerSpec& s) {
  bool seen_a = false;
  for (const auto& piece : p.at("single")) {
    if (piece.contains("Sequence")) {
      PIE_CHECK(piece["Sequence"].value("id", "A") == "A", "tokenizer.json: unsupported TemplateProcessing sequence");
      seen_a = true;
      continue;
    }
    PIE_CHECK(piece.contains("SpecialToken"), "tokenizer.json: unsupported TemplateProcessing piece ", piece.dump());
    const std::string name = piece["SpecialToken"].at("id").get<std::string>();
    const auto& ids = p.at("special_tokens").at(name).at("ids");
    auto& dst = seen_a ? s.suffix_ids : s.prefix_ids;
    for (const auto& id : ids) dst.push_back(id.get<std::int32_t>());
  }
}

inline void read_post_processor(const json& p, TokenizerSpec& s) {
  if (p.is_null()) return;
  const std::string t = type_of(p);
  if (t == "ByteLevel") return;  // only adjusts offsets, which pie does not report
  if (t == "TemplateProcessing") return read_template_processing(p, s);
  if (t == "Sequence") {
    for (const auto& x : p.at("processors")) read_post_processor(x, s);
    return;
  }
  PIE_FAIL("tokenizer.json: unsupported post_processor '", t, "' (supported: ByteLevel, TemplateProcessing, Sequence)");
}

inline void read_decoder(const json& d) {
  const std::string t = type_of(d);
  if (t == "ByteLevel") return;
  if (t == "Sequence" && d.at("decoders").size() == 1) return read_decoder(d.at("decoders")[0]);
  PIE_FAIL("tokenizer.json: unsupported decoder '", d.is_null() ? "null" : t, "' (supported: ByteLevel)");
}

inline void read_model(const json& m, TokenizerSpec& s) {
  PIE_CHECK(type_of(m) == "BPE", "tokenizer.json: unsupported model '", type_of(m), "' (supported: BPE)");
  auto str_or_empty = [&](const char* k) {
    return m.contains(k) && !m.at(k).is_null() ? m.at(k).get<std::string>() : std::string();
  };
  PIE_CHECK(!m.contains("dropout") || m.at("dropout").is_null() || m.at("dropout").get<double>() == 0.0,
            "tokenizer.json: unsupported BPE dropout");
  PIE_CHECK(str_or_empty("continuing_subword_prefix").empty(),
            "tokenizer.json: unsupported BPE continuing_subword_prefix");
  PIE_CHECK(str_or_empty("end_of_word_suffix").empty(), "tokenizer.json: unsupported BPE end_of_word_suffix");
  PIE_CHECK(!m.value("byte_fallback", false), "tokenizer.json: unsupported BPE byte_fallback=true");
  s.ignore_merges = m.value("ignore_merges", false);
  // unk_token never fires: every byte has a token (checked in BpeModel::finalize).
  std::unordered_map<std::string, std::int32_t> ids;
  ids.reserve(m.at("vocab").size());
  s.model.reserve(m.at("vocab").size(), m.at("merges").size());
  for (const auto& [tok, id] : m.at("vocab").items()) {
    auto bytes = byte_level::decode(tok);
    PIE_CHECK(bytes.has_value(), "tokenizer.json: vocabulary token '", tok,
              "' is outside the ByteLevel alphabet (not a byte-level BPE)");
    s.model.add_token(std::move(*bytes), id.get<std::int32_t>());
    ids.emplace(tok, id.get<std::int32_t>());
  }
  for (const auto& mg : m.at("merges")) {
    std::string a, b;
    if (mg.is_array()) {
      a = mg.at(0).get<std::string>();
      b = mg.at(1).get<std::string>();
    } else {
      const std::string line = mg.get<std::string>();
      const auto sp = line.find(' ');
      PIE_CHECK(sp != std::string::npos, "tokenizer.json: malformed merge '", line, "'");
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    }
    const auto ia = ids.find(a), ib = ids.find(b);
    PIE_CHECK(ia != ids.end() && ib != ids.end(), "tokenizer.json: merge '", a, " ", b,
              "' uses a token not in the vocabulary");
    s.model.add_merge(ia->second, ib->second);
  }
}
/// Builds the Tokenizer; nlohmann exceptions escape to from_json_text, which rewraps them.
inline Tokenizer build(std::string_view text);
}  // namespace json_detail

inline Tokenizer Tokenizer::from_json_text(std::string_view text) {
  try {
    return json_detail::build(text);
  } catch (const nlohmann::json::exception& e) {
    PIE_FAIL("tokenizer.json: malformed or missing field: ", e.what());
  }
}

inline Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  PIE_CHECK(f.good(), "tokenizer: cannot open ", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  try {
    return from_json_text(ss.str());
  } catch (const pie::Error& e) {
    PIE_FAIL(path, ": ", e.what());
  }
}

inline Tokenizer json_detail::build(std::string_view text) {
  using nlohmann::json;
  const json j = json::parse(text);
  TokenizerSpec s;
  PIE_CHECK(!j.contains("truncation") || j.at("truncation").is_null(), "tokenizer.json: unsupported truncation");
  PIE_CHECK(!j.contains("padding") || j.at("padding").is_null(), "tokenizer.json: unsupported padding");
  json_detail::read_normalizer(j.value("normalizer", json()), s);
  bool byte_level = false;
  json_detail::read_pre_tokenizer(j.value("pre_tokenizer", json()), s, byte_level);
  PIE_CHECK(byte_level, "tokenizer.json: unsupported pre_tokenizer without ByteLevel (not a byte-level BPE)");
  json_detail::read_post_processor(j.value("post_processor", json()), s);
  json_detail::read_decoder(j.value("decoder", json()));
  json_detail::read_model(j.at("model"), s);
  for (const auto& a : j.value("added_tokens", json::array())) {
    const std::string content = a.at("content").get<std::string>();
    PIE_CHECK(!a.value("single_word", false) && !a.value("lstrip", false) && !a.value("rstrip", false),
              "tokenizer.json: unsupported added token option (single_word/lstrip/rstrip) on '", content, "'");
    s.added.push_back({content, a.at("id").get<std::int32_t>(), a.value("special", false),
                       a.value("normalized", false)});
  }
  return Tokenizer(std::move(s));
}

}  // namespace pie::tokenizer
