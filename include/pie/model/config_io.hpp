#pragma once
/// \file config_io.hpp
/// \brief Reading a Hugging Face config.json into ModelConfig and generation_config.json into
/// GenerationConfig. Accepts both the transformers 4 spelling (`rope_theta`, `rope_scaling`,
/// `torch_dtype`) and the transformers 5 one (`rope_parameters`, `dtype`). Anything pie would
/// compute differently from transformers (an unknown architecture, rope type, activation, sliding
/// window) is an error naming the file and the offending value, never a silent default.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "pie/core/error.hpp"
#include "pie/model/config.hpp"

namespace pie::model {

namespace detail {

/// Whole file as a string; the error names the path.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PIE_CHECK(in.good(), path, ": cannot open file");
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

inline nlohmann::json read_json(const std::string& path) {
  std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    PIE_FAIL(path, ": invalid JSON: ", e.what());
  }
}

/// A present, non-null member.
inline bool has(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && !j.at(key).is_null();
}

template <class V>
V get_or(const nlohmann::json& j, const char* key, V fallback, const std::string& src) {
  if (!has(j, key)) return fallback;
  try {
    return j.at(key).get<V>();
  } catch (const nlohmann::json::exception&) {
    PIE_FAIL(src, ": field '", key, "' has the wrong type: ", j.at(key).dump());
  }
}

inline int required_int(const nlohmann::json& j, const char* key, const std::string& src) {
  PIE_CHECK(has(j, key), src, ": missing required field '", key, "'");
  PIE_CHECK(j.at(key).is_number_integer(), src, ": field '", key, "' must be an integer, got ",
            j.at(key).dump());
  int64_t v = j.at(key).get<int64_t>();
  PIE_CHECK(v > 0 && v < (int64_t{1} << 31), src, ": field '", key, "' must be positive, got ", v);
  return static_cast<int>(v);
}

/// `eos_token_id` is an int, a list of ints, or null.
inline std::vector<int32_t> token_ids(const nlohmann::json& j, const char* key,
                                      const std::string& src) {
  std::vector<int32_t> out;
  if (!has(j, key)) return out;
  const auto& v = j.at(key);
  if (v.is_number_integer()) {
    out.push_back(v.get<int32_t>());
  } else if (v.is_array()) {
    for (const auto& e : v) {
      PIE_CHECK(e.is_number_integer(), src, ": '", key, "' must hold integers, got ", v.dump());
      out.push_back(e.get<int32_t>());
    }
  } else {
    PIE_FAIL(src, ": '", key, "' must be an integer or a list of integers, got ", v.dump());
  }
  return out;
}

inline RopeScaling parse_rope_scaling(const nlohmann::json& r, int64_t max_pos,
                                      const std::string& src) {
  RopeScaling s;
  std::string type = r.contains("rope_type") ? get_or<std::string>(r, "rope_type", "", src)
                                             : get_or<std::string>(r, "type", "default", src);
  if (type == "default" || type.empty()) return s;
  s.factor = get_or<double>(r, "factor", 1.0, src);
  PIE_CHECK(s.factor > 0, src, ": rope_scaling factor must be positive, got ", s.factor);
  if (type == "linear") {
    s.type = RopeScaling::Type::Linear;
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::Llama3;
    s.low_freq_factor = get_or<double>(r, "low_freq_factor", 1.0, src);
    s.high_freq_factor = get_or<double>(r, "high_freq_factor", 4.0, src);
    PIE_CHECK(has(r, "original_max_position_embeddings"), src,
              ": rope_scaling llama3 needs original_max_position_embeddings");
    s.original_max_position_embeddings = get_or<int64_t>(r, "original_max_position_embeddings", 0, src);
    PIE_CHECK(s.high_freq_factor > s.low_freq_factor, src,
              ": rope_scaling llama3 needs high_freq_factor > low_freq_factor");
  } else if (type == "yarn") {
    s.type = RopeScaling::Type::Yarn;
    // transformers falls back to max_position_embeddings when the original length is absent.
    s.original_max_position_embeddings =
        get_or<int64_t>(r, "original_max_position_embeddings", max_pos, src);
    s.beta_fast = get_or<double>(r, "beta_fast", 32.0, src);
    s.beta_slow = get_or<double>(r, "beta_slow", 1.0, src);
    s.attention_factor = get_or<double>(r, "attention_factor", 0.0, src);
  } else {
    PIE_FAIL(src, ": unsupported rope_scaling ", type,
             " (supported: none, linear, llama3, yarn)");
  }
  return s;
}

}  // namespace detail

