/// \file generate.cpp
/// \brief `pie generate [DIR] --prompt-ids 1,2,3 | --prompt TEXT ...`.
#include "generate.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>

#include "pie/registry/make_engine.hpp"
#if defined(PIE_HAVE_TOKENIZER)
#include "pie/tokenizer/embedded.hpp"
#include "pie/tokenizer/tokenizer.hpp"
#include "pie/tokenizer/tokenizer_json.hpp"
#endif

namespace pie::cli {

CLI::App* add_generate_command(CLI::App& app, GenerateOptions& o) {
  CLI::App* s = app.add_subcommand("generate", "Generate from prompts offline and print tokens and speed");
  s->add_option("model", o.model_dir, "Hugging Face checkpoint directory (default: the embedded model)");
  s->add_option("--prompt-ids", o.prompt_ids, "Prompt as comma-separated token ids");
  s->add_option("--prompt", o.prompt, "Prompt text (needs tokenizer.json, or the embedded model)");
  s->add_option("--max-tokens,--max_tokens", o.max_tokens, "Tokens to generate")->capture_default_str();
  s->add_option("--n", o.n, "Sequences per prompt")->capture_default_str();
  s->add_option("--temperature", o.temperature, "0 → greedy")->capture_default_str();
  s->add_option("--top-p,--top_p", o.top_p)->capture_default_str();
  s->add_option("--top-k,--top_k", o.top_k)->capture_default_str();
  s->add_option("--min-p,--min_p", o.min_p)->capture_default_str();
  s->add_option("--seed", o.seed, "Sampling seed (and dummy-weight seed)");
  s->add_flag("--ignore-eos,--ignore_eos", o.ignore_eos, "Keep generating past EOS");
  s->add_option("--load-format,--load_format", o.load_format, "auto | safetensors | dummy")->capture_default_str();
  s->add_option("--dtype", o.dtype, "float32 | bfloat16")->capture_default_str();
  s->add_option("--quantization,-q", o.quantization, "fp8: fp8 projection weights (default: config.json's)")
      ->check(CLI::IsMember({"fp8"}));
  s->add_option("--tensor-parallel-size,--tensor_parallel_size", o.tensor_parallel_size,
                "Ranks of a tensor-parallel group (CPU threads meeting in all-reduces)")
      ->capture_default_str();
  s->add_option("--max-model-len,--max_model_len", o.max_model_len)->capture_default_str();
  s->add_option("--num-threads", o.num_threads, "0 → all cores")->capture_default_str();
  s->add_option("--num-kv-blocks", o.num_kv_blocks, "0 → from --kv-cache-gib")->capture_default_str();
  s->add_option("--kv-cache-gib", o.kv_cache_gib, "KV cache size")->capture_default_str();
  s->add_flag("--async-scheduling,--async_scheduling", o.async_scheduling,
              "Plan step N+1 while step N computes (vLLM's); the tokens do not change");
  return s;
}

namespace {

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t used = 0;
    long v = 0;
    try { v = std::stol(item, &used); } catch (...) { used = 0; }
    PIE_CHECK(used == item.size(), "--prompt-ids: '", item, "' is not a token id");
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

int run(const GenerateOptions& o) {
  using Clock = std::chrono::steady_clock;
  EngineOptions eo;
  eo.model_dir = o.model_dir;
  eo.load_format = o.load_format;
  eo.sched.max_model_len = o.max_model_len;
  eo.sched.max_num_batched_tokens = std::max(eo.sched.max_num_batched_tokens, o.max_model_len);
  eo.num_kv_blocks = o.num_kv_blocks;
  eo.kv_cache_bytes = static_cast<size_t>(o.kv_cache_gib * (1ull << 30));
  eo.num_threads = o.num_threads;
  eo.sched.async_scheduling = o.async_scheduling;
  if (o.seed >= 0) eo.seed = static_cast<uint64_t>(o.seed);
  eo.dtype = o.dtype;
  eo.quantization = o.quantization;
  eo.tensor_parallel_size = o.tensor_parallel_size;

#if defined(PIE_HAVE_TOKENIZER)
  std::optional<tokenizer::Tokenizer> tok;
  if (o.model_dir.empty()) tok = tokenizer::Tokenizer::embedded();
  else if (std::filesystem::exists(std::filesystem::path(o.model_dir) / "tokenizer.json"))
    tok = tokenizer::Tokenizer::from_file((std::filesystem::path(o.model_dir) / "tokenizer.json").string());
#endif
  std::vector<int32_t> prompt;
  if (!o.prompt_ids.empty()) prompt = parse_ids(o.prompt_ids);
  else if (!o.prompt.empty()) {
#if defined(PIE_HAVE_TOKENIZER)
    PIE_CHECK(tok.has_value(), "--prompt needs a tokenizer: ", o.model_dir, " has no tokenizer.json (use --prompt-ids)");
    prompt = tok->encode(o.prompt);
#else
    PIE_FAIL("--prompt needs pie built with its tokenizer (PCRE2); use --prompt-ids");
#endif
  }
  PIE_CHECK(!prompt.empty(), "give a prompt: --prompt-ids 1,2,3 or --prompt TEXT");

  const auto t0 = Clock::now();
  std::unique_ptr<AnyEngine> built = make_engine(eo);
  AnyEngine& engine = *built;
  const auto t1 = Clock::now();
  const auto& cfg = engine.config();
  std::fprintf(stderr, "model: %s (%s), %d layers, hidden %d, vocab %d; loaded in %.2f s\n",
               o.model_dir.empty() ? "embedded default" : o.model_dir.c_str(), cfg.architecture_name.c_str(),
               cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size,
               std::chrono::duration<double>(t1 - t0).count());

  sched::SamplingParams p;
  p.n = o.n;
  p.max_tokens = o.max_tokens;
  p.temperature = o.temperature;
  p.top_p = o.top_p;
  p.top_k = o.top_k;
  p.min_p = o.min_p;
  p.ignore_eos = o.ignore_eos;
  if (o.seed >= 0) p.seed = static_cast<uint64_t>(o.seed);
  engine.add_request(prompt, p);

  std::vector<std::vector<int32_t>> out(o.n);
  std::vector<sched::FinishReason> finish(o.n, sched::FinishReason::None);
  double first_step_s = 0;
  int steps = 0;
  const auto s0 = Clock::now();
  while (engine.has_unfinished()) {
    auto ros = engine.step();
    if (steps++ == 0) first_step_s = std::chrono::duration<double>(Clock::now() - s0).count();
    for (auto& ro : ros)
      for (auto& so : ro.seqs) {
        out[so.index].insert(out[so.index].end(), so.new_tokens.begin(), so.new_tokens.end());
        if (so.finish != sched::FinishReason::None) finish[so.index] = so.finish;
      }
  }
  const double total_s = std::chrono::duration<double>(Clock::now() - s0).count();

  size_t generated = 0;
  for (int i = 0; i < o.n; ++i) {
    generated += out[i].size();
    std::cout << "[" << i << "] tokens:";
    for (int32_t t : out[i]) std::cout << ' ' << t;
    std::cout << "\n[" << i << "] finish: " << sched::finish_reason_name(finish[i]) << "\n";
#if defined(PIE_HAVE_TOKENIZER)
    if (tok) std::cout << "[" << i << "] text: " << tok->decode(out[i]) << "\n";
#endif
  }
  // Decode speed excludes the first step (the prefill, which also samples the first token).
  const double decode_s = total_s - first_step_s;
  const size_t decode_tokens = generated > static_cast<size_t>(o.n) ? generated - o.n : 0;
  std::cout << "prompt: " << prompt.size() << " tokens, prefill " << first_step_s * 1e3 << " ms ("
            << prompt.size() / first_step_s << " tokens/s)\n";
  std::cout << "generated: " << generated << " tokens in " << total_s << " s, decode "
            << (decode_s > 0 ? decode_tokens / decode_s : 0.0) << " tokens/s\n";
  if (o.async_scheduling)
    std::cout << "async scheduling: " << engine.stats().steps_scheduled_ahead << " of " << steps
              << " steps planned while the previous one computed\n";
  return 0;
}

}  // namespace

int run_generate(const GenerateOptions& o) {
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace pie::cli
