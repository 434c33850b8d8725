// offline_generate: the library API in 30 lines. Build an engine (a checkpoint directory, or
// the embedded default model when none is given), generate greedily for two prompts, print.
//   offline_generate [MODEL_DIR]
#include <cstdio>

#include <pie/pie.hpp>

int main(int argc, char** argv) {
  pie::EngineOptions opts;
  if (argc > 1) opts.model_dir = argv[1];            // empty → embedded tiny Qwen3
  opts.sched.max_model_len = 512;

  pie::Engine<pie::Qwen3, pie::CpuF32> engine(opts);  // fp32 weights and KV cache on the CPU

  pie::sched::SamplingParams params;
  params.temperature = 0.0f;                         // greedy
  params.max_tokens = 16;

  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4}, {10, 20, 30}};
  auto results = engine.generate(prompts, params);   // batched, continuous batching inside

  for (size_t i = 0; i < results.size(); ++i) {
    std::printf("prompt %zu (%s):", i, std::string(pie::sched::finish_reason_name(results[i].finish[0])).c_str());
    for (int32_t t : results[i].tokens[0]) std::printf(" %d", t);
    std::printf("\n");
  }
  return 0;
}
