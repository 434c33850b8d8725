#pragma once
/// \file grammar_processor.hpp
/// \brief GrammarProcessor: the TokenMaskProcessor that enforces one request's compiled
/// grammar. Each sequence of the request has its own XGrammar matcher; before each draw the
/// matcher is advanced over the tokens drawn since the last one and fills the token bitmask of
/// what may come next (stop tokens only once the grammar is complete).
///
/// The grammar may still be compiling when the processor is made (Compiler::processor starts the
/// compile on its own threads and returns at once): ready() says whether it is done, and the
/// first fill_mask() waits for it. A compile that failed makes every draw allow only the stop
/// tokens (the server answers such a request with the compile's 400 and cancels it).
///
/// Reasoning (StructuredOutput::after_reasoning): the output may first open `<think>` (that
/// token is allowed besides the grammar's at the first draw); then it is free until `</think>`
/// and the grammar starts after it — the same reading of a turn as tokenizer/reasoning.hpp.
/// Needs XGrammar (pie::structured).
#include <xgrammar/xgrammar.h>

#include <algorithm>
#include <cstdint>
#include <chrono>
#include <exception>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "pie/sched/logits_processor.hpp"
#include "pie/structured/compile_trace.hpp"

namespace pie::structured {

/// \brief The token ids that open and close a reasoning block (the grammar waits for the close).
struct ReasoningTokens {
  int32_t open = -1;
  int32_t close = -1;
  bool enabled() const { return open >= 0 && close >= 0; }
};

/// \brief Enforces a compiled grammar on every sequence of one request (see file comment).
class GrammarProcessor final : public sched::TokenMaskProcessor {
 public:
  /// A grammar being compiled; `stop_ids` are what a draw may take once it is complete (or if
  /// its compile failed).
  /// `trace` (PIE_TRACE_STRUCTURED): the compile's time points, completed and printed at the
  /// first mask.
  GrammarProcessor(std::shared_future<xgrammar::CompiledGrammar> grammar, int vocab_size,
                   std::vector<int32_t> stop_ids, ReasoningTokens reasoning = {},
                   std::shared_ptr<CompileTrace> trace = nullptr)
      : grammar_(std::move(grammar)),
        vocab_size_(vocab_size),
        stop_ids_(std::move(stop_ids)),
        reasoning_(reasoning),
        trace_(std::move(trace)) {}
  /// A compiled grammar.
  GrammarProcessor(xgrammar::CompiledGrammar grammar, int vocab_size, ReasoningTokens reasoning = {})
      : GrammarProcessor(ready_future(grammar), vocab_size, grammar.GetTokenizerInfo().GetStopTokenIds(), reasoning) {}

  bool ready() const override { return grammar_.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  /// Waits for the compile; rethrows its error (pie::Error naming a bad schema, regex or grammar).
  void wait() const { grammar_.get(); }

  bool fill_mask(int seq_index, std::span<const int32_t> prompt, std::span<const int32_t> output,
                 std::span<int32_t> mask) override {
    Seq& s = seq(seq_index);
    size_t start = 0;
    bool may_open = false;
    if (reasoning_.enabled() && !closed_in_prompt(prompt)) {
      if (output.empty()) {
        may_open = true;
      } else if (output[0] == reasoning_.open) {
        // Free text until the block closes; the grammar starts right after `</think>`.
        while (s.scan < output.size() && output[s.scan] != reasoning_.close) ++s.scan;
        if (s.scan == output.size()) return false;
        start = s.scan + 1;
      }
    }
    if (!s.matcher) {  // the first masked draw of this sequence: wait for the grammar
      if (trace_) trace_->draw_asked = CompileTrace::Clock::now();
      try {
        s.matcher.emplace(grammar_.get());
      } catch (const std::exception&) {
        s.broken = true;  // the compile failed: stop tokens only
      }
    }
    // An XGrammar error must not fail the engine step (every request would get a 500): the
    // sequence is treated as broken and ends at its next draw.
    try {
      for (size_t i = start + s.accepted; i < output.size(); ++i, ++s.accepted)
        if (!s.broken && (s.matcher->IsTerminated() || !s.matcher->AcceptToken(output[i]))) s.broken = true;
    } catch (const std::exception&) {
      s.broken = true;
    }
    int64_t shape[1] = {static_cast<int64_t>(mask.size())};
    DLTensor t{};
    t.data = mask.data();
    t.device = DLDevice{kDLCPU, 0};
    t.ndim = 1;
    t.dtype = DLDataType{kDLInt, 32, 1};
    t.shape = shape;
    if (s.broken || !s.matcher || s.matcher->IsTerminated()) {
      // Complete and past its stop token (ignore_eos keeps a sequence going), or a token the
      // grammar rejected got through (only a caller bypassing the mask can do that): allow
      // nothing but the stop tokens. XGrammar refuses to fill a mask after the stop token.
      std::fill(mask.begin(), mask.end(), 0);
      for (int32_t id : stop_ids_)
        if (id >= 0 && static_cast<size_t>(id / 32) < mask.size()) mask[id / 32] |= static_cast<int32_t>(1u << (id % 32));
      return true;
    }
    if (trace_ && trace_->draw_asked != CompileTrace::Clock::time_point{})
      trace_->grammar_waited = std::max(trace_->compiled, trace_->draw_asked);
    try {
      s.matcher->FillNextTokenBitmask(&t, 0);
    } catch (const std::exception&) {
      s.broken = true;
      return fill_mask(seq_index, prompt, output, mask);  // the stop-tokens-only mask above
    }
    if (trace_ && trace_->draw_asked != CompileTrace::Clock::time_point{}) {  // once: the first mask
      trace_->first_mask = CompileTrace::Clock::now();
      std::cerr << trace_->line() << std::endl;
      trace_.reset();
    }
    if (may_open && reasoning_.open / 32 < static_cast<int32_t>(mask.size()))
      mask[reasoning_.open / 32] |= static_cast<int32_t>(1u << (reasoning_.open % 32));
    return true;
  }

  int vocab_size() const { return vocab_size_; }

 private:
  /// The prompt ends with a closed reasoning block (`</think>` among its last 4 tokens).
  bool closed_in_prompt(std::span<const int32_t> prompt) const {
    const size_t from = prompt.size() > 4 ? prompt.size() - 4 : 0;
    for (size_t i = from; i < prompt.size(); ++i)
      if (prompt[i] == reasoning_.close) return true;
    return false;
  }

  static std::shared_future<xgrammar::CompiledGrammar> ready_future(const xgrammar::CompiledGrammar& g) {
    std::promise<xgrammar::CompiledGrammar> p;
    p.set_value(g);
    return p.get_future().share();
  }

  struct Seq {
    std::optional<xgrammar::GrammarMatcher> matcher;  ///< made at the first draw (the grammar ready)
    size_t accepted = 0;  ///< output tokens after the grammar's start fed to the matcher
    size_t scan = 0;      ///< reasoning: output tokens searched for the closing tag
    bool broken = false;
  };
  Seq& seq(int index) {
    auto it = seqs_.find(index);
    if (it == seqs_.end()) it = seqs_.emplace(index, Seq{}).first;
    return it->second;
  }

  std::shared_future<xgrammar::CompiledGrammar> grammar_;
  int vocab_size_;
  std::vector<int32_t> stop_ids_;
  ReasoningTokens reasoning_;
  std::shared_ptr<CompileTrace> trace_;  ///< until the first mask (PIE_TRACE_STRUCTURED)
  std::unordered_map<int, Seq> seqs_;
};

}  // namespace pie::structured
