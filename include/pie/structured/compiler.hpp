#pragma once
/// \file compiler.hpp
/// \brief structured::Compiler: StructuredOutput → GrammarProcessor, through XGrammar's C++
/// core. Built once per model from the tokenizer: XGrammar gets every token's real bytes (the
/// byte-level BPE strings decoded; special tokens as "", which XGrammar never allows), the
/// model's vocabulary size (ids past the tokenizer's — embedding padding — are never allowed)
/// and the model's stop tokens (allowed once the grammar is complete). Compiled grammars are
/// cached by their source (XGrammar's cache; the key is the schema/regex/EBNF text and its
/// options), so a repeated schema costs a lookup; the cache is bounded (512 MiB by default, as
/// vLLM's), least recently used out. compile() may run on any thread.
///
/// compile_async() compiles on the Compiler's own worker threads and returns at once, so a
/// server can queue the request and run its prefill while its grammar compiles (the mask is
/// needed only at the first draw; GrammarProcessor waits there for what is left). It remembers
/// each constraint's future (least recently used out past a byte bound, half XGrammar's), so a
/// constraint asked for again — also while its first compile is still running — shares that
/// future: one compile, and never a synchronous recompile on the caller's thread when
/// XGrammar's own cache has dropped the grammar. A failed compile is not remembered. XGrammar
/// parallelizes one compile over all the host's cores (its per-grammar token-mask
/// precomputation over the vocabulary is the cost: tens of ms for a 30-field schema).
///
/// prewarm_bounded_strings() fills XGrammar's rule-level cache ahead of the first request. A
/// length-bounded string (minLength/maxLength) is the dear part of a fresh compile: every
/// position of the string is a state whose token mask XGrammar computes over the whole vocabulary
/// (about 15-35 ms each, one serial task per state, so more threads do not shorten it). XGrammar
/// caches those masks by the rule's structure, across grammars (GrammarCompiler's cache), so a
/// string of bounds seen before costs a lookup; prewarming compiles the common bounds once, in the
/// background at the lowest CPU priority, and a never-seen schema whose strings are among them
/// compiles in a few ms. The language is unchanged: the cache is XGrammar's own.
///
/// JSON is generated with XGrammar's fixed separators (", " and ": ", no other whitespace), not
/// "any whitespace": a weak or random model otherwise spends its tokens on whitespace loops
/// (the reason vLLM grew `disable_any_whitespace`), and real models write this form anyway.
///
/// A bad schema, regex or grammar throws pie::Error("structured_outputs: invalid JSON schema:
/// <XGrammar's reason>"), which the server answers with a 400.
#include <xgrammar/xgrammar.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdint>
#include <deque>
#include <list>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "pie/core/error.hpp"
#include "pie/sched/structured_output.hpp"
#include "pie/structured/compile_trace.hpp"
#include "pie/structured/grammar_processor.hpp"
#include "pie/tokenizer/tokenizer_class.hpp"

namespace pie::structured {

/// Every token's bytes for XGrammar (VocabType::RAW): special tokens become "", which XGrammar
/// treats as never allowed (only the stop tokens among them are, at the end).
inline std::vector<std::string> raw_vocab(const tokenizer::Tokenizer& tok) {
  std::vector<std::string> v(static_cast<size_t>(tok.vocab_size()));
  for (int32_t i = 0; i < tok.vocab_size(); ++i)
    if (!tok.is_special(i)) v[static_cast<size_t>(i)] = tok.token_bytes(i);
  return v;
}

/// An EBNF string literal of `s` (XGrammar's escapes; UTF-8 passes through).
inline std::string ebnf_literal(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      o += "\\x";
      o += hex[c >> 4];
      o += hex[c & 15];
    } else {
      o += static_cast<char>(c);
    }
  }
  return o + "\"";
}

