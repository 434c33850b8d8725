#pragma once
/// \file protocol.hpp
/// \brief OpenAI request JSON → validated structs, for /v1/completions and /v1/chat/completions.
/// Every rejection is an ApiError(400) naming the parameter. Fields pie does not implement and
/// that would change the result are rejected by name rather than silently ignored; fields that
/// change nothing (user, metadata, ...) are accepted. Responses are built in responses.hpp.
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/sched/sampling_params.hpp"
#include "pie/server/errors.hpp"
#include "pie/server/request_stream.hpp"  // and the stop-string matcher
#include "pie/tokenizer/stop_strings.hpp"

namespace pie::server {

using json = nlohmann::json;

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
  bool echo = false;  ///< completions: prepend the prompt to the text
  bool stream = false;
  bool include_usage = false;     ///< stream_options.include_usage
  bool continuous_usage = false;  ///< stream_options.continuous_usage_stats (vLLM)
  bool want_logprobs = false;
  std::string user;
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
  if (const json* t = field(body, "tools"); t && !(t->is_array() && t->empty()))
    throw unsupported_param("tools", "tool calling is not implemented");
  if (const json* tc = field(body, "tool_choice"); tc && !(tc->is_string() && tc->get<std::string>() == "none"))
    throw unsupported_param("tool_choice", "tool calling is not implemented");
  for (const char* k : {"functions", "function_call", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                        "guided_decoding_backend", "structured_outputs", "prompt_logprobs", "logits_processors",
                        "prediction", "audio", "truncate_prompt_tokens", "allowed_token_ids", "bad_words"})
    if (present(k)) throw unsupported_param(k);
  if (const json* rf = field(body, "response_format")) {
    const json* type = rf->is_object() ? field(*rf, "type") : nullptr;
    if (!type || !type->is_string())
      throw invalid_param("response_format", "'response_format' must be an object with a string 'type'");
    const bool text = type->get<std::string>() == "text";
    if (!text) throw unsupported_param("response_format", "only {\"type\": \"text\"} is supported");
  }
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
  if (auto* v = detail::field(body, "max_tokens"))
    r.max_tokens = static_cast<int>(detail::get_int(*v, "max_tokens", 1, 1 << 30));
  else
    r.max_tokens = 16;  // OpenAI's (and vLLM's) completions default
  if (auto* v = detail::field(body, "echo")) r.echo = detail::get_bool(*v, "echo");
  if (auto* v = detail::field(body, "logprobs")) {
    r.params.logprobs = static_cast<int>(detail::get_int(*v, "logprobs", 0, 20));
    r.want_logprobs = true;
  }
  if (r.echo && r.want_logprobs)
    throw unsupported_param("echo", "echo with logprobs needs prompt logprobs, which are not implemented");
  return r;
}

/// Parses a /v1/chat/completions body.
inline GenerationRequest parse_chat_request(const json& body, const SamplingDefaults& d) {
  if (!body.is_object()) throw invalid_param("", "The request body must be a JSON object");
  GenerationRequest r;
  r.chat = true;
  detail::reject_unsupported(body, /*chat=*/true);
  detail::parse_sampling(body, d, r);
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
  for (const auto& m : *msgs) {
    json mm = m;
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
    const int k = static_cast<int>(detail::get_int(*v, "top_logprobs", 0, 20));
    if (!logprobs) throw invalid_param("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
    r.params.logprobs = k;
  } else if (logprobs) {
    r.params.logprobs = 0;
  }
  r.want_logprobs = logprobs;
  if (auto* v = detail::field(body, "echo")) r.echo = detail::get_bool(*v, "echo");
  if (r.echo) throw unsupported_param("echo", "echo is not implemented for chat completions");
  return r;
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
