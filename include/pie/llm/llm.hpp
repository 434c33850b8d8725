#pragma once
/// \file llm.hpp
/// \brief pie::LLM: text in, text out, for research code — what vLLM's `LLM` class gives.
///   pie::LLM llm("");                                   // the embedded default model
///   pie::llm::SamplingParams p;  p.temperature = 0;  p.max_tokens = 32;
///   auto outs = llm.generate({"Hello", "The sky is"}, p);
///   auto reply = llm.chat({{"user", "Say hi."}}, p);   // through the model's chat template
/// All prompts of one call run batched (added together, stepped until done: continuous
/// batching inside the engine). Stop strings, n > 1, logprobs and a streaming callback are
/// supported, and structured outputs: set `params.structured` (a JSON schema, regex, choice or
/// EBNF grammar) and every output matches it (needs pie::structured, XGrammar's core). The engine is any pie::AnyEngine, built by a factory from EngineOptions (the CPU
/// fp32 engine by default) or handed over ready-made (a CUDA engine from an nvcc-built file).
/// Needs pie::text (the tokenizer). Not thread-safe: one thread drives an LLM.
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pie/core/error.hpp"
#include "pie/engine/any_engine.hpp"
#include "pie/engine/engine.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/registry/make_engine.hpp"
#include "pie/llm/model_text.hpp"
#include "pie/llm/outputs.hpp"
#include "pie/llm/sampling_params.hpp"
#include "pie/tokenizer/stop_strings.hpp"
#include "pie/tokenizer/detokenizer.hpp"
#if defined(PIE_WITH_XGRAMMAR)
#include "pie/structured/compiler.hpp"
#endif

namespace pie {

/// \brief Builds the engine an LLM runs on from the EngineOptions the LLM filled in.
using EngineFactory = std::function<std::unique_ptr<AnyEngine>(const EngineOptions&)>;

namespace llm {

/// The engine LLM uses unless told otherwise: Qwen3-family model, fp32 on the CPU.
inline std::unique_ptr<AnyEngine> default_engine(const EngineOptions& opt) { return make_engine(opt); }

/// \brief Construction options of pie::LLM.
struct LLMOptions {
  EngineOptions engine;       ///< model_dir is taken from LLM's first argument
  std::string tokenizer;      ///< directory or tokenizer.json; empty → the model's; "embedded"
  std::string chat_template;  ///< template file or tokenizer_config.json; empty → the tokenizer's
};

/// \brief One chat message.
struct ChatMessage {
  std::string role;  ///< system, developer, user, assistant or tool
  std::string content;
};
using Conversation = std::vector<ChatMessage>;

/// \brief How a conversation is rendered (transformers' apply_chat_template arguments).
struct ChatOptions {
  bool add_generation_prompt = true;    ///< end with the assistant turn's opening
  bool continue_final_message = false;  ///< let the model continue the last message instead
  /// Extra template variables, e.g. {"enable_thinking": false} for Qwen3.
  nlohmann::ordered_json chat_template_kwargs = nlohmann::ordered_json::object();
};

/// Receives every step's progress of every sequence (see Delta).
using DeltaCallback = std::function<void(const Delta&)>;

}  // namespace llm

/// \brief A model with its tokenizer and chat template, generating text from text.
class LLM {
 public:
  /// `model`: a Hugging Face checkpoint directory, empty for the embedded default model.
  /// Throws pie::Error naming what is missing or wrong.
  explicit LLM(std::string model = {}, llm::LLMOptions opt = {}, const EngineFactory& make_engine = llm::default_engine)
      : text_(llm::ModelText::load(model, opt.tokenizer, opt.chat_template)) {
    opt.engine.model_dir = std::move(model);
    engine_ = make_engine(opt.engine);
    PIE_CHECK(engine_ != nullptr, "LLM: the engine factory returned no engine");
  }
  /// Runs on a ready engine; `model` and `opt` locate the tokenizer and chat template only.
  LLM(std::unique_ptr<AnyEngine> engine, const std::string& model, const llm::LLMOptions& opt = {})
      : text_(llm::ModelText::load(model, opt.tokenizer, opt.chat_template)), engine_(std::move(engine)) {
    PIE_CHECK(engine_ != nullptr, "LLM: no engine given");
  }

