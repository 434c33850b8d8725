#pragma once
/// \file engine_service.hpp
/// \brief The engine loop on its own thread. HTTP handlers submit requests and read results from
/// per-request queues (request_stream.hpp); only this thread touches the Engine, which is not
/// thread-safe. Detokenization and stop strings run here too, so a stop-string match finishes
/// the sequence in the engine (freeing its KV blocks) before the next step. A cancelled stream
/// (client gone) is aborted at the next iteration, which frees its blocks at once.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/server/metrics.hpp"
#include "pie/server/protocol.hpp"
#include "pie/server/request_stream.hpp"
#include "pie/tokenizer/stop_strings.hpp"

namespace pie::server {

/// \brief Where the service is in its life.
enum class ServiceState { Loading, Ready, Failed, Stopping };

/// \brief What the HTTP layer needs to know about the loaded model (known once it is loaded).
struct ModelInfo {
  int max_model_len = 0;
  int vocab_size = 0;
  std::vector<int32_t> eos_ids;  ///< reported as stop_reason null, like vLLM
  SamplingDefaults defaults;     ///< per --generation-config
};

/// \brief The HTTP layer's view of the engine thread (type-erased over the Engine's template
/// arguments, so the routes are compiled once).
class GenerationService {
 public:
  virtual ~GenerationService() = default;
  /// Hands a request to the engine thread. Throws ApiError(503) unless Ready.
  virtual std::shared_ptr<RequestStream> submit(SubmitRequest req) = 0;
  /// Marks the stream cancelled and wakes the engine thread to abort it.
  virtual void cancel(const std::shared_ptr<RequestStream>& s) = 0;
  virtual ServiceState state() const = 0;
  /// Why the service is Failed: the load error, or the step that failed.
  virtual std::string load_error() const = 0;
  /// Whether the failure happened while serving (a step threw) rather than while loading.
  virtual bool engine_failed() const { return false; }
  virtual ModelInfo model_info() const = 0;
  virtual EngineGauges gauges() const = 0;
  /// Graceful shutdown, first half: refuse new requests (503) and let the running ones finish.
  virtual void begin_drain() {}
  /// Requests submitted and not yet finished by the engine thread.
  virtual int in_flight() const { return 0; }
};

/// \brief GenerationService over an `Engine` (add_request/step/abort/finish_sequence/stats) and
/// a `Detok` factory: `Detok(bool skip_special_tokens, prompt ids)` → object with
/// push(id) → complete UTF-8 text, flush().
template <class EngineT, class Detok>
class EngineService final : public GenerationService {
 public:
  using EngineFactory = std::function<std::unique_ptr<EngineT>()>;
  using DetokFactory = std::function<Detok(bool skip_special_tokens, std::span<const int32_t> prompt)>;
  using Describe = std::function<ModelInfo(const EngineT&)>;

  /// `make_engine` runs on the engine thread (loading can take long; the HTTP server answers
  /// 503 meanwhile); `describe` reads the ModelInfo off the loaded engine.
  EngineService(EngineFactory make_engine, Describe describe, DetokFactory make_detok, ServerMetrics& metrics)
      : make_engine_(std::move(make_engine)),
        describe_(std::move(describe)),
        make_detok_(std::move(make_detok)),
        metrics_(metrics) {
    thread_ = std::thread([this] { run(); });
  }
  ~EngineService() override { stop(); }

  std::shared_ptr<RequestStream> submit(SubmitRequest req) override {
    auto s = std::make_shared<RequestStream>();
    {
      std::lock_guard lk(mu_);
      if (state_ != ServiceState::Ready) throw error_for_status(503);
      inbox_.push_back({std::move(req), s});
      ++in_flight_;
    }
    cv_.notify_one();
    return s;
  }

  void cancel(const std::shared_ptr<RequestStream>& s) override {
    if (!s || s->finished()) return;
    {
      std::lock_guard lk(mu_);
      s->cancelled = true;
      cancels_ = true;
    }
    cv_.notify_one();
  }

  ServiceState state() const override {
    std::lock_guard lk(mu_);
    return state_;
  }
  std::string load_error() const override {
    std::lock_guard lk(mu_);
    return load_error_;
  }
  ModelInfo model_info() const override {
    std::lock_guard lk(mu_);
    return info_;
  }
  EngineGauges gauges() const override {
    std::lock_guard lk(mu_);
    return gauges_;
  }

  bool engine_failed() const override {
    std::lock_guard lk(mu_);
    return engine_failed_;
  }

