#pragma once
/// \file scheduler.hpp
/// \brief Scheduler: continuous batching over a paged KV cache (vLLM's knobs).
///
/// One engine iteration is `plan = schedule()`, run the model over the plan, sample
/// `plan.num_sampled_tokens()` tokens, `update(plan, tokens)`. schedule() and update() alternate
/// (a non-empty plan must be updated before the next schedule(); with async_scheduling, before
/// the one after: see below); abort() and finish_sequence() may come at any point between calls.
///
/// schedule():
///  1. running decodes (one token each), in admission order. When a block is missing the most
///     recently admitted running sequence not yet scheduled this step is preempted (possibly
///     the one asking). Recompute frees its blocks and requeues it at the front of the waiting
///     queue (prompt + output recomputed later, from the prefix cache where still there); swap
///     moves its blocks to the host pool (plan.swap_out), falling back to recompute when the host
///     pool is full.
///  2. running sequences in the middle of a chunked prefill, preempting the same way.
///  3. swapped sequences, FIFO (not in a step that swapped out: plan.swap_in runs before
///     plan.swap_out, so a block freed by a swap-out must not be a swap-in target).
///  4. waiting sequences, FIFO: prefix-cache lookup, then the whole remaining prompt or (with
///     chunked prefill) the chunk that fits the token budget. New admissions keep 1% of the pool
///     free (vLLM's watermark) unless nothing runs. While anything runs, a request whose logits
///     processor is not ready (a grammar compiling) is passed over, not waited for.
///  The plan lists decodes first, then prefill chunks. Full blocks are registered in the prefix
///  cache when scheduled: a layer writes the step's K/V before its attention reads them.
///
/// update(): appends each sampled token (forking n > 1 requests after their prompt), then
/// finishes a sequence on EOS (unless ignore_eos; not before min_tokens), a stop_token_ids
/// entry (not before min_tokens), max_tokens, or max_model_len tokens in all (reason Length).
///
/// Requests stay readable (find_request, tokens) until the next schedule() after they finished
/// (with a plan in flight, until the schedule() after that plan's update()).
///
/// Asynchronous scheduling (SchedulerConfig::async_scheduling, vLLM's): schedule() may run
/// once while the last plan awaits its update(), so at most two plans are outstanding and
/// update() applies the older. A sequence the outstanding plan samples has an output
/// placeholder (Sequence::pending): the new plan schedules it as a decode whose input row is a
/// feed row (StepPlan::feed_rows) that the runner fills with the outstanding plan's draw. Its
/// full blocks are registered only once their tokens are known. A sequence with a placeholder
/// is not taken back from the waiting or swapped queues (it would recompute without its
/// pending token), and an n > 1 sequence waiting for its fork is neither scheduled nor
/// preempted; both wait one step. update() may finish a sequence that the newer plan already
/// scheduled: its blocks are freed at once and the newer plan's update() skips it, as for an
/// abort.
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/kv/block_manager.hpp"
#include "pie/sched/request.hpp"
#include "pie/sched/scheduler_config.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::sched {

/// \brief What update() changed for one sequence.
struct SequenceUpdate {
  uint64_t request_id = 0;
  int index = 0;                              ///< sequence index within the request
  int32_t token = 0;                          ///< the token appended
  FinishReason finish = FinishReason::None;   ///< None: still running
  int32_t stop_token = -1;                    ///< EOS / stop id that finished it
  bool request_finished = false;              ///< every sequence of the request has finished
};

/// \brief Continuous-batching scheduler over device and host KV block pools.
class Scheduler {
 public:
  /// Throws pie::Error when the config is invalid or one max_model_len sequence cannot fit
  /// the device pool.
  Scheduler(SchedulerConfig config, int num_device_blocks, int block_size, int num_host_blocks)
      : cfg_(config), bs_(block_size),
        bm_(num_device_blocks, num_host_blocks, block_size, config.enable_prefix_caching) {
    cfg_.validate();
    PIE_CHECK(int64_t{num_device_blocks} * block_size >= cfg_.max_model_len, "The model's max seq len (",
              cfg_.max_model_len, ") is larger than the maximum number of tokens that can be stored in KV cache (",
              int64_t{num_device_blocks} * block_size, "). Try increasing gpu_memory_utilization or decreasing max_model_len.");
    watermark_ = num_device_blocks / 100;
  }

  const SchedulerConfig& config() const { return cfg_; }
  int block_size() const { return bs_; }

