// Unit tests of the server pieces that need no engine: request parsing and validation, errors,
// auth, stop strings, metrics text, response shapes, the request queue, flag spellings.
#include "pie/server/protocol.hpp"

#include <gtest/gtest.h>

#include <random>

#include <CLI/CLI.hpp>

#include <atomic>
#include <chrono>
#include <thread>

#include "pie/server/auth.hpp"
#include "pie/server/connection.hpp"
#include "pie/server/errors.hpp"
#include "pie/server/metrics.hpp"
#include "pie/server/request_stream.hpp"
#include "pie/server/responses.hpp"
#include "pie/server/serve_options.hpp"
#include "pie/tokenizer/stop_strings.hpp"

using namespace pie::server;
using json = pie::server::json;  // ordered_json, as the server parses bodies

namespace {

ApiError completion_error(const json& body) {
  try {
    GenerationRequest r = parse_completion_request(body, {});
    resolve_max_tokens(r, 4, 64);
    validate_sampling(r.params, 1000);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no error for " << body.dump();
  return ApiError(0, "");
}

}  // namespace

TEST(ProtocolCompletion, DefaultsAndFields) {
  SamplingDefaults d;
  d.temperature = 0.6f;
  d.top_k = 20;
  auto r = parse_completion_request(
      json{{"model", "m"}, {"prompt", "hi"}, {"top_p", 0.5}, {"n", 2}, {"stop", "x"}, {"seed", 7}, {"logprobs", 3}}, d);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "hi");
  EXPECT_FLOAT_EQ(r.params.temperature, 0.6f);  // default from generation_config
  EXPECT_EQ(r.params.top_k, 20);
  EXPECT_FLOAT_EQ(r.params.top_p, 0.5f);
  EXPECT_EQ(r.params.n, 2);
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(*r.params.seed, 7u);
  EXPECT_EQ(*r.params.logprobs, 3);
  EXPECT_EQ(*r.max_tokens, 16);  // OpenAI's completions default
}

TEST(ProtocolCompletion, PromptForms) {
  auto a = parse_completion_request(json{{"prompt", {1, 2, 3}}}, {});
  ASSERT_EQ(a.prompts.size(), 1u);
  EXPECT_TRUE(a.prompts[0].is_tokens);
  EXPECT_EQ(a.prompts[0].token_ids, (std::vector<int32_t>{1, 2, 3}));
  auto b = parse_completion_request(json{{"prompt", {"a", "b"}}}, {});
  EXPECT_EQ(b.prompts.size(), 2u);
  auto c = parse_completion_request(json{{"prompt", {{1}, {2, 3}}}}, {});
  EXPECT_EQ(c.prompts.size(), 2u);
  EXPECT_EQ(c.prompts[1].token_ids.size(), 2u);
}

TEST(ProtocolCompletion, InvalidValuesNameTheParameter) {
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"temperature", -1}}).param(), "temperature");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"temperature", "hot"}}).param(), "temperature");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"top_p", 0}}).param(), "top_p");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"n", 0}}).param(), "n");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"max_tokens", 0}}).param(), "max_tokens");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"presence_penalty", 3}}).param(), "presence_penalty");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"logit_bias", {{"5", 200}}}}).param(), "logit_bias");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"logit_bias", {{"abc", 1}}}}).param(), "logit_bias");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"stop_token_ids", {5000}}}).param(), "stop_token_ids");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"logprobs", 21}}).param(), "logprobs");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"stop", 5}}).param(), "stop");
  EXPECT_EQ(completion_error(json::object()).param(), "prompt");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"stream_options", {{"include_usage", true}}}}).param(),
            "stream_options");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"min_tokens", 20}, {"max_tokens", 10}}).param(), "min_tokens");
  for (auto e : {completion_error({{"prompt", "x"}, {"top_k", -5}})}) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_NE(std::string(e.what()).find("top_k"), std::string::npos);
  }
}

