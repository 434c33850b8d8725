// Tool calling: the hermes parser on scripted model outputs (split at every byte), request
// validation of tools / tool_choice / tool messages, prompts byte-identical to transformers'
// apply_chat_template (fixtures from tests/reference/server/gen_tool_chat_fixtures.py), and
// the /v1/chat/completions handler end to end over a scripted engine (non-streaming and SSE,
// with the qwen3 reasoning parser, thinking on and off).
#include <gtest/gtest.h>

#include <deque>
#include <fstream>
#include <set>
#include <sstream>

#include "pie/server/completions.hpp"
#include "pie/server/json_body.hpp"
#include "pie/server/protocol.hpp"
#include "pie/server/tool_parser.hpp"
#include "pie/tokenizer/chat_template.hpp"
#include "pie/tokenizer/reasoning.hpp"
#include "scripted_service.hpp"

using namespace pie::server;
using ojson = nlohmann::ordered_json;

namespace {

ojson fixture(const std::string& name) {
  std::ifstream f(std::string(PIE_SOURCE_DIR) + "/tests/reference/server/" + name);
  if (!f.good()) throw std::runtime_error("missing fixture " + name);
  return ojson::parse(f);
}

// Feeds `pieces` and assembles what the parser releases, like the openai client does.
struct Assembled {
  std::string content;
  std::vector<ToolCall> calls;
  std::vector<ToolCallDelta> deltas;
};
Assembled run(const std::vector<std::string>& pieces, int max_calls = std::numeric_limits<int>::max()) {
  int n = 0;
  HermesToolParser p(max_calls, [&n] { return "id" + std::to_string(n++); });
  Assembled a;
  ToolCallAssembler asm_;
  auto take = [&](ToolParseDelta d) {
    a.content += d.content;
    asm_.add(d.calls);
    a.deltas.insert(a.deltas.end(), d.calls.begin(), d.calls.end());
  };
  for (const auto& s : pieces) take(p.feed(s));
  take(p.finish());
  a.calls = asm_.calls;
  return a;
}

struct Case {
  std::string name, text, content;
  std::vector<std::pair<std::string, std::string>> calls;  // (name, arguments)
  int max_calls = std::numeric_limits<int>::max();
};

std::vector<Case> cases() {
  const std::string w = R"({"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}})";
  const std::string w_args = R"({"location": "Paris", "unit": "celsius"})";
  return {
      {"one_call", "<tool_call>\n" + w + "\n</tool_call>", "", {{"get_weather", w_args}}},
      {"content_then_two_calls",
       "Let me check.\n\n<tool_call>\n" + w + "\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
       "Let me check.\n\n",
       {{"get_weather", w_args}, {"get_time", "{}"}}},
      {"plain_text_with_angle_brackets", "a < b <tool and <tool_call is not a tag; <tool_cal",
       "a < b <tool and <tool_call is not a tag; <tool_cal", {}},
      {"no_tags", "Just an answer, 東京 ✓.", "Just an answer, 東京 ✓.", {}},
      {"invalid_json_is_content", "x <tool_call>\n{not json}\n</tool_call> y", "x <tool_call>\n{not json}\n</tool_call> y", {}},
      {"unterminated_call", "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}", "", {{"f", "{\"x\": 1}"}}},
      {"arguments_first", "<tool_call>{\"arguments\": {\"a\": [1, 2.5, null]}, \"name\": \"f\"}</tool_call>", "",
       {{"f", "{\"a\": [1, 2.5, null]}"}}},
      {"arguments_as_string", "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>", "",
       {{"f", "{\"a\": 1}"}}},
      {"no_arguments", "<tool_call>\n{\"name\": \"get_time\"}\n</tool_call>", "", {{"get_time", "{}"}}},
      {"tricky_strings",
       "<tool_call>\n{\"name\": \"q\", \"arguments\": {\"s\": \"}{ \\\"quoted\\\" ] </tool\", \"ü\": [1, {\"x\": \"]\"}]}}\n</tool_call>",
       "",
       {{"q", "{\"s\": \"}{ \\\"quoted\\\" ] </tool\", \"ü\": [1, {\"x\": \"]\"}]}"}}},
      {"text_after_call", "<tool_call>\n" + w + "\n</tool_call>\n\nDone.", "\n\nDone.", {{"get_weather", w_args}}},
      {"parallel_false_keeps_first",
       "<tool_call>\n" + w + "\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>\n",
       "",
       {{"get_weather", w_args}},
       1},
      {"compact_json", "<tool_call>{\"name\":\"f\",\"arguments\":{\"k\":\"v\"}}</tool_call>", "", {{"f", "{\"k\":\"v\"}"}}},
      {"name_not_string_is_content", "<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>",
       "<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>", {}},
  };
}

