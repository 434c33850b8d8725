/// \file bench.cpp
/// \brief `pie bench MODEL_DIR --mode throughput|latency ...` on one GPU. Compiled as CUDA.
///
/// Throughput: N requests (fixed lengths, or ShareGPT-like random lengths) all queued at once,
/// ignore_eos, run to completion through the scheduler and the CUDA runner; prints requests/s,
/// output and total tokens/s. Latency: one request at a time (batch 1): time to first token and
/// inter-token latency. Both print the roofline of exactly the steps that ran: per step
/// max(FLOPs / GEMM peak, bytes / copy bandwidth), both ceilings measured at start-up in this
/// run (engine/cuda/roofline.cuh), and the measured time's fraction of it.
#include "bench.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <nlohmann/json.hpp>

#include "pie/core/policy.hpp"
#include "pie/engine/cuda/batch_defaults_of_device.cuh"
#include "pie/engine/cuda/roofline.cuh"
#include "pie/registry/cuda/cuda_engines.cuh"
#include "pie/model/config_io.hpp"
#include "pie/server/serve_options.hpp"

namespace pie::cli {

CLI::App* add_bench_command(CLI::App& app, BenchOptions& o) {
  CLI::App* s = app.add_subcommand("bench", "Offline throughput / batch-1 latency on the GPU, with the roofline");
  s->add_option("model", o.model_dir, "Folder with config.json (and weights unless --load-format dummy)")->required();
  s->add_option("--load-format,--load_format", o.load_format, "dummy | auto | safetensors")->capture_default_str();
  s->add_option("--mode", o.mode, "throughput | latency | both (latency, then throughput, one engine)")
      ->capture_default_str();
  s->add_option("--quantization,-q", o.quantization, "fp8: fp8 projection weights (default: config.json's)")
      ->check(CLI::IsMember({"fp8"}));
  s->add_option("--dataset-name,--dataset_name", o.dataset, "random | sharegpt (ShareGPT-like random lengths)")
      ->capture_default_str();
  s->add_option("--num-prompts,--num_prompts", o.num_prompts)->capture_default_str();
  s->add_option("--input-len,--input_len", o.input_len)->capture_default_str();
  s->add_option("--output-len,--output_len", o.output_len)->capture_default_str();
  s->add_option("--num-iters,--num_iters", o.num_iters, "latency: timed requests")->capture_default_str();
  s->add_option("--num-iters-warmup,--num_iters_warmup", o.num_iters_warmup)->capture_default_str();
  s->add_option("--max-num-seqs,--max_num_seqs", o.max_num_seqs,
                "Sequences a step (default: vLLM's for the card: 1024 with 70 GiB or more, other than an A100; else 256)")
      ->check(CLI::Range(1, 1 << 16));
  s->add_option("--max-num-batched-tokens,--max_num_batched_tokens", o.max_num_batched_tokens,
                "Tokens a step (default: vLLM's `LLM` class's for the card: 16384 with 70 GiB or more, other than "
                "an A100; else 8192)")
      ->check(CLI::Range(1, 1 << 24));
  s->add_option("--long-prefill-token-threshold,--long_prefill_token_threshold", o.long_prefill_token_threshold,
                "Prompt tokens one sequence computes per step (0: no cap)")->capture_default_str();
  pie::server::detail::add_prefill_budget_flag(
      *s, o.max_prefill_tokens_with_decodes,
      "Decode-first budget: prefill tokens a step adds to running decodes (auto: scaled with them; 0: no cap)");
  s->add_option("--max-model-len,--max_model_len", o.max_model_len, "0 → input + output")->capture_default_str();
  s->add_option("--block-size,--block_size", o.block_size, "KV block size in tokens: 8 | 16")
      ->check(CLI::IsMember({8, 16}))
      ->capture_default_str();
  s->add_option("--kv-cache-dtype,--kv_cache_dtype", o.kv_cache_dtype, "KV-cache dtype: auto (bf16) | fp8 (e4m3)")
      ->check(CLI::IsMember({"auto", "bfloat16", "fp8", "fp8_e4m3"}))
      ->capture_default_str();
  s->add_option("--gpu-memory-utilization,--gpu_memory_utilization", o.gpu_memory_utilization)->capture_default_str();
  s->add_option("--swap-space,--swap_space", o.swap_space, "GiB of pinned host swap")->capture_default_str();
  s->add_option("--preemption-mode,--preemption_mode", o.preemption_mode, "recompute | swap")->capture_default_str();
  s->add_flag("--enforce-eager,--enforce_eager", o.enforce_eager, "No CUDA graphs");
  s->add_flag("--calculate-kv-scales,--calculate_kv_scales", o.calculate_kv_scales,
              "fp8 KV cache: per-head K/V scales from the first forward's amax (default: the checkpoint's, else 1)");
  s->add_flag("--batch-invariant,--batch_invariant", o.batch_invariant, "Bitwise batch-invariant kernels");
  s->add_option("--nano-batches,--nano_batches", o.nano_batches,
                "2: run large steps as two overlapped nano-batches (1: never; 0: PIE_NANO_BATCHES)")
      ->check(CLI::Range(0, 2))
      ->capture_default_str();
  s->add_option("--nano-min-rows,--nano_min_rows", o.nano_min_rows,
                "With --nano-batches 2: split every step of at least this many decode rows (0: the cost model)")
      ->capture_default_str();
  s->add_flag("--async-scheduling,--async_scheduling", o.async_scheduling,
              "Plan step N+1 while step N runs (vLLM's; the runner must support it)");
  s->add_flag("--enable-prefix-caching,--enable_prefix_caching", o.enable_prefix_caching);
  s->add_option("--temperature", o.temperature, "0 → greedy")->capture_default_str();
  s->add_option("--seed", o.seed)->capture_default_str();
  s->add_option("--output-json,--output_json", o.output_json, "Also write the results as JSON");
  s->add_flag("--profile", o.profile, "After the timed run, time every op of a few eager decode steps");
  return s;
}

namespace {

using Clock = std::chrono::steady_clock;

double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

/// (input, output) lengths of each request. ShareGPT-like: log-normal lengths with the given
/// means (σ = 0.8, as ShareGPT's prompt/answer lengths roughly are), clipped to [4, 4·mean].
std::vector<std::pair<int, int>> workload(const BenchOptions& o, std::mt19937_64& rng) {
  std::vector<std::pair<int, int>> w;
  for (int i = 0; i < o.num_prompts; ++i) {
    if (o.dataset == "random") { w.emplace_back(o.input_len, o.output_len); continue; }
    PIE_CHECK(o.dataset == "sharegpt", "--dataset-name must be random or sharegpt, got ", o.dataset);
    auto draw = [&](int mean) {
      const double sigma = 0.8, mu = std::log(static_cast<double>(mean)) - sigma * sigma / 2;
      std::lognormal_distribution<double> d(mu, sigma);
      return std::clamp(static_cast<int>(d(rng)), 4, 4 * mean);
    };
    w.emplace_back(draw(o.input_len), draw(o.output_len));
  }
  return w;
}

/// The engine options of a bench run (vLLM's `benchmark_throughput` / `_latency` flags).
EngineOptions engine_options(const BenchOptions& o, const model::ModelConfig& cfg) {
  EngineOptions eo;
  eo.model_dir = o.model_dir;
  eo.load_format = o.load_format;
  eo.seed = o.seed;
  eo.device = "cuda";
  eo.quantization = o.quantization;
  eo.block_size = o.block_size;
  eo.kv_cache_dtype = o.kv_cache_dtype;
  eo.sched.max_num_seqs = o.max_num_seqs;
  eo.sched.max_num_batched_tokens = std::max(o.max_num_batched_tokens, o.max_num_seqs);
  const int need = o.dataset == "random" ? o.input_len + o.output_len : 4 * (o.input_len + o.output_len);
  eo.sched.max_model_len = static_cast<int>(std::min<int64_t>(o.max_model_len > 0 ? o.max_model_len : need,
                                                              cfg.max_position_embeddings));
  eo.sched.enable_prefix_caching = o.enable_prefix_caching;
  eo.sched.long_prefill_token_threshold = o.long_prefill_token_threshold;
  eo.sched.async_scheduling = o.async_scheduling;
  eo.sched.max_prefill_tokens_with_decodes = o.max_prefill_tokens_with_decodes;
  PIE_CHECK(o.preemption_mode == "recompute" || o.preemption_mode == "swap",
            "--preemption-mode must be recompute or swap");
  eo.sched.preemption_mode = o.preemption_mode == "swap" ? sched::PreemptionMode::Swap : sched::PreemptionMode::Recompute;
  eo.gpu_memory_utilization = o.gpu_memory_utilization;
  eo.swap_space_gib = o.swap_space;
  eo.enforce_eager = o.enforce_eager;
  eo.calculate_kv_scales = o.calculate_kv_scales;
  eo.batch_invariant = o.batch_invariant;
  eo.nano_batches = o.nano_batches;
  eo.nano_min_rows = o.nano_min_rows;
  return eo;
}

/// What the observer accumulates over the steps of one timed run.
struct RunStats {
  double roofline_s = 0, wall_s = 0, flops = 0, bytes = 0;
  int64_t steps = 0, tokens = 0;
  double kv_waste_at_peak = 0;
  int64_t peak_blocks = 0;
  // Pure decode steps by batch size: count, wall, host (and its schedule and apply phases,
  // StepTiming), roofline (throughput vs batch size).
  // idle: the device's gap before the step (StepTiming::device_idle_s), summed over the idle_n
  // steps that report one.
  struct Bucket { int64_t n = 0, idle_n = 0; double wall = 0, host = 0, roof = 0, sched = 0, apply = 0, idle = 0; };
  std::map<int, Bucket> decode;
};

template <class Model, class Policy>
struct Bench {
  const BenchOptions& o;
  engine::cuda::Ceilings ceil;
  std::unique_ptr<Engine<Model, Policy>> eng;
  std::unique_ptr<engine::cuda::RooflineModel> roof;
  RunStats* cur = nullptr;
  std::vector<int32_t> eos;