TEST(ProtocolCompletion, UnsupportedFieldsAreRejectedByName) {
  for (const char* k : {"tools", "suffix"}) {
    json body = {{"prompt", "x"}};
    body[k] = json{{"type", "json_object"}};
    if (std::string(k) == "suffix") body[k] = "tail";
    if (std::string(k) == "tools") body[k] = json::array({json{{"type", "function"}}});
    const ApiError e = completion_error(body);
    EXPECT_EQ(e.status(), 400) << k;
    EXPECT_EQ(e.param(), k);
  }
  // Harmless or neutral values are accepted.
  EXPECT_NO_THROW(parse_completion_request(
      json{{"prompt", "x"}, {"response_format", {{"type", "text"}}}, {"user", "u"}, {"tools", json::array()}}, {}));
}

// Structured outputs: every form maps onto one StructuredOutput; bad shapes are 400s naming
// the field (the schema/regex/grammar text itself is checked by the compiler: test_structured.py).
TEST(ProtocolStructured, EveryFormMapsOntoOneConstraint) {
  using K = pie::sched::StructuredOutput::Kind;
  auto chat = [](json extra) {
    json b = {{"messages", json::array({json{{"role", "user"}, {"content", "x"}}})}};
    for (auto it = extra.begin(); it != extra.end(); ++it) b[it.key()] = it.value();
    return parse_chat_request(b, {});
  };
  auto r = chat({{"response_format", {{"type", "json_object"}}}});
  ASSERT_TRUE(r.structured);
  EXPECT_EQ(r.structured->kind, K::JsonObject);
  EXPECT_EQ(r.structured_param, "response_format");
  r = chat({{"response_format",
             {{"type", "json_schema"},
              {"json_schema", {{"name", "x"}, {"strict", true}, {"schema", {{"type", "object"}}}}}}}});
  ASSERT_TRUE(r.structured);
  EXPECT_EQ(r.structured->kind, K::JsonSchema);
  EXPECT_TRUE(r.structured->strict);
  EXPECT_EQ(json::parse(r.structured->text), json({{"type", "object"}}));
  r = chat({{"response_format", {{"type", "text"}}}});
  EXPECT_FALSE(r.structured);
  r = chat({{"structured_outputs", {{"regex", "a+"}}}});
  EXPECT_EQ(r.structured->kind, K::Regex);
  EXPECT_EQ(r.structured->text, "a+");
  r = chat({{"structured_outputs", {{"choice", {"a", "b"}}}}});
  EXPECT_EQ(r.structured->choices, (std::vector<std::string>{"a", "b"}));
  r = chat({{"structured_outputs", {{"grammar", "root ::= \"a\""}}}});
  EXPECT_EQ(r.structured->kind, K::Grammar);
  r = chat({{"structured_outputs", {{"json", "{\"type\": \"integer\"}"}}}});  // a schema as a string
  EXPECT_EQ(json::parse(r.structured->text), json({{"type", "integer"}}));
  auto c = parse_completion_request(json{{"prompt", "x"}, {"guided_choice", {"yes", "no"}}}, {});
  EXPECT_EQ(c.structured->kind, K::Choice);
  EXPECT_EQ(c.structured_param, "guided_choice");
  c = parse_completion_request(json{{"prompt", "x"}, {"guided_json", {{"type", "object"}}}}, {});
  EXPECT_EQ(c.structured->kind, K::JsonSchema);
  c = parse_completion_request(json{{"prompt", "x"}, {"guided_regex", "[0-9]+"}, {"guided_decoding_backend", "xgrammar"}}, {});
  EXPECT_EQ(c.structured->kind, K::Regex);
  c = parse_completion_request(json{{"prompt", "x"}, {"guided_grammar", "root ::= \"a\""}}, {});
  EXPECT_EQ(c.structured->kind, K::Grammar);
}

