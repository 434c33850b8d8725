#pragma once
/// \file model_concept.hpp
/// \brief What a model is to the engine, so that a researcher can write one in their own file
/// and run it with Engine<MyModel, Policy> on the CPU or a GPU, changing nothing in pie.
///
/// A model is a struct of static members (a policy, like EnginePolicy):
///
///   static constexpr std::string_view kName;            // for messages
///   static model::ModelConfig load_config(const std::string& dir);
///       // config.json → the decoder fields the engine needs (layers, heads, head_dim, vocab,
///       // RoPE, eps, eos); model::load_model_config(dir, true) parses them for any architecture
///   static void check_config(const model::ModelConfig&); // throw if the checkpoint is not yours
///   template <class T> struct Weights;                  // views of the tensors, copyable:
///       //   model::ModelConfig config; TensorView<T> members;
///       //   template <class F> void for_each(F&& f);    // f(TensorView<T>&) for every tensor
///       //     (each once; a tied head may alias another view), so a backend can place them
///   template <class T> static Weights<T> load(const std::string& dir, const model::ModelConfig&,
///                                             const model::LoadOptions&);
///       // model::CheckpointReader<T> declares and reads them, checking names and shapes
///   template <class T> static Weights<T> dummy(const std::string& dir, const model::ModelConfig&,
///                                              uint64_t seed, const model::LoadOptions&);
///       // optional: random weights of the checkpoint's shape (--load-format dummy); declaring
///       // the tensors with a model::DummyReader<T> (model/dummy.hpp) instead of the reader
///   template <class F, class W> static void forward(F& f, const W& w);
///       // the step, written once over the backend's forward context F (engine/cpu/cpu_forward.hpp,
///       // engine/cuda/cuda_forward.cuh): f.act(cols), f.embed, f.linear, f.norm_linear,
///       // f.add_rms_norm, f.rms_norm, f.add, f.qk_norm_rope, f.rope, f.attention(layer, qkv, out),
///       // f.silu_and_mul, f.moe (a sparse MoE block), f.norm_moe (add_rms_norm then moe: a
///       // backend may fuse the norm into the router), f.all_reduce (tensor
///       // parallelism's hook), f.logits, f.prefetch(w...) (a hint: these weights are read next,
///       // after ops that leave DRAM idle; engine/l2_prefetch.hpp)
///
/// The engine then gives the model paged KV, continuous batching, chunked prefill, prefix
/// caching, preemption, device sampling and CUDA graphs. The Qwen3 family (model/qwen3.hpp) is
/// a model too; it alone also declares tensor-parallel sharding and dummy weights today.
/// examples/custom_model/olmo2.hpp is a complete user model (docs/architecture.md, "Write your
/// own model").
#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>

#include "pie/model/config.hpp"
#include "pie/core/error.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/load.hpp"
#include "pie/model/tp_plan.hpp"
#include "pie/model/weights.hpp"

namespace pie::model {

/// True for models whose weights are the Qwen3 family's layout (model::Weights<T>): the engine's
/// own loaders, dummy weights, tensor-parallel shards and fused GPU kernels apply.
template <class M, class T>
inline constexpr bool uses_family_weights = std::is_same_v<typename M::template Weights<T>, Weights<T>>;

/// config.json of `dir` as model M reads it.
template <class M>
ModelConfig config_of(const std::string& dir) {
  if constexpr (requires { M::load_config(dir); }) return M::load_config(dir);
  else return load_model_config(dir);
}

/// \brief A user model's weights and configs, read from its checkpoint directory.
template <class M, class T>
struct UserModel {
  typename M::template Weights<T> weights;
  ModelConfig config;
  GenerationConfig generation;
};

/// Whether model M declares dummy weights (M::dummy<T>).
/// Whether M declares tensor-parallel sharding of its weights (optional):
///   template <class T> static Weights<T> shard(const Weights<T>& full, const parallel::TpShard&);
/// returning rank shard.rank's weights, config = shard.local (model/tp_plan.hpp's layout).
template <class M, class T>
inline constexpr bool has_tp_shard = requires(const typename M::template Weights<T>& w, const parallel::TpShard& s) {
  { M::template shard<T>(w, s) } -> std::same_as<typename M::template Weights<T>>;
};

template <class M, class T>
inline constexpr bool has_dummy_weights = requires(const std::string& d, const ModelConfig& c, const LoadOptions& o) {
  M::template dummy<T>(d, c, uint64_t{0}, o);
};

/// Reads model M from `dir` (config, generation defaults, weights in T), or makes its dummy
/// weights of `seed` when `format` is Dummy and M declares them; throws naming what is missing.
/// User models have no embedded default.
template <class M, class T>
UserModel<M, T> load_user_model(const std::string& dir, LoadFormat format, const LoadOptions& opt, uint64_t seed = 0) {
  PIE_CHECK(!dir.empty(), "model ", M::kName, " has no embedded default: give its checkpoint directory");
  constexpr bool kHasDummy = has_dummy_weights<M, T>;
  PIE_CHECK(format != LoadFormat::Dummy || kHasDummy, "model ", M::kName,
            " declares no dummy weights (--load-format dummy)");
  UserModel<M, T> m;
  m.config = config_of<M>(dir);
  M::check_config(m.config);
  m.generation = load_generation_config(dir, m.config);
  if constexpr (has_dummy_weights<M, T>) {
    if (format == LoadFormat::Dummy) {
      m.weights = M::template dummy<T>(dir, m.config, seed, opt);
      return m;
    }
  }
  m.weights = M::template load<T>(dir, m.config, opt);
  return m;
}

}  // namespace pie::model
