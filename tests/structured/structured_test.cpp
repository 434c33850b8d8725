// Structured outputs: the token bitmask applied on the host against a naive reference on random
// inputs; the compiler's 4xx-worthy errors; the grammar processor's reasoning gate and mask
// (padding ids and special tokens never allowed); and pie::LLM on the embedded model with
// random sampling, whose every output must parse / full-match / be a choice.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "pie/engine/engine.hpp"
#include "pie/llm/llm.hpp"
#include "pie/structured/compiler.hpp"
#include "pie/tokenizer/embedded.hpp"

namespace {
using namespace pie;
using sched::StructuredOutput;
using K = sched::StructuredOutput::Kind;

bool allowed(const std::vector<int32_t>& mask, int t) { return (static_cast<uint32_t>(mask[t / 32]) >> (t % 32)) & 1u; }

TEST(TokenBitmask, MatchesNaiveOnRandomInputs) {
  std::mt19937 rng(7);
  for (int vocab : {1, 31, 32, 33, 512, 1000, 4099}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> logits(vocab);
      std::normal_distribution<float> nd;
      for (auto& x : logits) x = nd(rng);
      std::vector<int32_t> mask(sched::bitmask_words(vocab));
      for (auto& w : mask) w = trial % 5 == 0 ? -1 : static_cast<int32_t>(rng());
      std::vector<float> want = logits;
      for (int t = 0; t < vocab; ++t)
        if (!allowed(mask, t)) want[t] = -INFINITY;
      sched::apply_token_bitmask(logits, mask);
      for (int t = 0; t < vocab; ++t) ASSERT_EQ(logits[t], want[t]) << "vocab " << vocab << " token " << t;
    }
  }
}

structured::Compiler& compiler() {
  // Model vocabulary 520 > the tokenizer's 512: ids 512..519 are embedding padding.
  static tokenizer::Tokenizer tok = tokenizer::Tokenizer::embedded();
  static structured::Compiler c(tok, 520, {502});
  return c;
}

std::string error_of(const StructuredOutput& so) {
  try {
    compiler().compile(so);
  } catch (const pie::Error& e) {
    return e.what();
  }
  return {};
}

TEST(Compiler, BadInputNamesTheProblem) {
  EXPECT_NE(error_of({K::JsonSchema, "{not json"}).find("invalid JSON schema: not valid JSON"), std::string::npos);
  EXPECT_NE(error_of({K::JsonSchema, "[1]"}).find("invalid JSON schema"), std::string::npos);
  EXPECT_NE(error_of({K::JsonSchema, R"({"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}})"})
                .find("invalid JSON schema"),
            std::string::npos);
  EXPECT_NE(error_of({K::Regex, "(ab"}).find("invalid regex"), std::string::npos);
  EXPECT_NE(error_of({K::Grammar, "root ::= undefined_rule"}).find("invalid grammar"), std::string::npos);
  EXPECT_NE(error_of({K::Choice}).find("choice needs at least one"), std::string::npos);
  EXPECT_EQ(error_of({K::JsonSchema, R"({"type": "object"})"}), "");
}