TEST(ProtocolStructured, BadShapesAre400sNamingTheField) {
  auto err = [](json body) {
    body["prompt"] = "x";
    try {
      parse_completion_request(body, {});
    } catch (const ApiError& e) {
      return e;
    }
    return ApiError(200, "no error");
  };
  EXPECT_EQ(err({{"response_format", {{"type", "json_schema"}}}}).param(), "response_format.json_schema");
  EXPECT_EQ(err({{"response_format", {{"type", "json_schema"}, {"json_schema", json::object()}}}}).param(),
            "response_format.json_schema.name");
  EXPECT_EQ(err({{"response_format", {{"type", "yaml"}}}}).param(), "response_format.type");
  EXPECT_EQ(err({{"guided_choice", json::array()}}).param(), "guided_choice");
  EXPECT_EQ(err({{"guided_json", "not json"}}).param(), "guided_json");
  EXPECT_EQ(err({{"guided_regex", 5}}).param(), "guided_regex");
  EXPECT_EQ(err({{"guided_regex", ""}}).param(), "guided_regex");
  EXPECT_EQ(err({{"structured_outputs", {{"xml", "x"}}}}).param(), "structured_outputs.xml");
  EXPECT_EQ(err({{"guided_decoding_backend", "outlines"}}).param(), "guided_decoding_backend");
  const ApiError two = err({{"guided_regex", "a"}, {"structured_outputs", {{"choice", {"a"}}}}});
  EXPECT_EQ(two.status(), 400);
  EXPECT_NE(std::string(two.what()).find("only one structured output"), std::string::npos);
}

TEST(ProtocolCompletion, ContextLengthErrorIsVllmStyle) {
  auto r = parse_completion_request(json{{"prompt", "x"}, {"max_tokens", 100}}, {});
  try {
    resolve_max_tokens(r, 30, 64);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.param(), "max_tokens");
    EXPECT_NE(std::string(e.what()).find("maximum context length is 64 tokens"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("you requested 130 tokens (30 in the messages, 100 in the completion)"),
              std::string::npos);
  }
  auto c = parse_chat_request(json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}}, {});
  resolve_max_tokens(c, 10, 64);
  EXPECT_EQ(c.params.max_tokens, 54);  // unset chat max_tokens fills the context
}

TEST(ProtocolChat, MessagesAndOptions) {
  auto r = parse_chat_request(
      json{{"messages",
            {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}},
           {"chat_template_kwargs", {{"enable_thinking", false}}},
           {"max_completion_tokens", 5},
           {"logprobs", true},
           {"top_logprobs", 2}},
      {});
  EXPECT_EQ(r.messages[0]["content"], "ab");
  EXPECT_EQ(r.template_options["enable_thinking"], false);
  EXPECT_EQ(r.template_options["add_generation_prompt"], true);
  EXPECT_EQ(*r.max_tokens, 5);
  EXPECT_EQ(*r.params.logprobs, 2);
  EXPECT_THROW(parse_chat_request(json{{"messages", json::array()}}, {}), ApiError);
  EXPECT_THROW(parse_chat_request(json{{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}, {}), ApiError);
  try {
    parse_chat_request(json{{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"top_logprobs", 2}}, {});
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param(), "top_logprobs");
  }
}

TEST(Errors, OpenAIShape) {
  const json j = model_not_found("x").to_json();
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "model");
  EXPECT_EQ(j["error"]["code"], "model_not_found");
  EXPECT_TRUE(j["error"]["message"].is_string());
  const json u = unauthorized().to_json();
  EXPECT_TRUE(u["error"]["param"].is_null());
  EXPECT_EQ(unauthorized().status(), 401);
  EXPECT_EQ(error_for_status(413).status(), 413);
}

TEST(Auth, BearerKeyConstantTime) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "abcd"));
  EXPECT_FALSE(constant_time_equal("", "a"));
  ApiKeyAuth off;
  EXPECT_TRUE(off.allows(""));
  ApiKeyAuth a("abc123");
  EXPECT_TRUE(a.allows("Bearer abc123"));
  EXPECT_TRUE(a.allows("bearer abc123"));
  EXPECT_FALSE(a.allows("Bearer abc1234"));
  EXPECT_FALSE(a.allows("Bearer abc12"));
  EXPECT_FALSE(a.allows("abc123"));
  EXPECT_FALSE(a.allows(""));
  EXPECT_FALSE(a.allows("Basic abc123"));
}