void expect_case(const Case& c, const Assembled& a, const std::string& how) {
  EXPECT_EQ(a.content, c.content) << c.name << " " << how;
  ASSERT_EQ(a.calls.size(), c.calls.size()) << c.name << " " << how;
  for (size_t i = 0; i < c.calls.size(); ++i) {
    EXPECT_EQ(a.calls[i].name, c.calls[i].first) << c.name << " " << how;
    EXPECT_EQ(a.calls[i].arguments, c.calls[i].second) << c.name << " " << how;
    EXPECT_EQ(a.calls[i].id, "id" + std::to_string(i)) << c.name << " " << how;
  }
}

}  // namespace

TEST(HermesToolParser, ScriptedOutputsWhole) {
  for (const auto& c : cases()) expect_case(c, run({c.text}, c.max_calls), "whole");
}

TEST(HermesToolParser, EverySplitPointGivesTheSameResult) {
  for (const auto& c : cases()) {
    for (size_t k = 0; k <= c.text.size(); ++k)
      expect_case(c, run({c.text.substr(0, k), c.text.substr(k)}, c.max_calls), "split at " + std::to_string(k));
    for (size_t k = 0; k + 1 < c.text.size(); ++k)  // three pieces
      expect_case(c, run({c.text.substr(0, k), c.text.substr(k, 3), c.text.substr(std::min(c.text.size(), k + 3))},
                         c.max_calls),
                  "split3 at " + std::to_string(k));
  }
}

TEST(HermesToolParser, ByteByByteStreamsNameFirstThenArgumentFragments) {
  for (const auto& c : cases()) {
    std::vector<std::string> bytes;
    for (char ch : c.text) bytes.emplace_back(1, ch);
    const Assembled a = run(bytes, c.max_calls);
    expect_case(c, a, "byte by byte");
    // Per call: exactly one first delta (id, name), before any fragment of that call.
    std::set<int> seen;
    for (const auto& d : a.deltas) {
      if (d.first) {
        EXPECT_TRUE(seen.insert(d.index).second) << c.name;
        EXPECT_FALSE(d.id.empty());
        EXPECT_FALSE(d.name.empty());
      } else {
        EXPECT_TRUE(seen.count(d.index)) << c.name << ": fragment before the call's first delta";
      }
    }
    EXPECT_EQ(a.content.find("<tool_call>{\"name\": \"get"), std::string::npos);
  }
  // The arguments of a well-formed call stream in many fragments, not in one piece at the end.
  const std::string one_call = cases()[0].text;
  std::vector<std::string> bytes;
  for (char ch : one_call) bytes.emplace_back(1, ch);
  const Assembled a = run(bytes);
  ASSERT_GT(a.deltas.size(), 20u);
  EXPECT_TRUE(a.deltas[0].first);
  EXPECT_EQ(a.deltas[0].arguments, "{");  // the value's first byte comes with the name
}

