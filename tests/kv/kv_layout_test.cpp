#include <gtest/gtest.h>

#include "pie/kv/kv_layout.hpp"

namespace pie::kv {

TEST(KVLayout, Qwen3_8B_Bf16BytesPerToken) {
  KVLayout l{.num_layers = 36, .num_kv_heads = 8, .head_dim = 128, .block_size = 16, .kv_dtype = DType::BF16};
  EXPECT_EQ(l.bytes_per_token(), 147456u);
  EXPECT_EQ(l.bytes_per_block(), 147456u * 16);
  EXPECT_EQ(l.blocks_for_budget(147456u * 16 * 1000 + 5), 1000);
  EXPECT_EQ(l.page_elems(), 16u * 128);
}

TEST(KVLayout, F32DoublesBf16) {
  KVLayout l{.num_layers = 2, .num_kv_heads = 4, .head_dim = 64, .block_size = 8, .kv_dtype = DType::F32};
  EXPECT_EQ(l.bytes_per_token(), 2u * 2 * 4 * 64 * 4);
}

}  // namespace pie::kv