TEST(StopStrings, HoldsBackPrefixesAndCuts) {
  StopStringMatcher m({"STOP"}, false);
  EXPECT_EQ(m.push("hello S"), "hello ");  // "S" may start STOP
  EXPECT_EQ(m.push("T"), "");
  EXPECT_EQ(m.push("x"), "STx");  // not a stop after all
  EXPECT_EQ(m.push(" aSTO"), " a");
  EXPECT_EQ(m.push("P tail"), "");
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(m.matched_string(), "STOP");
  EXPECT_EQ(m.text(), "hello STx a");
  EXPECT_EQ(m.push("more"), "");
}

TEST(StopStrings, AhoCorasickAgreesWithBruteForce) {
  // Random stop sets over a 3-letter alphabet, random texts fed in random pieces: the first
  // stop string to end in the text (the longest of those ending there) cuts it, and what was
  // sent before the cut never contains a proper prefix of a stop string that later completed.
  std::mt19937 rng(17);
  auto word = [&](int maxlen) {
    std::string w(1 + rng() % maxlen, 'a');
    for (char& c : w) c = static_cast<char>('a' + rng() % 3);
    return w;
  };
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<std::string> stops;
    for (int i = 0, n = 1 + rng() % 5; i < n; ++i) stops.push_back(word(5));
    const std::string text = word(40);
    const bool include = rng() % 2;
    // Brute force: the earliest end, then the longest stop string ending there.
    size_t cut = std::string::npos, best_len = 0;
    for (size_t end = 1; end <= text.size() && cut == std::string::npos; ++end)
      for (const auto& s : stops)
        if (s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0 && s.size() > best_len)
          best_len = s.size(), cut = include ? end : end - s.size();
    StopStringMatcher m(stops, include);
    std::string sent;
    for (size_t i = 0; i < text.size();) {
      const size_t k = std::min<size_t>(1 + rng() % 4, text.size() - i);
      sent += m.push(std::string_view(text).substr(i, k));
      i += k;
    }
    sent += m.flush();
    if (cut == std::string::npos) {
      EXPECT_FALSE(m.matched());
      EXPECT_EQ(sent, text);
    } else {
      ASSERT_TRUE(m.matched()) << text;
      EXPECT_EQ(sent, text.substr(0, cut)) << text;
      EXPECT_EQ(m.matched_string().size(), best_len);
    }
  }
}

TEST(StopStrings, LimitsAre400) {
  SamplingDefaults d;
  std::vector<std::string> many(kMaxStopStrings + 1, "x");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"stop", many}}).param(), "stop");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"stop", std::string(kMaxStopStringBytes + 1, 'x')}}).param(), "stop");
  std::vector<std::string> ok(kMaxStopStrings, std::string(kMaxStopStringBytes, 'x'));
  EXPECT_EQ(parse_completion_request(json{{"prompt", "x"}, {"stop", ok}}, d).stop.size(), kMaxStopStrings);
  std::vector<int> ids(kMaxStopTokenIds + 1, 1);
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"stop_token_ids", ids}}).param(), "stop_token_ids");
}

TEST(StopStrings, IncludeStopStringAndFlush) {
  StopStringMatcher m({"ab", "zzz"}, true);
  EXPECT_EQ(m.push("xxa"), "xx");
  EXPECT_EQ(m.push("byy"), "ab");
  EXPECT_TRUE(m.matched());
  StopStringMatcher f({"zzz"}, false);
  EXPECT_EQ(f.push("azz"), "a");
  EXPECT_EQ(f.flush(), "zz");
  StopStringMatcher none;
  EXPECT_EQ(none.push("abc"), "abc");
}