  /// Queues a request. Throws pie::Error for an empty prompt, a prompt longer than
  /// max_model_len, invalid params, or a request id already in use.
  void add_request(uint64_t request_id, std::vector<int32_t> prompt, SamplingParams params,
                   std::vector<int32_t> eos_token_ids) {
    PIE_CHECK(!prompt.empty(), "The prompt of request ", request_id, " is empty");
    PIE_CHECK(static_cast<int>(prompt.size()) <= cfg_.max_model_len, "The decoder prompt (length ",
              prompt.size(), ") is longer than the maximum model length of ", cfg_.max_model_len,
              ". Make sure that `max_model_len` is no smaller than the number of text tokens.");
    params.validate();
    PIE_CHECK(params.n <= cfg_.max_num_seqs, "n (", params.n, ") must not exceed max_num_seqs (",
              cfg_.max_num_seqs, ")");
    PIE_CHECK(!requests_.count(request_id), "request id ", request_id, " is already in use");
    auto req = std::make_unique<Request>();
    req->id = request_id;
    req->num_prompt_tokens = static_cast<int>(prompt.size());
    req->params = std::move(params);
    req->eos_token_ids = std::move(eos_token_ids);
    req->num_unfinished = req->params.n;
    Sequence* s = new_sequence(*req, 0);
    s->tokens = std::move(prompt);
    s->num_prompt_tokens = req->num_prompt_tokens;
    s->fanout = req->params.n;
    waiting_.push_back(s);
    requests_.emplace(request_id, std::move(req));
    ++num_unfinished_;
  }