  /// Test seam: called on the engine thread before every step with the step's number (1, 2, …);
  /// what it throws fails that step exactly as a CUDA error or out-of-memory in Engine::step()
  /// would. Set before the first request (`pie serve` sets it only from the test-only
  /// PIE_TEST_FAIL_STEP environment variable).
  void set_before_step(std::function<void(uint64_t)> f) {
    std::lock_guard lk(mu_);
    before_step_ = std::move(f);
  }

  void begin_drain() override {
    std::lock_guard lk(mu_);
    if (state_ == ServiceState::Ready || state_ == ServiceState::Loading) state_ = ServiceState::Stopping;
  }
  int in_flight() const override { return in_flight_.load(); }

  /// Blocks until loading ends; true when Ready.
  bool wait_loaded() {
    std::unique_lock lk(mu_);
    loaded_cv_.wait(lk, [&] { return state_ != ServiceState::Loading; });
    return state_ == ServiceState::Ready;
  }

  /// Stops accepting, aborts in-flight requests (their handlers get a final "abort" event) and
  /// joins the engine thread. Idempotent.
  void stop() {
    {
      std::lock_guard lk(mu_);
      if (state_ != ServiceState::Failed) state_ = ServiceState::Stopping;
      stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

 private:
  struct Pending {
    SubmitRequest req;
    std::shared_ptr<RequestStream> stream;
  };
  struct Seq {
    Detok detok;
    StopStringMatcher stop;
    bool finished = false;
    Clock::time_point last_token;
  };
  struct Live {
    std::shared_ptr<RequestStream> stream;
    std::vector<Seq> seqs;
    int unfinished = 0;
    Clock::time_point arrival;
    Clock::time_point scheduled;    ///< start of the step that first produced output
    Clock::time_point first_token;  ///< end of that step
    Clock::time_point last_token;
    bool first_output = false;
    int prompt_tokens = 0;
    int64_t generated = 0;  ///< tokens of all its sequences
    int max_tokens = 0;
    int n = 1;
  };

  void run() {
    try {
      auto e = make_engine_();
      ModelInfo info = describe_(*e);
      std::lock_guard lk(mu_);
      engine_ = std::move(e);
      info_ = std::move(info);
      metrics_.set_max_model_len(info_.max_model_len);
      if (state_ == ServiceState::Loading) state_ = ServiceState::Ready;
    } catch (const std::exception& ex) {
      std::lock_guard lk(mu_);
      state_ = ServiceState::Failed;
      load_error_ = ex.what();
    }
    loaded_cv_.notify_all();
    if (!engine_) return;
    update_gauges();
    for (;;) {
      std::vector<Pending> fresh;
      bool cancels = false, stopping = false;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || cancels_ || !inbox_.empty() || engine_->has_unfinished(); });
        fresh.swap(inbox_);
        cancels = std::exchange(cancels_, false);
        stopping = stopping_;
      }
      if (stopping) {
        for (auto& p : fresh) finish_unstarted(p.stream);
        abort_all();
        update_gauges();
        return;
      }
      try {
        if (cancels) abort_cancelled();
        for (auto& p : fresh) add(std::move(p));
        if (engine_->has_unfinished()) {
          ++steps_;
          if (before_step_) before_step_(steps_);
          const auto t0 = Clock::now();
          auto outs = engine_->step();
          const auto t1 = Clock::now();
          uint64_t step_tokens = 0;
          for (auto& o : outs) step_tokens += dispatch(o, t0, t1);
          // Tokens the step computed, as seen from its outputs: sampled tokens, plus a prompt's
          // uncached tokens in the step that first samples for it (under chunked prefill the
          // earlier chunks are counted there too).
          if (step_tokens > 0) metrics_.iteration_tokens.observe(static_cast<double>(step_tokens));
          if (outs.empty()) {
            // Nothing sampled (a prefill chunk, or nothing could be scheduled): don't spin hot.
            std::unique_lock lk(mu_);
            cv_.wait_for(lk, std::chrono::milliseconds(1), [&] { return stopping_ || cancels_ || !inbox_.empty(); });
          }
        }
        update_gauges();
      } catch (const std::exception& ex) {
        // The engine's state is unknown after a failed step: fail everything and stop serving
        // (the program exits non-zero so a supervisor restarts it, as vLLM does).
        fail_all(fresh, std::string("engine step failed: ") + ex.what());
        return;
      }
    }
  }

  void fail_all(std::vector<Pending>& fresh, const std::string& why) {
    {
      std::lock_guard lk(mu_);
      state_ = ServiceState::Failed;
      engine_failed_ = true;
      load_error_ = why;
      for (auto& p : inbox_) fresh.push_back(std::move(p));
      inbox_.clear();
    }
    const ApiError err(500, why, {}, "server_error", "internal_error");
    auto fail = [&](const std::shared_ptr<RequestStream>& s) {
      if (!s || s->finished()) return;  // null: moved into live_ by add() before the step threw
      StreamEvent ev;
      ev.finished = true;
      ev.error = err;
      push_final(*s, std::move(ev));
    };
    for (auto& p : fresh) fail(p.stream);
    for (auto& [id, live] : live_) fail(live.stream);
    live_.clear();
  }

