#pragma once
/// \file http.hpp
/// \brief The HTTP server: cpp-httplib routes for the OpenAI API (/v1/models, /v1/completions,
/// /v1/chat/completions) and vLLM's extras (/health, /metrics, /tokenize, /detokenize,
/// /version). Every /v1 route checks the API key first; every error leaves as an OpenAI-shaped
/// body, including those httplib raises itself (unknown route, body over the limit).
#include <httplib.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pie/server/auth.hpp"
#include "pie/server/completions.hpp"
#include "pie/server/errors.hpp"
#include "pie/server/metrics.hpp"

namespace pie::server {

/// \brief Listening and limits.
struct HttpOptions {
  std::string host = "0.0.0.0";
  int port = 8000;
  std::string api_key;                ///< empty → no auth
  size_t max_body_bytes = 16u << 20;  ///< larger bodies get 413
  int threads = 512;                  ///< handler threads: one per open connection
  std::string version = "0.1.0";
  bool log_requests = true;  ///< one stdout line per request (--disable-log-requests)
};

/// \brief The OpenAI-compatible HTTP front of a GenerationService.
class HttpServer {
 public:
  HttpServer(HttpOptions opts, GenerationContext ctx, ServerMetrics& metrics)
      : opts_(std::move(opts)), ctx_(std::move(ctx)), metrics_(metrics), auth_(opts_.api_key) {
    ctx_.active_streams = &active_streams_;
    created_ = unix_time();
    setup();
  }

  /// Binds; returns the port (the chosen one when opts.port is 0). Throws pie::Error on failure.
  int bind() {
    int port = opts_.port;
    if (port == 0)
      port = svr_.bind_to_any_port(opts_.host);
    else if (!svr_.bind_to_port(opts_.host, port))
      port = -1;
    PIE_CHECK(port > 0, "cannot listen on ", opts_.host, ":", opts_.port,
              " (address in use, or not an address of this machine)");
    return port;
  }
  /// Serves until stop(); call after bind().
  bool listen() { return svr_.listen_after_bind(); }
  void stop() { svr_.stop(); }
  bool running() const { return svr_.is_running(); }
  int active_streams() const { return active_streams_.load(); }

 private:
  using json = nlohmann::json;

  static void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status();
    res.set_content(e.to_json().dump(), "application/json");
  }