  explicit Bench(const BenchOptions& opts) : o(opts) {
    // Ceilings first, while the card is empty (the engine then takes 90% of it).
    ceil = engine::cuda::measure_ceilings();
    std::printf("ceilings: bf16 GEMM %.1f TFLOP/s, device copy %.2f TB/s (read + write)\n", ceil.gemm_flops / 1e12,
                ceil.copy_bw / 1e12);
    model::ModelConfig cfg = model::load_model_config(o.model_dir, /*any_architecture=*/true);  // Qwen3-MoE too
    EngineOptions eo = engine_options(o, cfg);
    auto t0 = Clock::now();
#if defined(PIE_DECODE_TIMELINE)  // pie_bench_timeline: decode CTAs stamp their marks (the graphs capture the buffer)
    ops::cuda::detail::decode_timeline_start();
#endif
    eng = std::make_unique<Engine<Model, Policy>>(eo, registry::cuda_group(resolve_engine(eo)));
    const auto& mp = eng->runner().memory_plan();
    const std::string_view kv_name = DTypeTraits<typename Policy::kv_dtype>::name;
    std::printf("engine: %s, weights %.2f GiB on the device (%s%s), KV cache %.*s, built in %.1f s\n",
                cfg.architecture_name.c_str(), mp.gib(mp.weight_bytes), o.load_format.c_str(),
                Policy::fp8_weights ? ", fp8 projections" : "", static_cast<int>(kv_name.size()), kv_name.data(),
                secs(t0, Clock::now()));
    roof = std::make_unique<engine::cuda::RooflineModel>(cfg, sizeof(bf16), sizeof(typename Policy::kv_dtype),
                                                         Policy::fp8_weights);
    roof->set_moe_of(o.model_dir);  // a MoE model: the experts a step touches
    eng->set_observer([this](const sched::StepPlan& p, const StepTiming& t) { observe(p, t); });
  }

