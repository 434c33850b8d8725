#pragma once
/// \file step_outputs.hpp
/// \brief The host half of a step that pie::Engine and parallel::TpEngine share: sample a
/// plan's logits rows, turn the sampled ids into scheduler updates and RequestOutputs, fill the
/// scheduler counters of stats(), and generate() (run prompts to completion over step()).
/// Kept in one place so the single-rank and tensor-parallel engines cannot drift apart: their
/// token streams are compared bit for bit by the TP tests.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "pie/engine/device_draws.hpp"
#include "pie/engine/engine_stats.hpp"
#include "pie/core/error.hpp"
#include "pie/engine/request_output.hpp"
#include "pie/engine/sample_specs.hpp"
#include "pie/engine/sampler.hpp"
#include "pie/model/config.hpp"
#include "pie/sched/prompt_logprob_row.hpp"
#include "pie/sched/scheduler.hpp"

namespace pie::engine {

/// Throws pie::Error naming the bad field of a request for a model of `vocab_size` tokens.
inline void check_request(const std::vector<int32_t>& prompt, const sched::SamplingParams& params, int vocab_size) {
  params.validate(vocab_size);
  for (size_t i = 0; i < prompt.size(); ++i)
    PIE_CHECK(prompt[i] >= 0 && prompt[i] < vocab_size, "prompt token ", i, " (id ", prompt[i],
              ") is out of the vocabulary [0, ", vocab_size, ")");
}

/// The ids that end a sequence: generation_config.json's, then config.json's not already listed.
inline std::vector<int32_t> eos_ids(const model::GenerationConfig& gen, const model::ModelConfig& cfg) {
  std::vector<int32_t> eos = gen.eos_token_ids;
  for (int32_t id : cfg.eos_token_ids)
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  return eos;
}

/// \brief One draw of a step: which (request, sequence index) it belongs to and what the
/// sampler produced (token, logprobs).
struct Draw {
  uint64_t request;
  int index;
  SamplerOutput out;
};

/// \brief The draws of one step, in plan sample order, and their token ids (scheduler_->update()'s input).
struct StepDraws {
  std::vector<Draw> drawn;
  std::vector<int32_t> sampled;
  void add(uint64_t request, int index, SamplerOutput o) {
    sampled.push_back(o.token);
    drawn.push_back({request, index, std::move(o)});
  }
};

/// Calls f(j, sequence, seq_index) for every draw of `plan` in sample order, j being the
/// sampled sequence's position in plan.sample_seqs: its `count` draws (n > 1 prefills) share
/// its logits row and draw k of them is sequence index k; a single draw keeps the sequence's index.
template <class F>
void for_each_draw(const sched::Scheduler& s, const sched::StepPlan& plan, F&& f) {
  for (size_t j = 0; j < plan.sample_seqs.size(); ++j) {
    const sched::Sequence& seq = s.plan_sequence(plan.sample_seqs[j]);
    const int count = plan.draws_of(j);
    for (int k = 0; k < count; ++k) f(j, seq, count > 1 ? k : seq.index);
  }
}

/// Records device-sampled `ids` (one per draw, in sample order: the caller checked the count)
/// as the step's draws.
inline void add_sampled_ids(const sched::Scheduler& s, const sched::StepPlan& plan, std::span<const int32_t> ids,
                            StepDraws& out) {
  out.drawn.reserve(out.drawn.size() + ids.size());
  out.sampled.reserve(out.sampled.size() + ids.size());
  size_t i = 0;
  for_each_draw(s, plan, [&](size_t, const sched::Sequence& seq, int index) {
    SamplerOutput o;
    o.token = ids[i++];
    out.add(seq.request->id, index, std::move(o));
  });
}

/// The sampler's input for one draw of `seq` (sequence index `index`): the host Sampler's and
/// the device's full sampler's, built one way.
template <class SeedOf>
SamplerInput sampler_input(const sched::Sequence& seq, int index, SeedOf&& seed_of) {
  const sched::Request& r = *seq.request;
  SamplerInput in;
  in.params = &r.params;
  in.prompt = seq.prompt();
  in.output = seq.output();
  in.eos_ids = r.eos_token_ids;
  in.seed = r.params.seed ? *r.params.seed : seed_of(r.id);
  in.seq_index = index;
  return in;
}

/// One SamplerInput per draw of `plan`, in sample order, into `out` (valid while the plan's
/// sequences are: they point at their tokens).
template <class SeedOf>
void sampler_inputs(const sched::Scheduler& s, const sched::StepPlan& plan, SeedOf&& seed_of,
                    std::vector<SamplerInput>& out) {
  out.clear();
  for_each_draw(s, plan,
                [&](size_t, const sched::Sequence& seq, int index) { out.push_back(sampler_input(seq, index, seed_of)); });
}

/// Records a full device sampler's draws (one per draw, sample order: the caller checked the
/// count), with the logprobs their requests asked for.
inline void add_device_draws(const sched::Scheduler& s, const sched::StepPlan& plan, const DeviceDraws& dd,
                             StepDraws& out) {
  size_t d = 0;
  for_each_draw(s, plan, [&](size_t, const sched::Sequence& seq, int index) {
    const sched::SamplingParams& p = seq.request->params;
    SamplerOutput o;
    o.token = dd.ids[d];
    if (p.logprobs) {
      o.has_logprob = true;
      o.logprob.token = o.token;
      o.logprob.logprob = dd.logprobs[d];
      const int n = std::min(*p.logprobs, dd.max_top);
      for (int k = 0; k < n; ++k) {
        const size_t at = d * static_cast<size_t>(dd.max_top) + static_cast<size_t>(k);
        o.logprob.top.emplace_back(dd.top_ids[at], dd.top_logprobs[at]);
      }
    }
    out.add(seq.request->id, index, std::move(o));
    ++d;
  });
}

/// Samples every draw of `plan` on the host from `logits`: one row per sampled sequence, or one
/// row per draw when `row_per_draw` (the device runners' layout). `seed_of(request id)` is the
/// engine's default seed for requests without one. `row` is scratch (the sampler edits its row).
/// `device_ids` (one per draw, sample order; empty: none) are what a device runner's sampler
/// drew in the same step: a draw whose request needs nothing of the host
/// (!needs_host_sampling) takes its device id, so a request's tokens do not depend on whether a
/// neighbour in the batch sent the step to the host (a seeded request's device and host draws
/// map the same uniform to different tokens: the same distribution, not the same token).
template <class SeedOf>
void sample_on_host(const sched::Scheduler& s, const sched::StepPlan& plan, std::span<const float> logits,
                    size_t vocab, bool row_per_draw, SeedOf&& seed_of, std::vector<float>& row, StepDraws& out,
                    std::span<const int32_t> device_ids = {}) {
  PIE_CHECK(device_ids.empty() || static_cast<int>(device_ids.size()) == plan.num_sampled_tokens(),
            "sample_on_host: ", device_ids.size(), " device ids for ", plan.num_sampled_tokens(), " draws");
  size_t draw = 0;
  for_each_draw(s, plan, [&](size_t j, const sched::Sequence& seq, int index) {
    const sched::Request& r = *seq.request;
    const size_t d = draw++;
    if (!device_ids.empty() && !needs_host_sampling(r.params)) {
      SamplerOutput o;
      o.token = device_ids[d];
      out.add(r.id, index, std::move(o));
      return;
    }
    const size_t at = row_per_draw ? d : j;
    row.assign(logits.begin() + at * vocab, logits.begin() + (at + 1) * vocab);
    if (r.params.logits_processor) r.params.logits_processor->process(index, seq.prompt(), seq.output(), row);
    out.add(r.id, index, Sampler::sample(row, sampler_input(seq, index, seed_of)));
  });
}

/// Scores the prompt tokens of the plan's prompt_logprobs rows (host logits laid out one row per
/// logits_rows entry, the extra rows after the sampled ones) into `out[request id]`, in
/// position order.
template <class Map>
void collect_prompt_logprobs(const sched::Scheduler& s, const sched::StepPlan& plan, std::span<const float> logits,
                             size_t vocab, Map& out) {
  const size_t base = plan.sample_seqs.size();
  for (size_t k = 0; k < plan.prompt_logprob_seqs.size(); ++k) {
    const sched::Sequence& seq = s.plan_sequence(plan.prompt_logprob_seqs[k]);
    const int pos = plan.prompt_logprob_positions[k];
    const std::span<const float> row = logits.subspan((base + k) * vocab, vocab);
    out[seq.request->id].push_back(
        Sampler::prompt_logprob_of(row, seq.tokens[pos + 1], *seq.request->params.prompt_logprobs));
  }
}

/// The same from a device runner's records (one sched::PromptLogprobRow per prompt_logprobs
/// row, top kMaxLogprobs each): keeps each request's first n alternatives.
template <class Map>
void collect_prompt_logprobs(const sched::Scheduler& s, const sched::StepPlan& plan,
                             std::span<const sched::PromptLogprobRow> rows, Map& out) {
  PIE_CHECK(rows.size() == plan.prompt_logprob_seqs.size(), "collect_prompt_logprobs: ", rows.size(),
            " device records for ", plan.prompt_logprob_seqs.size(), " prompt_logprobs rows");
  for (size_t k = 0; k < rows.size(); ++k) {
    const sched::Sequence& seq = s.plan_sequence(plan.prompt_logprob_seqs[k]);
    const sched::PromptLogprobRow& r = rows[k];
    PromptLogprob p;
    p.token = plan.prompt_logprob_tokens[k];
    p.logprob = r.logprob;
    p.rank = r.rank;
    const int n = std::min(*seq.request->params.prompt_logprobs, sched::kMaxLogprobs);
    for (int j = 0; j < n && r.top_ids[j] >= 0; ++j) p.top.emplace_back(r.top_ids[j], r.top_logprobs[j]);
    out[seq.request->id].push_back(std::move(p));
  }
}

/// Applies the step's draws to the scheduler and returns, per request that produced tokens,
/// its new tokens (and logprobs) and finish state. `who` prefixes the error message.
inline std::vector<RequestOutput> apply_draws(sched::Scheduler& s, const sched::StepPlan& plan, StepDraws& d,
                                              const char* who) {
  std::vector<sched::SequenceUpdate> ups = s.update(plan, d.sampled);
  std::vector<RequestOutput> outs;
  outs.reserve(ups.size());
  // Where each request's output is, for requests of several sequences only: a request of one
  // sequence (n = 1) has one update per step (the common case: no map node per request).
  std::unordered_map<uint64_t, size_t> where;
  size_t i = 0;
  for (const auto& u : ups) {
    // Updates follow sample order, skipping sequences aborted since schedule().
    while (i < d.drawn.size() && !(d.drawn[i].request == u.request_id && d.drawn[i].index == u.index)) ++i;
    PIE_CHECK(i < d.drawn.size(), who, "::step: update for request ", u.request_id, " matches no draw");
    size_t at = outs.size();
    if (!outs.empty() && outs.back().request_id == u.request_id) {
      at = outs.size() - 1;  // the request's previous update (its draws are consecutive)
    } else if (auto w = where.find(u.request_id); w != where.end()) {
      at = w->second;
    } else {
      RequestOutput ro;
      ro.request_id = u.request_id;
      const sched::Request* r = s.find_request(u.request_id);
      if (r != nullptr) {
        ro.prompt_tokens = r->num_prompt_tokens;
        ro.cached_prompt_tokens = r->cached_prompt_tokens;
      }
      if (r == nullptr || r->params.n > 1 || r->seqs.size() > 1) where.emplace(u.request_id, at);
      outs.push_back(std::move(ro));
    }
    RequestOutput& ro = outs[at];
    auto so = std::find_if(ro.seqs.begin(), ro.seqs.end(), [&](auto& x) { return x.index == u.index; });
    if (so == ro.seqs.end()) { ro.seqs.push_back({}); so = ro.seqs.end() - 1; so->index = u.index; }
    so->new_tokens.push_back(u.token);
    if (d.drawn[i].out.has_logprob) so->logprobs.push_back(std::move(d.drawn[i].out.logprob));
    if (u.finish != sched::FinishReason::None) { so->finish = u.finish; so->stop_token = u.stop_token; }
    ro.finished = ro.finished || u.request_finished;
    ++i;
  }
  return outs;
}

/// Fills `st` from the scheduler; `kv_blocks` is the cache's block count.
inline void fill_stats(const sched::Scheduler& s, int kv_blocks, EngineStats& st) {
  st.num_running = s.num_running();
  st.num_waiting = s.num_waiting();
  st.kv_usage = s.kv_usage();
  st.prefix_cache_queries = static_cast<uint64_t>(s.prefix_cache_queries());
  st.prefix_cache_hits = static_cast<uint64_t>(s.prefix_cache_hits());
  st.num_swapped = s.num_swapped();
  st.num_preemptions = static_cast<uint64_t>(s.num_preemptions());
  st.num_kv_blocks = kv_blocks;
}

/// \brief Tokens and finish reasons of one prompt's n sequences (generate()'s result).
struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<sched::FinishReason> finish;
};