  /// Plans the next step (see the file comment). An empty plan means nothing can run.
  StepPlan schedule() {
    StepPlan plan;
    schedule(plan);
    return plan;
  }
  /// The same, into `plan`, reusing its buffers: a loop that keeps one StepPlan allocates
  /// nothing per step once the buffers have grown.
  void schedule(StepPlan& plan) {
    PIE_CHECK(outstanding_.empty() || (cfg_.async_scheduling && outstanding_.size() == 1),
              cfg_.async_scheduling ? "Scheduler: schedule() called with two plans awaiting update()"
                                    : "Scheduler: schedule() called twice without update()");
    retire();
    plan.swap_in.clear();  // every other array is resized and overwritten by emit()
    plan.swap_out.clear();
    plan.copy_blocks.clear();
    decodes_.clear();
    prefills_.clear();
    ++step_;
    budget_ = cfg_.max_num_batched_tokens;
    pages_ = samples_ = tokens_ = 0;
    bool swapped_out = false;

    // 1. decodes
    for (size_t i = 0; i < running_.size() && budget_ > 0; ++i) {
      Sequence* s = running_[i];
      if (s->num_uncomputed() != 1) continue;  // a placeholder counts: its token is the feed row
      if (!make_room(s, 1, plan, swapped_out)) break;  // s itself was preempted: it was the newest
      take(s, 1, plan);
    }
    // Decode-first: with decodes in the step, prefill work is capped so that new arrivals
    // lengthen the step (every running stream's inter-token latency) by a bounded amount.
    if (!decodes_.empty())
      if (const int cap = cfg_.prefill_budget_with_decodes(static_cast<int>(decodes_.size())); cap > 0)
        budget_ = std::min(budget_, cap);
    // 2. chunked prefills already running
    for (size_t i = 0; i < running_.size() && budget_ > 0; ++i) {
      Sequence* s = running_[i];
      if (s->last_step == step_ || s->num_uncomputed() <= 1) continue;
      int n = chunk(s);
      if (n == 0) continue;
      if (!make_room(s, n, plan, swapped_out)) break;
      take(s, n, plan);
    }
    // 3. swapped
    while (!swapped_out && !swapped_.empty() && budget_ > 0) {
      Sequence* s = swapped_.front();
      if (s->pending > 0) break;  // preempted with a token in flight: back after its update()
      if (seats_ + s->fanout > cfg_.max_num_seqs) break;
      int n = chunk(s);
      int full = bm_.blocks_for(s->table.num_tokens + n);
      if (n == 0 || full > bm_.num_free()) break;
      swapped_.pop_front();
      bm_.swap_in(s->table, s->tokens, plan.swap_in);
      admit(s);
      take(s, n, plan);
    }
    // 4. waiting. A request whose logits processor is not ready (its grammar still compiling)
    // waits while other sequences run, so their steps never wait for a compile (vLLM's
    // WAITING_FOR_FSM); with nothing running the first such request starts at once and its
    // prefill overlaps the compile (the mask is needed only at its first draw, where the step
    // waits for the rest). Once it runs, the others wait again: a burst of new grammars on an
    // idle engine waits for one compile, not for all of them.
    for (size_t w = 0; swapped_.empty() && w < waiting_.size() && budget_ > 0;) {
      Sequence* s = waiting_[w];
      if (const auto& lp = s->request->params.logits_processor; !running_.empty() && lp && !lp->ready()) {
        ++w;
        continue;
      }
      if (s->pending > 0) break;  // preempted with a token in flight: back after its update()
      if (seats_ + s->fanout > cfg_.max_num_seqs) break;
      int cached = 0;
      // A request that wants prompt logprobs computes its prompt: no prefix-cache hits.
      if (s->table.blocks.empty() && !s->request->needs_prompt_rows())
        cached = bm_.match_prefix(s->table, s->tokens);
      int n = chunk(s);
      int need = bm_.blocks_to_append(s->table, n);
      int reserve = running_.empty() ? 0 : watermark_;
      if (n == 0 || bm_.num_free() - need < reserve) {
        bm_.free(s->table);  // give back the prefix-cache hits
        break;
      }
      waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(w));
      Request& r = *s->request;
      if (!r.admitted && s->index == 0) { r.admitted = true; r.cached_prompt_tokens = cached; }
      admit(s);
      take(s, n, plan);
    }
    bm_.end_step();
    emit(plan);
    if (!plan.empty()) {
      outstanding_.push_back({step_, std::move(plan_seqs_)});
      plan_seqs_ = std::move(spare_seqs_);  // an updated plan's vector: no allocation per step
    }
  }

  /// Applies the sampled tokens of `plan` (the last schedule()'s): plan.num_sampled_tokens()
  /// of them, laid out as StepPlan::sample_counts says. Returns one entry per appended token,
  /// in sample order. Sequences aborted since schedule() are skipped.
  std::vector<SequenceUpdate> update(const StepPlan& plan, std::span<const int32_t> sampled) {
    if (plan.empty()) return {};  // an empty plan is not outstanding: nothing to apply
    PIE_CHECK(!outstanding_.empty() && plan.num_seqs() == static_cast<int32_t>(outstanding_.front().seqs.size()),
              "Scheduler::update: the plan is not the oldest one schedule() returned");
    PIE_CHECK(static_cast<int32_t>(sampled.size()) == plan.num_sampled_tokens(), "Scheduler::update: ",
              sampled.size(), " sampled tokens for a plan that samples ", plan.num_sampled_tokens());
    Outstanding done = std::move(outstanding_.front());
    outstanding_.pop_front();
    const std::vector<Sequence*>& seqs = done.seqs;
    std::vector<SequenceUpdate> out;
    out.reserve(sampled.size());
    size_t off = 0;
    bool any_finished = false;
    for (size_t j = 0; j < plan.sample_seqs.size(); ++j) {
      Sequence* s = seqs[plan.sample_seqs[j]];
      int count = plan.draws_of(j);
      const int32_t* toks = sampled.data() + off;
      off += count;
      --s->pending;  // its placeholder becomes the token below
      if (s->finished()) continue;
      if (count > 1) fork(s, count);
      Request& r = *s->request;
      for (int k = 0; k < count; ++k) {
        Sequence* c = count > 1 ? r.seqs[k].get() : s;
        c->tokens.push_back(toks[k]);
        // A newer plan that already computes this token (a feed row) may have completed a block
        // whose hash had to wait for it; register it now, as the synchronous schedule would have.
        if (c->state == SeqState::Running) bm_.register_full_blocks(c->table, c->tokens);
        FinishReason why = check_stop(*c, toks[k]);
        if (why != FinishReason::None) {
          // A sequence preempted since this plan (asynchronous scheduling) sits in a queue.
          finish(c, why, c->state != SeqState::Running);
          c->stop_token = why == FinishReason::Stop ? toks[k] : -1;
          any_finished = true;
        }
        out.push_back({r.id, c->index, toks[k], why, c->stop_token, false});
      }
    }
    if (any_finished) {
      std::erase_if(running_, [](Sequence* s) { return s->finished(); });
      for (auto& u : out) u.request_finished = requests_.at(u.request_id)->finished();
    }
    spare_seqs_ = std::move(done.seqs);
    return out;
  }

  /// Finishes every sequence of the request (reason Abort) and frees its blocks. False when the
  /// request is unknown or already finished.
  bool abort(uint64_t request_id) {
    auto it = requests_.find(request_id);
    if (it == requests_.end() || it->second->finished()) return false;
    Request& r = *it->second;
    for (auto& s : r.seqs) finish(s.get(), FinishReason::Abort, true);
    return true;
  }

  /// Finishes one sequence (e.g. a stop string matched by the engine) and frees its blocks.
  /// Before an n > 1 request forks, index 0 stands for all n.
  void finish_sequence(uint64_t request_id, int index, FinishReason reason) {
    auto it = requests_.find(request_id);
    PIE_CHECK(it != requests_.end(), "finish_sequence: unknown request ", request_id);
    Request& r = *it->second;
    PIE_CHECK(index >= 0 && index < r.params.n, "finish_sequence: index ", index, " out of [0, ", r.params.n, ")");
    if (index >= static_cast<int>(r.seqs.size())) index = 0;
    finish(r.seqs[index].get(), reason, true);
  }

  // ---- accessors --------------------------------------------------------------------------------
  const Request* find_request(uint64_t request_id) const {
    auto it = requests_.find(request_id);
    return it == requests_.end() ? nullptr : it->second.get();
  }
  /// Prompt + output tokens of sequence `index` of a request (index 0 before the fork). The
  /// span is valid until the next update().
  std::span<const int32_t> tokens(uint64_t request_id, int index) const {
    const Request* r = find_request(request_id);
    PIE_CHECK(r != nullptr, "unknown request ", request_id);
    PIE_CHECK(index >= 0 && index < static_cast<int>(r->seqs.size()), "request ", request_id,
              " has no sequence ", index);
    return r->seqs[index]->tokens;
  }
  /// Sequence i of the last plan (i indexes plan.seq_ids; valid until the next schedule()).
  const Sequence& plan_sequence(int i) const { return *outstanding_.back().seqs[i]; }
  /// Plans scheduled and not yet updated (0, 1, or 2 under asynchronous scheduling).
  int num_outstanding() const { return static_cast<int>(outstanding_.size()); }

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_swapped() const { return static_cast<int>(swapped_.size()); }
  bool has_unfinished() const { return num_unfinished_ > 0; }
  int64_t num_preemptions() const { return num_preemptions_; }
  double kv_usage() const { return bm_.device().usage(); }
  int64_t prefix_cache_queries() const { return bm_.device().prefix_cache_queries(); }
  int64_t prefix_cache_hits() const { return bm_.device().prefix_cache_hits(); }
  const kv::BlockManager& block_manager() const { return bm_; }
  /// Calls f(const Sequence&) for every sequence not yet retired (tests, metrics).
  template <class F> void for_each_sequence(F&& f) const {
    for (auto& [id, r] : requests_)
      for (auto& s : r->seqs) f(static_cast<const Sequence&>(*s));
  }

 private:
  struct Entry { Sequence* s; int start; int n; };
  /// A plan awaiting update(): its step number and its sequences (plan.seq_ids order).
  struct Outstanding { int64_t step; std::vector<Sequence*> seqs; };

  Sequence* new_sequence(Request& r, int index) {
    r.seqs.push_back(std::make_unique<Sequence>());
    Sequence* s = r.seqs.back().get();
    s->id = next_seq_id_++;
    s->request = &r;
    s->index = index;
    return s;
  }
  /// Tokens of s's next piece that the budget allows (0: none).
  int chunk(const Sequence* s) const {
    int n = s->num_uncomputed();
    // vLLM v1 applies the threshold before the budget, with or without chunked prefill.
    if (cfg_.long_prefill_token_threshold > 0) n = std::min(n, cfg_.long_prefill_token_threshold);
    if (n <= budget_) return n;
    return cfg_.enable_chunked_prefill ? budget_ : 0;
  }
  void admit(Sequence* s) {
    s->state = SeqState::Running;
    running_.push_back(s);
    seats_ += s->fanout;
  }
  /// Preempts the newest unscheduled running sequences until s can append n tokens. False when
  /// s itself had to go.
  bool make_room(Sequence* s, int n, StepPlan& plan, bool& swapped_out) {
    while (bm_.blocks_to_append(s->table, n) > bm_.num_free()) {
      // Not an n > 1 sequence waiting for its fork (the update of a plan in flight forks it).
      auto it = std::find_if(running_.rbegin(), running_.rend(), [&](Sequence* v) {
        return v->last_step != step_ && !(v->pending > 0 && v->fanout > 1);
      });
      Sequence* victim = *it;  // s is unscheduled and not waiting for a fork, so there is one
      running_.erase(std::next(it).base());
      preempt(victim, plan, swapped_out);
      if (victim == s) return false;
    }
    return true;
  }
  void preempt(Sequence* v, StepPlan& plan, bool& swapped_out) {
    ++num_preemptions_;
    seats_ -= v->fanout;
    if (cfg_.preemption_mode == PreemptionMode::Swap && bm_.swap_out(v->table, plan.swap_out)) {
      v->state = SeqState::Swapped;
      swapped_.push_back(v);
      swapped_out = true;
    } else {
      bm_.free(v->table);
      v->state = SeqState::Waiting;
      waiting_.push_front(v);
    }
  }
  void take(Sequence* s, int n, StepPlan& plan) {
    int start = s->table.num_tokens;
    bm_.append(s->table, n, plan.copy_blocks);
    bm_.register_full_blocks(s->table, s->tokens);
    s->last_step = step_;
    budget_ -= n;
    tokens_ += n;
    pages_ += static_cast<int>(s->table.blocks.size());
    const int ahead = s->num_tokens_ahead();
    samples_ += start + n == ahead;
    (n == 1 && start + 1 == ahead ? decodes_ : prefills_).push_back({s, start, n});
  }
  /// Writes the scheduled entries into the plan: decodes first. Arrays are sized once and
  /// filled by index (this runs for every sequence of every step).
  void emit(StepPlan& p) {
    const int nseq = static_cast<int>(decodes_.size() + prefills_.size());
    const int ntok = tokens_;
    p.token_ids.resize(ntok); p.positions.resize(ntok); p.slot_mapping.resize(ntok);
    p.seq_ids.resize(nseq); p.query_lens.resize(nseq); p.context_lens.resize(nseq);
    p.cu_query_lens.resize(nseq + 1); p.kv_indptr.resize(nseq + 1); p.kv_last_page_len.resize(nseq);
    p.kv_indices.resize(pages_);
    p.sample_seqs.resize(samples_); p.logits_rows.resize(samples_); p.sample_counts.resize(samples_);
    p.num_decode_seqs = static_cast<int32_t>(decodes_.size());
    p.prompt_logprob_seqs.clear();
    p.prompt_logprob_positions.clear();
    p.prompt_logprob_tokens.clear();
    p.feed_rows.clear();
    p.feed_draws.clear();
    extra_rows_.clear();
    p.cu_query_lens[0] = p.kv_indptr[0] = 0;
    plan_seqs_.resize(nseq);
    int i = 0, row = 0, page = 0, j = 0, draw = 0;
    const int shift = std::countr_zero(unsigned(bs_));
    for (auto* list : {&decodes_, &prefills_}) {
      for (const Entry& e : *list) {
        const Sequence& s = *e.s;
        const int end = e.start + e.n;
        const int32_t* blocks = s.table.blocks.data();
        const int known = s.num_tokens();
        for (int t = e.start; t < end; ++t, ++row) {
          if (t >= known) {  // the placeholder of a plan in flight (one, a decode's input)
            p.token_ids[row] = StepPlan::kPlaceholderToken;
            p.feed_rows.push_back(row);
            p.feed_draws.push_back(s.pending_draw);
          } else {
            p.token_ids[row] = s.tokens[t];
          }
          p.positions[row] = t;
          p.slot_mapping[row] = (int64_t{blocks[t >> shift]} << shift) | (t & (bs_ - 1));
        }
        const int pages = static_cast<int>(s.table.blocks.size());  // exactly ⌈end / bs⌉
        std::copy_n(s.table.blocks.data(), pages, p.kv_indices.data() + page);
        page += pages;
        p.seq_ids[i] = s.id;
        p.query_lens[i] = e.n;
        p.context_lens[i] = end;
        p.cu_query_lens[i + 1] = row;
        p.kv_indptr[i + 1] = page;
        p.kv_last_page_len[i] = end - (pages - 1) * bs_;
        if (Request& r = *s.request; r.params.prompt_logprobs) {
          // Rows of prompt positions whose logits score the next prompt token.
          const int last = std::min(end, s.num_prompt_tokens - 1);
          for (int t = std::max(e.start, r.prompt_logprobs_next); t < last; ++t) {
            p.prompt_logprob_seqs.push_back(i);
            p.prompt_logprob_positions.push_back(t);
            p.prompt_logprob_tokens.push_back(s.tokens[t + 1]);
            extra_rows_.push_back(row - end + t);
          }
          r.prompt_logprobs_next = std::max(r.prompt_logprobs_next, last);
        }
        if (end == s.num_tokens_ahead()) {
          p.sample_seqs[j] = i;
          p.logits_rows[j] = row - 1;
          p.sample_counts[j++] = s.fanout;
          e.s->pending_draw = draw;  // after the feed above, which read the older plan's
          draw += s.fanout;
          ++e.s->pending;
        }
        plan_seqs_[i++] = e.s;
      }
    }
    p.logits_rows.insert(p.logits_rows.end(), extra_rows_.begin(), extra_rows_.end());
  }
  /// Turns sequence 0 of an n > 1 request into n sequences sharing its blocks.
  void fork(Sequence* s, int n) {
    Request& r = *s->request;
    s->fanout = 1;
    for (int k = 1; k < n; ++k) {
      Sequence* c = new_sequence(r, k);
      c->tokens = s->tokens;
      c->num_prompt_tokens = s->num_prompt_tokens;
      c->table = bm_.fork(s->table);
      c->state = SeqState::Running;
      c->last_step = s->last_step;
      running_.push_back(c);
    }
  }
  FinishReason check_stop(const Sequence& s, int32_t tok) const {
    const Request& r = *s.request;
    const SamplingParams& p = r.params;
    int out = s.num_output_tokens();  // the new token included
    if (out >= p.min_tokens) {
      if (!p.ignore_eos && std::find(r.eos_token_ids.begin(), r.eos_token_ids.end(), tok) != r.eos_token_ids.end())
        return FinishReason::Stop;
      if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), tok) != p.stop_token_ids.end())
        return FinishReason::Stop;
    }
    if (out >= p.max_tokens || s.num_tokens() >= cfg_.max_model_len) return FinishReason::Length;
    return FinishReason::None;
  }
  /// Frees s and marks it finished. `unlink`: also take it out of its queue (update() compacts
  /// running_ itself, once).
  void finish(Sequence* s, FinishReason why, bool unlink) {
    if (s->finished()) return;
    if (unlink) {
      if (s->state == SeqState::Running) {
        running_.erase(std::find(running_.begin(), running_.end(), s));
      } else if (s->state == SeqState::Waiting) {
        auto it = std::find(waiting_.begin(), waiting_.end(), s);
        if (it != waiting_.end()) waiting_.erase(it);
      } else if (s->state == SeqState::Swapped) {
        swapped_.erase(std::find(swapped_.begin(), swapped_.end(), s));
      }
    }
    if (s->state == SeqState::Running) seats_ -= s->fanout;
    bm_.free(s->table);
    s->state = SeqState::Finished;
    s->finish = why;
    Request& r = *s->request;
    r.num_unfinished -= s->fanout;
    if (r.num_unfinished == 0) { --num_unfinished_; retired_.emplace_back(r.id, step_); }
  }
  /// Drops the requests that finished before the oldest outstanding plan was scheduled (one
  /// that finished later may still be in that plan, whose update() reads its sequences).
  void retire() {
    const int64_t keep_from = outstanding_.empty() ? step_ + 1 : outstanding_.front().step;
    std::erase_if(retired_, [&](const std::pair<uint64_t, int64_t>& r) {
      if (r.second >= keep_from) return false;
      requests_.erase(r.first);
      return true;
    });
  }

  SchedulerConfig cfg_;
  int bs_;
  kv::BlockManager bm_;
  int watermark_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> requests_;
  std::vector<std::pair<uint64_t, int64_t>> retired_;  // (request, step_ when it finished)
  std::deque<Sequence*> waiting_, swapped_;
  std::vector<Sequence*> running_;  // admission order: the back is the newest
  int seats_ = 0;                   // running sequences, counting the n of an unforked request
  int num_unfinished_ = 0;          // requests
  int budget_ = 0;  // tokens this step may still add
  int tokens_ = 0;  // tokens this step has taken
  int pages_ = 0;                   // block-table entries of this step's plan
  int samples_ = 0;                 // sampled sequences of this step's plan
  int64_t step_ = 0;
  SeqId next_seq_id_ = 1;
  int64_t num_preemptions_ = 0;
  std::deque<Outstanding> outstanding_;  // plans awaiting update(), oldest first
  std::vector<Entry> decodes_, prefills_;
  std::vector<Sequence*> plan_seqs_;  // emit()'s, moved into outstanding_
  std::vector<Sequence*> spare_seqs_;  // the last updated plan's, reused by the next emit()
  std::vector<int32_t> extra_rows_;  // emit(): the prompt_logprobs rows, appended after the samples
};

}  // namespace pie::sched
