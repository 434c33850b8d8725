#pragma once
/// \file jinja_ast.hpp
/// \brief The tree pie's Jinja-subset parser builds and its interpreter walks: expression
/// nodes (Expr) and statement nodes (Node). Both parser halves and the interpreter include it.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pie/tokenizer/jinja_value.hpp"

namespace pie::tokenizer::jinja {

/// \brief An expression node; `kind` selects which fields are meaningful.
struct Expr {
  enum class Kind { Literal, Name, Attr, Index, Slice, Call, Filter, Test, Unary, Binary, Ternary, List, Dict };
  Kind kind;
  std::string name;  ///< Name/Attr/Filter/Test name, Unary/Binary operator
  Json literal;
  std::vector<std::unique_ptr<Expr>> args;  ///< operands / call arguments (nullptr = omitted)
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  bool negated = false;  ///< `is not`
};
using ExprPtr = std::unique_ptr<Expr>;

/// \brief A statement node of the template tree.
struct Node {
  enum class Kind { Text, Output, If, For, Set, Break, Continue, Block };
  Kind kind;
  std::string text;                    ///< Text
  std::vector<std::string> targets;    ///< For loop variables; Set: {name} or {name, attr}
  std::vector<ExprPtr> exprs;          ///< Output{e}; If{cond...}; For{iter, filter?}; Set{value}
  std::vector<std::vector<std::unique_ptr<Node>>> bodies;  ///< If: one per cond + else; For: body, else
};
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

}  // namespace pie::tokenizer::jinja
