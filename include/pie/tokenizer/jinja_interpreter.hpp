#pragma once
/// \file jinja_interpreter.hpp
/// \brief The Interpreter class of pie's Jinja subset: scopes, statements, loops with the
/// `loop` object. Its expression evaluator, Interpreter::eval, is defined in jinja_eval.hpp
/// after the callables it dispatches to (jinja_functions.hpp), which themselves use
/// Interpreter::iterate: declaring the class here is what keeps that include graph acyclic.
#include <ctime>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "pie/tokenizer/jinja_ast.hpp"
#include "pie/tokenizer/jinja_value.hpp"
#include "pie/tokenizer/utf8.hpp"

namespace pie::tokenizer::jinja {

/// \brief Renders a parsed template against variables.
class Interpreter {
 public:
  explicit Interpreter(std::unordered_map<std::string, Value> globals) { scopes_.push_back(std::move(globals)); }

  std::string render(const Body& body) {
    std::string out;
    run(body, out);
    return out;
  }

 private:
  enum class Flow { Normal, Break, Continue };

  Flow run(const Body& body, std::string& out) {
    for (const auto& n : body) {
      const Flow f = run(*n, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow run(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::Kind::Text: out += n.text; return Flow::Normal;
      case Node::Kind::Output: out += to_display(eval(*n.exprs[0])); return Flow::Normal;
      case Node::Kind::Block: return run(n.bodies[0], out);
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
      case Node::Kind::If:
        for (std::size_t i = 0; i < n.exprs.size(); ++i)
          if (eval(*n.exprs[i]).truthy()) return run(n.bodies[i], out);
        if (n.bodies.size() > n.exprs.size()) return run(n.bodies.back(), out);
        return Flow::Normal;
      case Node::Kind::Set: {
        Value v = eval(*n.exprs[0]);
        if (n.targets.size() == 1) {
          scopes_.back()[n.targets[0]] = std::move(v);
        } else {
          Value ns = lookup(n.targets[0]);
          PIE_CHECK(ns.is_namespace(), "chat template: cannot set attribute '", n.targets[1], "' of '",
                    n.targets[0], "' (only namespace() objects have assignable attributes)");
          ns.namespace_attrs()[n.targets[1]] = v.undefined() ? Json() : v.json();
        }
        return Flow::Normal;
      }
      case Node::Kind::For: return run_for(n, out);
    }
    return Flow::Normal;
  }

  Flow run_for(const Node& n, std::string& out) {
    const Value seq = eval(*n.exprs[0]);
    std::vector<Value> items = iterate(seq);
    if (n.exprs.size() > 1) {  // `for x in xs if cond`: filter first, loop indices count survivors
      std::vector<Value> kept;
      for (auto& it : items) {
        scopes_.emplace_back();
        bind(n.targets, it);
        if (eval(*n.exprs[1]).truthy()) kept.push_back(it);
        scopes_.pop_back();
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      if (n.bodies.size() > 1) return run(n.bodies[1], out);
      return Flow::Normal;
    }
    const std::size_t len = items.size();
    for (std::size_t i = 0; i < len; ++i) {
      scopes_.emplace_back();
      bind(n.targets, items[i]);
      Json loop = {{"index", i + 1}, {"index0", i}, {"revindex", len - i}, {"revindex0", len - i - 1},
                   {"first", i == 0}, {"last", i + 1 == len}, {"length", len}};
      loop["previtem"] = i > 0 && !items[i - 1].undefined() ? items[i - 1].json() : Json();
      loop["nextitem"] = i + 1 < len && !items[i + 1].undefined() ? items[i + 1].json() : Json();
      scopes_.back()["loop"] = Value::of(std::move(loop));
      const Flow f = run(n.bodies[0], out);
      scopes_.pop_back();
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  void bind(const std::vector<std::string>& targets, const Value& item) {
    if (targets.size() == 1) {
      scopes_.back()[targets[0]] = item;
      return;
    }
    const Json& j = item.json();
    PIE_CHECK(j.is_array() && j.size() == targets.size(), "chat template: cannot unpack ", j.dump(), " into ",
              targets.size(), " loop variables");
    for (std::size_t k = 0; k < targets.size(); ++k) scopes_.back()[targets[k]] = item.child(j[k]);
  }

 public:
  /// The elements a for loop visits: list items, dict keys, string characters.
  static std::vector<Value> iterate(const Value& seq) {
    std::vector<Value> items;
    PIE_CHECK(!seq.undefined(), "chat template: cannot iterate over an undefined value");
    const Json& j = seq.json();
    if (j.is_array()) {
      for (const auto& x : j) items.push_back(seq.child(x));
    } else if (j.is_object()) {
      for (auto it = j.begin(); it != j.end(); ++it) items.push_back(Value::of(it.key()));
    } else if (j.is_string()) {
      const std::string& s = j.get_ref<const std::string&>();
      for (std::size_t i = 0; i < s.size();) {
        const std::size_t n = std::max<std::size_t>(1, utf8::sequence_length(s, i));
        items.push_back(Value::of(s.substr(i, n)));
        i += n;
      }
    } else if (!j.is_null()) {
      PIE_FAIL("chat template: cannot iterate over ", j.dump());
    } else {
      PIE_FAIL("chat template: cannot iterate over None");
    }
    return items;
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      const auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return {};
  }

  Value eval(const Expr& e);

 private:
  std::vector<std::unordered_map<std::string, Value>> scopes_;
};

}  // namespace pie::tokenizer::jinja