TEST(Metrics, PrometheusText) {
  ServerMetrics m;
  m.prompt_tokens += 5;
  m.time_to_first_token.observe(0.003);
  m.time_to_first_token.observe(100.0);
  m.block_size = 16;
  EngineGauges g;
  g.kv_usage = 0.25;
  g.num_running = 3;
  g.num_preemptions = 2;
  g.num_kv_blocks = 100;
  const std::string t = m.render("my \"model\"", g);
  const std::string L = "{model_name=\"my \\\"model\\\"\",engine=\"0\"";
  auto has = [&](const std::string& s) { return t.find(s) != std::string::npos; };
  EXPECT_TRUE(has("# TYPE vllm:num_requests_running gauge"));
  EXPECT_TRUE(has("vllm:num_requests_running" + L + "} 3")) << t;
  EXPECT_TRUE(has("vllm:kv_cache_usage_perc" + L + "} 0.25"));
  EXPECT_TRUE(has("vllm:gpu_cache_usage_perc" + L + "} 0.25"));
  EXPECT_TRUE(has("vllm:prompt_tokens_total" + L + "} 5"));
  EXPECT_TRUE(has("vllm:num_preemptions_total" + L + "} 2"));
  EXPECT_TRUE(has("vllm:request_success_total" + L + ",finished_reason=\"length\"} 0"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket" + L + ",le=\"0.005\"} 1"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket" + L + ",le=\"2560\"} 2"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket" + L + ",le=\"+Inf\"} 2"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_count" + L + "} 2"));
  EXPECT_TRUE(has("vllm:e2e_request_latency_seconds_bucket" + L + ",le=\"7680\"} 0"));
  EXPECT_TRUE(has("vllm:iteration_tokens_total_bucket" + L + ",le=\"16384\"} 0"));
  EXPECT_TRUE(has("vllm:cache_config_info" + L + ",block_size=\"16\",num_gpu_blocks=\"100\"} 1"));
  EXPECT_TRUE(has("pie:kv_cache_blocks_total" + L + "} 100"));
  EXPECT_TRUE(has("pie:kv_cache_blocks_free" + L + "} 75"));
  EXPECT_FALSE(has("pie:num_requests_running"));
  // Token-count buckets follow vLLM's build_1_2_5_buckets(max_model_len).
  EXPECT_EQ(buckets_1_2_5(100), (std::vector<double>{1, 2, 5, 10, 20, 50, 100}));
  m.set_max_model_len(256);
  const std::string t2 = m.render("x", g);
  EXPECT_NE(t2.find("vllm:request_prompt_tokens_bucket{model_name=\"x\",engine=\"0\",le=\"200\"} 0"),
            std::string::npos);
  EXPECT_EQ(t2.find("vllm:request_prompt_tokens_bucket{model_name=\"x\",engine=\"0\",le=\"500\"}"),
            std::string::npos);
}

TEST(ServeFlags, DashAndUnderscoreSpellings) {
  for (const char* flag : {"--max-model-len", "--max_model_len"}) {
    CLI::App app;
    ServeOptions o;
    add_serve_flags(app, o);
    app.parse(std::string(flag) + " 123 --no-enable-prefix-caching --served-model-name a b", false);
    EXPECT_EQ(o.max_model_len, 123);
    EXPECT_FALSE(o.enable_prefix_caching);
    EXPECT_EQ(o.served_model_name, (std::vector<std::string>{"a", "b"}));
  }
  CLI::App app;
  ServeOptions o;
  add_serve_flags(app, o);
  EXPECT_THROW(app.parse("--block-size 7", false), CLI::ValidationError);
  CLI::App app2;
  add_serve_flags(app2, o);
  EXPECT_THROW(app2.parse("--no-such-flag", false), CLI::ParseError);
}

TEST(ServeFlags, ToolCallingFlags) {
  CLI::App app;
  ServeOptions o;
  add_serve_flags(app, o);
  app.parse("--enable_auto_tool_choice --tool-call-parser hermes", false);
  EXPECT_TRUE(o.enable_auto_tool_choice);
  EXPECT_EQ(o.tool_call_parser, "hermes");
  CLI::App a2;
  ServeOptions o2;
  add_serve_flags(a2, o2);
  EXPECT_THROW(a2.parse("--enable-auto-tool-choice", false), CLI::RequiresError);  // needs a parser, as in vLLM
  CLI::App a3;
  add_serve_flags(a3, o2);
  EXPECT_THROW(a3.parse("--tool-call-parser mistral", false), CLI::ValidationError);
}

TEST(ServeFlags, StructuredPrewarmLength) {
  ServeOptions o;
  EXPECT_EQ(o.structured_prewarm_max_length, 16);  // on by default
  CLI::App app;
  add_serve_flags(app, o);
  app.parse("--structured_prewarm_max_length 0", false);
  EXPECT_EQ(o.structured_prewarm_max_length, 0);
  CLI::App a2;
  ServeOptions o2;
  add_serve_flags(a2, o2);
  EXPECT_THROW(a2.parse("--structured-prewarm-max-length 129", false), CLI::ValidationError);
}

TEST(ProtocolCompletion, PromptLogprobsAndTokenIdFlags) {
  const auto r = parse_completion_request(
      {{"prompt", "x"}, {"prompt_logprobs", 3}, {"return_token_ids", true}, {"return_tokens_as_token_ids", true}}, {});
  ASSERT_TRUE(r.params.prompt_logprobs.has_value());
  EXPECT_EQ(*r.params.prompt_logprobs, 3);
  EXPECT_TRUE(r.return_token_ids);
  EXPECT_TRUE(r.return_tokens_as_token_ids);
  // vLLM's rules: none with stream (0 is accepted and dropped), -1 and > 20 refused, booleans only.
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"prompt_logprobs", 2}, {"stream", true}}).param(), "prompt_logprobs");
  EXPECT_FALSE(parse_completion_request({{"prompt", "x"}, {"prompt_logprobs", 0}, {"stream", true}}, {})
                   .params.prompt_logprobs.has_value());
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"prompt_logprobs", -1}}).param(), "prompt_logprobs");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"prompt_logprobs", 21}}).param(), "prompt_logprobs");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"return_token_ids", "yes"}}).param(), "return_token_ids");
  const auto c = parse_chat_request({{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})},
                                     {"prompt_logprobs", 1}},
                                    {});
  EXPECT_EQ(c.params.prompt_logprobs.value_or(-1), 1);
}

