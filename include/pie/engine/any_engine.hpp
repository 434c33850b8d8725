#pragma once
/// \file any_engine.hpp
/// \brief AnyEngine: pie::Engine behind a virtual interface, so code that drives an engine
/// (the server's engine thread) is compiled once for every (Model, Policy) and a backend can
/// live in its own translation unit: the CUDA engine is built in a file compiled by nvcc and
/// handed to host-compiled code as a std::unique_ptr<AnyEngine>. One virtual call per step.
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "pie/engine/engine_options.hpp"
#include "pie/engine/engine_stats.hpp"
#include "pie/engine/request_output.hpp"
#include "pie/model/config.hpp"
#include "pie/sched/sampling_params.hpp"

namespace pie {

/// \brief The part of Engine's interface a server needs (same meanings as Engine's).
class AnyEngine {
 public:
  /// \brief Engine::Stats, backend-independent (the same type every engine reports).
  using Stats = engine::EngineStats;

  virtual ~AnyEngine() = default;
  virtual uint64_t add_request(std::vector<int32_t> prompt, sched::SamplingParams params) = 0;
  virtual std::vector<RequestOutput> step() = 0;
  virtual void abort(uint64_t request_id) = 0;
  virtual void finish_sequence(uint64_t request_id, int index) = 0;
  virtual bool has_unfinished() const = 0;
  virtual Stats stats() const = 0;
  virtual const model::ModelConfig& config() const = 0;
  virtual const model::GenerationConfig& generation_config() const = 0;
};

/// \brief AnyEngine over a concrete engine type E (pie::Engine<Model, Policy>).
template <class E>
class AnyEngineOf final : public AnyEngine {
 public:
  explicit AnyEngineOf(EngineOptions opt) : e_(std::move(opt)) {}
  /// E built from other arguments (TpEngine: options and the world of ranks).
  template <class... A>
  explicit AnyEngineOf(std::in_place_t, A&&... args) : e_(std::forward<A>(args)...) {}
  uint64_t add_request(std::vector<int32_t> prompt, sched::SamplingParams params) override {
    return e_.add_request(std::move(prompt), std::move(params));
  }
  std::vector<RequestOutput> step() override { return e_.step(); }
  void abort(uint64_t request_id) override { e_.abort(request_id); }
  void finish_sequence(uint64_t request_id, int index) override { e_.finish_sequence(request_id, index); }
  bool has_unfinished() const override { return e_.has_unfinished(); }
  Stats stats() const override { return e_.stats(); }
  const model::ModelConfig& config() const override { return e_.config(); }
  const model::GenerationConfig& generation_config() const override { return e_.generation_config(); }
  E& engine() { return e_; }

 private:
  E e_;
};

/// Builds an E from `opt` behind the AnyEngine interface.
template <class E>
std::unique_ptr<AnyEngine> make_any_engine(EngineOptions opt) {
  return std::make_unique<AnyEngineOf<E>>(std::move(opt));
}

}  // namespace pie
