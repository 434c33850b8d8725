#pragma once
/// \file generate.hpp
/// \brief The `generate` subcommand of the `pie` program: run prompts through an Engine
/// offline and print the tokens (and text, when a tokenizer is at hand) and the speed.
#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace pie::cli {

/// \brief Flags of `pie generate`.
struct GenerateOptions {
  std::string model_dir;            ///< empty → embedded default model
  std::string load_format = "auto";
  std::string dtype = "float32";    ///< float32 | bfloat16 (weights and KV cache)
  std::string quantization;         ///< fp8 | empty (config.json's quantization_config)
  std::string prompt_ids;           ///< "1,2,3"
  std::string prompt;               ///< text (needs a tokenizer: tokenizer.json or embedded)
  int max_tokens = 32;
  int n = 1;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int top_k = 0;
  float min_p = 0.0f;
  int64_t seed = -1;                ///< < 0: unseeded
  bool ignore_eos = false;
  int max_model_len = 4096;
  int num_threads = 0;
  int num_kv_blocks = 0;
  int tensor_parallel_size = 1;     ///< CPU ranks of a simulated tensor-parallel group
  double kv_cache_gib = 0.25;
  bool async_scheduling = false;    ///< vLLM's --async-scheduling (same tokens; the CPU runner overlaps)
};

/// Adds `generate` and its flags to `app`.
CLI::App* add_generate_command(CLI::App& app, GenerateOptions& opts);

/// Runs it; returns the process exit code (0 ok, 1 on an error, which is printed).
int run_generate(const GenerateOptions& opts);

}  // namespace pie::cli
