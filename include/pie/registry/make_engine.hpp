#pragma once
/// \file make_engine.hpp
/// \brief make_engine(options): THE place where runtime choices (model architecture from
/// config.json, --device, --dtype, --kv-cache-dtype, --block-size, --tensor-parallel-size)
/// become an Engine type. Every entry point (`pie serve`, `pie generate`, `pie bench`, pie::LLM)
/// calls it; a combination that is not compiled fails with one message listing those that are.
///
/// The compiled engines are two type lists, one per backend. The CPU list is instantiated in any
/// translation unit that calls make_engine(); the CUDA list where registry/cuda/cuda_engines.cuh
/// is included (one CUDA translation unit of the program is enough: it registers the CUDA
/// factory at static initialisation, and host translation units reach it through that).
///
/// A program with several translation units that call make_engine() (directly or through
/// pie::LLM) compiles the CPU list in each of them. To compile it once, define
/// PIE_MAKE_ENGINE_OUT_OF_LINE in all of them: make_engine() is then only declared here, and the
/// one translation unit that also defines PIE_MAKE_ENGINE_DEFINE before including this header
/// holds its (non-inline) definition. Without either macro it is an inline function, as a
/// header-only library's should be. (`pie` and the test programs do this, examples/pie and
/// tests/CMakeLists.txt: ~45 s of compile per translation unit spared on CI's machine.)
#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/any_engine.hpp"
#include "pie/engine/engine.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/embedded.hpp"
#include "pie/model/fp8_weights.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/model/qwen3_moe.hpp"
#include "pie/parallel/cpu_group.hpp"

namespace pie {

namespace registry {

/// \brief A list of types.
template <class... Ts>
struct List {};

/// The models make_engine() can run on every backend, chosen by config.json's architecture
/// (the CUDA list: registry/cuda/cuda_engines.cuh).
using Models = List<Qwen3, Qwen2, Llama, Qwen3Moe>;
/// The models of the CPU backend (all of them).
using CpuModels = Models;

template <class... Ms>
bool has_model(List<Ms...>, const std::string& name) {
  return ((name == Ms::kName) || ...);
}
/// The compiled CPU policies (exact fp32 at the block sizes vLLM offers; bf16 storage).
/// CpuF32Fp8: the fp32 reference of fp8 weights (`--quantization fp8`).
using CpuPolicies = List<EnginePolicy<8, float, float, attention::Causal, backend::Cpu>, CpuF32,
                         EnginePolicy<32, float, float, attention::Causal, backend::Cpu>, CpuBf16, CpuF32Fp8>;
/// The compiled CUDA policies (bf16 tensor cores): bf16 KV at blocks of 8 and 16, the fp8 e4m3 KV
/// cache (`--kv-cache-dtype fp8`, per-tensor scale), fp8 projection weights (`--quantization
/// fp8`) and both together, at blocks of 16 only, since every policy instantiates the whole
/// forward (and its own attention kernels) in the registry's translation unit.
using CudaPolicies = List<EnginePolicy<8, bf16, bf16, attention::Causal, backend::Cuda>, CudaBf16, CudaBf16Fp8KV,
                          CudaBf16Fp8, CudaBf16Fp8Fp8KV>;
/// The models with fp8 projection weights (the dense Qwen3 family: model_runs_policy).
using Fp8Models = List<Qwen3, Qwen2, Llama>;

/// \brief The resolved choice of one make_engine() call.
struct Choice {
  std::string device, model, dtype, kv_dtype;
  std::string weights;  ///< the projection weights' dtype: dtype, or "fp8"
  int block_size = 16;
  int tp = 1;
  std::string str() const {
    return device + "/" + model + "/" + dtype + "/kv " + kv_dtype + "/block " + std::to_string(block_size) +
           (weights == "fp8" ? "/weights fp8" : "") + (tp > 1 ? "/tp " + std::to_string(tp) : "");
  }
};

inline const char* dtype_flag(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: return "fp8";
  }
}
template <class Policy>
bool policy_matches(const Choice& c) {
  return c.block_size == Policy::block_size && c.dtype == dtype_flag(DTypeTraits<typename Policy::dtype>::dtype) &&
         c.kv_dtype == dtype_flag(DTypeTraits<typename Policy::kv_dtype>::dtype) &&
         (c.weights == "fp8") == Policy::fp8_weights;
}
template <class Policy>
std::string policy_str(const char* device) {
  return std::string(device) + "/" + dtype_flag(DTypeTraits<typename Policy::dtype>::dtype) + "/kv " +
         dtype_flag(DTypeTraits<typename Policy::kv_dtype>::dtype) + "/block " + std::to_string(Policy::block_size) +
         (Policy::fp8_weights ? "/weights fp8" : "");
}
/// Whether model M runs under policy P (fp8 weights are the Qwen3 family's).
template <class M, class P>
inline constexpr bool model_runs_policy = !P::fp8_weights || model::uses_family_weights<M, typename P::dtype>;

/// Calls f.template operator()<Model, Policy>() for the first (model, policy) of the lists that
/// matches `c`; false when none does.
template <class... Ms, class... Ps, class F>
bool visit(List<Ms...>, List<Ps...>, const Choice& c, F&& f) {
  bool done = false;
  auto try_model = [&]<class M>() {
    if (done || c.model != M::kName) return;
    auto try_policy = [&]<class P>() {
      if constexpr (model_runs_policy<M, P>) {
        if (!done && policy_matches<P>(c)) {
          done = true;
          f.template operator()<M, P>();
        }
      }
    };
    (try_policy.template operator()<Ps>(), ...);
  };
  (try_model.template operator()<Ms>(), ...);
  return done;
}
template <class... Ps>
void list_policies(List<Ps...>, const char* device, std::vector<std::string>& out) {
  (out.push_back(policy_str<Ps>(device)), ...);
}

/// The CUDA half, registered by registry/cuda/cuda_engines.cuh (see file comment).
using CudaFactory = std::unique_ptr<AnyEngine> (*)(const Choice&, const EngineOptions&);
inline CudaFactory& cuda_factory() {
  static CudaFactory f = nullptr;
  return f;
}

}  // namespace registry

