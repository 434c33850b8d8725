#pragma once
/// \file protocol.hpp
/// \brief OpenAI request JSON → validated structs, for /v1/completions and /v1/chat/completions.
/// Every rejection is an ApiError(400) naming the parameter. Fields pie does not implement and
/// that would change the result are rejected by name rather than silently ignored; fields that
/// change nothing (user, metadata, ...) are accepted. Responses are built in responses.hpp.
/// Bodies are `nlohmann::ordered_json`: objects keep the client's key order, which reaches the
/// chat template (`tools | tojson`, tool-call arguments) and so the prompt, as in transformers.
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/sched/sampling_params.hpp"
#include "pie/sched/structured_output.hpp"
#include "pie/server/errors.hpp"
#include "pie/server/request_stream.hpp"  // and the stop-string matcher
#include "pie/tokenizer/stop_strings.hpp"

namespace pie::server {

using json = nlohmann::ordered_json;

/// \brief Sampling defaults applied when a request leaves a field out: from the model's
/// generation_config.json (`--generation-config auto`) or vLLM's neutral ones (`vllm`).
struct SamplingDefaults {
  float temperature = 1.0f;
  float top_p = 1.0f;
  int top_k = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
};

/// \brief One prompt of a completion request: text, or token ids given directly.
struct PromptInput {
  std::string text;
  std::vector<int32_t> token_ids;
  bool is_tokens = false;
};

/// \brief OpenAI's `tool_choice`.
enum class ToolChoice { None, Auto, Required, Named };

/// \brief A parsed, validated generation request (either endpoint).
struct GenerationRequest {
  bool chat = false;
  std::string model;                 ///< empty → the first served name
  std::vector<PromptInput> prompts;  ///< completions: one engine request per prompt
  json messages;                     ///< chat: the conversation, passed to the template
  json template_options;             ///< chat: add_generation_prompt, enable_thinking, ...
  std::optional<int> max_tokens;     ///< absent → endpoint default (see resolve_max_tokens)
  sched::SamplingParams params;      ///< max_tokens filled in later, once the prompt is known
  std::vector<std::string> stop;
  bool include_stop_str_in_output = false;
  bool skip_special_tokens = true;
  bool echo = false;  ///< completions: prepend the prompt to the text; chat: see chat_echo
  /// chat: the response's role, vLLM's rule: "assistant" with add_generation_prompt, else the
  /// last message's role (the model continues it).
  std::string response_role = "assistant";
  /// chat with echo: the last message's content when its role is response_role (vLLM echoes
  /// it before the generated content), else empty.
  std::string chat_echo;
  /// completions: echo with max_tokens 0 (vLLM's echo without generation): the engine generates
  /// one token, which usage counts, and the choice shows the prompt (and its logprobs) only.
  bool echo_only = false;
  bool stream = false;
  bool include_usage = false;     ///< stream_options.include_usage
  bool continuous_usage = false;  ///< stream_options.continuous_usage_stats (vLLM)
  bool want_logprobs = false;
  bool return_tokens_as_token_ids = false;  ///< vLLM: logprob tokens spelled "token_id:N"
  bool return_token_ids = false;            ///< vLLM: prompt_token_ids and token_ids in the response
  std::string user;
  // chat: tool calling
  json tools;                                ///< the request's `tools` (null when none or empty)
  ToolChoice tool_choice = ToolChoice::None;  ///< `auto` when tools are given without tool_choice
  std::string tool_choice_name;              ///< ToolChoice::Named: the function
  bool parallel_tool_calls = true;
  // structured outputs: response_format, structured_outputs or guided_* (parse_structured)
  std::optional<sched::StructuredOutput> structured;
  std::string structured_param;  ///< the field it came from, named by a 400
};

/// Stop token ids per request (checked by the engine thread after every token).
inline constexpr size_t kMaxStopTokenIds = 1024;

namespace detail {

inline const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::string:
      return "string";
    case json::value_t::array:
      return "array";
    case json::value_t::object:
      return "object";
    case json::value_t::number_float:
      return "number";
    default:
      return "integer";
  }
}

/// The field, or nullptr when absent or null (OpenAI clients send null for "not set").
inline const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

inline double get_number(const json& v, const std::string& name) {
  if (!v.is_number()) throw invalid_param(name, "'" + name + "' must be a number, got " + type_name(v));
  const double d = v.get<double>();
  if (!std::isfinite(d)) throw invalid_param(name, "'" + name + "' must be finite");
  return d;
}

inline int64_t get_int(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  int64_t x = 0;
  if (v.is_number_integer())
    x = v.get<int64_t>();
  else if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() && std::abs(v.get<double>()) < 9e15)
    x = static_cast<int64_t>(v.get<double>());
  else
    throw invalid_param(name, "'" + name + "' must be an integer, got " + type_name(v));
  if (x < lo || x > hi)
    throw invalid_param(name, "'" + name + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                  "], got " + std::to_string(x));
  return x;
}

