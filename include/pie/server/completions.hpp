#pragma once
/// \file completions.hpp
/// \brief The two generation endpoints, /v1/completions and /v1/chat/completions: prompt →
/// token ids, one engine request per prompt, results gathered per choice (index =
/// prompt·n + sequence), answered as one JSON body or streamed as SSE chunks. The client going
/// away mid-stream cancels its engine requests (the releaser runs on every exit path).
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "pie/server/connection.hpp"
#include "pie/server/disconnect_watcher.hpp"
#include "pie/server/engine_service.hpp"
#include "pie/server/protocol.hpp"
#include "pie/server/responses.hpp"
#include "pie/server/tool_parser.hpp"

namespace pie::server {

/// Splits generated text into (reasoning_content, content), statefully, per choice. `last`
/// flushes whatever the splitter still holds.
using ReasoningSplitter = std::function<std::pair<std::string, std::string>(std::string_view delta, bool last)>;

/// \brief A structured output being compiled (GenerationContext::compile_structured).
struct PendingConstraint {
  /// The processor enforcing it on one engine request; it waits for the compile at its first
  /// draw.
  std::function<std::shared_ptr<sched::LogitsProcessor>()> make;
  /// Blocks until the compile is done; throws pie::Error naming a bad schema, regex or grammar.
  std::function<void()> wait;
};

/// \brief What the generation handlers need from the rest of the server.
struct GenerationContext {
  std::vector<std::string> served_names;
  GenerationService* service = nullptr;
  std::function<std::vector<int32_t>(const std::string& text, bool add_special)> encode;
  std::function<std::string(const json& messages, const json& options)> render_chat;
  TokenText token_text;  ///< raw bytes of one token id (logprobs)
  std::function<std::string(int32_t)> vocab_token;  ///< a token id's vocabulary string (/tokenize token_strs)
  std::function<std::string(const std::vector<int32_t>&)> decode;
  std::atomic<int>* active_streams = nullptr;         ///< SSE responses in progress (for shutdown)
  DisconnectWatcher* watcher = nullptr;               ///< null → a client hang-up is seen on write only
  std::function<ReasoningSplitter()> make_reasoning;  ///< empty → no reasoning parser
  bool enable_auto_tool_choice = false;               ///< --enable-auto-tool-choice
  std::string tool_call_parser;                       ///< --tool-call-parser ("hermes"), empty → none
  /// Starts compiling a structured output (pie/structured/, XGrammar; cached by source) and
  /// returns at once, so the request's prefill runs while its grammar compiles. Empty: this
  /// build has no XGrammar, and structured outputs get a 400 (tool_choice required/named then
  /// parse like auto, unenforced).
  std::function<PendingConstraint(const sched::StructuredOutput&)> compile_structured;
  int stream_poll_ms = 50;
};

namespace detail {

/// \brief One choice's accumulated output.
struct Choice {
  std::string text;
  size_t text_bytes_sent = 0;  // completions streaming: offset for text_offset
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  sched::FinishReason finish = sched::FinishReason::None;
  std::string stop_string;
  int32_t stop_token = -1;
  ReasoningSplitter reasoning;
  std::string reasoning_text, content_text;
  bool prompt_ids_sent = false;  ///< return_token_ids streaming: prompt_token_ids went out
  bool echoed = false;           ///< completions streaming: the prompt went out (echo)
  std::optional<HermesToolParser> tools;  ///< set when the request's tool calls are parsed
};

/// The reported finish_reason: "tool_calls" when a choice that ended normally called a tool.
inline json chat_finish_reason(sched::FinishReason r, int calls) {
  if (r == sched::FinishReason::Stop && calls > 0) return "tool_calls";
  return finish_reason_json(r);
}

/// \brief A request in flight: its engine streams and choices. Shared by the handler and the
/// streaming callbacks (which outlive the handler).
struct Flight {
  GenerationRequest req;
  std::string id, model;
  int64_t created = 0;
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<bool> stream_done;
  std::vector<Choice> choices;
  std::vector<std::string> prompt_texts;  // for echo
  std::vector<std::vector<int32_t>> prompt_ids;      // per prompt, for return_token_ids and echo
  std::vector<std::vector<PromptLogprob>> prompt_lps;  // per prompt, for prompt_logprobs
  std::vector<int32_t> eos_ids;
  int64_t prompt_tokens = 0, cached_tokens = 0;
  bool done = false;
  bool roles_sent = false;  // chat streaming: every choice's first (role) chunk went out
  std::optional<ApiError> error;
};

/// Applies events to the choices; returns the choices that changed, with their new text.
struct Update {
  int choice;
  std::string text;
  std::vector<TokenLogprob> logprobs;
  sched::FinishReason finish;
  std::vector<int32_t> tokens;
};

inline std::vector<Update> apply(Flight& f, size_t s, std::vector<StreamEvent>& events) {
  std::vector<Update> ups;
  const int n = f.req.params.n;
  for (auto& ev : events) {
    if (ev.error && !f.error) f.error = *ev.error;
    if (!ev.prompt_logprobs.empty()) f.prompt_lps[s] = std::move(ev.prompt_logprobs);
    for (auto& d : ev.seqs) {
      const int ci = static_cast<int>(s) * n + d.index;
      Choice& c = f.choices[ci];
      c.text += d.text;
      c.tokens.insert(c.tokens.end(), d.tokens.begin(), d.tokens.end());
      c.logprobs.insert(c.logprobs.end(), d.logprobs.begin(), d.logprobs.end());
      if (d.finish != sched::FinishReason::None) {
        c.finish = d.finish;
        c.stop_string = d.stop_string;
        c.stop_token = d.stop_token;
      }
      ups.push_back({ci, std::move(d.text), std::move(d.logprobs), d.finish,
                     f.req.return_token_ids ? std::move(d.tokens) : std::vector<int32_t>{}});
    }
    if (ev.finished) f.stream_done[s] = true;
  }
  f.done = std::all_of(f.stream_done.begin(), f.stream_done.end(), [](bool b) { return b; });
  return ups;
}

/// Completions echo: the text put before choice text (vLLM: none with return_token_ids, whose
/// prompt_token_ids carry the prompt).
inline const std::string& echo_text(const Flight& f, size_t prompt) {
  static const std::string none;
  return f.req.echo && !f.req.return_token_ids ? f.prompt_texts[prompt] : none;
}

/// Completions logprobs of a choice's tokens `lps`; with echo, the prompt's tokens first (the
/// first with null entries, the rest from prompt_logprobs), as vLLM.
inline json choice_logprobs(const Flight& f, size_t prompt, const std::vector<TokenLogprob>& lps,
                            const TokenSpelling& spell, size_t offset0, bool with_prompt) {
  if (!with_prompt) return completion_logprobs(lps, spell, offset0);
  std::vector<TokenLogprob> all = echo_prompt_logprobs(f.prompt_lps[prompt], f.req.params.logprobs.value_or(0));
  all.insert(all.end(), lps.begin(), lps.end());
  return completion_logprobs(all, spell, offset0, f.prompt_ids[prompt].front());
}

inline int64_t completion_tokens(const Flight& f) {
  int64_t t = 0;
  for (const auto& c : f.choices) t += static_cast<int64_t>(c.tokens.size());
  return t;
}

inline json usage_of(const Flight& f) { return usage_json(f.prompt_tokens, completion_tokens(f)); }

/// The non-streaming body.
inline json final_body(Flight& f, const GenerationContext& ctx) {
  json choices = json::array();
  const TokenSpelling spell(ctx.token_text, f.req.return_tokens_as_token_ids);
  const TokenSpelling text_spell(ctx.token_text);  // prompt_logprobs' decoded_token, as vLLM
  const bool want_prompt_lps = f.req.params.prompt_logprobs.has_value();
  for (size_t i = 0; i < f.choices.size(); ++i) {
    Choice& c = f.choices[i];
    const size_t prompt = i / static_cast<size_t>(f.req.params.n);
    json ch = {{"index", i},
               {"finish_reason", finish_reason_json(c.finish)},
               {"stop_reason", stop_reason_json(c.stop_string, c.stop_token, f.eos_ids)}};
    if (f.req.chat) {
      json msg = {{"role", f.req.response_role}, {"content", c.text}, {"tool_calls", json::array()}};
      std::string content = c.text;
      if (c.reasoning) {
        auto [r, t] = c.reasoning(c.text, true);
        msg["reasoning_content"] = r.empty() ? json(nullptr) : json(r);
        content = t;
        msg["content"] = t;
      }
      if (c.tools) {  // the same parser the stream runs, over the whole content
        ToolParseResult tr = parse_tool_calls(content, std::move(*c.tools));
        msg["content"] = tr.content.empty() ? json(nullptr) : json(tr.content);
        msg["tool_calls"] = tool_calls_json(tr.calls);
        ch["finish_reason"] = chat_finish_reason(c.finish, static_cast<int>(tr.calls.size()));
      }
      // vLLM's echo: the last message's content (when its role is the response's) before the
      // generated content, which is then never null.
      if (f.req.echo) msg["content"] = f.req.chat_echo + (msg["content"].is_null() ? "" : msg["content"].get<std::string>());
      ch["message"] = msg;
      ch["logprobs"] = f.req.want_logprobs ? chat_logprobs(c.logprobs, spell) : json(nullptr);
      if (f.req.return_token_ids) ch["token_ids"] = c.tokens;
    } else {
      static const std::vector<TokenLogprob> none;
      ch["text"] = echo_text(f, prompt) + (f.req.echo_only ? std::string{} : c.text);
      ch["logprobs"] = f.req.want_logprobs
                           ? choice_logprobs(f, prompt, f.req.echo_only ? none : c.logprobs, spell, 0, f.req.echo)
                           : json(nullptr);
      // vLLM puts the prompt's fields in each completions choice.
      if (want_prompt_lps) ch["prompt_logprobs"] = prompt_logprobs_json(f.prompt_lps[prompt], text_spell);
      if (f.req.return_token_ids) {
        ch["prompt_token_ids"] = f.prompt_ids[prompt];
        ch["token_ids"] = c.tokens;
      }
    }
    choices.push_back(std::move(ch));
  }
  json body = {{"id", f.id},
               {"object", f.req.chat ? "chat.completion" : "text_completion"},
               {"created", f.created},
               {"model", f.model},
               {"choices", choices},
               {"usage", usage_of(f)},
               {"system_fingerprint", nullptr}};
  if (f.req.chat) {  // chat has one prompt: vLLM reports its fields beside the choices
    if (want_prompt_lps) body["prompt_logprobs"] = prompt_logprobs_json(f.prompt_lps[0], text_spell);
    if (f.req.return_token_ids) body["prompt_token_ids"] = f.prompt_ids[0];
  }
  return body;
}

/// The SSE chunks for a batch of updates.
inline std::string stream_chunks(Flight& f, const GenerationContext& ctx, std::vector<Update>& ups) {
  std::string out;
  const char* object = f.req.chat ? "chat.completion.chunk" : "text_completion";
  const TokenSpelling spell(ctx.token_text, f.req.return_tokens_as_token_ids);
  auto chunk = [&](json choice, const std::vector<int32_t>* prompt_ids = nullptr) {
    json j = {{"id", f.id},
              {"object", object},
              {"created", f.created},
              {"model", f.model},
              {"choices", json::array({std::move(choice)})}};
    if (f.req.include_usage) j["usage"] = f.req.continuous_usage ? usage_of(f) : json(nullptr);
    if (prompt_ids) j["prompt_token_ids"] = *prompt_ids;  // chat: vLLM's first chunk carries them
    out += sse(j);
  };
  if (f.req.chat && !f.roles_sent && !ups.empty()) {
    // The engine's first output: OpenAI's first delta of every choice carries the role; then,
    // with echo, vLLM sends each choice the echoed content in a chunk of its own.
    f.roles_sent = true;
    for (size_t i = 0; i < f.choices.size(); ++i)
      chunk({{"index", i},
             {"delta", {{"role", f.req.response_role}, {"content", ""}}},
             {"logprobs", nullptr},
             {"finish_reason", nullptr}},
            f.req.return_token_ids ? &f.prompt_ids[0] : nullptr);
    if (!f.req.chat_echo.empty())
      for (size_t i = 0; i < f.choices.size(); ++i)
        chunk({{"index", i}, {"delta", {{"content", f.req.chat_echo}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}});
  }
  for (auto& u : ups) {
    Choice& c = f.choices[u.choice];
    const bool fin = u.finish != sched::FinishReason::None;
    const size_t prompt = static_cast<size_t>(u.choice) / static_cast<size_t>(f.req.params.n);
    const bool echo_now = !f.req.chat && f.req.echo && !c.echoed;  // completions: the prompt rides on the first chunk
    // With return_token_ids, tokens whose text is still held back go out as their own chunk.
    if (u.text.empty() && u.logprobs.empty() && u.tokens.empty() && !fin && !echo_now) continue;
    json ch = {{"index", u.choice}};
    if (f.req.chat) {
      json delta = json::object();
      std::string content = u.text;
      if (c.reasoning) {
        auto [r, t] = c.reasoning(u.text, fin);
        if (!r.empty()) delta["reasoning_content"] = r;
        content = std::move(t);
      }
      std::vector<ToolCallDelta> calls;
      if (c.tools) {  // the tool parser sees the content only (after </think>)
        ToolParseDelta td = c.tools->feed(content);
        if (fin) {
          ToolParseDelta tail = c.tools->finish();
          td.content += tail.content;
          td.calls.insert(td.calls.end(), tail.calls.begin(), tail.calls.end());
        }
        content = std::move(td.content);
        calls = std::move(td.calls);
      }
      if (!content.empty()) delta["content"] = content;
      // Each tool-call delta goes in its own chunk, as vLLM sends them: first index, id, type
      // and name (arguments ""), then argument fragments. (The openai client merges entries by
      // index across chunks, but keeps two entries of one index within a chunk apart.)
      std::vector<json> deltas;
      if (!delta.empty()) deltas.push_back(std::move(delta));
      for (auto& cd : calls) {
        if (cd.first) {
          ToolCallDelta head = cd;
          head.arguments.clear();
          deltas.push_back({{"tool_calls", tool_call_deltas_json({head})}});
          if (cd.arguments.empty()) continue;
        }
        ToolCallDelta frag{cd.index, false, {}, {}, std::move(cd.arguments)};
        deltas.push_back({{"tool_calls", tool_call_deltas_json({frag})}});
      }
      if (deltas.empty() && !fin && u.logprobs.empty() && u.tokens.empty()) continue;
      if (deltas.empty()) deltas.push_back(json::object());
      json lps = f.req.want_logprobs ? chat_logprobs(u.logprobs, spell) : json(nullptr);
      // The update's logprobs and token ids ride on its first chunk.
      json ids = f.req.return_token_ids ? json(u.tokens) : json(nullptr);
      for (size_t k = 0; k + 1 < deltas.size(); ++k) {  // all but the last; it carries finish_reason
        json cc = {{"index", u.choice},
                   {"delta", std::move(deltas[k])},
                   {"logprobs", std::exchange(lps, json(nullptr))},
                   {"finish_reason", nullptr},
                   {"stop_reason", nullptr}};
        if (f.req.return_token_ids) cc["token_ids"] = std::exchange(ids, json::array());
        chunk(std::move(cc));
      }
      ch["delta"] = std::move(deltas.back());
      ch["logprobs"] = std::move(lps);
      if (f.req.return_token_ids) ch["token_ids"] = std::move(ids);
    } else {
      // vLLM's echo: the prompt text and its logprobs before the first generated delta, the
      // text offsets then counting from the prompt's start.
      // With max_tokens 0 the generated token is not shown.
      if (f.req.echo_only) { u.text.clear(); u.logprobs.clear(); }
      const std::string text = echo_now ? echo_text(f, prompt) + u.text : u.text;
      c.echoed = c.echoed || echo_now;
      ch["text"] = text;
      ch["logprobs"] = f.req.want_logprobs ? choice_logprobs(f, prompt, u.logprobs, spell, c.text_bytes_sent, echo_now)
                                           : json(nullptr);
      c.text_bytes_sent += text.size();
      if (f.req.return_token_ids) {  // vLLM: the prompt's ids in a choice's first chunk, then deltas
        if (!c.prompt_ids_sent) ch["prompt_token_ids"] = f.prompt_ids[prompt];
        c.prompt_ids_sent = true;
        ch["token_ids"] = u.tokens;
      }
    }
    ch["finish_reason"] = f.req.chat && c.tools ? chat_finish_reason(u.finish, c.tools->calls())
                                                : finish_reason_json(u.finish);
    ch["stop_reason"] = fin ? stop_reason_json(c.stop_string, c.stop_token, f.eos_ids) : json(nullptr);
    chunk(std::move(ch));
  }
  return out;
}

}  // namespace detail

/// Renders a chat through the template; a template error (a message the template cannot take)
/// is the request's fault: 400.
inline std::string render_chat_checked(const GenerationContext& ctx, const json& messages, const json& options) {
  try {
    return ctx.render_chat(messages, options);
  } catch (const ApiError&) {
    throw;
  } catch (const std::exception& e) {
    throw invalid_param("messages", std::string("The chat template failed: ") + e.what());
  }
}

/// Handles a POST to /v1/completions (chat=false) or /v1/chat/completions (chat=true).
/// `body` is the parsed request. Throws ApiError for anything rejected before the response starts.
inline void handle_generation(const GenerationContext& ctx, bool chat, const json& body, httplib::Response& res) {
  auto f = std::make_shared<detail::Flight>();
  if (ctx.service->state() != ServiceState::Ready) throw error_for_status(503);
  const ModelInfo info = ctx.service->model_info();
  f->req = chat ? parse_chat_request(body, info.defaults) : parse_completion_request(body, info.defaults);
  if (f->req.model.empty())
    f->model = ctx.served_names.front();
  else if (std::find(ctx.served_names.begin(), ctx.served_names.end(), f->req.model) == ctx.served_names.end())
    throw model_not_found(f->req.model);
  else
    f->model = f->req.model;
  f->eos_ids = info.eos_ids;
  if (chat) check_tool_choice(f->req, ctx.enable_auto_tool_choice, ctx.tool_call_parser);
  // The output constraint: tool_choice required/named (a grammar of the tools' calls) wins over
  // response_format, whose text such a turn never has.
  std::optional<sched::StructuredOutput> constraint = f->req.structured;
  std::string constraint_param = f->req.structured_param;
  if (chat && ctx.compile_structured)
    if (auto tc = tool_call_constraint(f->req)) {
      constraint = std::move(tc);
      constraint_param = "tool_choice";
    }
  if (constraint && !ctx.compile_structured)
    throw unsupported_param(constraint_param,
                            "structured outputs are not available: this pie was built without XGrammar "
                            "(see docs/serving.md)");
  // With a reasoning parser the constraint starts after the reasoning block.
  if (constraint) constraint->after_reasoning = chat && static_cast<bool>(ctx.make_reasoning);
  // The grammar compiles (on the compiler's threads) while the prompt is rendered and prefilled.
  auto checked = [&](const auto& fn) {
    try {
      return fn();
    } catch (const ApiError&) {
      throw;
    } catch (const std::exception& e) {
      throw invalid_param(constraint_param, e.what());
    }
  };
  PendingConstraint pending;
  if (constraint) pending = checked([&] { return ctx.compile_structured(*constraint); });
  std::shared_ptr<const sched::StructuredOutput> constraint_ptr;
  if (constraint) constraint_ptr = std::make_shared<const sched::StructuredOutput>(*constraint);

  // Prompts → token ids, each checked against the context and the vocabulary.
  std::vector<std::vector<int32_t>> prompts;
  if (chat) {
    std::string text = render_chat_checked(ctx, f->req.messages, f->req.template_options);
    prompts.push_back(ctx.encode(text, false));
    f->prompt_texts.push_back(text);
  } else {
    for (const auto& p : f->req.prompts) {
      if (p.is_tokens) {
        for (int32_t t : p.token_ids)
          if (t >= info.vocab_size)
            throw invalid_param("prompt", "'prompt' token id " + std::to_string(t) + " is out of the vocabulary [0, " +
                                              std::to_string(info.vocab_size) + ")");
        prompts.push_back(p.token_ids);
        f->prompt_texts.push_back(f->req.echo ? ctx.decode(p.token_ids) : std::string{});
      } else {
        prompts.push_back(ctx.encode(p.text, true));
        f->prompt_texts.push_back(p.text);
      }
    }
  }
  if (f->req.return_token_ids || f->req.echo) f->prompt_ids = prompts;
  f->prompt_lps.resize(prompts.size());
  const auto arrival = Clock::now();
  std::vector<SubmitRequest> subs;
  // One stop-string automaton for all the request's prompts and sequences, built here, off the
  // engine thread.
  const auto stop_set = std::make_shared<const StopStringSet>(f->req.stop);
  for (auto& ids : prompts) {
    GenerationRequest r = f->req;
    if (constraint) {  // one processor per engine request: its matchers hold that request's state
      r.params.logits_processor = pending.make();
      r.params.structured = constraint_ptr;
    }
    resolve_max_tokens(r, static_cast<int>(ids.size()), info.max_model_len);
    validate_sampling(r.params, info.vocab_size);
    f->prompt_tokens += static_cast<int64_t>(ids.size());
    subs.push_back(
        {std::move(ids), r.params, r.stop, stop_set, r.include_stop_str_in_output, r.skip_special_tokens, arrival});
  }
  f->id = make_id(chat ? "chatcmpl-" : "cmpl-");
  f->created = unix_time();
  f->choices.resize(subs.size() * static_cast<size_t>(f->req.params.n));
  if (ctx.make_reasoning && chat)
    for (auto& c : f->choices) c.reasoning = ctx.make_reasoning();
  if (chat && f->req.tool_choice != ToolChoice::None)
    for (auto& c : f->choices)
      c.tools.emplace(f->req.parallel_tool_calls ? std::numeric_limits<int>::max() : 1);
  auto cancel_all = [svc = ctx.service](detail::Flight& fl) {
    for (auto& s : fl.streams) svc->cancel(s);
  };
  try {
    for (auto& s : subs) f->streams.push_back(ctx.service->submit(std::move(s)));
  } catch (...) {  // stopping between two prompts: drop the ones already queued
    cancel_all(*f);
    throw;
  }
  // A bad schema, regex or grammar is a 400 (the compile's error), before any response.
  if (constraint) {
    try {
      checked([&] {
        pending.wait();
        return 0;
      });
    } catch (...) {
      cancel_all(*f);
      throw;
    }
  }
  f->stream_done.assign(f->streams.size(), false);
  const auto poll = std::chrono::milliseconds(ctx.stream_poll_ms);
  // The client hanging up cancels its engine requests at once (the engine aborts them before
  // its next step), streaming or not.
  auto guard = std::make_shared<DisconnectWatcher::Guard>();
  if (ctx.watcher)
    *guard = ctx.watcher->watch(current_client_socket(), [svc = ctx.service, f] {
      for (auto& s : f->streams) svc->cancel(s);
    });

  if (!f->req.stream) {
    try {
      while (!f->done) {
        for (size_t s = 0; s < f->streams.size(); ++s) {
          if (f->stream_done[s]) continue;
          std::vector<StreamEvent> evs;
          if (f->streams[s]->pop_all(evs, poll)) detail::apply(*f, s, evs);
        }
      }
    } catch (...) {
      cancel_all(*f);
      throw;
    }
    if (f->error) {
      cancel_all(*f);
      throw *f->error;
    }
    res.set_content(dump(detail::final_body(*f, ctx)), "application/json");
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  if (ctx.active_streams) ++*ctx.active_streams;
  res.set_chunked_content_provider(
      "text/event-stream",
      [f, &ctx, poll](size_t, httplib::DataSink& sink) {
        if (f->done) {
          if (f->req.include_usage) {
            json u = {{"id", f->id},
                      {"object", f->req.chat ? "chat.completion.chunk" : "text_completion"},
                      {"created", f->created},
                      {"model", f->model},
                      {"choices", json::array()},
                      {"usage", detail::usage_of(*f)}};
            const std::string s = sse(u);
            if (!sink.write(s.data(), s.size())) return false;
          }
          if (!sink.write(kSseDone, std::strlen(kSseDone))) return false;
          sink.done();
          return true;
        }
        std::string out;
        for (size_t s = 0; s < f->streams.size(); ++s) {
          if (f->stream_done[s]) continue;
          std::vector<StreamEvent> evs;
          if (!f->streams[s]->pop_all(evs, f->streams.size() == 1 ? poll : std::chrono::milliseconds(1))) continue;
          auto ups = detail::apply(*f, s, evs);
          if (f->error) {
            out += sse(f->error->to_json());
            f->done = true;
            break;
          }
          out += detail::stream_chunks(*f, ctx, ups);
        }
        // A failed write means the client is gone: returning false ends the response and the
        // releaser below cancels the engine requests.
        if (!out.empty() && !sink.write(out.data(), out.size())) return false;
        return true;
      },
      [f, svc = ctx.service, active = ctx.active_streams, guard](bool success) {
        guard->reset();
        if (!success || !f->done)
          for (auto& s : f->streams) svc->cancel(s);
        if (active) --*active;
      });
}

}  // namespace pie::server
