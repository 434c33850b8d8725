#pragma once
/// \file tokenizer_class.hpp
/// \brief pie::tokenizer::Tokenizer: Hugging Face tokenizer.json byte-level BPE (Qwen, GPT-2,
/// Llama 3 style) — added tokens, NFC, Split regex (PCRE2 JIT), ByteLevel, BPE, ByteLevel
/// decoder — producing the same ids as the `tokenizers` library.
///
/// The class only: its factories are defined by the headers that need more than it does,
/// from_file/from_json_text in tokenizer_json.hpp (nlohmann-json), embedded() in embedded.hpp
/// (the embedded vocabulary). Those include this file, so it must not include them; users
/// include tokenizer.hpp, which brings all three.
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/tokenizer/added_tokens.hpp"
#include "pie/tokenizer/bpe.hpp"
#include "pie/tokenizer/byte_level.hpp"
#include "pie/tokenizer/nfc.hpp"
#include "pie/tokenizer/pretokenizer.hpp"
#include "pie/tokenizer/utf8.hpp"

namespace pie::tokenizer {

/// The Split pattern of Qwen2/Qwen3 (and the embedded tokenizer).
inline constexpr const char* kQwenSplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
/// GPT-2's pattern, used by a ByteLevel pre-tokenizer with use_regex = true.
inline constexpr const char* kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

/// \brief The pieces a Tokenizer is assembled from; from_file() and embedded() fill it in.
struct TokenizerSpec {
  BpeModel model;
  std::vector<AddedToken> added;
  std::vector<std::string> split_patterns;  ///< applied in order, each on the previous pieces
  bool nfc = false;
  bool ignore_merges = false;
  std::vector<std::int32_t> prefix_ids, suffix_ids;  ///< added by add_special_tokens
};

/// \brief A loaded tokenizer. Cheap to copy (shared immutable state); encode/decode are
/// thread-safe. Invalid UTF-8 input to encode() is first repaired: each maximal ill-formed
/// subpart becomes U+FFFD, exactly as Python's `bytes.decode("utf-8", "replace")` would.
class Tokenizer {
 public:
  static Tokenizer from_file(const std::string& tokenizer_json_path);  // tokenizer_json.hpp
  static Tokenizer from_json_text(std::string_view json_text);        // tokenizer_json.hpp
  static Tokenizer embedded();                                         // embedded.hpp

  explicit Tokenizer(TokenizerSpec spec) : s_(std::make_shared<State>(std::move(spec))) {}

  std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens = false) const {
    std::vector<std::int32_t> out;
    encode_into(text, out, add_special_tokens);
    return out;
  }

  /// Appends the ids of `text` to `out`.
  void encode_into(std::string_view text, std::vector<std::int32_t>& out,
                   bool add_special_tokens = false) const {
    std::string repaired;
    if (!utf8::is_valid(text)) {
      repaired = utf8::repair(text);
      text = repaired;
    }
    if (add_special_tokens) out.insert(out.end(), s_->spec.prefix_ids.begin(), s_->spec.prefix_ids.end());
    s_->raw_added.split(text, [&](std::string_view piece, std::int32_t id) {
      if (id >= 0) {
        out.push_back(id);
        return;
      }
      if (!s_->spec.nfc || nfc::quick_check(piece)) {
        encode_normalized(piece, out);
      } else {
        const std::string n = nfc::normalize(piece);
        encode_normalized(n, out);
      }
    });
    if (add_special_tokens) out.insert(out.end(), s_->spec.suffix_ids.begin(), s_->spec.suffix_ids.end());
  }

