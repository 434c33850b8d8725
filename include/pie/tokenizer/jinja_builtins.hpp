#pragma once
/// \file jinja_builtins.hpp
/// \brief Value helpers of the interpreter (jinja_eval.hpp) and of its named callables
/// (jinja_functions.hpp): operators, comparison, membership, attribute/index/slice access,
/// Python's str.strip/split. Semantics follow Python and Jinja2. Values only: no interpreter.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/tokenizer/jinja_value.hpp"
#include "pie/tokenizer/utf8.hpp"

namespace pie::tokenizer::jinja {

namespace builtin {

inline std::vector<char32_t> code_points(const std::string& s) {
  std::vector<char32_t> cps;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8::sequence_length(s, i);
    cps.push_back(n ? utf8::decode_at(s, i, n) : 0xFFFD);
    i += n ? n : 1;
  }
  return cps;
}
inline std::string from_code_points(const std::vector<char32_t>& cps, std::size_t a, std::size_t b) {
  std::string s;
  for (std::size_t i = a; i < b; ++i) utf8::append(s, cps[i]);
  return s;
}
inline bool py_space(char32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

/// Python str.strip/lstrip/rstrip; `chars` null means whitespace.
inline std::string strip(const std::string& s, const std::string* chars, bool left, bool right) {
  const auto cps = code_points(s);
  const auto set = chars ? code_points(*chars) : std::vector<char32_t>{};
  auto drop = [&](char32_t c) { return chars ? std::find(set.begin(), set.end(), c) != set.end() : py_space(c); };
  std::size_t a = 0, b = cps.size();
  if (left) while (a < b && drop(cps[a])) ++a;
  if (right) while (b > a && drop(cps[b - 1])) --b;
  return from_code_points(cps, a, b);
}

/// Python str.split(sep=None / sep, maxsplit).
inline Json split(const std::string& s, const std::string* sep, long maxsplit) {
  Json out = Json::array();
  if (sep) {
    PIE_CHECK(!sep->empty(), "chat template: split() with an empty separator");
    std::size_t pos = 0;
    for (long n = 0; maxsplit < 0 || n < maxsplit; ++n) {
      const std::size_t f = s.find(*sep, pos);
      if (f == std::string::npos) break;
      out.push_back(s.substr(pos, f - pos));
      pos = f + sep->size();
    }
    out.push_back(s.substr(pos));
    return out;
  }
  const auto cps = code_points(s);
  std::size_t i = 0;
  long n = 0;
  while (i < cps.size()) {
    while (i < cps.size() && py_space(cps[i])) ++i;
    if (i == cps.size()) break;
    if (maxsplit >= 0 && n == maxsplit) {
      std::size_t e = cps.size();
      while (e > i && py_space(cps[e - 1])) --e;
      out.push_back(from_code_points(cps, i, e));
      break;
    }
    std::size_t j = i;
    while (j < cps.size() && !py_space(cps[j])) ++j;
    out.push_back(from_code_points(cps, i, j));
    ++n;
    i = j;
  }
  return out;
}

inline bool is_number(const Json& j) { return j.is_number() && !j.is_boolean(); }
inline double num(const Json& j) { return j.get<double>(); }
inline bool both_int(const Json& a, const Json& b) {
  return (a.is_number_integer() || a.is_boolean()) && (b.is_number_integer() || b.is_boolean());
}

/// Python ==: numbers compare by value across int/float/bool, everything else structurally.
inline bool equal(const Value& a, const Value& b) {
  if (a.undefined() || b.undefined()) return a.undefined() && b.undefined();
  const Json &x = a.json(), &y = b.json();
  if ((x.is_number() || x.is_boolean()) && (y.is_number() || y.is_boolean())) return x.get<double>() == y.get<double>();
  return x == y;
}

inline bool less(const Json& a, const Json& b) {
  if ((a.is_number() || a.is_boolean()) && (b.is_number() || b.is_boolean())) return a.get<double>() < b.get<double>();
  PIE_CHECK(a.is_string() && b.is_string(), "chat template: cannot order ", a.dump(), " and ", b.dump());
  return a.get_ref<const std::string&>() < b.get_ref<const std::string&>();
}

inline bool contains(const Value& hay, const Value& needle) {
  PIE_CHECK(!hay.undefined(), "chat template: 'in' on an undefined value");
  const Json& h = hay.json();
  if (h.is_string()) {
    PIE_CHECK(needle.is_string(), "chat template: 'in <string>' requires a string on the left");
    return h.get_ref<const std::string&>().find(needle.str()) != std::string::npos;
  }
  if (h.is_array()) {
    for (const auto& x : h)
      if (equal(Value::view(x), needle)) return true;
    return false;
  }
  if (h.is_object()) return needle.is_string() && h.contains(needle.str());
  PIE_FAIL("chat template: 'in' on ", h.dump());
}

/// Python index normalisation; returns false when out of range.
inline bool norm_index(long long& i, std::size_t n) {
  if (i < 0) i += static_cast<long long>(n);
  return i >= 0 && i < static_cast<long long>(n);
}

/// Jinja attribute / item lookup: dict key, list index, namespace attribute; undefined if absent.
inline Value item(const Value& obj, const Value& key) {
  if (obj.undefined()) return {};
  if (obj.is_namespace()) {
    const Json& a = obj.namespace_attrs();
    if (key.is_string() && a.contains(key.str())) return Value::of(a.at(key.str()));
    return {};
  }
  const Json& j = obj.json();
  if (j.is_object()) {
    if (!key.is_string()) return {};
    const auto it = j.find(key.str());
    return it == j.end() ? Value() : obj.child(*it);
  }
  if ((j.is_array() || j.is_string()) && !key.undefined() && key.json().is_number_integer()) {
    long long i = key.json().get<long long>();
    if (j.is_array()) return norm_index(i, j.size()) ? obj.child(j[i]) : Value();
    const auto cps = code_points(j.get_ref<const std::string&>());
    return norm_index(i, cps.size()) ? Value::of(from_code_points(cps, i, i + 1)) : Value();
  }
  return {};
}

/// Python slicing of lists and strings.
inline Value slice(const Value& obj, const Value& a, const Value& b, const Value& c) {
  const Json& j = obj.json();
  const long long step = c.undefined() || c.is_none() ? 1 : c.json().get<long long>();
  PIE_CHECK(step != 0, "chat template: slice step cannot be zero");
  std::vector<char32_t> cps;
  if (j.is_string()) cps = code_points(j.get_ref<const std::string&>());
  else PIE_CHECK(j.is_array(), "chat template: cannot slice ", j.dump());
  const long long n = static_cast<long long>(j.is_string() ? cps.size() : j.size());
  auto bound = [&](const Value& v, long long dflt) {
    if (v.undefined() || v.is_none()) return dflt;
    long long x = v.json().get<long long>();
    if (x < 0) x += n;
    return step > 0 ? std::clamp(x, 0LL, n) : std::clamp(x, -1LL, n - 1);
  };
  const long long start = bound(a, step > 0 ? 0 : n - 1), stop = bound(b, step > 0 ? n : -1);
  Json out = j.is_string() ? Json("") : Json::array();
  std::string s;
  for (long long i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (j.is_string()) utf8::append(s, cps[i]);
    else out.push_back(j[i]);
  }
  return j.is_string() ? Value::of(s) : Value::of(std::move(out));
}

inline Value arith(const std::string& op, const Value& a, const Value& b) {
  PIE_CHECK(!a.undefined() && !b.undefined(), "chat template: undefined value in '", op, "'");
  const Json &x = a.json(), &y = b.json();
  if (op == "+") {
    if (x.is_string() && y.is_string()) return Value::of(x.get<std::string>() + y.get<std::string>());
    if (x.is_array() && y.is_array()) {
      Json r = x;
      for (const auto& e : y) r.push_back(e);
      return Value::of(std::move(r));
    }
  }
  if (op == "*" && (x.is_string() || y.is_string()) && (x.is_number_integer() || y.is_number_integer())) {
    const Json& str = x.is_string() ? x : y;
    const long long times = (x.is_string() ? y : x).get<long long>();
    std::string r;
    for (long long i = 0; i < times; ++i) r += str.get_ref<const std::string&>();
    return Value::of(r);
  }
  PIE_CHECK((x.is_number() || x.is_boolean()) && (y.is_number() || y.is_boolean()),
            "chat template: unsupported operands for '", op, "': ", x.dump(), " and ", y.dump());
  if (both_int(x, y) && op != "/" && op != "**") {
    const long long p = x.get<long long>(), q = y.get<long long>();
    if (op == "+") return Value::of(p + q);
    if (op == "-") return Value::of(p - q);
    if (op == "*") return Value::of(p * q);
    PIE_CHECK(q != 0, "chat template: integer division or modulo by zero");
    long long d = p / q, m = p % q;
    if (m != 0 && ((m < 0) != (q < 0))) { d -= 1; m += q; }  // Python floors
    return Value::of(op == "//" ? d : m);
  }
  const double p = x.get<double>(), q = y.get<double>();
  if (op == "+") return Value::of(p + q);
  if (op == "-") return Value::of(p - q);
  if (op == "*") return Value::of(p * q);
  if (op == "**") {
    if (both_int(x, y) && q >= 0) return Value::of(static_cast<long long>(std::llround(std::pow(p, q))));
    return Value::of(std::pow(p, q));
  }
  PIE_CHECK(q != 0, "chat template: division by zero");
  if (op == "/") return Value::of(p / q);
  if (op == "//") return Value::of(std::floor(p / q));
  return Value::of(p - q * std::floor(p / q));
}

}  // namespace builtin

}  // namespace pie::tokenizer::jinja
