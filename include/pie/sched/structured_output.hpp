#pragma once
/// \file structured_output.hpp
/// \brief StructuredOutput: what a request's output must match — a JSON schema, any JSON, a
/// regex, one of a list of strings, an EBNF grammar, or a hermes tool call. A plain
/// description; pie/structured/ compiles it (with XGrammar) into the LogitsProcessor that
/// enforces it. vLLM's StructuredOutputsParams and OpenAI's response_format both map onto it.
#include <string>
#include <vector>

#include "pie/core/error.hpp"

namespace pie::sched {

/// \brief The constraint on a request's generated text (see file comment).
struct StructuredOutput {
  /// What `text` holds.
  enum class Kind {
    JsonSchema,  ///< text: a JSON schema (a JSON document)
    JsonObject,  ///< any JSON value (response_format json_object); text unused
    Regex,       ///< text: a regular expression the whole output must match
    Choice,      ///< choices: the output is exactly one of them
    Grammar,     ///< text: an EBNF grammar (XGrammar's dialect, GBNF-like) with rule `root`
    ToolCalls,   ///< text: a JSON array of OpenAI tools; hermes `<tool_call>` blocks of them
  };
  Kind kind = Kind::JsonSchema;
  std::string text;
  std::vector<std::string> choices;
  /// JsonSchema: OpenAI's `strict` (no properties beyond the schema's; XGrammar's strict mode).
  bool strict = true;
  /// ToolCalls: only this function (tool_choice naming one); empty → any of the tools.
  std::string tool_name;
  /// ToolCalls: at most one call (parallel_tool_calls false or a named function).
  bool single_call = false;
  /// With a reasoning model: the constraint starts after the reasoning block `<think>...</think>`
  /// when the output opens one (the server sets this with --reasoning-parser).
  bool after_reasoning = false;

  /// A constraint of this kind with every other field at its default.
  static StructuredOutput of(Kind k) {
    StructuredOutput s;
    s.kind = k;
    return s;
  }
  /// A cache key: every field that changes the compiled grammar.
  std::string key() const {
    std::string k = std::to_string(static_cast<int>(kind)) + (strict ? "s" : "l") + (single_call ? "1" : "n") + "|" +
                    tool_name + "|" + std::to_string(text.size()) + ":" + text;
    for (const auto& c : choices) k += "|" + std::to_string(c.size()) + ":" + c;
    return k;
  }

  /// Throws pie::Error when the description is empty where it must not be (compiling checks
  /// the rest and names the problem).
  void validate() const {
    switch (kind) {
      case Kind::JsonSchema:
      case Kind::Regex:
      case Kind::Grammar:
      case Kind::ToolCalls:
        PIE_CHECK(!text.empty(), "structured_outputs: the ", kind_name(), " is empty");
        break;
      case Kind::Choice:
        PIE_CHECK(!choices.empty(), "structured_outputs: choice needs at least one string");
        break;
      case Kind::JsonObject:
        break;
    }
  }
  const char* kind_name() const {
    switch (kind) {
      case Kind::JsonSchema: return "JSON schema";
      case Kind::JsonObject: return "JSON object";
      case Kind::Regex: return "regex";
      case Kind::Choice: return "choice";
      case Kind::Grammar: return "grammar";
      case Kind::ToolCalls: return "tool call grammar";
    }
    return "?";
  }
};

}  // namespace pie::sched
