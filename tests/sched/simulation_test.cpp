// Randomized simulation of the scheduler against a fake model (issue 2, item 6; the
// asynchronous variant, issue 15).
//
// The fake model keeps its own copy of the KV cache: the K/V of a row is a hash of its token and
// of the K/V of the position before it, read through the sequence's table (computed in
// dependency order, as a real model's layers write the step's K/V before attention reads it). It
// applies the plan's swap_in / swap_out / copy_blocks lists, writes each row at its slot, then
// checks that every scheduled sequence's context, read back through its block table, is exactly
// its own history. The token it emits depends only on (request id, sequence index, the KV of the
// last context token), so each sequence's stream is fixed no matter how it was scheduled: every
// stream is checked against an oracle that generates the sequence alone, across chunked prefill
// on/off, prefix caching on/off and both preemption modes.
//
// SchedulerSimulationAsync runs the same requests under async_scheduling, as the Engine's
// step_ahead does: schedule N+1 while N awaits update(), launch N+1 (the model applies it right
// after N, in launch order; its feed rows take N's draws through feed_rows / feed_draws, the
// host never writes them), then update(N); one step in eight falls back to a synchronous one.
// Aborts come both with one plan and with two plans in flight; stop strings (finish_sequence)
// arrive after update(N) while N+1 is in flight. Invariants adapted to the asynchronous
// protocol, each because a placeholder is scheduled input that is not yet a known token:
//  - a context may end one past the known tokens (the placeholder), only for a decode of a
//    sequence that the plan in flight samples, never for one waiting to fork (fanout > 1);
//  - "decodes first" compares the context with known tokens + the placeholder;
//  - the feed rows are exactly the placeholder positions and hold kPlaceholderToken;
//  - after update(N) a sequence that N+1 samples has all its known tokens computed (the
//    synchronous bound table.num_tokens < num_tokens() moves by `pending`).
// Unchanged: budgets, plan arrays, slot and block rules, ref counts, and the block hashes
// (only known tokens, every full known block registered once its token arrives).
//
// Mutations of the asynchronous protocol (scheduler.hpp / request.hpp) and what catches them,
// measured 2026-12-04:
//  - feed a placeholder the previous draw (pending_draw − 1): the KV read check;
//  - hash a placeholder's block (kPlaceholderToken in the tokens given to register): the hash
//    check ("block hashed before its tokens are known");
//  - update() not registering the block a placeholder completed: the registration check;
//  - re-admit a preempted in-flight sequence from the waiting queue at once: "decodes first"
//    (it recomputes without its pending token); the same mutation on the swapped queue is NOT
//    caught and cannot matter: a sequence swapped out in step N+1 cannot be swapped in during
//    that step (swap_in runs before swap_out), and by the next schedule() update(N) has
//    consumed its placeholder (a swap keeps its K/V anyway);
//  - update() not skipping a sequence finished while its plan was in flight: the oracle streams;
//  - choosing an n > 1 sequence waiting for its fork as a victim: the ownership check;
//  - scheduling it (num_uncomputed not 0 before the fork): "a placeholder's row is a decode";
//  - update() finishing a preempted sequence without taking it out of its queue, and retiring
//    requests while a plan that lists them is outstanding: a crash (use after free).
// The hash checks also found a real bug: BlockManager::match_prefix stored the hit's token count
// in num_registered (a block count), so blocks computed after a prefix hit were never cached.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "pie/sched/scheduler.hpp"

