#pragma once
/// \file loader.hpp
/// \brief load_weights<T>: a Hugging Face checkpoint directory → Weights<T>, converting every
/// tensor to T and fusing q/k/v into `qkv_proj` (q rows, then k, then v; biases likewise) and
/// gate/up into `gate_up_proj` (gate rows first), as weights.hpp lays them out.
///
/// Loading is two passes: first every tensor the config needs is looked up and its shape and
/// dtype checked (so a bad checkpoint fails in milliseconds, before gigabytes are allocated),
/// then the copies/conversions run on all cores in chunks. A progress bar goes to stderr when
/// stderr is a terminal.
#include <unistd.h>

#include <atomic>
#include <memory>
#include <cstdint>
#include <type_traits>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/model/config.hpp"
#include "pie/model/parallel.hpp"
#include "pie/model/safetensors.hpp"
#include "pie/model/weights.hpp"

namespace pie::model {

/// \brief Knobs of load_weights.
struct LoadOptions {
  bool progress = true;               ///< draw a bar on stderr (only if stderr is a terminal)
  unsigned threads = weight_threads();
  /// DummyReader: record each tensor's fill in TensorStore::deferred instead of running it, the
  /// host storage left untouched, so the GPU runner fills its copy on the device (a 30B model's
  /// dummy weights then need no 60 GB host pass).
  bool defer_dummy_fill = false;
};

/// HF tensor names of layer `i` (one place, so messages and loader agree).
inline std::string layer_tensor(int i, const char* rest) {
  return "model.layers." + std::to_string(i) + "." + rest;
}

namespace detail {

/// \brief One source tensor and where its elements go.
template <class T>
struct LoadPiece {
  const TensorInfo* src;
  T* dst;
};

/// \brief Plans a load: checks names/shapes/dtypes against the config, allocates the
/// destination tensors (through `Owner::allocate(dims)`: Weights<T>, TensorStore<T>) and
/// records which source fills which part of them.
template <class T, class Owner = Weights<T>>
class LoadPlan {
 public:
  LoadPlan(const Checkpoint& ckpt, Owner& w) : ckpt_(ckpt), w_(w) {}

  /// Allocates a [rows, cols] (or [rows] when cols == 0) tensor filled by `parts` stacked by
  /// rows in order; each part is (name, its row count).
  TensorView<T> stacked(std::vector<std::pair<std::string, int64_t>> parts, int64_t cols) {
    int64_t rows = 0;
    std::vector<const TensorInfo*> srcs;
    for (auto& [name, r] : parts) {
      std::vector<int64_t> want = cols ? std::vector<int64_t>{r, cols} : std::vector<int64_t>{r};
      srcs.push_back(&checked(name, want));
      rows += r;
    }
    TensorView<T> v = cols ? w_.allocate({rows, cols}) : w_.allocate({rows});
    T* dst = v.data;
    for (const TensorInfo* s : srcs) {
      pieces_.push_back({s, dst});
      dst += s->numel();
    }
    return v;
  }
  TensorView<T> matrix(const std::string& name, int64_t rows, int64_t cols) {
    return stacked({{name, rows}}, cols);
  }
  TensorView<T> vector(const std::string& name, int64_t n) { return stacked({{name, n}}, 0); }

  const std::vector<LoadPiece<T>>& pieces() const { return pieces_; }

