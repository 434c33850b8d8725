// Encode/decode throughput of the Qwen3 tokenizer on the conformance corpus, one thread.
// bench/tokenizer/compare_hf.py runs this next to Hugging Face `tokenizers` on the same texts.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "pie/tokenizer/tokenizer.hpp"

namespace {
using pie::tokenizer::Tokenizer;

std::vector<std::string> corpus_texts() {
  std::ifstream f(std::string(PIE_SOURCE_DIR) + "/tests/reference/tokenizer/qwen3_encode.json");
  std::vector<std::string> out;
  for (const auto& c : nlohmann::json::parse(f))
    if (c.contains("text")) out.push_back(c["text"].get<std::string>());
  return out;
}

const Tokenizer* qwen() {
  static const std::string path = std::string(PIE_SOURCE_DIR) + "/../shared/models/Qwen3-8B/tokenizer.json";
  static const Tokenizer* t = std::filesystem::exists(path) ? new Tokenizer(Tokenizer::from_file(path)) : nullptr;
  return t;
}

// Encodes each corpus text with its own call (the pre-token cache is warm after the first pass).
void run_encode(benchmark::State& state, const Tokenizer& tok) {
  const auto texts = corpus_texts();
  std::size_t bytes = 0, ids = 0;
  for (const auto& t : texts) bytes += t.size();
  std::vector<std::int32_t> out;
  for (auto _ : state) {
    for (const auto& t : texts) {
      out.clear();
      tok.encode_into(t, out);
      ids += out.size();
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes * state.iterations()));
  state.counters["MB/s"] = benchmark::Counter(static_cast<double>(bytes) * state.iterations() / 1e6,
                                              benchmark::Counter::kIsRate);
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(ids), benchmark::Counter::kIsRate);
}

void BM_Qwen3Encode(benchmark::State& state) {
  if (!qwen()) return state.SkipWithError("Qwen3-8B tokenizer.json not found");
  run_encode(state, *qwen());
}
BENCHMARK(BM_Qwen3Encode)->Unit(benchmark::kMillisecond)->MinTime(2.0);

// The whole corpus as one text (cases joined by blank lines): one call, so the Python side of
// compare_hf.py pays no per-call overhead either.
void BM_Qwen3EncodeConcat(benchmark::State& state) {
  if (!qwen()) return state.SkipWithError("Qwen3-8B tokenizer.json not found");
  std::string text;
  for (const auto& t : corpus_texts()) text += (text.empty() ? "" : "\n\n") + t;
  std::vector<std::int32_t> out;
  for (auto _ : state) {
    out.clear();
    qwen()->encode_into(text, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["MB/s"] = benchmark::Counter(static_cast<double>(text.size()) * state.iterations() / 1e6,
                                              benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Qwen3EncodeConcat)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_EmbeddedEncode(benchmark::State& state) { run_encode(state, Tokenizer::embedded()); }
BENCHMARK(BM_EmbeddedEncode)->Unit(benchmark::kMillisecond);

void BM_Qwen3Decode(benchmark::State& state) {
  if (!qwen()) return state.SkipWithError("Qwen3-8B tokenizer.json not found");
  std::vector<std::vector<std::int32_t>> all;
  std::size_t bytes = 0;
  for (const auto& t : corpus_texts()) {
    all.push_back(qwen()->encode(t));
    bytes += t.size();
  }
  for (auto _ : state)
    for (const auto& ids : all) benchmark::DoNotOptimize(qwen()->decode(ids));
  state.counters["MB/s"] = benchmark::Counter(static_cast<double>(bytes) * state.iterations() / 1e6,
                                              benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Qwen3Decode)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
