#pragma once
/// \file fp8_weights.hpp
/// \brief FP8 weights of the Qwen3 family (vLLM's `--quantization fp8`): Fp8Weights<T> is
/// model::Weights<T> with every projection (qkv, o, gate_up, down) an Fp8Weight
/// (core/fp8_weight.hpp) and everything else (embeddings, norms, biases, lm_head) in T. The one
/// forward (model/qwen3.hpp) runs it unchanged: the backends' `linear` / `norm_linear` take an
/// Fp8Weight as well as a T matrix.
///
/// Three ways to get them, as vLLM:
/// - a checkpoint in the published FP8 format (Qwen/Qwen3-8B-FP8: config.json's
///   `quantization_config` {quant_method fp8, fmt e4m3, activation_scheme dynamic,
///   weight_block_size [128, 128]}; each projection's `weight` in F8_E4M3 with a float
///   `weight_scale_inv` [ceil(N/128), ceil(K/128)]): read as is, validated (load_fp8_weights);
/// - a bf16 / fp32 checkpoint quantized at load, one scale per output channel (quantize_weights);
/// - `--load-format dummy`: random weights of the shape, quantized the same way.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/core/fp8_weight.hpp"
#include "pie/model/config.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/load.hpp"
#include "pie/model/loader.hpp"
#include "pie/model/parallel.hpp"
#include "pie/model/safetensors.hpp"
#include "pie/model/weights.hpp"

namespace pie::model {

/// \brief What config.json's `quantization_config` says about the checkpoint's weights.
enum class CheckpointQuant {
  None,      ///< no quantization_config: weights in F32/F16/BF16
  Fp8Block,  ///< the published fp8 format: e4m3 weights, 128×128 block scales, dynamic activations
};

/// Reads `dir`/config.json's quantization_config. Throws naming the file and the field for one pie
/// cannot run (another quant_method, fmt, activation_scheme or block size).
inline CheckpointQuant checkpoint_quantization(const std::string& dir) {
  if (dir.empty()) return CheckpointQuant::None;
  const std::string file = std::filesystem::is_directory(dir) ? (std::filesystem::path(dir) / "config.json").string() : dir;
  const nlohmann::json j = detail::read_json(file);
  if (!detail::has(j, "quantization_config")) return CheckpointQuant::None;
  const nlohmann::json& q = j.at("quantization_config");
  PIE_CHECK(q.is_object(), file, ": quantization_config must be an object");
  const std::string method = detail::get_or<std::string>(q, "quant_method", "", file);
  PIE_CHECK(method == "fp8", file, ": quantization_config.quant_method '", method,
            "' is not supported (pie reads fp8 checkpoints: quant_method fp8, fmt e4m3, weight_block_size [128, 128])");
  const std::string fmt = detail::get_or<std::string>(q, "fmt", "e4m3", file);
  PIE_CHECK(fmt == "e4m3", file, ": quantization_config.fmt '", fmt, "' is not supported (pie reads e4m3)");
  const std::string act = detail::get_or<std::string>(q, "activation_scheme", "dynamic", file);
  PIE_CHECK(act == "dynamic", file, ": quantization_config.activation_scheme '", act,
            "' is not supported (pie quantizes activations dynamically)");
  PIE_CHECK(detail::has(q, "weight_block_size"), file,
            ": quantization_config has no weight_block_size (pie reads 128×128 block-scaled fp8 checkpoints)");
  const nlohmann::json& b = q.at("weight_block_size");
  PIE_CHECK(b.is_array() && b.size() == 2 && b[0].is_number_integer() && b[1].is_number_integer() &&
                b[0].get<int64_t>() == kFp8Block && b[1].get<int64_t>() == kFp8Block,
            file, ": quantization_config.weight_block_size ", b.dump(), " is not supported (pie reads [128, 128])");
  return CheckpointQuant::Fp8Block;
}

/// \brief One decoder layer with fp8 projections (the fields of LayerWeights<T>).
template <class T>
struct Fp8LayerWeights {
  TensorView<T> input_layernorm;
  Fp8Weight qkv_proj;                  ///< [(nq + 2 nkv)·hd, hidden]
  TensorView<T> qkv_bias;              ///< or empty
  TensorView<T> q_norm, k_norm;        ///< or empty
  Fp8Weight o_proj;                    ///< [hidden, nq·hd]
  TensorView<T> post_attention_layernorm;
  Fp8Weight gate_up_proj;              ///< [2·intermediate, hidden]
  Fp8Weight down_proj;                 ///< [hidden, intermediate]
};

/// \brief A model with fp8 projections; owns its host storage (see file comment).
template <class T>
struct Fp8Weights {
  ModelConfig config;
  bool block = true;                   ///< 128×128 block scales (else one per output channel)
  TensorView<T> embed_tokens;
  std::vector<Fp8LayerWeights<T>> layers;
  TensorView<T> norm;
  TensorView<T> lm_head;               ///< aliases embed_tokens when tied
  std::vector<HostBuffer<T>> storage;
  std::vector<HostBuffer<fp8_e4m3>> q_storage;
  std::vector<HostBuffer<float>> scale_storage;
  std::shared_ptr<const void> keep;    ///< weights this was quantized from (their T tensors are shared)

