#pragma once
/// \file kv_cache.cuh
/// \brief The device KV cache (one allocation, layer-major: [layers][num_blocks][2][kv_heads]
/// [block_size][head_dim]) and its pinned host swap pool ([swap_blocks][layers][block]), with
/// the block copies a StepPlan asks for: swap-in (host → device), swap-out (device → host) and
/// copy-on-write (device → device). Each block copy over all layers is one strided 2-D copy.
/// An fp8 cache also owns its dequantisation scales, one per (layer, K/V, kv head), 1 until
/// set_scales (checkpoint k_scale/v_scale, or computed by --calculate-kv-scales).
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/kv/kv_layout.hpp"
#include "pie/kv/kv_scales.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::engine::cuda {

/// \brief Owning device KV pool of every layer plus an optional pinned host swap pool.
/// \tparam KV element type of the cache
template <class KV>
class KVCache {
 public:
  KVCache() = default;
  KVCache(const kv::KVLayout& layout, int64_t num_blocks, int64_t num_swap_blocks)
      : layout_(layout), num_blocks_(num_blocks), num_swap_blocks_(num_swap_blocks),
        block_elems_(layout.block_elems_per_layer()),
        device_(static_cast<size_t>(layout.num_layers) * num_blocks * layout.block_elems_per_layer()),
        host_(static_cast<size_t>(num_swap_blocks) * layout.num_layers * layout.block_elems_per_layer()) {
    hbase_ = host_.data();
    // Zeroed once: padded decode rows and freshly captured graphs may read a block nobody
    // wrote, and must see finite values.
    if (device_.size()) PIE_CUDA_CHECK(cudaMemset(device_.data(), 0, device_.size() * sizeof(KV)));
    if constexpr (kScaled) {
      scales_ = DeviceBuffer<float>(static_cast<size_t>(layout.num_layers) * 2 * layout.num_kv_heads);
      set_scales(kv::KvScales::ones(layout.num_layers, layout.num_kv_heads));
    }
    PIE_CHECK(num_blocks > 0, "KVCache: num_blocks must be positive, got ", num_blocks);
    PIE_CHECK(num_blocks < (int64_t{1} << 31), "KVCache: block ids are int32; ", num_blocks, " blocks is too many");
  }

  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_swap_blocks() const { return num_swap_blocks_; }
  const kv::KVLayout& layout() const { return layout_; }
  size_t device_bytes() const { return device_.size() * sizeof(KV); }

  /// Start of layer `l`'s pool on the device.
  KV* layer_data(int l) { return device_.data() + static_cast<size_t>(l) * num_blocks_ * block_elems_; }

