// Must NOT compile: an fp8 KV cache needs the CUDA backend (EnginePolicy's static_assert).
#include "pie/core/policy.hpp"
using Bad = pie::EnginePolicy<16, pie::bf16, pie::fp8_e4m3, pie::attention::Causal, pie::backend::Cpu>;
int main() { return Bad::block_size; }