/// \brief Name of an architecture as config.json spells it.
inline const char* architecture_name(Architecture a) {
  switch (a) {
    case Architecture::Qwen3: return "Qwen3ForCausalLM";
    case Architecture::Qwen2: return "Qwen2ForCausalLM";
    case Architecture::Llama: return "LlamaForCausalLM";
    case Architecture::Custom: return "(custom)";
  }
  return "?";
}

/// Parses a config.json object; `src` (the file path) prefixes every error message. With
/// `any_architecture` an architecture outside the Qwen3 family parses as Architecture::Custom
/// (the decoder fields every family shares; a user's model reads its own extras itself).
inline ModelConfig parse_model_config(const nlohmann::json& j, const std::string& src = "config.json",
                                      bool any_architecture = false) {
  using detail::get_or;
  PIE_CHECK(j.is_object(), src, ": config must be a JSON object");
  ModelConfig c;
  std::string arch;
  if (detail::has(j, "architectures")) {
    const auto& a = j.at("architectures");
    PIE_CHECK(a.is_array() && !a.empty() && a[0].is_string(), src,
              ": 'architectures' must be a non-empty list of strings");
    arch = a[0].get<std::string>();
  } else {
    // Some hand-written configs only name the model_type.
    std::string mt = get_or<std::string>(j, "model_type", "", src);
    arch = mt == "qwen3" ? "Qwen3ForCausalLM" : mt == "qwen2" ? "Qwen2ForCausalLM"
         : mt == "llama" ? "LlamaForCausalLM" : (mt.empty() ? "<none>" : mt);
  }
  if (arch == "Qwen3ForCausalLM") c.architecture = Architecture::Qwen3;
  else if (arch == "Qwen2ForCausalLM") c.architecture = Architecture::Qwen2;
  else if (arch == "LlamaForCausalLM") c.architecture = Architecture::Llama;
  else if (any_architecture) c.architecture = Architecture::Custom;
  else PIE_FAIL(src, ": unsupported architecture ", arch,
                " (supported: Qwen3ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM)");
  c.architecture_name = arch;

  c.vocab_size = detail::required_int(j, "vocab_size", src);
  c.hidden_size = detail::required_int(j, "hidden_size", src);
  c.intermediate_size = detail::required_int(j, "intermediate_size", src);
  c.num_hidden_layers = detail::required_int(j, "num_hidden_layers", src);
  c.num_attention_heads = detail::required_int(j, "num_attention_heads", src);
  c.num_key_value_heads = detail::has(j, "num_key_value_heads")
                              ? detail::required_int(j, "num_key_value_heads", src)
                              : c.num_attention_heads;
  PIE_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, src, ": num_attention_heads ",
            c.num_attention_heads, " is not a multiple of num_key_value_heads ",
            c.num_key_value_heads);
  if (detail::has(j, "head_dim")) {
    c.head_dim = detail::required_int(j, "head_dim", src);
  } else {
    PIE_CHECK(c.hidden_size % c.num_attention_heads == 0, src, ": hidden_size ", c.hidden_size,
              " is not a multiple of num_attention_heads ", c.num_attention_heads,
              " and head_dim is not given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  PIE_CHECK(c.head_dim % 2 == 0, src, ": head_dim must be even for RoPE, got ", c.head_dim);

  c.rms_norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6, src);
  c.max_position_embeddings = get_or<int64_t>(j, "max_position_embeddings", 4096, src);
  // transformers 5 moved rope_theta and the scaling into one `rope_parameters` object.
  const nlohmann::json* rope = nullptr;
  if (detail::has(j, "rope_scaling")) rope = &j.at("rope_scaling");
  else if (detail::has(j, "rope_parameters")) rope = &j.at("rope_parameters");
  if (rope) PIE_CHECK(rope->is_object(), src, ": rope_scaling must be an object or null");
  c.rope_theta = get_or<double>(j, "rope_theta",
                                rope ? get_or<double>(*rope, "rope_theta", 10000.0, src) : 10000.0,
                                src);
  if (rope) c.rope_scaling = detail::parse_rope_scaling(*rope, c.max_position_embeddings, src);

  std::string act = get_or<std::string>(j, "hidden_act", "silu", src);
  PIE_CHECK(act == "silu", src, ": unsupported hidden_act ", act, " (only silu)");
  PIE_CHECK(!get_or<bool>(j, "use_sliding_window", false, src), src,
            ": use_sliding_window = true is not supported");
  PIE_CHECK(!get_or<bool>(j, "mlp_bias", false, src), src, ": mlp_bias = true is not supported");

  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false, src);
  switch (c.architecture) {
    case Architecture::Qwen3:
      c.qk_norm = true;
      c.attention_bias = get_or<bool>(j, "attention_bias", false, src);
      break;
    case Architecture::Qwen2:
      c.attention_bias = true;  // Qwen2 always has q/k/v biases (and none on o_proj)
      break;
    case Architecture::Llama:
      // Llama's attention_bias also puts a bias on o_proj, which Weights has no slot for.
      PIE_CHECK(!get_or<bool>(j, "attention_bias", false, src), src,
                ": LlamaForCausalLM with attention_bias = true is not supported");
      break;
    case Architecture::Custom:
      c.attention_bias = get_or<bool>(j, "attention_bias", false, src);
      break;
  }
  c.eos_token_ids = detail::token_ids(j, "eos_token_id", src);
  c.bos_token_id = get_or<int32_t>(j, "bos_token_id", -1, src);
  c.torch_dtype = get_or<std::string>(j, "torch_dtype", get_or<std::string>(j, "dtype", "bfloat16", src), src);
  return c;
}

