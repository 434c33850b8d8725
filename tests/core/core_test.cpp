// TensorView, HostBuffer, dispatch macros, policies, KV sizing.
#include <gtest/gtest.h>

#include <type_traits>

#include "pie/core/buffer.hpp"
#include "pie/core/dispatch.hpp"
#include "pie/core/policy.hpp"
#include "pie/core/random.hpp"
#include "pie/core/tensor.hpp"
#include "pie/kv/kv_layout.hpp"
#include "pie/kv/paged_kv.hpp"

TEST(TensorView, RowMajorStridesAndIndexing) {
  pie::HostBuffer<float> buf(2 * 3 * 4);
  auto v = buf.view({2, 3, 4});
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.stride[0], 12);
  EXPECT_EQ(v.stride[1], 4);
  EXPECT_EQ(v.stride[2], 1);
  EXPECT_TRUE(v.contiguous());
  EXPECT_EQ(v.at({1, 2, 3}), buf.data() + 23);
  EXPECT_EQ(v.row(1), buf.data() + 12);
  v.stride[2] = 2;
  EXPECT_FALSE(v.contiguous());
}

TEST(HostBuffer, AlignedAndMovable) {
  pie::HostBuffer<int> a(100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 64, 0u);
  int* p = a.data();
  pie::HostBuffer<int> b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(b.size(), 100u);
}

template <int HD> int head_dim_marker() { return HD * 10; }

TEST(Dispatch, HeadDimBindsConstexprAndRejectsOthers) {
  for (int hd : {64, 128, 256}) {
    int got = PIE_DISPATCH_HEAD_DIM(hd, HEAD_DIM, [&] { return head_dim_marker<HEAD_DIM>(); });
    EXPECT_EQ(got, hd * 10);
  }
  EXPECT_THROW(PIE_DISPATCH_HEAD_DIM(96, HEAD_DIM, [&] { return HEAD_DIM; }), pie::Error);
  try {
    PIE_DISPATCH_BLOCK_SIZE(12, B, [&] { return B; });
    FAIL();
  } catch (const pie::Error& e) {
    EXPECT_NE(std::string(e.what()).find("block size 12"), std::string::npos);
  }
}

TEST(Dispatch, FloatDTypeBindsStorageType) {
  size_t s = PIE_DISPATCH_FLOAT_DTYPE(pie::DType::BF16, T, [&] { return sizeof(T); });
  EXPECT_EQ(s, 2u);
  bool is_f32 = PIE_DISPATCH_FLOAT_DTYPE(pie::DType::F32, T, [&] { return std::is_same_v<T, float>; });
  EXPECT_TRUE(is_f32);
  EXPECT_THROW(PIE_DISPATCH_FLOAT_DTYPE(pie::DType::FP8_E4M3, T, [&] { return sizeof(T); }), pie::Error);
}

TEST(Policy, ExposesItsChoices) {
  using P = pie::CudaBf16;
  static_assert(P::block_size == 16);
  static_assert(std::is_same_v<P::dtype, pie::bf16>);
  static_assert(std::is_same_v<P::kv_dtype, pie::bf16>);
  static_assert(P::backend_type::kIsCuda);
  using Q = pie::EnginePolicy<32, float, float, pie::attention::SlidingWindow<128>, pie::backend::Cpu>;
  static_assert(Q::block_size == 32);
  static_assert(Q::attention_variant::kWindowLeft == 128);
  SUCCEED();
}

TEST(AttentionVariants, MasksAndLogits) {
  pie::attention::Causal c;
  EXPECT_TRUE(c.mask(5, 5));
  EXPECT_FALSE(c.mask(5, 6));
  pie::attention::SlidingWindow<4> w;
  EXPECT_TRUE(w.mask(10, 7));
  EXPECT_FALSE(w.mask(10, 6));
  pie::attention::SoftCap s;
  s.logits_soft_cap = 10.f;
  EXPECT_NEAR(s.logits(1000.f), 10.f, 1e-4);
  EXPECT_NEAR(s.logits(0.5f), 10.f * std::tanh(0.05f), 1e-6);
}

TEST(KVLayout, Qwen3_8B_Bf16BytesPerToken) {
  pie::kv::KVLayout l{.num_layers = 36, .num_kv_heads = 8, .head_dim = 128, .block_size = 16,
                      .kv_dtype = pie::DType::BF16};
  EXPECT_EQ(l.bytes_per_token(), 147456u);
  EXPECT_EQ(l.bytes_per_block(), 147456u * 16);
  EXPECT_EQ(l.blocks_for_budget(147456ull * 16 * 1000 + 5), 1000);
  l.kv_dtype = pie::DType::FP8_E4M3;
  EXPECT_EQ(l.bytes_per_token(), 73728u);
}

TEST(PagedKV, SlotAndPageAddressingAgree) {
  const int kv_heads = 2, bs = 4, hd = 8, blocks = 3;
  std::vector<float> pool(blocks * 2 * kv_heads * bs * hd);
  int32_t indptr[] = {0, 2}, indices[] = {2, 0}, last[] = {3};
  pie::kv::PagedKV<float> kv{pool.data(), kv_heads, hd, bs, 1, indptr, indices, last};
  EXPECT_EQ(kv.seq_len(0), 7);
  // slot 2*4+1 = block 2, offset 1, head 1
  EXPECT_EQ(kv.k_at_slot(9, 1), kv.k_page(2, 1) + 1 * hd);
  EXPECT_EQ(kv.v_at_slot(9, 1), kv.v_page(2, 1) + 1 * hd);
  EXPECT_EQ(kv.v_page(0, 0) - kv.k_page(0, 0), kv_heads * bs * hd);
}

// splitmix64 against the reference generator's first outputs (seed 0), and the sampling uniform
// against the same chain computed independently (Python integers): the formula both samplers use.
TEST(Random, Splitmix64MatchesReferenceAndUniformIsPinned) {
  EXPECT_EQ(pie::rng::splitmix64(0), 0xe220a8397b1dcdafull);
  EXPECT_EQ(pie::rng::splitmix64(0x9e3779b97f4a7c15ull), 0x6e789e6aa1b965f4ull);
  EXPECT_EQ(pie::rng::sample_uniform(1, 2, 3), 2263722314273406.0 / 9007199254740992.0);
  EXPECT_EQ(pie::rng::key_to_uniform(~0ull), 1.0 - 1.0 / 9007199254740992.0);  // < 1 always
  EXPECT_EQ(pie::rng::key_to_uniform(0), 0.0);
}
