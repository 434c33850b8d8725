// Must NOT compile: block size 12 is not one the kernels are instantiated for.
#include "pie/core/policy.hpp"
using Bad = pie::EnginePolicy<12, float, float, pie::attention::Causal, pie::backend::Cpu>;
int main() { return Bad::block_size; }
