#pragma once
/// \file dispatch.hpp
/// \brief The ONE place where runtime values become template arguments. Each macro expands to
/// a switch whose cases bind a constexpr name and run the body; unsupported values throw.
#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"

/// PIE_DISPATCH_HEAD_DIM(head_dim, HEAD_DIM, { body using constexpr int HEAD_DIM; })
#define PIE_DISPATCH_HEAD_DIM(value, NAME, ...)                                      \
  [&] {                                                                            \
    switch (value) {                                                               \
      case 64: { constexpr int NAME = 64; return __VA_ARGS__(); }                  \
      case 128: { constexpr int NAME = 128; return __VA_ARGS__(); }                \
      case 256: { constexpr int NAME = 256; return __VA_ARGS__(); }                \
      default: PIE_FAIL("unsupported head_dim ", value, " (supported: 64, 128, 256)"); \
    }                                                                              \
  }()

/// PIE_DISPATCH_BLOCK_SIZE(block_size, BLOCK, { ... })
#define PIE_DISPATCH_BLOCK_SIZE(value, NAME, ...)                                    \
  [&] {                                                                            \
    switch (value) {                                                               \
      case 8: { constexpr int NAME = 8; return __VA_ARGS__(); }                    \
      case 16: { constexpr int NAME = 16; return __VA_ARGS__(); }                  \
      case 32: { constexpr int NAME = 32; return __VA_ARGS__(); }                  \
      default: PIE_FAIL("unsupported block size ", value, " (supported: 8, 16, 32)"); \
    }                                                                              \
  }()

/// PIE_DISPATCH_GQA_GROUP(group, GROUP, { ... }) for query heads per KV head.
#define PIE_DISPATCH_GQA_GROUP(value, NAME, ...)                                     \
  [&] {                                                                            \
    switch (value) {                                                               \
      case 1: { constexpr int NAME = 1; return __VA_ARGS__(); }                    \
      case 2: { constexpr int NAME = 2; return __VA_ARGS__(); }                    \
      case 4: { constexpr int NAME = 4; return __VA_ARGS__(); }                    \
      case 8: { constexpr int NAME = 8; return __VA_ARGS__(); }                    \
      default: PIE_FAIL("unsupported GQA group size ", value, " (supported: 1, 2, 4, 8)"); \
    }                                                                              \
  }()

/// PIE_DISPATCH_FLOAT_DTYPE(dtype, T, { ... }) binds T to float/f16/bf16 (host storage types).
#define PIE_DISPATCH_FLOAT_DTYPE(value, NAME, ...)                                   \
  [&] {                                                                            \
    switch (value) {                                                               \
      case ::pie::DType::F32: { using NAME = float; return __VA_ARGS__(); }        \
      case ::pie::DType::F16: { using NAME = ::pie::f16; return __VA_ARGS__(); }   \
      case ::pie::DType::BF16: { using NAME = ::pie::bf16; return __VA_ARGS__(); } \
      default: PIE_FAIL("unsupported dtype ", ::pie::dtype_name(value));          \
    }                                                                              \
  }()