  /// Runs every queued request to completion; returns the output tokens generated.
  int64_t run_all() {
    int64_t got = 0;
    while (eng->has_unfinished()) {
      for (const auto& ro : eng->step())
        for (const auto& so : ro.seqs) got += static_cast<int64_t>(so.new_tokens.size());
      PIE_CHECK(eng->last_step_ran(), "bench: the scheduler produced no work while requests remain");
    }
    return got;
  }

  void observe(const sched::StepPlan& p, const StepTiming& t) {
    if (!cur) return;
    auto c = roof->cost(p);
    double r = c.seconds(ceil);
    cur->roofline_s += r;
    cur->flops += c.flops;
    cur->bytes += c.bytes;
    cur->steps++;
    cur->tokens += p.num_tokens();
    if (p.num_decode_seqs == p.num_seqs()) {
      auto& b = cur->decode[p.num_seqs()];
      b.n++; b.wall += t.total_s; b.host += t.host_s; b.roof += r; b.sched += t.schedule_s; b.apply += t.apply_s;
      if (t.device_idle_s) { b.idle_n++; b.idle += *t.device_idle_s; }
    }
    // KV waste: allocated slots not holding a token, over the step's block tables.
    int64_t blocks = p.kv_indices.size(), held = 0;
    for (int32_t c2 : p.context_lens) held += c2;
    if (blocks > cur->peak_blocks) {
      cur->peak_blocks = blocks;
      cur->kv_waste_at_peak = 1.0 - double(held) / double(blocks * Policy::block_size);
    }
  }

