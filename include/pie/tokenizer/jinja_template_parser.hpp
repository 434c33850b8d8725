#pragma once
/// \file jinja_template_parser.hpp
/// \brief Template-level parsing (see jinja_parse.hpp): cutting the source into text and tags
/// with Jinja's whitespace rules, then building the statement tree.
#include <string>
#include <string_view>
#include <vector>

#include "pie/tokenizer/jinja_ast.hpp"
#include "pie/tokenizer/jinja_expr_parser.hpp"

namespace pie::tokenizer::jinja {

namespace parse_detail {

/// \brief One piece of template source: text, or the inside of a `{{ }}` / `{% %}` tag.
struct Chunk {
  enum Type { Text, Expr, Stmt } type;
  std::string body;
};

inline bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/// Splits `src` into chunks, applying -/+ modifiers, trim_blocks and lstrip_blocks.
inline std::vector<Chunk> split_tags(std::string_view src) {
  std::vector<Chunk> out;
  std::size_t i = 0;
  bool strip_next = false, trim_next_newline = false;
  while (i <= src.size()) {
    std::size_t at = src.find('{', i);
    while (at != std::string_view::npos && at + 1 < src.size() && src[at + 1] != '{' && src[at + 1] != '%' &&
           src[at + 1] != '#')
      at = src.find('{', at + 1);
    if (at + 1 >= src.size()) at = std::string_view::npos;
    std::string text(src.substr(i, at == std::string_view::npos ? std::string_view::npos : at - i));
    // Whether the text starts a line: template start, or the previous tag's own match (its
    // `-` whitespace or trim_blocks newline) ended with a newline — Jinja's line_starting.
    bool line_starting = i == 0;
    if (strip_next) {
      std::size_t k = 0;
      while (k < text.size() && is_ws(text[k])) ++k;
      line_starting = k > 0 && text[k - 1] == '\n';
      text.erase(0, k);
    } else if (trim_next_newline) {
      if (text.rfind("\r\n", 0) == 0) text.erase(0, 2), line_starting = true;
      else if (!text.empty() && text[0] == '\n') text.erase(0, 1), line_starting = true;
    }
    strip_next = trim_next_newline = false;
    if (at == std::string_view::npos) {
      if (!text.empty()) out.push_back({Chunk::Text, text});
      break;
    }
    const char kind = src[at + 1];
    const char close = kind == '{' ? '}' : kind;
    std::size_t body_start = at + 2;
    const char mod = body_start < src.size() ? src[body_start] : 0;
    if (mod == '-') {
      while (!text.empty() && is_ws(text.back())) text.pop_back();
      ++body_start;
    } else if (mod == '+') {
      ++body_start;
    } else if (kind != '{') {
      // lstrip_blocks: drop spaces/tabs between the line start and a block or comment tag.
      const std::size_t nl = text.rfind('\n');
      const std::size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting) &&
          text.find_first_not_of(" \t", l_pos) == std::string::npos)
        text.erase(l_pos);
    }
    if (!text.empty()) out.push_back({Chunk::Text, text});
    // Find the closing delimiter, skipping string literals.
    std::size_t j = body_start;
    char quote = 0;
    for (; j + 1 < src.size(); ++j) {
      const char c = src[j];
      if (quote) {
        if (c == '\\') ++j;
        else if (c == quote) quote = 0;
      } else if (kind != '#' && (c == '\'' || c == '"')) {
        quote = c;
      } else if (c == close && src[j + 1] == '}') {
        break;
      }
    }
    PIE_CHECK(j + 1 < src.size(), "chat template: unterminated tag starting at offset ", at);
    std::size_t body_end = j;
    bool right_strip = false, no_trim = false;
    if (body_end > body_start && src[body_end - 1] == '-') { right_strip = true; --body_end; }
    else if (body_end > body_start && src[body_end - 1] == '+') { no_trim = true; --body_end; }
    if (kind != '#')
      out.push_back({kind == '{' ? Chunk::Expr : Chunk::Stmt, std::string(src.substr(body_start, body_end - body_start))});
    strip_next = right_strip;
    trim_next_newline = !right_strip && !no_trim && kind != '{';
    i = j + 2;
  }
  return out;
}

/// \brief Builds the statement tree from chunks.
class TreeBuilder {
 public:
  explicit TreeBuilder(std::vector<Chunk> chunks) : c_(std::move(chunks)) {}

  Body parse_all() {
    std::string end;
    Body b = parse_body({}, end);
    PIE_CHECK(p_ == c_.size(), "chat template: unexpected '{% ", end, " %}'");
    return b;
  }

