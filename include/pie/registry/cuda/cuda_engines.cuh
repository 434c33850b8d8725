#pragma once
/// \file cuda_engines.cuh
/// \brief The CUDA half of the registry (registry/make_engine.hpp): instantiates the compiled
/// CUDA engines (registry::CudaPolicies × registry::Models) and registers their factory, so
/// make_engine() in host-compiled code can build them. Include it in one CUDA translation unit
/// of the program; with PIE_WITH_NCCL (NCCL found and linked) tensor-parallel groups are NCCL's.
#include <memory>

#include "pie/engine/cuda/cuda_runner.cuh"
#include "pie/registry/make_engine.hpp"
#if defined(PIE_WITH_NCCL)
#include "pie/parallel/nccl_group.cuh"
#endif

namespace pie {
namespace registry {

/// The group of GPU ranks `c` asks for (NCCL when c.tp > 1).
inline engine::RankGroup cuda_group(const Choice& c) {
#if defined(PIE_WITH_NCCL)
  return parallel::nccl_group(c.tp);
#else
  PIE_CHECK(c.tp == 1, "--tensor-parallel-size ", c.tp, " on the GPU needs NCCL, which this program was built without");
  return {};
#endif
}

inline std::unique_ptr<AnyEngine> make_cuda(const Choice& c, const EngineOptions& opt) {
  std::unique_ptr<AnyEngine> out;
  visit(Models{}, CudaPolicies{}, c, [&]<class M, class P>() {
    out = std::make_unique<AnyEngineOf<Engine<M, P>>>(std::in_place, opt, cuda_group(c));
  });
  return out;
}

/// Registers make_cuda at static initialisation (one registration per program, whichever
/// translation unit runs it).
inline const bool cuda_registered = [] {
  cuda_factory() = &make_cuda;
  return true;
}();

}  // namespace registry

/// Calls f.template operator()<Model, Policy>(choice) with the compiled CUDA engine `opt` asks
/// for (`pie bench`, which needs the concrete runner); throws listing what is compiled otherwise.
template <class F>
void with_cuda_engine_type(const EngineOptions& opt, F&& f) {
  const registry::Choice c = resolve_engine(opt);
  PIE_CHECK(c.device == "cuda", "with_cuda_engine_type: --device is ", c.device);
  if (!registry::visit(registry::Models{}, registry::CudaPolicies{}, c,
                       [&]<class M, class P>() { f.template operator()<M, P>(c); }))
    fail_not_compiled(c);
}

}  // namespace pie
