#pragma once
/// \file shard_loader.hpp
/// \brief Per-rank weights for tensor parallelism: load_shard_weights<T> reads only rank r's
/// rows/columns straight from the mmapped safetensors (no full copy of the model in host
/// memory per rank), and shard_weights<T> cuts the same shard out of weights already in memory
/// (random `--load-format dummy` models, tests). Both produce a model::Weights<T> in the fused
/// layout of weights.hpp for the rank — qkv_proj = [q_r; k_r; v_r], gate_up_proj = [gate_r; up_r],
/// o_proj / down_proj with the rank's input columns, embed_tokens / lm_head with the rank's
/// vocab slice (zero rows past the vocab) — and config = TpShard::local.
///
/// Both go through one planner over a "source" of named HF tensors, so the in-memory path and
/// the checkpoint path cannot disagree on what a rank owns.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/model/loader.hpp"
#include "pie/model/parallel.hpp"
#include "pie/model/safetensors.hpp"
#include "pie/model/weights.hpp"
#include "pie/model/tp_plan.hpp"

namespace pie::parallel {

namespace detail {

/// \brief A checkpoint as a source: HF names → mmapped tensors, read with conversion to T.
struct CheckpointSource {
  const model::Checkpoint& ckpt;
  using Handle = const model::TensorInfo*;

  /// The tensor, its shape checked against `want` (what config.json implies).
  Handle get(const std::string& name, const std::vector<int64_t>& want) const {
    const model::TensorInfo& t = ckpt.at(name);
    PIE_CHECK(t.shape == want, t.file, ": tensor '", name, "' has shape ", model::shape_string(t.shape),
              ", expected ", model::shape_string(want), " from config.json");
    PIE_CHECK(t.dtype, t.file, ": tensor '", name, "' has dtype ", t.dtype_name,
              ", expected F32, F16 or BF16");
    return &t;
  }
  template <class T>
  static void read(Handle h, size_t begin, size_t count, T* dst) {
    model::read_elements(*h, begin, count, dst);
  }
};

/// \brief Full in-memory weights as a source: the fused tensors seen under their HF names.
template <class S>
struct WeightsSource {
  struct Handle { const S* data; std::vector<int64_t> shape; };
  std::map<std::string, Handle> tensors;

  explicit WeightsSource(const model::Weights<S>& w) {
    const auto& c = w.config;
    const int64_t H = c.hidden_size, I = c.intermediate_size, q = c.q_size(), kv = c.kv_size();
    auto put = [&](const std::string& n, const S* p, std::vector<int64_t> shape) {
      tensors[n] = {p, std::move(shape)};
    };
    put("model.embed_tokens.weight", w.embed_tokens.data, {c.vocab_size, H});
    for (int i = 0; i < c.num_hidden_layers; ++i) {
      const auto& L = w.layers[i];
      auto n = [i](const char* rest) { return model::layer_tensor(i, rest); };
      put(n("input_layernorm.weight"), L.input_layernorm.data, {H});
      put(n("self_attn.q_proj.weight"), L.qkv_proj.data, {q, H});
      put(n("self_attn.k_proj.weight"), L.qkv_proj.data + q * H, {kv, H});
      put(n("self_attn.v_proj.weight"), L.qkv_proj.data + (q + kv) * H, {kv, H});
      if (c.attention_bias) {
        put(n("self_attn.q_proj.bias"), L.qkv_bias.data, {q});
        put(n("self_attn.k_proj.bias"), L.qkv_bias.data + q, {kv});
        put(n("self_attn.v_proj.bias"), L.qkv_bias.data + q + kv, {kv});
      }
      if (c.qk_norm) {
        put(n("self_attn.q_norm.weight"), L.q_norm.data, {c.head_dim});
        put(n("self_attn.k_norm.weight"), L.k_norm.data, {c.head_dim});
      }
      put(n("self_attn.o_proj.weight"), L.o_proj.data, {H, q});
      put(n("post_attention_layernorm.weight"), L.post_attention_layernorm.data, {H});
      put(n("mlp.gate_proj.weight"), L.gate_up_proj.data, {I, H});
      put(n("mlp.up_proj.weight"), L.gate_up_proj.data + I * H, {I, H});
      put(n("mlp.down_proj.weight"), L.down_proj.data, {H, I});
    }
    put("model.norm.weight", w.norm.data, {H});
    put("lm_head.weight", w.lm_head.data, {c.vocab_size, H});
  }
  const Handle* get(const std::string& name, const std::vector<int64_t>& want) const {
    auto it = tensors.find(name);
    PIE_CHECK(it != tensors.end(), "shard_weights: tensor '", name, "' not in the weights");
    PIE_CHECK(it->second.shape == want, "shard_weights: tensor '", name, "' has shape ",
              model::shape_string(it->second.shape), ", expected ", model::shape_string(want));
    return &it->second;
  }
  template <class T>
  static void read(const Handle* h, size_t begin, size_t count, T* dst) {
    const S* src = h->data + begin;
    if constexpr (std::is_same_v<S, T>) std::memcpy(dst, src, count * sizeof(T));
    else for (size_t i = 0; i < count; ++i) dst[i] = from_float<T>(to_float(src[i]));
  }
};

/// \brief Plans a shard: each destination tensor is a stack of row blocks, each block a
/// [rows r0..r1) × [cols c0..c1) window of a source tensor, copied row by row (or as one run
/// when the window spans whole rows: row slices of a row-major matrix are contiguous).
template <class T, class Source>
class ShardPlan {
 public:
  using Handle = decltype(std::declval<const Source&>().get(std::string(), std::vector<int64_t>()));
  struct Block { std::string name; int64_t rows, cols; Range r, c; };