  TensorView<T> allocate(std::initializer_list<int64_t> dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    storage.emplace_back(static_cast<size_t>(n));
    return TensorView<T>(storage.back().data(), dims);
  }
  /// An uninitialised [N, K] fp8 weight of the model's scheme (scales zeroed, padding included).
  Fp8Weight allocate_fp8(int64_t N, int64_t K) {
    Fp8Weight w;
    w.block_n = block ? kFp8Block : 1;
    w.block_k = block ? kFp8Block : static_cast<int>(K);
    w.scale_ld = block ? fp8_block_scale_ld(K) : 1;
    q_storage.emplace_back(static_cast<size_t>(N * K));
    w.q = TensorView<fp8_e4m3>(q_storage.back().data(), {N, K});
    const int64_t nb = w.n_blocks();
    scale_storage.emplace_back(static_cast<size_t>(nb * w.scale_ld));
    std::fill_n(scale_storage.back().data(), nb * w.scale_ld, 0.0f);
    w.scale = TensorView<float>(scale_storage.back().data(), {nb, w.scale_ld});
    return w;
  }
  /// Bytes of the fp8 weights and their scales (what a forward step streams, without embeddings).
  size_t fp8_bytes() const {
    size_t b = 0;
    for (const auto& L : layers) b += L.qkv_proj.bytes() + L.o_proj.bytes() + L.gate_up_proj.bytes() + L.down_proj.bytes();
    return b;
  }
};

/// Quantizes `src` ([N, K], any T) into `dst` per output channel: scale = max |row| / 448.
template <class T>
void quantize_per_channel(const TensorView<T>& src, Fp8Weight& dst) {
  const int64_t N = src.shape[0], K = src.shape[1];
  PIE_CHECK(dst.per_channel() && dst.rows() == N && dst.cols() == K, "quantize_per_channel: shapes differ");
  for (int64_t r = 0; r < N; ++r) {
    const T* row = src.data + r * K;
    float amax = 0.0f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(to_float(row[k])));
    const float s = fp8_group_scale(amax);
    dst.scale.data[r] = s;
    for (int64_t k = 0; k < K; ++k) dst.q.data[r * K + k] = fp8_e4m3(to_float(row[k]) / s);
  }
}

/// `w`'s projections quantized per output channel (vLLM's `--quantization fp8` on a bf16
/// checkpoint); the other tensors are shared with `w`, which the result keeps alive.
template <class T>
Fp8Weights<T> quantize_weights(std::shared_ptr<const Weights<T>> w, unsigned threads = weight_threads()) {
  Fp8Weights<T> q;
  q.config = w->config;
  q.block = false;
  q.embed_tokens = w->embed_tokens;
  q.norm = w->norm;
  q.lm_head = w->lm_head;
  struct Job { const TensorView<T>* src; Fp8Weight* dst; };
  std::vector<Job> jobs;
  q.layers.resize(w->layers.size());
  for (size_t l = 0; l < w->layers.size(); ++l) {
    const auto& s = w->layers[l];
    auto& d = q.layers[l];
    d.input_layernorm = s.input_layernorm;
    d.qkv_bias = s.qkv_bias;
    d.q_norm = s.q_norm;
    d.k_norm = s.k_norm;
    d.post_attention_layernorm = s.post_attention_layernorm;
    for (auto [src, dst] : {std::pair{&s.qkv_proj, &d.qkv_proj}, std::pair{&s.o_proj, &d.o_proj},
                            std::pair{&s.gate_up_proj, &d.gate_up_proj}, std::pair{&s.down_proj, &d.down_proj}}) {
      *dst = q.allocate_fp8(src->shape[0], src->shape[1]);
      jobs.push_back({src, dst});
    }
  }
  parallel_items(jobs.size(), [&](size_t i) { quantize_per_channel(*jobs[i].src, *jobs[i].dst); }, threads);
  q.keep = std::move(w);
  return q;
}

