// pie::LLM on a checkpoint directory that carries its tokenizer: the transformers fixture
// qwen3_tied (tests/reference/fixtures) with the byte-level tokenizer and plain-text chat
// template of tests/llm/fixture (made by make_tokenizer.py), assembled in the build tree.
// Checked: the tokenizer and template are found in the directory (or given separately), text
// prompts become their UTF-8 byte ids, greedy output matches transformers' greedy ids and the
// engine's, chat_template_kwargs reach the template, and a directory without a tokenizer fails
// with a message naming the missing file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pie/engine/engine.hpp"
#include "pie/llm/llm.hpp"

namespace {
namespace fs = std::filesystem;
using namespace pie;

const fs::path kModel = fs::path(PIE_SOURCE_DIR) / "tests/reference/fixtures/qwen3_tied";
const fs::path kTokenizer = fs::path(PIE_SOURCE_DIR) / "tests/llm/fixture";

/// qwen3_tied's files plus the fixture tokenizer's, in one directory of the build tree.
const std::string& model_with_tokenizer() {
  static const std::string dir = [] {
    const fs::path d = fs::path(PIE_BINARY_DIR) / "tests/llm/qwen3_tied_text";
    fs::create_directories(d);
    for (const fs::path& src : {kModel, kTokenizer})
      for (const auto& e : fs::directory_iterator(src))
        if (e.is_regular_file() && (e.path().extension() == ".json" || e.path().extension() == ".safetensors"))
          fs::copy_file(e.path(), d / e.path().filename(), fs::copy_options::overwrite_existing);
    return d.string();
  }();
  return dir;
}

llm::LLMOptions options() {
  llm::LLMOptions o;
  o.engine.num_kv_blocks = 64;
  o.engine.sched.max_model_len = 512;
  o.engine.num_threads = 1;
  return o;
}

LLM& fixture() {
  static LLM l(model_with_tokenizer(), options());
  return l;
}

llm::SamplingParams greedy(int max_tokens) {
  llm::SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;  // transformers' reference did not stop at EOS
  return p;
}

/// The fixture tokenizer's id of each byte (GPT-2 ByteLevel order: printable bytes first).
std::vector<int32_t> byte_ids(const std::string& s) {
  std::vector<int32_t> id_of(256);
  int32_t next = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      if (printable == (pass == 0)) id_of[b] = next++;
    }
  std::vector<int32_t> out;
  for (unsigned char c : s) out.push_back(id_of[c]);
  return out;
}

TEST(LlmFixture, TextPromptsAreTheirBytesAndOutputMatchesTheEngine) {
  LLM& l = fixture();
  EXPECT_EQ(l.engine().config().vocab_size, 256);
  const std::vector<std::string> prompts = {"Hello, world!", "héllo wörld 123", "a"};
  auto outs = l.generate(prompts, greedy(20));
  std::vector<std::vector<int32_t>> ids;
  for (const auto& p : prompts) ids.push_back(byte_ids(p));
  EngineOptions eo = options().engine;
  eo.model_dir = kModel.string();
  Engine<Qwen3, CpuF32> engine(eo);
  auto ref = engine.generate(ids, greedy(20));
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(outs[i].prompt_token_ids, ids[i]) << prompts[i];
    EXPECT_EQ(outs[i].outputs[0].token_ids, ref[i].tokens[0]);
    EXPECT_EQ(outs[i].outputs[0].finish_reason, "length");
    EXPECT_EQ(outs[i].outputs[0].text, l.tokenizer().decode(outs[i].outputs[0].token_ids));
  }
}

TEST(LlmFixture, GreedyIdsMatchTransformers) {
  std::ifstream f(kModel / "reference.json");
  const auto ref = nlohmann::json::parse(f);
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& pr : ref["prompts"]) prompts.push_back(pr["prompt_ids"].get<std::vector<int32_t>>());
  auto outs = fixture().generate_ids(prompts, greedy(ref["new_tokens"].get<int>()));
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(outs[i].outputs[0].token_ids, ref["prompts"][i]["greedy_ids"].get<std::vector<int32_t>>()) << i;
    EXPECT_EQ(outs[i].outputs[0].text, fixture().tokenizer().decode(outs[i].outputs[0].token_ids));
  }
}

TEST(LlmFixture, ChatUsesTheDirectorysTemplateAndItsKwargs) {
  LLM& l = fixture();
  ASSERT_NE(l.chat_template(), nullptr);
  const llm::Conversation conv = {{"system", "Be brief."}, {"user", "Hi"}};
  auto out = l.chat(conv, greedy(8));
  EXPECT_EQ(out.prompt, "### system\nBe brief.\n### user\nHi\n### assistant\n");
  EXPECT_EQ(out.prompt_token_ids, byte_ids(out.prompt));
  llm::ChatOptions o;
  o.chat_template_kwargs["enable_thinking"] = false;
  auto no_think = l.chat(conv, greedy(8), o);
  EXPECT_EQ(no_think.prompt, out.prompt + "(no thinking)\n");
  EXPECT_EQ(no_think.prompt_token_ids, byte_ids(no_think.prompt));
  // The same conversation as a text prompt gives the same tokens.
  auto as_text = l.generate({out.prompt}, greedy(8));
  EXPECT_EQ(as_text[0].outputs[0].token_ids, out.outputs[0].token_ids);
}

TEST(LlmFixture, TokenizerGivenSeparatelyOrMissing) {
  llm::LLMOptions o = options();
  o.tokenizer = kTokenizer.string();
  LLM separate(kModel.string(), o);
  auto a = separate.generate({"Hello, world!"}, greedy(10));
  auto b = fixture().generate({"Hello, world!"}, greedy(10));
  EXPECT_EQ(a[0].outputs[0].token_ids, b[0].outputs[0].token_ids);
  EXPECT_EQ(a[0].outputs[0].text, b[0].outputs[0].text);
  ASSERT_NE(separate.chat_template(), nullptr);

  // qwen3_tied alone has no tokenizer.json.
  try {
    LLM none(kModel.string(), options());
    FAIL() << "no error";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json does not exist"), std::string::npos) << e.what();
  }
  // A tokenizer without a chat template: chat() says so, generate() works.
  o.tokenizer = (kTokenizer / "tokenizer.json").string();
  o.chat_template = "";
  const fs::path bare = fs::path(PIE_BINARY_DIR) / "tests/llm/bare_tokenizer";
  fs::create_directories(bare);
  fs::copy_file(kTokenizer / "tokenizer.json", bare / "tokenizer.json", fs::copy_options::overwrite_existing);
  o.tokenizer = bare.string();
  LLM no_template(kModel.string(), o);
  EXPECT_EQ(no_template.chat_template(), nullptr);
  EXPECT_EQ(no_template.generate({"Hello, world!"}, greedy(10))[0].outputs[0].token_ids, a[0].outputs[0].token_ids);
  try {
    no_template.chat({{"user", "hi"}}, greedy(4));
    FAIL() << "no error";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no chat template"), std::string::npos) << e.what();
  }
  // ... unless one is given.
  o.chat_template = (kTokenizer / "tokenizer_config.json").string();
  LLM given(kModel.string(), o);
  EXPECT_EQ(given.chat({{"user", "Hi"}}, greedy(4)).prompt, "### user\nHi\n### assistant\n");
}

}  // namespace