  /// Completes each prompt (tokenized with the tokenizer's special-token rule, as /v1/completions
  /// does). `on_delta`, if set, is called as tokens arrive. Throws pie::Error on bad input,
  /// before anything runs.
  std::vector<llm::PromptOutput> generate(const std::vector<std::string>& prompts, const llm::SamplingParams& params,
                                          const llm::DeltaCallback& on_delta = {}) {
    std::vector<llm::PromptOutput> outs(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      outs[i].prompt = prompts[i];
      outs[i].prompt_token_ids = text_.tokenizer.encode(prompts[i], /*add_special_tokens=*/true);
    }
    return run(std::move(outs), params, on_delta);
  }
  /// Same with default_sampling_params().
  std::vector<llm::PromptOutput> generate(const std::vector<std::string>& prompts) {
    return generate(prompts, default_sampling_params());
  }
  /// Completes prompts given as token ids.
  std::vector<llm::PromptOutput> generate_ids(const std::vector<std::vector<int32_t>>& prompts,
                                              const llm::SamplingParams& params,
                                              const llm::DeltaCallback& on_delta = {}) {
    std::vector<llm::PromptOutput> outs(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) outs[i].prompt_token_ids = prompts[i];
    return run(std::move(outs), params, on_delta);
  }

  /// Answers one conversation, rendered by apply_chat_template().
  llm::PromptOutput chat(const llm::Conversation& messages, const llm::SamplingParams& params,
                         const llm::ChatOptions& options = {}, const llm::DeltaCallback& on_delta = {}) {
    return std::move(chat_batch({messages}, params, options, on_delta).front());
  }
  /// Answers several conversations, batched.
  std::vector<llm::PromptOutput> chat_batch(const std::vector<llm::Conversation>& conversations,
                                            const llm::SamplingParams& params, const llm::ChatOptions& options = {},
                                            const llm::DeltaCallback& on_delta = {}) {
    std::vector<llm::PromptOutput> outs(conversations.size());
    for (size_t i = 0; i < conversations.size(); ++i) {
      outs[i].prompt = apply_chat_template(conversations[i], options);
      outs[i].prompt_token_ids = text_.tokenizer.encode(outs[i].prompt, /*add_special_tokens=*/false);
    }
    return run(std::move(outs), params, on_delta);
  }

  /// The prompt text a conversation becomes. Throws pie::Error for an unknown role, an empty
  /// conversation, contradictory options or a model without a chat template.
  std::string apply_chat_template(const llm::Conversation& messages, const llm::ChatOptions& options = {}) const {
    PIE_CHECK(text_.chat_template != nullptr,
              "LLM::chat: this model has no chat template (no tokenizer_config.json with one): pass "
              "LLMOptions::chat_template, or use generate()");
    PIE_CHECK(!messages.empty(), "LLM::chat: the conversation has no messages");
    PIE_CHECK(!(options.add_generation_prompt && options.continue_final_message),
              "LLM::chat: add_generation_prompt and continue_final_message cannot both be set");
    PIE_CHECK(options.chat_template_kwargs.is_object(), "LLM::chat: chat_template_kwargs must be an object, got ",
              options.chat_template_kwargs.dump());
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    for (size_t i = 0; i < messages.size(); ++i) {
      const std::string& r = messages[i].role;
      PIE_CHECK(r == "system" || r == "developer" || r == "user" || r == "assistant" || r == "tool",
                "LLM::chat: message ", i, " has unknown role '", r,
                "' (expected system, developer, user, assistant or tool)");
      msgs.push_back({{"role", r}, {"content", messages[i].content}});
    }
    nlohmann::ordered_json vars = options.chat_template_kwargs;
    vars["add_generation_prompt"] = options.add_generation_prompt;
    if (options.continue_final_message) vars["continue_final_message"] = true;
    return text_.chat_template->render(msgs, vars);
  }

  /// vLLM's defaults: the model's generation_config.json sampling values (temperature, top_p,
  /// top_k, min_p, repetition_penalty), the rest neutral.
  llm::SamplingParams default_sampling_params() const {
    llm::SamplingParams p;
    const auto& g = engine_->generation_config();
    if (g.has_temperature) p.temperature = g.temperature;
    if (g.has_top_p) p.top_p = g.top_p;
    if (g.has_top_k) p.top_k = g.top_k;
    if (g.has_min_p) p.min_p = g.min_p;
    if (g.has_repetition_penalty) p.repetition_penalty = g.repetition_penalty;
    return p;
  }

