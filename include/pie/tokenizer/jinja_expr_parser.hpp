#pragma once
/// \file jinja_expr_parser.hpp
/// \brief Expression lexer and parser of pie's Jinja subset (the inside of one `{{ }}` or
/// `{% %}` tag) for jinja_template_parser.hpp, which builds the statement tree around it.
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/tokenizer/jinja_ast.hpp"

namespace pie::tokenizer::jinja {

namespace parse_detail {

struct Tok {
  enum Type { Name, Str, Int, Float, Op, End } type;
  std::string s;
};

inline std::vector<Tok> lex_expr(std::string_view src) {
  std::vector<Tok> out;
  std::size_t i = 0;
  auto fail = [&](const char* what) {
    PIE_FAIL("chat template: ", what, " at '", std::string(src.substr(i, 20)), "' in '{", std::string(src), "}'");
  };
  while (i < src.size()) {
    const char c = src[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') { ++i; continue; }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      std::size_t j = i;
      while (j < src.size() && (std::isalnum(static_cast<unsigned char>(src[j])) || src[j] == '_')) ++j;
      out.push_back({Tok::Name, std::string(src.substr(i, j - i))});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      std::size_t j = i;
      bool fl = false;
      while (j < src.size() && (std::isdigit(static_cast<unsigned char>(src[j])) || src[j] == '_' ||
                                (src[j] == '.' && !fl && j + 1 < src.size() && std::isdigit(static_cast<unsigned char>(src[j + 1])))))
        fl |= src[j++] == '.';
      if (j < src.size() && (src[j] == 'e' || src[j] == 'E')) {  // exponent: 2.5e-7, 1e5
        std::size_t k = j + 1;
        if (k < src.size() && (src[k] == '+' || src[k] == '-')) ++k;
        if (k < src.size() && std::isdigit(static_cast<unsigned char>(src[k]))) {
          while (k < src.size() && std::isdigit(static_cast<unsigned char>(src[k]))) ++k;
          j = k;
          fl = true;
        }
      }
      std::string num;
      for (char x : src.substr(i, j - i)) if (x != '_') num.push_back(x);
      out.push_back({fl ? Tok::Float : Tok::Int, num});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string s;
      std::size_t j = i + 1;
      while (j < src.size() && src[j] != c) {
        if (src[j] == '\\' && j + 1 < src.size()) {
          const char e = src[++j];
          switch (e) {
            case 'n': s.push_back('\n'); break;
            case 't': s.push_back('\t'); break;
            case 'r': s.push_back('\r'); break;
            case '0': s.push_back('\0'); break;
            case '\\': case '\'': case '"': s.push_back(e); break;
            default: s.push_back('\\'); s.push_back(e);
          }
          ++j;
        } else {
          s.push_back(src[j++]);
        }
      }
      if (j >= src.size()) fail("unterminated string");
      out.push_back({Tok::Str, s});
      i = j + 1;
    } else {
      static const char* two[] = {"//", "**", "==", "!=", "<=", ">="};
      bool done = false;
      for (const char* t : two)
        if (src.substr(i, 2) == t) {
          out.push_back({Tok::Op, t});
          i += 2;
          done = true;
          break;
        }
      if (done) continue;
      if (std::string_view("+-*/%~<>()[]{}.,:|=").find(c) == std::string_view::npos) fail("unexpected character");
      out.push_back({Tok::Op, std::string(1, c)});
      ++i;
    }
  }
  out.push_back({Tok::End, ""});
  return out;
}

/// Recursive-descent parser over one tag's tokens, with Jinja's precedence:
/// ternary < or < and < not < compare/in < + - < ~ < * / // % < ** < unary - < postfix, filter, is.
class ExprParser {
 public:
  static constexpr int kMaxNesting = 200;

  explicit ExprParser(std::string_view src) : src_(src), t_(lex_expr(src)) {}

