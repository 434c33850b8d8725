#pragma once
/// \file dummy.hpp
/// \brief dummy_weights<T>: random weights of a config's shape (vLLM's `--load-format dummy`),
/// so a model's shape — Qwen3-8B's included — can be run and timed with no checkpoint.
///
/// Values come from a counter-based generator: element i of tensor k is a hash of
/// (seed, k, i). The result is therefore identical for any thread count and chunking, and
/// generating 8B parameters is a parallel pass at memory speed.
///
/// Scale: matrices ~ N(0, 0.02)-like (a triangular distribution of the same standard deviation:
/// the sum of two uniforms, cheaper than Box-Muller and close enough); biases the same; RMSNorm
/// weights 1 ± 0.05. With RMSNorm before every projection, a projection's outputs then have a
/// standard deviation of 0.02·√fan_in (1.28 for Qwen3-8B's 4096): activations and logits stay
/// O(1) and finite through every layer, in bf16 too.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <type_traits>
#include <vector>

#include "pie/core/dtype.hpp"
#include "pie/core/random.hpp"
#include "pie/model/config.hpp"
#include "pie/model/loader.hpp"
#include "pie/model/parallel.hpp"
#include "pie/model/weights.hpp"

namespace pie::model {

/// \brief Scales of dummy_weights (documented above; exposed so tests state them once).
struct DummyScale {
  static constexpr float kMatrixStd = 0.02f;
  static constexpr float kNormJitter = 0.05f;  ///< norms are uniform in 1 ± this
};

namespace detail {
using rng::splitmix64;
/// Two uniforms in [-0.5, 0.5) from one 64-bit hash (24 bits each, exact in float).
inline void two_uniforms(uint64_t h, float& a, float& b) {
  a = static_cast<float>(h >> 40) * (1.0f / 16777216.0f) - 0.5f;
  b = static_cast<float>((h >> 8) & 0xffffffu) * (1.0f / 16777216.0f) - 0.5f;
}
}  // namespace detail

/// Deterministic random weights of `cfg`'s shape in T (float, f16, bf16). Same (cfg, seed) →
/// bit-identical weights on any machine and thread count.
template <class T>
Weights<T> dummy_weights(const ModelConfig& cfg, uint64_t seed, unsigned threads = weight_threads()) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, f16> || std::is_same_v<T, bf16>,
                "dummy_weights: T must be float, f16 or bf16");
  enum class Kind { Matrix, Norm };
  struct Fill { T* data; size_t n; Kind kind; uint64_t key; };
  std::vector<Fill> fills;
  Weights<T> w;
  w.config = cfg;
  auto make = [&](Kind kind, std::initializer_list<int64_t> dims) {
    TensorView<T> v = w.allocate(dims);
    // The tensor's ordinal keys its stream: adding a layer never changes earlier tensors.
    uint64_t key = detail::splitmix64(seed ^ detail::splitmix64(fills.size() + 1));
    fills.push_back({v.data, static_cast<size_t>(v.numel()), kind, key});
    return v;
  };
  const int64_t hidden = cfg.hidden_size, inter = cfg.intermediate_size, hd = cfg.head_dim;
  w.embed_tokens = make(Kind::Matrix, {cfg.vocab_size, hidden});
  for (int i = 0; i < cfg.num_hidden_layers; ++i) {
    LayerWeights<T> l;
    l.input_layernorm = make(Kind::Norm, {hidden});
    l.qkv_proj = make(Kind::Matrix, {cfg.qkv_size(), hidden});
    if (cfg.attention_bias) l.qkv_bias = make(Kind::Matrix, {cfg.qkv_size()});
    if (cfg.qk_norm) {
      l.q_norm = make(Kind::Norm, {hd});
      l.k_norm = make(Kind::Norm, {hd});
    }
    l.o_proj = make(Kind::Matrix, {hidden, cfg.q_size()});
    l.post_attention_layernorm = make(Kind::Norm, {hidden});
    l.gate_up_proj = make(Kind::Matrix, {2 * inter, hidden});
    l.down_proj = make(Kind::Matrix, {hidden, inter});
    w.layers.push_back(l);
  }
  w.norm = make(Kind::Norm, {hidden});
  w.lm_head = cfg.tie_word_embeddings ? w.embed_tokens : make(Kind::Matrix, {cfg.vocab_size, hidden});

  // Chunk boundaries are multiples of 2 (one hash per pair of elements).
  constexpr size_t kChunk = size_t{1} << 20;
  struct Chunk { const Fill* f; size_t begin, count; };
  std::vector<Chunk> chunks;
  for (const Fill& f : fills)
    for (size_t b = 0; b < f.n; b += kChunk) chunks.push_back({&f, b, std::min(kChunk, f.n - b)});
  // sum of two U(-0.5, 0.5) has std 1/√6; rescale to the target std.
  const float matrix_mul = DummyScale::kMatrixStd * 2.449489743f;
  parallel_items(chunks.size(), [&](size_t ci) {
    const Chunk& c = chunks[ci];
    T* out = c.f->data;
    for (size_t i = c.begin; i < c.begin + c.count; i += 2) {
      float a, b;
      detail::two_uniforms(detail::splitmix64(c.f->key + i / 2), a, b);
      float v0, v1;
      if (c.f->kind == Kind::Matrix) {
        v0 = (a + b) * matrix_mul;
        v1 = (a - b) * matrix_mul;  // a−b is uncorrelated with a+b and equally distributed
      } else {
        v0 = 1.0f + 2.0f * a * DummyScale::kNormJitter;
        v1 = 1.0f + 2.0f * b * DummyScale::kNormJitter;
      }
      out[i] = from_float<T>(v0);
      if (i + 1 < c.begin + c.count) out[i + 1] = from_float<T>(v1);
    }
  }, threads);
  return w;
}

