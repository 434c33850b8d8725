#pragma once
/// \file pie.hpp
/// \brief Umbrella header of pie's host side: `#include <pie/pie.hpp>` and link pie::pie.
///   pie::Engine<pie::Qwen3, pie::CpuF32> engine(pie::EngineOptions{...});
///   auto results = engine.generate(prompts, params);
/// or, with the tokenizer: pie::LLM llm(dir); llm.generate({"text"}, params), llm.chat(...).
/// The tokenizer and chat template come in when the translation unit links pie::text (which
/// defines PCRE2_CODE_UNIT_WIDTH); the HTTP server additionally needs pie::server and is included
/// by its own headers (pie/server/...). CUDA kernels have their own umbrella, pie/cuda.cuh.

// core
#include "pie/core/attention_variants.hpp"
#include "pie/core/buffer.hpp"
#include "pie/core/dispatch.hpp"
#include "pie/core/dtype.hpp"
#include "pie/core/error.hpp"
#include "pie/core/policy.hpp"
#include "pie/core/random.hpp"
#include "pie/core/tensor.hpp"

// paged KV cache and scheduler
#include "pie/kv/block_copy.hpp"
#include "pie/kv/block_manager.hpp"
#include "pie/kv/block_pool.hpp"
#include "pie/kv/block_table.hpp"
#include "pie/kv/kv_layout.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/sched/finish_reason.hpp"
#include "pie/sched/request.hpp"
#include "pie/sched/sampler_input.hpp"
#include "pie/sched/sampling_params.hpp"
#include "pie/sched/scheduler.hpp"
#include "pie/sched/scheduler_config.hpp"
#include "pie/sched/step_plan.hpp"

// models
#include "pie/model/config.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/dummy.hpp"
#include "pie/model/embedded.hpp"
#include "pie/model/load.hpp"
#include "pie/model/loader.hpp"
#include "pie/model/qwen3.hpp"
#include "pie/model/safetensors.hpp"
#include "pie/model/weights.hpp"

// CPU backend
#include "pie/ops/cpu/ops.hpp"
#include "pie/ops/rope_scaling.hpp"

// engine
#include "pie/engine/engine.hpp"
#include "pie/engine/engine_options.hpp"
#include "pie/engine/model_runner.hpp"
#include "pie/engine/request_output.hpp"
#include "pie/engine/sampler.hpp"

// tokenizer (pie::text)
#if defined(PCRE2_CODE_UNIT_WIDTH)
#include "pie/tokenizer/embedded.hpp"
#include "pie/tokenizer/text.hpp"  // tokenizer, chat template, detokenizer, reasoning parser
#include "pie/tokenizer/tokenizer_json.hpp"

// text-level API: pie::LLM (generate / chat over the engine and the tokenizer)
#include "pie/llm/llm.hpp"
#endif
