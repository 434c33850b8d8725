#pragma once
/// \file device_copy.cuh
/// \brief DeviceCopy<W>: a user model's weights (model_concept.hpp) placed on the GPU — the same
/// struct of views, each rebound to its slice of one device allocation, filled from the host
/// copy, which it does not keep alive. W::for_each visits every tensor; views that alias another
/// (a tied head) stay aliased.
/// Dummy weights whose fill was deferred (W::store.deferred, LoadOptions::defer_dummy_fill) are
/// generated on the device instead, with DummyReader's counter-based values bit for bit.
#include <cuda_runtime.h>

#include <cstdint>
#include <map>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/core/random.hpp"
#include "pie/core/tensor.hpp"
#include "pie/model/dummy.hpp"
#include "pie/ops/cuda/common.cuh"

namespace pie::engine::cuda {

namespace detail {
/// DummyReader::read's values (model/dummy.hpp) for elements [0, n) of one tensor: pair i/2
/// from splitmix64(key + i/2), two 24-bit uniforms a, b; matrices (a ± b)·std·√6, norms 1 + 2·a|b·jitter.
template <class D>
__global__ void dummy_fill_kernel(D* out, size_t n, uint64_t key, int norm) {
  const size_t pairs = (n + 1) / 2;
  for (size_t p = blockIdx.x * size_t(blockDim.x) + threadIdx.x; p < pairs; p += size_t(gridDim.x) * blockDim.x) {
    const uint64_t h = rng::splitmix64(key + p);
    const float a = static_cast<float>(h >> 40) * (1.0f / 16777216.0f) - 0.5f;
    const float b = static_cast<float>((h >> 8) & 0xffffffu) * (1.0f / 16777216.0f) - 0.5f;
    const float mul = model::DummyScale::kMatrixStd * 2.449489743f, jit = model::DummyScale::kNormJitter;
    const float v0 = norm ? 1.0f + 2.0f * a * jit : (a + b) * mul;
    const float v1 = norm ? 1.0f + 2.0f * b * jit : (a - b) * mul;
    out[2 * p] = ops::cuda::from_f32<D>(v0);
    if (2 * p + 1 < n) out[2 * p + 1] = ops::cuda::from_f32<D>(v1);
  }
}
}  // namespace detail

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
    std::map<const T*, const model::DeferredFill<T>*> deferred;
    if constexpr (requires { host.store.deferred; }) {
      if (host.store.deferred)
        for (const auto& f : *host.store.deferred) deferred[f.data] = &f;
    }
    std::map<const T*, bool> copied;
    d.views.for_each([&](TensorView<T>& v) {
      if (v.data == nullptr || v.numel() == 0) return;
      T* dst = d.storage.data() + offset.at(v.data);
      auto fill = deferred.find(v.data);
      if (!copied[v.data] && fill != deferred.end()) {
        using D = ops::cuda::device_t<T>;
        PIE_CHECK(fill->second->n == static_cast<size_t>(v.numel()), "DeviceCopy: deferred fill of the wrong size");
        detail::dummy_fill_kernel<D><<<1024, 256>>>(reinterpret_cast<D*>(dst), fill->second->n, fill->second->key,
                                                   fill->second->norm ? 1 : 0);
        PIE_CUDA_CHECK(cudaGetLastError());
      } else if (!copied[v.data]) {
        PIE_CUDA_CHECK(cudaMemcpy(dst, v.data, sizeof(T) * v.numel(), cudaMemcpyHostToDevice));
      }
      copied[v.data] = true;
      v.data = dst;
      v.device = Device::Cuda;
    });
    PIE_CUDA_CHECK(cudaDeviceSynchronize());
    // The views point at the device now. The struct copy above also copied the model's host
    // storage handle (a TensorStore named `store`, the model concept's convention), which would
    // keep every host buffer alive as long as the GPU copy: ~61 GB for a real Qwen3-30B-A3B.
    if constexpr (requires { d.views.store.buffers; d.views.store.deferred; }) {
      d.views.store.buffers.reset();
      d.views.store.deferred.reset();
    }
    return d;
  }
};

}  // namespace pie::engine::cuda