 private:
  const TensorInfo& checked(const std::string& name, const std::vector<int64_t>& want) {
    const TensorInfo& t = ckpt_.at(name);
    PIE_CHECK(t.shape == want, t.file, ": tensor '", name, "' has shape ", shape_string(t.shape),
              ", expected ", shape_string(want), " from config.json");
    PIE_CHECK(t.dtype, t.file, ": tensor '", name, "' has dtype ", t.dtype_name,
              ", expected F32, F16 or BF16");
    return t;
  }
  const Checkpoint& ckpt_;
  Owner& w_;
  std::vector<LoadPiece<T>> pieces_;
};

/// \brief "Loading weights [#####     ]  50%  1.2/2.4 GB" on stderr, redrawn per percent.
class ProgressBar {
 public:
  ProgressBar(bool enabled, size_t total_bytes)
      : on_(enabled && total_bytes > 0 && ::isatty(2)), total_(total_bytes) {}
  void update(size_t bytes) {
    if (!on_) return;
    int pct = static_cast<int>(100.0 * static_cast<double>(bytes) / static_cast<double>(total_));
    if (pct == last_) return;
    last_ = pct;
    char bar[31];
    for (int i = 0; i < 30; ++i) bar[i] = i < pct * 30 / 100 ? '#' : ' ';
    bar[30] = 0;
    std::fprintf(stderr, "\rLoading weights [%s] %3d%%  %.2f/%.2f GB", bar, pct, bytes / 1e9,
                 total_ / 1e9);
    if (pct >= 100) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool on_;
  size_t total_;
  int last_ = -1;
};

/// Reads every planned piece (converting to T) on `opt.threads` cores, with the progress bar.
template <class T>
void read_pieces(const std::vector<LoadPiece<T>>& pieces, const LoadOptions& opt) {
  // Chunks of ~4M elements balance the threads across a few huge and many small tensors.
  constexpr size_t kChunk = size_t{1} << 22;
  struct Chunk { const TensorInfo* src; T* dst; size_t begin, count; };
  std::vector<Chunk> chunks;
  size_t total_bytes = 0;
  for (const auto& p : pieces) {
    size_t n = static_cast<size_t>(p.src->numel());
    for (size_t b = 0; b < n; b += kChunk) chunks.push_back({p.src, p.dst, b, std::min(kChunk, n - b)});
    total_bytes += p.src->nbytes;
  }
  std::vector<size_t> bytes_before(chunks.size() + 1, 0);  // progress in source bytes
  for (size_t i = 0; i < chunks.size(); ++i)
    bytes_before[i + 1] = bytes_before[i] + chunks[i].count * dtype_size(*chunks[i].src->dtype);
  detail::ProgressBar bar(opt.progress, total_bytes);
  std::atomic<size_t> bytes_done{0};
  parallel_items(
      chunks.size(),
      [&](size_t i) {
        const Chunk& c = chunks[i];
        read_elements(*c.src, c.begin, c.count, c.dst + c.begin);
        bytes_done += bytes_before[i + 1] - bytes_before[i];
      },
      [&](size_t) { bar.update(bytes_done.load()); }, opt.threads);
}

}  // namespace detail

/// Loads the checkpoint in `dir` (safetensors, single or sharded) as described by `cfg`,
/// converting to T (float, f16 or bf16). Throws pie::Error naming the file and the tensor on
/// a missing tensor, a wrong shape, an unloadable dtype or a corrupt file.
template <class T>
Weights<T> load_weights(const std::string& dir, const ModelConfig& cfg, const LoadOptions& opt = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, f16> || std::is_same_v<T, bf16>,
                "load_weights: T must be float, f16 or bf16");
  Checkpoint ckpt(dir);
  Weights<T> w;
  w.config = cfg;
  detail::LoadPlan<T> plan(ckpt, w);
  const int64_t hidden = cfg.hidden_size, inter = cfg.intermediate_size, hd = cfg.head_dim;
  const int64_t q = cfg.q_size(), kv = cfg.kv_size();

