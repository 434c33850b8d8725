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
#include <regex>
#include <string>
#include <vector>

#include "pie/server/auth.hpp"
#include "pie/server/completions.hpp"
#include "pie/server/connection.hpp"
#include "pie/server/disconnect_watcher.hpp"
#include "pie/server/errors.hpp"
#include "pie/server/json_body.hpp"
#include "pie/server/metrics.hpp"

namespace pie::server {

/// \brief Listening and limits.
struct HttpOptions {
  std::string host = "0.0.0.0";
  int port = 8000;
  std::string api_key;                ///< empty → no auth
  size_t max_body_bytes = 16u << 20;  ///< larger bodies get 413
  ConnLimits limits;                  ///< request deadline (408), keep-alive idle timeout
  std::string version = "0.1.0";
  bool log_requests = true;  ///< one stdout line per request (--disable-log-requests)
};

/// \brief The OpenAI-compatible HTTP front of a GenerationService.
class HttpServer {
 public:
  HttpServer(HttpOptions opts, GenerationContext ctx, ServerMetrics& metrics)
      : opts_(std::move(opts)),
        ctx_(std::move(ctx)),
        metrics_(metrics),
        auth_(opts_.api_key),
        svr_(opts_.limits, dump(error_for_status(408).to_json())) {
    ctx_.active_streams = &active_streams_;
    ctx_.watcher = &watcher_;
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
    svr_.widen_backlog();
    return port;
  }
  /// Serves until stop(); call after bind().
  bool listen() { return svr_.listen_after_bind(); }
  void stop() { svr_.stop(); }
  bool running() const { return svr_.is_running(); }
  int active_streams() const { return active_streams_.load(); }
  /// Connections closed with 408 (request not received in time) so far.
  uint64_t request_timeouts() const { return svr_.timeouts(); }
  /// Clients seen hanging up while their request was in flight.
  uint64_t disconnects() const { return watcher_.disconnects(); }

 private:
  using json = nlohmann::ordered_json;

  static void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status();
    res.set_content(dump(e.to_json()), "application/json");
  }

