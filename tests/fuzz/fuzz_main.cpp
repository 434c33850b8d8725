// libFuzzer entry: one binary per target, picked by PIE_FUZZ_TARGET (request, tokenizer,
// chat_template, safetensors). Built only with -DPIE_BUILD_FUZZERS=ON and clang (see
// docs/serving.md, "Fuzzing").
#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pie::fuzz::PIE_FUZZ_TARGET(data, size);
  return 0;
}