TEST(HermesToolParser, DefaultIdsLookLikeVllms) {
  const auto r = parse_tool_calls("<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].id.rfind("chatcmpl-tool-", 0), 0u);
  EXPECT_EQ(r.calls[0].id.size(), std::string("chatcmpl-tool-").size() + 32);
}

// ---- request validation ----

namespace {
const ojson kTool = ojson::parse(R"({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})");

ApiError chat_error(ojson body) {
  if (!body.contains("messages")) body["messages"] = ojson::parse(R"([{"role": "user", "content": "hi"}])");
  try {
    parse_chat_request(body, {});
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no error for " << body.dump();
  return ApiError(0, "");
}
}  // namespace

TEST(ToolRequest, ToolChoiceForms) {
  auto parse = [](ojson extra) {
    ojson b = {{"messages", ojson::parse(R"([{"role": "user", "content": "hi"}])")}, {"tools", {kTool}}};
    for (auto it = extra.begin(); it != extra.end(); ++it) b[it.key()] = it.value();
    return parse_chat_request(b, {});
  };
  EXPECT_EQ(parse(ojson::object()).tool_choice, ToolChoice::Auto);  // tools given → auto
  EXPECT_EQ(parse({{"tool_choice", "none"}}).tool_choice, ToolChoice::None);
  EXPECT_EQ(parse({{"tool_choice", "required"}}).tool_choice, ToolChoice::Required);
  auto named = parse({{"tool_choice", {{"type", "function"}, {"function", {{"name", "f"}}}}}});
  EXPECT_EQ(named.tool_choice, ToolChoice::Named);
  EXPECT_EQ(named.tool_choice_name, "f");
  EXPECT_FALSE(parse({{"parallel_tool_calls", false}}).parallel_tool_calls);
  // Tools reach the template (also with tool_choice none, as in vLLM).
  EXPECT_EQ(parse({{"tool_choice", "none"}}).template_options["tools"][0]["function"]["name"], "f");
  // No tools: nothing to choose; required with an empty list is none (OpenAI).
  auto empty = parse_chat_request(
      ojson{{"messages", ojson::parse(R"([{"role": "user", "content": "hi"}])")}, {"tools", ojson::array()},
            {"tool_choice", "required"}},
      {});
  EXPECT_EQ(empty.tool_choice, ToolChoice::None);
  EXPECT_FALSE(empty.template_options.contains("tools"));
}

TEST(ToolRequest, MalformedToolsAndToolChoiceAre400sNamingTheField) {
  struct Bad {
    ojson body;
    std::string param, code;
  };
  const std::vector<Bad> bad = {
      {{{"tools", "f"}}, "tools", "invalid_type"},
      {{{"tools", {1}}}, "tools[0]", "invalid_type"},
      {{{"tools", {{{"type", "function"}}}}}, "tools[0].function", "missing_required_parameter"},
      {{{"tools", {{{"type", "retrieval"}, {"function", {{"name", "f"}}}}}}}, "tools[0].type", "invalid_value"},
      {{{"tools", {{{"type", "function"}, {"function", {{"description", "x"}}}}}}}, "tools[0].function.name",
       "missing_required_parameter"},
      {{{"tools", {{{"type", "function"}, {"function", {{"name", 5}}}}}}}, "tools[0].function.name", "invalid_type"},
      {{{"tools", {{{"type", "function"}, {"function", {{"name", ""}}}}}}}, "tools[0].function.name", "empty_string"},
      {{{"tools", {{{"type", "function"}, {"function", {{"name", "f"}, {"parameters", "x"}}}}}}},
       "tools[0].function.parameters", "invalid_type"},
      {{{"tools", {kTool}}, {"tool_choice", "sometimes"}}, "tool_choice", "invalid_value"},
      {{{"tool_choice", "required"}}, "tool_choice", "invalid_value"},  // without tools
      {{{"tools", {kTool}}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "g"}}}}}}, "tool_choice",
       "invalid_value"},
      {{{"tools", {kTool}}, {"tool_choice", {{"type", "function"}}}}, "tool_choice.function",
       "missing_required_parameter"},
      {{{"tools", {kTool}}, {"tool_choice", 3}}, "tool_choice", "invalid_type"},
      {{{"tools", {kTool}}, {"parallel_tool_calls", "yes"}}, "parallel_tool_calls", "invalid_type"},
      {{{"messages", ojson::parse(R"([{"role": "tool", "content": "x"}])")}}, "messages[0].tool_call_id",
       "missing_required_parameter"},
      {{{"messages", ojson::parse(
             R"([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}])")}},
       "messages[0].tool_calls[0].function.arguments", "invalid_value"},
      {{{"messages", ojson::parse(R"([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}])")}},
       "messages[0].tool_calls[0].function.name", "missing_required_parameter"},
  };
  for (const auto& b : bad) {
    const ApiError e = chat_error(b.body);
    EXPECT_EQ(e.status(), 400) << b.body.dump();
    EXPECT_EQ(e.param(), b.param) << b.body.dump() << ": " << e.what();
    EXPECT_EQ(e.code(), b.code) << b.body.dump() << ": " << e.what();
  }
}

