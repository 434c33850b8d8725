// Control case for the compile-fail tests: a legal policy compiles.
#include "pie/core/policy.hpp"
using Good = pie::EnginePolicy<16, pie::bf16, pie::bf16, pie::attention::Causal, pie::backend::Cpu>;
int main() { return Good::block_size == 16 ? 0 : 1; }
