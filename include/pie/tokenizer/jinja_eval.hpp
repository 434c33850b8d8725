#pragma once
/// \file jinja_eval.hpp
/// \brief The interpreter of pie's Jinja subset: scopes, loops with the `loop` object,
/// namespace(), operators with Python semantics, and the filters, tests and str/dict methods
/// chat templates use (jinja_functions.hpp). Anything else is an error naming it.
///
/// Include order is the dependency order: the parser (jinja_parse.hpp), the Interpreter class
/// (jinja_interpreter.hpp), the callables (jinja_functions.hpp, which use the class), and last
/// Interpreter::eval, which uses them all.
#include <string>
#include <utility>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/tokenizer/jinja_builtins.hpp"
#include "pie/tokenizer/jinja_functions.hpp"
#include "pie/tokenizer/jinja_interpreter.hpp"
#include "pie/tokenizer/jinja_parse.hpp"

namespace pie::tokenizer::jinja {

inline Value Interpreter::eval(const Expr& e) {
  using K = Expr::Kind;
  auto args_of = [&](const Expr& n, std::size_t from, std::vector<Value>& args,
                     std::vector<std::pair<std::string, Value>>& kwargs) {
    for (std::size_t i = from; i < n.args.size(); ++i) args.push_back(eval(*n.args[i]));
    for (const auto& [k, v] : n.kwargs) kwargs.emplace_back(k, eval(*v));
  };
  switch (e.kind) {
    case K::Literal: return Value::of(e.literal);
    case K::Name: return lookup(e.name);
    case K::Attr: return builtin::item(eval(*e.args[0]), Value::of(e.name));
    case K::Index: return builtin::item(eval(*e.args[0]), eval(*e.args[1]));
    case K::Slice: {
      auto part = [&](int i) { return e.args[i] ? eval(*e.args[i]) : Value(); };
      return builtin::slice(eval(*e.args[0]), part(1), part(2), part(3));
    }
    case K::List: {
      Json a = Json::array();
      for (const auto& x : e.args) {
        Value v = eval(*x);
        a.push_back(v.undefined() ? Json() : v.json());
      }
      return Value::of(std::move(a));
    }
    case K::Dict: {
      Json d = Json::object();
      for (std::size_t i = 0; i + 1 < e.args.size(); i += 2) {
        Value k = eval(*e.args[i]), v = eval(*e.args[i + 1]);
        PIE_CHECK(k.is_string(), "chat template: dict literal keys must be strings");
        d[k.str()] = v.undefined() ? Json() : v.json();
      }
      return Value::of(std::move(d));
    }
    case K::Call: {
      std::vector<Value> args;
      std::vector<std::pair<std::string, Value>> kwargs;
      args_of(e, 1, args, kwargs);
      const Expr& callee = *e.args[0];
      if (callee.kind == K::Attr) return builtin::call_method(eval(*callee.args[0]), callee.name, args, kwargs);
      PIE_CHECK(callee.kind == K::Name, "chat template: only functions and methods can be called");
      return builtin::call_global(callee.name, args, kwargs);
    }
    case K::Filter: {
      std::vector<Value> args;
      std::vector<std::pair<std::string, Value>> kwargs;
      args_of(e, 1, args, kwargs);
      return builtin::call_filter(e.name, eval(*e.args[0]), args, kwargs);
    }
    case K::Test: {
      std::vector<Value> args;
      std::vector<std::pair<std::string, Value>> kwargs;
      args_of(e, 1, args, kwargs);
      return Value::of(builtin::call_test(e.name, eval(*e.args[0]), args) != e.negated);
    }
    case K::Unary: {
      const Value v = eval(*e.args[0]);
      if (e.name == "not") return Value::of(!v.truthy());
      PIE_CHECK(!v.undefined() && v.json().is_number(), "chat template: unary ", e.name, " on a non-number");
      if (e.name == "+") return v;
      return v.json().is_number_integer() ? Value::of(-v.json().get<long long>()) : Value::of(-v.json().get<double>());
    }
    case K::Ternary: {
      if (eval(*e.args[0]).truthy()) return eval(*e.args[1]);
      return e.args[2] ? eval(*e.args[2]) : Value();
    }
    case K::Binary: {
      const std::string& op = e.name;
      if (op == "and") {
        Value a = eval(*e.args[0]);
        return a.truthy() ? eval(*e.args[1]) : a;
      }
      if (op == "or") {
        Value a = eval(*e.args[0]);
        return a.truthy() ? a : eval(*e.args[1]);
      }
      const Value a = eval(*e.args[0]), b = eval(*e.args[1]);
      if (op == "==") return Value::of(builtin::equal(a, b));
      if (op == "!=") return Value::of(!builtin::equal(a, b));
      if (op == "in") return Value::of(builtin::contains(b, a));
      if (op == "not in") return Value::of(!builtin::contains(b, a));
      if (op == "~") return Value::of(to_display(a) + to_display(b));
      if (op == "<" || op == ">" || op == "<=" || op == ">=") {
        PIE_CHECK(!a.undefined() && !b.undefined(), "chat template: comparison with an undefined value");
        const Json &x = a.json(), &y = b.json();
        if (op == "<") return Value::of(builtin::less(x, y));
        if (op == ">") return Value::of(builtin::less(y, x));
        if (op == "<=") return Value::of(!builtin::less(y, x));
        return Value::of(!builtin::less(x, y));
      }
      return builtin::arith(op, a, b);
    }
  }
  PIE_FAIL("chat template: unknown expression");
}

}  // namespace pie::tokenizer::jinja