  const tokenizer::Tokenizer& tokenizer() const { return text_.tokenizer; }
  /// Null when the model has no chat template.
  const tokenizer::ChatTemplate* chat_template() const { return text_.chat_template.get(); }
  AnyEngine& engine() { return *engine_; }
  const AnyEngine& engine() const { return *engine_; }
#if defined(PIE_WITH_XGRAMMAR)
  /// The compiler of structured outputs (built on first use over the model's vocabulary and stop
  /// tokens): e.g. to prewarm_bounded_strings() before the first structured request.
  structured::Compiler& grammar_compiler() {
    if (!grammar_) {
      std::vector<int32_t> stop = engine_->generation_config().eos_token_ids;
      for (int32_t id : engine_->config().eos_token_ids) stop.push_back(id);
      grammar_ = std::make_unique<structured::Compiler>(text_.tokenizer, engine_->config().vocab_size, stop);
    }
    return *grammar_;
  }
#endif

 private:
  struct Seq {
    tokenizer::IncrementalDetokenizer detok;
    tokenizer::StopStringMatcher stop;
    bool finished = false;
  };
  struct Live {
    size_t prompt;
    std::vector<Seq> seqs;
    int unfinished;
  };

  /// Adds every prompt of `outs`, steps the engine until all have finished, fills `outs`.
  std::vector<llm::PromptOutput> run(std::vector<llm::PromptOutput> outs, const llm::SamplingParams& params,
                                     const llm::DeltaCallback& on_delta) {
    const int vocab = engine_->config().vocab_size;
    // A structured output without a processor is compiled here, on the compiler's threads, as
    // in `pie serve`: the prompts are queued at once and the first is prefilled while its grammar
    // compiles (its first draw waits for it; the scheduler passes over the others while one
    // runs: WAITING_FOR_FSM). One processor per request, all over the one compile.
    const bool compile = params.structured && !params.logits_processor;
    PendingGrammar grammar;
    llm::SamplingParams checked = params;
    if (compile) {
      grammar = start_grammar(*params.structured);
      checked.logits_processor = grammar.make();
    }
    checked.validate(vocab);
    for (size_t i = 0; i < outs.size(); ++i) {
      const auto& ids = outs[i].prompt_token_ids;
      PIE_CHECK(!ids.empty(), "LLM: prompt ", i, " is empty (no tokens)");
      for (size_t k = 0; k < ids.size(); ++k)
        PIE_CHECK(ids[k] >= 0 && ids[k] < vocab, "LLM: prompt ", i, ": token ", k, " (id ", ids[k],
                  ") is out of the vocabulary [0, ", vocab, ")");
    }
    std::unordered_map<uint64_t, Live> live;
    auto abort_live = [&] {
      for (auto& [rid, l] : live) {
        try {
          engine_->abort(rid);
        } catch (...) {  // the engine's state after a failure is unknown; the first error wins
        }
      }
    };
    try {
      for (size_t i = 0; i < outs.size(); ++i) {
        uint64_t rid = 0;
        try {
          llm::SamplingParams pi = checked;
          if (compile && i > 0) pi.logits_processor = grammar.make();
          rid = engine_->add_request(outs[i].prompt_token_ids, pi);
        } catch (const pie::Error& e) {
          PIE_FAIL("LLM: prompt ", i, ": ", e.what());
        }
        Live l{i, {}, params.n};
        for (int s = 0; s < params.n; ++s)
          l.seqs.push_back({tokenizer::IncrementalDetokenizer(text_.tokenizer, params.skip_special_tokens,
                                                              outs[i].prompt_token_ids),
                            tokenizer::StopStringMatcher(params.stop, params.include_stop_str_in_output)});
        outs[i].outputs.resize(params.n);
        for (int s = 0; s < params.n; ++s) outs[i].outputs[s].index = s;
        live.emplace(rid, std::move(l));
      }
      while (!live.empty()) {
        PIE_CHECK(engine_->has_unfinished(), "LLM: the engine has no work but ", live.size(), " prompts are open");
        std::vector<RequestOutput> step = engine_->step();
        // A bad schema, regex or grammar: its error as soon as the compile reports it, before
        // anything of the step that found it out (a draw of stop tokens only) is handed on.
        if (compile) grammar.check();
        for (const RequestOutput& ro : step) {
          auto it = live.find(ro.request_id);
          if (it == live.end()) continue;
          dispatch(ro, it->second, outs[it->second.prompt], params, on_delta);
          if (it->second.unfinished == 0) live.erase(it);
        }
      }
      if (compile) grammar.wait();
    } catch (...) {
      abort_live();
      throw;
    }
    if (params.logprobs)
      for (auto& o : outs)
        for (auto& c : o.outputs) {
          double sum = 0;
          for (const auto& lp : c.logprobs) sum += lp.logprob;
          c.cumulative_logprob = sum;
        }
    return outs;
  }