/// Runs `prompts` to completion with the same params over engine `e` (add_request, step,
/// has_unfinished, last_step_ran); steps any earlier requests too. `who` prefixes errors.
template <class E>
std::vector<GenerateResult> generate(E& e, const std::vector<std::vector<int32_t>>& prompts,
                                     const sched::SamplingParams& params, const char* who) {
  std::vector<uint64_t> ids;
  for (const auto& p : prompts) ids.push_back(e.add_request(p, params));
  std::unordered_map<uint64_t, size_t> slot;
  std::vector<GenerateResult> res(prompts.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    slot[ids[i]] = i;
    res[i].tokens.resize(params.n);
    res[i].finish.assign(params.n, sched::FinishReason::None);
  }
  size_t open = ids.size();
  while (open > 0) {
    PIE_CHECK(e.has_unfinished(), who, "::generate: the scheduler has no work but ", open, " prompts are open");
    auto outs = e.step();
    // A plan with neither tokens nor block operations changes no state: the next one would
    // be empty too.
    PIE_CHECK(e.last_step_ran(), who, "::generate: the scheduler cannot schedule any of the ", open,
              " open prompts (KV cache too small?)");
    for (auto& ro : outs) {
      auto it = slot.find(ro.request_id);
      if (it == slot.end()) continue;
      GenerateResult& r = res[it->second];
      for (auto& so : ro.seqs) {
        auto& t = r.tokens[so.index];
        t.insert(t.end(), so.new_tokens.begin(), so.new_tokens.end());
        if (so.finish != sched::FinishReason::None) r.finish[so.index] = so.finish;
      }
      if (ro.finished) --open;
    }
  }
  return res;
}

}  // namespace pie::engine
