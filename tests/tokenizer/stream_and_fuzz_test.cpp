// Streaming detokenizer (property: concatenated output == decode), reasoning split (streamed ==
// one-shot), fuzzing encode/decode with random input, and refusal of unsupported tokenizer.json.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "fixtures.hpp"
#include "pie/tokenizer/detokenizer.hpp"
#include "pie/tokenizer/jinja_value.hpp"
#include "pie/tokenizer/reasoning.hpp"

namespace pie::tokenizer::test {
namespace {

/// Id streams drawn from the corpus encodings, cut and spliced at random so that streams start
/// and end mid-character and mix in special tokens and unknown ids.
std::vector<std::vector<std::int32_t>> random_streams(const Tokenizer& tok, const char* fixture_name, int n,
                                                      std::uint32_t seed) {
  std::vector<std::int32_t> pool;
  for (const auto& c : fixture(fixture_name)) {
    const auto ids = c["ids"].get<std::vector<std::int32_t>>();
    pool.insert(pool.end(), ids.begin(), ids.end());
  }
  std::mt19937 rng(seed);
  std::vector<std::vector<std::int32_t>> out;
  for (int s = 0; s < n; ++s) {
    std::vector<std::int32_t> ids;
    const int pieces = 1 + rng() % 4;
    for (int p = 0; p < pieces; ++p) {
      const std::size_t len = rng() % 40, at = rng() % pool.size();
      for (std::size_t k = 0; k < len && at + k < pool.size(); ++k) ids.push_back(pool[at + k]);
      if (rng() % 3 == 0) ids.push_back(static_cast<std::int32_t>(rng() % tok.vocab_size()));
      if (rng() % 5 == 0) ids.push_back(static_cast<std::int32_t>(188 + rng() % 68));  // raw bytes
      if (rng() % 9 == 0) ids.push_back(tok.vocab_size() + 7);                      // unknown id
    }
    out.push_back(std::move(ids));
  }
  return out;
}

void expect_stream_equals_decode(const Tokenizer& tok, const char* fixture_name) {
  for (bool skip : {false, true}) {
    for (const auto& ids : random_streams(tok, fixture_name, 400, skip ? 7u : 11u)) {
      IncrementalDetokenizer d(tok, skip);
      std::string text;
      for (std::int32_t id : ids) {
        const std::string piece = d.push(id);
        EXPECT_TRUE(utf8::is_valid(piece));
        EXPECT_LE(d.pending_bytes(), 3u);
        text += piece;
      }
      text += d.flush();
      ASSERT_EQ(text, tok.decode(ids, skip)) << "skip=" << skip << " n=" << ids.size();
    }
  }
}

TEST(IncrementalDetokenizer, Qwen3StreamsConcatenateToDecode) {
  PIE_REQUIRE_QWEN();
  expect_stream_equals_decode(qwen(), "qwen3_encode.json");
}

TEST(IncrementalDetokenizer, EmbeddedStreamsConcatenateToDecode) {
  expect_stream_equals_decode(Tokenizer::embedded(), "embedded_encode.json");
}

TEST(IncrementalDetokenizer, HoldsSplitCharacterAndUsesPromptTail) {
  const auto tok = Tokenizer::embedded();
  const auto ids = tok.encode("中");  // one 3-byte character -> 3 byte tokens
  ASSERT_EQ(ids.size(), 3u);
  IncrementalDetokenizer d(tok, false);
  EXPECT_EQ(d.push(ids[0]), "");
  EXPECT_EQ(d.push(ids[1]), "");
  EXPECT_EQ(d.push(ids[2]), "中");
  // The prompt ended after the first byte of the character: generation completes it.
  const std::vector<std::int32_t> prompt = {tok.encode("a")[0], ids[0]};
  IncrementalDetokenizer c(tok, false, prompt);
  EXPECT_EQ(c.push(ids[1]), "");
  EXPECT_EQ(c.push(ids[2]), "中");
  IncrementalDetokenizer e(tok, true);
  EXPECT_EQ(e.push(EmbeddedIds::kImEnd), "");  // special, skipped
  EXPECT_EQ(e.push(ids[0]), "");
  EXPECT_EQ(e.flush(), "\xEF\xBF\xBD");  // unfinished character at the end
}

TEST(TokenizerFuzz, RandomBytesEncodeAndRoundTripToRepairedNfc) {
  std::mt19937 rng(42);
  const auto tok = Tokenizer::embedded();
  const char* snippets[] = {"<|im_end|>", "<think>", "é", "\xCC\x81", "\xE4\xB8", "\r\n", "   ", "'S", "中"};
  for (int i = 0; i < 3000; ++i) {
    std::string s;
    const int len = rng() % 64;
    for (int k = 0; k < len; ++k) {
      if (rng() % 6 == 0) s += snippets[rng() % 9];
      else s.push_back(static_cast<char>(rng() % 256));
    }
    const auto ids = tok.encode(s);
    for (auto id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
    // Added tokens are matched before NFC, so compare per the same pipeline: repair, then NFC
    // of the text between added tokens — which equals NFC of the whole when no mark follows one.
    const std::string repaired = utf8::repair(s);
    const std::string decoded = tok.decode(ids);
    ASSERT_TRUE(utf8::is_valid(decoded));
    if (repaired.find("<|") == std::string::npos && repaired.find("<think>") == std::string::npos)
      ASSERT_EQ(decoded, nfc::normalize(repaired));
  }
}

TEST(TokenizerFuzz, Qwen3RandomBytesNeverCrash) {
  PIE_REQUIRE_QWEN();
  std::mt19937 rng(5);
  for (int i = 0; i < 1000; ++i) {
    std::string s;
    const int len = rng() % 200;
    for (int k = 0; k < len; ++k) s.push_back(static_cast<char>(rng() % 256));
    const auto ids = qwen().encode(s);
    const std::string repaired = utf8::repair(s);
    if (repaired.find('<') == std::string::npos) ASSERT_EQ(qwen().decode(ids), nfc::normalize(repaired));
  }
}

TEST(TokenizerFuzz, RandomIdsDecodeToValidUtf8) {
  std::mt19937 rng(9);
  const auto tok = Tokenizer::embedded();
  for (int i = 0; i < 3000; ++i) {
    std::vector<std::int32_t> ids(rng() % 30);
    for (auto& id : ids) id = static_cast<std::int32_t>(rng() % 700) - 50;  // includes invalid ids
    for (bool skip : {false, true}) ASSERT_TRUE(utf8::is_valid(tok.decode(ids, skip)));
  }
}

TEST(TokenizerFuzz, LongWhitespaceAndRepeatsUseLongWordPath) {
  const auto tok = Tokenizer::embedded();
  for (const std::string s : {std::string(20000, ' '), [] { std::string r; for (int i = 0; i < 1500; ++i) r += "in"; return r; }(), std::string(999, '\n') + "x"}) {
    const auto ids = tok.encode(s);
    EXPECT_EQ(tok.decode(ids), s);
    EXPECT_LT(ids.size(), s.size());
  }
}

TEST(ReasoningParser, OneShotSplit) {
  auto r = ReasoningParser::split("<think>\nI should add.\n</think>\n\nThe answer is 4.");
  EXPECT_EQ(r.reasoning, "I should add.");
  EXPECT_EQ(r.content, "The answer is 4.");
  r = ReasoningParser::split("No thinking here.");
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, "No thinking here.");
  r = ReasoningParser::split("<think>\n\n</think>\n\nDirect.");  // enable_thinking=false shape
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, "Direct.");
  r = ReasoningParser::split("<think>cut off mid-thought");
  EXPECT_EQ(r.reasoning, "cut off mid-thought");
  EXPECT_EQ(r.content, "");
  r = ReasoningParser::split("prefilled reasoning\n</think>\n\nok", /*starts_in_reasoning=*/true);
  EXPECT_EQ(r.reasoning, "prefilled reasoning");
  EXPECT_EQ(r.content, "ok");
  r = ReasoningParser::split("<thin and more");
  EXPECT_EQ(r.content, "<thin and more");
}

TEST(ReasoningParser, StreamingInRandomChunksEqualsOneShot) {
  const std::string outputs[] = {
      "<think>\nLet me think.\n\nStep 2 </thin k> </think>\n\nAnswer: 42\n",
      "\n<think>\n\n</think>\n\n",
      "plain answer with </think> inside",
      "<think>\nunterminated\n\n",
      "<think>a\n\nb\n</think>c",
      "<th",
      "  <think>x</think>\n\n\ny"};
  std::mt19937 rng(3);
  for (const auto& out : outputs) {
    for (bool pre : {false, true}) {
      const auto want = ReasoningParser::split(out, pre);
      for (int trial = 0; trial < 200; ++trial) {
        ReasoningParser p(pre);
        std::string r, c;
        for (std::size_t i = 0; i < out.size();) {
          const std::size_t n = 1 + rng() % 6;
          const auto d = p.feed(std::string_view(out).substr(i, n));
          r += d.reasoning_delta;
          c += d.content_delta;
          i += n;
        }
        const auto d = p.finish();
        ASSERT_EQ(r + d.reasoning_delta, want.reasoning) << out;
        ASSERT_EQ(c + d.content_delta, want.content) << out;
      }
    }
  }
}

void expect_refused(const std::string& patch_from, const std::string& patch_to, const std::string& needle) {
  std::string j = R"({"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
    "normalizer":{"type":"NFC"},
    "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
    "post_processor":null,"decoder":{"type":"ByteLevel"},
    "model":{"type":"BPE","dropout":null,"unk_token":null,"byte_fallback":false,"vocab":{VOCAB},"merges":[]}})";
  std::string vocab;
  for (int b = 0; b < 256; ++b) {
    std::string sym;
    utf8::append(sym, byte_level::byte_to_char()[b]);
    std::string esc;
    jinja::json_string(esc, sym);
    vocab += (b ? "," : "") + esc + ":" + std::to_string(b);
  }
  j.replace(j.find("{VOCAB}"), 7, "{" + vocab + "}");
  if (!patch_from.empty()) {
    const auto at = j.find(patch_from);
    ASSERT_NE(at, std::string::npos) << patch_from;
    j.replace(at, patch_from.size(), patch_to);
  }
  if (needle.empty()) {
    EXPECT_EQ(Tokenizer::from_json_text(j).decode(Tokenizer::from_json_text(j).encode("héllo wörld")), "héllo wörld");
    return;
  }
  try {
    Tokenizer::from_json_text(j);
    ADD_FAILURE() << "accepted " << patch_to;
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TokenizerJson, TemplateProcessingAddsSpecialTokensOnRequest) {
  // Llama 3 style: BOS before the sequence; plus an EOS after it to cover suffixes.
  const std::string pp = R"("post_processor":{"type":"Sequence","processors":[{"type":"ByteLevel"},
      {"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},
      {"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"</s>","type_id":0}}],
      "special_tokens":{"<s>":{"id":"<s>","ids":[256],"tokens":["<s>"]},
                        "</s>":{"id":"</s>","ids":[257],"tokens":["</s>"]}}}]})";
  std::string vocab;
  for (int b = 0; b < 256; ++b) {
    std::string sym, esc;
    utf8::append(sym, byte_level::byte_to_char()[b]);
    jinja::json_string(esc, sym);
    vocab += (b ? "," : "") + esc + ":" + std::to_string(b);
  }
  const std::string j = R"({"added_tokens":[{"id":256,"content":"<s>","special":true},
      {"id":257,"content":"</s>","special":true}],"normalizer":null,
      "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true},)" + pp +
      R"(,"decoder":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{)" + vocab + R"(},"merges":[]}})";
  const auto tok = Tokenizer::from_json_text(j);
  EXPECT_EQ(tok.encode("hi"), (std::vector<std::int32_t>{'h', 'i'}));
  EXPECT_EQ(tok.encode("hi", true), (std::vector<std::int32_t>{256, 'h', 'i', 257}));
  EXPECT_EQ(tok.decode(tok.encode("hi", true), /*skip_special_tokens=*/true), "hi");
}