  ShardPlan(const Source& src, model::Weights<T>& w) : src_(src), w_(w) {}

  /// Allocates a [Σ rows, cols] tensor (cols == 0: a vector) filled by `blocks` in order, plus
  /// `pad_rows` zero rows at the end (the vocab slice's padding).
  TensorView<T> stacked(const std::vector<Block>& blocks, int64_t pad_rows = 0) {
    int64_t rows = pad_rows, cols = 0;
    std::vector<Handle> hs;
    for (const Block& b : blocks) {
      std::vector<int64_t> want = b.cols ? std::vector<int64_t>{b.rows, b.cols}
                                         : std::vector<int64_t>{b.rows};
      hs.push_back(src_.get(b.name, want));
      PIE_CHECK(b.r.begin >= 0 && b.r.end <= b.rows && b.c.begin >= 0 && b.c.end <= std::max<int64_t>(b.cols, 1),
                "shard plan: window out of tensor '", b.name, "'");
      rows += b.r.size();
      cols = b.cols ? b.c.size() : 0;
    }
    TensorView<T> v = cols ? w_.allocate({rows, cols}) : w_.allocate({rows});
    const int64_t width = std::max<int64_t>(cols, 1);
    T* dst = v.data;
    for (size_t i = 0; i < blocks.size(); ++i) {
      const Block& b = blocks[i];
      const int64_t src_cols = std::max<int64_t>(b.cols, 1);
      // One item per chunk of rows (~4M elements) so a few huge tensors and many small ones
      // balance across the load threads.
      const int64_t per = std::max<int64_t>(1, (int64_t{1} << 22) / width);
      for (int64_t r = b.r.begin; r < b.r.end; r += per)
        copies_.push_back({hs[i], src_cols, r, std::min(b.r.end, r + per), b.c,
                           dst + (r - b.r.begin) * width});
      dst += b.r.size() * width;
    }
    if (pad_rows) std::fill(dst, dst + pad_rows * width, from_float<T>(0.0f));
    return v;
  }
  /// A whole tensor (replicated on every rank).
  TensorView<T> whole(const std::string& name, int64_t rows, int64_t cols = 0) {
    return stacked({{name, rows, cols, {0, rows}, {0, std::max<int64_t>(cols, 1)}}});
  }

  /// Runs every planned copy on `threads` threads.
  void run(unsigned threads) const {
    model::parallel_items(copies_.size(), [&](size_t i) {
      const Copy& c = copies_[i];
      const int64_t w = c.c.size();
      if (w == c.src_cols) {  // whole rows: one contiguous run
        Source::template read<T>(c.src, static_cast<size_t>(c.r0 * c.src_cols),
                                 static_cast<size_t>((c.r1 - c.r0) * w), c.dst);
        return;
      }
      for (int64_t r = c.r0; r < c.r1; ++r)
        Source::template read<T>(c.src, static_cast<size_t>(r * c.src_cols + c.c.begin),
                                 static_cast<size_t>(w), c.dst + (r - c.r0) * w);
    }, threads);
  }