  /// Text of `ids`. Ids outside the vocabulary are ignored (as Hugging Face does); the bytes are
  /// made valid UTF-8 by the same U+FFFD rule as encode().
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens = false) const {
    std::string bytes;
    for (std::int32_t id : ids) append_token_bytes(id, skip_special_tokens, bytes);
    return utf8::is_valid(bytes) ? bytes : utf8::repair(bytes);
  }

  /// Appends the raw bytes token `id` stands for (nothing for skipped or unknown ids).
  void append_token_bytes(std::int32_t id, bool skip_special_tokens, std::string& out) const {
    if (id < 0 || static_cast<std::size_t>(id) >= s_->bytes.size()) return;
    if (skip_special_tokens && s_->special[id]) return;
    out.append(s_->bytes[id]);
  }

  int vocab_size() const { return static_cast<int>(s_->bytes.size()); }
  /// Id of a token spelled as in the vocabulary (ByteLevel alphabet, e.g. "Ġthe") or added token.
  std::optional<std::int32_t> token_to_id(std::string_view token) const {
    const auto it = s_->by_token.find(std::string(token));
    if (it == s_->by_token.end()) return std::nullopt;
    return it->second;
  }
  /// The vocabulary spelling of `id`; empty for an id outside the vocabulary.
  std::string id_to_token(std::int32_t id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= s_->tokens.size()) return {};
    return s_->tokens[id];
  }
  bool is_special(std::int32_t id) const {
    return id >= 0 && static_cast<std::size_t>(id) < s_->special.size() && s_->special[id];
  }
  bool is_added(std::int32_t id) const {
    return id >= 0 && static_cast<std::size_t>(id) < s_->added.size() && s_->added[id];
  }
  /// Raw bytes of one token (what decode() concatenates before the UTF-8 repair).
  const std::string& token_bytes(std::int32_t id) const {
    PIE_CHECK(id >= 0 && static_cast<std::size_t>(id) < s_->bytes.size(), "tokenizer: id ", id,
              " outside the vocabulary of ", s_->bytes.size());
    return s_->bytes[id];
  }

 private:
  struct State {
    explicit State(TokenizerSpec sp) : spec(std::move(sp)) {
      spec.model.finalize(spec.ignore_merges);
      for (const auto& p : spec.split_patterns) splitters.emplace_back(p);
      std::size_t n = spec.model.size();
      for (const auto& a : spec.added) n = std::max<std::size_t>(n, a.id + 1);
      bytes.resize(n);
      tokens.resize(n);
      by_token.reserve(n);
      special.assign(n, false);
      added.assign(n, false);
      for (std::size_t i = 0; i < spec.model.size(); ++i) {
        bytes[i] = spec.model.bytes_of(static_cast<std::int32_t>(i));
        if (bytes[i].empty()) continue;  // a hole in the id space
        tokens[i] = byte_level::encode(bytes[i]);
        by_token.emplace(tokens[i], static_cast<std::int32_t>(i));
      }
      for (const auto& a : spec.added) {
        // Hugging Face's ByteLevel decoder maps a token through the byte alphabet when every
        // character is in it and keeps its UTF-8 otherwise.
        auto mapped = byte_level::decode(a.content);
        bytes[a.id] = mapped ? *mapped : a.content;
        tokens[a.id] = a.content;
        special[a.id] = a.special;
        added[a.id] = true;
        by_token[a.content] = a.id;
        (a.normalized && spec.nfc ? norm_added : raw_added).add(a.content, a.id);
      }
    }
    TokenizerSpec spec;
    std::vector<RegexSplitter> splitters;
    AddedTokenMatcher raw_added, norm_added;
    std::vector<std::string> bytes, tokens;
    std::vector<bool> special, added;
    std::unordered_map<std::string, std::int32_t> by_token;
    // Pre-token -> ids cache: most words repeat, and BPE is the expensive step.
    mutable std::mutex cache_mu;
    mutable std::unordered_map<std::string, std::vector<std::int32_t>> cache;
  };
  static constexpr std::size_t kCacheEntries = 1 << 17;
  static constexpr std::size_t kCacheMaxWord = 64;

  void encode_normalized(std::string_view text, std::vector<std::int32_t>& out) const {
    if (s_->norm_added.empty()) return split_from(0, text, out);
    s_->norm_added.split(text, [&](std::string_view piece, std::int32_t id) {
      if (id >= 0) out.push_back(id);
      else split_from(0, piece, out);
    });
  }

  void split_from(std::size_t level, std::string_view text, std::vector<std::int32_t>& out) const {
    if (level == s_->splitters.size()) return encode_word(text, out);
    s_->splitters[level].split(text, [&](std::string_view w) { split_from(level + 1, w, out); });
  }

  void encode_word(std::string_view w, std::vector<std::int32_t>& out) const {
    if (w.size() > kCacheMaxWord) return s_->spec.model.encode_word(w, out);
    thread_local std::string key;
    key.assign(w);
    {
      std::lock_guard lock(s_->cache_mu);
      const auto it = s_->cache.find(key);
      if (it != s_->cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const std::size_t from = out.size();
    s_->spec.model.encode_word(w, out);
    std::lock_guard lock(s_->cache_mu);
    if (s_->cache.size() < kCacheEntries)
      s_->cache.emplace(key, std::vector<std::int32_t>(out.begin() + from, out.end()));
  }

  std::shared_ptr<State> s_;
};

}  // namespace pie::tokenizer
