#pragma once
/// \file request.hpp
/// \brief Request and Sequence: the state the scheduler keeps per request and per sequence.
/// A request with n > 1 starts as ONE sequence (index 0) that prefills the prompt; the step that
/// samples its first tokens forks it into n sequences sharing the prompt's blocks.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "pie/kv/block_table.hpp"
#include "pie/sched/finish_reason.hpp"
#include "pie/sched/sampling_params.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::sched {

/// \brief Where a sequence is: queued, in the running batch, swapped to the host, or done.
enum class SeqState { Waiting, Running, Swapped, Finished };

struct Request;

/// \brief One generated stream: prompt + output tokens, its KV blocks, its state.
struct Sequence {
  SeqId id = 0;                    ///< unique over the scheduler's lifetime
  Request* request = nullptr;      ///< owner
  int index = 0;                   ///< 0..n-1 within its request
  std::vector<int32_t> tokens;     ///< prompt followed by output
  int num_prompt_tokens = 0;
  SeqState state = SeqState::Waiting;
  FinishReason finish = FinishReason::None;
  int32_t stop_token = -1;         ///< EOS / stop id that finished it (stays in tokens)
  int fanout = 1;                  ///< n while index 0 of an n > 1 request has not forked yet
  kv::BlockTable table;            ///< table.num_tokens = tokens whose KV is computed/scheduled
  int64_t last_step = 0;           ///< scheduler bookkeeping: the step that last scheduled it
  /// Asynchronous scheduling: plans scheduled but not yet updated that sample this sequence
  /// (0, 1 or 2): its output placeholders (vLLM's num_output_placeholders). A placeholder
  /// token counts as scheduled input for the next plan (num_uncomputed) although it is not in
  /// `tokens` yet.
  int pending = 0;
  int32_t pending_draw = -1;       ///< its draw in the newest plan that samples it (feeds the next)

  int num_tokens() const { return static_cast<int>(tokens.size()); }
  /// tokens plus the output placeholders of plans in flight: where the next plan's input ends.
  int num_tokens_ahead() const { return num_tokens() + (fanout == 1 ? pending : 0); }
  int num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  std::span<const int32_t> prompt() const { return {tokens.data(), size_t(num_prompt_tokens)}; }
  std::span<const int32_t> output() const {
    return {tokens.data() + num_prompt_tokens, size_t(num_output_tokens())};
  }
  /// Tokens still to be run through the model before the next sample, placeholders included.
  /// An n > 1 sequence waiting for its fork has none: its next step comes after the fork.
  int num_uncomputed() const {
    if (pending > 0 && fanout > 1) return 0;
    return num_tokens() + pending - table.num_tokens;
  }
  bool finished() const { return state == SeqState::Finished; }
};

/// \brief One add_request(): its parameters and its sequences.
struct Request {
  uint64_t id = 0;
  SamplingParams params;
  std::vector<int32_t> eos_token_ids;
  int num_prompt_tokens = 0;
  int cached_prompt_tokens = 0;    ///< prompt tokens served by the prefix cache at first admission
  bool admitted = false;           ///< scheduled at least once
  /// prompt_logprobs: prompt positions [0, this) already planned as logits rows (a recompute
  /// after preemption does not plan them again).
  int prompt_logprobs_next = 0;
  /// Whether the prompt must be computed rather than taken from the prefix cache.
  bool needs_prompt_rows() const { return params.prompt_logprobs && prompt_logprobs_next < num_prompt_tokens - 1; }
  int num_unfinished = 0;          ///< sequences (forked or still to fork) not finished
  std::vector<std::unique_ptr<Sequence>> seqs;  ///< 1 before the fork, n after
  bool finished() const { return num_unfinished == 0; }
};

}  // namespace pie::sched
