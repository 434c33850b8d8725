// pie::LLM on the embedded default model: text equals the detokenized ids, greedy equals the
// engine run on the same ids, batched equals one at a time (greedy and seeded), chat prompts
// equal the template rendered and tokenized by hand, streaming deltas concatenate to the final
// outputs, stop strings cut where they match, n > 1 and logprobs shapes, and bad input throws
// pie::Error with a message naming it, leaving the LLM usable.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "pie/engine/engine.hpp"
#include "pie/llm/llm.hpp"

namespace {
using namespace pie;
using llm::SamplingParams;

EngineOptions small_engine() {
  EngineOptions o;
  o.num_kv_blocks = 256;
  o.sched.max_model_len = 256;
  o.num_threads = 1;  // CI runs tests side by side on 2 cores
  return o;
}

llm::LLMOptions small() {
  llm::LLMOptions o;
  o.engine = small_engine();
  return o;
}

LLM& embedded() {
  static LLM l("", small());
  return l;
}

SamplingParams greedy(int max_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  return p;
}

const std::vector<std::string> kPrompts = {"Hello there", "The quick brown fox jumps over", "pie",
                                           "Once upon a time, in a land far away,"};

// ---- generate --------------------------------------------------------------------------------
TEST(LlmEmbedded, TextIsTheDetokenizedIdsAndPromptIdsTheTokenizers) {
  LLM& l = embedded();
  SamplingParams p = greedy(24);
  p.skip_special_tokens = false;
  for (bool skip : {false, true}) {
    p.skip_special_tokens = skip;
    auto outs = l.generate(kPrompts, p);
    ASSERT_EQ(outs.size(), kPrompts.size());
    for (size_t i = 0; i < outs.size(); ++i) {
      EXPECT_EQ(outs[i].prompt, kPrompts[i]);
      EXPECT_EQ(outs[i].prompt_token_ids, l.tokenizer().encode(kPrompts[i], true));
      ASSERT_EQ(outs[i].outputs.size(), 1u);
      const auto& c = outs[i].outputs[0];
      EXPECT_EQ(c.index, 0);
      ASSERT_FALSE(c.token_ids.empty());
      EXPECT_EQ(c.text, l.tokenizer().decode(c.token_ids, skip)) << "prompt " << i;
      EXPECT_TRUE(c.finish_reason == "stop" || c.finish_reason == "length") << c.finish_reason;
      if (c.finish_reason == "length") EXPECT_EQ(c.token_ids.size(), 24u);
      if (c.finish_reason == "stop") EXPECT_EQ(c.stop_token, c.token_ids.back());  // an EOS id
      EXPECT_FALSE(c.cumulative_logprob.has_value());
      EXPECT_TRUE(c.logprobs.empty());
    }
  }
  EXPECT_FALSE(l.engine().has_unfinished());
}

TEST(LlmEmbedded, GreedyEqualsTheEngineOnTheSameIds) {
  LLM& l = embedded();
  SamplingParams p = greedy(20);
  auto outs = l.generate(kPrompts, p);
  Engine<Qwen3, CpuF32> e(small_engine());
  std::vector<std::vector<int32_t>> ids;
  for (const auto& o : outs) ids.push_back(o.prompt_token_ids);
  auto ref = e.generate(ids, p);
  for (size_t i = 0; i < outs.size(); ++i) {
    EXPECT_EQ(outs[i].outputs[0].token_ids, ref[i].tokens[0]) << "prompt " << i;
    EXPECT_EQ(outs[i].outputs[0].finish_reason, sched::finish_reason_name(ref[i].finish[0]));
  }
  // generate_ids on the same ids gives the same result.
  auto again = l.generate_ids(ids, p);
  for (size_t i = 0; i < outs.size(); ++i) {
    EXPECT_TRUE(again[i].prompt.empty());
    EXPECT_EQ(again[i].outputs[0].token_ids, outs[i].outputs[0].token_ids);
    EXPECT_EQ(again[i].outputs[0].text, outs[i].outputs[0].text);
  }
}

TEST(LlmEmbedded, BatchedEqualsOneAtATimeGreedyAndSeeded) {
  LLM& l = embedded();
  SamplingParams g = greedy(16);
  SamplingParams s;
  s.temperature = 1.0f;
  s.top_k = 50;
  s.seed = 1234;
  s.max_tokens = 16;
  s.n = 2;
  for (const SamplingParams& p : {g, s}) {
    auto batched = l.generate(kPrompts, p);
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      auto alone = l.generate({kPrompts[i]}, p);
      ASSERT_EQ(alone[0].outputs.size(), batched[i].outputs.size());
      for (size_t k = 0; k < alone[0].outputs.size(); ++k) {
        EXPECT_EQ(alone[0].outputs[k].token_ids, batched[i].outputs[k].token_ids) << "prompt " << i << " seq " << k;
        EXPECT_EQ(alone[0].outputs[k].text, batched[i].outputs[k].text);
        EXPECT_EQ(alone[0].outputs[k].finish_reason, batched[i].outputs[k].finish_reason);
      }
    }
  }
}