/// \brief CheckpointReader's interface without a checkpoint, for a user's model that declares
/// dummy weights (model_concept.hpp): the same declarations (matrix, vector, stacked) allocate
/// the same tensors, and read() fills them as dummy_weights does — matrices (and stacked
/// matrices) with the N(0, 0.02)-like values, vectors as RMSNorm weights 1 ± 0.05 — each keyed
/// by (seed, its ordinal), so a model's dummy weights are the same on any machine and thread
/// count. Names are ignored; has() is false for every name.
template <class T>
class DummyReader {
 public:
  explicit DummyReader(uint64_t seed) : seed_(seed) {}
  TensorView<T> matrix(const std::string&, int64_t rows, int64_t cols) { return make(false, {rows, cols}); }
  TensorView<T> vector(const std::string&, int64_t n) { return make(true, {n}); }
  TensorView<T> stacked(const std::vector<std::pair<std::string, int64_t>>& parts, int64_t cols) {
    int64_t rows = 0;
    for (const auto& p : parts) rows += p.second;
    return cols ? make(false, {rows, cols}) : make(true, {rows});
  }
  bool has(const std::string&) const { return false; }
  /// Fills everything declared; returns the storage the views point into.
  TensorStore<T> read(const LoadOptions& opt = {}) {
    if (opt.defer_dummy_fill) {
      store_.deferred = std::make_shared<std::vector<DeferredFill<T>>>();
      for (const Fill& f : fills_) store_.deferred->push_back({f.data, f.n, f.norm, f.key});
      return store_;
    }
    constexpr size_t kChunk = size_t{1} << 20;  // a multiple of 2: one hash per pair of elements
    struct Chunk { const Fill* f; size_t begin, count; };
    std::vector<Chunk> chunks;
    for (const Fill& f : fills_)
      for (size_t b = 0; b < f.n; b += kChunk) chunks.push_back({&f, b, std::min(kChunk, f.n - b)});
    const float matrix_mul = DummyScale::kMatrixStd * 2.449489743f;  // sum of two U(-½, ½): std 1/√6
    parallel_items(chunks.size(), [&](size_t ci) {
      const Chunk& c = chunks[ci];
      for (size_t i = c.begin; i < c.begin + c.count; i += 2) {
        float a, b;
        detail::two_uniforms(detail::splitmix64(c.f->key + i / 2), a, b);
        const float v0 = c.f->norm ? 1.0f + 2.0f * a * DummyScale::kNormJitter : (a + b) * matrix_mul;
        const float v1 = c.f->norm ? 1.0f + 2.0f * b * DummyScale::kNormJitter : (a - b) * matrix_mul;
        c.f->data[i] = from_float<T>(v0);
        if (i + 1 < c.begin + c.count) c.f->data[i + 1] = from_float<T>(v1);
      }
    }, opt.threads);
    return store_;
  }

 private:
  struct Fill { T* data; size_t n; bool norm; uint64_t key; };
  TensorView<T> make(bool norm, std::initializer_list<int64_t> dims) {
    TensorView<T> v = store_.allocate(dims);
    const uint64_t key = detail::splitmix64(seed_ ^ detail::splitmix64(fills_.size() + 1));
    fills_.push_back({v.data, static_cast<size_t>(v.numel()), norm, key});
    return v;
  }
  uint64_t seed_;
  TensorStore<T> store_;
  std::vector<Fill> fills_;
};

}  // namespace pie::model
