// Chat templates: byte-identical to transformers' apply_chat_template (fixtures from
// tests/reference/tokenizer/gen_chat_fixtures.py), plus the Jinja subset against Jinja2.
#include <gtest/gtest.h>

#include "fixtures.hpp"
#include "pie/tokenizer/chat_template.hpp"

namespace pie::tokenizer::test {
namespace {

void expect_qwen3_cases(const ChatTemplate& t) {
  const auto cases = fixture("qwen3_chat_template.json");
  ASSERT_GE(cases.size(), 30u);
  for (const auto& c : cases) {
    std::string got;
    try {
      got = t.render(c["messages"], c["options"]);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "case " << c["name"] << " threw: " << e.what();
      continue;
    }
    EXPECT_EQ(got, c["expected"].get<std::string>()) << "case " << c["name"];
  }
}

TEST(Qwen3ChatTemplate, GenuineTokenizerConfigMatchesTransformers) {
  PIE_REQUIRE_QWEN();
  const auto t = ChatTemplate::from_tokenizer_config(qwen_dir() + "/tokenizer_config.json");
  EXPECT_EQ(t.eos_token(), "<|im_end|>");
  expect_qwen3_cases(t);
}

TEST(Qwen3ChatTemplate, EmbeddedTemplateMatchesTransformers) { expect_qwen3_cases(ChatTemplate::embedded()); }

TEST(Qwen3ChatTemplate, EmbeddedTextIsTheGenuineTemplate) {
  PIE_REQUIRE_QWEN();
  const auto cfg = nlohmann::json::parse(read_text(qwen_dir() + "/tokenizer_config.json"));
  EXPECT_EQ(ChatTemplate::embedded().source(), cfg["chat_template"].get<std::string>());
}

TEST(Qwen3ChatTemplate, UnorderedJsonInputStillRenders) {
  const nlohmann::json msgs = nlohmann::json::array({{{"role", "user"}, {"content", "hi"}}});
  const nlohmann::json opts = {{"add_generation_prompt", true}, {"enable_thinking", false}};
  EXPECT_EQ(ChatTemplate::embedded().render(msgs, opts),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(JinjaSubset, MatchesJinja2WithTransformersEnvironment) {
  for (const auto& c : fixture("jinja_cases.json")) {
    std::string got;
    try {
      got = ChatTemplate::from_string(c["template"].get<std::string>()).render_variables(c["vars"]);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "case " << c["name"] << " threw: " << e.what();
      continue;
    }
    EXPECT_EQ(got, c["expected"].get<std::string>()) << "case " << c["name"];
  }
}

void expect_error(const std::string& tpl, const std::string& needle) {
  try {
    ChatTemplate::from_string(tpl).render_variables({{"x", 1}});
    ADD_FAILURE() << "no error for " << tpl;
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// Found by the chat_template fuzz target (tests/fuzz): 5,000 nested parentheses overflowed the
// recursive-descent parser's stack. Deep nesting is now an error; 150 levels still render.
TEST(JinjaSubset, DeepNestingIsAnErrorNotAStackOverflow) {
  const auto nest = [](const std::string& open, const std::string& mid, const std::string& close, int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += open;
    s += mid;
    for (int i = 0; i < n; ++i) s += close;
    return s;
  };
  expect_error("{{ " + nest("(", "1", ")", 5000) + " }}", "expression nested deeper than 200 levels");
  expect_error("{{ " + nest("[", "1", "]", 5000) + " }}", "expression nested deeper than 200 levels");
  expect_error("{{ " + nest("-", "1", "", 5000) + " }}", "expression nested deeper than 200 levels");
  expect_error(nest("{% if x %}", "y", "{% endif %}", 5000), "blocks nested deeper than 200 levels");
  EXPECT_EQ(ChatTemplate::from_string("{{ " + nest("(", "x", ")", 150) + " }}").render_variables({{"x", 1}}), "1");
  EXPECT_EQ(ChatTemplate::from_string(nest("{% if x %}", "y", "{% endif %}", 150)).render_variables({{"x", 1}}), "y");
}

// Also from the fuzz target: a literal past 2^63 threw std::out_of_range out of std::stoll.
TEST(JinjaSubset, OutOfRangeLiteralsAndBadIntFilterInputs) {
  expect_error("{{ 99999999999999999999999 }}", "integer literal out of range");
  EXPECT_EQ(ChatTemplate::from_string("{{ 'abc' | int }} {{ '12' | int }} {{ 'x' | float }} {{ 2.5 | int }}")
                .render_variables({{"x", 1}}),
            "0 12 0.0 2");
}

TEST(JinjaSubset, UnsupportedConstructsGiveClearErrors) {
  expect_error("{% macro m() %}x{% endmacro %}", "unsupported Jinja tag '{% macro");
  expect_error("{{ x | wordcount }}", "unsupported Jinja filter 'wordcount'");
  expect_error("{{ x is callable }}", "unsupported Jinja test 'callable'");
  expect_error("{{ lipsum() }}", "unsupported function 'lipsum'");
  expect_error("{% if x %}never closed", "missing '{% endif %}'");
  expect_error("{{ x ", "unterminated tag");
  expect_error("{{ raise_exception('Only user and assistant roles') }}", "Only user and assistant roles");
  expect_error("{{ y + 1 }}", "undefined value");
  expect_error("{% endfor %}", "unexpected '{% endfor %}'");
}

}  // namespace
}  // namespace pie::tokenizer::test