  std::vector<int32_t> prompt(std::mt19937_64& rng, int len) {
    std::uniform_int_distribution<int> d(0, eng->config().vocab_size - 1);
    std::vector<int32_t> p(len);
    for (auto& x : p) x = d(rng);
    return p;
  }
  sched::SamplingParams params(int out) const {
    sched::SamplingParams sp;
    sp.max_tokens = out;
    sp.ignore_eos = true;
    sp.temperature = o.temperature;
    return sp;
  }

  nlohmann::json throughput() {
    std::mt19937_64 rng(o.seed + 1);
    auto w = workload(o, rng);
    {  // warm-up: cuBLASLt plans of prefill shapes, allocator, clocks
      for (int i = 0; i < std::min(o.num_prompts, 8); ++i) eng->add_request(prompt(rng, w[i].first), params(4));
      run_all();
    }
    RunStats st;
    cur = &st;
    int64_t in_tok = 0, out_tok = 0;
    for (auto& [i, n] : w) { eng->add_request(prompt(rng, i), params(n)); in_tok += i; out_tok += n; }
    const int64_t pre0 = eng->scheduler().num_preemptions();
    auto t0 = Clock::now();
    const int64_t got = run_all();
    st.wall_s = secs(t0, Clock::now());
    cur = nullptr;
    PIE_CHECK(got == out_tok, "bench: generated ", got, " tokens, expected ", out_tok);
    const double frac = st.roofline_s / st.wall_s;
    std::printf("throughput: %d requests (%s, in %d / out %d), %.2f s: %.2f req/s, %.0f output tok/s, %.0f total tok/s\n",
                o.num_prompts, o.dataset.c_str(), o.input_len, o.output_len, st.wall_s, o.num_prompts / st.wall_s,
                out_tok / st.wall_s, (in_tok + out_tok) / st.wall_s);
    std::printf("roofline: %.2f s over %lld steps (%.1f TFLOP, %.1f TB) -> %.3f of the roofline; "
                "KV waste at peak %.2f%%; preemptions %lld\n",
                st.roofline_s, (long long)st.steps, st.flops / 1e12, st.bytes / 1e12, frac, 100 * st.kv_waste_at_peak,
                (long long)(eng->scheduler().num_preemptions() - pre0));
    std::printf("batch: max-num-seqs %d, max-num-batched-tokens %d\n", o.max_num_seqs, o.max_num_batched_tokens);
    nlohmann::json by_batch = nlohmann::json::array();
    for (auto& [b, s] : st.decode) {
      by_batch.push_back({{"batch", b}, {"steps", s.n}, {"step_ms", 1e3 * s.wall / s.n}, {"host_ms", 1e3 * s.host / s.n},
                          {"schedule_ms", 1e3 * s.sched / s.n}, {"apply_ms", 1e3 * s.apply / s.n},
                          {"roofline_ms", 1e3 * s.roof / s.n}, {"tok_per_s", b * s.n / s.wall}});
      if (s.idle_n > 0) by_batch.back()["device_idle_ms"] = 1e3 * s.idle / s.idle_n;
    }
    if (!st.decode.empty()) {
      auto& [b, s] = *st.decode.rbegin();
      std::printf("decode at batch %d: %.2f ms/step (roofline %.2f ms), host %.3f ms/step = %.2f%% of the step "
                  "(schedule %.3f, apply %.3f, rest %.3f ms)\n",
                  b, 1e3 * s.wall / s.n, 1e3 * s.roof / s.n, 1e3 * s.host / s.n, 100 * s.host / s.wall,
                  1e3 * s.sched / s.n, 1e3 * s.apply / s.n, 1e3 * (s.host - s.sched - s.apply) / s.n);
      // What the GPU lost to the host (the same as host time in the synchronous loop, about
      // none of it where asynchronous scheduling hides it).
      if (s.idle_n > 0)
        std::printf("decode at batch %d: device idle between steps %.3f ms/step = %.2f%% of the step (%lld steps)\n", b,
                    1e3 * s.idle / s.idle_n, 100 * s.idle / s.idle_n / (s.wall / s.n), static_cast<long long>(s.idle_n));
    }
    if (eng->runner().stats().nano_steps > 0)
      std::printf("nano-batch overlap: %lld steps ran as two nano-batches (all runs so far)\n",
                  static_cast<long long>(eng->runner().stats().nano_steps));
    return {{"mode", "throughput"}, {"num_prompts", o.num_prompts}, {"dataset", o.dataset}, {"input_len", o.input_len},
            {"output_len", o.output_len}, {"elapsed_s", st.wall_s}, {"output_tok_per_s", out_tok / st.wall_s},
            {"total_tok_per_s", (in_tok + out_tok) / st.wall_s}, {"roofline_s", st.roofline_s},
            {"roofline_fraction", frac}, {"kv_waste_at_peak", st.kv_waste_at_peak}, {"steps", st.steps},
            {"graph_steps", eng->runner().stats().graph_steps},
            {"nano_steps", eng->runner().stats().nano_steps}, {"decode_by_batch", by_batch}};
  }