inline bool get_bool(const json& v, const std::string& name) {
  if (!v.is_boolean()) throw invalid_param(name, "'" + name + "' must be a boolean, got " + type_name(v));
  return v.get<bool>();
}

inline std::string get_string(const json& v, const std::string& name) {
  if (!v.is_string()) throw invalid_param(name, "'" + name + "' must be a string, got " + type_name(v));
  return v.get<std::string>();
}

inline std::vector<int32_t> get_token_ids(const json& v, const std::string& name) {
  std::vector<int32_t> ids;
  for (const auto& t : v) ids.push_back(static_cast<int32_t>(get_int(t, name, 0, std::numeric_limits<int32_t>::max())));
  return ids;
}

/// The leading identifier of a SamplingParams::validate() message: the field it names.
inline std::string leading_field(const std::string& msg) {
  size_t n = 0;
  while (n < msg.size() && (std::islower(static_cast<unsigned char>(msg[n])) || msg[n] == '_')) ++n;
  return msg.substr(0, n);
}

/// Fields that would change the output and that pie does not implement: a 400 naming them.
inline void reject_unsupported(const json& body, bool chat) {
  auto present = [&](const char* k) { return field(body, k) != nullptr; };
  if (!chat) {  // tool calling is a chat feature
    if (const json* t = field(body, "tools"); t && !(t->is_array() && t->empty()))
      throw unsupported_param("tools", "tools are only supported on /v1/chat/completions");
    if (const json* tc = field(body, "tool_choice"); tc && !(tc->is_string() && tc->get<std::string>() == "none"))
      throw unsupported_param("tool_choice", "tool_choice is only supported on /v1/chat/completions");
  }
  for (const char* k : {"functions", "function_call", "logits_processors",
                        "prediction", "audio", "truncate_prompt_tokens", "allowed_token_ids", "bad_words"})
    if (present(k)) throw unsupported_param(k);
  if (const json* bs = field(body, "use_beam_search"); bs && !(bs->is_boolean() && !bs->get<bool>()))
    throw unsupported_param("use_beam_search");
  if (const json* m = field(body, "modalities")) {
    const bool text_only = m->is_array() && m->size() == 1 && (*m)[0] == "text";
    if (!text_only) throw unsupported_param("modalities", "only [\"text\"] is supported");
  }
  if (!chat) {
    if (const json* s = field(body, "suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
      throw unsupported_param("suffix");
  }
}

/// Sampling fields common to both endpoints.
inline void parse_sampling(const json& body, const SamplingDefaults& d, GenerationRequest& r) {
  auto& p = r.params;
  p.temperature = d.temperature;
  p.top_p = d.top_p;
  p.top_k = d.top_k;
  p.min_p = d.min_p;
  p.repetition_penalty = d.repetition_penalty;
  if (auto* v = field(body, "temperature")) p.temperature = static_cast<float>(get_number(*v, "temperature"));
  if (auto* v = field(body, "top_p")) p.top_p = static_cast<float>(get_number(*v, "top_p"));
  if (auto* v = field(body, "top_k")) p.top_k = static_cast<int>(get_int(*v, "top_k", -1, 1 << 30));
  if (auto* v = field(body, "min_p")) p.min_p = static_cast<float>(get_number(*v, "min_p"));
  if (auto* v = field(body, "presence_penalty"))
    p.presence_penalty = static_cast<float>(get_number(*v, "presence_penalty"));
  if (auto* v = field(body, "frequency_penalty"))
    p.frequency_penalty = static_cast<float>(get_number(*v, "frequency_penalty"));
  if (auto* v = field(body, "repetition_penalty"))
    p.repetition_penalty = static_cast<float>(get_number(*v, "repetition_penalty"));
  if (auto* v = field(body, "n")) p.n = static_cast<int>(get_int(*v, "n", 1, 128));
  if (auto* v = field(body, "best_of")) {
    if (get_int(*v, "best_of", 1, 128) != p.n) throw unsupported_param("best_of", "best_of must equal n");
  }
  if (auto* v = field(body, "seed"))
    p.seed = static_cast<uint64_t>(
        get_int(*v, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()));
  if (auto* v = field(body, "min_tokens")) p.min_tokens = static_cast<int>(get_int(*v, "min_tokens", 0, 1 << 30));
  if (auto* v = field(body, "ignore_eos")) p.ignore_eos = get_bool(*v, "ignore_eos");
  if (auto* v = field(body, "stop_token_ids")) {
    if (!v->is_array()) throw invalid_param("stop_token_ids", "'stop_token_ids' must be an array of integers");
    if (v->size() > kMaxStopTokenIds)
      throw invalid_param("stop_token_ids", "'stop_token_ids' may hold at most " + std::to_string(kMaxStopTokenIds) +
                                                " ids, got " + std::to_string(v->size()));
    p.stop_token_ids = get_token_ids(*v, "stop_token_ids");
  }
  if (auto* v = field(body, "logit_bias")) {
    if (!v->is_object()) throw invalid_param("logit_bias", "'logit_bias' must be an object {token_id: bias}");
    for (auto it = v->begin(); it != v->end(); ++it) {
      // Decimal digits only: std::stoll would also take " 1", "+1" and "1e3"-like prefixes.
      const std::string& key = it.key();
      bool digits = !key.empty() && key.size() <= 10;
      for (char c : key) digits = digits && c >= '0' && c <= '9';
      const long long id = digits ? std::stoll(key) : -1;
      if (!digits || id > std::numeric_limits<int32_t>::max())
        throw invalid_param("logit_bias", "'logit_bias' keys must be token ids (decimal integers), got '" + key + "'");
      p.logit_bias[static_cast<int32_t>(id)] = static_cast<float>(get_number(it.value(), "logit_bias"));
    }
  }
  if (auto* v = field(body, "stop")) {
    if (v->is_string())
      r.stop.push_back(v->get<std::string>());
    else if (v->is_array() && v->size() > kMaxStopStrings)
      throw invalid_param("stop", "'stop' may hold at most " + std::to_string(kMaxStopStrings) + " strings, got " +
                                      std::to_string(v->size()));
    else if (v->is_array())
      for (const auto& s : *v) r.stop.push_back(get_string(s, "stop"));
    else
      throw invalid_param("stop", "'stop' must be a string or an array of strings");
    if (r.stop.size() > kMaxStopStrings)
      throw invalid_param("stop", "'stop' may hold at most " + std::to_string(kMaxStopStrings) + " strings, got " +
                                      std::to_string(r.stop.size()));
    for (const auto& s : r.stop) {
      if (s.empty()) throw invalid_param("stop", "'stop' strings must not be empty");
      if (s.size() > kMaxStopStringBytes)
        throw invalid_param("stop", "'stop' strings may be at most " + std::to_string(kMaxStopStringBytes) +
                                        " bytes, got one of " + std::to_string(s.size()));
    }
  }
  if (auto* v = field(body, "include_stop_str_in_output"))
    r.include_stop_str_in_output = get_bool(*v, "include_stop_str_in_output");
  if (auto* v = field(body, "skip_special_tokens")) r.skip_special_tokens = get_bool(*v, "skip_special_tokens");
  if (auto* v = field(body, "stream")) r.stream = get_bool(*v, "stream");
  if (auto* v = field(body, "stream_options")) {
    if (!v->is_object()) throw invalid_param("stream_options", "'stream_options' must be an object");
    if (!r.stream) throw invalid_param("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (auto* u = field(*v, "include_usage")) r.include_usage = get_bool(*u, "stream_options.include_usage");
    if (auto* u = field(*v, "continuous_usage_stats"))
      r.continuous_usage = get_bool(*u, "stream_options.continuous_usage_stats");
  }
  if (auto* v = field(body, "user")) r.user = get_string(*v, "user");
  if (auto* v = field(body, "model")) r.model = get_string(*v, "model");
  if (auto* v = field(body, "return_tokens_as_token_ids"))
    r.return_tokens_as_token_ids = get_bool(*v, "return_tokens_as_token_ids");
  if (auto* v = field(body, "return_token_ids")) r.return_token_ids = get_bool(*v, "return_token_ids");
  if (auto* v = field(body, "prompt_logprobs")) {
    // vLLM's rules: -1 (the whole vocabulary) is vLLM v1 only, and a stream carries none.
    const int k = static_cast<int>(get_int(*v, "prompt_logprobs", -1, sched::kMaxLogprobs));
    if (k == -1)
      throw unsupported_param("prompt_logprobs", "prompt_logprobs -1 (the whole vocabulary) is not supported: use 0-20");
    if (r.stream && k > 0)
      throw invalid_param("prompt_logprobs", "`prompt_logprobs` are not available when `stream=True`.");
    if (!r.stream) r.params.prompt_logprobs = k;
  }
}

/// OpenAI's wording for a value of the wrong JSON type.
inline ApiError invalid_type(const std::string& param, const char* expected, const json& got) {
  const std::string t = type_name(got);
  return ApiError(400,
                  "Invalid type for '" + param + "': expected " + expected + ", but got " +
                      (t == "integer" || t == "object" || t == "array" ? "an " : "a ") + t + " instead.",
                  param, "invalid_request_error", "invalid_type");
}
inline ApiError missing_param(const std::string& param) {
  return ApiError(400, "Missing required parameter: '" + param + "'.", param, "invalid_request_error",
                  "missing_required_parameter");
}

/// A schema given as an object or as a JSON string (vLLM takes both): its text.
inline std::string schema_text(const json& v, const std::string& name) {
  if (v.is_object() || v.is_boolean()) return v.dump();
  if (v.is_string()) {
    const json j = json::parse(v.get<std::string>(), nullptr, false);
    if (j.is_discarded() || !(j.is_object() || j.is_boolean()))
      throw invalid_param(name, "'" + name + "' is not a valid JSON schema: not a JSON object");
    return j.dump();
  }
  throw invalid_param(name, "'" + name + "' must be a JSON schema object, got " + std::string(type_name(v)));
}

inline std::vector<std::string> choice_list(const json& v, const std::string& name) {
  if (!v.is_array() || v.empty()) throw invalid_param(name, "'" + name + "' must be a non-empty array of strings");
  std::vector<std::string> out;
  for (const auto& c : v) out.push_back(get_string(c, name));
  return out;
}

/// The output constraint: OpenAI's response_format (json_object, json_schema with strict),
/// vLLM's structured_outputs {json, regex, choice, grammar, json_object} and its older
/// guided_json / guided_regex / guided_choice / guided_grammar. At most one may be given.
/// The schema, regex or grammar itself is checked when compiled (a 400 naming the problem).
inline void parse_structured(const json& body, GenerationRequest& r) {
  using K = sched::StructuredOutput::Kind;
  auto set = [&](const std::string& param, sched::StructuredOutput so) {
    if (r.structured)
      throw invalid_param(param, "only one structured output constraint may be given, but both '" +
                                     r.structured_param + "' and '" + param + "' are set");
    r.structured = std::move(so);
    r.structured_param = param;
  };
  if (const json* rf = field(body, "response_format")) {
    const json* type = rf->is_object() ? field(*rf, "type") : nullptr;
    if (!type || !type->is_string())
      throw invalid_param("response_format", "'response_format' must be an object with a string 'type'");
    const std::string t = type->get<std::string>();
    if (t == "json_object") {
      set("response_format", sched::StructuredOutput::of(K::JsonObject));
    } else if (t == "json_schema") {
      const json* js = field(*rf, "json_schema");
      if (!js) throw missing_param("response_format.json_schema");
      if (!js->is_object()) throw invalid_type("response_format.json_schema", "an object", *js);
      const json* name = field(*js, "name");
      if (!name) throw missing_param("response_format.json_schema.name");
      if (!name->is_string()) throw invalid_type("response_format.json_schema.name", "a string", *name);
      auto so = sched::StructuredOutput::of(K::JsonSchema);
      // OpenAI: a missing schema is any JSON object.
      const json* schema = field(*js, "schema");
      so.text = schema ? schema_text(*schema, "response_format.json_schema.schema") : std::string("{\"type\":\"object\"}");
      so.strict = false;
      if (const json* st = field(*js, "strict")) {
        if (!st->is_boolean()) throw invalid_type("response_format.json_schema.strict", "a boolean", *st);
        so.strict = st->get<bool>();
      }
      set("response_format", std::move(so));
    } else if (t != "text") {
      throw ApiError(400,
                     "Invalid value: '" + t + "'. Supported values are: 'text', 'json_object' and 'json_schema'.",
                     "response_format.type", "invalid_request_error", "invalid_value");
    }
  }
  auto one = [&](const json& v, const std::string& param, const std::string& what) {
    sched::StructuredOutput so;
    if (what == "json") {
      so.kind = K::JsonSchema;
      so.text = schema_text(v, param);
    } else if (what == "regex") {
      so.kind = K::Regex;
      so.text = get_string(v, param);
    } else if (what == "choice") {
      so.kind = K::Choice;
      so.choices = choice_list(v, param);
    } else if (what == "grammar") {
      so.kind = K::Grammar;
      so.text = get_string(v, param);
    }
    set(param, std::move(so));
  };
  if (const json* so = field(body, "structured_outputs")) {
    if (!so->is_object()) throw invalid_type("structured_outputs", "an object", *so);
    for (auto it = so->begin(); it != so->end(); ++it) {
      const std::string k = it.key();
      const std::string param = "structured_outputs." + k;
      if (it.value().is_null()) continue;
      if (k == "json" || k == "regex" || k == "choice" || k == "grammar") {
        one(it.value(), param, k);
      } else if (k == "json_object") {
        if (get_bool(it.value(), param)) set(param, sched::StructuredOutput::of(K::JsonObject));
      } else if (k == "disable_any_whitespace" || k == "disable_fallback" || k == "disable_additional_properties" ||
                 k == "whitespace_pattern" || k == "backend") {
        // Options of vLLM's other backends: XGrammar is the only one here.
      } else {
        throw unsupported_param(param, "structured_outputs supports json, regex, choice, grammar and json_object");
      }
    }
  }
  for (const char* k : {"guided_json", "guided_regex", "guided_choice", "guided_grammar"})
    if (const json* v = field(body, k)) one(*v, k, std::string(k).substr(7));
  if (const json* b = field(body, "guided_decoding_backend")) {
    const std::string s = get_string(*b, "guided_decoding_backend");
    if (s != "xgrammar" && s != "auto")
      throw unsupported_param("guided_decoding_backend", "only 'xgrammar' (or 'auto') is available");
  }
  if (r.structured) {
    try {
      r.structured->validate();
    } catch (const pie::Error& e) {
      throw invalid_param(r.structured_param, e.what());
    }
  }
}

/// `tools`, `tool_choice`, `parallel_tool_calls` (OpenAI's rules and messages; vLLM's defaults:
/// `type` may be left out, tool_choice defaults to auto when tools are given, `required` with
/// an empty tools list means none). Whether the server may honour the choice is checked at
/// submission (check_tool_choice), so /tokenize renders tools whatever the flags.
inline void parse_tools(const json& body, GenerationRequest& r) {
  const json* tools = field(body, "tools");
  if (tools) {
    if (!tools->is_array()) throw invalid_type("tools", "an array", *tools);
    for (size_t i = 0; i < tools->size(); ++i) {
      const json& t = (*tools)[i];
      const std::string at = "tools[" + std::to_string(i) + "]";
      if (!t.is_object()) throw invalid_type(at, "an object", t);
      if (const json* ty = field(t, "type")) {
        if (!ty->is_string()) throw invalid_type(at + ".type", "a string", *ty);
        if (ty->get<std::string>() != "function")
          throw ApiError(400,
                         "Invalid value: '" + ty->get<std::string>() + "'. Supported values are: 'function'.",
                         at + ".type", "invalid_request_error", "invalid_value");
      }
      const json* fn = field(t, "function");
      if (!fn) throw missing_param(at + ".function");
      if (!fn->is_object()) throw invalid_type(at + ".function", "an object", *fn);
      const json* name = field(*fn, "name");
      if (!name) throw missing_param(at + ".function.name");
      if (!name->is_string()) throw invalid_type(at + ".function.name", "a string", *name);
      if (name->get<std::string>().empty())
        throw ApiError(400, "Invalid '" + at + ".function.name': empty string. Expected a string with minimum length 1.",
                       at + ".function.name", "invalid_request_error", "empty_string");
      if (const json* v = field(*fn, "description"); v && !v->is_string())
        throw invalid_type(at + ".function.description", "a string", *v);
      if (const json* v = field(*fn, "parameters"); v && !v->is_object())
        throw invalid_type(at + ".function.parameters", "an object", *v);
      if (const json* v = field(*fn, "strict"); v && !v->is_boolean())
        throw invalid_type(at + ".function.strict", "a boolean", *v);
    }
    if (!tools->empty()) r.tools = *tools;
  }
  if (const json* v = field(body, "parallel_tool_calls")) {
    if (!v->is_boolean()) throw invalid_type("parallel_tool_calls", "a boolean", *v);
    r.parallel_tool_calls = v->get<bool>();
  }
  const json* tc = field(body, "tool_choice");
  r.tool_choice = r.tools.is_null() ? ToolChoice::None : ToolChoice::Auto;
  if (!tc) return;
  auto needs_tools = [&] {
    if (!tools)
      throw ApiError(400, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                     "tool_choice", "invalid_request_error", "invalid_value");
  };
  if (tc->is_string()) {
    const std::string s = tc->get<std::string>();
    if (s == "none") {
      r.tool_choice = ToolChoice::None;
    } else if (s == "auto" || s == "required") {
      needs_tools();
      // OpenAI: `required` with no tools behaves as none.
      r.tool_choice = r.tools.is_null() ? ToolChoice::None : s == "auto" ? ToolChoice::Auto : ToolChoice::Required;
    } else {
      throw ApiError(400, "Invalid value: '" + s + "'. Supported values are: 'none', 'auto', and 'required'.",
                     "tool_choice", "invalid_request_error", "invalid_value");
    }
    return;
  }
  if (!tc->is_object()) throw invalid_type("tool_choice", "a string or an object", *tc);
  const char* usage = " Correct usage: {\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}";
  const json* ty = field(*tc, "type");
  if (!ty) throw missing_param("tool_choice.type");
  if (!ty->is_string() || ty->get<std::string>() != "function")
    throw ApiError(400, std::string("Invalid value for 'tool_choice.type': expected 'function'.") + usage,
                   "tool_choice.type", "invalid_request_error", "invalid_value");
  const json* fn = field(*tc, "function");
  if (!fn) throw missing_param("tool_choice.function");
  if (!fn->is_object()) throw invalid_type("tool_choice.function", "an object", *fn);
  const json* name = field(*fn, "name");
  if (!name) throw missing_param("tool_choice.function.name");
  if (!name->is_string()) throw invalid_type("tool_choice.function.name", "a string", *name);
  needs_tools();
  const std::string n = name->get<std::string>();
  bool found = false;
  for (const auto& t : r.tools.is_null() ? json::array() : r.tools) found = found || t["function"]["name"] == n;
  if (!found)
    throw ApiError(400, "Invalid value for 'tool_choice': function '" + n + "' is not among the request's 'tools'.",
                   "tool_choice", "invalid_request_error", "invalid_value");
  r.tool_choice = ToolChoice::Named;
  r.tool_choice_name = n;
}

/// An assistant message's `tool_calls` and a tool message's `tool_call_id`, checked; the
/// returned copy of an assistant message has each `function.arguments` JSON string parsed to
/// its value, as vLLM hands them to the template (an empty string becomes {}).
inline json check_tool_message(const json& m, const std::string& role, const std::string& at) {
  json out = m;
  if (role == "tool") {
    const json* id = field(m, "tool_call_id");
    if (!id) throw missing_param(at + ".tool_call_id");
    if (!id->is_string()) throw invalid_type(at + ".tool_call_id", "a string", *id);
    return out;
  }
  const json* calls = field(m, "tool_calls");
  if (!calls) return out;
  if (role != "assistant") throw invalid_param("messages", at + ".tool_calls is only allowed on assistant messages");
  if (!calls->is_array()) throw invalid_type(at + ".tool_calls", "an array", *calls);
  for (size_t j = 0; j < calls->size(); ++j) {
    const json& c = (*calls)[j];
    const std::string cat = at + ".tool_calls[" + std::to_string(j) + "]";
    if (!c.is_object()) throw invalid_type(cat, "an object", c);
    if (const json* v = field(c, "id"); v && !v->is_string()) throw invalid_type(cat + ".id", "a string", *v);
    if (const json* v = field(c, "type"); v && !(v->is_string() && v->get<std::string>() == "function"))
      throw ApiError(400, "Invalid value for '" + cat + ".type': expected 'function'.", cat + ".type",
                     "invalid_request_error", "invalid_value");
    const json* fn = field(c, "function");
    if (!fn) throw missing_param(cat + ".function");
    if (!fn->is_object()) throw invalid_type(cat + ".function", "an object", *fn);
    const json* name = field(*fn, "name");
    if (!name) throw missing_param(cat + ".function.name");
    if (!name->is_string()) throw invalid_type(cat + ".function.name", "a string", *name);
    const json* args = field(*fn, "arguments");
    json& oargs = out["tool_calls"][j]["function"]["arguments"];
    if (!args || (args->is_string() && args->get<std::string>().empty())) {
      oargs = json::object();
    } else if (args->is_string()) {
      oargs = json::parse(args->get<std::string>(), nullptr, false);
      if (oargs.is_discarded())
        throw invalid_param(cat + ".function.arguments", cat + ".function.arguments is not valid JSON");
    } else if (!args->is_object()) {
      throw invalid_type(cat + ".function.arguments", "a string", *args);
    }
  }
  return out;
}

}  // namespace detail

/// Runs SamplingParams::validate and turns its pie::Error into a 400 naming the field.
inline void validate_sampling(const sched::SamplingParams& p, int vocab_size) {
  try {
    p.validate(vocab_size);
  } catch (const pie::Error& e) {
    const std::string f = detail::leading_field(e.what());
    throw invalid_param(f, e.what());
  }
}

/// Parses a /v1/completions body.
inline GenerationRequest parse_completion_request(const json& body, const SamplingDefaults& d) {
  if (!body.is_object()) throw invalid_param("", "The request body must be a JSON object");
  GenerationRequest r;
  detail::reject_unsupported(body, /*chat=*/false);
  detail::parse_sampling(body, d, r);
  detail::parse_structured(body, r);
  const json* pr = detail::field(body, "prompt");
  if (!pr) throw invalid_param("prompt", "'prompt' is required");
  auto bad = [] {
    return invalid_param(
        "prompt",
        "'prompt' must be a string, an array of strings, an array of token ids or an array of arrays of token ids");
  };
  if (pr->is_string()) {
    r.prompts.push_back({pr->get<std::string>(), {}, false});
  } else if (pr->is_array()) {
    if (pr->empty()) throw invalid_param("prompt", "'prompt' must not be empty");
    if ((*pr)[0].is_number()) {
      r.prompts.push_back({{}, detail::get_token_ids(*pr, "prompt"), true});
    } else {
      for (const auto& e : *pr) {
        if (e.is_string())
          r.prompts.push_back({e.get<std::string>(), {}, false});
        else if (e.is_array())
          r.prompts.push_back({{}, detail::get_token_ids(e, "prompt"), true});
        else
          throw bad();
      }
    }
  } else {
    throw bad();
  }
  for (const auto& p : r.prompts)
    if (p.is_tokens ? p.token_ids.empty() : p.text.empty()) throw invalid_param("prompt", "'prompt' must not be empty");
  if (auto* v = detail::field(body, "echo")) r.echo = detail::get_bool(*v, "echo");
  if (auto* v = detail::field(body, "max_tokens"))  // 0 only with echo: the prompt alone (below)
    r.max_tokens = static_cast<int>(detail::get_int(*v, "max_tokens", r.echo ? 0 : 1, 1 << 30));
  else
    r.max_tokens = 16;  // OpenAI's (and vLLM's) completions default
  if (r.max_tokens == 0) {  // vLLM's echo without generation: one token is generated, not shown
    r.echo_only = true;
    r.max_tokens = 1;
  }
  if (auto* v = detail::field(body, "logprobs")) {
    r.params.logprobs = static_cast<int>(detail::get_int(*v, "logprobs", 0, sched::kMaxLogprobs));
    r.want_logprobs = true;
  }
  // vLLM: echo with logprobs reports the prompt tokens too, from prompt_logprobs (the request's
  // own, else as many as logprobs asks), also when streaming.
  if (r.echo && r.want_logprobs && !r.params.prompt_logprobs) r.params.prompt_logprobs = r.params.logprobs;
  return r;
}

/// Parses a /v1/chat/completions body.
inline GenerationRequest parse_chat_request(const json& body, const SamplingDefaults& d) {
  if (!body.is_object()) throw invalid_param("", "The request body must be a JSON object");
  GenerationRequest r;
  r.chat = true;
  detail::reject_unsupported(body, /*chat=*/true);
  detail::parse_sampling(body, d, r);
  detail::parse_structured(body, r);
  const json* msgs = detail::field(body, "messages");
  if (!msgs || !msgs->is_array() || msgs->empty())
    throw invalid_param("messages", "'messages' must be a non-empty array");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw invalid_param("messages", at + " must be an object");
    const json* role = detail::field(m, "role");
    if (!role || !role->is_string()) throw invalid_param("messages", at + ".role must be a string");
    const std::string rs = role->get<std::string>();
    if (rs != "system" && rs != "user" && rs != "assistant" && rs != "developer" && rs != "tool")
      throw invalid_param("messages",
                          at + ".role must be system, developer, user, assistant or tool, got '" + rs + "'");
    const json* content = detail::field(m, "content");
    if (content && content->is_array()) {
      for (const auto& part : *content)
      {
        if (!part.is_object()) throw invalid_param("messages", at + ".content parts must be objects");
        const json* type = detail::field(part, "type");
        if (!type || !type->is_string()) throw invalid_param("messages", at + ".content[].type must be a string");
        if (type->get<std::string>() != "text")
          throw unsupported_param("messages", at + ".content: only text parts are supported");
        const json* text = detail::field(part, "text");
        if (!text || !text->is_string()) throw invalid_param("messages", at + ".content[].text must be a string");
      }
    } else if (content && !content->is_string()) {
      throw invalid_param("messages", at + ".content must be a string or an array of text parts");
    } else if (!content && rs != "assistant") {
      throw invalid_param("messages", at + ".content is required");
    }
  }
  // Text parts are flattened to a string: chat templates expect content to be a string.
  r.messages = json::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    json mm = detail::check_tool_message(m, m["role"].get<std::string>(), "messages[" + std::to_string(i) + "]");
    if (!mm.contains("content") || mm["content"].is_null()) mm["content"] = "";  // vLLM: no content is ""
    if (m.contains("content") && m["content"].is_array()) {
      std::string s;
      for (const auto& part : m["content"]) s += part["text"].get<std::string>();
      mm["content"] = s;
    }
    r.messages.push_back(std::move(mm));
  }
  r.template_options = json::object();
  if (auto* v = detail::field(body, "chat_template_kwargs")) {
    if (!v->is_object()) throw invalid_param("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    r.template_options = *v;
  }
  detail::parse_tools(body, r);
  // vLLM passes the tools to the template (even with tool_choice none); chat_template_kwargs win.
  if (!r.tools.is_null() && !r.template_options.contains("tools")) r.template_options["tools"] = r.tools;
  bool add_gen = true;
  if (auto* v = detail::field(body, "add_generation_prompt")) add_gen = detail::get_bool(*v, "add_generation_prompt");
  r.template_options["add_generation_prompt"] = add_gen;
  if (auto* v = detail::field(body, "max_completion_tokens"))
    r.max_tokens = static_cast<int>(detail::get_int(*v, "max_completion_tokens", 1, 1 << 30));
  else if (auto* v2 = detail::field(body, "max_tokens"))
    r.max_tokens = static_cast<int>(detail::get_int(*v2, "max_tokens", 1, 1 << 30));
  bool logprobs = false;
  if (auto* v = detail::field(body, "logprobs")) logprobs = detail::get_bool(*v, "logprobs");
  if (auto* v = detail::field(body, "top_logprobs")) {
    const int k = static_cast<int>(detail::get_int(*v, "top_logprobs", 0, sched::kMaxLogprobs));
    if (!logprobs) throw invalid_param("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
    r.params.logprobs = k;
  } else if (logprobs) {
    r.params.logprobs = 0;
  }
  r.want_logprobs = logprobs;
  if (auto* v = detail::field(body, "echo")) r.echo = detail::get_bool(*v, "echo");
  if (!add_gen) r.response_role = r.messages.back()["role"].get<std::string>();
  if (r.echo && r.messages.back()["role"] == r.response_role)
    r.chat_echo = r.messages.back()["content"].get<std::string>();
  return r;
}

/// Whether this server can honour the request's tool_choice: `auto` needs
/// --enable-auto-tool-choice and --tool-call-parser (vLLM's rule and message); so do
/// `required` and a named function, whose calls a grammar enforces (tool_call_constraint) and
/// the hermes parser reads back.
inline void check_tool_choice(const GenerationRequest& r, bool enable_auto_tool_choice, const std::string& parser) {
  if (r.tool_choice == ToolChoice::None) return;
  if (r.tool_choice == ToolChoice::Auto && !(enable_auto_tool_choice && !parser.empty()))
    throw ApiError(400, "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
                   "tool_choice", "invalid_request_error", "invalid_value");
  if (r.tool_choice != ToolChoice::Auto && !(enable_auto_tool_choice && !parser.empty()))
    throw ApiError(400,
                   std::string(r.tool_choice == ToolChoice::Required ? "\"required\"" : "A named function") +
                       " tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set: pie "
                       "parses tool calls from the model's output",
                   "tool_choice", "invalid_request_error", "invalid_value");
}

/// The grammar that makes `required` and a named tool_choice always produce a parsable call:
/// hermes `<tool_call>` blocks of the request's tools (one, when parallel_tool_calls is false
/// or a function is named). Empty for none/auto.
inline std::optional<sched::StructuredOutput> tool_call_constraint(const GenerationRequest& r) {
  if (r.tool_choice != ToolChoice::Required && r.tool_choice != ToolChoice::Named) return std::nullopt;
  auto so = sched::StructuredOutput::of(sched::StructuredOutput::Kind::ToolCalls);
  so.text = r.tools.dump();
  so.tool_name = r.tool_choice == ToolChoice::Named ? r.tool_choice_name : std::string{};
  so.single_call = r.tool_choice == ToolChoice::Named || !r.parallel_tool_calls;
  return so;
}

/// Fills params.max_tokens for a prompt of `prompt_len` tokens, or throws vLLM's 400 when the
/// prompt and the requested completion do not fit in max_model_len.
inline void resolve_max_tokens(GenerationRequest& r, int prompt_len, int max_model_len) {
  const char* param = r.chat ? "max_completion_tokens" : "max_tokens";
  if (prompt_len >= max_model_len)
    throw ApiError(400,
                   "This model's maximum context length is " + std::to_string(max_model_len) +
                       " tokens. However, your request has " + std::to_string(prompt_len) +
                       " input tokens. Please reduce the length of the input messages.",
                   r.chat ? "messages" : "prompt", "invalid_request_error", "context_length_exceeded");
  const int room = max_model_len - prompt_len;
  if (!r.max_tokens) {
    r.params.max_tokens = room;  // vLLM: an unset chat max_tokens fills the context
    return;
  }
  if (*r.max_tokens > room)
    throw ApiError(400,
                   "This model's maximum context length is " + std::to_string(max_model_len) +
                       " tokens. However, you requested " + std::to_string(prompt_len + *r.max_tokens) + " tokens (" +
                       std::to_string(prompt_len) + " in the messages, " + std::to_string(*r.max_tokens) +
                       " in the completion). Please reduce the length "
                       "of the messages or completion.",
                   param, "invalid_request_error", "context_length_exceeded");
  r.params.max_tokens = *r.max_tokens;
}

}  // namespace pie::server