TEST(GrammarProcessor, MasksPaddingAndSpecialsAndFollowsTheChoice) {
  StructuredOutput so{K::Choice};
  so.choices = {"yes", "no"};
  auto p = compiler().processor(so);
  std::vector<int32_t> mask(sched::bitmask_words(520));
  std::vector<int32_t> out;
  ASSERT_TRUE(p->fill_mask(0, {}, out, mask));
  for (int t = 512; t < 520; ++t) EXPECT_FALSE(allowed(mask, t)) << "padding id " << t;
  for (int t = 500; t < 512; ++t) EXPECT_FALSE(allowed(mask, t)) << "special/added id " << t;
  // Feed "no" one allowed token at a time: every token the mask allows keeps a choice reachable.
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::embedded();
  for (int32_t t : tok.encode("no")) {
    ASSERT_TRUE(p->fill_mask(0, {}, out, mask));
    ASSERT_TRUE(allowed(mask, t)) << "token " << t;
    out.push_back(t);
  }
  ASSERT_TRUE(p->fill_mask(0, {}, out, mask));
  for (int t = 0; t < 520; ++t) EXPECT_EQ(allowed(mask, t), t == 502) << "after a full choice only the stop token, id " << t;
  // ignore_eos keeps the sequence going past the stop token: still only the stop token, no throw.
  out.push_back(502);
  ASSERT_NO_THROW(p->fill_mask(0, {}, out, mask));
  for (int t = 0; t < 520; ++t) EXPECT_EQ(allowed(mask, t), t == 502) << "past the stop token, id " << t;
  out.push_back(502);
  ASSERT_NO_THROW(p->fill_mask(0, {}, out, mask));
}

TEST(GrammarProcessor, ReasoningGateOpensAfterThink) {
  StructuredOutput so{K::Regex, "[0-9]+"};
  so.after_reasoning = true;
  auto p = compiler().processor(so);
  const int open = tokenizer::EmbeddedIds::kThink, close = tokenizer::EmbeddedIds::kThinkEnd;
  std::vector<int32_t> mask(sched::bitmask_words(520));
  std::vector<int32_t> out;
  ASSERT_TRUE(p->fill_mask(0, {}, out, mask));
  EXPECT_TRUE(allowed(mask, open)) << "the first draw may open the reasoning block";
  EXPECT_FALSE(allowed(mask, close));
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::embedded();
  const int32_t letter = tok.encode("a")[0], digit = tok.encode("7")[0];
  EXPECT_FALSE(allowed(mask, letter));
  EXPECT_TRUE(allowed(mask, digit));
  out = {open, letter, letter};
  EXPECT_FALSE(p->fill_mask(0, {}, out, mask)) << "inside <think> nothing is masked";
  out.push_back(close);
  ASSERT_TRUE(p->fill_mask(0, {}, out, mask));
  EXPECT_FALSE(allowed(mask, letter));
  EXPECT_TRUE(allowed(mask, digit));
  EXPECT_FALSE(allowed(mask, 502)) << "the regex needs a digit first";
  out.push_back(digit);
  ASSERT_TRUE(p->fill_mask(0, {}, out, mask));
  EXPECT_TRUE(allowed(mask, 502));
  // Another sequence of the same request keeps its own state.
  std::vector<int32_t> other;
  ASSERT_TRUE(p->fill_mask(1, {}, other, mask));
  EXPECT_FALSE(allowed(mask, 502));
  // Thinking off: the prompt already closed the block, so the grammar starts at once.
  const std::vector<int32_t> closed_prompt = {1, 2, open, tok.encode("\n\n")[0], close, tok.encode("\n\n")[0]};
  std::vector<int32_t> none;
  ASSERT_TRUE(p->fill_mask(2, closed_prompt, none, mask));
  EXPECT_FALSE(allowed(mask, open)) << "no <think> after the prompt closed one";
  EXPECT_TRUE(allowed(mask, digit));
}

// ---- pie::LLM, random sampling on the embedded model --------------------------------------------
LLM& embedded() {
  static LLM l("", [] {
    llm::LLMOptions o;
    o.engine.num_kv_blocks = 512;
    o.engine.sched.max_model_len = 512;
    o.engine.num_threads = 1;
    return o;
  }());
  return l;
}

llm::SamplingParams sampled(StructuredOutput so, int n = 4) {
  llm::SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 11;
  p.n = n;
  p.max_tokens = 300;
  p.structured = std::make_shared<const StructuredOutput>(std::move(so));
  return p;
}

