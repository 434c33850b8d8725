#pragma once
/// \file jinja_parse.hpp
/// \brief Lexer and parser of pie's Jinja subset: the template becomes a tree of text,
/// `{{ }}` outputs, if/elif/else, for (with loop filter, else, tuple targets), set (names and
/// namespace attributes), break/continue, and transformers' `{% generation %}` block.
/// Whitespace follows transformers' environment: trim_blocks and lstrip_blocks on, `-` and
/// `+` modifiers honoured, one trailing newline of the template dropped.
///
/// The tree (jinja_ast.hpp), the expression parser (jinja_expr_parser.hpp) and the template
/// parser that defines parse_template (jinja_template_parser.hpp), in that include order.
#include "pie/tokenizer/jinja_ast.hpp"
#include "pie/tokenizer/jinja_template_parser.hpp"