TEST(ToolRequest, ChoiceNeedsTheServerFlags) {
  auto req = parse_chat_request(
      ojson{{"messages", ojson::parse(R"([{"role": "user", "content": "hi"}])")}, {"tools", {kTool}}}, {});
  EXPECT_NO_THROW(check_tool_choice(req, true, "hermes"));
  try {
    check_tool_choice(req, false, "");
    FAIL();
  } catch (const ApiError& e) {  // vLLM's message
    EXPECT_STREQ(e.what(), "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set");
  }
  req.tool_choice = ToolChoice::Required;
  EXPECT_THROW(check_tool_choice(req, false, ""), ApiError);
  EXPECT_THROW(check_tool_choice(req, true, ""), ApiError);
  req.tool_choice = ToolChoice::None;
  EXPECT_NO_THROW(check_tool_choice(req, false, ""));
}

TEST(ToolRequest, ArgumentsStringsAreParsedForTheTemplateInOrder) {
  auto r = parse_chat_request(parse_json_body(R"({"messages": [{"role": "user", "content": "x"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "a", "type": "function",
        "function": {"name": "f", "arguments": "{\"z\": 1, \"a\": {\"y\": 2, \"b\": 3}}"}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": ""}}]},
      {"role": "tool", "tool_call_id": "a", "content": "ok"}]})",
                                                      1 << 20),
                              {});
  const auto& args = r.messages[1]["tool_calls"][0]["function"]["arguments"];
  EXPECT_EQ(args.dump(), R"({"z":1,"a":{"y":2,"b":3}})");  // the client's order, not sorted
  EXPECT_EQ(r.messages[1]["tool_calls"][1]["function"]["arguments"], ojson::object());
  EXPECT_EQ(r.messages[1]["content"], "");
}

// ---- prompts byte-identical to apply_chat_template ----

TEST(ToolChatRender, ByteIdenticalToTransformers) {
  const auto t = pie::tokenizer::ChatTemplate::embedded();  // the genuine Qwen3 template
  const auto cases = fixture("tool_chat_renders.json");
  ASSERT_GE(cases.size(), 6u);
  for (const auto& c : cases) {
    const ojson body = parse_json_body(c["body"].get<std::string>(), 1 << 20);
    const GenerationRequest r = parse_chat_request(body, {});
    EXPECT_EQ(t.render(r.messages, r.template_options), c["expected"].get<std::string>()) << c["name"];
  }
}

TEST(ToolChatRender, KeySortedJsonWouldNotMatch) {
  // The test above bites: the same bodies parsed into key-sorted nlohmann::json render differently.
  const auto t = pie::tokenizer::ChatTemplate::embedded();
  int differ = 0;
  for (const auto& c : fixture("tool_chat_renders.json")) {
    const GenerationRequest r = parse_chat_request(nlohmann::json::parse(c["body"].get<std::string>()), {});
    const std::string sorted = t.render(nlohmann::json(r.messages), nlohmann::json(r.template_options));
    if (c["sorted_differs"].get<bool>()) {
      EXPECT_NE(sorted, c["expected"].get<std::string>()) << c["name"];
      ++differ;
    }
  }
  EXPECT_GE(differ, 6);
}

// ---- the chat handler over a scripted engine ----

namespace {

using pie::server::test::ScriptedService;

struct Harness {
  ScriptedService svc;
  GenerationContext ctx;
  std::string last_prompt;
  Harness(std::vector<std::string> script, bool reasoning) : svc(std::move(script)) {
    ctx.served_names = {"m"};
    ctx.service = &svc;
    ctx.encode = [](const std::string& text, bool) { return std::vector<int32_t>(text.size() / 8 + 1, 7); };
    ctx.decode = [](const std::vector<int32_t>&) { return std::string(); };
    ctx.token_text = [](int32_t) { return std::string("t"); };
    ctx.render_chat = [this](const ojson& m, const ojson& o) {
      return last_prompt = pie::tokenizer::ChatTemplate::embedded().render(m, o);
    };
    ctx.stream_poll_ms = 1;
    ctx.enable_auto_tool_choice = true;
    ctx.tool_call_parser = "hermes";
    if (reasoning)
      ctx.make_reasoning = [] {  // as pie serve --reasoning-parser qwen3 does
        auto p = std::make_shared<pie::tokenizer::ReasoningParser>(false);
        return ReasoningSplitter([p](std::string_view delta, bool last) {
          auto d = p->feed(delta);
          std::pair<std::string, std::string> out{d.reasoning_delta, d.content_delta};
          if (last) {
            auto f = p->finish();
            out.first += f.reasoning_delta;
            out.second += f.content_delta;
          }
          return out;
        });
      };
  }
  ojson complete(const ojson& body) {
    httplib::Response res;
    handle_generation(ctx, true, body, res);
    return ojson::parse(res.body);
  }
  /// SSE events of a streaming request, parsed.
  std::vector<ojson> stream(ojson body) {
    body["stream"] = true;
    httplib::Response res;
    handle_generation(ctx, true, body, res);
    std::string out;
    bool done = false;
    httplib::DataSink sink;
    sink.write = [&](const char* d, size_t n) {
      out.append(d, n);
      return true;
    };
    sink.is_writable = [] { return true; };
    sink.done = [&] { done = true; };
    for (int i = 0; i < 10000 && !done; ++i) res.content_provider_(0, 0, sink);
    EXPECT_TRUE(done);
    std::vector<ojson> evs;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("data: ", 0) != 0) continue;
      if (line == "data: [DONE]") break;
      evs.push_back(ojson::parse(line.substr(6)));
    }
    return evs;
  }
};

