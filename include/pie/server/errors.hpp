#pragma once
/// \file errors.hpp
/// \brief OpenAI-shaped API errors: `{"error": {"message", "type", "param", "code"}}` with the
/// HTTP status that goes with them. Every failure the server reports goes through ApiError, so a
/// client sees one shape whatever went wrong.
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace pie::server {

/// \brief An error the API returns to the client; thrown by request parsing and validation and
/// turned into a response by the HTTP layer.
class ApiError : public std::runtime_error {
 public:
  /// \param status HTTP status (400, 401, 404, 413, 503, ...)
  /// \param message what was wrong, naming the parameter and value when there is one
  /// \param param   the request field at fault, or empty
  /// \param type    OpenAI's error type (invalid_request_error, authentication_error, ...)
  /// \param code    OpenAI's machine-readable code (model_not_found, invalid_api_key, ...)
  ApiError(int status, std::string message, std::string param = {}, std::string type = "invalid_request_error",
           std::string code = {})
      : std::runtime_error(message),
        status_(status),
        param_(std::move(param)),
        type_(std::move(type)),
        code_(std::move(code)) {}

  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }
  const std::string& code() const { return code_; }

  /// The response body. `param` and `code` are null when not set, as OpenAI sends them.
  nlohmann::ordered_json to_json() const {
    nlohmann::ordered_json e = {{"message", what()}, {"type", type_}, {"param", nullptr}, {"code", nullptr}};
    if (!param_.empty()) e["param"] = param_;
    if (!code_.empty()) e["code"] = code_;
    return {{"error", e}};
  }

 private:
  int status_;
  std::string param_, type_, code_;
};

/// 400 for an invalid value; the message must name the parameter.
inline ApiError invalid_param(std::string param, std::string message) {
  return ApiError(400, std::move(message), std::move(param), "invalid_request_error", "invalid_value");
}

/// 400 for a field pie does not implement and that would change the result if ignored.
inline ApiError unsupported_param(const std::string& param, const std::string& why = {}) {
  std::string msg = "'" + param + "' is not supported by this server";
  if (!why.empty()) msg += ": " + why;
  return ApiError(400, msg, param, "invalid_request_error", "unsupported_parameter");
}

/// 404 for a model name the server does not serve.
inline ApiError model_not_found(const std::string& model) {
  return ApiError(404, "The model `" + model + "` does not exist.", "model", "invalid_request_error",
                  "model_not_found");
}

/// 401 for a missing or wrong API key.
inline ApiError unauthorized() {
  return ApiError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.", {},
                  "authentication_error", "invalid_api_key");
}

/// The error for a status httplib produced itself (no route, body too large, ...).
inline ApiError error_for_status(int status) {
  switch (status) {
    case 404:
      return ApiError(404, "Not found: no such route", {}, "invalid_request_error", "not_found");
    case 405:
      return ApiError(405, "Method not allowed on this route", {}, "invalid_request_error", "method_not_allowed");
    case 408:
      return ApiError(408, "Request timeout: the request did not arrive in time (see --request-timeout)", {},
                      "invalid_request_error", "request_timeout");
    case 413:
      return ApiError(413, "Request body too large (see --max-request-body-bytes)", {}, "invalid_request_error",
                      "request_too_large");
    case 503:
      return ApiError(503, "The server is not ready (the model is loading or the server is shutting down)", {},
                      "service_unavailable", "service_unavailable");
    default:
      if (status >= 500) return ApiError(status, "Internal server error", {}, "server_error", "internal_error");
      return ApiError(status, "Bad request", {}, "invalid_request_error", {});
  }
}

}  // namespace pie::server
