#pragma once
/// \file fuzz_targets.hpp
/// \brief The entry points the fuzzers drive (libFuzzer, tests/fuzz/fuzz_main.cpp) and the CI
/// replay runs on each committed corpus file (corpus_replay.cpp). Each takes arbitrary bytes and
/// must end in a value or a pie::Error / ApiError; anything else (a crash, a hang, another
/// exception type, a broken invariant) is a finding. Invariants are checked with `require`,
/// which aborts, so libFuzzer records the input.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pie/model/safetensors.hpp"
#include "pie/server/json_body.hpp"
#include "pie/server/protocol.hpp"
#include "pie/tokenizer/chat_template.hpp"
#include "pie/tokenizer/detokenizer.hpp"
#include "pie/tokenizer/tokenizer.hpp"

namespace pie::fuzz {

inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
    std::abort();
  }
}

/// An HTTP body through the server's parse path: size and depth limits, then both endpoints'
/// validators (every rejection must be an ApiError, i.e. a 4xx).
inline void request(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  server::json j;
  try {
    j = server::parse_json_body(body, 1 << 20);
  } catch (const server::ApiError& e) {
    require(e.status() >= 400 && e.status() < 500, "parse_json_body: a non-4xx error");
    return;
  }
  for (bool chat : {false, true}) {
    try {
      server::GenerationRequest r =
          chat ? server::parse_chat_request(j, {}) : server::parse_completion_request(j, {});
      server::validate_sampling(r.params, 512);
      server::resolve_max_tokens(r, 8, 256);
    } catch (const server::ApiError& e) {
      require(e.status() >= 400 && e.status() < 500, "parse_*_request: a non-4xx error");
    }
  }
}

/// Bytes through the embedded tokenizer: encode never throws; the incremental detokenizer's
/// pieces concatenate to decode() of the same ids (also of the raw bytes read as ids).
inline void tokenizer(const uint8_t* data, size_t size) {
  static const tokenizer::Tokenizer tok = tokenizer::Tokenizer::embedded();
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (bool special : {false, true}) {
    const std::vector<int32_t> ids = tok.encode(text, special);
    for (int32_t id : ids) require(id >= 0 && id < tok.vocab_size(), "encode: id out of the vocabulary");
  }
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < size; i += 2) ids.push_back((data[i] | (data[i + 1] << 8)) % 520);  // some unknown
  for (bool skip : {false, true}) {
    tokenizer::IncrementalDetokenizer d(tok, skip);
    std::string streamed;
    for (int32_t id : ids) streamed += d.push(id);
    streamed += d.flush();
    require(streamed == tok.decode(ids, skip), "detokenizer: streamed text differs from decode()");
  }
}

/// The first byte picks: render fuzzed messages/options (JSON) through the embedded Qwen3
/// template, or parse and render a fuzzed template source over a fixed conversation. Parsing may
/// only fail with pie::Error (a clear message); rendering with any std::exception, which the
/// server turns into a 400 (render_chat_checked) — but never a crash.
inline void chat_template(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const auto conversation =
      nlohmann::ordered_json::parse(R"([{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}])");
  if (data[0] & 1) {
    if (server::json_depth(rest) > server::kMaxJsonDepth) return;  // the server refuses these first
    const auto j = nlohmann::ordered_json::parse(rest, nullptr, false);
    if (j.is_discarded()) return;
    const auto messages = j.is_object() && j.contains("messages") ? j["messages"] : j;
    const auto options = j.is_object() && j.contains("options") ? j["options"] : nlohmann::ordered_json::object();
    try {
      tokenizer::ChatTemplate::embedded().render(messages, options);
    } catch (const std::exception&) {
    }
    return;
  }
  std::optional<tokenizer::ChatTemplate> t;
  try {
    t = tokenizer::ChatTemplate::from_string(rest, "<s>", "</s>");
  } catch (const pie::Error&) {
    return;
  }
  try {
    t->render(conversation, nlohmann::ordered_json{{"add_generation_prompt", true}});
  } catch (const std::exception&) {
  }
}

/// Bytes as a .safetensors file (in memory, through /proc/self/fd): the header is validated,
/// every tensor lies inside the data section, none overlaps another.
inline void safetensors(const uint8_t* data, size_t size) {
  const int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  require(fd >= 0, "memfd_create");
  size_t off = 0;
  while (off < size) {
    const ssize_t n = ::write(fd, data + off, size - off);
    require(n > 0, "write");
    off += static_cast<size_t>(n);
  }
  try {
    model::SafetensorsFile f("/proc/self/fd/" + std::to_string(fd));
    const size_t header = size >= 8 ? static_cast<size_t>(data[0] | (uint64_t{data[1]} << 8) | (uint64_t{data[2]} << 16) |
                                                          (uint64_t{data[3]} << 24)) : 0;
    for (const auto& [name, t] : f.tensors()) {
      (void)name;
      require(t.nbytes <= size - 8 - header, "tensor larger than the data section");
    }
  } catch (const pie::Error&) {
  }
  ::close(fd);
}

}  // namespace pie::fuzz
