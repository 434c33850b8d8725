// A stand-in for `pie serve --enable-auto-tool-choice --tool-call-parser hermes
// --reasoning-parser qwen3` whose model output is scripted, so the official openai client can
// be tested on real tool-call responses (the embedded model's random weights never write one).
// The "model" answers a chat with the content of the prompt's last user turn, streamed in
// pieces of about 3 bytes; a turn of tool results (<tool_response>...) is answered with
// "Result: " and the results. Prompt token ids are the rendered prompt's bytes. Chat templates,
// protocol, parsers and SSE are pie serve's own. Prints "listening on http://127.0.0.1:PORT".
#include <iostream>
#include <string>
#include <vector>

#include "pie/server/http.hpp"
#include "pie/tokenizer/chat_template.hpp"
#include "pie/tokenizer/reasoning.hpp"
#include "scripted_service.hpp"

using namespace pie::server;

namespace {

std::vector<std::string> script(const std::vector<int32_t>& prompt) {
  std::string text;
  for (int32_t id : prompt) text.push_back(static_cast<char>(id));
  const std::string open = "<|im_start|>user\n", close = "<|im_end|>";
  const size_t at = text.rfind(open);
  std::string out = "no user turn";
  if (at != std::string::npos) {
    const size_t from = at + open.size();
    out = text.substr(from, text.find(close, from) - from);
    if (out.rfind("<tool_response>\n", 0) == 0) out = "Result: " + out;
  }
  std::vector<std::string> pieces;  // ~3 bytes each, never splitting a UTF-8 character
  for (size_t i = 0; i < out.size();) {
    size_t j = std::min(out.size(), i + 3);
    while (j < out.size() && (static_cast<unsigned char>(out[j]) & 0xC0) == 0x80) ++j;
    pieces.push_back(out.substr(i, j - i));
    i = j;
  }
  if (pieces.empty()) pieces.emplace_back();
  return pieces;
}

}  // namespace

int main() {
  test::ScriptedService svc(script);
  GenerationContext ctx;
  ctx.served_names = {"scripted"};
  ctx.service = &svc;
  ctx.encode = [](const std::string& text, bool) {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  };
  ctx.decode = [](const std::vector<int32_t>& ids) {
    std::string s;
    for (int32_t id : ids) s.push_back(static_cast<char>(id));
    return s;
  };
  ctx.token_text = [](int32_t id) { return std::string(1, static_cast<char>(id)); };
  ctx.render_chat = [](const nlohmann::ordered_json& m, const nlohmann::ordered_json& o) {
    return pie::tokenizer::ChatTemplate::embedded().render(m, o);
  };
  ctx.enable_auto_tool_choice = true;
  ctx.tool_call_parser = "hermes";
  ctx.make_reasoning = [] {
    auto p = std::make_shared<pie::tokenizer::ReasoningParser>(false);
    return ReasoningSplitter([p](std::string_view delta, bool last) {
      auto d = p->feed(delta);
      std::pair<std::string, std::string> out{d.reasoning_delta, d.content_delta};
      if (last) {
        auto f = p->finish();
        out.first += f.reasoning_delta;
        out.second += f.content_delta;
      }
      return out;
    });
  };
  HttpOptions ho;
  ho.host = "127.0.0.1";
  ho.port = 0;
  ho.log_requests = false;
  ServerMetrics metrics;
  HttpServer http(ho, ctx, metrics);
  const int port = http.bind();
  std::cout << "scripted server: listening on http://127.0.0.1:" << port << std::endl;
  http.listen();
  return 0;
}