/// The openai client's assembly of chat chunks into a message.
struct StreamedMessage {
  std::string content, reasoning;
  bool content_seen = false;
  std::vector<ojson> calls;
  std::string finish_reason;
};
StreamedMessage assemble(const std::vector<ojson>& evs) {
  StreamedMessage m;
  for (const auto& e : evs) {
    for (const auto& ch : e["choices"]) {
      const auto& d = ch["delta"];
      if (d.contains("content") && !d["content"].is_null()) m.content += d["content"].get<std::string>();
      if (d.contains("reasoning_content")) m.reasoning += d["reasoning_content"].get<std::string>();
      if (d.contains("tool_calls"))
        for (const auto& tc : d["tool_calls"]) {
          const size_t i = tc["index"].get<size_t>();
          EXPECT_EQ(d["tool_calls"].size(), 1u);  // one call delta per chunk
          if (i >= m.calls.size()) {  // a new call: its first delta has id, type, name and arguments ""
            EXPECT_EQ(i, m.calls.size());
            EXPECT_EQ(tc["function"]["arguments"], "") << tc.dump();
            EXPECT_TRUE(tc.contains("id") && tc.contains("type") && tc["function"].contains("name")) << tc.dump();
            m.calls.push_back({{"id", tc["id"]},
                               {"type", tc["type"]},
                               {"function", {{"name", tc["function"]["name"]}, {"arguments", ""}}}});
          } else {
            EXPECT_FALSE(tc.contains("id")) << tc.dump();
          }
          if (tc["function"].contains("arguments"))
            m.calls[i]["function"]["arguments"] =
                m.calls[i]["function"]["arguments"].get<std::string>() + tc["function"]["arguments"].get<std::string>();
        }
      if (!ch["finish_reason"].is_null()) m.finish_reason = ch["finish_reason"].get<std::string>();
    }
  }
  return m;
}

std::vector<std::string> pieces(const std::string& s, size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size(); i += n) out.push_back(s.substr(i, n));
  return out;
}

ojson tool_body() {
  return ojson::parse(R"({"model": "m", "messages": [{"role": "user", "content": "Weather in Paris and Rome?"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
      "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]})");
}

const std::string kTwoCalls =
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}\n</tool_call>\n"
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Rome\"}}\n</tool_call>";

void expect_two_calls(const ojson& calls) {
  ASSERT_EQ(calls.size(), 2u) << calls.dump();
  EXPECT_EQ(calls[0]["type"], "function");
  EXPECT_EQ(calls[0]["function"]["name"], "get_weather");
  EXPECT_EQ(calls[0]["function"]["arguments"], "{\"location\": \"Paris\"}");
  EXPECT_EQ(calls[1]["function"]["arguments"], "{\"location\": \"Rome\"}");
  EXPECT_EQ(calls[0]["id"].get<std::string>().rfind("chatcmpl-tool-", 0), 0u);
  EXPECT_NE(calls[0]["id"], calls[1]["id"]);
}

}  // namespace

