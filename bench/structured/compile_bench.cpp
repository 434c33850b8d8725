// structured_compile_bench: how long a never-seen JSON schema takes to become its first token
// mask, on the host, at a real vocabulary — the cost behind a first structured request's extra
// latency. For each thread count: a fresh structured::Compiler (its TokenizerInfo timed), then
// each schema of the file (one JSON document per line; the same schemas for every thread count,
// each new to that compiler, whose cache starts empty): schema → XGrammar grammar, the full
// compile, the first mask, and the compile again (the cache). Prints the median compile last.
// With a prewarm length P > 0, each compiler first prewarms the strings of maxLength 1..P
// (Compiler::prewarm_bounded_strings, timed to its end) before the schemas.
//
//   structured_compile_bench <tokenizer.json> <schemas.jsonl> <model vocab> <stop id,...> [threads,...] [P]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "pie/structured/compiler.hpp"
#include "pie/tokenizer/tokenizer_json.hpp"

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
std::vector<int> ints(const std::string& csv) {
  std::vector<int> v;
  std::stringstream ss(csv);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoi(x));
  return v;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: " << argv[0] << " <tokenizer.json> <schemas.jsonl> <model vocab> <stop ids> [threads,...]\n";
    return 2;
  }
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  const auto tok = pie::tokenizer::Tokenizer::from_file(argv[1]);
  std::printf("tokenizer load %.1f ms (vocab %d)\n", ms_since(t0), tok.vocab_size());
  std::vector<std::string> schemas;
  std::ifstream f(argv[2]);
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) schemas.push_back(line);
  const int vocab = std::stoi(argv[3]);
  const std::vector<int> stop = ints(argv[4]);
  const std::vector<int> threads = argc > 5 ? ints(argv[5]) : std::vector<int>{1, 8, 16};
  const int prewarm = argc > 6 ? std::stoi(argv[6]) : 0;
  for (size_t ti = 0; ti < threads.size(); ++ti) {
    std::vector<double> compiles;
    t0 = Clock::now();
    pie::structured::Compiler c(tok, vocab, std::vector<int32_t>(stop.begin(), stop.end()), threads[ti]);
    std::printf("threads %d: TokenizerInfo + compiler %.1f ms\n", threads[ti], ms_since(t0));
    if (prewarm > 0) {
      t0 = Clock::now();
      c.prewarm_bounded_strings(prewarm);
      c.wait_prewarm();
      std::printf("threads %d: prewarm of maxLength 1..%d %.1f ms\n", threads[ti], prewarm, ms_since(t0));
    }
    for (size_t k = 0; k < schemas.size(); ++k) {
      pie::sched::StructuredOutput so{pie::sched::StructuredOutput::Kind::JsonSchema, schemas[k]};
      t0 = Clock::now();
      (void)xgrammar::Grammar::FromJSONSchema(schemas[k], false);
      const double parse = ms_since(t0);
      t0 = Clock::now();
      auto p = c.processor(so);
      const double compile = ms_since(t0);
      compiles.push_back(compile);
      std::vector<int32_t> mask(pie::sched::bitmask_words(c.vocab_size()));
      std::vector<int32_t> prompt{1}, out;
      t0 = Clock::now();
      std::static_pointer_cast<pie::structured::GrammarProcessor>(p)->fill_mask(0, prompt, out, mask);
      const double first = ms_since(t0);
      t0 = Clock::now();
      (void)c.processor(so);
      const double again = ms_since(t0);
      std::printf("  schema %zu (%zu B): to grammar %.2f ms, compile %.1f ms, first mask %.2f ms, cached %.2f ms\n", k,
                  schemas[k].size(), parse, compile, first, again);
    }
    std::sort(compiles.begin(), compiles.end());
    if (!compiles.empty())
      std::printf("threads %d%s: compile median %.1f ms, max %.1f ms over %zu schemas\n", threads[ti],
                  prewarm > 0 ? (" prewarm " + std::to_string(prewarm)).c_str() : "", compiles[compiles.size() / 2],
                  compiles.back(), compiles.size());
  }
  return 0;
}