TEST(EmbeddedTokenizer, ConcurrentEncodesShareTheCacheSafely) {
  const auto tok = Tokenizer::embedded();
  const auto cases = fixture("embedded_encode.json");
  std::vector<std::pair<std::string, std::vector<std::int32_t>>> work;
  for (const auto& c : cases) work.emplace_back(case_input(c), c["ids"].get<std::vector<std::int32_t>>());
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 3; ++rep)
        for (std::size_t i = t; i < work.size() + t; ++i) {
          const auto& [text, want] = work[i % work.size()];
          if (tok.encode(text) != want) ++mismatches;
        }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(TokenizerJson, MissingOrMalformedFileNamesThePath) {
  try {
    Tokenizer::from_file("/nonexistent/tokenizer.json");
    ADD_FAILURE() << "no error";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tokenizer.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tokenizer::from_json_text("{not json"), pie::Error);
  EXPECT_THROW(Tokenizer::from_json_text(R"({"model":{"type":"BPE"}})"), pie::Error);  // no vocab
}

TEST(TokenizerJson, UnsupportedFeaturesAreRefusedByName) {
  expect_refused("", "", "");  // the minimal GPT-2 style file itself loads and round-trips
  expect_refused(R"({"type":"NFC"})", R"({"type":"NFKC"})", "normalizer 'NFKC'");
  expect_refused(R"("add_prefix_space":false)", R"("add_prefix_space":true)", "add_prefix_space");
  expect_refused(R"("byte_fallback":false)", R"("byte_fallback":true)", "byte_fallback");
  expect_refused(R"("dropout":null)", R"("dropout":0.1)", "dropout");
  expect_refused(R"("type":"BPE")", R"("type":"WordPiece")", "model 'WordPiece'");
  expect_refused(R"("decoder":{"type":"ByteLevel"})", R"("decoder":{"type":"Metaspace"})", "decoder 'Metaspace'");
  expect_refused(R"("post_processor":null)", R"("post_processor":{"type":"RobertaProcessing"})",
                 "post_processor 'RobertaProcessing'");
  expect_refused(R"("truncation":null)", R"("truncation":{"max_length":5})", "truncation");
  expect_refused(R"("added_tokens":[])",
                 R"("added_tokens":[{"id":300,"content":"<x>","lstrip":true,"special":true}])", "lstrip");
  expect_refused(R"("pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})",
                 R"("pre_tokenizer":{"type":"Whitespace"})", "pre_tokenizer 'Whitespace'");
}

}  // namespace
}  // namespace pie::tokenizer::test
