#pragma once
/// \file json_body.hpp
/// \brief The one way a request body becomes JSON. Every route that reads a body (the
/// generation endpoints, /tokenize, /detokenize; with or without an API key) parses through
/// parse_json_body, which bounds the body's size and its nesting depth *before* nlohmann-json
/// builds anything: a 100,000-deep `[[[…` would otherwise be parsed fine and then overflow the
/// handler thread's stack in a recursive copy, dump or destructor, killing the whole server.
/// The depth pre-scan is one linear pass with no recursion.
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "pie/server/errors.hpp"

namespace pie::server {

/// Deepest nesting of arrays and objects a request may have (vLLM's bodies need < 10).
inline constexpr int kMaxJsonDepth = 128;

/// The deepest array/object nesting of `text`, stopping early once it passes `limit`.
/// Brackets inside strings do not count. Malformed text is left for the parser to reject.
inline int json_depth(std::string_view text, int limit = kMaxJsonDepth) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > max_depth) {
          max_depth = depth;
          if (max_depth > limit) return max_depth;
        }
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return max_depth;
}

/// 413 in OpenAI's shape for a body over `max_bytes`.
inline ApiError body_too_large(size_t max_bytes) {
  return ApiError(413,
                  "Request body too large: the limit is " + std::to_string(max_bytes) +
                      " bytes (see --max-request-body-bytes)",
                  {}, "invalid_request_error", "request_too_large");
}

/// Parses a request body: 413 past `max_bytes`, 400 past kMaxJsonDepth, 400 for invalid JSON
/// (including invalid UTF-8), 400 unless it is an object. The messages never echo the body's
/// bytes, so they are always valid UTF-8.
/// The result is an ordered_json: objects keep the client's key order (see protocol.hpp).
inline nlohmann::ordered_json parse_json_body(std::string_view body, size_t max_bytes) {
  if (body.size() > max_bytes) throw body_too_large(max_bytes);
  if (json_depth(body) > kMaxJsonDepth)
    throw ApiError(400, "The request body nests arrays/objects deeper than " + std::to_string(kMaxJsonDepth) + " levels",
                   "", "invalid_request_error", "invalid_value");
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(body);
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() quotes the bytes around the error, which may be invalid UTF-8: report the offset.
    throw ApiError(400, "The request body is not valid JSON (or not valid UTF-8) near byte " + std::to_string(e.byte),
                   "", "invalid_request_error", "invalid_value");
  } catch (const nlohmann::json::exception&) {
    throw ApiError(400, "The request body is not valid JSON", "", "invalid_request_error", "invalid_value");
  }
  if (!j.is_object()) throw invalid_param("", "The request body must be a JSON object");
  return j;
}

}  // namespace pie::server