namespace pie::sched {
namespace {

constexpr int kVocab = 256;
constexpr int32_t kEos = 0;

uint64_t mix(uint64_t h) {
  h ^= h >> 33; h *= 0xff51afd7ed558ccdull; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ull; h ^= h >> 33;
  return h;
}

/// The fake model's "K/V" of the token at position p: a hash of tokens[0..p], so that a block
/// holding the right tokens after the wrong prefix (a bad prefix-cache hit) reads differently.
uint64_t kv_value(uint64_t prev, int32_t tok) { return mix(prev * 0x9e3779b97f4a7c15ull ^ uint32_t(tok)); }
/// The fake model: next token from the sequence's identity and the KV of its last context token.
int32_t fake_token(uint64_t req, int index, uint64_t last_kv) {
  return static_cast<int32_t>(mix(mix(req * 1315423911ull + index) ^ last_kv) % kVocab);
}
/// The "stop string" the engine would detect: two equal tokens in a row.
bool stop_string(const std::vector<int32_t>& toks, int num_prompt) {
  int n = static_cast<int>(toks.size());
  return n - num_prompt >= 2 && toks[n - 1] == toks[n - 2];
}

struct Spec {
  uint64_t id;
  std::vector<int32_t> prompt;
  SamplingParams params;
  int arrival_step;
};

std::vector<Spec> make_specs(int num, int max_model_len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> prefixes(6);
  for (auto& p : prefixes) {
    p.resize(std::uniform_int_distribution<int>(8, 64)(rng));
    for (auto& t : p) t = std::uniform_int_distribution<int>(1, kVocab - 1)(rng);
  }
  std::vector<int32_t> phrase(64);
  for (auto& t : phrase) t = std::uniform_int_distribution<int>(1, kVocab - 1)(rng);
  std::vector<Spec> specs;
  int step = 0;
  for (int i = 0; i < num; ++i) {
    Spec s;
    s.id = 1000 + i;
    if (rng() % 2) s.prompt = prefixes[rng() % prefixes.size()];  // shared system prompts
    if (rng() % 4 == 0) {  // a shared phrase after a different, block-aligned prefix
      s.prompt.clear();
      for (int k = 32 * int(1 + rng() % 2); k > 0; --k) s.prompt.push_back(1 + rng() % (kVocab - 1));
      s.prompt.insert(s.prompt.end(), phrase.begin(), phrase.end());
    }
    int len = std::uniform_int_distribution<int>(1, 160)(rng);
    for (int k = 0; k < len; ++k) s.prompt.push_back(std::uniform_int_distribution<int>(1, kVocab - 1)(rng));
    if (static_cast<int>(s.prompt.size()) > max_model_len) s.prompt.resize(max_model_len);
    s.params.max_tokens = std::uniform_int_distribution<int>(1, 96)(rng);
    if (rng() % 7 == 0) s.params.n = std::uniform_int_distribution<int>(2, 4)(rng);
    if (rng() % 5 == 0) s.params.min_tokens = std::uniform_int_distribution<int>(0, s.params.max_tokens)(rng);
    if (rng() % 6 == 0) s.params.ignore_eos = true;
    if (rng() % 4 == 0) s.params.stop_token_ids = {int32_t(rng() % kVocab)};
    step += rng() % 3 == 0;  // ~3 arrivals per step
    s.arrival_step = step;
    specs.push_back(std::move(s));
  }
  return specs;
}

/// The stream sequence `index` of `s` produces when run alone (the scheduler must match it).
std::vector<int32_t> oracle(const Spec& s, int index, int max_model_len) {
  std::vector<int32_t> t = s.prompt;
  const int np = static_cast<int>(t.size());
  const SamplingParams& p = s.params;
  uint64_t h = 0;
  for (int32_t x : t) h = kv_value(h, x);
  for (;;) {
    int32_t tok = fake_token(s.id, index, h);
    t.push_back(tok);
    h = kv_value(h, tok);
    int out = static_cast<int>(t.size()) - np;
    bool stop = out >= p.min_tokens &&
                ((!p.ignore_eos && tok == kEos) ||
                 std::count(p.stop_token_ids.begin(), p.stop_token_ids.end(), tok) > 0);
    if (stop || out >= p.max_tokens || static_cast<int>(t.size()) >= max_model_len) break;
    if (stop_string(t, np)) break;
  }
  return {t.begin() + np, t.end()};
}

struct SimSetup {
  const char* name;
  SchedulerConfig cfg;
  int device_blocks, block_size, host_blocks;
};

struct SimResult {
  std::map<std::pair<uint64_t, int>, std::vector<int32_t>> streams;  // (request, index) → output
  std::set<uint64_t> aborted;
  int64_t preemptions = 0, swap_outs = 0, cow_copies = 0, cache_hits = 0, steps = 0;
  // asynchronous runs: feed rows, sequences a newer plan computed when an update finished them,
  // sequences preempted while a plan in flight samples them (summed over steps)
  int64_t feed_rows = 0, finished_in_flight = 0, preempted_in_flight = 0;
};

class Simulation {
 public:
  Simulation(const SimSetup& su) : su_(su), sch_(su.cfg, su.device_blocks, su.block_size, su.host_blocks),
        kv_(size_t(su.device_blocks) * su.block_size, 0), host_kv_(size_t(su.host_blocks) * su.block_size, 0) {}

