#pragma once
/// \file jinja_functions.hpp
/// \brief The named callables of pie's Jinja subset: filters, tests, str/dict methods and
/// global functions. An unknown name is an error that names it.
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "pie/tokenizer/jinja_builtins.hpp"
#include "pie/tokenizer/jinja_interpreter.hpp"

namespace pie::tokenizer::jinja::builtin {

using KwArgs = std::vector<std::pair<std::string, Value>>;

// Declared first: filters call methods (|items) and Interpreter::eval calls all four.
Value call_filter(const std::string& name, const Value& x, const std::vector<Value>& args, const KwArgs& kwargs);
bool call_test(const std::string& name, const Value& x, const std::vector<Value>& args);
Value call_method(const Value& obj, const std::string& name, const std::vector<Value>& args, const KwArgs& kwargs);
Value call_global(const std::string& name, const std::vector<Value>& args, const KwArgs& kwargs);

inline const Value* kwarg(const KwArgs& kw, const char* name) {
  for (const auto& [k, v] : kw)
    if (k == name) return &v;
  return nullptr;
}
/// Positional argument i, else keyword `name`, else nullptr.
inline const Value* arg(const std::vector<Value>& args, const KwArgs& kw, std::size_t i, const char* name) {
  if (i < args.size()) return &args[i];
  return kwarg(kw, name);
}
inline const std::string& need_str(const Value& v, const char* what) {
  PIE_CHECK(v.is_string(), "chat template: ", what, " expects a string, got ",
            v.undefined() ? std::string("undefined") : v.json().dump());
  return v.str();
}

inline bool call_test(const std::string& name, const Value& x, const std::vector<Value>& args) {
  auto j = [&]() -> const Json& { return x.json(); };
  if (name == "defined") return !x.undefined();
  if (name == "undefined") return x.undefined();
  if (x.undefined()) return false;
  if (name == "none") return j().is_null();
  if (name == "string") return j().is_string();
  if (name == "number") return is_number(j());
  if (name == "integer") return j().is_number_integer();
  if (name == "float") return j().is_number_float();
  if (name == "boolean") return j().is_boolean();
  if (name == "true") return j().is_boolean() && j().get<bool>();
  if (name == "false") return j().is_boolean() && !j().get<bool>();
  if (name == "mapping") return j().is_object() || x.is_namespace();
  if (name == "sequence" || name == "iterable") return j().is_array() || j().is_string() || j().is_object();
  if (name == "lower" || name == "upper") {
    if (!j().is_string()) return false;
    const std::string& s = j().get_ref<const std::string&>();
    return std::none_of(s.begin(), s.end(), [&](char c) { return name == "lower" ? std::isupper(c) : std::islower(c); });
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    PIE_CHECK(j().is_number_integer(), "chat template: test '", name, "' needs an integer");
    const long long v = j().get<long long>();
    if (name == "odd") return v % 2 != 0;
    if (name == "even") return v % 2 == 0;
    PIE_CHECK(!args.empty(), "chat template: divisibleby needs an argument");
    return v % args[0].json().get<long long>() == 0;
  }
  PIE_CHECK(!args.empty() || name == "", "chat template: unsupported Jinja test '", name, "'");
  const Value& y = args[0];
  if (name == "eq" || name == "equalto" || name == "==" || name == "sameas") return equal(x, y);
  if (name == "ne" || name == "!=") return !equal(x, y);
  if (name == "lt" || name == "lessthan") return less(j(), y.json());
  if (name == "gt" || name == "greaterthan") return less(y.json(), j());
  if (name == "le") return !less(y.json(), j());
  if (name == "ge") return !less(j(), y.json());
  if (name == "in") return contains(y, x);
  PIE_FAIL("chat template: unsupported Jinja test '", name, "'");
}

inline Value call_filter(const std::string& name, const Value& x, const std::vector<Value>& args,
                         const KwArgs& kw) {
  if (name == "default" || name == "d") {
    const Value* dv = arg(args, kw, 0, "default_value");
    const Value* boolean = arg(args, kw, 1, "boolean");
    const bool use = x.undefined() || (boolean && boolean->truthy() && !x.truthy());
    return use ? (dv ? *dv : Value::of("")) : x;
  }
  if (name == "string") return Value::of(to_display(x));
  if (name == "safe") return x;
  PIE_CHECK(!x.undefined(), "chat template: filter '", name, "' applied to an undefined value");
  const Json& j = x.json();
  if (name == "length" || name == "count") {
    if (j.is_string()) return Value::of(code_points(j.get_ref<const std::string&>()).size());
    PIE_CHECK(j.is_array() || j.is_object(), "chat template: length of ", j.dump());
    return Value::of(j.size());
  }
  if (name == "tojson") {
    const Value* ind = arg(args, kw, 0, "indent");
    std::string out;
    to_json(out, j, ind && !ind->is_none() ? ind->json().get<int>() : -1);
    return Value::of(out);
  }
  if (name == "trim") return Value::of(strip(need_str(x, "trim"), args.empty() ? nullptr : &args[0].str(), true, true));
  if (name == "upper" || name == "lower") {
    std::string s = need_str(x, name.c_str());
    for (char& c : s) c = name == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c));
    return Value::of(s);
  }
  if (name == "capitalize") {
    std::string s = need_str(x, "capitalize");
    for (char& c : s) c = std::tolower(static_cast<unsigned char>(c));
    if (!s.empty()) s[0] = std::toupper(static_cast<unsigned char>(s[0]));
    return Value::of(s);
  }
  if (name == "replace") {
    std::string s = need_str(x, "replace");
    const std::string& from = need_str(args.at(0), "replace"), &to = need_str(args.at(1), "replace");
    std::string r;
    std::size_t pos = 0;
    if (from.empty()) return Value::of(s);
    for (std::size_t f; (f = s.find(from, pos)) != std::string::npos; pos = f + from.size()) r += s.substr(pos, f - pos) + to;
    return Value::of(r + s.substr(pos));
  }
  if (name == "first" || name == "last") {
    const auto items = Interpreter::iterate(x);
    if (items.empty()) return {};
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    Json a = Json::array();
    for (const auto& v : Interpreter::iterate(x)) a.push_back(v.json());
    return Value::of(std::move(a));
  }
  if (name == "reverse") {
    if (j.is_string()) return slice(x, Value(), Value(), Value::of(-1));
    Json a = Json::array();
    for (const auto& v : Interpreter::iterate(x)) a.insert(a.begin(), v.json());
    return Value::of(std::move(a));
  }
  if (name == "items") return call_method(x, "items", {}, {});
  if (name == "join") {
    const Value* sep = arg(args, kw, 0, "d");
    const Value* attr = kwarg(kw, "attribute");
    std::string out;
    bool first = true;
    for (const auto& v : Interpreter::iterate(x)) {
      if (!first && sep) out += need_str(*sep, "join");
      first = false;
      out += to_display(attr ? item(v, *attr) : v);
    }
    return Value::of(out);
  }
  // Jinja's int/float filters: a value that does not convert gives 0 (their default), never an
  // exception (std::stoll threw on "abc" and past 2^63).
  if (name == "int") {
    if (j.is_number_float()) {
      const double d = j.get<double>();
      return Value::of(std::isfinite(d) && std::fabs(d) < 9.2e18 ? static_cast<long long>(d) : 0LL);
    }
    if (j.is_number()) return Value::of(j.get<long long>());
    if (!j.is_string()) return Value::of(0LL);
    const std::string str = j.get<std::string>();
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(str.c_str(), &end, 10);
    return Value::of(errno == ERANGE || end == str.c_str() ? 0LL : v);
  }
  if (name == "float") {
    if (j.is_number()) return Value::of(j.get<double>());
    if (!j.is_string()) return Value::of(0.0);
    const std::string str = j.get<std::string>();
    char* end = nullptr;
    const double v = std::strtod(str.c_str(), &end);
    return Value::of(end == str.c_str() ? 0.0 : v);
  }
  if (name == "abs") return j.is_number_integer() ? Value::of(std::llabs(j.get<long long>())) : Value::of(std::fabs(j.get<double>()));
  if (name == "unique") {
    Json a = Json::array();
    for (const auto& v : Interpreter::iterate(x))
      if (std::find(a.begin(), a.end(), v.json()) == a.end()) a.push_back(v.json());
    return Value::of(std::move(a));
  }
  if (name == "map") {
    const Value* attr = kwarg(kw, "attribute");
    PIE_CHECK(attr || !args.empty(), "chat template: map needs attribute= or a filter name");
    Json a = Json::array();
    for (const auto& v : Interpreter::iterate(x)) {
      Value r = attr ? item(v, *attr) : call_filter(need_str(args[0], "map"), v, {args.begin() + 1, args.end()}, {});
      if (r.undefined() && attr && kwarg(kw, "default")) r = *kwarg(kw, "default");
      a.push_back(r.undefined() ? Json() : r.json());
    }
    return Value::of(std::move(a));
  }
  if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
    const bool attr_mode = name.size() > 6;
    const bool want = name[0] == 's';
    std::size_t k = 0;
    const Value* attr = attr_mode ? &args.at(k++) : nullptr;
    const std::string test = k < args.size() ? need_str(args[k++], name.c_str()) : std::string();
    const std::vector<Value> targs(args.begin() + std::min(k, args.size()), args.end());
    Json a = Json::array();
    for (const auto& v : Interpreter::iterate(x)) {
      const Value subject = attr ? item(v, *attr) : v;
      const bool ok = test.empty() ? subject.truthy() : call_test(test, subject, targs);
      if (ok == want) a.push_back(v.json());
    }
    return Value::of(std::move(a));
  }
  if (name == "indent") {
    const std::string& s = need_str(x, "indent");
    const Value* w = arg(args, kw, 0, "width");
    const Value* first = arg(args, kw, 1, "first");
    const std::string pad = w && w->is_string() ? w->str() : std::string(w ? w->json().get<int>() : 4, ' ');
    std::string out = first && first->truthy() ? pad : "";
    for (char c : s) {
      out.push_back(c);
      if (c == '\n') out += pad;
    }
    // Jinja does not indent empty lines: undo padding after a newline followed by newline/end.
    std::string fixed;
    for (std::size_t i = 0; i < out.size(); ++i) {
      fixed.push_back(out[i]);
      if (out[i] == '\n' && out.compare(i + 1, pad.size(), pad) == 0 &&
          (i + 1 + pad.size() == out.size() || out[i + 1 + pad.size()] == '\n'))
        i += pad.size();
    }
    return Value::of(fixed);
  }
  PIE_FAIL("chat template: unsupported Jinja filter '", name, "'");
}

