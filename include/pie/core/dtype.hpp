#pragma once
/// \file dtype.hpp
/// \brief Storage types f16/bf16/fp8_e4m3 (bit-compatible with CUDA's __half/__nv_bfloat16/
/// __nv_fp8_e4m3) with exact host conversions (round to nearest even), and dtype traits.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "pie/core/host_device.hpp"

namespace pie {

/// \brief Runtime tag of an element type (checkpoint headers, CLI flags).
enum class DType : uint8_t { F32, F16, BF16, FP8_E4M3 };

namespace detail {
PIE_HD uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
PIE_HD float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
}  // namespace detail

/// \brief IEEE binary16 storage (no arithmetic: convert to float, compute, convert back).
struct f16 {
  uint16_t bits = 0;
  f16() = default;
  static constexpr f16 from_bits(uint16_t b) { f16 h; h.bits = b; return h; }
  explicit f16(float f) : bits(from_float(f)) {}
  explicit operator float() const { return to_float(bits); }

  /// Round-to-nearest-even float → half, with overflow to inf, subnormals and NaN kept NaN.
  static uint16_t from_float(float f) {
    uint32_t x = detail::f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
    if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u); // ≥ 65520 → inf
    if (absx < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
      // value = absx as float; half subnormal unit is 2^-24. Round to nearest even.
      float a = detail::bits_f32(absx);
      float scaled = a * 16777216.0f;  // exact: multiplies by 2^24
      float r = std::nearbyint(scaled);  // current rounding mode is nearest-even
      return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
    }
    uint32_t mant = absx & 0x7fffffu;
    int32_t exp = static_cast<int32_t>(absx >> 23) - 127 + 15;
    uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into exponent: correct
    return static_cast<uint16_t>(sign | h);
  }
  static float to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
      float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
      return sign ? -v : v;
    }
    if (exp == 31) return detail::bits_f32(sign | 0x7f800000u | (mant << 13));
    return detail::bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
  }
};

/// \brief bfloat16 storage: the top 16 bits of an IEEE float.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  static constexpr bf16 from_bits(uint16_t b) { bf16 h; h.bits = b; return h; }
  explicit bf16(float f) : bits(from_float(f)) {}
  explicit operator float() const { return to_float(bits); }

  /// Round-to-nearest-even; NaN stays a quiet NaN.
  static uint16_t from_float(float f) {
    uint32_t x = detail::f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
    uint32_t lsb = (x >> 16) & 1u;
    x += 0x7fffu + lsb;
    return static_cast<uint16_t>(x >> 16);
  }
  static float to_float(uint16_t b) { return detail::bits_f32(static_cast<uint32_t>(b) << 16); }
};

/// \brief OCP fp8 e4m3 (fn: no inf, max 448, NaN = 0x7f/0xff) storage, for the KV cache.
struct fp8_e4m3 {
  uint8_t bits = 0;
  fp8_e4m3() = default;
  explicit fp8_e4m3(float f) : bits(from_float(f)) {}
  explicit operator float() const { return to_float(bits); }
  /// Round-to-nearest-even with saturation to ±448 (what __nv_cvt_float_to_fp8 with
  /// __NV_SATFINITE does); NaN → 0x7f.
  static uint8_t from_float(float f) {
    if (std::isnan(f)) return 0x7f;
    uint8_t sign = std::signbit(f) ? 0x80 : 0;
    float a = std::fabs(f);
    if (a >= 448.0f) return sign | 0x7e;
    if (a < 0.015625f) {  // subnormal range: unit 2^-9
      float r = std::nearbyint(a * 512.0f);
      return static_cast<uint8_t>(sign | static_cast<uint8_t>(r));  // r == 8 is the smallest normal
    }
    int e;
    float m = std::frexp(a, &e);  // a = m·2^e, m in [0.5,1)
    float q = std::nearbyint(m * 16.0f);  // 4 significant bits (1 implicit + 3)
    if (q == 16.0f) { q = 8.0f; ++e; }
    uint32_t exp = static_cast<uint32_t>(e - 1 + 7);
    uint32_t mant = static_cast<uint32_t>(q) - 8;
    uint32_t v = (exp << 3) | mant;
    if (v > 0x7e) v = 0x7e;
    return static_cast<uint8_t>(sign | v);
  }
  static float to_float(uint8_t b) {
    float s = (b & 0x80) ? -1.0f : 1.0f;
    uint32_t exp = (b >> 3) & 0xf, mant = b & 7;
    if (exp == 0xf && mant == 7) return std::nanf("");
    if (exp == 0) return s * std::ldexp(static_cast<float>(mant), -9);
    return s * std::ldexp(1.0f + mant / 8.0f, static_cast<int>(exp) - 7);
  }
};

/// \brief Compile-time facts about an element type.
template <class T> struct DTypeTraits;
template <> struct DTypeTraits<float> {
  static constexpr DType dtype = DType::F32; static constexpr std::string_view name = "float32";
};
template <> struct DTypeTraits<f16> {
  static constexpr DType dtype = DType::F16; static constexpr std::string_view name = "float16";
};
template <> struct DTypeTraits<bf16> {
  static constexpr DType dtype = DType::BF16; static constexpr std::string_view name = "bfloat16";
};
template <> struct DTypeTraits<fp8_e4m3> {
  static constexpr DType dtype = DType::FP8_E4M3; static constexpr std::string_view name = "fp8_e4m3";
};

/// Bytes per element of a runtime dtype.
inline constexpr size_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::FP8_E4M3: return 1;
  }
  return 0;
}
inline constexpr std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::FP8_E4M3: return "fp8_e4m3";
  }
  return "?";
}

/// Host conversion to float for any storage type (float passes through).
template <class T> inline float to_float(T v) { return static_cast<float>(v); }
/// Host conversion from float to any storage type (round to nearest even).
template <class T> inline T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) return v; else return T(v);
}

static_assert(sizeof(f16) == 2 && sizeof(bf16) == 2 && sizeof(fp8_e4m3) == 1);

}  // namespace pie