TEST(Responses, LogprobTokensNeverCollide) {
  // Ids 0..2 are single bytes ≥ 0x80 (each alone decodes to U+FFFD); 3 and 4 spell the same text.
  const TokenText bytes = [](int32_t id) {
    if (id < 3) return std::string(1, static_cast<char>(0x80 + id));
    return std::string("same");
  };
  std::vector<pie::TokenLogprob> lps = {{0, -0.5f, {{0, -0.5f}, {1, -1.5f}, {2, -2.f}, {3, -3.f}, {4, -4.f}}}};
  const json c = completion_logprobs(lps, bytes, 0);
  EXPECT_EQ(c["tokens"][0], "bytes:\\x80");
  const json& top = c["top_logprobs"][0];
  EXPECT_EQ(top.size(), 5u) << top.dump();
  EXPECT_FLOAT_EQ(top["bytes:\\x81"].get<float>(), -1.5f);
  EXPECT_FLOAT_EQ(top["same"].get<float>(), -3.f);
  EXPECT_FLOAT_EQ(top["token_id:4"].get<float>(), -4.f);
  EXPECT_EQ(c["text_offset"], (json{0}));
  const json h = chat_logprobs(lps, bytes);
  EXPECT_EQ(h["content"][0]["bytes"], (json{0x80}));  // the token's own byte, not U+FFFD's
  EXPECT_EQ(h["content"][0]["top_logprobs"][2]["token"], "bytes:\\x82");
  // return_tokens_as_token_ids
  const json ids = completion_logprobs(lps, TokenSpelling(bytes, true), 0);
  EXPECT_EQ(ids["tokens"][0], "token_id:0");
  EXPECT_TRUE(ids["top_logprobs"][0].contains("token_id:3"));
  EXPECT_EQ(chat_logprobs(lps, TokenSpelling(bytes, true))["content"][0]["top_logprobs"][4]["token"], "token_id:4");
}