TEST(LlmEmbedded, DefaultSamplingParamsComeFromTheGenerationConfig) {
  const auto p = embedded().default_sampling_params();
  EXPECT_FLOAT_EQ(p.temperature, 0.6f);  // Qwen3's generation_config.json values
  EXPECT_FLOAT_EQ(p.top_p, 0.95f);
  EXPECT_EQ(p.top_k, 20);
  EXPECT_EQ(p.max_tokens, 16);
  auto outs = embedded().generate({"abc"});
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_LE(outs[0].outputs[0].token_ids.size(), 16u);
}

// ---- chat ------------------------------------------------------------------------------------
TEST(LlmEmbedded, ChatPromptIsTheTemplateRenderedAndTokenized) {
  LLM& l = embedded();
  const llm::Conversation conv = {{"system", "You are terse."}, {"user", "Hi!"}, {"assistant", "Hello."},
                                  {"user", "Name a colour."}};
  nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
  for (const auto& m : conv) msgs.push_back({{"role", m.role}, {"content", m.content}});
  const auto& tmpl = tokenizer::ChatTemplate::embedded();

  auto out = l.chat(conv, greedy(12));
  const std::string want = tmpl.render(msgs, {{"add_generation_prompt", true}});
  EXPECT_EQ(out.prompt, want);
  EXPECT_EQ(out.prompt_token_ids, l.tokenizer().encode(want, false));
  EXPECT_NE(want.find("<|im_start|>assistant\n"), std::string::npos);
  EXPECT_EQ(want.substr(want.size() - 22), "<|im_start|>assistant\n");
  EXPECT_EQ(out.prompt_token_ids.back(), l.tokenizer().encode("\n").back());
  EXPECT_EQ(out.outputs[0].text, l.tokenizer().decode(out.outputs[0].token_ids, true));

  // chat_template_kwargs reach the template: Qwen3 closes an empty think block.
  llm::ChatOptions no_think;
  no_think.chat_template_kwargs["enable_thinking"] = false;
  auto out2 = l.chat(conv, greedy(12), no_think);
  const std::string want2 = tmpl.render(msgs, {{"enable_thinking", false}, {"add_generation_prompt", true}});
  EXPECT_EQ(out2.prompt, want2);
  EXPECT_EQ(want2, want + "<think>\n\n</think>\n\n");
  EXPECT_EQ(out2.prompt_token_ids, l.tokenizer().encode(want2, false));

  // Without the generation prompt; and continuing the final message.
  llm::ChatOptions plain;
  plain.add_generation_prompt = false;
  EXPECT_EQ(l.apply_chat_template(conv, plain), tmpl.render(msgs, {{"add_generation_prompt", false}}));
  llm::ChatOptions cont;
  cont.add_generation_prompt = false;
  cont.continue_final_message = true;
  const std::string c = l.apply_chat_template({{"user", "Hi"}, {"assistant", "Well,"}}, cont);
  EXPECT_EQ(c.substr(c.size() - 5), "Well,");

  // A batch of conversations equals each alone.
  auto batch = l.chat_batch({conv, {{"user", "Another one."}}}, greedy(12));
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[0].prompt_token_ids, out.prompt_token_ids);
  EXPECT_EQ(batch[0].outputs[0].token_ids, out.outputs[0].token_ids);
  auto single = l.chat({{"user", "Another one."}}, greedy(12));
  EXPECT_EQ(batch[1].outputs[0].token_ids, single.outputs[0].token_ids);
}