 private:
  /// Parses until a Stmt whose first word is in `enders` (returned in `ender`, tag consumed;
  /// its remaining expression is left in `rest_`).
  Body parse_body(const std::vector<std::string>& enders, std::string& ender) {
    struct Depth {  // nested blocks recurse here: an error, not a stack overflow, past the bound
      int& d;
      explicit Depth(int& x) : d(x) { ++d; }
      ~Depth() { --d; }
    } depth(depth_);
    PIE_CHECK(depth_ <= kMaxNesting, "chat template: blocks nested deeper than ", kMaxNesting, " levels");
    Body body;
    while (p_ < c_.size()) {
      const Chunk& ch = c_[p_++];
      if (ch.type == Chunk::Text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        // Jinja normalizes template newlines (\r\n, \r) to its newline_sequence, "\n".
        for (std::size_t k = 0; k < ch.body.size(); ++k) {
          if (ch.body[k] != '\r') n->text.push_back(ch.body[k]);
          else if (k + 1 >= ch.body.size() || ch.body[k + 1] != '\n') n->text.push_back('\n');
        }
        body.push_back(std::move(n));
        continue;
      }
      if (ch.type == Chunk::Expr) {
        ExprParser ep(ch.body);
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->exprs.push_back(ep.expression());
        ep.expect_end();
        body.push_back(std::move(n));
        continue;
      }
      auto ep = std::make_unique<ExprParser>(ch.body);
      const std::string word = ep->name();
      for (const auto& e : enders)
        if (word == e) {
          ender = word;
          rest_ = std::move(ep);
          return body;
        }
      body.push_back(statement(word, *ep));
    }
    PIE_CHECK(enders.empty(), "chat template: missing '{% ", enders.back(), " %}'");
    return body;
  }

  NodePtr statement(const std::string& word, ExprParser& ep) {
    auto n = std::make_unique<Node>();
    std::string end;
    if (word == "if") {
      n->kind = Node::Kind::If;
      n->exprs.push_back(ep.expression());
      ep.expect_end();
      for (;;) {
        n->bodies.push_back(parse_body({"elif", "else", "endif"}, end));
        if (end == "elif") {
          n->exprs.push_back(rest_->expression());
          rest_->expect_end();
        } else if (end == "else") {
          rest_->expect_end();
          n->bodies.push_back(parse_body({"endif"}, end));
          rest_->expect_end();
          break;
        } else {
          rest_->expect_end();
          break;
        }
      }
    } else if (word == "for") {
      n->kind = Node::Kind::For;
      n->targets.push_back(ep.name());
      while (ep.is_op(",")) {
        ep.expect_op(",");
        n->targets.push_back(ep.name());
      }
      ep.expect_name("in");
      n->exprs.push_back(ep.or_expr());
      if (ep.is_name("if")) {
        ep.expect_name("if");
        n->exprs.push_back(ep.expression());
      }
      PIE_CHECK(!ep.is_name("recursive"), "chat template: unsupported recursive for loop");
      ep.expect_end();
      n->bodies.push_back(parse_body({"else", "endfor"}, end));
      rest_->expect_end();
      if (end == "else") {
        n->bodies.push_back(parse_body({"endfor"}, end));
        rest_->expect_end();
      }
    } else if (word == "set") {
      n->kind = Node::Kind::Set;
      n->targets.push_back(ep.name());
      if (ep.is_op(".")) {
        ep.expect_op(".");
        n->targets.push_back(ep.name());
      }
      PIE_CHECK(ep.is_op("="), "chat template: unsupported Jinja construct: block {% set ", n->targets[0], " %}");
      ep.expect_op("=");
      n->exprs.push_back(ep.expression());
      ep.expect_end();
    } else if (word == "break" || word == "continue") {
      n->kind = word == "break" ? Node::Kind::Break : Node::Kind::Continue;
      ep.expect_end();
    } else if (word == "generation") {  // transformers' AssistantTracker: renders its body
      n->kind = Node::Kind::Block;
      ep.expect_end();
      n->bodies.push_back(parse_body({"endgeneration"}, end));
    } else if (word.rfind("end", 0) == 0 || word == "elif" || word == "else") {
      PIE_FAIL("chat template: unexpected '{% ", word, " %}'");
    } else {
      PIE_FAIL("chat template: unsupported Jinja tag '{% ", word, " %}' (supported: if, for, set, break, "
               "continue, generation)");
    }
    return n;
  }

  std::vector<Chunk> c_;
  std::size_t p_ = 0;
  std::unique_ptr<ExprParser> rest_;
  static constexpr int kMaxNesting = 200;
  int depth_ = 0;  // parse_body frames open
};

}  // namespace parse_detail

/// Parses template source into a statement tree. Throws pie::Error naming an unsupported tag.
inline Body parse_template(std::string_view source) {
  // Jinja's keep_trailing_newline=False: a single trailing newline is not part of the output.
  if (!source.empty() && source.back() == '\n') source.remove_suffix(1);
  return parse_detail::TreeBuilder(parse_detail::split_tags(source)).parse_all();
}

}  // namespace pie::tokenizer::jinja