  /// Synchronous: schedule, run, update, one plan at a time. Asynchronous (su.cfg.async_scheduling,
  /// the Engine's step_ahead): schedule plan N+1 while N awaits its update, launch N+1 (the fake
  /// model applies it right after N, in launch order, its feed rows filled from N's draws), then
  /// update N; one step in eight is a synchronous fallback (update N before scheduling N+1).
  SimResult run(const std::vector<Spec>& specs, uint32_t abort_seed) {
    std::mt19937 rng(abort_seed);
    const bool async = su_.cfg.async_scheduling;
    SimResult res;
    size_t next = 0;
    std::map<uint64_t, const Spec*> live;
    StepPlan bufs[2];
    StepPlan* prev = nullptr;          // the plan in flight (applied by the model, not updated)
    std::vector<int32_t> prev_sampled, sampled;
    auto random_abort = [&] {
      if (!live.empty() && rng() % 40 == 0) {  // random abort of a random live request
        auto it = std::next(live.begin(), rng() % live.size());
        EXPECT_TRUE(sch_.abort(it->first));
        res.aborted.insert(it->first);
        live.erase(it);
      }
    };
    // update(plan) and what the engine does with its result: stop strings, finished streams
    auto apply_update = [&](const StepPlan& plan, const std::vector<int32_t>& toks) {
      auto ups = sch_.update(plan, toks);
      for (const auto& u : ups) {
        if (u.finish == FinishReason::None) {
          auto t = sch_.tokens(u.request_id, u.index);
          std::vector<int32_t> v(t.begin(), t.end());
          if (stop_string(v, sch_.find_request(u.request_id)->num_prompt_tokens))
            sch_.finish_sequence(u.request_id, u.index, FinishReason::Stop);
        }
      }
      for (const auto& u : ups) {
        const Request* r = sch_.find_request(u.request_id);
        if (r->finished()) {
          for (auto& s : r->seqs) res.streams[{r->id, s->index}] = {s->output().begin(), s->output().end()};
          live.erase(r->id);
        }
      }
      check_ownership();
    };
    for (int64_t step = 0; next < specs.size() || sch_.has_unfinished() || prev; ++step) {
      EXPECT_LT(step, 200000) << "no progress";
      if (step >= 200000) break;
      while (next < specs.size() && specs[next].arrival_step <= step) {
        const Spec& s = specs[next++];
        sch_.add_request(s.id, s.prompt, s.params, {kEos});
        live[s.id] = &s;
      }
      random_abort();  // async: while `prev` is in flight
      if (prev && rng() % 8 == 0) {  // a synchronous step (the engine falls back to one at times)
        apply_update(*prev, prev_sampled);
        prev = nullptr;
      }
      EXPECT_EQ(sch_.num_outstanding(), prev ? 1 : 0);
      StepPlan* plan = &bufs[step % 2];  // never `prev`'s buffer: that plan is still in flight
      if (step % 3) {
        sch_.schedule(*plan);  // most steps through the buffer-reusing overload
      } else {
        *plan = sch_.schedule();  // the buffers the other overload reuses differ in size
      }
      ++res.steps;
      if (::testing::Test::HasFailure()) break;
      // launch: the model runs the plan after the one in flight (stream order)
      check_plan(*plan, prev, prev_sampled, sampled);
      if (::testing::Test::HasFailure()) break;
      sch_.for_each_sequence([&](const Sequence& q) {  // preempted while a plan samples it
        res.preempted_in_flight += q.pending > 0 && (q.state == SeqState::Waiting || q.state == SeqState::Swapped);
      });
      res.swap_outs += plan->swap_out.size();
      res.cow_copies += plan->copy_blocks.size();
      if (!async) {
        apply_update(*plan, sampled);
      } else {
        random_abort();  // two plans in flight
        if (prev) {
          apply_update(*prev, prev_sampled);
          // sequences of the plan in flight that update() (or a stop string) just finished
          for (int i = 0; i < plan->num_seqs(); ++i) res.finished_in_flight += sch_.plan_sequence(i).finished();
        }
        prev = plan->empty() ? nullptr : plan;  // an empty plan is not outstanding
        std::swap(prev_sampled, sampled);
        res.feed_rows += prev ? prev->feed_rows.size() : 0;
      }
      EXPECT_LE(sch_.num_running(), su_.cfg.max_num_seqs);
      if (::testing::Test::HasFailure()) break;
    }
    res.preemptions = sch_.num_preemptions();
    res.cache_hits = sch_.prefix_cache_hits();
    if (::testing::Test::HasFailure()) return res;
    EXPECT_EQ(sch_.num_outstanding(), 0);
    sch_.schedule();  // retires the last finished requests
    EXPECT_FALSE(sch_.has_unfinished());
    EXPECT_EQ(sch_.num_running() + sch_.num_waiting() + sch_.num_swapped(), 0);
    EXPECT_EQ(sch_.block_manager().num_free(), su_.device_blocks);
    EXPECT_EQ(sch_.block_manager().host().num_free(), su_.host_blocks);
    int left = 0;
    sch_.for_each_sequence([&](const Sequence&) { ++left; });
    EXPECT_EQ(left, 0);
    return res;
  }