TEST(LlmStructured, JsonSchemaOutputsParseAndHaveTheFields) {
  StructuredOutput so{K::JsonSchema, R"({"type": "object", "properties": {
      "id": {"type": "integer", "minimum": 0, "maximum": 99},
      "tag": {"enum": ["red", "green", "blue"]},
      "vals": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3},
      "s": {"type": "string", "minLength": 1, "maxLength": 6}},
      "required": ["id", "tag", "vals", "s"], "additionalProperties": false})"};
  auto outs = embedded().generate({"Give me JSON:", "x", "y", "z"}, sampled(so, 8));
  for (const auto& o : outs)
    for (const auto& c : o.outputs) {
      ASSERT_EQ(c.finish_reason, "stop") << c.text;
      auto j = nlohmann::json::parse(c.text);
      EXPECT_GE(j["id"].get<int>(), 0);
      EXPECT_LE(j["id"].get<int>(), 99);
      EXPECT_TRUE(j["tag"] == "red" || j["tag"] == "green" || j["tag"] == "blue");
      EXPECT_GE(j["vals"].size(), 1u);
      EXPECT_LE(j["vals"].size(), 3u);
      // XGrammar 0.2.8 alone would let raw control characters into a length-bounded string
      // (invalid JSON: the parse above would throw); the compiler rewrites the bound.
      size_t chars = 0;
      for (unsigned char b : j["s"].get<std::string>()) chars += (b & 0xC0) != 0x80;
      EXPECT_GE(chars, 1u);
      EXPECT_LE(chars, 6u);
      EXPECT_EQ(j.size(), 4u);
    }
}

TEST(LlmStructured, RegexChoiceAndGrammarOutputsMatch) {
  auto regex = embedded().generate({"a", "b"}, sampled({K::Regex, "[a-c]{2,5}-[0-9]{3}"}));
  for (const auto& o : regex)
    for (const auto& c : o.outputs) {
      EXPECT_EQ(c.finish_reason, "stop");
      EXPECT_TRUE(std::regex_match(c.text, std::regex("[a-c]{2,5}-[0-9]{3}"))) << c.text;
    }
  StructuredOutput ch{K::Choice};
  ch.choices = {"alpha", "beta", "a \"quoted\"\nline", "ünï"};
  for (const auto& o : embedded().generate({"pick"}, sampled(ch, 8)))
    for (const auto& c : o.outputs)
      EXPECT_TRUE(std::find(ch.choices.begin(), ch.choices.end(), c.text) != ch.choices.end()) << c.text;
  // Balanced parentheses of a's: a context-free language no regex can express.
  StructuredOutput g{K::Grammar, "root ::= \"(\" inner \")\"\ninner ::= (\"a\" | root)*"};
  for (const auto& o : embedded().generate({"paren"}, sampled(g, 6)))
    for (const auto& c : o.outputs) {
      if (c.finish_reason != "stop") continue;  // a long nesting may hit max_tokens
      int depth = 0;
      bool ok = !c.text.empty();
      for (char x : c.text) {
        depth += x == '(' ? 1 : x == ')' ? -1 : 0;
        ok = ok && depth >= 0 && (x == '(' || x == ')' || x == 'a');
      }
      EXPECT_TRUE(ok && depth == 0) << c.text;
    }
}

TEST(LlmStructured, EngineRefusesAStructuredOutputWithoutItsProcessor) {
  sched::SamplingParams p;
  p.structured = std::make_shared<const StructuredOutput>(StructuredOutput{K::Regex, "a"});
  try {
    p.validate(512);
    FAIL() << "no error";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("logits_processor"), std::string::npos);
  }
}

// ---- the engine driven directly: a grammar still compiling, and truncated outputs ------------
using CpuEngine = Engine<Qwen3, CpuF32>;

EngineOptions engine_options() {
  EngineOptions o;
  o.num_kv_blocks = 256;
  o.sched.max_model_len = 512;
  o.num_threads = 1;
  return o;
}

