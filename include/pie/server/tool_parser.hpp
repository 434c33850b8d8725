#pragma once
/// \file tool_parser.hpp
/// \brief `--tool-call-parser hermes`: tool calls in the Hermes / Qwen2.5 / Qwen3 format,
/// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one or several per turn, pulled
/// out of the generated text incrementally. Fed text deltas (the content after `</think>`
/// when a reasoning parser runs first), it releases content deltas and OpenAI tool-call deltas:
/// per call, first `index`, `id`, `type` and `function.name` (with `arguments: ""`), then the
/// argument text in fragments as it is generated. The official `openai` client assembles
/// those deltas into exactly the `tool_calls` of the non-streaming response, which is built by
/// running the same parser over the whole text (ToolCallAssembler).
///
/// Rules (those of vLLM's hermes parser unless noted):
///   - Text outside `<tool_call>` blocks is content; nothing of the tags or the call JSON
///     leaks into it. Whitespace-only text after a call (the newlines between calls) is
///     dropped; other text after a call stays content (vLLM drops it).
///   - `function.arguments` is the `arguments` value's JSON text exactly as the model wrote it
///     (Qwen writes json.dumps style, which is also what vLLM returns), so streamed fragments
///     and the non-streaming string agree byte for byte. An `arguments` given as a JSON string
///     is unquoted; one that is not an object or array (or a call whose keys come in another
///     order) is sent in one piece, re-serialized like Python's json.dumps(ensure_ascii=False).
///     A call without `arguments` gets "{}".
///   - A block whose JSON is not `{"name": <string>, ...}` is not a call: its text, tags
///     included, goes to content (so nothing the model wrote is lost).
///   - A `<tool_call>` left open at the end of the output is parsed as if closed there.
///   - With `max_calls` (parallel_tool_calls=false → 1), blocks past it are dropped whole.
#include <cstddef>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pie/server/responses.hpp"
#include "pie/tokenizer/jinja_value.hpp"

namespace pie::server {

/// \brief One delta of one tool call, as OpenAI streams it in `delta.tool_calls[]`.
struct ToolCallDelta {
  int index = 0;
  bool first = false;     ///< carries id, type and name (and arguments "")
  std::string id, name;   ///< set when `first`
  std::string arguments;  ///< a fragment of function.arguments
};

/// \brief What one feed()/finish() releases.
struct ToolParseDelta {
  std::string content;
  std::vector<ToolCallDelta> calls;
};

/// \brief A complete tool call (OpenAI's `message.tool_calls[]` entry).
struct ToolCall {
  std::string id, name, arguments;
};

/// \brief Incremental hermes tool-call parser; one per choice.
class HermesToolParser {
 public:
  using IdFactory = std::function<std::string()>;

  /// `ids` makes each call's id (default: "chatcmpl-tool-" + 32 hex digits, as vLLM's).
  explicit HermesToolParser(int max_calls = std::numeric_limits<int>::max(), IdFactory ids = {})
      : max_calls_(max_calls), make_id_(std::move(ids)) {
    if (!make_id_) make_id_ = [] { return pie::server::make_id("chatcmpl-tool-"); };
  }

  ToolParseDelta feed(std::string_view text) {
    ToolParseDelta d;
    buf_.append(text);
    process(d, false);
    coalesce(d);
    return d;
  }
  /// End of output: releases what was held back and closes a call left open.
  ToolParseDelta finish() {
    ToolParseDelta d;
    process(d, true);
    coalesce(d);
    return d;
  }
  /// Calls started so far (their first delta was released).
  int calls() const { return calls_; }

  static constexpr std::string_view kOpen = "<tool_call>";
  static constexpr std::string_view kClose = "</tool_call>";

 private:
  using ojson = nlohmann::ordered_json;
  enum class Mode { Text, Call };
  enum class CallState { Header, Args, After, Fallback, Skip };

  /// Length of the longest proper prefix of `tag` that `s` ends with.
  static size_t partial_tag(std::string_view s, std::string_view tag) {
    for (size_t k = std::min(s.size(), tag.size() - 1); k > 0; --k)
      if (s.substr(s.size() - k) == tag.substr(0, k)) return k;
    return 0;
  }
  /// One delta per call per release: a fragment joins the delta before it of the same call.
  static void coalesce(ToolParseDelta& d) {
    std::vector<ToolCallDelta> out;
    for (auto& c : d.calls) {
      if (!out.empty() && !c.first && out.back().index == c.index)
        out.back().arguments += c.arguments;
      else
        out.push_back(std::move(c));
    }
    d.calls = std::move(out);
  }
  static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