 private:
  static int64_t slot(const StepPlan& p, int i, int pos, int bs) {
    return int64_t{p.kv_indices[p.kv_indptr[i] + pos / bs]} * bs + pos % bs;
  }

  /// Runs plan `p` on the fake model, as a runner must: block copies, then each row's K/V (a
  /// function of the K/V before it, read through the table, and the row's token; a feed row's
  /// token is draw feed_draws[k] of `prev`, the plan launched before it), then one token per
  /// draw from the K/V of the sampled row. Checks the plan on the way. `sampled` gets its draws.
  void check_plan(const StepPlan& p, const StepPlan* prev, const std::vector<int32_t>& prev_sampled,
                  std::vector<int32_t>& sampled) {
    const int bs = su_.block_size;
    const auto& pool = sch_.block_manager().device();
    sampled.clear();
    ASSERT_LE(p.num_tokens(), su_.cfg.max_num_batched_tokens);
    ASSERT_LE(p.num_seqs(), su_.cfg.max_num_seqs);
    ASSERT_EQ(p.cu_query_lens.size(), size_t(p.num_seqs() + 1));
    ASSERT_EQ(p.cu_query_lens.back(), p.num_tokens());
    ASSERT_EQ(p.sample_counts.size(), p.sample_seqs.size());
    ASSERT_FALSE(!p.swap_out.empty() && !p.swap_in.empty());
    {  // the copy lists can run as batched kernels: no device block is written twice or both
       // read and written by them
      std::set<int32_t> written, read;
      for (auto c : p.swap_in) ASSERT_TRUE(written.insert(c.dst).second);
      for (auto c : p.copy_blocks) ASSERT_TRUE(written.insert(c.dst).second);
      for (auto c : p.copy_blocks) read.insert(c.src);
      for (auto c : p.swap_out) read.insert(c.src);
      for (int32_t b : read) ASSERT_FALSE(written.count(b)) << "block " << b << " read and written";
    }
    // The true token of each placeholder: what `prev` drew for that sequence (the first draw of
    // its sample; a sequence waiting for its fork is never scheduled, see below).
    std::map<SeqId, int32_t> truth;
    if (prev) {
      for (size_t j = 0, d = 0; j < prev->sample_seqs.size(); d += prev->sample_counts[j++])
        truth[prev->seq_ids[prev->sample_seqs[j]]] = prev_sampled[d];
    }
    std::vector<int32_t> row_token(p.token_ids);
    ASSERT_EQ(p.feed_rows.size(), p.feed_draws.size());
    if (!prev) ASSERT_TRUE(p.feed_rows.empty()) << "feed rows without a plan in flight";
    for (size_t k = 0; k < p.feed_rows.size(); ++k) {
      ASSERT_EQ(p.token_ids[p.feed_rows[k]], StepPlan::kPlaceholderToken);
      ASSERT_LT(size_t(p.feed_draws[k]), prev_sampled.size());
      row_token[p.feed_rows[k]] = prev_sampled[p.feed_draws[k]];
    }
    // block operations in the documented order
    for (auto c : p.swap_in) std::copy_n(&host_kv_[size_t(c.src) * bs], bs, &kv_[size_t(c.dst) * bs]);
    for (auto c : p.swap_out) std::copy_n(&kv_[size_t(c.src) * bs], bs, &host_kv_[size_t(c.dst) * bs]);
    for (auto c : p.copy_blocks) {
      ASSERT_EQ(pool.ref_count(c.dst), 1);
      std::copy_n(&kv_[size_t(c.src) * bs], bs, &kv_[size_t(c.dst) * bs]);
    }
    for (int i = 0; i < p.num_seqs(); ++i) check_hashes(sch_.plan_sequence(i));
    std::set<int64_t> written;
    std::vector<std::vector<uint64_t>> want(p.num_seqs());
    std::vector<int> row_seq(p.num_tokens());
    for (int i = 0; i < p.num_seqs(); ++i) {
      const Sequence& s = sch_.plan_sequence(i);
      ASSERT_EQ(s.id, p.seq_ids[i]);
      int q = p.query_lens[i], ctx = p.context_lens[i];
      ASSERT_EQ(p.cu_query_lens[i + 1] - p.cu_query_lens[i], q);
      ASSERT_GE(q, 1);
      // Async adaptation: a sequence that the plan in flight samples has one placeholder, which
      // this plan computes (its input row); the context may end one past the known tokens.
      const bool placeholder = truth.count(s.id) > 0 && !s.finished();
      want[i] = history(s);
      if (placeholder) want[i].push_back(kv_value(want[i].back(), truth[s.id]));
      ASSERT_LE(ctx, int(want[i].size()));
      if (placeholder) {  // only as a decode: the placeholder is its one input (and never a fork's)
        ASSERT_EQ(s.fanout, 1);
        ASSERT_TRUE(q == 1 && ctx == int(want[i].size())) << "seq " << s.id << ": a placeholder's row is a decode";
      }
      // Async adaptation: the decode's context ends at the known tokens plus the placeholder.
      ASSERT_EQ(i < p.num_decode_seqs, q == 1 && ctx == int(want[i].size())) << "decodes first";
      int pages = p.kv_indptr[i + 1] - p.kv_indptr[i];
      ASSERT_EQ(pages, (ctx + bs - 1) / bs);
      ASSERT_EQ(p.kv_last_page_len[i], ctx - (pages - 1) * bs);
      for (int r = p.cu_query_lens[i]; r < p.cu_query_lens[i + 1]; ++r) {
        int pos = ctx - q + (r - p.cu_query_lens[i]);
        ASSERT_EQ(p.positions[r], pos);
        // Async adaptation: the placeholder's row is a feed row; every other row holds its token.
        const bool feed = std::count(p.feed_rows.begin(), p.feed_rows.end(), r) > 0;
        ASSERT_EQ(feed, pos == s.num_tokens()) << "seq " << s.id << " position " << pos;
        if (!feed) ASSERT_EQ(p.token_ids[r], s.tokens[pos]);
        ASSERT_EQ(p.slot_mapping[r], slot(p, i, pos, bs));
        ASSERT_TRUE(written.insert(p.slot_mapping[r]).second) << "slot written twice";
        int32_t blk = static_cast<int32_t>(p.slot_mapping[r] / bs);
        ASSERT_TRUE(pool.ref_count(blk) == 1 || pool.is_cached(blk)) << "write into a shared block";
        row_seq[r] = i;
      }
    }
    // The model: a row's K/V is a function of its token and the K/V of the position before it,
    // read through its table. Like a real model's layers (every layer writes the step's K/V
    // before its attention reads), that K/V may be another row of this step, of this sequence
    // or of one whose block this sequence just hit in the prefix cache: rows are computed in
    // dependency order, not row order.
    std::map<int64_t, int> writer;  // slot → row of this plan
    for (int r = 0; r < p.num_tokens(); ++r) writer[p.slot_mapping[r]] = r;
    std::vector<uint64_t> value(p.num_tokens());
    std::vector<char> state(p.num_tokens(), 0);  // 0 new, 1 in progress, 2 done
    bool cycle = false;
    auto compute = [&](auto& self, int r) -> uint64_t {
      if (state[r] == 2) return value[r];
      if (state[r] == 1) { cycle = true; return 0; }
      state[r] = 1;
      const int pos = p.positions[r];
      uint64_t before = 0;
      if (pos > 0) {
        const int64_t sl = slot(p, row_seq[r], pos - 1, bs);
        auto w = writer.find(sl);
        before = w != writer.end() ? self(self, w->second) : kv_[sl];
      }
      state[r] = 2;
      return value[r] = kv_value(before, row_token[r]);
    };
    for (int r = 0; r < p.num_tokens(); ++r) compute(compute, r);
    ASSERT_FALSE(cycle) << "rows of one step depend on each other in a cycle";
    for (int r = 0; r < p.num_tokens(); ++r) kv_[p.slot_mapping[r]] = value[r];
    // what each sequence reads is its own history
    for (int i = 0; i < p.num_seqs(); ++i) {
      const Sequence& s = sch_.plan_sequence(i);
      const int32_t* table = p.kv_indices.data() + p.kv_indptr[i];
      for (int pos = 0, ctx = p.context_lens[i]; pos < ctx; ++pos)
        if (kv_[size_t(table[pos / bs]) * bs + pos % bs] != want[i][pos])
          FAIL() << "KV of seq " << s.id << " at position " << pos << " is not its own";
    }
    // sample from what the model read
    for (size_t j = 0; j < p.sample_seqs.size(); ++j) {
      int i = p.sample_seqs[j];
      const Sequence& s = sch_.plan_sequence(i);
      uint64_t last = kv_[slot(p, i, p.context_lens[i] - 1, bs)];
      for (int k = 0; k < p.sample_counts[j]; ++k) sampled.push_back(fake_token(s.request->id, s.index + k, last));
    }
  }

