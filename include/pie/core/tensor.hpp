#pragma once
/// \file tensor.hpp
/// \brief TensorView: a non-owning, strided view of up to 4 dimensions on host or device.
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "pie/core/error.hpp"

namespace pie {

/// \brief Where a pointer lives.
enum class Device : uint8_t { Host, Cuda };

/// \brief Non-owning view: pointer, shape, strides (in elements), device. Row-major by default.
/// \tparam T element type (float, f16, bf16, fp8_e4m3, int32_t, ...)
template <class T>
struct TensorView {
  static constexpr int kMaxRank = 4;
  T* data = nullptr;
  int rank = 0;
  std::array<int64_t, kMaxRank> shape{};
  std::array<int64_t, kMaxRank> stride{};
  Device device = Device::Host;

  TensorView() = default;
  TensorView(T* p, std::initializer_list<int64_t> dims, Device dev = Device::Host)
      : data(p), rank(static_cast<int>(dims.size())), device(dev) {
    PIE_CHECK(rank <= kMaxRank, "TensorView: rank ", rank, " > ", kMaxRank);
    int i = 0;
    for (int64_t d : dims) shape[i++] = d;
    int64_t s = 1;
    for (int j = rank - 1; j >= 0; --j) { stride[j] = s; s *= shape[j]; }
  }
  int64_t numel() const { int64_t n = 1; for (int i = 0; i < rank; ++i) n *= shape[i]; return n; }
  int64_t size(int d) const { return shape[d]; }
  bool contiguous() const {
    int64_t s = 1;
    for (int j = rank - 1; j >= 0; --j) { if (stride[j] != s) return false; s *= shape[j]; }
    return true;
  }
  /// Element address for a full index (host or device pointer arithmetic only).
  T* at(std::initializer_list<int64_t> idx) const {
    int64_t off = 0; int i = 0;
    for (int64_t v : idx) off += v * stride[i++];
    return data + off;
  }
  /// Row r of a rank-2 view.
  T* row(int64_t r) const { return data + r * stride[0]; }
};

}  // namespace pie