// ---- streaming, stop strings, n, logprobs ------------------------------------------------------
struct Collected {
  std::map<std::pair<size_t, int>, std::string> text;
  std::map<std::pair<size_t, int>, std::vector<int32_t>> ids;
  std::map<std::pair<size_t, int>, std::string> finish;
  std::map<std::pair<size_t, int>, int> calls, finish_calls, calls_after_finish;
  llm::DeltaCallback callback() {
    return [this](const llm::Delta& d) {
      const auto k = std::make_pair(d.prompt, d.sequence);
      calls[k]++;
      EXPECT_EQ(d.token_ids.size(), 1u);  // one decode step, one token, one call
      if (finish_calls[k] > 0) calls_after_finish[k]++;
      text[k] += d.text;
      ids[k].insert(ids[k].end(), d.token_ids.begin(), d.token_ids.end());
      if (!d.finish_reason.empty()) {
        finish[k] = std::string(d.finish_reason);
        finish_calls[k]++;
      }
    };
  }
  void expect_matches(const std::vector<llm::PromptOutput>& outs) const {
    for (size_t i = 0; i < outs.size(); ++i)
      for (const auto& c : outs[i].outputs) {
        const auto k = std::make_pair(i, c.index);
        EXPECT_EQ(text.at(k), c.text) << "prompt " << i << " seq " << c.index;
        EXPECT_EQ(ids.at(k), c.token_ids);
        EXPECT_EQ(finish.at(k), c.finish_reason);
        EXPECT_EQ(finish_calls.at(k), 1);
        EXPECT_EQ(calls.at(k), static_cast<int>(c.token_ids.size()));  // streamed as it came
        EXPECT_EQ(calls_after_finish.count(k) ? calls_after_finish.at(k) : 0, 0);
      }
  }
};

TEST(LlmEmbedded, StreamingDeltasConcatenateToTheFinalOutputs) {
  LLM& l = embedded();
  SamplingParams p;
  p.temperature = 0.9f;
  p.seed = 99;
  p.n = 3;
  p.max_tokens = 30;
  Collected got;
  auto outs = l.generate(kPrompts, p, got.callback());
  got.expect_matches(outs);
  // Streaming does not change what is generated.
  auto plain = l.generate(kPrompts, p);
  for (size_t i = 0; i < outs.size(); ++i)
    for (size_t k = 0; k < 3; ++k) EXPECT_EQ(plain[i].outputs[k].token_ids, outs[i].outputs[k].token_ids);
}

/// A stop string taken from the middle of `text` (whole UTF-8 characters, 3+ bytes), and the
/// position of its first occurrence.
std::pair<std::string, size_t> stop_from(const std::string& text) {
  auto boundary = [&](size_t i) { return i >= text.size() || (static_cast<unsigned char>(text[i]) & 0xC0) != 0x80; };
  size_t b = text.size() / 2;
  while (!boundary(b)) --b;
  size_t e = b + 3;
  while (!boundary(e)) ++e;
  std::string s = text.substr(b, e - b);
  return {s, text.find(s)};
}