  void process(ToolParseDelta& d, bool final) {
    for (;;) {
      if (mode_ == Mode::Text) {
        const size_t at = buf_.find(kOpen);
        if (at != std::string::npos) {
          text(d, std::string_view(buf_).substr(0, at));
          buf_.erase(0, at + kOpen.size());
          start_call();
          continue;
        }
        const size_t keep = final ? 0 : partial_tag(buf_, kOpen);
        text(d, std::string_view(buf_).substr(0, buf_.size() - keep));
        buf_.erase(0, buf_.size() - keep);
        if (final) pending_ws_.clear();  // whitespace after the last call
        return;
      }
      const size_t at = buf_.find(kClose);
      if (at != std::string::npos) {
        body(d, std::string_view(buf_).substr(0, at));
        buf_.erase(0, at + kClose.size());
        end_call(d, true);
        continue;
      }
      const size_t keep = final ? 0 : partial_tag(buf_, kClose);
      body(d, std::string_view(buf_).substr(0, buf_.size() - keep));
      buf_.erase(0, buf_.size() - keep);
      if (!final) return;
      end_call(d, false);
      pending_ws_.clear();
      return;
    }
  }

  void text(ToolParseDelta& d, std::string_view s) {
    if (s.empty()) return;
    if (!after_call_) {
      d.content.append(s);
      return;
    }
    bool all_ws = true;
    for (char c : s) all_ws = all_ws && is_ws(c);
    if (all_ws) {
      pending_ws_.append(s);
      return;
    }
    d.content += pending_ws_;
    d.content.append(s);
    pending_ws_.clear();
    after_call_ = false;
  }

  void start_call() {
    mode_ = Mode::Call;
    body_.clear();
    scan_ = 0;
    depth_ = 0;
    in_str_ = esc_ = false;
    state_ = calls_ >= max_calls_ ? CallState::Skip : CallState::Header;
  }

  void body(ToolParseDelta& d, std::string_view s) {
    body_.append(s);
    if (state_ == CallState::Header) header(d);
    if (state_ == CallState::Args) args(d);
  }

  // A JSON string token at body_[i] ('"' expected): its end (one past the closing quote), or
  // npos when not complete yet.
  size_t string_end(size_t i) const {
    bool esc = false;
    for (size_t k = i + 1; k < body_.size(); ++k) {
      if (esc)
        esc = false;
      else if (body_[k] == '\\')
        esc = true;
      else if (body_[k] == '"')
        return k + 1;
    }
    return std::string::npos;
  }

  /// Reads `{"name": "<string>", "arguments": ` from the body's start; once the arguments
  /// value opens with { or [, the call's first delta goes out and the value streams.
  void header(ToolParseDelta& d) {
    size_t i = 0;
    auto ws = [&] {
      while (i < body_.size() && is_ws(body_[i])) ++i;
      return i < body_.size();
    };
    auto fallback = [&] { state_ = CallState::Fallback; };
    auto read_string = [&](std::string& out) -> int {  // 1 ok, 0 incomplete, -1 not a string
      if (body_[i] != '"') return -1;
      const size_t e = string_end(i);
      if (e == std::string::npos) return 0;
      const auto j = ojson::parse(body_.substr(i, e - i), nullptr, false);
      if (!j.is_string()) return -1;
      out = j.get<std::string>();
      i = e;
      return 1;
    };
    auto expect = [&](char c) -> int {
      if (!ws()) return 0;
      if (body_[i] != c) return -1;
      ++i;
      return 1;
    };
    std::string key, name;
    int r;
    if ((r = expect('{')) <= 0) return r < 0 ? fallback() : void();
    if (!ws()) return;
    if ((r = read_string(key)) <= 0) return r < 0 ? fallback() : void();
    if (key != "name") return fallback();
    if ((r = expect(':')) <= 0) return r < 0 ? fallback() : void();
    if (!ws()) return;
    if ((r = read_string(name)) <= 0) return r < 0 ? fallback() : void();
    if ((r = expect(',')) <= 0) return r < 0 ? fallback() : void();
    if (!ws()) return;
    if ((r = read_string(key)) <= 0) return r < 0 ? fallback() : void();
    if (key != "arguments") return fallback();
    if ((r = expect(':')) <= 0) return r < 0 ? fallback() : void();
    if (!ws()) return;
    if (body_[i] != '{' && body_[i] != '[') return fallback();
    emit_first(d, name, {});
    state_ = CallState::Args;
    scan_ = i;
  }