/// Every engine configuration this program can build, one line each ("device/dtype/kv …/block N",
/// for each of the models qwen3, qwen2, llama, qwen3_moe, at any tensor-parallel size the model
/// supports).
inline std::vector<std::string> compiled_engines() {
  std::vector<std::string> out;
  registry::list_policies(registry::CpuPolicies{}, "cpu", out);
  if (registry::cuda_factory()) registry::list_policies(registry::CudaPolicies{}, "cuda", out);
  return out;
}

/// The model make_engine() would run for `opt` ("qwen3", "qwen2", "llama", "qwen3_moe"):
/// config.json's architecture, or the embedded default's. Throws naming the file for another
/// architecture.
inline std::string engine_model_name(const EngineOptions& opt) {
  const model::ModelConfig cfg =
      opt.model_dir.empty() ? model::embedded_config() : model::load_model_config(opt.model_dir, true);
  switch (cfg.architecture) {
    case model::Architecture::Qwen3: return std::string(Qwen3::kName);
    case model::Architecture::Qwen2: return std::string(Qwen2::kName);
    case model::Architecture::Llama: return std::string(Llama::kName);
    case model::Architecture::Custom: break;
  }
  if (cfg.architecture_name == Qwen3Moe::kArchitectureName) return std::string(Qwen3Moe::kName);
  PIE_FAIL((std::filesystem::path(opt.model_dir) / "config.json").string(), ": unsupported architecture ",
           cfg.architecture_name,
           " (supported: Qwen3ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM, Qwen3MoeForCausalLM)");
}