  ExprPtr expression() {
    auto e = or_expr();
    if (is_name("if")) {
      ++p_;
      auto cond = or_expr();
      ExprPtr other;
      if (is_name("else")) {
        ++p_;
        other = expression();
      }
      auto n = node(Expr::Kind::Ternary);
      n->args.push_back(std::move(cond));
      n->args.push_back(std::move(e));
      n->args.push_back(std::move(other));
      return n;
    }
    return e;
  }
  /// Expression without a top-level ternary (the filter of `for ... if cond`).
  ExprPtr or_expr() {
    auto e = and_expr();
    while (is_name("or")) { ++p_; e = binary("or", std::move(e), and_expr()); }
    return e;
  }
  bool is_name(const char* n) const { return t_[p_].type == Tok::Name && t_[p_].s == n; }
  bool is_op(const char* o) const { return t_[p_].type == Tok::Op && t_[p_].s == o; }
  bool at_end() const { return t_[p_].type == Tok::End; }
  std::string name() {
    if (t_[p_].type != Tok::Name) fail("expected a name");
    return t_[p_++].s;
  }
  void expect_op(const char* o) {
    if (!is_op(o)) fail((std::string("expected '") + o + "'").c_str());
    ++p_;
  }
  void expect_name(const char* n) {
    if (!is_name(n)) fail((std::string("expected '") + n + "'").c_str());
    ++p_;
  }
  void expect_end() {
    if (!at_end()) fail("unexpected trailing tokens");
  }
  [[noreturn]] void fail(const char* what) const {
    PIE_FAIL("chat template: ", what, " near '", t_[p_].s, "' in '", std::string(src_), "'");
  }

