#pragma once
/// \file bench.hpp
/// \brief The `bench` subcommand of the `pie` program (CUDA builds): offline throughput over N
/// requests and batch-1 latency (TTFT, ITL) on one GPU, each with its roofline measured in the
/// same run. Built into `pie` when CUDA is found, and as the standalone `pie_bench` (which needs
/// neither the tokenizer nor the server).
#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace pie::cli {

/// \brief Flags of `pie bench` (vLLM's `benchmark_throughput` / `benchmark_latency` spellings).
struct BenchOptions {
  std::string model_dir;              ///< folder with config.json (weights too unless dummy)
  std::string load_format = "dummy";  ///< dummy | auto | safetensors
  std::string mode = "throughput";    ///< throughput | latency
  std::string quantization;           ///< fp8 | empty (config.json's quantization_config)
  std::string dataset = "random";     ///< random (fixed lengths) | sharegpt (ShareGPT-like random lengths)
  int num_prompts = 256;
  int input_len = 128;
  int output_len = 128;
  int num_iters = 5;                  ///< latency: timed requests
  int num_iters_warmup = 2;
  int max_num_seqs = 0;               ///< 0 → vLLM's default for the card (sched/batch_defaults.hpp)
  int max_num_batched_tokens = 0;     ///< 0 → vLLM's default for the card (the `LLM` class's)
  int long_prefill_token_threshold = 0;
  int max_prefill_tokens_with_decodes = 0;
  int max_model_len = 0;              ///< 0 → input + output (+ margin), capped by the model
  int block_size = 16;                ///< KV block size in tokens: 8 or 16 (compile-time policies)
  std::string kv_cache_dtype = "auto"; ///< auto (bf16) | fp8 (e4m3, blocks of 16)
  double gpu_memory_utilization = 0.9;
  double swap_space = 4.0;            ///< GiB
  std::string preemption_mode = "recompute";
  bool enforce_eager = false;
  bool calculate_kv_scales = false;   ///< fp8 KV: scales from the first forward's amax (vLLM's flag)
  bool async_scheduling = false;      ///< vLLM's --async-scheduling
  bool batch_invariant = false;       ///< one GEMM algorithm per shape, prefill attention for every row
  int nano_batches = 0;               ///< 2: overlapped nano-batches (engine/nano_split.hpp); 0: PIE_NANO_BATCHES
  int nano_min_rows = 0;              ///< > 0: split every step of that many decode rows; 0: the cost model
  bool enable_prefix_caching = false;
  float temperature = 0.0f;           ///< 0 → greedy (what HF generate does by default)
  uint64_t seed = 0;
  std::string output_json;            ///< write the results here too
  bool profile = false;               ///< per-op event timing of decode steps after the run
};

CLI::App* add_bench_command(CLI::App& app, BenchOptions& opts);
int run_bench(const BenchOptions& opts);

}  // namespace pie::cli