namespace detail {

/// \brief One fp8 checkpoint tensor and the rows of the fused weight it fills.
struct Fp8Piece {
  const TensorInfo* q;
  const TensorInfo* scale;
  Fp8Weight* dst;
  int64_t row0;
};

/// Checks the parts (HF projection names without ".weight", and their rows) of one fused fp8
/// projection with K columns against the published format, and allocates it in `w`.
template <class T>
Fp8Weight fp8_stacked(const Checkpoint& ckpt, Fp8Weights<T>& w, const std::vector<std::pair<std::string, int64_t>>& parts,
                      int64_t K, std::vector<std::pair<const TensorInfo*, const TensorInfo*>>& out) {
  int64_t rows = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto& [base, r] = parts[i];
    const std::string wn = base + ".weight", sn = base + ".weight_scale_inv";
    const TensorInfo& t = ckpt.at(wn);
    PIE_CHECK(t.dtype_name == "F8_E4M3", t.file, ": tensor '", wn, "' has dtype ", t.dtype_name,
              ", expected F8_E4M3 (config.json's quantization_config says fp8 e4m3)");
    PIE_CHECK(t.shape == std::vector<int64_t>({r, K}), t.file, ": tensor '", wn, "' has shape ", shape_string(t.shape),
              ", expected ", shape_string({r, K}), " from config.json");
    const TensorInfo* s = ckpt.find(sn);
    PIE_CHECK(s != nullptr, t.file, ": tensor '", wn, "' has no scale '", sn,
              "' (an fp8 checkpoint needs one float scale per 128×128 block of every projection)");
    const std::vector<int64_t> want{(r + kFp8Block - 1) / kFp8Block, (K + kFp8Block - 1) / kFp8Block};
    PIE_CHECK(s->shape == want, s->file, ": tensor '", sn, "' has shape ", shape_string(s->shape), ", expected ",
              shape_string(want), " (one scale per 128×128 block of '", wn, "' ", shape_string({r, K}), ")");
    PIE_CHECK(s->dtype, s->file, ": tensor '", sn, "' has dtype ", s->dtype_name, ", expected F32 (or F16, BF16)");
    PIE_CHECK(i + 1 == parts.size() || r % kFp8Block == 0, t.file, ": tensor '", wn, "' has ", r,
              " rows, not a multiple of 128: its blocks do not line up with the next part of the fused projection");
    out.push_back({&t, s});
    rows += r;
  }
  return w.allocate_fp8(rows, K);
}

}  // namespace detail