/// Reads `path`, which is a config.json file or a directory holding one.
inline ModelConfig load_model_config(const std::string& path, bool any_architecture = false) {
  std::string file = std::filesystem::is_directory(path)
                         ? (std::filesystem::path(path) / "config.json").string() : path;
  return parse_model_config(detail::read_json(file), file, any_architecture);
}

/// Parses a generation_config.json object; `src` prefixes error messages.
inline GenerationConfig parse_generation_config(const nlohmann::json& j,
                                                const std::string& src = "generation_config.json") {
  using detail::get_or;
  using detail::has;
  PIE_CHECK(j.is_object(), src, ": generation config must be a JSON object");
  GenerationConfig g;
  g.eos_token_ids = detail::token_ids(j, "eos_token_id", src);
  g.bos_token_id = get_or<int32_t>(j, "bos_token_id", -1, src);
  if ((g.has_temperature = has(j, "temperature"))) g.temperature = get_or<float>(j, "temperature", 1.0f, src);
  if ((g.has_top_p = has(j, "top_p"))) g.top_p = get_or<float>(j, "top_p", 1.0f, src);
  if ((g.has_top_k = has(j, "top_k"))) g.top_k = get_or<int>(j, "top_k", 0, src);
  if ((g.has_min_p = has(j, "min_p"))) g.min_p = get_or<float>(j, "min_p", 0.0f, src);
  if ((g.has_repetition_penalty = has(j, "repetition_penalty")))
    g.repetition_penalty = get_or<float>(j, "repetition_penalty", 1.0f, src);
  return g;
}

/// Reads `dir`/generation_config.json when present and merges config.json's eos ids into it
/// (config's first, in order, then the generation config's others), as vLLM does. Without the
/// file the result carries only the model's eos/bos ids.
inline GenerationConfig load_generation_config(const std::string& dir, const ModelConfig& model) {
  auto file = std::filesystem::path(dir) / "generation_config.json";
  GenerationConfig g;
  if (std::filesystem::exists(file)) g = parse_generation_config(detail::read_json(file.string()), file.string());
  std::vector<int32_t> eos = model.eos_token_ids;
  for (int32_t id : g.eos_token_ids)
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  g.eos_token_ids = std::move(eos);
  if (g.bos_token_id < 0) g.bos_token_id = model.bos_token_id;
  return g;
}

}  // namespace pie::model
