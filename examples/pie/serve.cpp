// `pie serve`: the OpenAI-compatible server. Thin: turns flags into EngineOptions and a
// GenerationContext, starts the engine thread and the HTTP server, waits for a signal.
#include "serve.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "pie/engine/any_engine.hpp"
#include "pie/registry/make_engine.hpp"
#include "pie/sched/batch_defaults.hpp"
#include "pie/model/config_io.hpp"
#include "pie/model/embedded.hpp"
#include "pie/model/kv_scale_loader.hpp"
#include "pie/server/engine_service.hpp"
#include "pie/server/graceful_shutdown.hpp"
#include "pie/server/http.hpp"
#include "pie/tokenizer/chat_template.hpp"
#include "pie/tokenizer/detokenizer.hpp"
#include "pie/tokenizer/reasoning.hpp"
#include "pie/tokenizer/tokenizer.hpp"
#if defined(PIE_WITH_XGRAMMAR)
#include <mutex>

#include "pie/structured/compiler.hpp"
#endif
#if defined(PIE_HAVE_SERVE_CUDA)
#include "serve_cuda.hpp"
#endif

namespace pie::cli {

namespace fs = std::filesystem;
using server::ServeOptions;

CLI::App* add_serve_command(CLI::App& app, ServeOptions& opts) {
  CLI::App* sub = app.add_subcommand(
      "serve", "Serve a model over an OpenAI-compatible HTTP API (vLLM's flags; '-' or '_' in names)");
  server::add_serve_flags(*sub, opts);
  return sub;
}

namespace {

/// A flag combination this build cannot run: exit 2 like a parse error.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

server::SamplingDefaults defaults_from(const model::GenerationConfig& g, const std::string& mode) {
  server::SamplingDefaults d;
  if (mode != "auto") return d;  // "vllm": neutral defaults
  if (g.has_temperature) d.temperature = g.temperature;
  if (g.has_top_p) d.top_p = g.top_p;
  if (g.has_top_k) d.top_k = g.top_k;
  if (g.has_min_p) d.min_p = g.min_p;
  if (g.has_repetition_penalty) d.repetition_penalty = g.repetition_penalty;
  return d;
}

/// The context length to configure: the flag, else the model's (vLLM's default). A flag above
/// the model's max_position_embeddings is refused, as vLLM refuses it, unless
/// VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.
int resolve_max_model_len(const ServeOptions& o) {
  const model::ModelConfig c = o.model.empty() ? model::embedded_config()
                                               : model::load_model_config((fs::path(o.model) / "config.json").string(), true);
  // vLLM's derivation: RoPE scaling by a factor (linear, YaRN) stretches the trained length.
  double pos = static_cast<double>(c.max_position_embeddings);
  using RT = model::RopeScaling::Type;
  if (c.rope_scaling.type == RT::Yarn && c.rope_scaling.original_max_position_embeddings > 0)
    pos = static_cast<double>(c.rope_scaling.original_max_position_embeddings);
  if (c.rope_scaling.type == RT::Yarn || c.rope_scaling.type == RT::Linear) pos *= c.rope_scaling.factor;
  const int derived = static_cast<int>(std::min<double>(pos, INT_MAX / 2));
  if (o.max_model_len <= 0) return derived;
  if (o.max_model_len > derived && !server::allow_long_max_model_len())
    throw UsageError(server::long_max_model_len_message(o.max_model_len, derived));
  return o.max_model_len;
}

/// The flags make_engine() turns into an engine type.
void fill_engine_choice(const ServeOptions& o, const std::string& device, EngineOptions& eo) {
  eo.device = device;
  eo.dtype = o.dtype == "float" ? "float32" : o.dtype;
  eo.kv_cache_dtype = o.kv_cache_dtype;
  eo.quantization = o.quantization;
  eo.block_size = o.block_size;
  eo.tensor_parallel_size = o.tensor_parallel_size;
}

/// Builds the engine on the engine thread from the options serve_with filled in.
using EngineFactory = std::function<std::unique_ptr<AnyEngine>(const EngineOptions&)>;

int serve_with(const ServeOptions& o, EngineFactory build, const std::string& device) {
  using EngineT = AnyEngine;
  using Detok = tokenizer::IncrementalDetokenizer;

  // ---- text side: tokenizer, chat template, reasoning parser ----
  const std::string tok_src = o.tokenizer.empty() ? o.model : o.tokenizer;
  const bool embedded_tok = tok_src.empty() || tok_src == "embedded";
  const fs::path tok_dir = embedded_tok                ? fs::path{}
                           : fs::is_directory(tok_src) ? fs::path(tok_src)
                                                       : fs::path(tok_src).parent_path();
  auto tok = std::make_shared<tokenizer::Tokenizer>(
      embedded_tok ? tokenizer::Tokenizer::embedded()
                   : tokenizer::Tokenizer::from_file(fs::is_directory(tok_src) ? (tok_dir / "tokenizer.json").string()
                                                                               : tok_src));
  std::shared_ptr<tokenizer::ChatTemplate> tmpl;  // null: chat requests get a 400 saying why
  if (!o.chat_template.empty())
    tmpl = std::make_shared<tokenizer::ChatTemplate>(tokenizer::ChatTemplate::from_file(o.chat_template));
  else if (embedded_tok)
    tmpl = std::make_shared<tokenizer::ChatTemplate>(tokenizer::ChatTemplate::embedded());
  else if (fs::exists(tok_dir / "tokenizer_config.json"))
    tmpl = std::make_shared<tokenizer::ChatTemplate>(
        tokenizer::ChatTemplate::from_tokenizer_config((tok_dir / "tokenizer_config.json").string()));

  // ---- engine options ----
  EngineOptions eo;
  eo.model_dir = o.model;
  eo.load_format = o.load_format;
  eo.seed = o.seed;
  eo.num_threads = o.num_threads;
  eo.sched.max_model_len = resolve_max_model_len(o);
  // Unset batch knobs take vLLM's defaults for the card (sched/batch_defaults.hpp).
  sched::BatchDefaults batch = sched::batch_defaults(sched::EntryPoint::kServer, 0, "");
#if defined(PIE_HAVE_SERVE_CUDA)
  if (device == "cuda") batch = cuda_batch_defaults(sched::EntryPoint::kServer);
#endif
  eo.sched.max_num_seqs = o.max_num_seqs > 0 ? o.max_num_seqs : batch.max_num_seqs;
  eo.sched.enable_prefix_caching = o.enable_prefix_caching;
  eo.sched.enable_chunked_prefill = o.enable_chunked_prefill;
  eo.sched.long_prefill_token_threshold = o.long_prefill_token_threshold;
  eo.sched.async_scheduling = o.async_scheduling;
  eo.sched.max_prefill_tokens_with_decodes = o.max_prefill_tokens_with_decodes;
  eo.sched.max_num_batched_tokens =
      o.max_num_batched_tokens > 0 ? o.max_num_batched_tokens
      : o.enable_chunked_prefill   ? std::max(batch.max_num_batched_tokens, eo.sched.max_num_seqs)
                                   : std::max({batch.max_num_batched_tokens, eo.sched.max_num_seqs, eo.sched.max_model_len});
  if (o.kv_cache_memory_bytes > 0) eo.kv_cache_bytes = static_cast<size_t>(o.kv_cache_memory_bytes);
  eo.gpu_memory_utilization = o.gpu_memory_utilization;
  eo.swap_space_gib = o.swap_space;
  eo.enforce_eager = o.enforce_eager;
  eo.calculate_kv_scales = o.calculate_kv_scales;
  eo.batch_invariant = o.batch_invariant;
  if (o.kv_cache_memory_bytes > 0) eo.kv_cache_memory_bytes = static_cast<size_t>(o.kv_cache_memory_bytes);
  fill_engine_choice(o, device, eo);
  try {
    eo.sched.validate();
  } catch (const pie::Error& e) {
    throw UsageError(e.what());
  }
  const int max_model_len = eo.sched.max_model_len;
  const std::string gen_mode = o.generation_config;

  server::ServerMetrics metrics;
  metrics.block_size = o.block_size;
  server::EngineService<EngineT, Detok> service(
      [eo, build] { return build(eo); },
      [max_model_len, gen_mode](const EngineT& e) {
        server::ModelInfo info;
        info.max_model_len = max_model_len;  // checked against the model by resolve_max_model_len
        info.vocab_size = e.config().vocab_size;
        info.eos_ids = e.generation_config().eos_token_ids;
        for (int32_t id : e.config().eos_token_ids) info.eos_ids.push_back(id);
        info.defaults = defaults_from(e.generation_config(), gen_mode);
        return info;
      },
      [tok](bool skip_special, std::span<const int32_t> prompt) { return Detok(*tok, skip_special, prompt); }, metrics);

  // Test-only fault injection (tests/server/test_engine_fault.py): PIE_TEST_FAIL_STEP=N makes
  // the N-th engine step throw, as a CUDA error or an out-of-memory inside Engine::step() would.
  // Not a flag: nothing a client sends reaches it.
  if (const char* n = std::getenv("PIE_TEST_FAIL_STEP"); n && *n) {
    const uint64_t at = std::strtoull(n, nullptr, 10);
    std::cout << "pie serve: PIE_TEST_FAIL_STEP=" << at << ": step " << at << " will fail (test only)" << std::endl;
    service.set_before_step([at](uint64_t step) {
      if (step == at) throw pie::Error("injected fault at step " + std::to_string(step) + " (PIE_TEST_FAIL_STEP)");
    });
  }

  // ---- HTTP ----
  server::GenerationContext ctx;
  ctx.served_names = o.served_model_name;
  if (ctx.served_names.empty()) ctx.served_names = {o.model.empty() ? model::Embedded::kName : o.model};
  ctx.service = &service;
  ctx.encode = [tok](const std::string& text, bool add_special) { return tok->encode(text, add_special); };
  ctx.decode = [tok](const std::vector<int32_t>& ids) { return tok->decode(ids, false); };
  ctx.token_text = [tok](int32_t id) {
    std::string b;
    tok->append_token_bytes(id, /*skip_special_tokens=*/false, b);
    return b;
  };
  ctx.vocab_token = [tok](int32_t id) { return tok->id_to_token(id); };
  ctx.render_chat = [tmpl](const nlohmann::ordered_json& messages,
                           const nlohmann::ordered_json& options) -> std::string {
    if (!tmpl)
      throw server::ApiError(400,
                             "This model has no chat template (no tokenizer_config.json): pass "
                             "--chat-template FILE, or use /v1/completions",
                             "messages");
    return tmpl->render(messages, options);
  };
  ctx.enable_auto_tool_choice = o.enable_auto_tool_choice;
  ctx.tool_call_parser = o.tool_call_parser;
  if (o.reasoning_parser == "qwen3")
    ctx.make_reasoning = [] {
      // Qwen3 opens <think> in its output (with enable_thinking=false the template closes an
      // empty one in the prompt, and the output is all content).
      auto p = std::make_shared<tokenizer::ReasoningParser>(/*starts_in_reasoning=*/false);
      return server::ReasoningSplitter([p](std::string_view delta, bool last) {
        auto d = p->feed(delta);
        std::pair<std::string, std::string> out{std::move(d.reasoning_delta), std::move(d.content_delta)};
        if (last) {
          auto f = p->finish();
          out.first += f.reasoning_delta;
          out.second += f.content_delta;
        }
        return out;
      });
    };

#if defined(PIE_WITH_XGRAMMAR)
  // Structured outputs: one XGrammar compiler over the tokenizer's vocabulary, built once the
  // model is loaded (it needs the model's vocabulary size and stop tokens): the main thread
  // builds it right after loading, or the first structured request does.
  struct Grammars {
    std::once_flag once;
    std::unique_ptr<structured::Compiler> compiler;
  };
  auto grammars = std::make_shared<Grammars>();
  auto grammar_compiler = [grammars, tok, &service, prewarm = o.structured_prewarm_max_length]() -> structured::Compiler& {
    std::call_once(grammars->once, [&] {
      const auto info = service.model_info();
      grammars->compiler = std::make_unique<structured::Compiler>(*tok, info.vocab_size, info.eos_ids);
      // Test only (tests/server/test_structured.py): a slow compile, to check that a request
      // whose grammar is still compiling when its prefill ends waits for it.
      if (const char* d = std::getenv("PIE_TEST_GRAMMAR_DELAY_MS"); d && *d)
        grammars->compiler->set_test_compile_delay(std::chrono::milliseconds(std::atoi(d)));
      if (prewarm > 0)
        grammars->compiler->prewarm_bounded_strings(prewarm, 2, [prewarm](double ms) {
          std::cout << "pie serve: structured outputs prewarmed (strings of maxLength 1.." << prewarm << ", "
                    << static_cast<int>(ms) << " ms)" << std::endl;
        });
    });
    return *grammars->compiler;
  };
  ctx.compile_structured = [grammar_compiler](const sched::StructuredOutput& so) -> server::PendingConstraint {
    auto& c = grammar_compiler();
    auto grammar = c.compile_async(so);
    return {[&c, grammar, so] { return c.processor(grammar, so); }, [grammar] { grammar.get(); }};
  };
#endif

  server::HttpOptions ho;
  ho.host = o.host;
  ho.port = o.port;
  ho.api_key = o.api_key;
  ho.max_body_bytes = static_cast<size_t>(o.max_request_body_bytes);
  ho.limits.request_timeout_s = o.request_timeout;
  ho.limits.keep_alive_timeout_s = o.timeout_keep_alive;
  ho.log_requests = !o.disable_log_requests;
  server::HttpServer http(ho, ctx, metrics);
  const int port = http.bind();
  std::thread listener([&] { http.listen(); });
  std::cout << "pie serve: listening on http://" << o.host << ":" << port << " as '" << ctx.served_names.front()
            << "' (loading the model)" << std::endl;

  // ---- wait: model loaded, then a signal ----
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  int rc = 0;
  bool announced = false;
  for (;;) {
    const timespec tick{0, 100'000'000};
    const int sig = sigtimedwait(&sigs, nullptr, &tick);
    if (sig == SIGINT || sig == SIGTERM) {
      std::cout << "pie serve: " << (sig == SIGINT ? "SIGINT" : "SIGTERM") << ", shutting down" << std::endl;
      server::drain(service, http, sigs, o.shutdown_timeout);
      break;
    }
    const auto st = service.state();
    if (st == server::ServiceState::Failed && service.engine_failed()) {
      // Every request in flight got its error (500 in OpenAI's shape, in the stream too). Stay
      // up one second answering 503 (/health, new requests) so a balancer sees the failure on
      // this port, then exit non-zero for a supervisor to restart us, as vLLM does.
      std::cerr << "pie serve: " << service.load_error() << "; exiting" << std::endl;
      std::this_thread::sleep_for(std::chrono::seconds(1));
      rc = 1;
      break;
    }
    if (st == server::ServiceState::Failed) {
      std::cerr << "pie serve: the model failed to load: " << service.load_error() << std::endl;
      rc = 1;
      break;
    }
    if (st == server::ServiceState::Ready && !announced) {
      announced = true;
#if defined(PIE_WITH_XGRAMMAR)
      grammar_compiler();  // the vocabulary is indexed once, before the first request needs it
#endif
      const auto info = service.model_info();
      std::cout << "pie serve: ready (max_model_len " << info.max_model_len << ", vocab " << info.vocab_size << ")"
                << std::endl;
    }
    if (!http.running() && announced) {
      std::cerr << "pie serve: the HTTP server stopped" << std::endl;
      rc = 1;
      break;
    }
  }
  // Abort in-flight work so every handler sends its final event, give the streams a moment to
  // flush, then stop accepting and join.
  service.stop();
  for (int i = 0; i < 50 && http.active_streams() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  http.stop();
  listener.join();
  std::cout << "pie serve: stopped" << std::endl;
  return rc;
}

}  // namespace

int run_serve(const ServeOptions& o) {
  // Signals are taken synchronously by the main thread (sigtimedwait): block them before any
  // thread starts so every thread inherits the mask. A client gone mid-write must not kill us.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // A connection is a descriptor (and a thread): raise the soft limit to the hard one, as vLLM
  // does, so thousands of concurrent clients do not run into the common default of 1,024.
  if (rlimit rl{}; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  try {
    if (!o.model.empty() && !fs::is_directory(o.model))
      throw UsageError("model directory '" + o.model + "' does not exist");
    if (!o.tokenizer.empty() && o.tokenizer != "embedded" && !fs::exists(o.tokenizer))
      throw UsageError("--tokenizer '" + o.tokenizer + "' does not exist");
    std::string device = o.device;
    if (device == "auto") {
      // A checkpoint goes to the GPU when this build has the CUDA backend and a GPU is visible;
      // the embedded default (and everything in CPU-only builds) runs on the CPU.
      device = "cpu";
#if defined(PIE_HAVE_SERVE_CUDA)
      if (!o.model.empty() && cuda_device_count() > 0) device = "cuda";
#endif
    }
    const int tp = o.tensor_parallel_size;
    if (tp < 1) throw UsageError("--tensor-parallel-size must be >= 1, got " + std::to_string(tp));
    if (device != "cpu" && device != "cuda") throw UsageError("--device " + device + " is not one of auto, cpu, cuda");
#if !defined(PIE_HAVE_SERVE_CUDA)
    if (device == "cuda")
      throw UsageError("--device cuda: this build of `pie` has no CUDA backend (configure with a CUDA compiler "
                       "to get one); use --device cpu");
#endif
    // Refuse a combination that is not compiled before loading anything (exit 2, with the list
    // of what is compiled); make_engine() consults the same registry.
    {
      EngineOptions probe;
      probe.model_dir = o.model;
      fill_engine_choice(o, device, probe);
      const auto choice = resolve_engine(probe);
      if (!is_compiled(choice)) {
        try {
          fail_not_compiled(choice);
        } catch (const pie::Error& e) {
          throw UsageError("--device " + device + " --dtype " + o.dtype + " --kv-cache-dtype " + o.kv_cache_dtype +
                           (o.quantization.empty() ? "" : " --quantization " + o.quantization) +
                           " --block-size " + std::to_string(o.block_size) + ": " + e.what());
        }
      }
      if (o.calculate_kv_scales && choice.kv_dtype != "fp8")
        throw UsageError("--calculate-kv-scales needs --kv-cache-dtype fp8 (the KV cache is " + choice.kv_dtype + ")");
    }
    // A checkpoint's fp8 KV scales (k_scale / v_scale) are validated whatever the cache's dtype:
    // a malformed one stops the start with the file and tensor named (exit 1).
    if (!o.model.empty() && o.load_format != "dummy" &&
        (fs::exists(fs::path(o.model) / "model.safetensors") ||
         fs::exists(fs::path(o.model) / "model.safetensors.index.json")))
      model::load_kv_scales(o.model, model::load_model_config(o.model, /*any_architecture=*/true));
#if defined(PIE_HAVE_SERVE_CUDA)
    if (device == "cuda") {
      if (cuda_device_count() == 0) throw UsageError("--device cuda: no CUDA device is visible");
      if (cuda_device_count() < tp)
        throw UsageError("--tensor-parallel-size " + std::to_string(tp) + ": needs " + std::to_string(tp) +
                         " GPUs, " + std::to_string(cuda_device_count()) + " visible");
      if (tp > 1 && o.batch_invariant)
        throw UsageError("--batch-invariant is not available with --tensor-parallel-size > 1 (NCCL's all-reduce "
                         "order follows the message size)");
    }
#endif
    return serve_with(o, [device](const EngineOptions& eo) {
#if defined(PIE_HAVE_SERVE_CUDA)
      if (device == "cuda")  // while the card is empty; an fp8 KV cache reads 1 byte per element
        announce_roofline(eo, 2, resolve_engine(eo).kv_dtype == "fp8" ? 1 : 2, eo.tensor_parallel_size);
#endif
      return make_engine(eo);
    }, device);
  } catch (const UsageError& e) {
    std::cerr << "pie serve: " << e.what() << std::endl;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "pie serve: " << e.what() << std::endl;
    return 1;
  }
}

}  // namespace pie::cli