/// Loads a checkpoint in the published fp8 format (see file comment) as Fp8Weights<T>; the
/// unquantized tensors are converted to T. Throws naming the file and the tensor on a missing
/// weight or scale, a wrong dtype, a wrong shape or block-scale shape.
template <class T>
Fp8Weights<T> load_fp8_weights(const std::string& dir, const ModelConfig& cfg, const LoadOptions& opt = {}) {
  Checkpoint ckpt(dir);
  Fp8Weights<T> w;
  w.config = cfg;
  w.block = true;
  w.layers.reserve(cfg.num_hidden_layers);
  detail::LoadPlan<T, Fp8Weights<T>> plan(ckpt, w);
  const int64_t hidden = cfg.hidden_size, inter = cfg.intermediate_size, hd = cfg.head_dim;
  const int64_t q = cfg.q_size(), kv = cfg.kv_size();
  struct Job { std::vector<std::pair<const TensorInfo*, const TensorInfo*>> parts; int layer; Fp8Weight Fp8LayerWeights<T>::*m; };
  std::vector<Job> jobs;
  w.embed_tokens = plan.matrix("model.embed_tokens.weight", cfg.vocab_size, hidden);
  for (int i = 0; i < cfg.num_hidden_layers; ++i) {
    auto name = [i](const char* rest) { return layer_tensor(i, rest); };
    Fp8LayerWeights<T> l;
    auto proj = [&](Fp8Weight Fp8LayerWeights<T>::*m, std::vector<std::pair<std::string, int64_t>> parts, int64_t K) {
      Job j{{}, i, m};
      l.*m = detail::fp8_stacked(ckpt, w, parts, K, j.parts);
      jobs.push_back(std::move(j));
    };
    l.input_layernorm = plan.vector(name("input_layernorm.weight"), hidden);
    proj(&Fp8LayerWeights<T>::qkv_proj,
         {{name("self_attn.q_proj"), q}, {name("self_attn.k_proj"), kv}, {name("self_attn.v_proj"), kv}}, hidden);
    if (cfg.attention_bias)
      l.qkv_bias = plan.stacked({{name("self_attn.q_proj.bias"), q},
                                 {name("self_attn.k_proj.bias"), kv},
                                 {name("self_attn.v_proj.bias"), kv}}, 0);
    if (cfg.qk_norm) {
      l.q_norm = plan.vector(name("self_attn.q_norm.weight"), hd);
      l.k_norm = plan.vector(name("self_attn.k_norm.weight"), hd);
    }
    proj(&Fp8LayerWeights<T>::o_proj, {{name("self_attn.o_proj"), hidden}}, q);
    l.post_attention_layernorm = plan.vector(name("post_attention_layernorm.weight"), hidden);
    proj(&Fp8LayerWeights<T>::gate_up_proj, {{name("mlp.gate_proj"), inter}, {name("mlp.up_proj"), inter}}, hidden);
    proj(&Fp8LayerWeights<T>::down_proj, {{name("mlp.down_proj"), hidden}}, inter);
    w.layers.push_back(l);
  }
  w.norm = plan.vector("model.norm.weight", hidden);
  w.lm_head = cfg.tie_word_embeddings ? w.embed_tokens : plan.matrix("lm_head.weight", cfg.vocab_size, hidden);

  detail::read_pieces(plan.pieces(), opt);
  // The fp8 codes are copied as they are; block scales go into rows of scale_ld floats.
  parallel_items(jobs.size(), [&](size_t ji) {
    const Job& j = jobs[ji];
    Fp8Weight& dst = w.layers[j.layer].*(j.m);
    int64_t row0 = 0;
    for (const auto& [t, s] : j.parts) {
      const int64_t r = t->shape[0], K = t->shape[1];
      std::memcpy(dst.q.data + row0 * K, t->data, static_cast<size_t>(r * K));
      std::vector<float> sc(static_cast<size_t>(s->numel()));
      read_elements(*s, 0, sc.size(), sc.data());
      const int64_t nb = s->shape[0], kb = s->shape[1];
      for (int64_t b = 0; b < nb; ++b)
        std::copy_n(sc.data() + b * kb, kb, dst.scale.data + (row0 / kFp8Block + b) * dst.scale_ld);
      row0 += r;
    }
  }, opt.threads);
  return w;
}

/// \brief What load_fp8_model returns: the weights and the generation defaults.
template <class T>
struct LoadedFp8Model {
  Fp8Weights<T> weights;
  GenerationConfig generation;
};

/// The fp8 model of `dir` (load_model's counterpart): a published fp8 checkpoint as it is, any
/// other checkpoint (or the embedded default, or `--load-format dummy` weights) quantized per
/// output channel at load. Dummy weights of an fp8 config (one with a quantization_config) are
/// quantized per channel too: they are random either way.
template <class T>
LoadedFp8Model<T> load_fp8_model(const std::string& dir, LoadFormat format = LoadFormat::Auto, uint64_t dummy_seed = 0,
                                 const LoadOptions& opt = {}) {
  if (!dir.empty() && format != LoadFormat::Dummy && checkpoint_quantization(dir) == CheckpointQuant::Fp8Block) {
    ModelConfig cfg = load_model_config(dir);
    GenerationConfig gen = load_generation_config(dir, cfg);
    return {load_fp8_weights<T>(dir, cfg, opt), gen};
  }
  if (!dir.empty()) checkpoint_quantization(dir);  // refuses a quantization_config pie cannot run
  auto m = load_model<T>(dir, format, dummy_seed, opt);
  return {quantize_weights<T>(std::make_shared<const Weights<T>>(std::move(m.weights)), opt.threads), m.generation};
}

}  // namespace pie::model