TEST(Responses, PromptLogprobsShape) {
  const TokenText bytes = [](int32_t id) { return std::string(1, static_cast<char>('a' + id)); };
  pie::PromptLogprob lp;
  lp.token = 2;
  lp.logprob = -1.25f;
  lp.rank = 2;
  lp.top = {{1, -0.5f}, {2, -1.25f}};
  const json j = prompt_logprobs_json({lp}, bytes);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_TRUE(j[0].is_null());
  EXPECT_EQ(j[1].size(), 2u);
  EXPECT_EQ(j[1]["2"]["rank"], 2);
  EXPECT_EQ(j[1]["2"]["decoded_token"], "c");
  EXPECT_FLOAT_EQ(j[1]["2"]["logprob"].get<float>(), -1.25f);
  EXPECT_EQ(j[1]["1"]["rank"], 1);
}

TEST(Responses, LogprobShapesAndStopReason) {
  const TokenText text = [](int32_t id) { return std::string(1, static_cast<char>('a' + id)); };
  std::vector<pie::TokenLogprob> lps = {{0, -0.5f, {{0, -0.5f}, {1, -1.5f}}}, {2, -0.25f, {}}};
  const json c = completion_logprobs(lps, text, 10);
  EXPECT_EQ(c["tokens"], (json{"a", "c"}));
  EXPECT_EQ(c["text_offset"], (json{10, 11}));
  EXPECT_EQ(c["top_logprobs"][0].size(), 2u);  // the chosen token and one alternative
  EXPECT_FLOAT_EQ(c["top_logprobs"][0]["b"].get<float>(), -1.5f);
  const json h = chat_logprobs(lps, text);
  EXPECT_EQ(h["content"][0]["token"], "a");
  EXPECT_EQ(h["content"][0]["bytes"], (json{97}));
  EXPECT_EQ(h["content"][0]["top_logprobs"].size(), 2u);
  EXPECT_TRUE(h["refusal"].is_null());
  EXPECT_EQ(stop_reason_json("END", -1, {}), "END");
  EXPECT_EQ(stop_reason_json("", 7, {5}), 7);
  EXPECT_TRUE(stop_reason_json("", 5, {5}).is_null());  // EOS is reported as null, like vLLM
  EXPECT_EQ(sse(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(make_id("cmpl-").size(), 5u + 32u);
  EXPECT_NE(make_id("x"), make_id("x"));
}

TEST(RequestStream, PopWaitsAndDrains) {
  RequestStream s;
  std::vector<StreamEvent> out;
  EXPECT_FALSE(s.pop_all(out, std::chrono::milliseconds(1)));
  std::thread producer([&] {
    StreamEvent a;
    a.seqs.push_back({});
    s.push(std::move(a));
    StreamEvent b;
    b.finished = true;
    s.push(std::move(b));
  });
  producer.join();
  EXPECT_TRUE(s.pop_all(out, std::chrono::milliseconds(100)));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_TRUE(out[1].finished);
  EXPECT_TRUE(s.finished());
}

// The connection threads: at most max_threads at once; the rest wait for one to finish its own
// connection; shutdown() returns once every connection was served.
TEST(ThreadPerConnection, CapsThreadsAndServesEveryConnection) {
  pie::server::ThreadPerConnection q(2);
  std::atomic<int> running{0}, peak{0}, done{0};
  for (int i = 0; i < 7; ++i)
    q.enqueue([&] {
      const int now = ++running;
      for (int p = peak.load(); now > p && !peak.compare_exchange_weak(p, now);) {}
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      --running;
      ++done;
    });
  q.shutdown();
  EXPECT_EQ(done.load(), 7);
  EXPECT_LE(peak.load(), 2);
  EXPECT_GE(peak.load(), 1);
}
