// Host conversions of f16 / bf16 / fp8_e4m3 against numpy + ml_dtypes (dtype_reference.inc),
// plus exhaustive round trips over every 16-bit pattern.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "pie/core/dtype.hpp"

namespace {
struct Case { uint32_t f32; uint16_t f16; uint16_t bf16; uint8_t fp8; };
const Case kCases[] = {
#include "dtype_reference.inc"
};

float from_bits(uint32_t u) { return pie::detail::bits_f32(u); }
}  // namespace

TEST(DType, F16RoundToNearestEvenMatchesNumpy) {
  int n = 0;
  for (const Case& c : kCases) {
    ASSERT_EQ(pie::f16::from_float(from_bits(c.f32)), c.f16) << "f32 bits 0x" << std::hex << c.f32;
    ++n;
  }
  EXPECT_GT(n, 5000);
}

TEST(DType, Bf16RoundToNearestEvenMatchesMlDtypes) {
  for (const Case& c : kCases)
    ASSERT_EQ(pie::bf16::from_float(from_bits(c.f32)), c.bf16) << "f32 bits 0x" << std::hex << c.f32;
}

TEST(DType, Fp8E4m3SaturatingMatchesMlDtypes) {
  for (const Case& c : kCases)
    ASSERT_EQ(pie::fp8_e4m3::from_float(from_bits(c.f32)), c.fp8) << "f32 bits 0x" << std::hex << c.f32;
}

TEST(DType, F16AllPatternsRoundTripExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = pie::f16::to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) { EXPECT_TRUE(((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff)); continue; }
    ASSERT_EQ(pie::f16::from_float(f), h) << "half 0x" << std::hex << h;
  }
}

TEST(DType, Bf16AllPatternsRoundTripExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = pie::bf16::to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(pie::bf16::from_float(f), h) << "bf16 0x" << std::hex << h;
  }
}

TEST(DType, Fp8AllPatternsRoundTripExactly) {
  for (uint32_t b = 0; b < 256; ++b) {
    float f = pie::fp8_e4m3::to_float(static_cast<uint8_t>(b));
    if (std::isnan(f)) { EXPECT_EQ(b & 0x7f, 0x7fu); continue; }
    ASSERT_EQ(pie::fp8_e4m3::from_float(f), b) << "fp8 0x" << std::hex << b;
  }
}

TEST(DType, NaNStaysNaN) {
  float nan = std::nanf("");
  EXPECT_TRUE(std::isnan(float(pie::f16(nan))));
  EXPECT_TRUE(std::isnan(float(pie::bf16(nan))));
  EXPECT_TRUE(std::isnan(float(pie::fp8_e4m3(nan))));
}

TEST(DType, SizesAndNames) {
  EXPECT_EQ(pie::dtype_size(pie::DType::BF16), 2u);
  EXPECT_EQ(pie::dtype_size(pie::DType::F32), 4u);
  EXPECT_EQ(pie::dtype_size(pie::DType::FP8_E4M3), 1u);
  EXPECT_EQ(pie::DTypeTraits<pie::bf16>::name, "bfloat16");
}
