#pragma once
/// \file jinja_value.hpp
/// \brief Values of pie's Jinja subset and their Python-compatible printing: str() of numbers,
/// None and containers follow Python, and tojson follows `json.dumps(ensure_ascii=False)` —
/// transformers' tojson — so rendered templates match apply_chat_template byte for byte.
#include <charconv>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "pie/core/error.hpp"

namespace pie::tokenizer::jinja {

using Json = nlohmann::ordered_json;

/// \brief A template value: undefined, a (shared, immutable) JSON value, or a namespace()
/// object whose attributes `set ns.x = ...` may change.
class Value {
 public:
  Value() = default;  // undefined
  /// Owning: wraps a new JSON value.
  static Value of(Json j) {
    Value v;
    v.holder_ = std::make_shared<Json>(std::move(j));
    v.p_ = v.holder_.get();
    return v;
  }
  /// Non-owning view of JSON that outlives the render (the caller's messages).
  static Value view(const Json& j) {
    Value v;
    v.p_ = &j;
    return v;
  }
  static Value make_namespace(Json attrs) {
    Value v;
    v.ns_ = std::make_shared<Json>(std::move(attrs));
    return v;
  }

  bool undefined() const { return !p_ && !ns_; }
  bool is_namespace() const { return static_cast<bool>(ns_); }
  /// The JSON value; a namespace reads as its attribute object.
  const Json& json() const {
    PIE_CHECK(!undefined(), "chat template: use of an undefined value");
    return ns_ ? *ns_ : *p_;
  }
  Json& namespace_attrs() const { return *ns_; }

  /// Child value sharing this value's storage (no copy); undefined when missing.
  Value child(const Json& j) const {
    Value v;
    v.holder_ = holder_;
    v.p_ = &j;
    return v;
  }

  bool is_none() const { return !undefined() && json().is_null(); }
  bool is_string() const { return !undefined() && json().is_string(); }
  const std::string& str() const { return json().get_ref<const std::string&>(); }

  bool truthy() const {
    if (undefined()) return false;
    if (ns_) return true;
    const Json& j = *p_;
    switch (j.type()) {
      case Json::value_t::null: return false;
      case Json::value_t::boolean: return j.get<bool>();
      case Json::value_t::number_integer:
      case Json::value_t::number_unsigned: return j.get<std::int64_t>() != 0;
      case Json::value_t::number_float: return j.get<double>() != 0.0;
      case Json::value_t::string: return !j.get_ref<const std::string&>().empty();
      case Json::value_t::array:
      case Json::value_t::object: return !j.empty();
      default: return false;
    }
  }

 private:
  std::shared_ptr<const Json> holder_;
  const Json* p_ = nullptr;
  std::shared_ptr<Json> ns_;
};

/// Python's repr(float): shortest round-trip digits, exponent form below 1e-4 or from 1e16.
inline std::string python_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // d.ddde[+-]XX
  const auto epos = sci.find('e');
  const int exp = std::stoi(sci.substr(epos + 1));
  std::string mant = sci.substr(0, epos);
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits.push_back(c);
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += e;
  } else if (exp < 0) {
    out = "0." + std::string(-exp - 1, '0') + digits;
  } else {
    if (digits.size() <= static_cast<std::size_t>(exp) + 1) {
      out = digits + std::string(exp + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    }
  }
  return neg ? "-" + out : out;
}

/// json.dumps string escaping with ensure_ascii=False.
inline void json_string(std::string& out, const std::string& s) {
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          out += b;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
}

/// json.dumps(j, ensure_ascii=False, indent=indent, sort_keys=False): separators are
/// (", ", ": ") without indent and ("," newline, ": ") with it, as in Python.
inline void to_json(std::string& out, const Json& j, int indent = -1, int depth = 0) {
  auto newline = [&](int d) {
    out.push_back('\n');
    out.append(static_cast<std::size_t>(indent * d), ' ');
  };
  switch (j.type()) {
    case Json::value_t::null: out += "null"; break;
    case Json::value_t::boolean: out += j.get<bool>() ? "true" : "false"; break;
    case Json::value_t::number_integer: out += std::to_string(j.get<std::int64_t>()); break;
    case Json::value_t::number_unsigned: out += std::to_string(j.get<std::uint64_t>()); break;
    case Json::value_t::number_float: {
      const double d = j.get<double>();
      out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d < 0 ? "-Infinity" : "Infinity") : python_float(d);
      break;
    }
    case Json::value_t::string: json_string(out, j.get_ref<const std::string&>()); break;
    case Json::value_t::array:
    case Json::value_t::object: {
      const bool obj = j.is_object();
      out.push_back(obj ? '{' : '[');
      if (j.empty()) {
        out.push_back(obj ? '}' : ']');
        break;
      }
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) out += indent >= 0 ? "," : ", ";
        first = false;
        if (indent >= 0) newline(depth + 1);
        if (obj) {
          json_string(out, it.key());
          out += ": ";
        }
        to_json(out, it.value(), indent, depth + 1);
      }
      if (indent >= 0) newline(depth);
      out.push_back(obj ? '}' : ']');
      break;
    }
    default: PIE_FAIL("chat template: cannot serialize value to JSON");
  }
}

/// Python repr() of a string: single quotes unless the text has ' and no ".
inline void python_repr_string(std::string& out, const std::string& s) {
  const char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  out.push_back(q);
  for (unsigned char c : s) {
    if (c == q || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back(q);
}

/// Python str() of a value, as Jinja prints `{{ x }}` (undefined prints nothing).
inline void python_str(std::string& out, const Json& j, bool nested = false) {
  switch (j.type()) {
    case Json::value_t::null: out += "None"; break;
    case Json::value_t::boolean: out += j.get<bool>() ? "True" : "False"; break;
    case Json::value_t::number_float: out += python_float(j.get<double>()); break;
    case Json::value_t::string:
      if (nested) python_repr_string(out, j.get_ref<const std::string&>());
      else out += j.get_ref<const std::string&>();
      break;
    case Json::value_t::array:
    case Json::value_t::object: {
      const bool obj = j.is_object();
      out.push_back(obj ? '{' : '[');
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        if (obj) {
          python_repr_string(out, it.key());
          out += ": ";
        }
        python_str(out, it.value(), true);
      }
      out.push_back(obj ? '}' : ']');
      break;
    }
    default: out += j.dump();
  }
}

inline std::string to_display(const Value& v) {
  if (v.undefined()) return {};
  std::string out;
  if (v.is_namespace()) return "<Namespace>";
  python_str(out, v.json());
  return out;
}

}  // namespace pie::tokenizer::jinja
