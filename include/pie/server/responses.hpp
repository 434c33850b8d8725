#pragma once
/// \file responses.hpp
/// \brief OpenAI response JSON: ids, completion/chat choices, logprobs in both endpoint shapes,
/// usage, and SSE framing. Shapes follow OpenAI's API reference (and vLLM's additions:
/// `stop_reason`, `reasoning_content`).
#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "pie/engine/request_output.hpp"
#include "pie/sched/finish_reason.hpp"

namespace pie::server {

using json = nlohmann::ordered_json;
/// Text of one token for logprobs (a single-token decode).
using TokenText = std::function<std::string(int32_t)>;

/// "cmpl-…" / "chatcmpl-…": prefix plus 32 random hex digits, as OpenAI's ids look.
inline std::string make_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = prefix;
  for (int i = 0; i < 32; ++i) id += kHex[rng() & 15];
  return id;
}

inline int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

/// OpenAI's finish_reason: "stop" / "length"; an aborted sequence reports "abort" (vLLM).
inline json finish_reason_json(sched::FinishReason r) {
  if (r == sched::FinishReason::None) return nullptr;
  return std::string(sched::finish_reason_name(r));
}

/// vLLM's stop_reason: the matched stop string, the stop token id, or null (EOS / length).
inline json stop_reason_json(const std::string& stop_string, int32_t stop_token, const std::vector<int32_t>& eos_ids) {
  if (!stop_string.empty()) return stop_string;
  if (stop_token >= 0) {
    for (int32_t e : eos_ids)
      if (e == stop_token) return nullptr;
    return stop_token;
  }
  return nullptr;
}

inline json usage_json(int64_t prompt_tokens, int64_t completion_tokens, int64_t cached = -1) {
  json u = {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}};
  if (cached >= 0) u["prompt_tokens_details"] = {{"cached_tokens", cached}};
  return u;
}

inline json utf8_bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

/// Legacy completions logprobs: parallel arrays; `text_offset` counts bytes from `offset0`.
/// Each top_logprobs entry includes the sampled token, as vLLM's does.
inline json completion_logprobs(const std::vector<TokenLogprob>& lps, const TokenText& text, size_t offset0) {
  json tokens = json::array(), token_lps = json::array(), tops = json::array(), offs = json::array();
  size_t off = offset0;
  for (const auto& lp : lps) {
    const std::string t = text(lp.token);
    tokens.push_back(t);
    token_lps.push_back(lp.logprob);
    json top = json::object();
    top[t] = lp.logprob;
    for (const auto& [id, l] : lp.top) {
      const std::string tt = text(id);
      if (!top.contains(tt)) top[tt] = l;
    }
    tops.push_back(std::move(top));
    offs.push_back(off);
    off += t.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs: [...]}], "refusal": null}`.
inline json chat_logprobs(const std::vector<TokenLogprob>& lps, const TokenText& text) {
  json content = json::array();
  for (const auto& lp : lps) {
    const std::string t = text(lp.token);
    json top = json::array();
    for (const auto& [id, l] : lp.top) {
      const std::string tt = text(id);
      top.push_back({{"token", tt}, {"logprob", l}, {"bytes", utf8_bytes(tt)}});
    }
    content.push_back({{"token", t}, {"logprob", lp.logprob}, {"bytes", utf8_bytes(t)}, {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

/// One `data: …` server-sent event.
inline std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

/// JSON text safe for any bytes (invalid UTF-8 from a partial token is replaced, not thrown).
inline std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace pie::server