TEST(LlmEmbedded, StopStringsCutTheTextWhereTheyFirstMatch) {
  LLM& l = embedded();
  SamplingParams p = greedy(40);
  p.ignore_eos = true;
  p.skip_special_tokens = false;
  const auto full = l.generate(kPrompts, p);
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    const auto& ref = full[i].outputs[0];
    ASSERT_GE(ref.text.size(), 12u) << "prompt " << i;
    const auto [stop, at] = stop_from(ref.text);
    for (bool include : {false, true}) {
      SamplingParams q = p;
      q.stop = {"never appears \x01", stop};
      q.include_stop_str_in_output = include;
      Collected got;
      auto out = l.generate({kPrompts[i]}, q, got.callback());
      got.expect_matches(out);
      const auto& c = out[0].outputs[0];
      EXPECT_EQ(c.finish_reason, "stop");
      EXPECT_EQ(c.stop_string, stop);
      EXPECT_EQ(c.stop_token, -1);
      EXPECT_EQ(c.text, ref.text.substr(0, include ? at + stop.size() : at)) << "stop '" << stop << "'";
      // The ids stop at the token that completed the stop string.
      ASSERT_LE(c.token_ids.size(), ref.token_ids.size());
      EXPECT_TRUE(std::equal(c.token_ids.begin(), c.token_ids.end(), ref.token_ids.begin()));
      const std::string all = l.tokenizer().decode(c.token_ids, false);
      std::vector<int32_t> shorter(c.token_ids.begin(), c.token_ids.end() - 1);
      EXPECT_NE(all.find(stop), std::string::npos);
      EXPECT_EQ(l.tokenizer().decode(shorter, false).find(stop), std::string::npos);
    }
  }
  EXPECT_FALSE(l.engine().has_unfinished());
}

TEST(LlmEmbedded, NSequencesAndLogprobs) {
  LLM& l = embedded();
  SamplingParams p;
  p.temperature = 0.8f;
  p.seed = 7;
  p.n = 3;
  p.max_tokens = 10;
  p.ignore_eos = true;
  p.logprobs = 2;
  auto outs = l.generate({"one", "two words"}, p);
  for (const auto& o : outs) {
    ASSERT_EQ(o.outputs.size(), 3u);
    for (int k = 0; k < 3; ++k) {
      const auto& c = o.outputs[k];
      EXPECT_EQ(c.index, k);
      ASSERT_EQ(c.token_ids.size(), 10u);
      ASSERT_EQ(c.logprobs.size(), 10u);
      EXPECT_EQ(c.finish_reason, "length");
      double sum = 0;
      for (size_t t = 0; t < 10; ++t) {
        EXPECT_EQ(c.logprobs[t].token, c.token_ids[t]);
        EXPECT_LE(c.logprobs[t].logprob, 0.f);
        ASSERT_EQ(c.logprobs[t].top.size(), 2u);
        EXPECT_GE(c.logprobs[t].top[0].second, c.logprobs[t].top[1].second);
        sum += c.logprobs[t].logprob;
      }
      ASSERT_TRUE(c.cumulative_logprob.has_value());
      EXPECT_DOUBLE_EQ(*c.cumulative_logprob, sum);
    }
    EXPECT_NE(o.outputs[0].token_ids, o.outputs[1].token_ids);  // 10 sampled tokens from 512
  }
  // Greedy: the chosen token is the top-1 alternative.
  SamplingParams g = greedy(8);
  g.logprobs = 0;
  auto gd = l.generate({"one"}, g);
  for (const auto& lp : gd[0].outputs[0].logprobs) EXPECT_TRUE(lp.top.empty());
  EXPECT_EQ(gd[0].outputs[0].logprobs.size(), gd[0].outputs[0].token_ids.size());
}

// ---- bad input ----------------------------------------------------------------------------------
::testing::AssertionResult has(const std::string& msg, const std::string& part) {
  if (msg.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << msg << "' lacks '" << part << "'";
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const pie::Error& e) {
    return e.what();
  }
  return "(no pie::Error)";
}

