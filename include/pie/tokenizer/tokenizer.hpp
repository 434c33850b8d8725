#pragma once
/// \file tokenizer.hpp
/// \brief pie::tokenizer::Tokenizer with all its factories: the class (tokenizer_class.hpp),
/// loading a Hugging Face tokenizer.json (tokenizer_json.hpp; anything the file holds beyond
/// byte-level BPE is refused with an error that names it) and the embedded default tokenizer,
/// which needs no files (embedded.hpp).
#include "pie/tokenizer/embedded.hpp"
#include "pie/tokenizer/tokenizer_class.hpp"
#include "pie/tokenizer/tokenizer_json.hpp"
