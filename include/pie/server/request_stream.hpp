#pragma once
/// \file request_stream.hpp
/// \brief The hand-over between an HTTP thread and the engine thread: what a handler submits
/// (SubmitRequest), what the engine thread sends back (StreamEvent), and the per-request queue
/// between them (RequestStream). The engine thread never blocks on a client: it only appends.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "pie/engine/request_output.hpp"
#include "pie/sched/finish_reason.hpp"
#include "pie/sched/sampling_params.hpp"
#include "pie/server/errors.hpp"
#include "pie/tokenizer/stop_strings.hpp"

namespace pie::server {
// The text side's stop-string matcher (tokenizer/stop_strings.hpp), shared with pie::LLM.
using tokenizer::kMaxStopStringBytes;
using tokenizer::kMaxStopStrings;
using tokenizer::StopStringMatcher;
using tokenizer::StopStringSet;
}  // namespace pie::server

namespace pie::server {

using Clock = std::chrono::steady_clock;

/// \brief One engine request as an HTTP handler hands it to the engine thread.
struct SubmitRequest {
  std::vector<int32_t> prompt;
  sched::SamplingParams params;
  std::vector<std::string> stop;  ///< stop strings, matched on detokenized text
  /// The automaton of `stop`, built by the handler so the engine thread does not; null → built
  /// from `stop` on the engine thread.
  std::shared_ptr<const StopStringSet> stop_set;
  bool include_stop_str_in_output = false;
  bool skip_special_tokens = true;
  Clock::time_point arrival = Clock::now();
};

/// \brief What one sequence produced since the last event.
struct SeqDelta {
  int index = 0;
  std::vector<int32_t> tokens;         ///< new tokens (cut after a stop-string match)
  std::vector<TokenLogprob> logprobs;  ///< parallel to tokens when logprobs were asked
  std::string text;                    ///< new text that is safe to send
  sched::FinishReason finish = sched::FinishReason::None;
  std::string stop_string;  ///< the stop string that matched, if one did
  int32_t stop_token = -1;  ///< the stop/EOS token that finished it, if one did
};

/// \brief One message from the engine thread to the handler of a request.
struct StreamEvent {
  std::vector<SeqDelta> seqs;
  int32_t prompt_tokens = 0;
  int32_t cached_prompt_tokens = 0;
  std::vector<PromptLogprob> prompt_logprobs;  ///< prompt_logprobs, in the first event
  bool finished = false;          ///< the last event of this request
  std::optional<ApiError> error;  ///< the engine refused the request (then finished)
};

/// \brief Per-request queue: the engine thread pushes, the handler pops. Thread-safe.
class RequestStream {
 public:
  void push(StreamEvent ev) {
    {
      std::lock_guard lk(mu_);
      if (ev.finished) finished_ = true;
      events_.push_back(std::move(ev));
    }
    cv_.notify_all();
  }

  /// Moves every queued event into `out`, waiting up to `timeout` for the first one.
  /// Returns false when nothing arrived in time.
  bool pop_all(std::vector<StreamEvent>& out, std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    if (!cv_.wait_for(lk, timeout, [&] { return !events_.empty(); })) return false;
    while (!events_.empty()) {
      out.push_back(std::move(events_.front()));
      events_.pop_front();
    }
    return true;
  }

  /// True once the final event has been pushed (it may not have been popped yet).
  bool finished() const {
    std::lock_guard lk(mu_);
    return finished_;
  }

  /// Set by the handler when it stops listening (client gone): the engine thread aborts.
  std::atomic<bool> cancelled{false};

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> events_;
  bool finished_ = false;
};

}  // namespace pie::server
