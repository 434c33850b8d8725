#pragma once
/// \file buffer.hpp
/// \brief Owning memory: HostBuffer (64-byte aligned) always, DeviceBuffer and PinnedBuffer
/// when compiled with the CUDA backend (PIE_WITH_CUDA).
#include <cstddef>
#include <cstdlib>
#include <new>
#include <utility>

#include "pie/core/error.hpp"
#include "pie/core/tensor.hpp"

#if defined(PIE_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace pie {

/// \brief Move-only, 64-byte-aligned host array of trivially copyable T.
template <class T>
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t n) : n_(n) {
    if (n == 0) return;
    size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    p_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!p_) throw std::bad_alloc();
  }
  HostBuffer(HostBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  HostBuffer& operator=(HostBuffer&& o) noexcept { std::swap(p_, o.p_); std::swap(n_, o.n_); return *this; }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer() { std::free(p_); }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  TensorView<T> view(std::initializer_list<int64_t> dims) { return TensorView<T>(p_, dims, Device::Host); }
 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

#if defined(PIE_WITH_CUDA)
#define PIE_CUDA_CHECK(expr)                                                         \
  do {                                                                              \
    cudaError_t _e = (expr);                                                        \
    PIE_CHECK(_e == cudaSuccess, #expr, " failed: ", cudaGetErrorString(_e));       \
  } while (0)

/// \brief Move-only device array (cudaMalloc).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n) PIE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept { std::swap(p_, o.p_); std::swap(n_, o.n_); return *this; }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { if (p_) cudaFree(p_); }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  TensorView<T> view(std::initializer_list<int64_t> dims) { return TensorView<T>(p_, dims, Device::Cuda); }
 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

/// \brief Move-only page-locked host array (cudaMallocHost), for async copies and swap space.
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t n) : n_(n) {
    if (n) PIE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p_), n * sizeof(T)));
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept { std::swap(p_, o.p_); std::swap(n_, o.n_); return *this; }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { if (p_) cudaFreeHost(p_); }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }
 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};
#endif

}  // namespace pie