inline Value call_method(const Value& obj, const std::string& name, const std::vector<Value>& args, const KwArgs& kw) {
  PIE_CHECK(!obj.undefined(), "chat template: method '", name, "' called on an undefined value");
  const Json& j = obj.json();
  if (j.is_string()) {
    const std::string& s = j.get_ref<const std::string&>();
    auto opt_str = [&](std::size_t i, const char* k) -> const std::string* {
      const Value* v = arg(args, kw, i, k);
      return v && !v->is_none() ? &need_str(*v, name.c_str()) : nullptr;
    };
    if (name == "strip") return Value::of(strip(s, opt_str(0, "chars"), true, true));
    if (name == "lstrip") return Value::of(strip(s, opt_str(0, "chars"), true, false));
    if (name == "rstrip") return Value::of(strip(s, opt_str(0, "chars"), false, true));
    if (name == "split") {
      const Value* m = arg(args, kw, 1, "maxsplit");
      return Value::of(split(s, opt_str(0, "sep"), m ? m->json().get<long>() : -1));
    }
    if (name == "startswith" || name == "endswith") {
      const Value& p = args.at(0);
      std::vector<std::string> cands;
      if (p.json().is_array()) for (const auto& x : p.json()) cands.push_back(x.get<std::string>());
      else cands.push_back(need_str(p, name.c_str()));
      for (const auto& c : cands) {
        if (c.size() > s.size()) continue;
        if (name[0] == 's' ? s.compare(0, c.size(), c) == 0 : s.compare(s.size() - c.size(), c.size(), c) == 0)
          return Value::of(true);
      }
      return Value::of(false);
    }
    if (name == "upper" || name == "lower" || name == "capitalize") return call_filter(name, obj, {}, {});
    if (name == "replace") return call_filter("replace", obj, args, {});
    if (name == "find") {
      const auto f = s.find(need_str(args.at(0), "find"));
      return Value::of(f == std::string::npos ? -1LL : static_cast<long long>(code_points(s.substr(0, f)).size()));
    }
    if (name == "count") {
      const std::string& sub = need_str(args.at(0), "count");
      long long n = 0;
      if (sub.empty()) return Value::of(static_cast<long long>(code_points(s).size()) + 1);
      for (std::size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      return Value::of(n);
    }
    if (name == "join") {
      std::string out;
      bool first = true;
      for (const auto& v : Interpreter::iterate(args.at(0))) {
        if (!first) out += s;
        first = false;
        out += need_str(v, "join");
      }
      return Value::of(out);
    }
  }
  if (j.is_object()) {
    if (name == "items") {
      Json a = Json::array();
      for (auto it = j.begin(); it != j.end(); ++it) a.push_back(Json::array({it.key(), it.value()}));
      return Value::of(std::move(a));
    }
    if (name == "keys" || name == "values") {
      Json a = Json::array();
      for (auto it = j.begin(); it != j.end(); ++it) a.push_back(name == "keys" ? Json(it.key()) : it.value());
      return Value::of(std::move(a));
    }
    if (name == "get") {
      Value v = item(obj, args.at(0));
      if (!v.undefined()) return v;
      return args.size() > 1 ? args[1] : Value::of(nullptr);
    }
  }
  PIE_FAIL("chat template: unsupported method '", name, "' on ", j.is_string() ? "a string" : j.dump());
}

inline Value call_global(const std::string& name, const std::vector<Value>& args, const KwArgs& kw) {
  if (name == "namespace" || name == "dict") {
    Json attrs = Json::object();
    if (!args.empty() && args[0].json().is_object()) attrs = args[0].json();
    for (const auto& [k, v] : kw) attrs[k] = v.undefined() ? Json() : v.json();
    return name == "dict" ? Value::of(std::move(attrs)) : Value::make_namespace(std::move(attrs));
  }
  if (name == "range") {
    PIE_CHECK(!args.empty() && args.size() <= 3, "chat template: range takes 1 to 3 arguments");
    long long a = 0, b, s = 1;
    if (args.size() == 1) b = args[0].json().get<long long>();
    else a = args[0].json().get<long long>(), b = args[1].json().get<long long>();
    if (args.size() == 3) s = args[2].json().get<long long>();
    PIE_CHECK(s != 0, "chat template: range step cannot be zero");
    Json r = Json::array();
    for (long long i = a; s > 0 ? i < b : i > b; i += s) r.push_back(i);
    return Value::of(std::move(r));
  }
  if (name == "raise_exception") {
    PIE_FAIL("chat template raised an exception: ", args.empty() ? std::string() : to_display(args[0]));
  }
  if (name == "strftime_now") {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[256];
    const std::size_t n = std::strftime(buf, sizeof buf, need_str(args.at(0), "strftime_now").c_str(), &tm);
    return Value::of(std::string(buf, n));
  }
  PIE_FAIL("chat template: unsupported function '", name, "'");
}

}  // namespace pie::tokenizer::jinja::builtin