/// Rewrites every length-bounded string schema (minLength/maxLength, no pattern or format) into
/// the same bound as a pattern over JSON string characters. XGrammar 0.2.8 generates such
/// strings from the character class [^"\\\r\n], which admits raw control characters (invalid
/// JSON), and its negated classes admit the UTF-8 bytes of surrogates (invalid UTF-8, which the
/// detokenizer turns into three U+FFFD: too long); the pattern names the valid code points
/// (printable ASCII but `"` and `\`, U+0080..U+D7FF, U+E000..U+FFFF) and JSON escapes, each
/// one character as in JSON Schema. Values of enum/const/default/examples are data, not
/// schemas, and are left alone.
inline void bound_strings_by_pattern(nlohmann::json& s) {
  if (s.is_array()) {
    for (auto& v : s) bound_strings_by_pattern(v);
    return;
  }
  if (!s.is_object()) return;
  const bool is_string = s.contains("type") && s["type"] == "string";
  if (is_string && !s.contains("pattern") && !s.contains("format") &&
      (s.contains("minLength") || s.contains("maxLength"))) {
    const auto lo = s.value("minLength", nlohmann::json(0)), hi = s.value("maxLength", nlohmann::json());
    if (lo.is_number_integer() && (hi.is_null() || hi.is_number_integer())) {
      s["pattern"] = std::string(R"(^([ !#-\[\]-~\u0080-\uD7FF\uE000-\uFFFF]|\\(["\\/bfnrt]|u[0-9a-fA-F]{4})){)") +
                     std::to_string(lo.get<int64_t>()) + "," + (hi.is_null() ? "" : std::to_string(hi.get<int64_t>())) +
                     "}$";
      s.erase("minLength");
      s.erase("maxLength");
    }
  }
  for (auto it = s.begin(); it != s.end(); ++it)
    if (it.key() != "enum" && it.key() != "const" && it.key() != "default" && it.key() != "examples")
      bound_strings_by_pattern(it.value());
}

/// The JSON schema prewarm_bounded_strings() compiles for the string of minLength `lo` and
/// maxLength `hi`: an object with that one required property.
inline std::string bounded_string_schema(int lo, int hi) {
  return nlohmann::json{{"type", "object"},
                        {"properties", {{"s", {{"type", "string"}, {"minLength", lo}, {"maxLength", hi}}}}},
                        {"required", {"s"}},
                        {"additionalProperties", false}}
      .dump();
}

/// The structural tag (XGrammar's JSON format) of hermes tool calls — `<tool_call>\n{"name": N,
/// "arguments": A}\n</tool_call>`, one or more separated by "\n" — over `tools` (OpenAI's
/// array), restricted to `only` when not empty.
inline std::string hermes_tool_tag(const nlohmann::json& tools, const std::string& only, bool single) {
  nlohmann::json any = nlohmann::json::array();
  for (const auto& t : tools) {
    const auto& fn = t.at("function");
    const std::string name = fn.at("name").get<std::string>();
    if (!only.empty() && name != only) continue;
    nlohmann::json params = fn.contains("parameters") && fn["parameters"].is_object() ? fn["parameters"]
                                                                                      : nlohmann::json{{"type", "object"}};
    bound_strings_by_pattern(params);
    any.push_back({{"type", "object"},
                   {"properties", {{"name", {{"const", name}}}, {"arguments", params}}},
                   {"required", {"name", "arguments"}},
                   {"additionalProperties", false}});
  }
  PIE_CHECK(!any.empty(), "structured_outputs: no tool matches the tool choice '", only, "'");
  nlohmann::json schema = any.size() == 1 ? any[0] : nlohmann::json{{"anyOf", any}};
  // The call's JSON as an EBNF grammar with fixed separators: the structural tag's own
  // json_schema content allows any whitespace, where a weak model loops.
  const std::string ebnf = xgrammar::Grammar::FromJSONSchema(schema.dump(), /*any_whitespace=*/false).ToString();
  nlohmann::json tag = {{"type", "tag"},
                        {"begin", "<tool_call>\n"},
                        {"content", {{"type", "grammar"}, {"grammar", ebnf}}},
                        {"end", "\n</tool_call>"}};
  nlohmann::json fmt = {{"type", "tags_with_separator"},
                        {"tags", {tag}},
                        {"separator", "\n"},
                        {"at_least_one", true},
                        {"stop_after_first", single}};
  return nlohmann::json{{"type", "structural_tag"}, {"format", fmt}}.dump();
}

