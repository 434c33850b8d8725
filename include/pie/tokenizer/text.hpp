#pragma once
/// \file text.hpp
/// \brief Umbrella header for pie's text side: Tokenizer (tokenizer.json byte-level BPE and the
/// embedded default), ChatTemplate (Jinja subset), IncrementalDetokenizer, ReasoningParser.
/// The other headers in this directory are their building blocks.
#include "pie/tokenizer/chat_template.hpp"
#include "pie/tokenizer/detokenizer.hpp"
#include "pie/tokenizer/reasoning.hpp"
#include "pie/tokenizer/tokenizer.hpp"