 private:
  static ExprPtr node(Expr::Kind k) {
    auto n = std::make_unique<Expr>();
    n->kind = k;
    return n;
  }
  static ExprPtr binary(std::string op, ExprPtr a, ExprPtr b) {
    auto n = node(Expr::Kind::Binary);
    n->name = std::move(op);
    n->args.push_back(std::move(a));
    n->args.push_back(std::move(b));
    return n;
  }
  ExprPtr and_expr() {
    auto e = not_expr();
    while (is_name("and")) { ++p_; e = binary("and", std::move(e), not_expr()); }
    return e;
  }
  ExprPtr not_expr() {
    if (is_name("not")) {
      ++p_;
      auto n = node(Expr::Kind::Unary);
      n->name = "not";
      n->args.push_back(not_expr());
      return n;
    }
    return compare();
  }
  ExprPtr compare() {
    auto e = add();
    for (;;) {
      static const char* ops[] = {"==", "!=", "<", "<=", ">", ">="};
      bool matched = false;
      for (const char* o : ops)
        if (is_op(o)) { ++p_; e = binary(o, std::move(e), add()); matched = true; break; }
      if (matched) continue;
      if (is_name("in")) { ++p_; e = binary("in", std::move(e), add()); continue; }
      if (is_name("not") && t_[p_ + 1].type == Tok::Name && t_[p_ + 1].s == "in") {
        p_ += 2;
        e = binary("not in", std::move(e), add());
        continue;
      }
      return e;
    }
  }
  ExprPtr add() {
    auto e = concat();
    while (is_op("+") || is_op("-")) { const std::string o = t_[p_++].s; e = binary(o, std::move(e), concat()); }
    return e;
  }
  ExprPtr concat() {
    auto e = mul();
    while (is_op("~")) { ++p_; e = binary("~", std::move(e), mul()); }
    return e;
  }
  ExprPtr mul() {
    auto e = pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string o = t_[p_++].s;
      e = binary(o, std::move(e), pow());
    }
    return e;
  }
  ExprPtr pow() {
    auto e = unary();
    while (is_op("**")) { ++p_; e = binary("**", std::move(e), unary()); }
    return e;
  }
  ExprPtr unary() {
    // Every nesting (parentheses, lists, call arguments, filters, unary signs) recurses through
    // here: bound it, so a hostile template is an error rather than a stack overflow.
    struct Depth {
      int& d;
      explicit Depth(int& x) : d(x) { ++d; }
      ~Depth() { --d; }
    } depth(depth_);
    PIE_CHECK(depth_ <= kMaxNesting, "chat template: expression nested deeper than ", kMaxNesting, " levels");
    if (is_op("-") || is_op("+")) {
      auto n = node(Expr::Kind::Unary);
      n->name = t_[p_++].s;
      n->args.push_back(unary());
      return n;
    }
    return postfix(primary());
  }
  void call_args(Expr& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (t_[p_].type == Tok::Name && t_[p_ + 1].type == Tok::Op && t_[p_ + 1].s == "=") {
        std::string k = t_[p_].s;
        p_ += 2;
        n.kwargs.emplace_back(std::move(k), expression());
      } else {
        n.args.push_back(expression());
      }
      if (!is_op(",")) break;
      ++p_;
    }
    expect_op(")");
  }
  ExprPtr postfix(ExprPtr e) {
    for (;;) {
      if (is_op(".")) {
        ++p_;
        auto n = node(Expr::Kind::Attr);
        n->name = t_[p_].type == Tok::Int ? t_[p_++].s : name();
        n->args.push_back(std::move(e));
        e = std::move(n);
      } else if (is_op("[")) {
        ++p_;
        ExprPtr parts[3];
        int k = 0;
        bool slice = false;
        for (;;) {
          if (!is_op(":") && !is_op("]")) parts[k] = expression();
          if (is_op(":") && k < 2) { ++p_; ++k; slice = true; continue; }
          break;
        }
        expect_op("]");
        auto n = node(slice ? Expr::Kind::Slice : Expr::Kind::Index);
        n->args.push_back(std::move(e));
        for (int i = 0; i < (slice ? 3 : 1); ++i) n->args.push_back(std::move(parts[i]));
        e = std::move(n);
      } else if (is_op("(")) {
        auto n = node(Expr::Kind::Call);
        n->args.push_back(std::move(e));
        call_args(*n);
        e = std::move(n);
      } else if (is_op("|")) {
        ++p_;
        auto n = node(Expr::Kind::Filter);
        n->name = name();
        n->args.push_back(std::move(e));
        if (is_op("(")) call_args(*n);
        e = std::move(n);
      } else if (is_name("is")) {
        ++p_;
        auto n = node(Expr::Kind::Test);
        if (is_name("not")) { ++p_; n->negated = true; }
        n->name = name();
        n->args.push_back(std::move(e));
        if (is_op("(")) {
          call_args(*n);
        } else if (t_[p_].type == Tok::Str || t_[p_].type == Tok::Int || t_[p_].type == Tok::Float ||
                   (t_[p_].type == Tok::Name && !is_name("and") && !is_name("or") && !is_name("else") &&
                    !is_name("if") && !is_name("in") && !is_name("not") && !is_name("is"))) {
          n->args.push_back(primary());  // `is divisibleby 3`, `is sameas none`
        }
        e = std::move(n);
      } else {
        return e;
      }
    }
  }
  ExprPtr primary() {
    const Tok& t = t_[p_];
    if (t.type == Tok::Str) {
      auto n = node(Expr::Kind::Literal);
      std::string s = t_[p_++].s;
      while (t_[p_].type == Tok::Str) s += t_[p_++].s;  // adjacent literals concatenate
      n->literal = s;
      return n;
    }
    if (t.type == Tok::Int || t.type == Tok::Float) {
      auto n = node(Expr::Kind::Literal);
      // Found by the chat_template fuzz target: std::stoll threw std::out_of_range past 2^63.
      errno = 0;
      char* end = nullptr;
      if (t.type == Tok::Int) {
        const long long v = std::strtoll(t.s.c_str(), &end, 10);
        if (errno == ERANGE) fail("integer literal out of range");
        n->literal = Json(v);
      } else {
        n->literal = Json(std::strtod(t.s.c_str(), &end));  // ±inf past the range, as Python's float()
      }
      ++p_;
      return n;
    }
    if (t.type == Tok::Name) {
      const std::string s = t_[p_++].s;
      auto n = node(Expr::Kind::Literal);
      if (s == "true" || s == "True") n->literal = true;
      else if (s == "false" || s == "False") n->literal = false;
      else if (s == "none" || s == "None") n->literal = nullptr;
      else { n->kind = Expr::Kind::Name; n->name = s; }
      return n;
    }
    if (is_op("(")) {
      ++p_;
      auto e = expression();
      if (is_op(",")) {  // a tuple: treat as a list
        auto l = node(Expr::Kind::List);
        l->args.push_back(std::move(e));
        while (is_op(",")) { ++p_; if (is_op(")")) break; l->args.push_back(expression()); }
        e = std::move(l);
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      ++p_;
      auto l = node(Expr::Kind::List);
      while (!is_op("]")) {
        l->args.push_back(expression());
        if (!is_op(",")) break;
        ++p_;
      }
      expect_op("]");
      return l;
    }
    if (is_op("{")) {
      ++p_;
      auto d = node(Expr::Kind::Dict);
      while (!is_op("}")) {
        d->args.push_back(expression());
        expect_op(":");
        d->args.push_back(expression());
        if (!is_op(",")) break;
        ++p_;
      }
      expect_op("}");
      return d;
    }
    fail("expected an expression");
  }

  std::string_view src_;
  std::vector<Tok> t_;
  std::size_t p_ = 0;
  int depth_ = 0;  // unary() frames open: the nesting of the expression being parsed
};

}  // namespace parse_detail

}  // namespace pie::tokenizer::jinja