/// A compiler at the embedded model's own vocabulary (512), for requests the engine runs.
structured::Compiler& model_compiler() {
  static tokenizer::Tokenizer tok = tokenizer::Tokenizer::embedded();
  static structured::Compiler c(tok, 512, {tokenizer::EmbeddedIds::kImEnd});
  return c;
}

sched::SamplingParams constrained(std::shared_ptr<sched::LogitsProcessor> p, int max_tokens, uint64_t seed) {
  sched::SamplingParams s;
  s.temperature = 1.0f;
  s.seed = seed;
  s.max_tokens = max_tokens;
  s.logits_processor = std::move(p);
  return s;
}

/// Steps `e` until every request finished; returns each request's tokens (one sequence each).
std::map<uint64_t, std::vector<int32_t>> run_all(CpuEngine& e) {
  std::map<uint64_t, std::vector<int32_t>> out;
  while (e.has_unfinished())
    for (auto& ro : e.step())
      for (auto& so : ro.seqs) {
        auto& t = out[ro.request_id];
        t.insert(t.end(), so.new_tokens.begin(), so.new_tokens.end());
      }
  return out;
}

// A grammar that compiles slowly (a test delay of 1 s): while another request runs, the new
// one waits for its grammar without holding the running one up; on an idle engine it starts at
// once (the prefill overlaps the compile) and its step waits for the grammar before the draw.
// Either way its tokens are those of the same request whose grammar was compiled beforehand.
TEST(AsyncCompile, ARequestWaitsForItsGrammarAndNothingElseDoes) {
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::embedded();
  const StructuredOutput so{K::Regex, "[a-c]{2,5}-[0-9]{3}"};
  const std::vector<int32_t> prompt = tok.encode("pick a code"), other = tok.encode("something else");
  std::vector<int32_t> want;
  {
    CpuEngine ref(engine_options());
    ref.add_request(prompt, constrained(model_compiler().processor(so), 40, 5));
    want = run_all(ref).begin()->second;
  }
  ASSERT_FALSE(want.empty());
  ASSERT_TRUE(std::regex_match(tok.decode(std::vector<int32_t>(want.begin(), want.end() - 1)),
                               std::regex("[a-c]{2,5}-[0-9]{3}")));

  for (bool busy : {true, false}) {
    structured::Compiler slow(tok, 512, {tokenizer::EmbeddedIds::kImEnd});
    slow.set_test_compile_delay(std::chrono::milliseconds(1000));
    CpuEngine e(engine_options());
    uint64_t plain = 0;
    if (busy) {
      sched::SamplingParams g;
      g.temperature = 0;
      g.max_tokens = 6;
      g.ignore_eos = true;
      plain = e.add_request(other, g);
      e.step();
    }
    auto grammar = slow.compile_async(so);
    auto proc = slow.processor(grammar, so);
    EXPECT_FALSE(proc->ready());
    const uint64_t c = e.add_request(prompt, constrained(proc, 40, 5));
    bool plain_done_while_compiling = false;
    std::map<uint64_t, std::vector<int32_t>> out;
    while (e.has_unfinished()) {
      for (auto& ro : e.step()) {
        for (auto& sq : ro.seqs) {
          auto& t = out[ro.request_id];
          t.insert(t.end(), sq.new_tokens.begin(), sq.new_tokens.end());
        }
        if (busy && ro.request_id == plain && ro.finished) plain_done_while_compiling = !proc->ready();
        if (!busy && ro.request_id == c) EXPECT_TRUE(proc->ready()) << "a draw before its grammar was compiled";
      }
    }
    if (busy) {
      EXPECT_TRUE(plain_done_while_compiling) << "the running request waited for the other's compile";
      EXPECT_EQ(out[plain].size(), 5u);  // its first token came in the step before
    }
    EXPECT_EQ(out[c], want) << (busy ? "busy" : "idle") << " engine";
  }
}