TEST(LlmEmbedded, BadInputThrowsAndLeavesTheLlmUsable) {
  LLM& l = embedded();
  const SamplingParams ok = greedy(4);
  EXPECT_TRUE(has(error_of([&] { l.chat({{"user", "hi"}, {"wizard", "x"}}, ok); }),
                  "message 1 has unknown role 'wizard'"));
  EXPECT_TRUE(has(error_of([&] { l.chat({}, ok); }), "no messages"));
  llm::ChatOptions both;
  both.continue_final_message = true;
  EXPECT_TRUE(has(error_of([&] { l.chat({{"user", "hi"}}, ok, both); }), "cannot both be set"));
  llm::ChatOptions bad_kwargs;
  bad_kwargs.chat_template_kwargs = nlohmann::ordered_json::array();
  EXPECT_TRUE(has(error_of([&] { l.chat({{"user", "hi"}}, ok, bad_kwargs); }), "chat_template_kwargs must be an object"));
  EXPECT_TRUE(has(error_of([&] { l.generate({"fine", ""}, ok); }), "prompt 1 is empty"));
  EXPECT_TRUE(has(error_of([&] { l.generate_ids({{1, 2}, {3, 512}}, ok); }), "prompt 1: token 1 (id 512)"));
  std::vector<std::pair<std::string, SamplingParams>> bad;
  auto with = [&](std::string part, auto set) {
    SamplingParams p = ok;
    set(p);
    bad.emplace_back(std::move(part), p);
  };
  with("temperature must be in [0, 100], got -1", [](SamplingParams& p) { p.temperature = -1; });
  with("top_p must be in (0, 1], got 0", [](SamplingParams& p) { p.top_p = 0; });
  with("n must be in [1, 128], got 0", [](SamplingParams& p) { p.n = 0; });
  with("max_tokens must be at least 1, got 0", [](SamplingParams& p) { p.max_tokens = 0; });
  with("logprobs must be in [0, 20], got 21", [](SamplingParams& p) { p.logprobs = 21; });
  with("stop_token_ids: token id 9999", [](SamplingParams& p) { p.stop_token_ids = {9999}; });
  with("stop: stop string 1 is empty", [](SamplingParams& p) { p.stop = {"x", ""}; });
  for (const auto& [part, p] : bad) EXPECT_TRUE(has(error_of([&] { l.generate({"a", "b"}, p); }), part));
  // A prompt longer than max_model_len is refused by the engine; earlier prompts are withdrawn.
  std::string huge;
  for (int i = 0; i < 300; ++i) huge += " x";
  EXPECT_TRUE(has(error_of([&] { l.generate({"fine", huge}, ok); }), "LLM: prompt 1: "));
  EXPECT_FALSE(l.engine().has_unfinished());
  // A callback that throws aborts the batch; the exception reaches the caller.
  EXPECT_THROW(l.generate(kPrompts, ok, [](const llm::Delta&) { throw std::runtime_error("stop"); }),
               std::runtime_error);
  EXPECT_FALSE(l.engine().has_unfinished());
  // Still works, and as before.
  auto a = l.generate({"fine"}, ok);
  LLM fresh("", small());
  EXPECT_EQ(a[0].outputs[0].token_ids, fresh.generate({"fine"}, ok)[0].outputs[0].token_ids);
}

// ---- construction ------------------------------------------------------------------------------
TEST(LlmEmbedded, ReadyEngineAndFactoryOverloads) {
  const SamplingParams p = greedy(12);
  const auto ref = embedded().generate(kPrompts, p);
  LLM ready(make_any_engine<Engine<Qwen3, CpuF32>>(small_engine()), "");
  int calls = 0;
  std::string seen_dir = "unset";
  LLM made("", small(), [&](const EngineOptions& o) {
    ++calls;
    seen_dir = o.model_dir;
    return make_any_engine<Engine<Qwen3, CpuF32>>(o);
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen_dir, "");
  for (LLM* l : {&ready, &made}) {
    auto outs = l->generate(kPrompts, p);
    for (size_t i = 0; i < outs.size(); ++i) EXPECT_EQ(outs[i].outputs[0].token_ids, ref[i].outputs[0].token_ids);
  }
  EXPECT_TRUE(has(error_of([] { LLM("", small(), [](const EngineOptions&) { return std::unique_ptr<AnyEngine>(); }); }),
                         "returned no engine"));
}

}  // namespace
