#pragma once
/// \file batch_defaults.hpp
/// \brief vLLM's defaults for max_num_seqs and max_num_batched_tokens, which depend on the card
/// and the entry point (vLLM's `EngineArgs.get_batch_defaults`): cards of 70 GiB or more other
/// than an A100 run 1,024 sequences a step, with 16,384 tokens for the offline `LLM` class and
/// 8,192 for `vllm serve`; smaller cards 256 sequences with 8,192 and 2,048 tokens. (vLLM keeps
/// the A100 on the small values: its PR 17885 measured the large token budget slower there.)
/// Measured on an H100 with `pie bench`, 2048 × (128, 128): 1,024 sequences and 16,384 tokens
/// gave +4.3% (bf16) and +6.0% (fp8) over 512 and 8,192 (docs/benchmarks.md, 2026-12-08).
#include <cctype>
#include <cstddef>
#include <string>
#include <string_view>

#include "pie/sched/scheduler_config.hpp"

namespace pie::sched {

/// \brief Which program asks: vLLM's usage context (LLM_CLASS, OPENAI_API_SERVER).
enum class EntryPoint {
  kOffline,  ///< `pie bench`, pie::LLM (vLLM's `LLM` class and its benchmarks)
  kServer,   ///< `pie serve` (`vllm serve`)
};

/// \brief The two scheduler knobs an unset flag takes.
struct BatchDefaults {
  int max_num_seqs;
  int max_num_batched_tokens;
};

/// The GPU rule: `gpu_memory_bytes` is the card's total memory and `gpu_name` its name (as the
/// CUDA runtime reports them). Without a GPU (gpu_memory_bytes 0: pie's CPU engine, a reference
/// rather than a server of vLLM's CPU backend) pie keeps SchedulerConfig's: 256 sequences and
/// 8,192 tokens.
inline BatchDefaults batch_defaults(EntryPoint entry, size_t gpu_memory_bytes, std::string_view gpu_name) {
  if (gpu_memory_bytes == 0) {
    const SchedulerConfig cpu;
    return {cpu.max_num_seqs, cpu.max_num_batched_tokens};
  }
  constexpr size_t kLargeCard = size_t{70} << 30;
  std::string name(gpu_name);  // vLLM matches "a100" in the lower-cased device name
  for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const bool large = gpu_memory_bytes >= kLargeCard && name.find("a100") == std::string::npos;
  if (large) return {1024, entry == EntryPoint::kOffline ? 16384 : 8192};
  return {256, entry == EntryPoint::kOffline ? 8192 : 2048};
}

}  // namespace pie::sched