  /// fp8: the scales of every layer (KvScales::check: positive, finite, this cache's layers and
  /// kv heads), copied to the device (synchronously: before any step that reads the cache).
  void set_scales(const kv::KvScales& s) {
    static_assert(kScaled, "KVCache::set_scales: only an fp8 cache is scaled");
    PIE_CHECK(s.num_layers == layout_.num_layers && s.num_kv_heads == layout_.num_kv_heads,
              "KVCache::set_scales: scales for ", s.num_layers, " layers × ", s.num_kv_heads, " kv heads, the cache has ",
              layout_.num_layers, " × ", layout_.num_kv_heads);
    s.check("KVCache::set_scales");
    // Layer-major [layers][2][kv_heads]: layer l's K scales, then its V scales.
    std::vector<float> h(2 * s.k.size());
    for (int l = 0; l < layout_.num_layers; ++l)
      for (int j = 0; j < layout_.num_kv_heads; ++j) {
        h[(2 * l) * layout_.num_kv_heads + j] = s.k_of(l)[j];
        h[(2 * l + 1) * layout_.num_kv_heads + j] = s.v_of(l)[j];
      }
    PIE_CUDA_CHECK(cudaMemcpy(scales_.data(), h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  /// fp8: layer `l`'s device K scales [kv_heads] (its V scales follow them), null otherwise.
  float* k_scales(int l) { return kScaled ? scales_.data() + static_cast<size_t>(2 * l) * layout_.num_kv_heads : nullptr; }
  float* v_scales(int l) { return kScaled ? k_scales(l) + layout_.num_kv_heads : nullptr; }

  /// A PagedKV of layer `l` whose block tables point at the given device arrays.
  kv::PagedKV<KV> layer(int l, int batch, const int32_t* indptr, const int32_t* indices,
                        const int32_t* last_page_len) {
    kv::PagedKV<KV> p;
    p.data = layer_data(l);
    p.num_kv_heads = layout_.num_kv_heads;
    p.head_dim = layout_.head_dim;
    p.block_size = layout_.block_size;
    p.batch_size = batch;
    p.indptr = indptr;
    p.indices = indices;
    p.last_page_len = last_page_len;
    p.k_scale = k_scales(l);
    p.v_scale = v_scales(l);
    return p;
  }

  /// Runs a plan's block operations in StepPlan's order, all on `stream`: swap-in first (the
  /// host blocks it frees may be this step's swap-out targets), then swap-out, then
  /// copy-on-write. Everything is queued before the forward pass that reads the blocks.
  void apply(const sched::StepPlan& plan, cudaStream_t stream) {
    for (const auto& c : plan.swap_in) swap_in(c.src, c.dst, stream);
    for (const auto& c : plan.swap_out) swap_out(c.src, c.dst, stream);
    for (const auto& c : plan.copy_blocks) copy(c.src, c.dst, stream);
  }

  /// Device block `src` (all layers) → host swap block `dst`.
  void swap_out(int32_t src, int32_t dst, cudaStream_t stream) {
    check_device(src, "swap_out src");
    check_host(dst, "swap_out dst");
    copy_layers(host_block(dst), block_bytes(), device_.data() + src * block_elems_, layer_pitch(), cudaMemcpyDeviceToHost,
                stream);
  }
  /// Host swap block `src` → device block `dst` (all layers).
  void swap_in(int32_t src, int32_t dst, cudaStream_t stream) {
    check_host(src, "swap_in src");
    check_device(dst, "swap_in dst");
    copy_layers(device_.data() + dst * block_elems_, layer_pitch(), host_block(src), block_bytes(), cudaMemcpyHostToDevice,
                stream);
  }
  /// Device block `src` → device block `dst` (copy-on-write), all layers.
  void copy(int32_t src, int32_t dst, cudaStream_t stream) {
    check_device(src, "copy src");
    check_device(dst, "copy dst");
    copy_layers(device_.data() + dst * block_elems_, layer_pitch(), device_.data() + src * block_elems_,
                layer_pitch(), cudaMemcpyDeviceToDevice, stream);
  }

  /// Host copy of swap block `b`, [layers][block] (tests read it back after a sync).
  const KV* swap_block(int32_t b) const {
    return hbase_ + static_cast<size_t>(b) * layout_.num_layers * block_elems_;
  }

 private:
  KV* host_block(int32_t b) { return hbase_ + static_cast<size_t>(b) * layout_.num_layers * block_elems_; }
  // One block of every layer: a 2-D copy (rows = layers) while the pitches fit the driver's
  // limit (2^31 - 1 bytes), else one copy per layer.
  void copy_layers(void* dst, size_t dpitch, const void* src, size_t spitch, cudaMemcpyKind kind,
                   cudaStream_t stream) {
    const size_t bb = block_bytes();
    constexpr size_t kMaxPitch = (size_t{1} << 31) - 1;
    if (dpitch <= kMaxPitch && spitch <= kMaxPitch) {
      PIE_CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, bb, layout_.num_layers, kind, stream));
      return;
    }
    for (int l = 0; l < layout_.num_layers; ++l)
      PIE_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + l * dpitch,
                                     static_cast<const char*>(src) + l * spitch, bb, kind, stream));
  }
  size_t block_bytes() const { return block_elems_ * sizeof(KV); }
  size_t layer_pitch() const { return static_cast<size_t>(num_blocks_) * block_elems_ * sizeof(KV); }
  void check_device(int32_t b, const char* what) const {
    PIE_CHECK(b >= 0 && b < num_blocks_, "KVCache ", what, ": device block ", b, " outside [0, ", num_blocks_, ")");
  }
  void check_host(int32_t b, const char* what) const {
    PIE_CHECK(b >= 0 && b < num_swap_blocks_, "KVCache ", what, ": swap block ", b, " outside [0, ",
              num_swap_blocks_, ") (raise --swap-space)");
  }

  static constexpr bool kScaled = std::is_same_v<KV, fp8_e4m3>;
  kv::KVLayout layout_{};
  int64_t num_blocks_ = 0, num_swap_blocks_ = 0;
  size_t block_elems_ = 0;
  DeviceBuffer<KV> device_;
  DeviceBuffer<float> scales_;  // fp8: [layers][2][kv_heads]
  PinnedBuffer<KV> host_;
  KV* hbase_ = nullptr;  // host_.data(), readable from const members
};

}  // namespace pie::engine::cuda
