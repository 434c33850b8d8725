#pragma once
/// \file device_copy.cuh
/// \brief DeviceCopy<W>: a user model's weights (model_concept.hpp) placed on the GPU — the same
/// struct of views, each rebound to its slice of one device allocation, filled from the host
/// copy. W::for_each visits every tensor; views that alias another (a tied head) stay aliased.
#include <cuda_runtime.h>

#include <cstdint>
#include <map>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/core/tensor.hpp"

namespace pie::engine::cuda {

/// \brief W's tensors on the device (see file comment).
template <class W, class T>
struct DeviceCopy {
  W views;  ///< the model's weights struct, its views pointing into `storage`
  DeviceBuffer<T> storage;

  size_t bytes() const { return storage.size() * sizeof(T); }
  const auto& config() const { return views.config; }

  static DeviceCopy upload(const W& host) {
    DeviceCopy d;
    d.views = host;
    size_t total = 0;
    std::map<const T*, size_t> offset;  // host pointer → device offset (aliases share one)
    d.views.for_each([&](TensorView<T>& v) {
      if (v.data == nullptr || v.numel() == 0 || offset.count(v.data)) return;
      PIE_CHECK(v.contiguous(), "DeviceCopy: weight tensors must be contiguous");
      total = (total + 127) / 128 * 128;  // 256-byte aligned GEMM operands for 2-byte T
      offset[v.data] = total;
      total += static_cast<size_t>(v.numel());
    });
    d.storage = DeviceBuffer<T>(total);
    std::map<const T*, bool> copied;
    d.views.for_each([&](TensorView<T>& v) {
      if (v.data == nullptr || v.numel() == 0) return;
      T* dst = d.storage.data() + offset.at(v.data);
      if (!copied[v.data])
        PIE_CUDA_CHECK(cudaMemcpy(dst, v.data, sizeof(T) * v.numel(), cudaMemcpyHostToDevice));
      copied[v.data] = true;
      v.data = dst;
      v.device = Device::Cuda;
    });
    return d;
  }
};

}  // namespace pie::engine::cuda