/// The choice make_engine() resolves from `opt` (the defaults of auto dtypes per device).
inline registry::Choice resolve_engine(const EngineOptions& opt) {
  registry::Choice c;
  const bool gpu = opt.device == "cuda";
  PIE_CHECK(gpu || opt.device == "cpu", "--device ", opt.device, " is not one of cpu, cuda");
  c.device = opt.device;
  c.model = engine_model_name(opt);
  c.dtype = opt.dtype == "auto" ? (gpu ? "bfloat16" : "float32") : (opt.dtype == "float" ? "float32" : opt.dtype);
  c.kv_dtype = opt.kv_cache_dtype == "auto" ? c.dtype : opt.kv_cache_dtype == "fp8_e4m3" ? "fp8" : opt.kv_cache_dtype;
  // vLLM's --quantization: given, or config.json's quantization_config (which also refuses a
  // scheme pie cannot run, naming the file).
  const bool ckpt_fp8 = !opt.model_dir.empty() &&
                        model::checkpoint_quantization(opt.model_dir) == model::CheckpointQuant::Fp8Block;
  PIE_CHECK(opt.quantization.empty() || opt.quantization == "fp8", "--quantization ", opt.quantization,
            " is not supported (supported: fp8)");
  c.weights = opt.quantization == "fp8" || ckpt_fp8 ? "fp8" : c.dtype;
  c.block_size = opt.block_size;
  c.tp = opt.tensor_parallel_size;
  PIE_CHECK(c.tp >= 1, "--tensor-parallel-size must be >= 1, got ", c.tp);
  return c;
}

/// Whether make_engine() can build `c` in this program (any tensor-parallel size is; a model
/// that refuses tensor parallelism says so when the engine is built).
inline bool is_compiled(const registry::Choice& c) {
  if (c.device == "cuda" && !registry::has_model(registry::Models{}, c.model)) return false;
  if (c.weights == "fp8" && !registry::has_model(registry::Fp8Models{}, c.model)) return false;
  const std::string want = c.device + "/" + c.dtype + "/kv " + c.kv_dtype + "/block " + std::to_string(c.block_size) +
                           (c.weights == "fp8" ? "/weights fp8" : "");
  for (const auto& line : compiled_engines())
    if (line == want) return true;
  return false;
}

/// The error for a combination that is not compiled: it lists those that are.
[[noreturn]] inline void fail_not_compiled(const registry::Choice& c) {
  PIE_CHECK(c.weights != "fp8" || registry::has_model(registry::Fp8Models{}, c.model), "model ", c.model,
            " has no fp8 weights (--quantization fp8 runs qwen3, qwen2 and llama)");
  std::string have;
  for (const auto& s : compiled_engines()) have += "\n  " + s;
  if (!registry::cuda_factory()) have += "\n  (no CUDA engines: this program was built without the CUDA backend)";
  PIE_FAIL("no compiled engine for ", c.str(), "; compiled (models qwen3, qwen2, llama, qwen3_moe; any tensor-parallel size):",
           have);
}


/// Builds the engine `opt` asks for (see file comment). Throws pie::Error listing the compiled
/// configurations when the combination is not one of them.
#if defined(PIE_MAKE_ENGINE_OUT_OF_LINE) && !defined(PIE_MAKE_ENGINE_DEFINE)
std::unique_ptr<AnyEngine> make_engine(const EngineOptions& opt);  // defined where PIE_MAKE_ENGINE_DEFINE is
#else
#if defined(PIE_MAKE_ENGINE_DEFINE)
#if !defined(PIE_MAKE_ENGINE_OUT_OF_LINE)
#error "PIE_MAKE_ENGINE_DEFINE needs PIE_MAKE_ENGINE_OUT_OF_LINE (see the file comment)"
#endif
std::unique_ptr<AnyEngine> make_engine(const EngineOptions& opt) {
#else
inline std::unique_ptr<AnyEngine> make_engine(const EngineOptions& opt) {
#endif
  const registry::Choice c = resolve_engine(opt);
  std::unique_ptr<AnyEngine> e;
  if (c.device == "cpu") {
    registry::visit(registry::CpuModels{}, registry::CpuPolicies{}, c, [&]<class M, class P>() {
      e = std::make_unique<AnyEngineOf<Engine<M, P>>>(std::in_place, opt,
                                                      c.tp > 1 ? parallel::cpu_group(c.tp) : engine::RankGroup{});
    });
  } else if (registry::cuda_factory()) {
    e = registry::cuda_factory()(c, opt);
  }
  if (!e) fail_not_compiled(c);
  return e;
}
#endif

}  // namespace pie
