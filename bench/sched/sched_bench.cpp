// Scheduler host overhead and KV-cache fragmentation (issue 2, item 7).
//
//  BM_ScheduleUpdate/<prompt>: one engine step's host work, schedule() + update(), with 256
//    sequences running. Finished requests are replaced at once, so steps mix decodes with the
//    occasional prefill, as in steady-state serving. Target: < 50 µs per step on one core
//    (under 5% of a ~10 ms GPU decode step).
//  BM_KVWasteAtPeak/<block size>: a ShareGPT-like length mix (log-normal, mean prompt ≈ 161 and
//    output ≈ 338 tokens, as in the vLLM paper's ShareGPT trace) run to completion; at the step
//    where the most blocks are in use, waste = 1 - tokens held / slots allocated. Target < 2% at 16.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "pie/engine/step_outputs.hpp"
#include "pie/sched/scheduler.hpp"

namespace {

using namespace pie::sched;

/// Distinct random prompts (no prefix-cache hits); xorshift keeps the generator off the profile.
std::vector<int32_t> random_prompt(std::mt19937& rng, int n) {
  std::vector<int32_t> p(n);
  uint64_t x = (uint64_t(rng()) << 32) | rng() | 1;
  for (auto& t : p) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    t = static_cast<int32_t>(x % 150000);
  }
  return p;
}

constexpr int kSeqs = 256, kBlock = 16;

/// Steps `sch` (every sampled token 42) until one step is `batch` decodes: the prompts prefilled.
void prefill_all(Scheduler& sch, int batch) {
  std::vector<int32_t> sampled;
  for (bool all_decode = false; !all_decode;) {
    StepPlan plan = sch.schedule();
    sampled.assign(plan.num_sampled_tokens(), 42);
    sch.update(plan, sampled);
    all_decode = plan.num_decode_seqs == batch;
  }
}

/// 256 sequences, block size 16, a pool that holds all of them at max_model_len.
Scheduler scheduler_for_256(int max_model_len) {
  SchedulerConfig cfg;
  cfg.max_num_seqs = kSeqs;
  cfg.max_num_batched_tokens = 8192;
  cfg.max_model_len = max_model_len;
  return Scheduler(cfg, kSeqs * (max_model_len / kBlock) + 64, kBlock, 0);
}

void BM_ScheduleUpdate(benchmark::State& state) {
  const int prompt_len = static_cast<int>(state.range(0));
  Scheduler sch = scheduler_for_256(4096);
  std::mt19937 rng(7);
  uint64_t next_id = 0;
  auto add = [&] {
    SamplingParams p;
    p.max_tokens = std::uniform_int_distribution<int>(256, 1024)(rng);
    p.ignore_eos = true;
    sch.add_request(next_id++, random_prompt(rng, prompt_len), p, {151645});
  };
  for (int i = 0; i < kSeqs; ++i) add();
  std::vector<int32_t> sampled;
  StepPlan plan;  // reused: the engine's loop keeps one
  auto one_step = [&] {
    sch.schedule(plan);
    sampled.assign(plan.num_sampled_tokens(), 42);
    auto ups = sch.update(plan, sampled);
    for (const auto& u : ups)
      if (u.request_finished) add();
    return plan.num_seqs();
  };
  for (int i = 0; i < 300; ++i) one_step();  // past the initial prefills: steady state
  int64_t seqs = 0, steps = 0;
  for (auto _ : state) {
    seqs += one_step();
    ++steps;
  }
  state.counters["seqs/step"] = double(seqs) / double(steps);
  state.counters["running"] = sch.num_running();
  state.counters["us/step"] = benchmark::Counter(double(steps) * 1e-6, benchmark::Counter::kIsRate |
                                                                          benchmark::Counter::kInvert);
}
BENCHMARK(BM_ScheduleUpdate)->Arg(512)->Arg(2048)->Unit(benchmark::kMicrosecond);

/// Decode-only steps: 256 sequences admitted and prefilled up front, then every timed step is
/// 256 decodes (contexts grow from `prompt` to prompt + 3000 tokens over the run).
void BM_ScheduleUpdateDecodeOnly(benchmark::State& state) {
  const int prompt_len = static_cast<int>(state.range(0));
  Scheduler sch = scheduler_for_256(8192);
  std::mt19937 rng(7);
  for (int i = 0; i < kSeqs; ++i) {
    SamplingParams p;
    p.max_tokens = 4000;
    p.ignore_eos = true;
    sch.add_request(i, random_prompt(rng, prompt_len), p, {151645});
  }
  std::vector<int32_t> sampled;
  prefill_all(sch, kSeqs);
  StepPlan plan;
  for (auto _ : state) {
    sch.schedule(plan);
    sampled.assign(plan.num_sampled_tokens(), 42);
    sch.update(plan, sampled);
  }
  state.counters["running"] = sch.num_running();
}
BENCHMARK(BM_ScheduleUpdateDecodeOnly)->Arg(512)->Arg(2048)->Iterations(3000)->Unit(benchmark::kMicrosecond);