/// \brief Compiles StructuredOutputs for one model's tokenizer (see file comment).
class Compiler {
 public:
  /// `model_vocab_size`: the model's (≥ the tokenizer's); `stop_ids`: the model's end tokens;
  /// `reasoning`: the `<think>`/`</think>` ids (when the tokenizer has them).
  /// `threads`: XGrammar's threads for one compile (default: every core). `cache_bytes`: the
  /// memory XGrammar's caches may hold (least recently used first out; a third of it for the
  /// rule-level cache, two thirds for whole grammars); vLLM's default, 512 MiB. The default
  /// prewarm takes about 130 MB of it at a 152k vocabulary (its masks sit in both caches until
  /// newer grammars push the prewarm's whole grammars out).
  Compiler(const tokenizer::Tokenizer& tok, int model_vocab_size, std::vector<int32_t> stop_ids,
           int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency())),
           int64_t cache_bytes = int64_t{512} << 20)
      : vocab_size_(std::max(model_vocab_size, tok.vocab_size())),
        stop_ids_(stop_ids),
        info_(raw_vocab(tok), xgrammar::VocabType::RAW, vocab_size_, std::move(stop_ids)),
        compiler_(info_, std::max(threads, 1), /*cache_enabled=*/true, cache_bytes),
        remembered_cap_(static_cast<size_t>(std::max<int64_t>(cache_bytes, 0) / 2)) {
    if (auto o = tok.token_to_id("<think>"), c = tok.token_to_id("</think>"); o && c) reasoning_ = {*o, *c};
    for (int i = 0; i < kWorkers; ++i) workers_.emplace_back([this] { work(); });
  }
  ~Compiler() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    prewarm_stop_ = true;  // the prewarm ends after the compile it is in
    if (prewarm_.joinable()) prewarm_.join();
    for (auto& w : workers_) w.join();  // queued compiles not started are dropped (broken promise)
  }
  Compiler(const Compiler&) = delete;
  Compiler& operator=(const Compiler&) = delete;

  /// Starts compiling, on a background thread at the lowest CPU priority (Linux: nice 19, which
  /// XGrammar's threads inherit, so requests' compiles and the engine go first), the strings of
  /// maxLength 1..`max_length` and minLength 0..`max_min_length`, shortest first: their token
  /// masks land in XGrammar's rule-level cache, and a later schema with such strings reuses
  /// them (see the file comment). Returns at once; call once. The cost is CPU time only: about
  /// 6 s of one core for the default 16 × 3 bounds over a 152k vocabulary. `done`, if given, is
  /// called on the prewarm's thread at its end with its wall time in ms.
  void prewarm_bounded_strings(int max_length = 16, int max_min_length = 2, std::function<void(double)> done = {}) {
    PIE_CHECK(!prewarm_.joinable(), "structured: prewarm_bounded_strings called twice");
    prewarm_ = std::thread([this, max_length, max_min_length, done = std::move(done)] {
      const auto t0 = std::chrono::steady_clock::now();
#if defined(__linux__)
      setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
#endif
      // One string per compile, so that a shutdown waits for one small compile at most.
      for (int hi = 1; hi <= max_length && !prewarm_stop_; ++hi) {
        for (int lo = 0; lo <= std::min(hi, max_min_length) && !prewarm_stop_; ++lo) {
          try {
            // Through compile(), so the string takes the same form (and cache key) as a request's.
            auto so = sched::StructuredOutput::of(sched::StructuredOutput::Kind::JsonSchema);
            so.text = bounded_string_schema(lo, hi);
            (void)compile(so);
          } catch (const std::exception&) {  // cannot happen for these schemas; a prewarm is optional
            return;
          }
        }
        if (!prewarm_stop_) prewarmed_.store(hi);
      }
      if (done && !prewarm_stop_)
        done(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    });
  }
  /// The largest maxLength prewarm_bounded_strings() has finished (0: none yet).
  int prewarmed_max_length() const { return prewarmed_.load(); }
  /// Blocks until prewarm_bounded_strings() has finished (benchmarks, tests).
  void wait_prewarm() {
    if (prewarm_.joinable()) prewarm_.join();
  }

  /// Tests only: every compile_async() compile sleeps this long first (a slow grammar, to check
  /// that a request waits for it correctly). Set before the first compile.
  void set_test_compile_delay(std::chrono::milliseconds d) { test_delay_ = d; }

  /// Starts compiling `so` on the worker threads and returns its future at once (already
  /// ready for a constraint compiled before: a cache lookup). validate()'s errors throw here;
  /// the compile's own (a bad schema, regex or grammar) come out of the future's get().
  std::shared_future<xgrammar::CompiledGrammar> compile_async(const sched::StructuredOutput& so) {
    std::shared_ptr<CompileTrace> trace;
    if (CompileTrace::enabled()) {
      trace = std::make_shared<CompileTrace>();
      trace->asked = CompileTrace::Clock::now();
    }
    so.validate();
    std::string key = so.key();
    std::lock_guard lk(mu_);
    if (trace) {
      char id[32];
      std::snprintf(id, sizeof id, "%s#%016zx", so.kind_name(), std::hash<std::string>{}(key));
      trace->key = id;
      if (traces_.size() >= kMaxTraces) traces_.clear();  // requests that failed before processor() took theirs
      traces_[key] = trace;
    }
    if (auto it = remembered_.find(key); it != remembered_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);  // most recently used first
      if (trace) {
        trace->cached = true;
        trace->started = trace->compiled = CompileTrace::Clock::now();
      }
      return it->second.grammar;
    }
    std::packaged_task<xgrammar::CompiledGrammar()> task([this, so, key, trace]() {
      if (trace) trace->started = CompileTrace::Clock::now();
      if (test_delay_.count() > 0) std::this_thread::sleep_for(test_delay_);
      try {
        auto g = compile(so);
        if (trace) trace->compiled = CompileTrace::Clock::now();
        std::lock_guard lk(mu_);
        if (auto it = remembered_.find(key); it != remembered_.end()) {
          it->second.bytes = std::max<size_t>(g.MemorySizeBytes(), 1);
          remembered_bytes_ += it->second.bytes;
          evict_remembered(key);
        }
        return g;
      } catch (...) {  // not remembered: the next request for it gets a fresh compile (and error)
        std::lock_guard lk(mu_);
        if (auto it = remembered_.find(key); it != remembered_.end()) {
          lru_.erase(it->second.lru);
          remembered_.erase(it);
        }
        throw;  // into the future
      }
    });
    auto f = task.get_future().share();
    lru_.push_front(key);
    remembered_.emplace(std::move(key), Remembered{f, 0, lru_.begin()});
    queue_.push_back(std::move(task));
    cv_.notify_one();
    return f;
  }

  /// Bytes of the finished grammars compile_async() remembers (XGrammar's estimate).
  size_t remembered_bytes() const {
    std::lock_guard lk(mu_);
    return remembered_bytes_;
  }
  /// Constraints compile_async() remembers (finished or compiling).
  size_t remembered_count() const {
    std::lock_guard lk(mu_);
    return remembered_.size();
  }

  /// The compiled grammar of `so` (cached by its source). Throws pie::Error naming the problem.
  xgrammar::CompiledGrammar compile(const sched::StructuredOutput& so) {
    using K = sched::StructuredOutput::Kind;
    so.validate();
    try {
      switch (so.kind) {
        case K::JsonSchema: {
          auto j = nlohmann::json::parse(so.text, nullptr, false);
          PIE_CHECK(!j.is_discarded(), "structured_outputs: invalid JSON schema: not valid JSON");
          PIE_CHECK(j.is_object() || j.is_boolean(), "structured_outputs: invalid JSON schema: must be an object");
          bound_strings_by_pattern(j);
          return compiler_.CompileJSONSchema(j.dump(), /*any_whitespace=*/false, std::nullopt, std::nullopt,
                                             /*strict_mode=*/so.strict);
        }
        case K::JsonObject:  // OpenAI's json_object: any JSON object
          return compiler_.CompileJSONSchema(R"({"type": "object"})", /*any_whitespace=*/false, std::nullopt,
                                             std::nullopt, /*strict_mode=*/false);
        case K::Regex:
          return compiler_.CompileRegex(so.text);
        case K::Grammar:
          return compiler_.CompileGrammar(so.text, "root");
        case K::Choice: {
          std::string g = "root ::= ";
          for (size_t i = 0; i < so.choices.size(); ++i) g += (i ? " | " : "") + ebnf_literal(so.choices[i]);
          return compiler_.CompileGrammar(g, "root");
        }
        case K::ToolCalls: {
          auto tools = nlohmann::json::parse(so.text, nullptr, false);
          PIE_CHECK(tools.is_array(), "structured_outputs: tools must be a JSON array");
          return compiler_.CompileStructuralTag(hermes_tool_tag(tools, so.tool_name, so.single_call));
        }
      }
    } catch (const pie::Error&) {
      throw;
    } catch (const std::exception& e) {
      throw pie::Error(std::string("structured_outputs: invalid ") + so.kind_name() + ": " + e.what());
    }
    throw pie::Error("structured_outputs: unknown kind");
  }

  /// A fresh processor for one request enforcing `so` (its sequences get their own matchers),
  /// compiled now.
  std::shared_ptr<GrammarProcessor> processor(const sched::StructuredOutput& so) {
    return std::make_shared<GrammarProcessor>(compile(so), vocab_size_,
                                              so.after_reasoning ? reasoning_ : ReasoningTokens{});
  }
  /// A fresh processor for one request enforcing `so`, whose grammar `g` (compile_async(so))
  /// may still be compiling: it waits at its first draw.
  std::shared_ptr<GrammarProcessor> processor(std::shared_future<xgrammar::CompiledGrammar> g,
                                              const sched::StructuredOutput& so) {
    std::shared_ptr<CompileTrace> trace;
    if (CompileTrace::enabled()) {
      std::lock_guard lk(mu_);
      if (auto it = traces_.find(so.key()); it != traces_.end()) {
        trace = std::move(it->second);
        traces_.erase(it);
      }
    }
    return std::make_shared<GrammarProcessor>(std::move(g), vocab_size_, stop_ids_,
                                              so.after_reasoning ? reasoning_ : ReasoningTokens{}, std::move(trace));
  }

  int vocab_size() const { return vocab_size_; }
  const ReasoningTokens& reasoning_tokens() const { return reasoning_; }

 private:
  /// Compiles at once: two, so that one slow grammar does not hold up the next request's.
  static constexpr int kWorkers = 2;
  /// PIE_TRACE_STRUCTURED records kept for processor() (tracing only; a bound, not a cache).
  static constexpr size_t kMaxTraces = 4096;
  /// One compile_async() constraint: its future, and its grammar's bytes once compiled (0
  /// while compiling: not counted, never evicted).
  struct Remembered {
    std::shared_future<xgrammar::CompiledGrammar> grammar;
    size_t bytes = 0;
    std::list<std::string>::iterator lru;
  };
  /// Drops least recently used finished grammars (never `keep`) until remembered_bytes_ fits
  /// the bound. mu_ held.
  void evict_remembered(const std::string& keep) {
    for (auto it = lru_.end(); remembered_bytes_ > remembered_cap_ && it != lru_.begin();) {
      --it;
      auto r = remembered_.find(*it);
      if (*it == keep || r->second.bytes == 0) continue;
      remembered_bytes_ -= r->second.bytes;
      remembered_.erase(r);
      it = lru_.erase(it);
    }
  }
  void work() {
    for (;;) {
      std::packaged_task<xgrammar::CompiledGrammar()> task;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();  // an exception goes into the future
    }
  }

  int vocab_size_;
  std::vector<int32_t> stop_ids_;
  xgrammar::TokenizerInfo info_;
  xgrammar::GrammarCompiler compiler_;
  ReasoningTokens reasoning_;
  std::chrono::milliseconds test_delay_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<xgrammar::CompiledGrammar()>> queue_;
  std::unordered_map<std::string, Remembered> remembered_;  ///< by StructuredOutput::key()
  std::list<std::string> lru_;                              ///< remembered_'s keys, most recent first
  size_t remembered_bytes_ = 0;
  size_t remembered_cap_;
  /// PIE_TRACE_STRUCTURED: the trace of each compile_async, until processor() takes it.
  std::unordered_map<std::string, std::shared_ptr<CompileTrace>> traces_;
  bool stop_ = false;
  std::atomic<bool> prewarm_stop_{false};
  std::atomic<int> prewarmed_{0};
  std::thread prewarm_;
  std::vector<std::thread> workers_;  // last: started after every member above exists
};

}  // namespace pie::structured