  /// Where a decode step's time goes: `batch` sequences at about `ctx` tokens of context, run
  /// eagerly with an event around every op (graphs off), summed per op over the pure decode
  /// steps of exactly that batch size.
  nlohmann::json profile(int batch, int ctx) {
    auto& pr = eng->runner().profiler();
    pr.reset();
    pr.enable(true);
    std::mt19937_64 rng(o.seed + 3);
    // Enough output that every sequence is still running once the last prompt is prefilled.
    const int out = (batch * ctx + o.max_num_batched_tokens - 1) / o.max_num_batched_tokens + 8;
    for (int i = 0; i < batch; ++i) eng->add_request(prompt(rng, ctx), params(out));
    run_all();
    pr.enable(false);
    const std::string tag = "decode@" + std::to_string(batch);
    nlohmann::json ops = nlohmann::json::object();
    auto st = pr.steps().find(tag);
    auto tt = pr.totals_ms().find(tag);
    if (st == pr.steps().end() || tt == pr.totals_ms().end()) {
      std::printf("profile: no pure decode step at batch %d\n", batch);
      return ops;
    }
    double sum = 0;
    for (auto& [name, ms] : tt->second) sum += ms / st->second;
    std::printf("profile: decode step at batch %d, context ~%d (eager, %lld steps): %.3f ms of ops per step:", batch,
                ctx, (long long)st->second, sum);
    std::vector<std::pair<double, std::string>> v;
    for (auto& [name, ms] : tt->second) v.emplace_back(ms / st->second, name);
    std::sort(v.rbegin(), v.rend());
    for (auto& [ms, name] : v) {
      std::printf(" %s %.3f (%.0f%%)", name.c_str(), ms, 100 * ms / sum);
      ops[name] = ms;
    }
    std::printf("\n");
    return {{"batch", batch}, {"context", ctx}, {"steps", st->second}, {"ops_ms_per_step", ops}, {"sum_ms", sum}};
  }

