#pragma once
/// \file responses.hpp
/// \brief OpenAI response JSON: ids, completion/chat choices, logprobs in both endpoint shapes,
/// usage, and SSE framing. Shapes follow OpenAI's API reference (and vLLM's additions:
/// `stop_reason`, `reasoning_content`).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <optional>
#include <string>
#include <vector>

#include "pie/engine/request_output.hpp"
#include "pie/sched/finish_reason.hpp"
#include "pie/tokenizer/utf8.hpp"

namespace pie::server {

using json = nlohmann::ordered_json;
/// The raw bytes one token id stands for (byte-level BPE: may be part of a UTF-8 character).
using TokenText = std::function<std::string(int32_t)>;

/// \brief How a token is spelled in logprobs. A token whose bytes are UTF-8 is its text; one
/// that is only part of a character (Qwen3 has 128 single-byte tokens ≥ 0x80, which all decode
/// to U+FFFD) is spelled "bytes:\\xNN…" as OpenAI's legacy completions spell them, so two ids
/// never share a spelling; with vLLM's `return_tokens_as_token_ids` every token is "token_id:N".
struct TokenSpelling {
  TokenText bytes;      ///< raw bytes of a token id
  bool as_ids = false;  ///< return_tokens_as_token_ids
  TokenSpelling(TokenText b, bool ids = false) : bytes(std::move(b)), as_ids(ids) {}  // NOLINT: implicit

  static std::string token_id(int32_t id) { return "token_id:" + std::to_string(id); }
  std::string operator()(int32_t id) const {
    if (as_ids) return token_id(id);
    std::string b = bytes(id);
    if (tokenizer::utf8::is_valid(b)) return b;
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out = "bytes:";
    for (unsigned char c : b) out += std::string("\\x") + kHex[c >> 4] + kHex[c & 15];
    return out;
  }
};

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
/// Each top_logprobs entry includes the sampled token, as vLLM's does. top_logprobs is keyed by
/// spelling: should two ids still share one (two added tokens of equal text), the later is keyed
/// "token_id:N", so no alternative is ever lost. `lead`: a token before `lps` that has no
/// logprob (echo's first prompt token): null in token_logprobs and top_logprobs, as vLLM.
inline json completion_logprobs(const std::vector<TokenLogprob>& lps, const TokenSpelling& spell, size_t offset0,
                                std::optional<int32_t> lead = std::nullopt) {
  json tokens = json::array(), token_lps = json::array(), tops = json::array(), offs = json::array();
  size_t off = offset0;
  if (lead) {
    tokens.push_back(spell(*lead));
    token_lps.push_back(nullptr);
    tops.push_back(nullptr);
    offs.push_back(off);
    off += spell.bytes(*lead).size();
  }
  for (const auto& lp : lps) {
    const std::string t = spell(lp.token);
    tokens.push_back(t);
    token_lps.push_back(lp.logprob);
    json top = json::object();
    std::vector<std::pair<std::string, int32_t>> keyed;  // spelling → id, to tell collisions
    auto put = [&](int32_t id, float l) {
      std::string k = spell(id);
      for (const auto& [key, kid] : keyed)
        if (key == k) {
          if (kid == id) return;  // the sampled token again
          k = TokenSpelling::token_id(id);
          break;
        }
      keyed.emplace_back(k, id);
      top[k] = l;
    };
    put(lp.token, lp.logprob);
    for (const auto& [id, l] : lp.top) put(id, l);
    tops.push_back(std::move(top));
    offs.push_back(off);
    off += spell.bytes(lp.token).size();
  }
  return {{"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs: [...]}], "refusal": null}`.
/// `bytes` are the token's own bytes (OpenAI's meaning), also for part of a character.
inline json chat_logprobs(const std::vector<TokenLogprob>& lps, const TokenSpelling& spell) {
  json content = json::array();
  for (const auto& lp : lps) {
    json top = json::array();
    for (const auto& [id, l] : lp.top)
      top.push_back({{"token", spell(id)}, {"logprob", l}, {"bytes", utf8_bytes(spell.bytes(id))}});
    content.push_back({{"token", spell(lp.token)},
                       {"logprob", lp.logprob},
                       {"bytes", utf8_bytes(spell.bytes(lp.token))},
                       {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

/// Echo's logprobs entries of prompt tokens 1.. (completions with echo and logprobs = k): each
/// token with its first k alternatives other than itself, the k + 1 entries vLLM keeps of a
/// prompt position's {token, top…}.
inline std::vector<TokenLogprob> echo_prompt_logprobs(const std::vector<PromptLogprob>& lps, int k) {
  std::vector<TokenLogprob> out;
  out.reserve(lps.size());
  for (const auto& p : lps) {
    TokenLogprob t;
    t.token = p.token;
    t.logprob = p.logprob;
    for (const auto& [id, l] : p.top) {
      if (static_cast<int>(t.top.size()) >= k) break;
      if (id != p.token) t.top.emplace_back(id, l);
    }
    out.push_back(std::move(t));
  }
  return out;
}

/// vLLM's prompt_logprobs: null for the first prompt token, then per token a map from token id
/// to {logprob, rank, decoded_token}: the prompt token itself, then the top-n (ranks 1..n).
inline json prompt_logprobs_json(const std::vector<PromptLogprob>& lps, const TokenSpelling& spell) {
  auto clamp = [](float x) { return std::max(x, -9999.0f); };  // vLLM's stand-in for -inf
  json out = json::array({nullptr});
  for (const auto& lp : lps) {
    json d = json::object();
    d[std::to_string(lp.token)] = {{"logprob", clamp(lp.logprob)}, {"rank", lp.rank}, {"decoded_token", spell(lp.token)}};
    for (size_t i = 0; i < lp.top.size(); ++i) {
      const std::string k = std::to_string(lp.top[i].first);
      if (!d.contains(k))
        d[k] = {{"logprob", clamp(lp.top[i].second)}, {"rank", i + 1}, {"decoded_token", spell(lp.top[i].first)}};
    }
    out.push_back(std::move(d));
  }
  return out;
}

/// One `data: …` server-sent event.
inline std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

/// JSON text safe for any bytes (invalid UTF-8 from a partial token is replaced, not thrown).
inline std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace pie::server