  /// Runs a handler, turning exceptions into OpenAI-shaped errors.
  template <class F>
  auto guarded(F f) {
    return [f = std::move(f)](const httplib::Request& req, httplib::Response& res) {
      try {
        f(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const nlohmann::json::exception&) {
        // A JSON value of an unexpected type or shape reached a handler: the request's fault.
        send_error(res, ApiError(400, "The request has a value of the wrong type or shape", {},
                                 "invalid_request_error", "invalid_value"));
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, std::string("Internal server error: ") + e.what(), {}, "server_error",
                                 "internal_error"));
      }
    };
  }

  void require_ready() const {
    if (ctx_.service->state() != ServiceState::Ready) throw error_for_status(503);
  }

  /// Reads the whole body through the route's content reader, whatever its Content-Type
  /// (httplib would otherwise parse a form-encoded body itself and cap it at 8 KB with a
  /// misleading 413), and bounds it by --max-request-body-bytes.
  std::string read_body(const httplib::Request& req, const httplib::Response& res,
                        const httplib::ContentReader& reader) const {
    if (req.is_multipart_form_data())
      throw ApiError(415, "Unsupported Content-Type: send the request as application/json", {},
                     "invalid_request_error", "unsupported_media_type");
    std::string body;
    bool too_large = false;
    const size_t max = opts_.max_body_bytes;
    const bool ok = reader([&](const char* data, size_t n) {
      if (body.size() + n > max) {
        too_large = true;
        return false;
      }
      body.append(data, n);
      return true;
    });
    // httplib sets 413 itself when Content-Length is over its payload limit (the same bound).
    if (too_large || body.size() > max || res.status == 413) throw body_too_large(max);
    if (!ok) throw ApiError(400, "The request body could not be read", {}, "invalid_request_error", "invalid_value");
    return body;
  }

  json parse_body(const std::string& body) const { return parse_json_body(body, opts_.max_body_bytes); }

  /// A POST route: the body read and bounded, then `f(body, res)`.
  template <class F>
  void post(const std::string& path, F f) {
    svr_.Post(path, [this, f = std::move(f)](const httplib::Request& req, httplib::Response& res,
                                             const httplib::ContentReader& reader) {
      guarded([&](const httplib::Request& rq, httplib::Response& rs) { f(rq, read_body(rq, rs, reader), rs); })(req, res);
    });
    routes_.push_back({std::regex(path), "POST"});
  }
  template <class F>
  void get(const std::string& path, F f) {
    svr_.Get(path, guarded(std::move(f)));
    routes_.push_back({std::regex(path), "GET"});
  }

  /// The methods the routes of `path` answer, or empty when no route matches it.
  std::vector<std::string> methods_for(const std::string& path) const {
    std::vector<std::string> m;
    for (const auto& [pattern, method] : routes_)
      if (std::regex_match(path, pattern) &&
          std::find(m.begin(), m.end(), method) == m.end())
        m.push_back(method);
    return m;
  }

  void setup() {
    svr_.set_payload_max_length(opts_.max_body_bytes);
    svr_.set_tcp_nodelay(true);

    svr_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      metrics_.http_requests++;
      if (req.path.rfind("/v1", 0) == 0 && !auth_.allows(req.get_header_value("Authorization"))) {
        send_error(res, unauthorized());
        return httplib::Server::HandlerResponse::Handled;
      }
      // A known route asked with another method: 405 with Allow (httplib would say 404).
      const auto methods = methods_for(req.path);
      const std::string method = req.method == "HEAD" ? "GET" : req.method;
      if (!methods.empty() && std::find(methods.begin(), methods.end(), method) == methods.end()) {
        std::string allow;
        for (const auto& m : methods) allow += (allow.empty() ? "" : ", ") + m;
        res.set_header("Allow", allow);
        send_error(res, error_for_status(405));
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
    // An exception that escaped every handler: a generic 500, and never its text in a header
    // (httplib's default puts e.what() in an EXCEPTION_WHAT response header).
    svr_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
      send_error(res, error_for_status(500));
    });
    svr_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      if (res.status >= 400) metrics_.http_errors++;
      if (!opts_.log_requests) return;
      // One write per line, so lines from concurrent handlers do not interleave.
      const std::string line = "pie serve: " + req.remote_addr + " \"" + req.method + " " + req.path + "\" " +
                               std::to_string(res.status) + "\n";
      std::fwrite(line.data(), 1, line.size(), stdout);
      std::fflush(stdout);
    });

    get("/health", ([this](const httplib::Request&, httplib::Response& res) {
               const auto st = ctx_.service->state();
               if (st != ServiceState::Ready) {
                 ApiError e = error_for_status(503);
                 if (st == ServiceState::Failed)
                   e = ApiError(503,
                                (ctx_.service->engine_failed() ? "The engine failed: " : "The model failed to load: ") +
                                    ctx_.service->load_error(),
                                {}, "service_unavailable", "service_unavailable");
                 throw e;
               }
               res.status = 200;
               res.set_content("", "text/plain");
             }));
    get("/version", ([this](const httplib::Request&, httplib::Response& res) {
               res.set_content(json{{"version", opts_.version}}.dump(), "application/json");
             }));
    get("/metrics", ([this](const httplib::Request&, httplib::Response& res) {
               res.set_content(metrics_.render(ctx_.served_names.front(), ctx_.service->gauges()),
                               "text/plain; version=0.0.4; charset=utf-8");
             }));
    get("/v1/models", ([this](const httplib::Request&, httplib::Response& res) {
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
    get(R"(/v1/models/(.+))", ([this](const httplib::Request& req, httplib::Response& res) {
               const std::string name = req.matches[1];
               if (std::find(ctx_.served_names.begin(), ctx_.served_names.end(), name) == ctx_.served_names.end())
                 throw model_not_found(name);
               res.set_content(
                   json{{"id", name}, {"object", "model"}, {"created", created_}, {"owned_by", "pie"}}.dump(),
                   "application/json");
             }));
    post("/v1/completions", [this](const httplib::Request&, const std::string& body, httplib::Response& res) {
      handle_generation(ctx_, /*chat=*/false, parse_body(body), res);
    });
    post("/v1/chat/completions", [this](const httplib::Request&, const std::string& body, httplib::Response& res) {
      handle_generation(ctx_, /*chat=*/true, parse_body(body), res);
    });
    post("/tokenize", [this](const httplib::Request&, const std::string& body, httplib::Response& res) {
      tokenize(body, res);
    });
    post("/detokenize", [this](const httplib::Request&, const std::string& body, httplib::Response& res) {
      detokenize(body, res);
    });
  }

  void check_model(const json& body) const {
    if (auto it = body.find("model"); it != body.end() && !it->is_null()) {
      if (!it->is_string()) throw invalid_param("model", "'model' must be a string");
      const auto name = it->get<std::string>();
      if (std::find(ctx_.served_names.begin(), ctx_.served_names.end(), name) == ctx_.served_names.end())
        throw model_not_found(name);
    }
  }

  // vLLM's /tokenize: {"prompt"} or {"messages", "tools", "add_generation_prompt",
  // "chat_template_kwargs"} (the chat rendered through the template as /v1/chat/completions
  // renders it). vLLM's `return_token_strs` adds each id's vocabulary string (`token_strs`);
  // pie adds the text the ids encode (`prompt`: for messages, the rendered chat) with it.
  void tokenize(const std::string& raw, httplib::Response& res) {
    const json body = parse_body(raw);
    require_ready();
    check_model(body);
    if (!body.is_object()) throw invalid_param("", "The request body must be a JSON object");
    bool return_strs = false;
    if (const json* v = detail::field(body, "return_token_strs")) return_strs = detail::get_bool(*v, "return_token_strs");
    std::vector<int32_t> ids;
    std::string text;
    if (auto m = body.find("messages"); m != body.end()) {
      json chat_body = body;
      chat_body.erase("model");
      GenerationRequest g = parse_chat_request(chat_body, ctx_.service->model_info().defaults);
      bool add_special = false;
      if (const json* a = detail::field(body, "add_special_tokens"))
        add_special = detail::get_bool(*a, "add_special_tokens");
      text = render_chat_checked(ctx_, g.messages, g.template_options);
      ids = ctx_.encode(text, add_special);
    } else if (auto p = body.find("prompt"); p != body.end() && p->is_string()) {
      bool add_special = true;
      if (auto a = body.find("add_special_tokens"); a != body.end()) {
        if (!a->is_boolean()) throw invalid_param("add_special_tokens", "'add_special_tokens' must be a boolean");
        add_special = a->get<bool>();
      }
      text = p->get<std::string>();
      ids = ctx_.encode(text, add_special);
    } else {
      throw invalid_param("prompt", "'prompt' (a string) or 'messages' is required");
    }
    const ModelInfo info = ctx_.service->model_info();
    json out = {{"count", ids.size()}, {"max_model_len", info.max_model_len}, {"tokens", ids}, {"token_strs", nullptr}};
    if (return_strs) {
      json strs = json::array();
      for (int32_t id : ids) strs.push_back(ctx_.vocab_token ? ctx_.vocab_token(id) : ctx_.decode({id}));
      out["token_strs"] = std::move(strs);
      out["prompt"] = text;
    }
    res.set_content(dump(out), "application/json");
  }

  void detokenize(const std::string& raw, httplib::Response& res) {
    const json body = parse_body(raw);
    require_ready();
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
  std::vector<std::pair<std::regex, std::string>> routes_;  // (path pattern, method)
  ServerMetrics& metrics_;
  ApiKeyAuth auth_;
  DisconnectWatcher watcher_;  // before svr_: handlers' guards unwatch into it until svr_ stops
  ConnServer svr_;
  std::atomic<int> active_streams_{0};
  int64_t created_ = 0;
};

}  // namespace pie::server