 private:
  struct Copy { Handle src; int64_t src_cols, r0, r1; Range c; T* dst; };
  const Source& src_;
  model::Weights<T>& w_;
  std::vector<Copy> copies_;
};

/// The shard of `s` out of `src`, in T.
template <class T, class Source>
model::Weights<T> build_shard(const Source& src, const TpShard& s, unsigned threads) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, f16> || std::is_same_v<T, bf16>,
                "shard weights: T must be float, f16 or bf16");
  const model::ModelConfig& g = s.global;
  model::Weights<T> w;
  w.config = s.local;
  ShardPlan<T, Source> plan(src, w);
  using B = typename ShardPlan<T, Source>::Block;
  const int64_t H = g.hidden_size, I = g.intermediate_size, hd = g.head_dim;
  const int64_t V = g.vocab_size, q = g.q_size(), kv = g.kv_size();
  const Range all_h{0, H}, one{0, 1};
  const int64_t vocab_pad = s.vocab_per_rank - s.vocab.size();
  auto layer = [](int i, const char* rest) { return model::layer_tensor(i, rest); };

  w.embed_tokens = plan.stacked({B{"model.embed_tokens.weight", V, H, s.vocab, all_h}}, vocab_pad);
  for (int i = 0; i < g.num_hidden_layers; ++i) {
    model::LayerWeights<T> l;
    l.input_layernorm = plan.whole(layer(i, "input_layernorm.weight"), H);
    l.qkv_proj = plan.stacked({B{layer(i, "self_attn.q_proj.weight"), q, H, s.q_rows(), all_h},
                               B{layer(i, "self_attn.k_proj.weight"), kv, H, s.kv_rows(), all_h},
                               B{layer(i, "self_attn.v_proj.weight"), kv, H, s.kv_rows(), all_h}});
    if (g.attention_bias)
      l.qkv_bias = plan.stacked({B{layer(i, "self_attn.q_proj.bias"), q, 0, s.q_rows(), one},
                                 B{layer(i, "self_attn.k_proj.bias"), kv, 0, s.kv_rows(), one},
                                 B{layer(i, "self_attn.v_proj.bias"), kv, 0, s.kv_rows(), one}});
    if (g.qk_norm) {
      l.q_norm = plan.whole(layer(i, "self_attn.q_norm.weight"), hd);
      l.k_norm = plan.whole(layer(i, "self_attn.k_norm.weight"), hd);
    }
    l.o_proj = plan.stacked({B{layer(i, "self_attn.o_proj.weight"), H, q, all_h, s.q_rows()}});
    l.post_attention_layernorm = plan.whole(layer(i, "post_attention_layernorm.weight"), H);
    l.gate_up_proj = plan.stacked({B{layer(i, "mlp.gate_proj.weight"), I, H, s.intermediate, all_h},
                                   B{layer(i, "mlp.up_proj.weight"), I, H, s.intermediate, all_h}});
    l.down_proj = plan.stacked({B{layer(i, "mlp.down_proj.weight"), H, I, all_h, s.intermediate}});
    w.layers.push_back(l);
  }
  w.norm = plan.whole("model.norm.weight", H);
  // Tied: lm_head is the embedding, and both are sliced by the same vocab rows, so alias.
  w.lm_head = g.tie_word_embeddings
                  ? w.embed_tokens
                  : plan.stacked({B{"lm_head.weight", V, H, s.vocab, all_h}}, vocab_pad);
  plan.run(threads);
  return w;
}

}  // namespace detail

/// Loads rank s.rank's shard of the checkpoint in `dir` (config s.global) as T. Reads only the
/// rank's slices from the mmapped files; peak host memory is the shard itself. Errors name the
/// file and tensor as load_weights' do.
template <class T>
model::Weights<T> load_shard_weights(const std::string& dir, const TpShard& s,
                                     const model::LoadOptions& opt = {}) {
  model::Checkpoint ckpt(dir);
  return detail::build_shard<T>(detail::CheckpointSource{ckpt}, s, opt.threads);
}

/// Cuts rank s.rank's shard out of full in-memory weights (whose config must be s.global).
template <class T, class S>
model::Weights<T> shard_weights(const model::Weights<S>& full, const TpShard& s,
                                unsigned threads = model::weight_threads()) {
  const auto& a = full.config;
  const auto& b = s.global;
  PIE_CHECK(a.hidden_size == b.hidden_size && a.num_hidden_layers == b.num_hidden_layers &&
                a.num_attention_heads == b.num_attention_heads &&
                a.num_key_value_heads == b.num_key_value_heads && a.head_dim == b.head_dim &&
                a.intermediate_size == b.intermediate_size && a.vocab_size == b.vocab_size,
            "shard_weights: the weights' config differs from the shard plan's");
  return detail::build_shard<T>(detail::WeightsSource<S>(full), s, threads);
}

}  // namespace pie::parallel