  void add(Pending p) {
    if (p.stream->cancelled) return finish_unstarted(p.stream);
    const int n = p.req.params.n;
    uint64_t id = 0;
    try {
      id = engine_->add_request(p.req.prompt, p.req.params);
    } catch (const pie::Error& e) {
      StreamEvent ev;
      ev.finished = true;
      ev.error = invalid_param(detail_field(e.what()), e.what());
      push_final(*p.stream, std::move(ev));
      return;
    }
    Live live;
    live.stream = std::move(p.stream);
    live.arrival = p.req.arrival;
    live.unfinished = n;
    live.n = n;
    live.max_tokens = p.req.params.max_tokens;
    live.prompt_tokens = static_cast<int>(p.req.prompt.size());
    live.seqs.reserve(n);
    auto stops = p.req.stop_set ? p.req.stop_set : std::make_shared<const StopStringSet>(p.req.stop);
    for (int i = 0; i < n; ++i)
      live.seqs.push_back({make_detok_(p.req.skip_special_tokens, p.req.prompt),
                           StopStringMatcher(stops, p.req.include_stop_str_in_output),
                           false,
                           {}});
    live_.emplace(id, std::move(live));
  }

  // The leading identifier of an engine message names the field (e.g. "max_tokens must ...").
  static std::string detail_field(const std::string& m) {
    size_t n = 0;
    while (n < m.size() && ((m[n] >= 'a' && m[n] <= 'z') || m[n] == '_')) ++n;
    return m.substr(0, n);
  }

  void finish_unstarted(const std::shared_ptr<RequestStream>& s) {
    StreamEvent ev;
    ev.finished = true;
    ev.error = error_for_status(503);
    push_final(*s, std::move(ev));
  }