  /// The prefix cache only ever hashes known tokens: each block hash a table holds (registered
  /// or memoized by a lookup) covers tokens the sequence has, never a placeholder's slot.
  void check_hashes(const Sequence& s) {
    const int bs = su_.block_size;
    const auto& h = s.table.hashes;
    EXPECT_LE(s.table.num_registered, int(h.size()));
    for (size_t b = 0; b < h.size(); ++b) {
      ASSERT_LE(int(b + 1) * bs, s.num_tokens())
          << "seq " << s.id << ": block " << b << " hashed before its tokens are known";
      uint64_t parent = b ? h[b - 1] : kv::BlockPool::kRootHash;
      ASSERT_EQ(h[b], kv::BlockPool::hash_block(parent, std::span(s.tokens).subspan(b * bs, bs)))
          << "seq " << s.id << ": block " << b << " hashed from other tokens";
    }
  }

  void check_ownership() {
    const auto& bm = sch_.block_manager();
    std::vector<int> dev(su_.device_blocks, 0), host(su_.host_blocks, 0);
    sch_.for_each_sequence([&](const Sequence& s) {
      if (s.finished()) {
        EXPECT_TRUE(s.table.blocks.empty() && s.table.host_blocks.empty());
        return;
      }
      check_hashes(s);
      std::set<int32_t> own(s.table.blocks.begin(), s.table.blocks.end());
      EXPECT_EQ(own.size(), s.table.blocks.size()) << "block owned twice by one sequence";
      size_t pages = (s.table.num_tokens + su_.block_size - 1) / su_.block_size;
      if (s.state == SeqState::Swapped) {
        EXPECT_TRUE(s.table.blocks.empty());
        EXPECT_EQ(s.table.host_blocks.size(), pages);
      } else {
        EXPECT_TRUE(s.table.host_blocks.empty());
        EXPECT_EQ(s.table.blocks.size(), pages);
      }
      if (s.state == SeqState::Waiting) {
        EXPECT_TRUE(s.table.blocks.empty());
      }
      if (s.state == SeqState::Running && su_.cfg.enable_prefix_caching) {
        // Every full block of known, computed (or scheduled) tokens is offered to the prefix
        // cache: async, the one a placeholder completed once update() brings its token.
        EXPECT_EQ(s.table.num_registered, std::min(s.table.num_tokens, s.num_tokens()) / su_.block_size)
            << "seq " << s.id << ": full blocks not offered to the prefix cache";
      }
      // Every known token but the last is computed or scheduled, and the last waits for its
      // step. Async adaptation: a sequence that the newest plan samples has its last known
      // token in that plan (the placeholder it computed), so the bound moves by `pending`.
      EXPECT_LT(s.table.num_tokens, s.num_tokens() + s.pending);
      for (int32_t b : s.table.blocks) ++dev[b];
      for (int32_t b : s.table.host_blocks) ++host[b];
    });
    int free_dev = 0, free_host = 0;
    for (int b = 0; b < su_.device_blocks; ++b) {
      EXPECT_EQ(bm.device().ref_count(b), dev[b]) << "device block " << b;
      free_dev += dev[b] == 0;
    }
    for (int b = 0; b < su_.host_blocks; ++b) {
      EXPECT_EQ(bm.host().ref_count(b), host[b]) << "host block " << b;
      EXPECT_LE(host[b], 1) << "host block owned twice";
      free_host += host[b] == 0;
    }
    EXPECT_EQ(bm.num_free(), free_dev);
    EXPECT_EQ(bm.host().num_free(), free_host);
  }