TEST(ToolChatHandler, NonStreamingCarriesToolCalls) {
  for (bool thinking : {false, true}) {
    const std::string out = (thinking ? "<think>\nTwo cities: two calls.\n</think>\n\n" : "") + kTwoCalls;
    Harness h(pieces(out, 5), /*reasoning=*/true);
    ojson body = tool_body();
    body["chat_template_kwargs"] = {{"enable_thinking", thinking}};
    const ojson r = h.complete(body);
    const auto& ch = r["choices"][0];
    EXPECT_EQ(ch["finish_reason"], "tool_calls") << r.dump();
    EXPECT_TRUE(ch["message"]["content"].is_null()) << r.dump();
    expect_two_calls(ch["message"]["tool_calls"]);
    if (thinking)
      EXPECT_EQ(ch["message"]["reasoning_content"], "Two cities: two calls.");
    else
      EXPECT_TRUE(ch["message"]["reasoning_content"].is_null());
    EXPECT_NE(h.last_prompt.find("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""),
              std::string::npos);
  }
}

TEST(ToolChatHandler, StreamingDeltasAssembleLikeTheOpenAIClient) {
  for (bool thinking : {false, true})
    for (size_t piece : {1, 3, 7, 1000}) {
      const std::string out = (thinking ? "<think>\nTwo calls.\n</think>\n\n" : "") + std::string("Checking.\n") + kTwoCalls;
      Harness h(pieces(out, piece), /*reasoning=*/true);
      const auto evs = h.stream(tool_body());
      const StreamedMessage m = assemble(evs);
      EXPECT_EQ(m.finish_reason, "tool_calls");
      EXPECT_EQ(m.content, "Checking.\n");
      EXPECT_EQ(m.reasoning, thinking ? "Two calls." : "");
      expect_two_calls(ojson(m.calls));
      for (const auto& e : evs)  // no raw tag text in any content delta
        for (const auto& ch : e["choices"])
          if (ch["delta"].contains("content"))
            EXPECT_EQ(ch["delta"]["content"].get<std::string>().find("tool_call"), std::string::npos) << e.dump();
    }
}

TEST(ToolChatHandler, WithoutReasoningParserAndToolChoiceNone) {
  {
    Harness h(pieces(kTwoCalls, 4), /*reasoning=*/false);
    ojson body = tool_body();
    body["parallel_tool_calls"] = false;
    const ojson r = h.complete(body);
    EXPECT_EQ(r["choices"][0]["message"]["tool_calls"].size(), 1u);  // parallel_tool_calls=false: the first
    EXPECT_EQ(r["choices"][0]["finish_reason"], "tool_calls");
  }
  {
    Harness h(pieces(kTwoCalls, 4), false);
    ojson body = tool_body();
    body["tool_choice"] = "none";  // not parsed: the text is content
    const ojson r = h.complete(body);
    EXPECT_EQ(r["choices"][0]["message"]["content"], kTwoCalls);
    EXPECT_EQ(r["choices"][0]["message"]["tool_calls"].size(), 0u);
    EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  }
  {
    Harness h({"Plain answer."}, false);  // tools given, none called
    const ojson r = h.complete(tool_body());
    EXPECT_EQ(r["choices"][0]["message"]["content"], "Plain answer.");
    EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  }
  {
    Harness h({"x"}, false);
    h.ctx.enable_auto_tool_choice = false;
    h.ctx.tool_call_parser.clear();
    EXPECT_THROW(h.complete(tool_body()), ApiError);  // auto without the flags: 400 as in vLLM
  }
}

TEST(ToolChatHandler, RoundTripRendersThroughTheTemplate) {
  Harness h({"It is 21 °C in Paris."}, true);
  ojson body = tool_body();
  body["messages"].push_back(ojson::parse(R"({"role": "assistant", "content": null, "tool_calls": [{"id": "chatcmpl-tool-1",
      "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}}]})"));
  body["messages"].push_back(
      ojson::parse(R"({"role": "tool", "tool_call_id": "chatcmpl-tool-1", "content": "{\"temp_c\": 21}"})"));
  const ojson r = h.complete(body);
  EXPECT_EQ(r["choices"][0]["message"]["content"], "It is 21 °C in Paris.");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_NE(h.last_prompt.find("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                               "{\"location\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n"
                               "<tool_response>\n{\"temp_c\": 21}\n</tool_response><|im_end|>\n"),
            std::string::npos)
      << h.last_prompt;
}