  nlohmann::json latency() {
    std::mt19937_64 rng(o.seed + 2);
    std::vector<double> ttft, itl, itl_roof;
    double idle = 0;  // device idle before the timed batch-1 decode steps (StepTiming::device_idle_s)
    int64_t idle_n = 0;
    for (int it = 0; it < o.num_iters_warmup + o.num_iters; ++it) {
      RunStats st;
      cur = &st;
      eng->add_request(prompt(rng, o.input_len), params(o.output_len));
      auto t0 = Clock::now();
      Clock::time_point first{}, last{};
      int n = 0;
      while (eng->has_unfinished()) {
        int got = 0;
        for (const auto& ro : eng->step())
          for (const auto& so : ro.seqs) got += static_cast<int>(so.new_tokens.size());
        if (got > 0) { (n == 0 ? first : last) = Clock::now(); n += got; }
      }
      cur = nullptr;
      if (it < o.num_iters_warmup) continue;
      PIE_CHECK(n == o.output_len, "bench: latency run produced ", n, " tokens");
      ttft.push_back(secs(t0, first));
      if (n > 1) {
        itl.push_back(secs(first, last) / (n - 1));
        auto& b = st.decode[1];
        itl_roof.push_back(b.roof / std::max<int64_t>(b.n, 1));
        idle += b.idle;
        idle_n += b.idle_n;
      }
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v.empty() ? 0.0 : v[v.size() / 2];
    };
    const double t = median(ttft), i = median(itl), r = median(itl_roof);
    std::printf("latency (batch 1, in %d / out %d, %d iters): TTFT %.2f ms, ITL %.3f ms = %.1f tok/s; "
                "roofline ITL %.3f ms = %.1f tok/s -> %.3f of the roofline\n",
                o.input_len, o.output_len, o.num_iters, 1e3 * t, 1e3 * i, 1 / i, 1e3 * r, 1 / r, r / i);
    nlohmann::json j{{"mode", "latency"}, {"input_len", o.input_len}, {"output_len", o.output_len},
                     {"ttft_ms", 1e3 * t}, {"itl_ms", 1e3 * i}, {"decode_tok_per_s", 1 / i},
                     {"roofline_itl_ms", 1e3 * r}, {"roofline_fraction", r / i}};
    if (idle_n > 0) {
      std::printf("latency: device idle between batch-1 decode steps %.1f us/step = %.2f%% of the ITL (%lld steps)\n",
                  1e6 * idle / idle_n, 100 * idle / idle_n / i, static_cast<long long>(idle_n));
      j["device_idle_us"] = 1e6 * idle / idle_n;
    }
#if defined(PIE_DECODE_TIMELINE)
    ops::cuda::detail::decode_timeline_print("latency");  // the last layer of the last decode step
#endif
    return j;
  }
};

}  // namespace

template <class Model, class Policy>
int run_bench_with(const BenchOptions& o) {
  try {
    Bench<Model, Policy> b(o);
    PIE_CHECK(o.mode == "latency" || o.mode == "throughput" || o.mode == "both",
              "--mode must be throughput, latency or both");
    // both: latency, then throughput, on one engine (a large model is built once).
    nlohmann::json r = o.mode == "latency"      ? b.latency()
                       : o.mode == "throughput" ? b.throughput()
                                                : nlohmann::json{{"mode", "both"}, {"latency", b.latency()},
                                                                 {"throughput", b.throughput()}};
    if (o.profile) {
      const int batch = o.mode == "latency" ? 1 : std::min(o.max_num_seqs, o.num_prompts);
      r["profile"] = b.profile(batch, o.input_len + o.output_len / 2);
      // both: the batch-1 step too (the latency workload's ops), on the same engine.
      if (o.mode == "both" && batch != 1) r["profile_batch1"] = b.profile(1, o.input_len + o.output_len / 2);
    }
    const auto& mp = b.eng->runner().memory_plan();
    r["gemm_tflops"] = b.ceil.gemm_flops / 1e12;
    r["copy_tbps"] = b.ceil.copy_bw / 1e12;
    r["kv_blocks"] = mp.num_blocks;
    r["weights_gib"] = mp.gib(mp.weight_bytes);
    r["activation_gib"] = mp.gib(mp.activation_bytes);
    r["enforce_eager"] = o.enforce_eager;
    r["calculate_kv_scales"] = o.calculate_kv_scales;
    r["batch_invariant"] = o.batch_invariant;
    r["nano_batches"] = o.nano_batches;
    r["nano_min_rows"] = o.nano_min_rows;
    r["async_scheduling"] = o.async_scheduling;
    r["max_num_seqs"] = o.max_num_seqs;
    r["block_size"] = o.block_size;
    if (!o.output_json.empty()) std::ofstream(o.output_json) << r.dump(2) << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pie bench: %s\n", e.what());
    return 1;
  }
}

int run_bench(const BenchOptions& given) {
  // The engine type comes from the one registry (make_engine.hpp): the engine `pie serve` runs.
  int rc = 1;
  try {
    BenchOptions o = given;
    if (o.max_num_seqs <= 0 || o.max_num_batched_tokens <= 0) {  // unset: vLLM's defaults for this card
      const sched::BatchDefaults d = engine::cuda::batch_defaults_of_device(sched::EntryPoint::kOffline);
      if (o.max_num_seqs <= 0) o.max_num_seqs = d.max_num_seqs;
      if (o.max_num_batched_tokens <= 0) o.max_num_batched_tokens = d.max_num_batched_tokens;
    }
    EngineOptions eo;
    eo.model_dir = o.model_dir;
    eo.device = "cuda";
    eo.quantization = o.quantization;
    eo.block_size = o.block_size;
    eo.kv_cache_dtype = o.kv_cache_dtype;
    PIE_CHECK(!o.calculate_kv_scales || o.kv_cache_dtype == "fp8" || o.kv_cache_dtype == "fp8_e4m3",
              "--calculate-kv-scales needs --kv-cache-dtype fp8");
    with_cuda_engine_type(eo, [&]<class Model, class Policy>(const registry::Choice&) {
      rc = run_bench_with<Model, Policy>(o);
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pie bench: %s\n", e.what());
    return 1;
  }
  return rc;
}

}  // namespace pie::cli