/// The engine's `apply` phase (StepTiming::apply_s, issue 15's host-time target) on decode-only
/// steps of `batch` sequences: update() and the RequestOutputs (engine::apply_draws) after the
/// draws are recorded as a device runner's ids (engine::add_sampled_ids). Arg 1: 0 times
/// schedule() + update() alone (the scheduler's share), 1 schedule() + the ids + apply_draws
/// (what the engine's host does around a pure decode step, sampling on the device).
void BM_DecodeStepHost(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  const bool outputs = state.range(1) != 0;
  SchedulerConfig cfg;
  cfg.max_num_seqs = batch;
  cfg.max_num_batched_tokens = 8192;
  cfg.max_model_len = 8192;
  Scheduler sch(cfg, batch * (8192 / kBlock) + 64, kBlock, 0);
  std::mt19937 rng(7);
  for (int i = 0; i < batch; ++i) {
    SamplingParams p;
    p.max_tokens = 4000;
    p.ignore_eos = true;
    sch.add_request(i, random_prompt(rng, 128), p, {151645});
  }
  std::vector<int32_t> sampled;
  prefill_all(sch, batch);
  StepPlan plan;
  size_t outs = 0;
  for (auto _ : state) {
    sch.schedule(plan);
    sampled.assign(plan.num_sampled_tokens(), 42);
    if (outputs) {
      pie::engine::StepDraws d;
      pie::engine::add_sampled_ids(sch, plan, sampled, d);
      outs += pie::engine::apply_draws(sch, plan, d, "bench").size();
    } else {
      outs += sch.update(plan, sampled).size();
    }
  }
  benchmark::DoNotOptimize(outs);
  state.counters["running"] = sch.num_running();
}
BENCHMARK(BM_DecodeStepHost)->Args({256, 0})->Args({256, 1})->Args({512, 0})->Args({512, 1})->Iterations(2000)
    ->Unit(benchmark::kMicrosecond);

void BM_KVWasteAtPeak(benchmark::State& state) {
  const int bs = static_cast<int>(state.range(0));
  double waste = 0, peak_usage = 0;
  for (auto _ : state) {
    SchedulerConfig cfg;
    cfg.max_num_seqs = 256;
    cfg.max_num_batched_tokens = 8192;
    cfg.max_model_len = 2048;
    cfg.enable_prefix_caching = false;  // no sharing: held tokens and slots count the same things
    const int blocks = 200000 / bs;     // 200k token slots: the batch, not the pool, is the limit
    Scheduler sch(cfg, blocks, bs, 0);
    std::mt19937 rng(11);
    std::lognormal_distribution<double> in_len(std::log(161.0) - 0.5, 1.0), out_len(std::log(338.0) - 0.405, 0.9);
    for (int i = 0; i < 2000; ++i) {
      int in = std::clamp(static_cast<int>(in_len(rng)), 4, 1024);
      int out = std::clamp(static_cast<int>(out_len(rng)), 4, 2048 - in);
      SamplingParams p;
      p.max_tokens = out;
      p.ignore_eos = true;
      sch.add_request(i, random_prompt(rng, in), p, {});
    }
    int peak_blocks = -1;
    int64_t peak_held = 0;
    std::vector<int32_t> sampled;
    while (sch.has_unfinished()) {
      StepPlan plan = sch.schedule();
      int used = blocks - sch.block_manager().num_free();
      if (used > peak_blocks) {
        int64_t held = 0;
        sch.for_each_sequence([&](const Sequence& s) { held += s.table.num_tokens; });
        peak_blocks = used;
        peak_held = held;
      }
      sampled.assign(plan.num_sampled_tokens(), 1);
      sch.update(plan, sampled);
    }
    waste = 1.0 - double(peak_held) / (double(peak_blocks) * bs);
    peak_usage = double(peak_blocks) / blocks;
  }
  state.counters["waste_%"] = 100.0 * waste;
  state.counters["peak_usage_%"] = 100.0 * peak_usage;
  std::printf("KV waste at peak, ShareGPT-like mix, block size %2d: %.2f%% of allocated slots\n", bs,
              100.0 * waste);
}
BENCHMARK(BM_KVWasteAtPeak)->Arg(8)->Arg(16)->Arg(32)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
