// Uses pie only through pie::pie: a policy, the KV sizing, a dtype conversion.
#include <cstdio>

#include "pie/core/policy.hpp"
#include "pie/kv/kv_layout.hpp"

int main() {
  using P = pie::CpuBf16;
  pie::kv::KVLayout l{36, 8, 128, P::block_size, pie::DType::BF16};
  float x = static_cast<float>(pie::bf16(1.5f));
  std::printf("%zu %g\n", l.bytes_per_token(), x);
  return (l.bytes_per_token() == 147456 && x == 1.5f) ? 0 : 1;
}
