#pragma once
/// \file serve_options.hpp
/// \brief The flags of `pie serve`, spelled as vLLM spells them; each long flag is accepted
/// with dashes and with underscores (`--max-model-len` and `--max_model_len`). Registration
/// uses CLI11 so `--help` lists them all and bad values fail before anything loads.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "pie/sched/scheduler_config.hpp"

namespace pie::server {

/// \brief Everything `pie serve` can be told.
struct ServeOptions {
  std::string model;  ///< model directory; empty → embedded default
  std::string host = "0.0.0.0";
  int port = 8000;
  std::string api_key;  ///< also PIE_API_KEY
  std::vector<std::string> served_model_name;
  int max_model_len = 0;  ///< 0 → the model's max_position_embeddings
  int tensor_parallel_size = 1;
  double gpu_memory_utilization = 0.9;
  int block_size = 16;
  int max_num_seqs = 0;            ///< 0 → vLLM's default for the card (sched/batch_defaults.hpp)
  int max_num_batched_tokens = 0;  ///< 0 → vLLM's default for the card (and ≥ max_model_len without chunking)
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;
  int long_prefill_token_threshold = 0;     ///< vLLM's: prompt tokens per sequence per step (0: no cap)
  /// decode-first budget (pie's): auto (scaled with the running decodes), 0 → no cap (vLLM), N tokens
  int max_prefill_tokens_with_decodes = sched::SchedulerConfig::kAutoPrefillBudget;
  std::string kv_cache_dtype = "auto";
  std::string quantization;  ///< vLLM's --quantization: fp8, or empty (config.json's quantization_config)
  std::string dtype = "auto";
  double swap_space = 4.0;  ///< GiB of host memory for swapped-out KV blocks
  bool enforce_eager = false;
  bool calculate_kv_scales = false;  ///< vLLM's --calculate-kv-scales (fp8 KV: scales from the first forward)
  bool batch_invariant = false;  ///< vLLM's VLLM_BATCH_INVARIANT=1
  bool async_scheduling = false;  ///< vLLM's --async-scheduling: plan step N+1 while step N runs
  uint64_t seed = 0;
  std::string load_format = "auto";
  std::string generation_config = "auto";
  std::string tokenizer;  ///< dir or tokenizer.json; "embedded"; empty → the model's
  std::string chat_template;
  std::string reasoning_parser;
  bool enable_auto_tool_choice = false;  ///< tool_choice auto (and required/named) allowed
  std::string tool_call_parser;          ///< "hermes": tool calls parsed from the output
  /// Structured outputs: length-bounded strings of maxLength 1..N compiled ahead, in the
  /// background (structured::Compiler::prewarm_bounded_strings); 0 → none.
  int structured_prewarm_max_length = 16;
  std::string device = "auto";        ///< auto → cuda when built with it and a model is given
  int64_t kv_cache_memory_bytes = 0;  ///< 0 → from --gpu-memory-utilization (GPU), 256 MiB (CPU)
  int64_t max_request_body_bytes = 16ll << 20;
  int num_threads = 0;  ///< CPU backend threads; 0 → all cores
  bool disable_log_requests = false;
  double shutdown_timeout = 30.0;  ///< seconds in-flight requests may run after SIGTERM/SIGINT
  double request_timeout = 10.0;   ///< a request must arrive whole within this (else 408)
  double timeout_keep_alive = 5.0; ///< vLLM's (uvicorn's): idle keep-alive connections close after this
};

namespace detail {
/// "--max-model-len,--max_model_len" from "max-model-len".
inline std::string both_spellings(const std::string& dashed) {
  std::string under = dashed;
  for (char& c : under)
    if (c == '-') c = '_';
  return under == dashed ? "--" + dashed : "--" + dashed + ",--" + under;
}
/// "!--no-x-y,!--no_x_y": CLI11's negated names, which set the flag to false.
inline std::string negated(const std::string& dashed) {
  const std::string both = both_spellings("no-" + dashed);
  std::string out = "!";
  for (char c : both) {
    out += c;
    if (c == ',') out += '!';
  }
  return out;
}

/// --max-prefill-tokens-with-decodes: "auto" (the scheduler's kAutoPrefillBudget) or a token count
/// (0: no cap). Shared by `pie serve` and `pie bench` so both spell it the same.
inline CLI::Option* add_prefill_budget_flag(CLI::App& app, int& budget, const std::string& help) {
  auto* opt = app.add_option_function<std::string>(
      both_spellings("max-prefill-tokens-with-decodes"),
      [&budget](const std::string& v) {
        budget = v == "auto" ? sched::SchedulerConfig::kAutoPrefillBudget : std::stoi(v);
      },
      help);
  opt->check(CLI::Validator(
      [](std::string& v) -> std::string {
        if (v == "auto") return {};
        size_t used = 0;
        long n = -1;
        try {
          n = std::stol(v, &used);
        } catch (...) {
        }
        if (used == v.size() && n >= 0 && n <= (1 << 24)) return {};
        return "must be auto or a token count in [0, 16777216], got '" + v + "'";
      },
      "auto|INT"));
  opt->default_str(budget == sched::SchedulerConfig::kAutoPrefillBudget ? "auto" : std::to_string(budget));
  return opt;
}
}  // namespace detail

/// vLLM's escape hatch for a --max-model-len above the model's max_position_embeddings.
inline bool allow_long_max_model_len() {
  const char* v = std::getenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN");
  if (!v) return false;
  const std::string s = v;
  return s == "1" || s == "true" || s == "True" || s == "TRUE";
}

/// The refusal, worded after vLLM's.
inline std::string long_max_model_len_message(int requested, int derived) {
  return "User-specified max_model_len (" + std::to_string(requested) +
         ") is greater than the derived max_model_len (max_position_embeddings=" + std::to_string(derived) +
         " in the model's config.json). To allow overriding this maximum, set the env var "
         "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. Use it with caution: positions past the model's trained length "
         "give unreliable output.";
}

/// Declares every flag of `serve` on `app`, writing into `o`.
inline void add_serve_flags(CLI::App& app, ServeOptions& o) {
  using detail::both_spellings;
  using detail::negated;
  app.add_option("model", o.model,
                 "Model directory (config.json, *.safetensors, tokenizer.json); "
                 "none → the embedded tiny default model on the CPU");
  app.add_option("--model", o.model, "Model directory (same as the positional argument)");
  app.add_option(both_spellings("host"), o.host, "Address to listen on")->capture_default_str();
  app.add_option(both_spellings("port"), o.port, "Port to listen on (0 → any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app.add_option(both_spellings("api-key"), o.api_key, "Require 'Authorization: Bearer KEY' on /v1 routes")
      ->envname("PIE_API_KEY");
  app.add_option(both_spellings("served-model-name"), o.served_model_name,
                 "Model name(s) the API answers to; the first is reported (default: the model path)")
      ->expected(1, -1);
  app.add_option(both_spellings("max-model-len"), o.max_model_len,
                 "Context length: prompt + output tokens (default: the model's)")
      ->check(CLI::Range(1, 1 << 24));
  app.add_option(both_spellings("tensor-parallel-size"), o.tensor_parallel_size, "GPUs to shard the model over")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option(both_spellings("gpu-memory-utilization"), o.gpu_memory_utilization,
                 "Fraction of GPU memory for weights, activations and KV cache (GPU backend)")
      ->check(CLI::Range(0.01, 1.0))
      ->capture_default_str();
  app.add_option(both_spellings("block-size"), o.block_size, "Tokens per KV-cache block")
      ->check(CLI::IsMember({8, 16, 32}))
      ->capture_default_str();
  app.add_option(both_spellings("max-num-seqs"), o.max_num_seqs,
                 "Sequences running at once (default: vLLM's for the card: 1024 on GPUs of 70 GiB or more other "
                 "than an A100, else 256; 256 on the CPU)")
      ->check(CLI::Range(1, 1 << 16));
  app.add_option(both_spellings("max-num-batched-tokens"), o.max_num_batched_tokens,
                 "Tokens computed per engine step (default: vLLM's `vllm serve` value for the card: 8192 on GPUs of "
                 "70 GiB or more other than an A100, else 2048; 8192 on the CPU; without chunked prefill at least "
                 "max-model-len)")
      ->check(CLI::Range(1, 1 << 24));
  app.add_flag(both_spellings("enable-prefix-caching") + "," + negated("enable-prefix-caching"),
               o.enable_prefix_caching, "Reuse KV blocks of identical prompt prefixes (default on)");
  app.add_flag(both_spellings("enable-chunked-prefill") + "," + negated("enable-chunked-prefill"),
               o.enable_chunked_prefill, "Split long prompts across engine steps (default on)");
  app.add_option(both_spellings("long-prefill-token-threshold"), o.long_prefill_token_threshold,
                 "Prompt tokens one sequence computes per step (0: no cap)")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  detail::add_prefill_budget_flag(
      app, o.max_prefill_tokens_with_decodes,
      "Decode-first budget: prefill tokens a step adds to running decodes, bounding the inter-token latency that "
      "new arrivals cause. auto: max(256, 1.5 x running decodes); 0: up to --max-num-batched-tokens, as vLLM");
  app.add_option(both_spellings("kv-cache-dtype"), o.kv_cache_dtype, "KV-cache dtype")
      ->check(CLI::IsMember({"auto", "bfloat16", "float16", "float32", "fp8", "fp8_e4m3"}))
      ->capture_default_str();
  app.add_option(both_spellings("quantization") + ",-q", o.quantization,
                 "fp8: fp8 projection weights (a bf16 checkpoint is quantized per channel at load; default: "
                 "config.json's quantization_config)")
      ->check(CLI::IsMember({"fp8"}));
  app.add_option(both_spellings("dtype"), o.dtype, "Weight and activation dtype")
      ->check(CLI::IsMember({"auto", "bfloat16", "float16", "half", "float32", "float"}))
      ->capture_default_str();
  app.add_option(both_spellings("swap-space"), o.swap_space,
                 "GiB of host memory for swapped-out KV blocks (GPU backend; the CPU backend recomputes "
                 "preempted sequences)")
      ->check(CLI::Range(0.0, 1024.0))
      ->capture_default_str();
  app.add_flag(both_spellings("enforce-eager"), o.enforce_eager, "Never capture CUDA graphs (GPU backend)");
  app.add_flag(both_spellings("calculate-kv-scales"), o.calculate_kv_scales,
               "fp8 KV cache: per-head K/V scales from the first forward's amax (default: the checkpoint's "
               "k_scale/v_scale, else 1)");
  app.add_flag(both_spellings("async-scheduling"), o.async_scheduling,
               "Plan the next engine step while the current one computes (vLLM's): the sampled ids are fed to "
               "the next step where the runner left them. Steps of requests that need the host sampler "
               "(penalties, logit_bias, min_tokens, logprobs, structured outputs, prompt_logprobs) run "
               "synchronously. Tokens do not change. Off by default");
  app.add_flag(both_spellings("batch-invariant"), o.batch_invariant,
               "Bitwise batch-invariant kernels: a request's output does not depend on what it is batched "
               "with (GPU backend, slower decode; the CPU backend always is)")
      ->envname("VLLM_BATCH_INVARIANT");
  app.add_option(both_spellings("seed"), o.seed, "Seed of the engine's random generator")->capture_default_str();
  app.add_option(both_spellings("load-format"), o.load_format,
                 "auto|safetensors: read the weights; dummy: random weights of the model's shape")
      ->check(CLI::IsMember({"auto", "safetensors", "dummy"}))
      ->capture_default_str();
  app.add_option(both_spellings("generation-config"), o.generation_config,
                 "auto: sampling defaults from the model's generation_config.json; vllm: neutral defaults")
      ->check(CLI::IsMember({"auto", "vllm"}))
      ->capture_default_str();
  app.add_option(both_spellings("tokenizer"), o.tokenizer,
                 "Tokenizer directory or tokenizer.json (default: the model's); 'embedded' → the built-in one");
  app.add_option(both_spellings("chat-template"), o.chat_template,
                 "Jinja chat template file (default: the one in tokenizer_config.json)")
      ->check(CLI::ExistingFile);
  app.add_option(both_spellings("reasoning-parser"), o.reasoning_parser, "Return <think>…</think> as reasoning_content")
      ->check(CLI::IsMember({"qwen3"}));
  auto* parser = app.add_option(both_spellings("tool-call-parser"), o.tool_call_parser,
                                "Parse tool calls out of the output: hermes (<tool_call>{...}</tool_call>, "
                                "Qwen2.5/Qwen3)")
                     ->check(CLI::IsMember({"hermes"}));
  app.add_flag(both_spellings("enable-auto-tool-choice"), o.enable_auto_tool_choice,
               "Let the model decide when to call tools (tool_choice auto); needs --tool-call-parser")
      ->needs(parser);
  app.add_option(both_spellings("structured-prewarm-max-length"), o.structured_prewarm_max_length,
                 "Structured outputs: compile strings of maxLength 1..N (minLength 0..2) ahead, in the "
                 "background at low priority, so a new schema's first request does not pay for them (0: off)")
      ->check(CLI::Range(0, 128))
      ->capture_default_str();
  app.add_option(both_spellings("device"), o.device, "Where the model runs")
      ->check(CLI::IsMember({"auto", "cuda", "cpu"}))
      ->capture_default_str();
  app.add_option(both_spellings("kv-cache-memory-bytes"), o.kv_cache_memory_bytes,
                 "Bytes of KV cache (overrides --gpu-memory-utilization; CPU default 256 MiB)")
      ->check(CLI::Range(int64_t{1} << 16, int64_t{1} << 50));
  app.add_option(both_spellings("max-request-body-bytes"), o.max_request_body_bytes,
                 "Larger request bodies get HTTP 413")
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 34))
      ->capture_default_str();
  app.add_option(both_spellings("num-threads"), o.num_threads, "CPU backend threads (0 → all cores)")
      ->check(CLI::Range(0, 4096));
  app.add_flag(both_spellings("disable-log-requests"), o.disable_log_requests, "Do not log each request");
  app.add_option(both_spellings("shutdown-timeout"), o.shutdown_timeout,
                 "On SIGTERM/SIGINT: seconds to let in-flight requests finish (new ones get 503) before "
                 "aborting the rest; 0 aborts at once")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_option(both_spellings("request-timeout"), o.request_timeout,
                 "Seconds a client has to send a whole request (line, headers, body); slower or idle "
                 "connections get HTTP 408")
      ->check(CLI::Range(0.05, 86400.0))
      ->capture_default_str();
  app.add_option(both_spellings("timeout-keep-alive"), o.timeout_keep_alive,
                 "Seconds an idle keep-alive connection stays open between requests")
      ->check(CLI::Range(0.05, 86400.0))
      ->capture_default_str();
}

}  // namespace pie::server