  w.embed_tokens = plan.matrix("model.embed_tokens.weight", cfg.vocab_size, hidden);
  for (int i = 0; i < cfg.num_hidden_layers; ++i) {
    auto name = [i](const char* rest) { return layer_tensor(i, rest); };
    LayerWeights<T> l;
    l.input_layernorm = plan.vector(name("input_layernorm.weight"), hidden);
    l.qkv_proj = plan.stacked({{name("self_attn.q_proj.weight"), q},
                               {name("self_attn.k_proj.weight"), kv},
                               {name("self_attn.v_proj.weight"), kv}}, hidden);
    if (cfg.attention_bias)
      l.qkv_bias = plan.stacked({{name("self_attn.q_proj.bias"), q},
                                 {name("self_attn.k_proj.bias"), kv},
                                 {name("self_attn.v_proj.bias"), kv}}, 0);
    if (cfg.qk_norm) {
      l.q_norm = plan.vector(name("self_attn.q_norm.weight"), hd);
      l.k_norm = plan.vector(name("self_attn.k_norm.weight"), hd);
    }
    l.o_proj = plan.matrix(name("self_attn.o_proj.weight"), hidden, q);
    l.post_attention_layernorm = plan.vector(name("post_attention_layernorm.weight"), hidden);
    l.gate_up_proj = plan.stacked({{name("mlp.gate_proj.weight"), inter},
                                   {name("mlp.up_proj.weight"), inter}}, hidden);
    l.down_proj = plan.matrix(name("mlp.down_proj.weight"), hidden, inter);
    w.layers.push_back(l);
  }
  w.norm = plan.vector("model.norm.weight", hidden);
  // Tied checkpoints usually omit lm_head.weight; when present it is a copy, so alias anyway.
  w.lm_head = cfg.tie_word_embeddings ? w.embed_tokens
                                      : plan.matrix("lm_head.weight", cfg.vocab_size, hidden);

  detail::read_pieces(plan.pieces(), opt);
  return w;
}

/// \brief Host storage of a model's tensors, shared by copies of the weights that view it (a
/// user's weights struct holds one, so the struct itself stays a copyable set of views).
/// \brief A dummy tensor's fill, not yet run (LoadOptions::defer_dummy_fill): `n` elements at
/// `data` as DummyReader writes them (model/dummy.hpp), RMSNorm-like when `norm`, keyed by `key`.
template <class T>
struct DeferredFill {
  const T* data;
  size_t n;
  bool norm;
  uint64_t key;
};

template <class T>
struct TensorStore {
  std::shared_ptr<std::vector<HostBuffer<T>>> buffers = std::make_shared<std::vector<HostBuffer<T>>>();
  std::shared_ptr<std::vector<DeferredFill<T>>> deferred;  ///< null unless fills were deferred
  TensorView<T> allocate(std::initializer_list<int64_t> dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    buffers->emplace_back(static_cast<size_t>(n));
    return TensorView<T>(buffers->back().data(), dims);
  }
};

/// \brief Reads the tensors a model declares from a checkpoint directory, for a user's model
/// (model_concept.hpp): declare each tensor (names, shapes checked against the file, errors name
/// the file and tensor), then read() them all in parallel, converted to T.
template <class T>
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& dir) : ckpt_(dir), plan_(ckpt_, store_) {}
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;
  /// [rows, cols] from one tensor.
  TensorView<T> matrix(const std::string& name, int64_t rows, int64_t cols) { return plan_.matrix(name, rows, cols); }
  /// [n] from one tensor.
  TensorView<T> vector(const std::string& name, int64_t n) { return plan_.vector(name, n); }
  /// Tensors stacked by rows into one (fused projections): each part is (name, its rows).
  TensorView<T> stacked(std::vector<std::pair<std::string, int64_t>> parts, int64_t cols) {
    return plan_.stacked(std::move(parts), cols);
  }
  /// Whether the checkpoint has `name` (optional tensors, tied heads).
  bool has(const std::string& name) const { return ckpt_.find(name) != nullptr; }
  /// Reads everything declared; returns the storage the views point into.
  TensorStore<T> read(const LoadOptions& opt = {}) {
    detail::read_pieces(plan_.pieces(), opt);
    return store_;
  }

 private:
  Checkpoint ckpt_;
  TensorStore<T> store_;
  detail::LoadPlan<T, TensorStore<T>> plan_;
};

}  // namespace pie::model
