// offline_generate: pie::LLM in 40 lines. Load a checkpoint directory (or the embedded default
// model when none is given), complete two text prompts in one batch, then answer a chat,
// streaming its text as it arrives.
//   offline_generate [MODEL_DIR]
#include <cstdio>
#include <string>

#include <pie/pie.hpp>

int main(int argc, char** argv) try {
  pie::llm::LLMOptions opts;
  opts.engine.sched.max_model_len = 512;
  pie::LLM llm(argc > 1 ? argv[1] : "", opts);  // fp32 on the CPU; empty → embedded tiny Qwen3

  pie::llm::SamplingParams params;
  params.temperature = 0.0f;  // greedy
  params.max_tokens = 16;

  // Both prompts run batched (continuous batching inside the engine).
  for (const auto& out : llm.generate({"The capital of France is", "Once upon a time"}, params))
    std::printf("%s|%s| (%zu tokens, %s)\n", out.prompt.c_str(), out.outputs[0].text.c_str(),
                out.outputs[0].token_ids.size(), out.outputs[0].finish_reason.c_str());

  // A chat, rendered by the model's own template; tokens printed as they arrive.
  pie::llm::ChatOptions chat;
  chat.chat_template_kwargs["enable_thinking"] = false;
  params.stop = {"\n\n"};
  auto reply = llm.chat({{"system", "You are terse."}, {"user", "Say hello."}}, params, chat,
                        [](const pie::llm::Delta& d) {
                          std::fwrite(d.text.data(), 1, d.text.size(), stdout);
                          if (!d.finish_reason.empty()) std::printf(" [%s]\n", std::string(d.finish_reason).c_str());
                        });
  std::printf("chat prompt: %zu tokens, reply: %zu tokens\n", reply.prompt_token_ids.size(),
              reply.outputs[0].token_ids.size());
  return 0;
} catch (const pie::Error& e) {
  std::fprintf(stderr, "offline_generate: %s\n", e.what());
  return 1;
}
