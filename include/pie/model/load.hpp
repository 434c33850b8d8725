#pragma once
/// \file load.hpp
/// \brief load_model<T>: the one entry point the engine and the `pie` program use to get a
/// model — a checkpoint directory or the embedded default, real weights or `--load-format
/// dummy` — together with its generation defaults.
#include <cstdint>
#include <string>

#include "pie/core/error.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/embedded.hpp"
#include "pie/model/loader.hpp"

namespace pie::model {

/// \brief vLLM's `--load-format`: `auto`/`safetensors` read the checkpoint, `dummy` makes
/// random weights of the config's shape (config.json is still read).
enum class LoadFormat { Auto, Safetensors, Dummy };

inline LoadFormat parse_load_format(const std::string& s) {
  if (s == "auto") return LoadFormat::Auto;
  if (s == "safetensors") return LoadFormat::Safetensors;
  if (s == "dummy") return LoadFormat::Dummy;
  PIE_FAIL("unsupported --load-format ", s, " (supported: auto, safetensors, dummy)");
}

/// \brief What load_model returns: the weights (whose .config is the model config) and the
/// generation defaults.
template <class T>
struct LoadedModel {
  Weights<T> weights;
  GenerationConfig generation;
};

/// Loads `dir` (config.json, generation_config.json, safetensors), or makes dummy weights of
/// its config's shape. An empty `dir` gives the embedded default model (whatever the format).
template <class T>
LoadedModel<T> load_model(const std::string& dir, LoadFormat format = LoadFormat::Auto,
                          uint64_t dummy_seed = 0, const LoadOptions& opt = {}) {
  if (dir.empty()) return {embedded_weights<T>(), embedded_generation_config()};
  ModelConfig cfg = load_model_config(dir);
  GenerationConfig gen = load_generation_config(dir, cfg);
  if (format == LoadFormat::Dummy) return {dummy_weights<T>(cfg, dummy_seed, opt.threads), gen};
  return {load_weights<T>(dir, cfg, opt), gen};
}

}  // namespace pie::model