// A compile that fails (here a bad regex, reported by the future) leaves the request's draws
// to the stop tokens only: nothing unconstrained gets out.
TEST(AsyncCompile, AFailedCompileAllowsOnlyTheStopTokens) {
  auto grammar = model_compiler().compile_async({K::Regex, "(ab"});
  try {
    grammar.get();
    FAIL() << "no error";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid regex"), std::string::npos);
  }
  auto proc = model_compiler().processor(grammar, {K::Regex, "(ab"});
  std::vector<int32_t> mask(sched::bitmask_words(512)), none;
  ASSERT_TRUE(proc->fill_mask(0, {}, none, mask));
  for (int t = 0; t < 512; ++t) EXPECT_EQ(allowed(mask, t), t == tokenizer::EmbeddedIds::kImEnd) << t;
}

// compile_async() remembers each constraint's future: asked for again while compiling, it gets
// the same compile; a failed compile is forgotten; past the byte bound the least recently used
// finished grammar goes, and asking for it again compiles it afresh (on a worker, not the caller).
TEST(AsyncCompile, RemembersFuturesByConstraintWithinABound) {
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::embedded();
  const StructuredOutput a{K::Regex, "[a-c]{2,5}"}, b{K::Regex, "x[0-9]+"};
  {
    structured::Compiler c(tok, 512, {tokenizer::EmbeddedIds::kImEnd});
    c.set_test_compile_delay(std::chrono::milliseconds(200));
    auto f1 = c.compile_async(a);
    auto f2 = c.compile_async(a);  // while the first compile still runs
    EXPECT_EQ(c.remembered_count(), 1u);
    EXPECT_EQ(f1.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
    f2.wait();
    EXPECT_EQ(f1.wait_for(std::chrono::seconds(0)), std::future_status::ready) << "a second compile of the same constraint";
    EXPECT_GT(c.remembered_bytes(), 0u);
    auto bad = c.compile_async({K::Regex, "(ab"});
    EXPECT_EQ(c.remembered_count(), 2u);
    EXPECT_THROW(bad.get(), pie::Error);
    EXPECT_EQ(c.remembered_count(), 1u) << "a failed compile stays remembered";
  }
  {
    structured::Compiler c(tok, 512, {tokenizer::EmbeddedIds::kImEnd}, 1, /*cache_bytes=*/2);  // bound 1 byte
    c.compile_async(a).wait();
    const size_t a_bytes = c.remembered_bytes();
    EXPECT_EQ(c.remembered_count(), 1u) << "the newest grammar stays whatever its size";
    c.compile_async(b).wait();
    EXPECT_EQ(c.remembered_count(), 1u) << "a was not evicted";
    EXPECT_NE(c.remembered_bytes(), 0u);
    c.set_test_compile_delay(std::chrono::milliseconds(200));
    auto again = c.compile_async(a);  // evicted: compiled again, on a worker
    EXPECT_EQ(again.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
    auto proc = c.processor(again, a);
    std::vector<int32_t> mask(sched::bitmask_words(512)), none;
    ASSERT_TRUE(proc->fill_mask(0, {}, none, mask));
    EXPECT_EQ(c.remembered_bytes(), a_bytes) << "b evicted in turn, a's bytes counted again";
  }
}

// max_tokens cuts a constrained output (finish reason length): what came out is a prefix the
// grammar accepts — a fresh matcher takes every token and is not yet complete — for a JSON
// schema, a regex and an EBNF grammar.
TEST(Truncated, AnOutputCutByMaxTokensIsAValidPrefix) {
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::embedded();
  const std::vector<StructuredOutput> forms = {
      {K::JsonSchema, R"({"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string",
          "maxLength": 40}, "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "minItems": 3}},
          "required": ["id", "name", "tags"], "additionalProperties": false})"},
      {K::Regex, "[a-z]{20,40}@[0-9]{10}"},
      {K::Grammar, "root ::= \"(\" inner \")\" \" \" root2\nroot2 ::= [0-9]+ \";\"\n"
                   "inner ::= (\"a\" | \"(\" inner \")\")*"},
  };
  for (const auto& so : forms) {
    int cut = 0;
    for (uint64_t seed = 1; seed <= 6; ++seed) {
      CpuEngine e(engine_options());
      const uint64_t id = e.add_request(tok.encode("write"), constrained(model_compiler().processor(so), 8, seed));
      std::vector<int32_t> out;
      sched::FinishReason finish = sched::FinishReason::None;
      while (e.has_unfinished())
        for (auto& ro : e.step())
          for (auto& s : ro.seqs) {
            out.insert(out.end(), s.new_tokens.begin(), s.new_tokens.end());
            if (ro.request_id == id && s.finish != sched::FinishReason::None) finish = s.finish;
          }
      if (finish != sched::FinishReason::Length) continue;
      ++cut;
      ASSERT_EQ(out.size(), 8u);
      xgrammar::GrammarMatcher m(model_compiler().compile(so));
      for (size_t i = 0; i < out.size(); ++i)
        ASSERT_TRUE(m.AcceptToken(out[i])) << so.kind_name() << " seed " << seed << ": token " << i << " ("
                                           << out[i] << ") rejected after '"
                                           << tok.decode(std::vector<int32_t>(out.begin(), out.begin() + i)) << "'";
      EXPECT_FALSE(m.IsTerminated()) << so.kind_name() << " seed " << seed << ": '" << tok.decode(out) << "'";
    }
    EXPECT_GT(cut, 0) << so.kind_name() << ": no output was cut by max_tokens (the test checks nothing)";
  }
}

}  // namespace