  void args(ToolParseDelta& d) {
    const size_t from = scan_;
    for (; scan_ < body_.size() && state_ == CallState::Args; ++scan_) {
      const char c = body_[scan_];
      if (in_str_) {
        if (esc_)
          esc_ = false;
        else if (c == '\\')
          esc_ = true;
        else if (c == '"')
          in_str_ = false;
      } else if (c == '"') {
        in_str_ = true;
      } else if (c == '{' || c == '[') {
        ++depth_;
      } else if (c == '}' || c == ']') {
        if (--depth_ == 0) state_ = CallState::After;
      }
    }
    if (scan_ > from) d.calls.push_back({calls_ - 1, false, {}, {}, body_.substr(from, scan_ - from)});
  }

  void emit_first(ToolParseDelta& d, const std::string& name, std::string arguments) {
    d.calls.push_back({calls_, true, make_id_(), name, std::move(arguments)});
    ++calls_;
  }

  void end_call(ToolParseDelta& d, bool closed) {
    mode_ = Mode::Text;
    switch (state_) {
      case CallState::Skip:
        after_call_ = true;
        return;
      case CallState::Args:  // cut off inside the arguments (e.g. by a stop string)
      case CallState::After:
        after_call_ = true;
        return;
      case CallState::Header:
      case CallState::Fallback: {
        const auto j = ojson::parse(body_, nullptr, false);
        if (j.is_object() && j.contains("name") && j["name"].is_string()) {
          std::string a = "{}";
          if (auto it = j.find("arguments"); it != j.end()) {
            if (it->is_string()) {
              a = it->get<std::string>();
            } else {
              a.clear();
              tokenizer::jinja::to_json(a, *it);
            }
          }
          emit_first(d, j["name"].get<std::string>(), std::move(a));
          after_call_ = true;
          return;
        }
        // Not a call: the model's text goes to content, tags and all.
        std::string raw = std::string(kOpen) + body_ + (closed ? std::string(kClose) : std::string());
        const bool was_after = after_call_;
        after_call_ = false;
        if (was_after) d.content += pending_ws_;
        pending_ws_.clear();
        d.content += raw;
        return;
      }
    }
  }

  int max_calls_;
  IdFactory make_id_;
  Mode mode_ = Mode::Text;
  std::string buf_;         // text not yet decided (a possible partial tag)
  std::string pending_ws_;  // whitespace after a call, content only if text follows
  bool after_call_ = false;
  int calls_ = 0;
  // The call being read.
  CallState state_ = CallState::Header;
  std::string body_;
  size_t scan_ = 0;
  int depth_ = 0;
  bool in_str_ = false, esc_ = false;
};

/// \brief Folds tool-call deltas into complete calls (what the openai client does).
struct ToolCallAssembler {
  std::vector<ToolCall> calls;
  void add(const std::vector<ToolCallDelta>& ds) {
    for (const auto& d : ds) {
      if (d.first) calls.push_back({d.id, d.name, {}});
      if (d.index >= 0 && d.index < static_cast<int>(calls.size())) calls[d.index].arguments += d.arguments;
    }
  }
};

/// \brief A whole output split at once: content (empty when there was none) and the calls.
struct ToolParseResult {
  std::string content;
  std::vector<ToolCall> calls;
};
inline ToolParseResult parse_tool_calls(std::string_view text, HermesToolParser parser = HermesToolParser()) {
  ToolParseResult r;
  ToolCallAssembler a;
  ToolParseDelta d = parser.feed(text), e = parser.finish();
  r.content = d.content + e.content;
  a.add(d.calls);
  a.add(e.calls);
  r.calls = std::move(a.calls);
  return r;
}

/// `message.tool_calls` / `delta.tool_calls` JSON.
inline nlohmann::ordered_json tool_calls_json(const std::vector<ToolCall>& calls) {
  auto out = nlohmann::ordered_json::array();
  for (const auto& c : calls)
    out.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  return out;
}
inline nlohmann::ordered_json tool_call_deltas_json(const std::vector<ToolCallDelta>& ds) {
  auto out = nlohmann::ordered_json::array();
  for (const auto& d : ds) {
    if (d.first)
      out.push_back({{"index", d.index},
                     {"id", d.id},
                     {"type", "function"},
                     {"function", {{"name", d.name}, {"arguments", d.arguments}}}});
    else
      out.push_back({{"index", d.index}, {"function", {{"arguments", d.arguments}}}});
  }
  return out;
}

}  // namespace pie::server