  SimSetup su_;
  Scheduler sch_;
  /// kv_value of every prefix of s's tokens (memo per sequence; tokens only grow).
  const std::vector<uint64_t>& history(const Sequence& s) {
    auto& h = hist_[s.id];
    for (size_t p = h.size(); p < s.tokens.size(); ++p) h.push_back(kv_value(p ? h[p - 1] : 0, s.tokens[p]));
    return h;
  }

  std::vector<uint64_t> kv_, host_kv_;
  std::map<SeqId, std::vector<uint64_t>> hist_;
};

SchedulerConfig base_config() {
  SchedulerConfig c;
  c.max_num_seqs = 24;
  c.max_num_batched_tokens = 256;
  c.max_model_len = 256;
  return c;
}

std::vector<SimSetup> setups(int block_size) {
  std::vector<SimSetup> v;
  auto c = base_config();
  int dev = 3 * 256 / block_size;  // three max-length sequences: preemption is constant
  v.push_back({"chunked+cache+recompute", c, dev, block_size, 0});
  c.enable_chunked_prefill = false;
  v.push_back({"nochunk+cache+recompute", c, dev, block_size, 0});
  c.enable_chunked_prefill = true;
  c.enable_prefix_caching = false;
  v.push_back({"chunked+nocache+recompute", c, dev, block_size, 0});
  c.preemption_mode = PreemptionMode::Swap;
  v.push_back({"chunked+nocache+swap", c, dev, block_size, 2 * dev});
  c.enable_prefix_caching = true;
  v.push_back({"chunked+cache+swap(small host pool)", c, dev, block_size, dev / 4});
  c.enable_chunked_prefill = false;
  v.push_back({"nochunk+cache+swap", c, dev, block_size, 2 * dev});
  return v;
}

void run_all(int block_size, int num_requests, uint32_t seed, bool async = false) {
  auto specs = make_specs(num_requests, base_config().max_model_len, seed);
  std::vector<SimResult> results;
  for (auto su : setups(block_size)) {
    su.cfg.async_scheduling = async;
    SCOPED_TRACE(su.name);
    results.push_back(Simulation(su).run(specs, seed * 7 + 1));
    if (::testing::Test::HasFailure()) return;
    const SimResult& r = results.back();
    EXPECT_GT(r.preemptions, 0);
    if (su.cfg.preemption_mode == PreemptionMode::Swap) {
      EXPECT_GT(r.swap_outs, 0);
    }
    if (su.cfg.enable_prefix_caching) {
      EXPECT_GT(r.cache_hits, 0);
    }
    EXPECT_GT(r.cow_copies, 0);
    if (async) {  // the asynchronous protocol's cases all happen
      EXPECT_GT(r.feed_rows, 0);
      EXPECT_GT(r.finished_in_flight, 0);
      EXPECT_GT(r.preempted_in_flight, 0);
    }
    // every stream equals the sequence generated alone (a prefix of it when aborted)
    int complete = 0;
    for (const Spec& s : specs) {
      bool ab = r.aborted.count(s.id) > 0;
      for (int k = 0; k < s.params.n; ++k) {
        auto it = r.streams.find({s.id, k});
        if (it == r.streams.end()) {
          EXPECT_TRUE(ab) << "request " << s.id << " seq " << k << " never reported";
          continue;
        }
        auto want = oracle(s, k, su.cfg.max_model_len);
        if (ab) {
          ASSERT_LE(it->second.size(), want.size());
          ASSERT_TRUE(std::equal(it->second.begin(), it->second.end(), want.begin()))
              << "request " << s.id << " seq " << k;
        } else {
          ASSERT_EQ(it->second, want) << "request " << s.id << " seq " << k;
          ++complete;
        }
      }
    }
    EXPECT_GT(complete, num_requests / 2);
    std::printf("[sim bs=%d%s] %-36s steps %6lld  preemptions %5lld  swapped-out blocks %6lld  cow %5lld  "
                "cache-hit tokens %7lld  aborted %zu\n",
                block_size, async ? " async" : "", su.name, (long long)r.steps, (long long)r.preemptions,
                (long long)r.swap_outs, (long long)r.cow_copies, (long long)r.cache_hits, r.aborted.size());
    if (async)
      std::printf("[sim bs=%d async] feed rows %lld  finished in flight %lld  preempted in flight %lld\n", block_size,
                  (long long)r.feed_rows, (long long)r.finished_in_flight, (long long)r.preempted_in_flight);
  }
  // identical streams across configurations, for requests no configuration aborted
  for (size_t c = 1; c < results.size(); ++c)
    for (const auto& [key, stream] : results[0].streams) {
      if (results[0].aborted.count(key.first) || results[c].aborted.count(key.first)) continue;
      ASSERT_EQ(results[c].streams.at(key), stream) << "config " << c << " request " << key.first;
    }
}

}  // namespace

TEST(SchedulerSimulation, TwoThousandRequestsBlockSize16) { run_all(16, 2000, 1); }
TEST(SchedulerSimulation, TwoThousandRequestsBlockSize8) { run_all(8, 2000, 2); }
TEST(SchedulerSimulation, FiveHundredRequestsBlockSize32) { run_all(32, 500, 3); }
TEST(SchedulerSimulationAsync, TwoThousandRequestsBlockSize16) { run_all(16, 2000, 1, true); }
TEST(SchedulerSimulationAsync, TwoThousandRequestsBlockSize8) { run_all(8, 2000, 2, true); }
TEST(SchedulerSimulationAsync, FiveHundredRequestsBlockSize32) { run_all(32, 500, 3, true); }

}  // namespace pie::sched