// Prewarming (XGrammar's rule-level cache filled with the common length-bounded strings) must
// not change a single mask: for schemas whose strings are inside the prewarmed bounds, outside
// them and in other contexts (arrays, anyOf, $ref, the last property), a prewarmed compiler and
// fresh compilers (one per schema: no cache shared with anything) give the same mask at every
// step of random walks through the grammar.
TEST(Prewarm, MasksAreThoseOfAFreshCompiler) {
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::embedded();
  const int32_t stop = tokenizer::EmbeddedIds::kImEnd;
  structured::Compiler warm(tok, 512, {stop}, 2);
  warm.prewarm_bounded_strings(6, 2);
  warm.wait_prewarm();
  EXPECT_EQ(warm.prewarmed_max_length(), 6);
  const std::vector<std::string> schemas = {
      R"({"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}, "b": {"type": "string",
          "minLength": 1, "maxLength": 5}, "c": {"type": "integer"}}, "required": ["a", "b", "c"]})",
      R"({"type": "array", "items": {"type": "string", "minLength": 2, "maxLength": 4}, "minItems": 1, "maxItems": 3})",
      R"({"anyOf": [{"type": "string", "maxLength": 6}, {"type": "object", "properties": {"z": {"type": "string",
          "minLength": 2, "maxLength": 2}}, "required": ["z"], "additionalProperties": false}]})",
      R"({"$defs": {"w": {"type": "string", "minLength": 1, "maxLength": 4}}, "type": "object", "properties":
          {"p": {"$ref": "#/$defs/w"}, "q": {"type": "string", "minLength": 3, "maxLength": 9}}, "required": ["p"]})",
      R"({"type": "object", "properties": {"e": {"enum": ["x", "yy"]}, "last": {"type": "string", "maxLength": 2}},
          "required": ["e", "last"], "additionalProperties": false})",
  };
  std::mt19937 rng(11);
  for (size_t k = 0; k < schemas.size(); ++k) {
    const StructuredOutput so{K::JsonSchema, schemas[k]};
    structured::Compiler fresh(tok, 512, {stop}, 2);
    for (int walk = 0; walk < 8; ++walk) {
      auto pw = warm.processor(so), pf = fresh.processor(so);
      std::vector<int32_t> mw(sched::bitmask_words(512)), mf(mw.size()), out;
      for (int step = 0; step < 40; ++step) {
        ASSERT_TRUE(pw->fill_mask(0, {}, out, mw));
        ASSERT_TRUE(pf->fill_mask(0, {}, out, mf));
        ASSERT_EQ(mw, mf) << "schema " << k << " walk " << walk << " step " << step;
        std::vector<int32_t> ok;
        for (int t = 0; t < 512; ++t)
          if (allowed(mf, t)) ok.push_back(t);
        ASSERT_FALSE(ok.empty());
        const int32_t t = ok[rng() % ok.size()];
        if (t == stop) break;
        out.push_back(t);
      }
    }
  }
}