  /// One step's output of one request: detokenize, match stop strings, record, call back.
  void dispatch(const RequestOutput& ro, Live& l, llm::PromptOutput& out, const llm::SamplingParams& params,
                const llm::DeltaCallback& on_delta) {
    out.num_cached_tokens = ro.cached_prompt_tokens;
    for (const SequenceOutput& so : ro.seqs) {
      if (so.index < 0 || so.index >= static_cast<int>(l.seqs.size())) continue;
      Seq& s = l.seqs[so.index];
      if (s.finished) continue;
      llm::CompletionOutput& c = out.outputs[so.index];
      const size_t first = c.token_ids.size();
      std::string text;
      for (size_t k = 0; k < so.new_tokens.size() && !s.stop.matched(); ++k) {
        c.token_ids.push_back(so.new_tokens[k]);
        if (params.logprobs && k < so.logprobs.size()) c.logprobs.push_back(so.logprobs[k]);
        text += s.stop.push(s.detok.push(so.new_tokens[k]));
      }
      sched::FinishReason finish = sched::FinishReason::None;
      if (!s.stop.matched() && so.finish != sched::FinishReason::None) {
        text += s.stop.push(s.detok.flush());
        text += s.stop.flush();
        if (!s.stop.matched()) {
          finish = so.finish;
          c.stop_token = so.stop_token;
        }
      }
      if (s.stop.matched()) {
        finish = sched::FinishReason::Stop;
        c.stop_string = s.stop.matched_string();
        if (so.finish == sched::FinishReason::None) engine_->finish_sequence(ro.request_id, so.index);
      }
      c.text += text;
      if (finish != sched::FinishReason::None) {
        s.finished = true;
        --l.unfinished;
        c.finish_reason = sched::finish_reason_name(finish);
      }
      if (on_delta && (c.token_ids.size() > first || finish != sched::FinishReason::None))
        on_delta({l.prompt, so.index, text,
                  std::span<const int32_t>(c.token_ids.data() + first, c.token_ids.size() - first),
                  c.finish_reason});
    }
    // The engine may end a request without a per-sequence finish (aborted inside it).
    if (ro.finished)
      for (size_t i = 0; i < l.seqs.size(); ++i)
        if (!l.seqs[i].finished) {
          llm::CompletionOutput& c = out.outputs[i];
          const std::string text = l.seqs[i].stop.push(l.seqs[i].detok.flush()) + l.seqs[i].stop.flush();
          c.text += text;
          c.finish_reason = sched::finish_reason_name(sched::FinishReason::Abort);
          l.seqs[i].finished = true;
          --l.unfinished;
          if (on_delta) on_delta({l.prompt, static_cast<int>(i), text, {}, c.finish_reason});
        }
  }

  /// \brief A structured output whose grammar is compiling (start_grammar()).
  struct PendingGrammar {
    /// A processor enforcing it on one request; its first draw waits for the compile.
    std::function<std::shared_ptr<sched::LogitsProcessor>()> make;
    /// Throws the compile's error (pie::Error naming the problem) if it is done and failed.
    std::function<void()> check;
    /// Waits for the compile; throws its error.
    std::function<void()> wait;
  };

  /// Starts compiling `so` on the compiler's threads (the compiler is built on first use).
  /// validate()'s errors (an empty schema) throw here, the compile's from check()/wait().
  PendingGrammar start_grammar(const sched::StructuredOutput& so) {
#if defined(PIE_WITH_XGRAMMAR)
    structured::Compiler* c = &grammar_compiler();
    auto g = c->compile_async(so);
    return {[c, g, so] { return c->processor(g, so); },
            [g] {
              if (g.wait_for(std::chrono::seconds(0)) == std::future_status::ready) g.get();
            },
            [g] { g.get(); }};
#else
    (void)so;
    PIE_FAIL("structured_outputs: this build has no XGrammar (link pie::structured)");
#endif
  }

  llm::ModelText text_;
  std::unique_ptr<AnyEngine> engine_;
#if defined(PIE_WITH_XGRAMMAR)
  std::unique_ptr<structured::Compiler> grammar_;
#endif
};

}  // namespace pie