  /// Runs a handler, turning exceptions into OpenAI-shaped errors.
  template <class F>
  auto guarded(F f) {
    return [f = std::move(f)](const httplib::Request& req, httplib::Response& res) {
      try {
        f(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, std::string("Internal server error: ") + e.what(), {}, "server_error",
                                 "internal_error"));
      }
    };
  }

  void require_ready() const {
    if (ctx_.service->state() != ServiceState::Ready) throw error_for_status(503);
  }

  static json parse_body(const httplib::Request& req) {
    try {
      json j = json::parse(req.body);
      if (!j.is_object()) throw invalid_param("", "The request body must be a JSON object");
      return j;
    } catch (const json::exception& e) {
      throw invalid_param("", std::string("The request body is not valid JSON: ") + e.what());
    }
  }

  void setup() {
    const int threads = opts_.threads;
    svr_.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    svr_.set_payload_max_length(opts_.max_body_bytes);
    svr_.set_keep_alive_max_count(1000);
    svr_.set_tcp_nodelay(true);

    svr_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      metrics_.http_requests++;
      if (req.path.rfind("/v1", 0) == 0 && !auth_.allows(req.get_header_value("Authorization"))) {
        send_error(res, unauthorized());
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    // Statuses httplib sets itself (404 route, 413 body, 400 malformed) arrive with no body.
    svr_.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, error_for_status(res.status));
      return httplib::Server::HandlerResponse::Handled;
    }));
    svr_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      if (res.status >= 400) metrics_.http_errors++;
      if (!opts_.log_requests) return;
      // One write per line, so lines from concurrent handlers do not interleave.
      const std::string line = "pie serve: " + req.remote_addr + " \"" + req.method + " " + req.path + "\" " +
                               std::to_string(res.status) + "\n";
      std::fwrite(line.data(), 1, line.size(), stdout);
      std::fflush(stdout);
    });

    svr_.Get("/health", guarded([this](const httplib::Request&, httplib::Response& res) {
               const auto st = ctx_.service->state();
               if (st != ServiceState::Ready) {
                 ApiError e = error_for_status(503);
                 if (st == ServiceState::Failed)
                   e = ApiError(503, "The model failed to load: " + ctx_.service->load_error(), {},
                                "service_unavailable", "service_unavailable");
                 throw e;
               }
               res.status = 200;
               res.set_content("", "text/plain");
             }));
    svr_.Get("/version", guarded([this](const httplib::Request&, httplib::Response& res) {
               res.set_content(json{{"version", opts_.version}}.dump(), "application/json");
             }));
    svr_.Get("/metrics", guarded([this](const httplib::Request&, httplib::Response& res) {
               res.set_content(metrics_.render(ctx_.served_names.front(), ctx_.service->gauges()),
                               "text/plain; version=0.0.4; charset=utf-8");
             }));
    svr_.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
               json data = json::array();
               const ModelInfo info = ctx_.service->model_info();
               for (const auto& name : ctx_.served_names)
                 data.push_back({{"id", name},
                                 {"object", "model"},
                                 {"created", created_},
                                 {"owned_by", "pie"},
                                 {"root", name},
                                 {"parent", nullptr},
                                 {"max_model_len", info.max_model_len}});
               res.set_content(json{{"object", "list"}, {"data", data}}.dump(), "application/json");
             }));
    svr_.Get(R"(/v1/models/(.+))", guarded([this](const httplib::Request& req, httplib::Response& res) {
               const std::string name = req.matches[1];
               if (std::find(ctx_.served_names.begin(), ctx_.served_names.end(), name) == ctx_.served_names.end())
                 throw model_not_found(name);
               res.set_content(
                   json{{"id", name}, {"object", "model"}, {"created", created_}, {"owned_by", "pie"}}.dump(),
                   "application/json");
             }));
    svr_.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
                handle_generation(ctx_, /*chat=*/false, req, res);
              }));
    svr_.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
                handle_generation(ctx_, /*chat=*/true, req, res);
              }));
    svr_.Post("/tokenize",
              guarded([this](const httplib::Request& req, httplib::Response& res) { tokenize(req, res); }));
    svr_.Post("/detokenize",
              guarded([this](const httplib::Request& req, httplib::Response& res) { detokenize(req, res); }));
  }

  void check_model(const json& body) const {
    if (auto it = body.find("model"); it != body.end() && !it->is_null()) {
      if (!it->is_string()) throw invalid_param("model", "'model' must be a string");
      const auto name = it->get<std::string>();
      if (std::find(ctx_.served_names.begin(), ctx_.served_names.end(), name) == ctx_.served_names.end())
        throw model_not_found(name);
    }
  }

  // vLLM's /tokenize: {"prompt"} or {"messages", "add_generation_prompt", "chat_template_kwargs"}.
  void tokenize(const httplib::Request& req, httplib::Response& res) {
    require_ready();
    const json body = parse_body(req);
    check_model(body);
    std::vector<int32_t> ids;
    if (auto m = body.find("messages"); m != body.end()) {
      json chat_body = body;
      chat_body.erase("model");
      GenerationRequest g = parse_chat_request(chat_body, ctx_.service->model_info().defaults);
      const bool add_special = body.value("add_special_tokens", false);
      ids = ctx_.encode(ctx_.render_chat(g.messages, g.template_options), add_special);
    } else if (auto p = body.find("prompt"); p != body.end() && p->is_string()) {
      bool add_special = true;
      if (auto a = body.find("add_special_tokens"); a != body.end()) {
        if (!a->is_boolean()) throw invalid_param("add_special_tokens", "'add_special_tokens' must be a boolean");
        add_special = a->get<bool>();
      }
      ids = ctx_.encode(p->get<std::string>(), add_special);
    } else {
      throw invalid_param("prompt", "'prompt' (a string) or 'messages' is required");
    }
    const ModelInfo info = ctx_.service->model_info();
    res.set_content(
        json{{"count", ids.size()}, {"max_model_len", info.max_model_len}, {"tokens", ids}, {"token_strs", nullptr}}
            .dump(),
        "application/json");
  }

  void detokenize(const httplib::Request& req, httplib::Response& res) {
    require_ready();
    const json body = parse_body(req);
    check_model(body);
    auto t = body.find("tokens");
    if (t == body.end() || !t->is_array()) throw invalid_param("tokens", "'tokens' must be an array of token ids");
    const int vocab = ctx_.service->model_info().vocab_size;
    std::vector<int32_t> ids;
    for (const auto& v : *t) {
      const auto id = detail::get_int(v, "tokens", 0, std::numeric_limits<int32_t>::max());
      if (id >= vocab)
        throw invalid_param("tokens", "token id " + std::to_string(id) + " is out of the vocabulary [0, " +
                                          std::to_string(vocab) + ")");
      ids.push_back(static_cast<int32_t>(id));
    }
    res.set_content(dump(json{{"prompt", ctx_.decode(ids)}}), "application/json");
  }

  HttpOptions opts_;
  GenerationContext ctx_;
  ServerMetrics& metrics_;
  ApiKeyAuth auth_;
  httplib::Server svr_;
  std::atomic<int> active_streams_{0};
  int64_t created_ = 0;
};

}  // namespace pie::server