// An engine that counts the steps it runs while a structured request's grammar is still
// compiling (pie::LLM's engine, wrapped through LLM's factory).
class CompileSpy final : public AnyEngine {
 public:
  explicit CompileSpy(std::unique_ptr<AnyEngine> e) : e_(std::move(e)) {}
  uint64_t add_request(std::vector<int32_t> prompt, sched::SamplingParams params) override {
    if (params.logits_processor) procs_.push_back(params.logits_processor);
    return e_->add_request(std::move(prompt), std::move(params));
  }
  std::vector<RequestOutput> step() override {
    for (const auto& p : procs_)
      if (!p->ready()) {
        ++steps_while_compiling;
        break;
      }
    return e_->step();
  }
  void abort(uint64_t id) override { e_->abort(id); }
  void finish_sequence(uint64_t id, int index) override { e_->finish_sequence(id, index); }
  bool has_unfinished() const override { return e_->has_unfinished(); }
  Stats stats() const override { return e_->stats(); }
  const model::ModelConfig& config() const override { return e_->config(); }
  const model::GenerationConfig& generation_config() const override { return e_->generation_config(); }
  int steps_while_compiling = 0;

 private:
  std::unique_ptr<AnyEngine> e_;
  std::vector<std::shared_ptr<sched::LogitsProcessor>> procs_;
};

// pie::LLM compiles a structured output as `pie serve` does (Compiler::compile_async): with a
// slow compile (a test delay of 500 ms, which only the asynchronous path takes) the engine
// already steps — the first prompt's prefill — while the grammar compiles, every output still
// matches, and a bad regex is still an error of generate() naming it.
TEST(LlmStructured, CompilesAsynchronouslyAsTheServerDoes) {
  CompileSpy* spy = nullptr;
  llm::LLMOptions o;
  o.engine.num_kv_blocks = 512;
  o.engine.sched.max_model_len = 512;
  o.engine.num_threads = 1;
  LLM l("", o, [&](const EngineOptions& eo) -> std::unique_ptr<AnyEngine> {
    auto s = std::make_unique<CompileSpy>(llm::default_engine(eo));
    spy = s.get();
    return s;
  });
  ASSERT_NE(spy, nullptr);
  l.grammar_compiler().set_test_compile_delay(std::chrono::milliseconds(500));
  const auto t0 = std::chrono::steady_clock::now();
  auto outs = l.generate({"a", "b", "c"}, sampled({K::Regex, "[a-c]{2,5}-[0-9]{3}"}, 2));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(500)) << "not the asynchronous compile";
  EXPECT_GE(spy->steps_while_compiling, 1) << "nothing ran while the grammar compiled";
  for (const auto& out : outs)
    for (const auto& c : out.outputs) {
      EXPECT_EQ(c.finish_reason, "stop");
      EXPECT_TRUE(std::regex_match(c.text, std::regex("[a-c]{2,5}-[0-9]{3}"))) << c.text;
    }
  int deltas = 0;
  try {
    l.generate({"a"}, sampled({K::Regex, "(ab"}, 1), [&](const llm::Delta&) { ++deltas; });
    FAIL() << "a bad regex generated";
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid regex"), std::string::npos) << e.what();
  }
  EXPECT_EQ(deltas, 0) << "output of a request whose grammar failed was handed on";
}