  void abort_cancelled() {
    for (auto it = live_.begin(); it != live_.end();) {
      if (it->second.stream->cancelled) {
        engine_->abort(it->first);
        finish_aborted(it->second);
        it = live_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void abort_all() {
    for (auto& [id, live] : live_) {
      engine_->abort(id);
      finish_aborted(live);
    }
    live_.clear();
  }

  void finish_aborted(Live& live) {
    StreamEvent ev;
    ev.finished = true;
    for (size_t i = 0; i < live.seqs.size(); ++i) {
      if (live.seqs[i].finished) continue;
      SeqDelta d;
      d.index = static_cast<int>(i);
      d.finish = sched::FinishReason::Abort;
      ev.seqs.push_back(std::move(d));
    }
    metrics_.requests_finished[ServerMetrics::kAbort]++;
    observe_finished(live, Clock::now());
    push_final(*live.stream, std::move(ev));
  }

  /// Pushes a request's last event and counts it out of in_flight().
  void push_final(RequestStream& s, StreamEvent ev) {
    ev.finished = true;
    s.push(std::move(ev));
    --in_flight_;
  }

  /// The per-request histograms, once a request is over (vLLM observes them at finish).
  void observe_finished(const Live& live, Clock::time_point now) {
    metrics_.e2e_request_latency.observe(seconds(now - live.arrival));
    metrics_.request_prompt_tokens.observe(live.prompt_tokens);
    metrics_.request_generation_tokens.observe(static_cast<double>(live.generated));
    metrics_.request_params_n.observe(live.n);
    metrics_.request_params_max_tokens.observe(live.max_tokens);
    if (!live.first_output) return;  // never scheduled: no phase times
    metrics_.request_queue_time.observe(seconds(live.scheduled - live.arrival));
    metrics_.request_prefill_time.observe(seconds(live.first_token - live.scheduled));
    metrics_.request_decode_time.observe(seconds(live.last_token - live.first_token));
    metrics_.request_inference_time.observe(seconds(live.last_token - live.scheduled));
  }

  /// Hands one request's step output to its stream; returns the tokens it computed this step.
  uint64_t dispatch(const RequestOutput& out, Clock::time_point step_start, Clock::time_point now) {
    auto it = live_.find(out.request_id);
    if (it == live_.end()) return 0;  // aborted or finished by a stop string earlier
    uint64_t step_tokens = 0;
    Live& live = it->second;
    StreamEvent ev;
    ev.prompt_tokens = out.prompt_tokens;
    ev.cached_prompt_tokens = out.cached_prompt_tokens;
    ev.prompt_logprobs = out.prompt_logprobs;
    if (!live.first_output) {
      live.first_output = true;
      metrics_.prompt_tokens += static_cast<uint64_t>(out.prompt_tokens);
      metrics_.time_to_first_token.observe(seconds(now - live.arrival));
      live.scheduled = step_start;
      live.first_token = now;
      step_tokens += static_cast<uint64_t>(std::max(0, out.prompt_tokens - out.cached_prompt_tokens));
    }
    live.last_token = now;
    for (const auto& so : out.seqs) {
      if (so.index < 0 || so.index >= static_cast<int>(live.seqs.size())) continue;
      Seq& seq = live.seqs[so.index];
      if (seq.finished) continue;
      SeqDelta d;
      d.index = so.index;
      for (size_t k = 0; k < so.new_tokens.size() && !seq.stop.matched(); ++k) {
        d.tokens.push_back(so.new_tokens[k]);
        if (k < so.logprobs.size()) d.logprobs.push_back(so.logprobs[k]);
        d.text += seq.stop.push(seq.detok.push(so.new_tokens[k]));
      }
      step_tokens += so.new_tokens.size();
      if (!d.tokens.empty()) {
        metrics_.generation_tokens += d.tokens.size();
        live.generated += static_cast<int64_t>(d.tokens.size());
        if (seq.last_token != Clock::time_point{}) {
          const double itl = seconds(now - seq.last_token) / static_cast<double>(d.tokens.size());
          metrics_.inter_token_latency.observe(itl);
          metrics_.time_per_output_token.observe(itl);
        }
        seq.last_token = now;
      }
      if (seq.stop.matched()) {
        d.finish = sched::FinishReason::Stop;
        d.stop_string = seq.stop.matched_string();
        if (so.finish == sched::FinishReason::None) engine_->finish_sequence(out.request_id, so.index);
      } else if (so.finish != sched::FinishReason::None) {
        d.text += seq.stop.push(seq.detok.flush());
        d.text += seq.stop.flush();
        d.finish = seq.stop.matched() ? sched::FinishReason::Stop : so.finish;
        if (seq.stop.matched())
          d.stop_string = seq.stop.matched_string();
        else
          d.stop_token = so.stop_token;
      }
      if (d.finish != sched::FinishReason::None) {
        seq.finished = true;
        --live.unfinished;
        const int r = d.finish == sched::FinishReason::Stop     ? ServerMetrics::kStop
                      : d.finish == sched::FinishReason::Length ? ServerMetrics::kLength
                                                                : ServerMetrics::kAbort;
        if (live.unfinished == 0) metrics_.requests_finished[r]++;
      }
      ev.seqs.push_back(std::move(d));
    }
    const bool done = live.unfinished == 0 || out.finished;
    if (done) {
      // The engine may end a request without a per-sequence finish (e.g. aborted internally).
      for (size_t i = 0; i < live.seqs.size(); ++i)
        if (!live.seqs[i].finished) {
          SeqDelta d;
          d.index = static_cast<int>(i);
          d.text = live.seqs[i].stop.flush();
          d.finish = sched::FinishReason::Abort;
          ev.seqs.push_back(std::move(d));
        }
      ev.finished = true;
      observe_finished(live, now);
    }
    if (done)
      push_final(*live.stream, std::move(ev));
    else
      live.stream->push(std::move(ev));
    if (done) live_.erase(it);
    return step_tokens;
  }

  void update_gauges() {
    const auto s = engine_->stats();
    std::lock_guard lk(mu_);
    gauges_.num_running = s.num_running;
    gauges_.num_waiting = s.num_waiting;
    gauges_.kv_usage = s.kv_usage;
    gauges_.num_swapped = s.num_swapped;
    gauges_.num_preemptions = s.num_preemptions;
    gauges_.num_kv_blocks = s.num_kv_blocks;
    gauges_.prefix_cache_queries = s.prefix_cache_queries;
    gauges_.prefix_cache_hits = s.prefix_cache_hits;
  }

  static double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

  EngineFactory make_engine_;
  Describe describe_;
  DetokFactory make_detok_;
  ServerMetrics& metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_, loaded_cv_;
  ServiceState state_ = ServiceState::Loading;
  std::string load_error_;
  ModelInfo info_;
  EngineGauges gauges_;
  std::vector<Pending> inbox_;
  bool cancels_ = false;
  bool stopping_ = false;
  bool engine_failed_ = false;
  std::function<void(uint64_t)> before_step_;
  std::atomic<int> in_flight_{0};  // submitted, final event not yet pushed

  // Engine-thread only.
  std::unique_ptr<EngineT> engine_;
  std::unordered_map<uint64_t, Live> live_;
  uint64_t steps_ = 0;
  std::thread thread_;
};

}  // namespace pie::server
